"""The end-to-end demo behind ``wdecomp demo``: every layer of the library on small real models.

1. **Modular addition** (p = 113, embedding -> MLP -> unembedding, grokked): the Hessian's top
   eigenpairs with residuals, its trace (Hutch++) and spectral density (SLQ), the Local
   Interaction Basis and how sharply its embedding directions pick single Fourier frequencies
   against the PCA and neuron bases, the components (rewritten model checked), and the
   interaction graph (pruned, exported, plotted).
2. **Toy model of superposition** (5 features in 2 dimensions): exact Hessian and GGN ranks per
   parameter, i.e. how degenerate the solution is.
3. **Character transformer** on Python's own documentation text, with its own scaling law fitted
   to a sweep in its own family: in full mode a staircase of six runs (widths 32, 64, 128, each
   at two token budgets, N and D each spanning 16x) ending at the library's default character
   transformer (validation 1.34 nats/char), which is then ablated; ``--quick`` uses nine tiny
   runs and ablates the largest. The staircase lies along the compute frontier, so the full
   demo fits the compute form ``L(C) = A C^-alpha`` it identifies (the five-parameter form is
   degenerate on it); the fit goes through :func:`wdecomp.scaling.guided_fit`, so a degenerate
   fit is refitted in the constrained form it suggests, and one that stays degenerate is
   flagged first in the headline. The full demo's trained models ship with the package
   (``wdecomp/models/shipped``); ``--train`` trains them instead. The ablation sweep of the residual stream's PCA
   components is scored by loss, KL, loss recovered *and* compute-equivalent, so the gap
   between the linear and the compute scale is on one plot.

Every stage prints one line with its wall-clock and CPU time when the output is not a terminal
(a progress bar on a terminal). Trained models are cached under ``$WDECOMP_CACHE``.

Everything lands in one folder: ``report.md``, PNG plots, ``graph.graphml``, ``components.safetensors``
and ``results.json``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import wdecomp as wd
from wdecomp import batch as batching
from wdecomp.fourier import fourier_concentration
from wdecomp.io import atomic_write_text
from wdecomp.models import char_scaling_sweep, char_transformer, modular_addition, sweep_points, toy_superposition
from wdecomp.models.cache import cache_dir
from wdecomp.models.char import SWEEP_PRESETS
from wdecomp.progress import progress_bar, progress_enabled


@dataclass
class DemoReport:
    """What the demo produced: the folder, the headline numbers, and the report sections."""

    folder: Path
    headline: dict[str, Any] = field(default_factory=dict)
    sections: list[tuple[str, str]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    cpu_timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stages: str = "off"  # "lines": a line per stage on stderr; "bar": a tqdm bar; "off": silent
    bar: Any = None
    started: float = field(default_factory=time.perf_counter)

    def add(self, title: str, text: str) -> None:
        self.sections.append((title, text))

    def summary(self) -> str:
        """The headline numbers; warnings (a degenerate fit) first, so they cannot be missed."""
        width = max(len(k) for k in self.headline) if self.headline else 0
        lines = ["wdecomp demo — headline numbers", "-" * 40]
        lines += [f"WARNING: {w}" for w in self.warnings]
        lines += [f"{k:<{width}}  {v}" for k, v in self.headline.items()]
        lines.append(f"{'total time':<{width}}  {sum(self.timings.values()):.0f} s")
        return "\n".join(lines)

    def markdown(self) -> str:
        out = ["# wdecomp demo report", "", "```", self.summary(), "```", ""]
        for title, text in self.sections:
            out += [f"## {title}", "", text.rstrip(), ""]
        out += ["## Timings", "", "Wall-clock seconds, and the CPU seconds of this process (all threads; on an idle "
                "machine the wall-clock time lies between CPU / threads and CPU).", "",
                "| step | seconds | CPU seconds |", "|---|---|---|"]
        out += [f"| {k} | {v:.1f} | {self.cpu_timings.get(k, float('nan')):.1f} |" for k, v in self.timings.items()]
        return "\n".join(out) + "\n"


SPECTRUM_EXAMPLES = 2048
#: Full mode's scaling sweep, ``((d_model, n_layers, n_heads), token budgets)``: each width at two
#: budgets, so N and D both span 16x; the last run is the library's default char transformer
#: (:func:`wdecomp.models.char_transformer`, validation 1.34 nats), which the demo then ablates.
FULL_SWEEP = (((32, 2, 2), (131_072, 524_288)), ((64, 2, 4), (262_144, 1_048_576)),
              ((128, 2, 4), (524_288, 2_000_000)))
FULL_CONTEXT, FULL_BATCH = 64, 32
N_STAGES = 17  # the _timed stages below (tests/cli/test_demo.py checks the count)
RANK_RTOL = 1e-2  # the demo's Hessian count: |eigenvalue| > RANK_RTOL * ||H|| (printed with the result)
HEARTBEAT_S = 30.0  # off a terminal, a long stage prints a "still running" line this often


def _stage_mode(progress: bool | None) -> str:
    """A bar on a terminal (or when asked), a line per stage otherwise, nothing with ``progress=False``."""
    if progress_enabled(progress):
        return "bar"
    return "off" if progress is False else "lines"


def _timed(report: DemoReport, name: str, fn: Callable[[], Any]) -> Any:
    """Run one stage, record its wall-clock and CPU time, and report it (see :func:`_stage_mode`)."""
    if report.bar is not None:
        report.bar.set_postfix_str(name)
    t0, c0 = time.perf_counter(), time.process_time()
    stop = threading.Event()
    if report.stages == "lines":  # never minutes of silence: a line every HEARTBEAT_S while a stage runs
        def heartbeat() -> None:
            while not stop.wait(HEARTBEAT_S):
                print(f"wdecomp demo: {name}: still running, {time.perf_counter() - t0:.0f} s; "
                      f"{time.perf_counter() - report.started:.0f} s so far", file=sys.stderr, flush=True)

        threading.Thread(target=heartbeat, daemon=True).start()
    try:
        out = fn()
    finally:
        stop.set()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    report.timings[name] = wall
    report.cpu_timings[name] = cpu
    if report.bar is not None:
        report.bar.update(1)
    elif report.stages == "lines":
        print(f"wdecomp demo: {name}: {wall:.1f} s (CPU {cpu:.1f} s); {time.perf_counter() - report.started:.0f} s "
              "so far", file=sys.stderr, flush=True)
    return out


def _code(text: Any) -> str:
    return f"```\n{text}\n```"


def run_demo(out: str | Path = "wdecomp-report", *, quick: bool = False, progress: bool | None = None) -> DemoReport:
    """Run the demo and write its report folder.

    Args:
        out: Report folder (created).
        quick: Smaller settings (a smaller modulus, fewer eigenpairs, the quick scaling sweep).
        progress: Progress bars (default: on a terminal).

    Returns:
        The :class:`DemoReport` (also written as ``report.md`` and ``results.json``).
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    report = DemoReport(folder, stages=_stage_mode(progress))
    if report.stages == "lines":
        print(f"wdecomp demo{' --quick' if quick else ''}: {N_STAGES} stages, one line each; trained models are "
              f"cached in {cache_dir()} ($WDECOMP_CACHE), so a second run is much faster", file=sys.stderr, flush=True)
    elif report.stages == "bar":
        report.bar = progress_bar(N_STAGES, desc="wdecomp demo", enabled=True)
    try:
        _modular_addition(report, quick, progress)
        _superposition(report, quick, progress)
        _char_ablation(report, quick, progress)
    finally:
        if report.bar is not None:
            report.bar.close()
    atomic_write_text(folder / "report.md", report.markdown())
    atomic_write_text(folder / "results.json", json.dumps(
        report.results | {"timings": report.timings, "cpu_timings": report.cpu_timings}, indent=2, default=str))
    return report


