"""Guided fitting of a model family's own law: from a sweep of sizes, or from one run's checkpoints.

A published law is in the nats per token of its own data and tokenizer; a small model's
compute-equivalent is only meaningful on a law of its own family. :func:`guided_fit` takes

* a **sweep** of sizes and token budgets: ``(N, D, loss)`` rows, e.g. the points of
  :func:`wdecomp.models.char_scaling_sweep` or a JSON file of them; fits the Chinchilla form;
* the **checkpoints of one run**: ``(C, loss)`` rows, training compute so far (``6 N D_t``, see
  :func:`checkpoint_points`) against validation loss; fits ``L(C) = E + A/C**alpha``. One run's
  curve lies above the compute-optimal frontier (a fixed N is optimal only at one C), so the law
  is an upper envelope: say so when you report numbers on it,

fits, and when the fit is degenerate (:attr:`~wdecomp.scaling.ScalingFit.diagnostics`) refits with
the suggested constrained form (``fix_E``, the residual bootstrap), and as a last resort fits the
compute-only form ``E + A/C**alpha`` to the sweep's lower envelope (:func:`envelope_points`),
keeping every attempt. :func:`load_points` reads the JSON forms
the CLI accepts (``wdecomp scaling fit SWEEP.json``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdecomp.errors import DataError
from wdecomp.io import atomic_write, atomic_write_text, check_writable
from wdecomp.scaling.fit import ScalingFit, fit
from wdecomp.scaling.plot import plot_fit

__all__ = ["GuidedFit", "checkpoint_points", "envelope_points", "guided_fit", "load_points", "write_fit_report"]

_N_KEYS = ("n", "n_params", "params", "parameters")
_D_KEYS = ("d", "n_tokens", "tokens")
_C_KEYS = ("c", "compute", "flops")
_L_KEYS = ("loss", "l", "val_loss")


def _pick(row: dict[str, Any], keys: Sequence[str]) -> Any:
    low = {str(k).lower(): v for k, v in row.items()}
    for k in keys:
        if k in low:
            return low[k]
    return None


def _rows_from_dicts(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    out = []
    for i, row in enumerate(rows):
        n, d, c, loss = (_pick(row, ks) for ks in (_N_KEYS, _D_KEYS, _C_KEYS, _L_KEYS))
        if loss is None:
            raise DataError(f"point {i} has no loss (keys: {sorted(row)}); expected loss with N, D or with C")
        if n is not None and d is not None:
            out.append((n, d, loss))
        elif c is not None:
            out.append((c, loss))
        else:
            raise DataError(f"point {i} needs N and D (or n_params and n_tokens), or C; keys: {sorted(row)}")
    if len({len(r) for r in out}) > 1:
        raise DataError("the points mix (N, D, loss) and (C, loss) rows; give one kind")
    try:
        return np.asarray(out, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"the points must be numbers: {exc}") from exc


def load_points(source: Any) -> np.ndarray:
    """Points of a sweep or checkpoint series as an ``(n, 3)`` or ``(n, 2)`` array.

    Accepts a path to a JSON file or the parsed JSON: a list of objects with ``N, D, loss``
    (or ``n_params, n_tokens, loss``, as :class:`wdecomp.models.ScalingPoint.to_dict` writes) or
    ``C, loss`` (``compute``/``flops`` also accepted); a dict of columns of the same names; a dict
    with the list under ``"points"``; or a list of numeric rows.

    Raises:
        DataError: the file cannot be read or parsed, or the points are malformed.
    """
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, encoding="utf-8") as fh:
                source = json.load(fh)
        except OSError as exc:
            raise DataError(f"cannot read the sweep file {os.fspath(source)!r}: {exc}") from exc
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{os.fspath(source)!r} is not JSON: {exc}") from exc
    if isinstance(source, dict) and "points" in source:
        source = source["points"]
    if isinstance(source, dict):
        cols = {str(k).lower(): v for k, v in source.items()}
        lengths = {len(v) for v in cols.values() if isinstance(v, list)}
        if len(lengths) != 1:
            raise DataError("a dict of columns needs equal-length lists (N, D, loss or C, loss)")
        n = lengths.pop()
        source = [{k: v[i] for k, v in cols.items() if isinstance(v, list)} for i in range(n)]
    if not isinstance(source, (list, tuple)) or not source:
        raise DataError("no points: expected a non-empty list of points")
    if all(isinstance(r, dict) for r in source):
        return _rows_from_dicts(source)
    try:
        return np.asarray(source, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"the points must be numeric rows (N, D, loss) or (C, loss): {exc}") from exc


def checkpoint_points(n_params: float, tokens_seen: Any, losses: Any) -> np.ndarray:
    """``(C, loss)`` rows of one run's checkpoints, ``C = 6 N D_t`` (Kaplan et al. 2020, section 2.1).

    Args:
        n_params: the model's (non-embedding) parameters ``N``.
        tokens_seen: training tokens ``D_t`` at each checkpoint.
        losses: validation loss at each checkpoint.

    Returns:
        ``(n, 2)`` array for :func:`guided_fit` / :func:`~wdecomp.scaling.fit`.

    Raises:
        DataError: lengths differ, or a value is not finite and positive.
    """
    d = np.asarray(tokens_seen, dtype=float).ravel()
    loss = np.asarray(losses, dtype=float).ravel()
    if d.shape != loss.shape or d.size == 0:
        raise DataError(f"tokens_seen ({d.size}) and losses ({loss.size}) must be equal-length, non-empty")
    n = float(n_params)
    if not (math.isfinite(n) and n > 0) or not (np.isfinite(d).all() and (d > 0).all()):
        raise DataError("n_params and tokens_seen must be finite and positive")
    return np.column_stack([6.0 * n * d, loss])


@dataclass(frozen=True)
class GuidedFit:
    """Result of :func:`guided_fit`.

    Attributes:
        fit: the fit to use (the last attempt).
        attempts: every ``(keyword arguments, fit)`` tried, in order.
        kind: ``"sweep"`` (Chinchilla form), ``"envelope"`` (compute form on the sweep's lower
            envelope, the last resort for a sweep that cannot separate N and D) or
            ``"checkpoints"`` (compute form, one run).
    """

    fit: ScalingFit
    attempts: tuple[tuple[dict[str, Any], ScalingFit], ...] = field(default=())
    kind: str = "sweep"

    def __str__(self) -> str:
        origin = "one run's checkpoints" if self.kind == "checkpoints" else "a sweep"
        plural = "s" if len(self.attempts) != 1 else ""
        lines = [f"Own scaling law from {origin} ({len(self.attempts)} attempt{plural})"]
        for i, (kw, f) in enumerate(self.attempts, 1):
            args = ", ".join(f"{k}={v!r}" for k, v in kw.items()) or "default form"
            state = "degenerate" if f.degenerate else "ok"
            lines.append(f"  attempt {i}: {args} -> {state}")
        if self.kind == "checkpoints":
            lines.append("  note: one run's curve lies above the compute-optimal frontier; equivalents on this law "
                         "are relative to that run's training curve")
        lines.append(str(self.fit))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the chosen fit (loadable by :func:`~wdecomp.scaling.law_from_dict`) and the attempts."""
        d = self.fit.to_dict(include_samples=True)
        d["guided"] = {"kind": self.kind,
                       "attempts": [{"kwargs": kw, "degenerate": f.degenerate, "diagnostics": list(f.diagnostics)}
                                    for kw, f in self.attempts]}
        return d


