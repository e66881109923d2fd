"""Per-level equivalents on several laws at once: points, intervals and a note per level.

What an ablation sweep needs from :mod:`wdecomp.scaling`: for each level's loss ``L`` and the
original model's ``L_ref``, on each law (``C*`` its frontier compute, :meth:`ScalingLaw.compute_for_loss`):

* **frontier fraction** ``C*(L) / C*(L_ref)``: compute-optimal over compute-optimal. It depends
  only on the law's frontier, not on how the original model was trained.
* **training fraction** ``C*(L) / C_train``: the compute-optimal compute that reaches ``L`` as a
  fraction of the compute the original model was actually trained with (``training_compute``,
  or ``6 N D``). This is the quantity of Gao et al. 2024 ("Scaling and evaluating sparse
  autoencoders", arXiv 2406.04093, section on downstream loss): "the fraction of pretraining
  compute" a model reaching the degraded loss would need. The two differ unless the original
  model sits on the law's frontier (Chinchilla 70B on 1.4T tokens at L = 2.0: 0.226 vs 0.189).
* **parameter fraction** ``N*(L, D) / N*(L_ref, D)`` at the model's training tokens ``D``.

Each comes with a percentile interval over the law's samples (:mod:`wdecomp.scaling.uncertainty`:
bootstrap refits of one's own fit, or Epoch's published standard errors) and a per-level note.
Robust per level: a loss at or below a law's ``E``, a non-finite loss, or one no better than a
trivial model (``trivial_loss``: e.g. ``log(vocab)`` for a uniform predictor, or the unigram
entropy) gets NaN and a note; every other level keeps its numbers. The reference itself is
checked before any level (:func:`check_reference`), so an ablation sweep can refuse a law before
doing any work.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from wdecomp.errors import DataError, NonFiniteError, ScalingLawRangeError
from wdecomp.scaling.base import ScalingLaw, TwoVariableLaw
from wdecomp.scaling.forms import ComputeLaw
from wdecomp.scaling.uncertainty import LawSamples, law_samples

__all__ = [
    "ComparabilityWarning",
    "EquivalentsTable",
    "LevelEquivalent",
    "check_reference",
    "equivalents_table",
]

DEFAULT_LAWS = ("chinchilla", "epoch", "kaplan")


class ComparabilityWarning(UserWarning):
    """A published law is applied to a loss measured on other data or under another tokenizer."""


@dataclass(frozen=True)
class LevelEquivalent:
    """One level's equivalents on one law (NaN where not defined; ``note`` says why).

    Attributes:
        law: the law's name (``chinchilla``, ``epoch``, ``kaplan``, or a fit's name).
        law_kind: ``"published"`` or ``"own fit"``.
        level: index of the level in the losses given.
        loss: the level's loss.
        frontier_fraction, frontier_low, frontier_high: ``C*(L) / C*(L_ref)`` and its interval.
        training_fraction, training_low, training_high: ``C*(L) / C_train`` (Gao et al. 2024's
            quantity) and its interval; NaN without a training compute.
        parameter_fraction, parameter_low, parameter_high: ``N*(L, D) / N*(L_ref, D)``; NaN
            without ``D`` or for a compute-only law.
        compute: ``C*(L)`` (FLOPs; a compute law: its own unit).
        note: why a value is NaN, or a caveat (extrapolated, below the reference); ``""`` if none.
    """

    law: str
    law_kind: str
    level: int
    loss: float
    frontier_fraction: float
    frontier_low: float
    frontier_high: float
    training_fraction: float
    training_low: float
    training_high: float
    parameter_fraction: float
    parameter_low: float
    parameter_high: float
    compute: float
    note: str


@dataclass(frozen=True)
class EquivalentsTable:
    """Result of :func:`equivalents_table`: one row per (law, level).

    Attributes:
        reference_loss: the original model's loss.
        rows: the :class:`LevelEquivalent` rows, law by law, levels in order.
        laws: the laws' names in order.
        interval_sources: law name -> where its intervals come from (or why there are none).
        training_compute: the original model's training compute, or None.
        tokens: ``D`` for the parameter fraction, or None.
        confidence: the intervals' coverage.
        notes: table-level notes (comparability of published laws, degenerate fits).
    """

    reference_loss: float
    rows: tuple[LevelEquivalent, ...]
    laws: tuple[str, ...]
    interval_sources: dict[str, str]
    training_compute: float | None
    tokens: float | None
    confidence: float
    notes: tuple[str, ...]

    def for_law(self, law: str) -> list[LevelEquivalent]:
        """Rows of one law, in level order."""
        if law not in self.laws:
            raise KeyError(f"no law {law!r} in this table; laws: {list(self.laws)}")
        return [r for r in self.rows if r.law == law]

    def column(self, law: str, field: str) -> np.ndarray:
        """One field of one law's rows as an array, e.g. ``column("epoch", "frontier_fraction")``."""
        return np.array([getattr(r, field) for r in self.for_law(law)], dtype=float)

    def __str__(self) -> str:
        pct = f"{100 * self.confidence:g}%"
        head = (f"{'law':<14}{'lvl':>4}{'loss':>9}  {'frontier fraction [' + pct + ']':<30}"
                f"{'training fraction (Gao) [' + pct + ']':<36}{'parameter fraction':<28}note")
        lines = [f"Equivalents of each level's loss vs reference {self.reference_loss:.6g}", head]
        for r in self.rows:
            lines.append(
                f"{r.law:<14}{r.level:>4}{r.loss:>9.4g}  "
                f"{_cell(r.frontier_fraction, r.frontier_low, r.frontier_high):<30}"
                f"{_cell(r.training_fraction, r.training_low, r.training_high):<36}"
                f"{_cell(r.parameter_fraction, r.parameter_low, r.parameter_high):<28}{r.note}"
            )
        lines.append("frontier fraction = C*(L)/C*(L_ref); training fraction = C*(L)/C_train, the fraction "
                     "of the model's own training compute (Gao et al. 2024)")
        lines += [f"intervals, {law}: {src}" for law, src in self.interval_sources.items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def first(self, field: str) -> list[float]:
        """``field`` of the first law's rows (the law a one-column table shows), in level order."""
        return [float(v) for v in self.column(self.laws[0], field)]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EquivalentsTable:
        """Inverse of :meth:`to_dict` (``None`` back to NaN)."""
        def num(v: Any) -> Any:
            return math.nan if v is None else v

        rows = tuple(LevelEquivalent(**{k: num(v) for k, v in r.items()}) for r in d["rows"])
        return cls(
            reference_loss=float(d["reference_loss"]),
            rows=rows,
            laws=tuple(d["laws"]),
            interval_sources=dict(d["interval_sources"]),
            training_compute=d.get("training_compute"),
            tokens=d.get("tokens"),
            confidence=float(d["confidence"]),
            notes=tuple(d.get("notes", ())),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN as ``None``)."""
        return {
            "reference_loss": self.reference_loss,
            "rows": [{k: _json(v) for k, v in asdict(r).items()} for r in self.rows],
            "laws": list(self.laws),
            "interval_sources": dict(self.interval_sources),
            "training_compute": self.training_compute,
            "tokens": self.tokens,
            "confidence": self.confidence,
            "notes": list(self.notes),
        }


def _json(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _cell(point: float, lo: float, hi: float) -> str:
    if math.isnan(point):
        return "-"
    if math.isnan(lo):
        return f"{point:.4g}"
    return f"{point:.4g} [{lo:.3g}, {hi:.3g}]"


def _finite_positive(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be a number, got {value!r}") from exc
    if not math.isfinite(v):
        raise NonFiniteError(f"{what} is {v}; it must be finite")
    if v <= 0:
        raise DataError(f"{what} must be positive, got {v}")
    return v


def _resolve(laws: Any, n_samples: int, seed: int | None) -> list[LawSamples]:
    if laws is None:
        laws = DEFAULT_LAWS
    if isinstance(laws, (str, ScalingLaw, LawSamples, dict)) or not isinstance(laws, Sequence):
        laws = [laws]
    out = [law_samples(spec, n_samples=n_samples, seed=seed) for spec in laws]
    if not out:
        raise ValueError("no scaling law given (laws=...)")
    names = [ls.name for ls in out]
    if len(set(names)) != len(names):
        raise ValueError(f"two laws share a name ({names}); give fits distinct names (fit(..., name=...))")
    return out


def check_reference(
    reference_loss: float,
    laws: Any = DEFAULT_LAWS,
    *,
    trivial_loss: float | None = None,
    n_samples: int = 1000,
    seed: int | None = 0,
) -> list[LawSamples]:
    """Check the original model's loss against every law before a sweep; return the resolved laws.

    Cheap (no model evaluation): call it before evaluating any ablation level, so that a law
    that cannot score this model is refused before the work, not after.

    Args:
        reference_loss: the original model's loss, in the laws' loss unit.
        laws: law specifications (see :func:`~wdecomp.scaling.uncertainty.law_samples`).
        trivial_loss: the loss of a trivial model of the data (uniform: ``log(vocab)``; unigram
            entropy), or None.
        n_samples: draws for laws with published standard errors.
        seed: seeds those draws.

    Returns:
        The resolved :class:`LawSamples`, to pass on to :func:`equivalents_table` as ``laws``.

    Raises:
        NonFiniteError: the reference loss is NaN or infinite.
        DataError: the reference loss is not positive, or no better than the trivial model.
        ScalingLawRangeError: the reference loss is at or below a law's irreducible loss ``E``
            (no finite compute reaches it); the message names every such law.
    """
    ref = _finite_positive(reference_loss, "the reference loss")
    if trivial_loss is not None:
        triv = _finite_positive(trivial_loss, "trivial_loss")
        if ref >= triv:
            raise DataError(f"the reference loss {ref:.6g} is no better than a trivial model (trivial loss "
                            f"{triv:.6g}); there is nothing for an equivalent to measure")
    resolved = _resolve(laws, n_samples, seed)
    below = [ls for ls in resolved if ref <= ls.law.irreducible_loss]
    if below:
        which = ", ".join(f"{ls.name} (E = {ls.law.irreducible_loss:.4g})" for ls in below)
        raise ScalingLawRangeError(
            f"the reference loss {ref:.6g} is at or below the irreducible loss of {which}: no finite "
            "compute reaches it, so no level can be scored on that law. Drop it (laws=...) or fit a law "
            "to your own model family (wdecomp.scaling.fit)"
        )
    return resolved


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    vals = values[np.isfinite(values)]
    if vals.size == 0:
        return math.nan, math.nan
    q = (100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2)
    lo, hi = np.percentile(vals, q)
    return float(lo), float(hi)


def _log_compute_or_nan(law: ScalingLaw, loss: np.ndarray) -> np.ndarray:
    out = np.full(loss.shape, math.nan)
    ok = np.isfinite(loss) & (loss > law.irreducible_loss)
    if ok.any():
        out[ok] = law._log_compute(loss[ok])
    return out


def _log_params_or_nan(law: ScalingLaw, loss: np.ndarray, tokens: float) -> np.ndarray:
    out = np.full(loss.shape, math.nan)
    if not isinstance(law, TwoVariableLaw):
        return out
    floor = float(law.loss_floor(tokens))
    ok = np.isfinite(loss) & (loss > floor)
    if ok.any():
        out[ok] = law._log_params(loss[ok], np.full(int(ok.sum()), tokens))
    return out


def _ratios(law: ScalingLaw, losses: np.ndarray, ref: float, log_tc: float | None,
            tokens: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(log C*(L), frontier, training, parameter fractions) on one law, NaN where undefined."""
    logc = _log_compute_or_nan(law, losses)
    logc_ref = _log_compute_or_nan(law, np.array([ref]))[0]
    with np.errstate(over="ignore", invalid="ignore"):
        frontier = np.exp(logc - logc_ref)
        training = np.exp(logc - log_tc) if log_tc is not None else np.full(losses.shape, math.nan)
        if tokens is not None:
            logn = _log_params_or_nan(law, losses, tokens)
            logn_ref = _log_params_or_nan(law, np.array([ref]), tokens)[0]
            param = np.exp(logn - logn_ref)
        else:
            param = np.full(losses.shape, math.nan)
    return logc, frontier, training, param


def equivalents_table(
    losses: Sequence[float] | np.ndarray,
    reference_loss: float,
    laws: Any = DEFAULT_LAWS,
    *,
    training_compute: float | None = None,
    N: float | None = None,
    D: float | None = None,
    trivial_loss: float | None = None,
    confidence: float = 0.95,
    n_samples: int = 1000,
    seed: int | None = 0,
    same_data: bool = False,
    loss_unit: str = "nats/token",
) -> EquivalentsTable:
    """Frontier, training and parameter fractions of each level's loss on each law, with intervals.

    See the module docstring for the three fractions. Formulas per law (Chinchilla form:
    ``C*(L) = 6 (K / (L - E))**(1/gamma)``, :class:`~wdecomp.scaling.ChinchillaLaw`):

        frontier  = C*(L) / C*(L_ref)
        training  = C*(L) / C_train,     C_train = training_compute, or 6 N D
        parameter = N*(L, D) / N*(L_ref, D)

    Args:
        losses: each level's loss (any may be NaN: it gets a note, not an exception).
        reference_loss: the original model's loss (checked first: :func:`check_reference`).
        laws: law specifications (names ``chinchilla, chinchilla-tex, epoch, kaplan``, a
            :class:`~wdecomp.scaling.ScalingLaw`, a :class:`~wdecomp.scaling.ScalingFit`, or the
            :class:`LawSamples` :func:`check_reference` returned), one or a list.
        training_compute: FLOPs the original model was trained with (a compute law: its unit).
        N: the original model's parameter count; with ``D`` and no ``training_compute``,
            ``C_train = 6 N D``.
        D: the original model's training tokens (for the parameter fraction).
        trivial_loss: loss of a trivial model of the data; levels at or above it are NaN with
            the note "no better than a trivial model".
        confidence: coverage of the percentile intervals.
        n_samples: draws for laws with published standard errors.
        seed: seeds those draws.
        same_data: the losses are measured on the published laws' own data and tokenizer (turns
            off the comparability note and warning).
        loss_unit: the unit of ``losses``; a law in another unit is refused.

    Returns:
        :class:`EquivalentsTable`.

    Raises:
        NonFiniteError, DataError, ScalingLawRangeError: a bad reference loss (see
            :func:`check_reference`), a non-positive ``training_compute``/``N``/``D``, or a law
            whose ``loss_unit`` differs from ``loss_unit``.

    Warns:
        ComparabilityWarning: a published law on losses not declared ``same_data``.

    Example:
        >>> import warnings
        >>> from wdecomp.scaling import CHINCHILLA, equivalents_table
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     t = equivalents_table([2.0], float(CHINCHILLA.loss(70e9, 1.4e12)), "chinchilla",
        ...                           N=70e9, D=1.4e12)
        >>> round(t.rows[0].frontier_fraction, 3), round(t.rows[0].training_fraction, 3)
        (0.226, 0.189)
    """
    if not (0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    resolved = check_reference(reference_loss, laws, trivial_loss=trivial_loss, n_samples=n_samples, seed=seed)
    ref = float(reference_loss)
    tc = None if training_compute is None else _finite_positive(training_compute, "training_compute")
    n_model = None if N is None else _finite_positive(N, "N (parameters of the original model)")
    tokens = None if D is None else _finite_positive(D, "D (training tokens of the original model)")
    if tc is None and n_model is not None and tokens is not None:
        tc = 6.0 * n_model * tokens
    triv = None if trivial_loss is None else float(trivial_loss)
    lv = np.asarray(losses, dtype=float).ravel()

    notes: list[str] = []
    sources: dict[str, str] = {}
    rows: list[LevelEquivalent] = []
    for ls in resolved:
        law = ls.law
        if law.loss_unit != loss_unit:
            raise DataError(f"law {law.name!r} is in {law.loss_unit} but the losses are in {loss_unit}; "
                            "convert them (wdecomp.scaling.convert_loss)")
        sources[law.name] = ls.source
        if ls.published and not same_data:
            data = law.data or "its paper's data"
            msg = (f"{law.name} was fitted on {data}; nats per token are not "
                   "comparable across data or tokenizers, so read its numbers as an illustration unless "
                   "your loss is measured the same way (same_data=True)")
            notes.append(msg)
            warnings.warn(msg, ComparabilityWarning, stacklevel=2)
        if ls.diagnostics:
            notes.append(f"{law.name} comes from a degenerate fit: " + "; ".join(ls.diagnostics))
        log_tc = None if tc is None else math.log(tc)
        logc, frontier, training, param = _ratios(law, lv, ref, log_tc, tokens)
        valid = [s for s in ls.samples if s is not None]
        n_bad = len(ls.samples) - len(valid)
        if valid:
            sam = np.array([_ratios(s, lv, ref, log_tc, tokens)[1:] for s in valid])  # (S, 3, levels)
        else:
            sam = np.full((0, 3, lv.size), math.nan)
        kind = "published" if ls.published else "own fit"
        floor = float(law.loss_floor(tokens)) if tokens is not None and isinstance(law, TwoVariableLaw) else None
        for i, loss in enumerate(lv):
            note = _level_note(law, float(loss), ref, triv, float(logc[i]), floor, tokens is not None)
            point = [frontier[i], training[i], param[i]]
            if note.startswith("NaN"):
                point = [math.nan, math.nan, math.nan]
            ivals = []
            for j in range(3):
                if math.isnan(point[j]) or sam.shape[0] == 0:
                    ivals.append((math.nan, math.nan))
                    continue
                col = sam[:, j, i]
                ivals.append(_interval(col, confidence))
                lost = n_bad + int((~np.isfinite(col)).sum())
                if j == 0 and lost > 0.05 * len(ls.samples):
                    note = _join(note, f"{lost} of {len(ls.samples)} samples cannot reach this loss "
                                       "(below their E); the interval is over the rest")
            rows.append(LevelEquivalent(
                law=law.name, law_kind=kind, level=i, loss=float(loss),
                frontier_fraction=float(point[0]), frontier_low=ivals[0][0], frontier_high=ivals[0][1],
                training_fraction=float(point[1]), training_low=ivals[1][0], training_high=ivals[1][1],
                parameter_fraction=float(point[2]), parameter_low=ivals[2][0], parameter_high=ivals[2][1],
                compute=float(np.exp(logc[i])) if np.isfinite(logc[i]) and logc[i] < 700 else math.nan,
                note=note,
            ))
    if tc is None:
        notes.append("training fraction (Gao et al. 2024) not computed: give training_compute=, or N= and D=")
    return EquivalentsTable(
        reference_loss=ref,
        rows=tuple(rows),
        laws=tuple(ls.name for ls in resolved),
        interval_sources=sources,
        training_compute=tc,
        tokens=tokens,
        confidence=confidence,
        notes=tuple(dict.fromkeys(notes)),
    )


def _join(a: str, b: str) -> str:
    return b if not a else f"{a}; {b}"


def _level_note(law: ScalingLaw, loss: float, ref: float, triv: float | None, logc: float,
                floor: float | None, want_params: bool) -> str:
    """Why a level is NaN (starts with "NaN:") or a caveat; "" if none."""
    if not math.isfinite(loss) or loss <= 0:
        return f"NaN: the loss {loss} is not a finite positive number"
    if triv is not None and loss >= triv:
        return f"NaN: no better than a trivial model (loss {loss:.4g} >= trivial {triv:.4g})"
    if loss <= law.irreducible_loss:
        return (f"NaN: at or below the irreducible loss E = {law.irreducible_loss:.4g} of {law.name}; "
                "no finite compute reaches it")
    note = ""
    if loss < ref:
        note = "below the reference loss: fractions > 1 (better than the original on this law)"
    fr = law.fitted_range
    if fr.c_min is not None and fr.c_max is not None and math.isfinite(logc):
        lo, hi = math.log(fr.c_min), math.log(fr.c_max)
        if logc < lo or logc > hi:
            decades = (lo - logc if logc < lo else logc - hi) / math.log(10.0)
            unit = law.compute_unit if isinstance(law, ComputeLaw) else "FLOPs"
            note = _join(note, f"extrapolated: C* = {math.exp(min(logc, 700)):.3g} {unit}, {decades:.1f} decades "
                               f"outside the fitted compute [{fr.c_min:.3g}, {fr.c_max:.3g}]")
    if want_params and floor is not None and min(loss, ref) <= floor:
        note = _join(note, f"parameter fraction NaN: the loss or the reference is at or below the loss floor "
                           f"{floor:.4g} at this D")
    elif want_params and floor is None:
        note = _join(note, "parameter fraction NaN: a compute-only law has no N")
    return note