# --------------------------------------------------------------------------- the trained models
def _modular_config(quick: bool) -> dict[str, Any]:
    return dict(p=59, train_fraction=0.6) if quick else dict(p=113)


def _modular_model(quick: bool, progress: bool | None) -> Any:
    return modular_addition(**_modular_config(quick), progress=progress, dtype=torch.float64)


def _toy_model(progress: bool | None) -> Any:
    return toy_superposition(progress=progress, dtype=torch.float64)


def _char_runs(quick: bool) -> tuple[list[tuple[tuple, tuple]], int, int]:
    """``(runs, context, batch_size)``: each run a (sizes, token budgets) pair of the sweep."""
    if quick:  # 9 tiny runs (N = 5k-29k, D = 33k-131k); the largest is the one ablated
        pre = SWEEP_PRESETS["quick"]
        return [(pre["sizes"], pre["tokens"])], pre["context"], pre["batch_size"]
    # a staircase in the default model's own family, ending at the default itself
    return [((size,), budgets) for size, budgets in FULL_SWEEP], FULL_CONTEXT, FULL_BATCH


def _char_sweep(quick: bool, progress: bool | None) -> list[Any]:
    runs, context, batch_size = _char_runs(quick)
    return [pt for sizes, budgets in runs for pt in char_scaling_sweep(
        sizes=sizes, tokens=budgets, context=context, batch_size=batch_size, progress=progress)]