def guided_fit(points: Any, *, checkpoints: bool = False, max_attempts: int = 3, **kwargs: Any) -> GuidedFit:
    """Fit a model family's own law; on a degenerate fit, refit with the suggested constrained form.

    Args:
        points: anything :func:`load_points` accepts (a path, parsed JSON, an array, or a list of
            :class:`wdecomp.models.ScalingPoint`).
        checkpoints: the points are one run's ``(C, loss)`` checkpoints (see :func:`checkpoint_points`).
        max_attempts: at most this many fits.
        **kwargs: passed to :func:`~wdecomp.scaling.fit` (``n_bootstrap``, ``seed``, ``loss_unit``, ...);
            ``form="compute"`` with ``(N, D, loss)`` rows fits the compute form on the sweep's
            lower envelope (:func:`envelope_points`) from the first attempt, for a sweep designed
            along the compute frontier.

    Returns:
        :class:`GuidedFit`; its ``fit.degenerate`` stays True when no suggested form helped.

    Raises:
        DataError: malformed points (see :func:`load_points`), or ``checkpoints`` with
            ``(N, D, loss)`` rows.
    """
    if isinstance(points, (list, tuple)) and points and hasattr(points[0], "to_dict"):
        points = [list(p) for p in points]  # ScalingPoint: behaves as (N, D, loss)
    arr = np.asarray(points, dtype=float) if isinstance(points, np.ndarray) else load_points(points)
    if checkpoints and arr.shape[1] != 2:
        raise DataError("checkpoints=True needs (C, loss) rows; build them with checkpoint_points(N, tokens, losses)")
    kw = dict(kwargs)
    attempts: list[tuple[dict[str, Any], ScalingFit]] = []
    # form="compute" on (N, D, loss) rows: the compute form on the sweep's lower envelope at once
    pts = envelope_points(arr) if kw.get("form") == "compute" and arr.shape[1] == 3 else arr
    while True:
        res = fit(pts, **kw)
        attempts.append((dict(kw), res))
        if not res.degenerate or len(attempts) >= max_attempts:
            break
        if res.suggestion and {**kw, **res.suggestion} != kw:
            kw = {**kw, **res.suggestion}
            continue
        env = envelope_points(arr) if arr.shape[1] == 3 and pts is arr else None
        if env is None or len(env) <= 3 - (kw.get("fix_E") is not None):
            break  # nothing this sweep supports: the last fit stays flagged
        pts = env  # the compute-only form on the sweep's lower envelope
        kw = {k: v for k, v in kw.items() if k != "bootstrap"}
        kw["form"] = "compute"
    kind = "checkpoints" if arr.shape[1] == 2 else ("envelope" if pts is not arr else "sweep")
    return GuidedFit(attempts[-1][1], tuple(attempts), kind)


