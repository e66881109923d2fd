"""Cost curves: how products, eigenpairs, rank, LIB and ablation grow with model and data size (issue 16).

Models: :class:`wdecomp.models.Transformer` (2 layers, 4 heads, GELU, context 64, vocabulary 96)
of width ``d_model`` 64 / 192 / 352 / 640 = 116,576 / 939,360 / 3,073,760 / 10,012,256
parameters (labels ``1e5 1e6 3e6 1e7``). **Untrained** (seeded GPT-2-style init) on uniformly
random tokens: the cost of a product does not depend on the weights' values; iteration counts
(eigh matvecs) do, and are those of an untrained network. float32, 2 torch threads.

Data: ``seqs`` sequences of 64 tokens, one batch (default 8 x 64 = 512 tokens for the size curve);
the data curve runs the ``--data-size`` model at ``--data-seqs`` sequences (2x apart), wdecomp
stages only (``--data-stages``).

Stages (each a fresh subprocess, so its peak memory is its own):

* ``gradient``: ``Objective.gradient()``; ``hvp``: one Hessian-vector product rebuilt on every call
  (``cache=False``, what one isolated product costs); ``hvp_cached``: one product on the cached
  graph (default ``cache="auto"``; what each product of an eigensolver costs, the one-off build is
  in the warm-up); ``hvp_block16``: a block of 16 vectors on the cached graph, **per vector**;
  ``ggn``: one GGN-vector product (``wd.ggn``, default cache). One warm-up, then the median (used
  for ratios and fits) and the minimum of up to 5 repeats (fewer once they pass
  ``--repeat-budget`` seconds). Under load the minimum is the better estimate of the
  uncontended cost: a median of a few calls still catches 0.1 s scheduler stalls.
* ``eigh20``: ``wd.eigh(H, k=20, tol=1e-3, verify=False)`` on the cached Hessian (matvecs recorded).
* ``rank``: ``wd.rank(H, method="density", rtol=1e-3, steps=30, num_starts=4)``: SLQ with the
  threshold ``tau = 1e-3 * ||H||_2`` (module docstring of ``wdecomp.spectral.rank``: one threshold
  convention for every method, ``tau = max(atol, rtol * scale)``); 120 products. Fewer starts and
  steps than the defaults (80 x 20) to bound the cost; the estimate and interval are recorded.
* ``lib``: ``wd.interaction_basis(model, data, ["blocks.0", "blocks.1", "ln_f"], "lib")``.
* ``ablation``: ``wd.ablation_sweep`` mean-ablating 10 levels of the PCA basis of ``blocks.0``
  (the PCA basis is built before the baseline and not timed).

curvlinops (``HessianLinearOperator``/``GGNLinearOperator`` on the same model with logits flattened
to ``(B*T, V)`` and ``CrossEntropyLoss``, i.e. the same mean token loss) times ``gradient`` (plain
``autograd.grad``), ``hvp``, ``hvp_block16`` (per vector) and ``ggn`` at every size, run by the
peers' interpreter (``--peers-python``; a separate environment, see ``common.py``). With
``python -m venv --system-site-packages /tmp/peers && /tmp/peers/bin/pip install
curvlinops-for-pytorch`` it sees this environment's torch and editable wdecomp.

**Wall time** is ``time.perf_counter`` around the call(s). **CPU time** is ``time.process_time``
(this process, both threads) around the same calls: with passive OpenMP waiting it counts the
work, not the time spent waiting for a core, so it is the steadier number on a loaded machine
(the pip step above reinstalls torch in the venv; uninstall it there so the pinned torch is used);
both are fitted. **Peak memory** is ``ru_maxrss`` (the
process's resident high-water mark): ``peak_mb`` after the stage and ``growth_mb`` = that minus the
high-water mark after building the model and data and one no-grad forward (``base_mb``), i.e. how
far the stage (warm-up and operator set-up included) pushed resident memory above the loaded
model. It is resident memory, not allocations: freed-and-reused memory is not double-counted. Each
measurement's address space is capped (``WDECOMP_BENCH_MEM_GB``, default 8 GiB) so that a stage too
large for a shared machine fails with a recorded out-of-memory error.

Fits: for each stage, least squares of ``log10 seconds`` on ``log10 parameters`` (``log10 tokens``
for the data curve); the exponent (slope), and each point's residual in log10 units with their RMS.

The machine is shared; the load average (1 minute) is recorded before and after every
measurement. Each measurement runs under a ``--timeout``; a stage that times out is not run at
larger sizes (recorded as skipped).

    python benchmarks/bench_costs.py --quick   # tiny sizes in one process (no per-stage memory), ~1-2 min
    python benchmarks/bench_costs.py --sizes 1e5,1e6,3e6,1e7        # writes results/costs.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Passive OpenMP waiting: spinning threads on an oversubscribed machine slow every barrier
# (see bench_ablation.py). Must be set before torch starts its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import RESULTS, FlatLogits, machine, peak_rss_mb, setup_threads, write_results  # noqa: E402
from torch import nn  # noqa: E402

import wdecomp as wd  # noqa: E402
from wdecomp.ablation import ActivationComponents  # noqa: E402
from wdecomp.models import Transformer, TransformerConfig  # noqa: E402

WIDTHS = {"1e5": 64, "1e6": 192, "3e6": 352, "1e7": 640, "q1": 16, "q2": 24, "q3": 32}
QUICK_SIZES = "q1,q2,q3"
VOCAB, CONTEXT, LAYERS, HEADS = 96, 64, 2, 4
LIB_LAYERS = ["blocks.0", "blocks.1", "ln_f"]
PRODUCTS = ("gradient", "hvp", "hvp_cached", "hvp_block16", "ggn")
STAGES = (*PRODUCTS, "eigh20", "rank", "lib", "ablation")
PEER_STAGES = ("gradient", "hvp", "hvp_block16", "ggn")
BLOCK = 16
# products.json (bench_products.py, transformer_1m: 939,360 parameters, 8 x 64 tokens) stage names
# of the same quantities, for the regression check at the 1e6 size.
PRODUCTS_JSON_NAMES = {"hvp": "hvp", "hvp_cached": "hvp_cached", "hvp_block16": "hvp_block16_cached", "ggn": "ggn"}
PEER_PRODUCTS_JSON_NAMES = {"hvp": "hvp", "hvp_block16": "hvp_block16", "ggn": "ggn"}


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def build(width: int, seqs: int, seed: int = 0) -> tuple[Transformer, tuple[torch.Tensor, torch.Tensor]]:
    """The untrained transformer of ``d_model = width`` and ``seqs`` random sequences of CONTEXT tokens."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(d_vocab=VOCAB, d_model=width, n_layers=LAYERS, n_heads=HEADS, context=CONTEXT)
    model = Transformer(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(0, VOCAB, (seqs, CONTEXT), generator=g)
    y = torch.randint(0, VOCAB, (seqs, CONTEXT), generator=g)
    return model, (x, y)


def repeat_time(fn: Any, budget: float, repeat: int = 5) -> tuple[float, float, float, int]:
    """Median and minimum wall seconds and median CPU seconds over up to ``repeat`` calls after one
    warm-up (stops once the calls pass ``budget`` wall seconds)."""
    fn()
    times: list[float] = []
    cpu: list[float] = []
    while len(times) < repeat and sum(times) < budget:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    times.sort()
    cpu.sort()
    return times[len(times) // 2], times[0], cpu[len(cpu) // 2], len(times)


def once(fn: Any) -> tuple[float, float, Any]:
    """Wall and CPU seconds of one call, and its result."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def cap_memory() -> None:
    """Cap this process's address space (``WDECOMP_BENCH_MEM_GB``, default 8 GiB): on a shared machine a
    stage that needs more fails with an out-of-memory error (recorded) instead of waking the OOM killer."""
    limit = int(float(os.environ.get("WDECOMP_BENCH_MEM_GB", "8")) * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def measure(library: str, size: str, seqs: int, stage: str, budget: float) -> dict[str, Any]:
    """One stage in this process: seconds, memory and what the stage returned worth keeping."""
    setup_threads(2)
    model, batch = build(WIDTHS[size], seqs)
    p = sum(t.numel() for t in model.parameters())
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    v, V = torch.randn(p, generator=gen), torch.randn(p, BLOCK, generator=gen)
    extra: dict[str, Any] = {}
    comps = None
    if stage == "ablation":
        pca = wd.interaction_basis(model, [batch], ["blocks.0"], method="pca", progress=False)
        comps = ActivationComponents(pca["blocks.0"])
    with torch.no_grad():
        model(batch[0])
    base = peak_rss_mb()
    per = BLOCK if stage == "hvp_block16" else 1
    if library == "curvlinops":
        from curvlinops import GGNLinearOperator, HessianLinearOperator

        flat, loss_func = FlatLogits(model), nn.CrossEntropyLoss()
        data = [(batch[0], batch[1].reshape(-1))]
        kw = dict(check_deterministic=False)
        fns = {
            "gradient": lambda: torch.autograd.grad(loss_func(flat(data[0][0]), data[0][1]), params),
            "hvp": lambda: HessianLinearOperator(flat, loss_func, params, data, **kw) @ v,
            "hvp_block16": lambda: HessianLinearOperator(flat, loss_func, params, data, **kw) @ V,
            "ggn": lambda: GGNLinearOperator(flat, loss_func, params, data, **kw) @ v,
        }
        seconds, fastest, cpu, n = repeat_time(fns[stage], budget)
        extra |= {"repeats": n, "min_seconds": fastest / per}
    else:
        obj = wd.Objective(model, [batch], loss="cross_entropy")
        if stage in PRODUCTS:
            H, Hc, G = wd.hessian(obj, cache=False), wd.hessian(obj), wd.ggn(obj)
            fns = {"gradient": obj.gradient, "hvp": lambda: H @ v, "hvp_cached": lambda: Hc @ v,
                   "hvp_block16": lambda: Hc @ V, "ggn": lambda: G @ v}
            seconds, fastest, cpu, n = repeat_time(fns[stage], budget)
            extra |= {"repeats": n, "min_seconds": fastest / per}
        elif stage == "eigh20":
            H = wd.hessian(obj)
            asym = os.environ.get("WDECOMP_BENCH_ASYMMETRY", "raise")  # eigh's own default is "raise"
            seconds, cpu, r = once(lambda: wd.eigh(H, k=20, tol=1e-3, verify=False, progress=False,
                                                   asymmetry=asym))
            extra |= {"asymmetry": asym, "matvecs": r.matvecs, "converged": bool(r.all_converged),
                      "top_eigenvalue": float(r.eigenvalues[0])}
        elif stage == "rank":
            H = wd.hessian(obj)
            seconds, cpu, r = once(lambda: wd.rank(H, method="density", rtol=1e-3, steps=30, num_starts=4,
                                              progress=False))
            extra |= {"rank": r.rank, "interval": [float(a) for a in r.interval], "estimable": bool(r.estimable),
                      "threshold": float(r.threshold), "matvecs": 120}
        elif stage == "lib":
            seconds, cpu, basis = once(lambda: wd.interaction_basis(model, [batch], LIB_LAYERS, "lib", progress=False))
            extra["basis_dims"] = {k: int(basis[k].eigenvalues.numel()) for k in LIB_LAYERS}
        elif stage == "ablation":
            n_comp = comps.size
            ks = sorted({round(i * n_comp / 9) for i in range(10)})
            seconds, cpu, _ = once(lambda: wd.ablation_sweep(model, comps, [batch], k=ks, method="mean",
                                                        progress=False))
            extra["levels"] = len(ks)
        else:
            raise ValueError(f"unknown stage {stage!r}")
    peak = peak_rss_mb()
    return {"seconds": seconds / per, "cpu_seconds": cpu / per, "params": p, "tokens": seqs * CONTEXT,
            "base_mb": round(base, 1), "peak_mb": round(peak, 1), "growth_mb": round(peak - base, 1), **extra}


def run_one(python: str, library: str, size: str, seqs: int, stage: str, timeout: float, budget: float,
            in_process: bool = False) -> dict:
    """One measurement in a fresh subprocess (``in_process``: in this one, no timeout, memory not per stage)."""
    row: dict[str, Any] = {"library": library, "size": size, "seqs": seqs, "stage": stage, "load_before": load1()}
    if in_process and library == "wdecomp":
        try:
            result = measure(library, size, seqs, stage, budget)
        except Exception as exc:  # noqa: BLE001 - recorded as the row's error, the sweep goes on
            return row | {"error": f"{type(exc).__name__}: {exc}"[:300], "load_after": load1()}
        return row | {"load_after": load1(), "memory": "in-process: high-water mark of the whole run"} | result
    cmd = [python, __file__, "--single", library, size, str(seqs), stage, "--repeat-budget", str(budget)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return row | {"error": f"timeout after {timeout:.0f} s", "load_after": load1()}
    row |= {"load_after": load1(), "process_s": round(time.perf_counter() - t0, 1)}
    if proc.returncode != 0:
        return row | {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return row | json.loads(proc.stdout.strip().splitlines()[-1])


def fit(xs: list[float], ys: list[float]) -> dict[str, Any] | None:
    """Least squares ``log10 y = a + b log10 x``: exponent ``b``, residuals (log10 units) and their RMS."""
    if len(xs) < 2:
        return None
    lx, ly = [math.log10(x) for x in xs], [math.log10(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    b = sum((a - mx) * (c - my) for a, c in zip(lx, ly)) / sxx
    a = my - b * mx
    res = [c - (a + b * x) for x, c in zip(lx, ly)]
    dof = len(xs) - 2
    return {"exponent": b, "intercept": a, "residuals_log10": res, "points": len(xs),
            "rms_log10": math.sqrt(sum(r * r for r in res) / len(res)),
            "note": "2 points: residuals are 0 by construction" if dof == 0 else f"{dof} degrees of freedom"}


def fits(rows: list[dict], xkey: str, select: Any, ykey: str = "seconds") -> dict[str, dict]:
    """Per ``library:stage``, the fit of ``ykey`` (wall or CPU seconds) against ``xkey`` over the selected rows."""
    out = {}
    for library in ("wdecomp", "curvlinops"):
        for stage in STAGES:
            pts = sorted((r[xkey], r[ykey]) for r in rows
                         if select(r) and r["library"] == library and r["stage"] == stage and r.get(ykey, 0) > 0)
            f = fit([p[0] for p in pts], [p[1] for p in pts])
            if f is not None:
                out[f"{library}:{stage}"] = f | {"x": [p[0] for p in pts]}
    return out


def ratios(rows: list[dict], size: str, seqs: int, library: str) -> dict[str, float]:
    """Stage time / gradient time of the same library, size and data."""
    t = {r["stage"]: r["seconds"] for r in rows
         if r["size"] == size and r["seqs"] == seqs and r["library"] == library and "seconds" in r}
    g = t.get("gradient")
    return {s: t[s] / g for s in t if s != "gradient"} if g else {}


def regressions(rows: list[dict], seqs: int, previous: dict | None, products: dict | None) -> list[str]:
    """Committed ratios that grew by more than 20%: vs the previous costs file and vs products.json."""
    out = []

    def check(what: str, new: float, old: float) -> None:
        change = new / old - 1
        flag = "**REGRESSION**" if change > 0.2 else "ok"
        out.append(f"| {what} | {old:.2f} | {new:.2f} | {100 * change:+.0f}% | {flag} |")

    if previous:
        prev_rows = previous.get("rows", [])
        for library in ("wdecomp", "curvlinops"):
            for size in dict.fromkeys(r["size"] for r in rows):
                for s in dict.fromkeys(r["seqs"] for r in rows):
                    new, old = ratios(rows, size, s, library), ratios(prev_rows, size, s, library)
                    for stage in new:
                        if stage in old:
                            check(f"costs {library} {size} {s}x{CONTEXT} {stage}/gradient", new[stage], old[stage])
    if products:
        prows = [r for r in products.get("rows", []) if r.get("model") == "transformer_1m" and "seconds" in r]
        for library, names in (("wdecomp", PRODUCTS_JSON_NAMES), ("curvlinops", PEER_PRODUCTS_JSON_NAMES)):
            new = ratios(rows, "1e6", seqs, library)
            old_t = {r["product"]: r["seconds"] for r in prows if r["library"] == library}
            for stage, name in names.items():
                if stage in new and name in old_t and old_t.get("gradient"):
                    check(f"products.json {library} transformer_1m {name}/gradient vs 1e6 {stage}",
                          new[stage], old_t[name] / old_t["gradient"])
    return out


def markdown(payload: dict) -> str:
    rows = payload["rows"]
    lines = ["# Cost curves: products, eigenpairs, rank, LIB and ablation vs model and data size", "",
             "Generated by `benchmarks/bench_costs.py` (see its docstring for every setting). Untrained "
             "`wdecomp.models.Transformer` (2 layers, context 64, vocabulary 96), random tokens, float32, "
             "2 torch threads, one subprocess per measurement. Products: median of up to 5 calls after a "
             "warm-up (minimum in notes), `hvp_block16` per vector; other stages: one call. Memory: "
             "`ru_maxrss` growth over the loaded model + one forward (resident high-water mark, MiB); each "
             "measurement's address space capped at 8 GiB (`WDECOMP_BENCH_MEM_GB`; the machine is shared).", "",
             f"**Shared machine**: {payload['machine'].get('cores')} cores shared by several engineers; load "
             f"average (1 min) {payload['load_start']} at the start, {payload.get('load_end', '?')} at the end "
             "(per row below). Wall times are inflated and noisy (a 2-thread process waits for its second thread's "
             "time slice): read exponents, not absolute times. CPU time (`time.process_time`, both threads, passive "
             "OpenMP waiting) is also recorded and fitted: it counts only time on a core, so it is far less "
             "sensitive to the load. Where the load changed during the run (the load column), wall-time exponents "
             "mix size with load: read the CPU-time fits. A stage with one point (no fit) is in the table only.", ""]
    lines += ["## Measurements", "",
              "| library | size | params | tokens | stage | seconds | x gradient | peak MiB | growth MiB "
              "| load | notes |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rat = ratios(rows, r["size"], r["seqs"], r["library"]).get(r["stage"])
        notes = r.get("error", "")
        for key in ("matvecs", "converged", "asymmetry", "rank", "interval", "estimable", "basis_dims", "levels",
                    "repeats"):
            if key in r:
                notes += f" {key}={r[key]}"
        if "min_seconds" in r:
            notes += f" min={r['min_seconds']:.4g}s"
        if "cpu_seconds" in r:
            notes += f" cpu={r['cpu_seconds']:.4g}s"
        sec = f"{r['seconds']:.4g}" if "seconds" in r else "—"
        lines.append(f"| {r['library']} | {r['size']} | {r.get('params', '')} | {r.get('tokens', r['seqs'] * CONTEXT)} "
                     f"| {r['stage']} | {sec} | {f'{rat:.2f}' if rat else '—'} | {r.get('peak_mb', '—')} "
                     f"| {r.get('growth_mb', '—')} | {r['load_before']}→{r.get('load_after', '?')} | {notes.strip()} |")
    for title, key in (("Fitted exponents vs parameters (fixed data), wall time", "fits_params"),
                       ("Fitted exponents vs tokens (fixed model), wall time", "fits_tokens"),
                       ("Fitted exponents vs parameters (fixed data), CPU time", "fits_params_cpu"),
                       ("Fitted exponents vs tokens (fixed model), CPU time", "fits_tokens_cpu")):
        lines += ["", f"## {title}", "", "`seconds ~ x^b`, least squares in log10-log10; residuals in log10 units "
                  "(0.1 = a factor 1.26).", "", "| library:stage | b | points | RMS residual | residuals | note |",
                  "|---|---|---|---|---|---|"]
        for name, f in payload[key].items():
            res = ", ".join(f"{v:+.3f}" for v in f["residuals_log10"])
            lines.append(f"| {name} | {f['exponent']:.2f} | {f['points']} | {f['rms_log10']:.3f} | {res} "
                         f"| {f['note']} |")
    lines += ["", "## Ratio check (more than 20% growth of a committed ratio is a regression)", "",
              "Ratios are stage / gradient wall time of the same library and size. `products.json` rows are "
              "`bench_products.py`'s `transformer_1m` (`common.FlatTransformer`: 939,360 parameters, 8 x 64 "
              "tokens, ReLU, fused qkv), compared with this file's `1e6` model (`wdecomp.models.Transformer`: "
              "the same 939,360 parameters and tokens, GELU, separate q/k/v); `costs` rows compare with the "
              "previous results file of the same name.", ""]
    if payload["regressions"]:
        lines += ["| ratio | previous | now | change | |", "|---|---|---|---|---|", *payload["regressions"]]
        flagged = [r for r in payload["regressions"] if "REGRESSION" in r]
        lines += ["", f"{len(flagged)} of {len(payload['regressions'])} compared ratios grew by more than 20%."
                  + (" Under this load, separate-process ratios move by tens of percent between runs; rerun "
                     "on an idle machine before acting on them." if flagged else "")]
    else:
        lines.append("No earlier result holds the same quantity.")
    if payload.get("replicates"):
        lines += ["", "## Replicates (the same measurement in another run; not used in the fits)", "",
                  "| library | size | tokens | stage | seconds | CPU s | load | run |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in payload["replicates"]:
            sec = f"{r['seconds']:.4g}" if "seconds" in r else r.get("error", "")[:80]
            cpu = f"{r['cpu_seconds']:.4g}" if "cpu_seconds" in r else "—"
            lines.append(f"| {r['library']} | {r['size']} | {r['seqs'] * CONTEXT} | {r['stage']} | {sec} | {cpu} "
                         f"| {r['load_before']}→{r.get('load_after', '?')} | {r.get('run', '')} |")
    if payload.get("skipped"):
        lines += ["", "## Not run", "", *[f"- {s}" for s in payload["skipped"]]]
    lines += ["", "![cost curves](" + payload["plot"] + ")", ""]
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 2, figsize=(11, 8))
    panels = [(grid[i, j], f"fits_{x}{suffix}", xlabel, kind)
              for i, (suffix, kind) in enumerate((("", "wall"), ("_cpu", "CPU")))
              for j, (x, xlabel) in enumerate((("params", "parameters"), ("tokens", "tokens")))]
    for ax, key, xlabel, kind in panels:
        for name, f in payload[key].items():
            library, stage = name.split(":")
            xs = f["x"]
            ys = [10 ** (f["intercept"] + f["exponent"] * math.log10(x) + e)
                  for x, e in zip(xs, f["residuals_log10"])]
            style = "-o" if library == "wdecomp" else "--x"
            ax.loglog(xs, ys, style, ms=4, lw=1, label=f"{'cl ' if library == 'curvlinops' else ''}{stage} "
                      f"b={f['exponent']:.2f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{kind} seconds (per vector for blocks)")
        ax.grid(True, which="both", alpha=0.3)
        if payload[key]:
            ax.legend(fontsize=6, ncol=2)
    for ax, _, _, kind in panels[0::2]:
        ax.set_title(f"{kind} time vs model size ({payload['settings']['seqs']} x {CONTEXT} tokens)", fontsize=9)
    for ax, _, _, kind in panels[1::2]:
        ax.set_title(f"{kind} time vs data ({payload['settings']['data_size']} model)", fontsize=9)
    fig.suptitle(f"bench_costs: 2 threads, load {payload['load_start']}-{payload.get('load_end', '?')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def summarise(payload: dict, previous: dict | None, products: dict | None, seqs: int, data_size: str,
              name: str) -> None:
    """Fits and ratio checks of the rows so far, written to the results files (after every row)."""
    rows = payload["rows"]
    payload["load_end"] = rows[-1].get("load_after", load1()) if rows else load1()
    payload["fits_params"] = fits(rows, "params", lambda r: r["seqs"] == seqs)
    payload["fits_tokens"] = fits(rows, "tokens", lambda r: r["size"] == data_size)
    payload["fits_params_cpu"] = fits(rows, "params", lambda r: r["seqs"] == seqs, "cpu_seconds")
    payload["fits_tokens_cpu"] = fits(rows, "tokens", lambda r: r["size"] == data_size, "cpu_seconds")
    payload["regressions"] = regressions(rows, seqs, previous, products)
    write_results(name, payload, markdown(payload))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--single", nargs=4, metavar=("LIBRARY", "SIZE", "SEQS", "STAGE"))
    ap.add_argument("--sizes", default="1e5,1e6,3e6,1e7", help=f"labels of {sorted(WIDTHS)}")
    ap.add_argument("--quick", action="store_true", help=f"tiny sizes ({QUICK_SIZES}), seconds")
    ap.add_argument("--out", default=None, help="results name (default costs; quick: costs_quick)")
    ap.add_argument("--seqs", type=int, default=8, help="sequences of 64 tokens for the size curve")
    ap.add_argument("--data-size", default=None, help="model size label of the data curve (default 1e6)")
    ap.add_argument("--data-seqs", default="4,8,16,32", help="sequences for the data curve (2x apart)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--data-stages", default="gradient,hvp_cached,hvp_block16,ggn,lib,ablation")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")
    ap.add_argument("--repeat-budget", type=float, default=30.0, help="stop repeating a product past this")
    ap.add_argument("--peers-python", default="/tmp/peers/bin/python")
    ap.add_argument("--resume", action="store_true", help="keep rows already in the output file")
    ap.add_argument("--summarise-only", action="store_true",
                    help="rebuild markdown, fits and plot from the output file (same flags as the run); "
                         "planned measurements missing from it are listed as not run")
    args = ap.parse_args()
    if args.single:
        library, size, seqs, stage = args.single
        cap_memory()
        print(json.dumps(measure(library, size, int(seqs), stage, args.repeat_budget)))
        return
    if args.quick:  # wdecomp stages in this process (no per-stage memory); curvlinops still a subprocess
        args.sizes, args.seqs, args.data_seqs = QUICK_SIZES, 2, "1,2,4"
        args.data_size = args.data_size or "q2"
    name = args.out or ("costs_quick" if args.quick else "costs")
    data_size = args.data_size or "1e6"
    sizes, stages = args.sizes.split(","), args.stages.split(",")
    peers = Path(args.peers_python).exists()
    previous = json.loads((RESULTS / f"{name}.json").read_text()) if (RESULTS / f"{name}.json").exists() else None
    products = json.loads((RESULTS / "products.json").read_text()) if (RESULTS / "products.json").exists() else None
    rows: list[dict] = [r for r in previous["rows"] if "seconds" in r] if (args.resume and previous) else []
    done = {(r["library"], r["size"], r["seqs"], r["stage"]) for r in rows}
    payload: dict[str, Any] = {
        "machine": machine() | {"threads": 2}, "load_start": load1(), "rows": rows, "skipped": [],
        "settings": {"seqs": args.seqs, "data_size": data_size, "data_seqs": args.data_seqs,
                     "timeout_s": args.timeout, "widths": {s: WIDTHS[s] for s in sizes}, "untrained": True},
        "plot": f"{name}.png"}
    plan = [(lib, size, args.seqs, stage) for size in sizes for lib in ("wdecomp", "curvlinops")
            for stage in (stages if lib == "wdecomp" else [s for s in PEER_STAGES if s in stages])]
    plan += [("wdecomp", data_size, int(s), stage) for s in args.data_seqs.split(",") if int(s) != args.seqs
             for stage in args.data_stages.split(",")]
    # Cheap measurements first at every size, so a bounded run still yields whole curves.
    order = {stage: i for i, stage in enumerate((*PRODUCTS, "ablation", "eigh20", "rank", "lib"))}
    plan.sort(key=lambda m: (order[m[3]] if m[2] == args.seqs else order["ablation"] + 0.5, m[2],
                             sizes.index(m[1]) if m[1] in sizes else 0))
    if not peers:
        payload["skipped"].append(f"curvlinops: no peers interpreter at {args.peers_python}")
    if args.summarise_only:
        payload |= {k: previous[k] for k in ("machine", "load_start", "rows", "skipped", "replicates", "runs")
                    if previous and k in previous}
        have = {(r["library"], r["size"], r["seqs"], r["stage"]) for r in payload["rows"]}
        for lib, size, seqs, stage in plan:
            what = f"{lib} {stage} at {size} ({seqs}x{CONTEXT} tokens)"
            if (lib, size, seqs, stage) not in have and not any(s.startswith(what) for s in payload["skipped"]):
                payload["skipped"].append(f"{what}: not run, the run was stopped (session time)")
        summarise(payload, None, products, args.seqs, data_size, name)
        plot(payload, RESULTS / f"{name}.png")
        return
    failed: set[tuple[str, str, int]] = set()
    for lib, size, seqs, stage in plan:
        if (lib, size, seqs, stage) in done or (lib == "curvlinops" and not peers):
            continue
        if (lib, stage, seqs) in failed:
            payload["skipped"].append(f"{lib} {stage} at {size} ({seqs}x{CONTEXT} tokens): timed out or failed "
                                      "at a smaller size")
            continue
        python = args.peers_python if lib == "curvlinops" else sys.executable
        row = run_one(python, lib, size, seqs, stage, args.timeout, args.repeat_budget, in_process=args.quick)
        print(json.dumps(row), flush=True)
        rows.append(row)
        if "error" in row:
            failed.add((lib, stage, seqs))
        summarise(payload, previous, products, args.seqs, data_size, name)
    summarise(payload, previous, products, args.seqs, data_size, name)
    plot(payload, RESULTS / f"{name}.png")
    print(markdown(payload))


if __name__ == "__main__":
    main()