def train_demo_models(quick: bool = False, progress: bool | None = None) -> None:
    """Train (or load) every model the demo uses, in the order the demo uses them.

    The full demo's models ship with the package (``wdecomp/models/shipped``, read after the
    user cache; :func:`ship_models` writes them), so ``wdecomp demo`` spends its time on the
    decompositions; ``WDECOMP_SHIPPED=0`` (or ``wdecomp demo --train``) trains them instead.
    """
    _modular_model(quick, progress)
    _toy_model(progress)
    _char_sweep(quick, progress)


def train_reference_models(progress: bool | None = None) -> None:
    """Train (or load) the models that tests and benchmarks read besides the demo's: the p = 113
    modular MLP trained through its cleanup phase (``modular_addition(patience=None)``, 3,000 steps),
    whose LIB directions ``tests/bases/test_bases_lib_modular.py`` checks for Fourier concentration."""
    modular_addition(patience=None, progress=progress)


def ship_models(dest: str | Path | None = None, progress: bool | None = None) -> list[Path]:
    """Train the full demo's models and :func:`train_reference_models` from scratch into a fresh
    cache and copy the entries to ``dest`` (default: the package's shipped folder). Returns the
    files written."""
    import os
    import shutil
    import tempfile

    from wdecomp.models.cache import shipped_dir

    dest = Path(dest) if dest is not None else shipped_dir()
    saved = {k: os.environ.get(k) for k in ("WDECOMP_CACHE", "WDECOMP_SHIPPED")}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(WDECOMP_CACHE=tmp, WDECOMP_SHIPPED="0")
        try:
            train_demo_models(quick=False, progress=progress)
            train_reference_models(progress=progress)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        dest.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copy2(f, dest / f.name)) for f in sorted((Path(tmp) / "models").iterdir())]


