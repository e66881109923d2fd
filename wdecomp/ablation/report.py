"""The result of an ablation or a sweep: one frozen object, printed as a table, saved as
JSON or CSV, and plotted on a log compute-equivalent axis next to loss recovered."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wdecomp.ablation.metrics import Degradation
from wdecomp.scaling import EquivalentsTable

COLUMNS = (
    "label",
    "n_ablated",
    "loss",
    "delta_loss",
    "recovered_zero",
    "recovered_mean",
    "kl",
    "accuracy",
    "compute_equivalent",
    "parameter_equivalent",
    "training_fraction",
)


@dataclass(frozen=True)
class LevelMetrics:
    """Metrics of one evaluated model (an ablation level, a splice, or a baseline).

    Attributes:
        label: ``"k=10"``, ``"original"``, ``"zero(hook)"``, ``"mean(hook)"``, ``"splice"``.
        n_ablated: Number of components ablated (``None`` for baselines and splices).
        loss: Mean loss over all loss terms.
        delta_loss: ``loss - original loss``.
        recovered_zero: Loss recovered against the zero-ablation baseline.
        recovered_mean: Loss recovered against the mean-ablation baseline.
        kl: Mean KL divergence from the original outputs per loss term (``None``: not a
            classification loss).
        accuracy: Share of correct argmax predictions (``None``: not classification).
        compute_equivalent: ``C_eq(loss) / C_eq(original)`` (``None``: no law).
        parameter_equivalent: ``N_eq(loss, D) / N_eq(original, D)`` (``None``: no law or no D).
        training_fraction: ``C_eq(loss) / C_train``, the fraction of the original model's own
            training compute (Gao et al. 2024; ``None``: no training compute given). With several
            laws these three columns are the first law's; :attr:`AblationResult.equivalents` has all,
            with intervals. NaN where the law cannot score the level (see its note).
        degradation: The loss terms that degrade most, worst first.
        ablated: Global indices of the ablated components (empty for baselines and splices).
    """

    label: str
    n_ablated: int | None
    loss: float
    delta_loss: float
    recovered_zero: float
    recovered_mean: float
    kl: float | None
    accuracy: float | None
    compute_equivalent: float | None = None
    parameter_equivalent: float | None = None
    training_fraction: float | None = None
    degradation: tuple[Degradation, ...] = ()
    ablated: tuple[int, ...] = ()

    def row(self) -> dict[str, Any]:
        """The table columns of this level."""
        return {c: getattr(self, c) for c in COLUMNS}


def _fmt(value: Any, col: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if col in ("recovered_zero", "recovered_mean", "accuracy"):
        return f"{100 * value:.2f}%"
    if col in ("compute_equivalent", "parameter_equivalent", "training_fraction"):
        return f"{value:.4g}"
    return f"{value:.5f}"


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


@dataclass(frozen=True)
class AblationResult:
    """Every metric of an ablation study, side by side.

    Attributes:
        levels: One :class:`LevelMetrics` per ablation level (or splice), in sweep order.
        original: The original model's metrics (loss recovered 100%, KL 0).
        zero_baseline: Zero-ablation of every hook the components live at.
        mean_baseline: Mean-ablation of every hook (activations set to their data mean).
        method: ``"zero"``, ``"mean"``, ``"resample"`` or ``"splice"``.
        order: ``"least_important"``, ``"most_important"``, ``"given"``.
        hooks: The hook points / modules ablated.
        loss_name: The loss (``"cross_entropy"``, ``"mse"``...).
        n_terms: Number of loss terms ``N`` the means run over.
        n_components: Total number of components available.
        law: Name of the scaling law used (or ``None``).
        tokens: ``D`` used for the parameter-equivalent (or ``None``).
        notes: Why columns are missing, and other caveats.
        timings: Seconds spent: ``stats`` (statistics pass), ``levels`` (ablated passes),
            ``forward`` (time inside forward passes, all passes).
        equivalents: Every row's equivalents on every law (which law, frontier and training
            fractions, parameter fraction, intervals, per-level notes), rows in the order original,
            zero baseline, mean baseline, levels; ``None`` without a law.
    """

    levels: tuple[LevelMetrics, ...]
    original: LevelMetrics
    zero_baseline: LevelMetrics
    mean_baseline: LevelMetrics
    method: str
    order: str
    hooks: tuple[str, ...]
    loss_name: str
    n_terms: int
    n_components: int
    law: str | None = None
    tokens: float | None = None
    notes: tuple[str, ...] = ()
    timings: dict[str, float] | None = None
    equivalents: EquivalentsTable | None = None

    # ------------------------------------------------------------------ access
    def column(self, name: str) -> list[Any]:
        """One column over the levels (``"loss"``, ``"kl"``, ``"compute_equivalent"``...)."""
        if name not in COLUMNS:
            raise KeyError(f"no column '{name}'; columns are {COLUMNS}")
        return [getattr(level, name) for level in self.levels]

    def __len__(self) -> int:
        return len(self.levels)

    # ------------------------------------------------------------------ text
    def table(self) -> str:
        """A fixed-width table: baselines first, then one row per level."""
        shown = [c for c in COLUMNS if any(getattr(r, c) is not None for r in (*self.levels, self.original))]
        rows = [self.original, self.zero_baseline, self.mean_baseline, *self.levels]
        cells = [[_fmt(getattr(r, c), c) for c in shown] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(shown)]
        line = "  ".join(c.rjust(w) for c, w in zip(shown, widths))
        out = [line, "-" * len(line)]
        for j, row in enumerate(cells):
            out.append("  ".join(v.rjust(w) for v, w in zip(row, widths)))
            if j == 2:
                out.append("-" * len(line))
        return "\n".join(out)

    def degradation_report(self, level: int = -1, n: int | None = None) -> str:
        """The loss terms that degrade most at ``level`` (default: the last)."""
        lv = self.levels[level]
        items = lv.degradation[: n or len(lv.degradation)]
        lines = [f"most degraded loss terms at {lv.label} (example, position: original -> ablated loss):"]
        for d in items:
            lines.append(
                f"  example {d.example:6d}  position {d.position:4d}: {d.original:.4f} -> {d.ablated:.4f} "
                f"(+{d.increase:.4f})"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        where = ", ".join(h or "<root>" for h in self.hooks)
        what = (
            f"Splice at {where}"
            if self.method == "splice"
            else f"Ablation ({self.method}, order {self.order}) of {self.n_components} components at {where}"
        )
        head = f"{what}; loss {self.loss_name} over {self.n_terms} terms"
        base = (
            f"baselines: original {self.original.loss:.5f}, zero-ablation {self.zero_baseline.loss:.5f}, "
            f"mean-ablation {self.mean_baseline.loss:.5f}"
        )
        law = f"scaling law: {self.law}" + (f", D = {self.tokens:.4g} tokens" if self.tokens else "")
        parts = [head, base, law if self.law else "", self.table()]
        if self.equivalents is not None:
            parts.append("rows: 0 original, 1 zero(hook), 2 mean(hook), then the levels in order\n"
                         + str(self.equivalents))
        if self.levels and self.levels[-1].degradation:
            parts.append(self.degradation_report(-1, 5))
        parts += [f"note: {n}" for n in self.notes]
        return "\n".join(p for p in parts if p)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (JSON-ready; NaN and inf become ``None``)."""
        return _json_value(asdict(self))

    def to_json(self, path: str | Path | None = None, **kw: Any) -> str:
        """JSON text of :meth:`to_dict`, written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=kw.pop("indent", 2), **kw)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AblationResult:
        """Inverse of :meth:`to_dict` (``None`` stays ``None``)."""

        def level(x: dict[str, Any]) -> LevelMetrics:
            x = dict(x)
            x["degradation"] = tuple(Degradation(**g) for g in x.get("degradation", ()))
            x["ablated"] = tuple(x.get("ablated", ()))
            for k in ("recovered_zero", "recovered_mean"):
                x[k] = math.nan if x[k] is None else x[k]
            return LevelMetrics(**x)

        d = dict(d)
        d["levels"] = tuple(level(x) for x in d["levels"])
        for k in ("original", "zero_baseline", "mean_baseline"):
            d[k] = level(d[k])
        d["hooks"] = tuple(d["hooks"])
        d["notes"] = tuple(d["notes"])
        if d.get("equivalents") is not None:
            d["equivalents"] = EquivalentsTable.from_dict(d["equivalents"])
        return cls(**d)

    def to_csv(self, path: str | Path | None = None) -> str:
        """CSV of the table (baselines and levels, one row each), written to ``path`` if given."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in (self.original, self.zero_baseline, self.mean_baseline, *self.levels):
            writer.writerow(["" if v is None else v for v in r.row().values()])
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    # ------------------------------------------------------------------ plot
    def plot(self, path: str | Path | None = None) -> Any:
        """Two panels against the number of components ablated: the compute-equivalent (and
        parameter-equivalent) on a log axis, and loss recovered on a linear axis with both
        baselines. Without a law the first panel shows the loss. Uses the Agg backend.

        Returns:
            The matplotlib ``Figure`` (saved to ``path`` if given).
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 6.5))
        ax1, ax2 = fig.subplots(2, 1, sharex=True)
        x = [lv.n_ablated if lv.n_ablated is not None else i for i, lv in enumerate(self.levels)]
        ce = self.column("compute_equivalent")
        if all(v is not None for v in ce):
            ax1.plot(x, ce, "o-", label=f"compute-equivalent ({self.law})")
            if self.equivalents is not None:
                lo = self.equivalents.first("frontier_low")[3:]
                hi = self.equivalents.first("frontier_high")[3:]
                if any(math.isfinite(v) for v in lo):
                    ax1.fill_between(x, lo, hi, alpha=0.2, label=f"{100 * self.equivalents.confidence:g}% interval")
            tf = self.column("training_fraction")
            if all(v is not None for v in tf):
                ax1.plot(x, tf, "^:", label="fraction of own training compute")
            pe = self.column("parameter_equivalent")
            if all(v is not None for v in pe):
                ax1.plot(x, pe, "s--", label="parameter-equivalent")
            ax1.set_yscale("log")
            ax1.set_ylabel("fraction of original (log)")
            ax1.set_title(f"compute-equivalent on {self.law}")
        else:
            ax1.plot(x, self.column("loss"), "o-", label="loss")
            ax1.axhline(self.original.loss, color="k", lw=0.8, ls=":", label="original")
            ax1.set_ylabel(f"{self.loss_name} loss")
            ax1.set_title("loss (no scaling law given)")
        ax1.legend()
        ax2.plot(x, [100 * v for v in self.column("recovered_zero")], "o-", label="vs zero-ablation")
        ax2.plot(x, [100 * v for v in self.column("recovered_mean")], "s--", label="vs mean-ablation")
        ax2.set_ylabel("loss recovered (%)")
        ax2.set_xlabel(f"components ablated ({self.method}, {self.order})")
        ax2.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
        plt.close("all")
        return fig
