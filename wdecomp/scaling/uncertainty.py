"""A law together with samples of its constants: where an equivalent's interval comes from.

An equivalent read off a law inherits the law's uncertainty. :func:`law_samples` pairs a law with
draws of its constants:

* a fit of one's own (:class:`~wdecomp.scaling.ScalingFit`): its bootstrap refits;
* Epoch AI's refit (:data:`~wdecomp.scaling.EPOCH`): draws from the standard errors Besiroglu et
  al. 2024 print (Table 1; :data:`~wdecomp.scaling.PUBLISHED_ERRORS`), independently, with
  ``E, alpha, beta`` normal and ``A, B`` log-normal with log-scale deviation ``SE / value`` (the
  delta method; keeps them positive). No covariance is printed, so correlations (strong between
  ``A`` and ``alpha`` in any such fit) are ignored: the interval is an approximation, and says so;
* Chinchilla as printed or unrounded, Kaplan: no samples. Hoffmann et al. publish no standard
  errors for approach 3's constants and Kaplan et al. none for theirs; their equivalents carry
  no interval, and the table says why.

Every interval is a percentile interval over the samples of the quantity itself (the fraction),
not a propagation of parameter intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from wdecomp.scaling.base import ScalingLaw, law_from_dict
from wdecomp.scaling.fit import ScalingFit
from wdecomp.scaling.published import PUBLISHED, PUBLISHED_ERRORS

__all__ = ["LawSamples", "law_samples"]

_LOG_NORMAL = ("A", "B")


@dataclass(frozen=True)
class LawSamples:
    """A law, draws of its constants, and where they come from.

    Attributes:
        law: the point-estimate law.
        samples: laws built from each draw; ``None`` where a draw gives invalid constants (a
            non-positive exponent, an infinite amplitude), counted against the interval.
        source: where the samples come from (or why there are none), for tables and reports.
        published: True for a published law (its loss scale is that paper's data and tokenizer).
        diagnostics: a degenerate fit's diagnostics (empty otherwise).
    """

    law: ScalingLaw
    samples: tuple[ScalingLaw | None, ...]
    source: str
    published: bool
    diagnostics: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.law.name


def _build(law: ScalingLaw, params: dict[str, float]) -> ScalingLaw | None:
    if not all(math.isfinite(v) for v in params.values()):
        return None
    try:
        return replace(law, **params)  # type: ignore[type-var]
    except ValueError:  # a draw with a non-positive exponent or amplitude
        return None


def law_samples(spec: Any, *, n_samples: int = 1000, seed: int | None = 0) -> LawSamples:
    """Resolve a law specification and attach samples of its constants.

    Args:
        spec: a published law's name (``"chinchilla"``, ``"chinchilla-tex"``, ``"epoch"``,
            ``"kaplan"``), a :class:`ScalingLaw`, a :class:`ScalingFit` (bootstrap samples), a
            ``ScalingFit.to_dict()`` / ``law.to_dict()`` dict, or a :class:`LawSamples`.
        n_samples: draws for a law with published standard errors.
        seed: seeds those draws.

    Returns:
        :class:`LawSamples`.

    Raises:
        ValueError: an unknown name or an unusable dict.
        TypeError: anything else.
    """
    if isinstance(spec, LawSamples):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key not in PUBLISHED:
            raise ValueError(f"unknown scaling law {spec!r}; published laws: {sorted(PUBLISHED)}, or pass a fit")
        spec = PUBLISHED[key]
    if isinstance(spec, dict):
        spec = ScalingFit.from_dict(spec) if "estimates" in spec else law_from_dict(spec)
    if isinstance(spec, ScalingFit):
        cols = [k for k in spec.estimates if k != "a_opt"]
        draws = tuple(_build(spec.law, dict(zip(cols, map(float, row)))) for row in spec.samples)
        source = (f"bootstrap: {len(draws)} refits ({spec.bootstrap}) of the fit"
                  if draws else "none: the fit has no bootstrap samples (n_bootstrap=0)")
        return LawSamples(spec.law, draws, source, published=False, diagnostics=spec.diagnostics)
    if not isinstance(spec, ScalingLaw):
        raise TypeError(f"a scaling law must be a name, a ScalingLaw or a ScalingFit, got {type(spec).__name__}")
    published = any(spec is p for p in PUBLISHED.values())
    errors = PUBLISHED_ERRORS.get(spec.name) if published else None
    if errors is None:
        why = {
            "kaplan": "none: Kaplan et al. 2020 publish no standard errors",
            "chinchilla": "none: Hoffmann et al. 2022 publish no standard errors for approach 3",
            "chinchilla-tex": "none: Hoffmann et al. 2022 publish no standard errors for approach 3",
        }
        source = why.get(spec.name, "none: a bare law carries no uncertainty (pass its ScalingFit)")
        return LawSamples(spec, (), source, published=published)
    rng = np.random.default_rng(seed)
    base = spec.params()
    draws: list[ScalingLaw | None] = []
    cols = {}
    for k, se in errors.items():
        v = base[k]
        if k in _LOG_NORMAL:
            cols[k] = v * np.exp(se / v * rng.standard_normal(n_samples))
        else:
            cols[k] = v + se * rng.standard_normal(n_samples)
    for i in range(n_samples):
        draws.append(_build(spec, {k: float(c[i]) for k, c in cols.items()}))
    source = (f"published standard errors ({spec.name}: Besiroglu et al. 2024 Table 1), {n_samples} "
              "independent draws (no covariance published)")
    return LawSamples(spec, tuple(draws), source, published=True)
