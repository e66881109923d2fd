"""Loss units: nats or bits, per token, per byte or per character.

A cross-entropy in nats per token depends on the tokenizer: the same text costs fewer nats per
token under a tokenizer with longer tokens. Published scaling laws are in nats per token of their
own tokenizer (Hoffmann et al. 2022: SentencePiece, 32k vocabulary; Kaplan et al. 2020: GPT-2 BPE),
so a loss measured under another tokenizer, or on other data, is not on their scale. For one's own
law, a tokenizer-free unit (bits per byte, or per character) makes sweeps with different
tokenizers comparable:

    bits/token = nats/token / ln 2,   bits/byte = bits/token / (bytes per token),
    bits/char = bits/token / (characters per token).

Example:
    >>> round(convert_loss(1.0, "nats/token", "bits/byte", bytes_per_token=4.0), 6)
    0.360674
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["LOSS_UNITS", "convert_loss"]

LOSS_UNITS = ("nats/token", "bits/token", "bits/byte", "bits/char", "nats/byte", "nats/char")
"""Units :func:`convert_loss` knows."""


def _per_token_factor(unit: str, bytes_per_token: float | None, chars_per_token: float | None) -> float:
    """Multiply a loss in ``unit`` by this to get nats per token."""
    if unit not in LOSS_UNITS:
        raise ValueError(f"unknown loss unit {unit!r}; expected one of {LOSS_UNITS}")
    base, per = unit.split("/")
    f = math.log(2.0) if base == "bits" else 1.0
    if per == "byte":
        if bytes_per_token is None or not (math.isfinite(bytes_per_token) and bytes_per_token > 0):
            raise ValueError(f"converting {unit!r} needs bytes_per_token > 0, got {bytes_per_token!r}")
        f *= bytes_per_token
    elif per == "char":
        if chars_per_token is None or not (math.isfinite(chars_per_token) and chars_per_token > 0):
            raise ValueError(f"converting {unit!r} needs chars_per_token > 0, got {chars_per_token!r}")
        f *= chars_per_token
    return f


def convert_loss(
    loss: Any,
    from_unit: str,
    to_unit: str,
    *,
    bytes_per_token: float | None = None,
    chars_per_token: float | None = None,
) -> float | np.ndarray:
    """Convert a cross-entropy between units (see the module docstring for the formulas).

    Args:
        loss: loss(es), scalar or array.
        from_unit: the unit of ``loss``, one of :data:`LOSS_UNITS`.
        to_unit: the unit wanted, one of :data:`LOSS_UNITS`.
        bytes_per_token: average UTF-8 bytes per token of the evaluated text (for ``/byte``).
        chars_per_token: average characters per token (for ``/char``; 1 for a character model).

    Returns:
        The loss in ``to_unit`` (float for scalar input).

    Raises:
        ValueError: an unknown unit, or a per-byte/per-character unit without its ratio.
    """
    arr = np.asarray(loss, dtype=float)
    out = (arr * _per_token_factor(from_unit, bytes_per_token, chars_per_token)
           / _per_token_factor(to_unit, bytes_per_token, chars_per_token))
    return float(out) if out.ndim == 0 else out