# --------------------------------------------------------------------------- part 1
def _modular_addition(report: DemoReport, quick: bool, progress: bool | None) -> None:
    folder = report.folder
    cfg = _modular_config(quick)
    bundle = _timed(report, "train/load modular addition", lambda: _modular_model(quick, progress))
    model, data = bundle.model, bundle.data
    p = bundle.extra.get("p", cfg["p"])
    acc = bundle.metrics.get("test_accuracy", float("nan"))
    report.headline["modular addition test accuracy"] = f"{acc:.3f} (p = {p})"
    # The spectra and the graph use the first SPECTRUM_EXAMPLES training examples: a Hessian product
    # costs about 0.05 s there against 0.27 s on all 6,384 (one core), which keeps the demo within
    # its time budget; the bases use all the training data.
    n_total = batching.num_examples(data[0])
    sub = [batching.slice_examples(data[0], 0, min(SPECTRUM_EXAMPLES, n_total))]
    obj = wd.Objective(model, sub, loss="cross_entropy")
    H = wd.hessian(obj)
    k = 6 if quick else 10
    eig = _timed(report, "Hessian top eigenpairs", lambda: wd.eigh(H, k=k, tol=1e-6, progress=progress))
    trace = _timed(report, "Hutch++ trace", lambda: wd.hutchpp_trace(H, num_matvecs=60 if quick else 120))
    density = _timed(report, "SLQ spectral density",
                     lambda: wd.slq_density(H, steps=30 if quick else 40, num_starts=3 if quick else 4))
    density.plot(folder / "hessian_density.png")
    # the rank is read off the density's own Lanczos run (no further products), counting eigenvalues
    # above 1% of the largest (2770 [2051, 4438] of 49,297): at 1e-3 and below the 95% interval spans
    # most of [0, p] with 40 steps x 4 starts, and the default p * eps lies below SLQ's round-off floor
    rank = _timed(report, "Hessian rank (density estimate)", lambda: wd.rank(density, rtol=RANK_RTOL))
    report.headline["Hessian top eigenvalue (modular)"] = (
        f"{float(eig.eigenvalues[0]):.4g} (rel. residual {float(eig.relative_residuals[0]):.1e})")
    lo, hi = rank.interval
    report.headline["Hessian eigenvalues above threshold (modular)"] = (
        f"{rank.estimate:.0f} of {H.shape[0]} (95% [{lo:.0f}, {hi:.0f}]; |eigenvalue| > {rank.threshold:.2g}, "
        "density estimate)" if rank.estimable else
        f"not estimable by the density method at p = {H.shape[0]} (see the report; an exact count needs "
        "wd.rank(H, method='dense') and memory for a dense p x p matrix)")
    report.add(
        f"Modular addition: Hessian spectrum (p = {p}, {H.shape[0]} weights, {batching.num_examples(sub[0])} of "
        f"{n_total} training examples)",
        "\n\n".join([_code(eig), _code(trace), _code(rank), "![Hessian spectral density](hessian_density.png)"]),
    )
    report.results["modular_addition"] = {"metrics": bundle.metrics, "eigen": eig.to_dict(),
                                          "trace": trace.to_dict(), "rank": rank.to_dict()}

    layers = ["embed", "mlp.act", "unembed"]
    E = model.embed.weight.detach()[:p]
    rows, conc = [], {}
    bases = {}
    for method in ("lib", "pca", "neuron"):
        basis = _timed(report, f"{method} basis", lambda m=method: wd.interaction_basis(model, data, layers, method=m))
        bases[method] = basis
        lb = basis["embed"]
        coords = lb.to_coordinates(E)
        order = [i for i in torch.argsort(lb.eigenvalues, descending=True).tolist()
                 if lb.constant is None or i != 0][:6]  # the constant node (LIB/PCA as rib runs them) is no feature
        vals = [fourier_concentration(coords[:, int(i)]) for i in order]
        conc[method] = sum(v for v, _ in vals) / len(vals)
        cells = ", ".join(f"{c:.2f}@{w}" for c, w in vals)
        rows.append(f"| {method} | {lb.size} | {conc[method]:.3f} | {cells} |")
    report.headline["Fourier concentration LIB / PCA / neuron"] = " / ".join(f"{conc[m]:.2f}" for m in conc)
    comps = _timed(report, "components (rewritten model checked)", lambda: wd.decompose(model, bases["lib"], data))
    err = comps.verify(model, data)
    comps.save(folder / "components.safetensors")
    report.headline["rewritten model max error"] = f"{err:.1e}"
    report.add(
        "Modular addition: Local Interaction Basis vs PCA vs neurons",
        "Concentration of each of the top-6 embedding directions on one Fourier frequency "
        "(1 = a pure frequency; `value@frequency`):\n\n| basis | directions | mean concentration | top 6 |\n"
        "|---|---|---|---|\n" + "\n".join(rows)
        + f"\n\nThe model rewritten in the LIB basis matches the original to {err:.1e} "
        "(max abs difference of outputs on the training data); components saved to `components.safetensors`.",
    )
    report.results["fourier_concentration"] = conc

    graph = _timed(report, "interaction graph", lambda: wd.interaction_graph(model, sub, bases["lib"],
                                                                               progress=progress))
    pruned = graph.prune(fraction=0.9, top_k_out=6)
    pruned.save(folder / "graph.graphml")
    pruned.save(folder / "graph.json")
    pruned.plot(folder / "graph.png")
    summary = pruned.summary()
    report.headline["graph nodes / edges (pruned)"] = f"{pruned.nx.number_of_nodes()} / {pruned.nx.number_of_edges()}"
    report.add("Modular addition: interaction graph of LIB components",
               _code(summary) + "\n\n![interaction graph](graph.png)\n\nExported: `graph.graphml`, `graph.json`.")
    report.results["graph"] = summary.to_dict()


# --------------------------------------------------------------------------- part 2
def _superposition(report: DemoReport, quick: bool, progress: bool | None) -> None:
    bundle = _timed(report, "train/load toy superposition", lambda: _toy_model(progress))
    model, data = bundle.model, bundle.data
    obj = wd.Objective(model, data[:2], loss=bundle.loss)
    results, text = {}, []
    ops = (("Hessian", wd.hessian(obj)), ("GGN", wd.ggn(obj)))
    ranks = _timed(report, "exact Hessian and GGN ranks",
                   lambda: [wd.rank(op, method="dense", groups="parameter") for _, op in ops])
    for (name, op), r in zip(ops, ranks, strict=True):
        results[name] = r.to_dict()
        text.append(_code(r))
        report.headline[f"toy superposition {name} rank"] = f"{r.rank} of {op.shape[0]}"
    report.add("Toy model of superposition: degeneracy (exact ranks)", "\n\n".join(text))
    report.results["superposition"] = results