def envelope_points(points: Any) -> np.ndarray:
    """The lower envelope of a sweep in (compute, loss): ``(C, loss)`` rows, ``C = 6 N D``.

    A run is on the envelope when no run of smaller or equal compute reached a lower loss: the
    sweep's best loss at each compute, the empirical compute-optimal frontier a
    :class:`~wdecomp.scaling.ComputeLaw` describes.

    Args:
        points: ``(n, 3)`` rows ``(N, D, loss)`` (anything :func:`load_points` accepts).

    Returns:
        ``(m, 2)`` rows, increasing compute and decreasing loss.
    """
    arr = np.asarray(points, dtype=float) if isinstance(points, np.ndarray) else load_points(points)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise DataError("the envelope needs (N, D, loss) rows")
    c = 6.0 * arr[:, 0] * arr[:, 1]
    order = np.lexsort((arr[:, 2], c))
    rows, best = [], math.inf
    for i in order:
        if arr[i, 2] < best:
            best = arr[i, 2]
            rows.append((c[i], arr[i, 2]))
    return np.asarray(rows, dtype=float)


def write_fit_report(result: GuidedFit | ScalingFit, folder: str | os.PathLike[str]) -> dict[str, str]:
    """Write a fit's report: ``law.json`` (the fit, loadable as a law), ``report.txt`` and ``fit.png``.

    The text holds the parameter estimates with their bootstrap intervals, the fitted range, the
    convergence state and any diagnostics; the figure is :func:`~wdecomp.scaling.plot_fit`
    (points, fitted frontier with its band, residuals). Files are written atomically.

    Args:
        result: a :class:`GuidedFit` or a :class:`~wdecomp.scaling.ScalingFit`.
        folder: created if missing.

    Returns:
        ``{"law": path, "report": path, "plot": path}``.

    Raises:
        OutputPathError: the folder cannot be written.
    """
    folder = check_writable(folder, folder=True)
    folder.mkdir(parents=True, exist_ok=True)
    chosen = result.fit if isinstance(result, GuidedFit) else result
    payload = result.to_dict() if isinstance(result, GuidedFit) else result.to_dict(include_samples=True)
    paths = {"law": folder / "law.json", "report": folder / "report.txt", "plot": folder / "fit.png"}
    atomic_write_text(paths["law"], json.dumps(payload, indent=2))
    atomic_write_text(paths["report"], str(result) + "\n")
    fig = plot_fit(chosen)
    atomic_write(paths["plot"], lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return {k: os.fspath(v) for k, v in paths.items()}