# --------------------------------------------------------------------------- part 3
def _char_ablation(report: DemoReport, quick: bool, progress: bool | None) -> None:
    runs, context, batch_size = _char_runs(quick)
    points = _timed(report, "char scaling sweep", lambda: _char_sweep(quick, progress))
    # The full staircase runs each width at two budgets along the compute frontier: it identifies
    # L(C) = A C^-alpha (E = 0, Kaplan's compute form), not the five-parameter L(N, D) (fitted on
    # it, that form and its fixed-E variant are both flagged degenerate), so the demo asks for the
    # form its design supports; guided_fit still checks it and would refit a degenerate one.
    form = {} if quick else dict(form="compute", fix_E=0.0)
    guided = _timed(report, "scaling-law fit", lambda: wd.scaling.guided_fit(
        sweep_points(points), n_bootstrap=20 if quick else 100, name="char (own fit)", **form))
    fit = guided.fit  # refitted with a constrained form if the first fit was degenerate
    fixed = "".join(f", {k} fixed at {v:.3g}" for k, v in fit.fixed.items())
    report.headline["char scaling-law fit (own sweep)"] = (
        f"{fit.law.kind} form{fixed}, {fit.n_points} points, "
        + ", ".join(f"{k} {v:.3g} [{fit.ci[k][0]:.3g}, {fit.ci[k][1]:.3g}]" for k, v in fit.estimates.items()
                    if k in fit.ci and k not in fit.fixed)
        + (f" (refitted as suggested after {len(guided.attempts) - 1} degenerate fit(s))"
           if len(guided.attempts) > 1 else ""))
    if fit.degenerate:
        report.warnings.append("the char transformer's own scaling-law fit is DEGENERATE, so its compute-"
                               "equivalents are unreliable: " + "; ".join(fit.diagnostics))
    wd.scaling.plot_fit(fit, path=report.folder / "scaling_fit.png")
    report.add("Character transformer: its own scaling law",
               _code(guided) + "\n\n![scaling-law fit](scaling_fit.png)\n\n| N | D | val. loss |\n|---|---|---|\n"
               + "\n".join(f"| {p.n_params} | {p.n_tokens} | {p.loss:.4f} |" for p in points))
    (d_model, n_layers, n_heads), budget = runs[-1][0][-1], runs[-1][1][-1]
    bundle = _timed(report, "train/load char transformer", lambda: char_transformer(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, context=context, tokens=budget,
        batch_size=batch_size, n_data_batches=2, progress=progress))
    report.headline["char transformer (ablated)"] = (
        f"d_model {d_model}, {n_layers} layers, {bundle.metrics['n_params']} non-embedding parameters, "
        f"{bundle.metrics['n_tokens']} tokens: validation loss {bundle.metrics['val_loss']:.3f} nats/char")
    model = bundle.model.double()
    data = [tuple(t.double() if t.is_floating_point() else t for t in b) for b in bundle.test[:2]]
    point = f"blocks.{n_layers - 1}"
    basis = _timed(report, "PCA basis of the residual stream",
                   lambda: wd.interaction_basis(model, data, [point], method="pca"))
    n = basis[point].size
    levels = sorted({round(i * n / 10) for i in range(11)})
    tokens = float(bundle.metrics["n_tokens"])
    own = int(bundle.metrics["n_params"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", wd.scaling.ExtrapolationWarning)
        result = _timed(report, "ablation sweep", lambda: wd.ablation_sweep(
            model, basis[point], data, k=levels, method="mean", laws=[fit], tokens=tokens, n_params=own,
            progress=progress))
    extrapolated = sorted({str(w.message) for w in caught if issubclass(w.category, wd.scaling.ExtrapolationWarning)})
    result.plot(report.folder / "ablation.png")
    scored = [(i, lv) for i, lv in enumerate(result.levels)
              if lv.compute_equivalent is not None and lv.compute_equivalent == lv.compute_equivalent
              and lv.recovered_zero >= 0.8]
    if scored:  # the most damaged level that "loss recovered" still calls a success
        i, lv = min(scored, key=lambda t: t[1].compute_equivalent)
        row = result.equivalents.rows[3 + i]
        report.headline["ablation: loss recovered vs compute-equivalent"] = (
            f"{lv.label}: {100 * lv.recovered_zero:.1f}% 'recovered', compute-equivalent {lv.compute_equivalent:.3g} "
            f"[95%: {row.frontier_low:.3g}, {row.frontier_high:.3g}], {row.training_fraction:.3g} of its own "
            f"training compute" + (" (on a DEGENERATE fit)" if fit.degenerate else ""))
    caveat = ""
    if extrapolated:
        caveat = ("\n\nThe scaling law was fitted on a small sweep; these equivalents lie outside its fitted "
                  "range and are extrapolations:\n\n" + "\n".join(f"- {m}" for m in extrapolated[:8]))
    report.add(f"Character transformer: ablating PCA components of the residual stream at `{point}`",
               _code(result) + "\n\n![ablation sweep](ablation.png)" + caveat)
    report.results["ablation"] = result.to_dict()
    report.results["scaling_fit"] = fit.to_dict()
