"""LIB interaction basis of a ~1M-parameter two-layer character transformer over 10k tokens (issue 16).

Model: :func:`wdecomp.models.char.char_transformer` with ``d_model=192, d_mlp=768, n_heads=4,
context=64`` (942,055 parameters), trained briefly (200k tokens, 98 AdamW steps; the weights are
cached). The benchmark measures the basis computation, not model quality: a short training run
only gives the activations and Jacobians realistic, non-random structure.

Data: the first N of 160 training windows of 64 characters (160 = 10,240 tokens), float32, 2
threads, Jacobian chunks of 8 sequences. Each row is one ``wd.interaction_basis(model, data,
["blocks.0", "blocks.1", "ln_f"], "lib", ...)`` call in a fresh subprocess (so ``ru_maxrss`` is
that row's peak), timed in wall and process CPU seconds, with the stages inside it timed by
wrapping the module-level functions it calls (``gram_matrices``; ``_moments``, which streams
Jacobian chunks and accumulates ``M'``, per layer pair; ``_interaction_layer``/``_static_basis``,
the eigendecompositions). Rows:

* ``wdecomp-centred`` (``sequence="summed"``: ``M`` from ``sum_p J_tp``, ``d + 1`` tangents per
  sequence) on all 160 sequences: the configuration the issue's 806 s was measured on;
* rib's default (per-position ``M'``: ``sum_t sum_p J_tp^T J_tp``, every block ``J_tp``) on a
  subset, extrapolated: its causal attention pair needs the whole ``(P k) x (P (d + 1))``
  Jacobian of every sequence (12,288 VJPs);
* rib's ``stochastic_sources=R`` (``R k`` VJPs per sequence) on all 160 sequences (``R = 1``) and
  on the subset (``R = 1, 8``), whose Lambda are compared with the exact default's;
* with ``--before DIR`` (a checkout of the package before the change, e.g. ``git archive
  f3008a9 wdecomp | tar -x -C DIR``), the summed and exact rows on the subset with that code.

``--stage speedup`` (not run by default) compares the batched ``interaction_jacobians`` with
per-example loops of ``jacfwd``, ``jvp`` and ``autograd.grad``.

Other engineers share the machine: run under ``flock /tmp/wdecomp-bench.lock``; the load average
is recorded. Run: ``flock /tmp/wdecomp-bench.lock python benchmarks/bench_lib.py [--before DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, setup_threads, write_results  # noqa: E402

LAYERS = ["blocks.0", "blocks.1", "ln_f"]
MODEL_KW = dict(d_model=192, d_mlp=768, n_heads=4, context=64, tokens=200_000, batch_size=32,
                n_data_batches=5, train=True, progress=False)
CHUNK = 8


def _bundle():
    from wdecomp.models.char import char_transformer

    return char_transformer(**MODEL_KW)


def _load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "n/a"


def stage_lib(sequences: int, variant: str, stochastic: int | None, save: str | None = None,
              chunk: int | None = CHUNK) -> dict:
    """One ``wd.interaction_basis`` call on the first ``sequences`` windows, timed by stage."""
    import wdecomp as wd
    from wdecomp.bases import interaction as inter

    bundle = _bundle()
    model = bundle.model.eval()
    x = torch.cat([b[0] for b in bundle.data])[:sequences]
    data = [(x[i:i + 32],) for i in range(0, len(x), 32)]
    times: dict[str, float] = {"gram": 0.0, "jacobians_and_interaction": 0.0, "eigendecompositions": 0.0}
    per_pair: dict[str, float] = {}

    def timed(name, fn, pair=False):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            dt = time.perf_counter() - t0
            times[name] += dt
            if pair:
                per_pair[f"{args[2]} -> {args[3]}"] = dt
            return out
        return wrapper

    inter.gram_matrices = timed("gram", inter.gram_matrices)
    inter._moments = timed("jacobians_and_interaction", inter._moments, pair=True)
    inter._interaction_layer = timed("eigendecompositions", inter._interaction_layer)
    inter._static_basis = timed("eigendecompositions", inter._static_basis)

    t0, c0 = time.perf_counter(), time.process_time()
    basis = wd.interaction_basis(model, data, LAYERS, "lib", variant=variant, stochastic_sources=stochastic,
                                 chunk_size=chunk, progress=False)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    if save:
        torch.save({k: (basis[k].eigenvalues, basis[k].transform) for k in LAYERS}, save)
    n_params = sum(p.numel() for p in model.parameters())
    layers = {}
    for key in LAYERS:
        ev = basis[key].eigenvalues
        layers[key] = {"k": int(basis[key].transform.shape[0]), "d": int(basis[key].transform.shape[1]),
                       "top_eigenvalues": [float(v) for v in ev[:5]], "min_eigenvalue": float(ev[-1])}
    return {
        "n_params": n_params, "metrics": {k: bundle.metrics[k] for k in ("val_loss", "train_loss", "n_tokens")},
        "variant": variant, "stochastic_sources": stochastic, "sequences": len(x), "tokens": x.numel(),
        "chunk_size": chunk, "layers": layers, "total_s": total, "cpu_s": cpu, "stages_s": times,
        "pairs_s": per_pair, "peak_rss_mb": peak_rss_mb(), "dtype": "float32",
    }


def compare_saved(exact: str, approx: str) -> dict:
    """Relative errors of ``approx``'s LIB eigenvalues against ``exact``'s (same data), per layer."""
    E, A = torch.load(exact), torch.load(approx)
    out = {}
    for key in LAYERS:
        e, a = E[key][0], A[key][0]
        n = min(len(e), len(a))
        top = float(e.abs().max())
        out[key] = {"max_rel_err_vs_largest": float((a[:n] - e[:n]).abs().max()) / top,
                    "top5_rel_err": [float(abs(a[i] - e[i]) / abs(e[i])) for i in range(min(5, n))],
                    "dims": [len(e), len(a)]}
    return out


def stage_speedup(n_batched: int, n_jvp: int, n_autograd: int) -> dict:
    from torch.func import jacfwd, jvp

    from wdecomp.activations import run_with_hooks
    from wdecomp.bases.interaction import interaction_jacobians

    bundle = _bundle()
    model = bundle.model.eval()
    x = torch.cat([b[0] for b in bundle.data])[:n_batched]
    src, tgt = "blocks.0", "blocks.1"

    def g_for(xi: torch.Tensor, ai: torch.Tensor):
        def g(delta: torch.Tensor) -> torch.Tensor:
            _, out = run_with_hooks(model, xi[None], read=[tgt], write={src: (ai + delta)[None]})
            return out[tgt][0]
        return g

    # warm-up of every path on one example
    list(interaction_jacobians(model, [x[:2]], src, tgt, chunk_size=2))
    t0 = time.perf_counter()
    Jb = torch.cat(list(interaction_jacobians(model, [x], src, tgt, chunk_size=CHUNK)))
    t_batched = time.perf_counter() - t0

    with torch.no_grad():
        _, acts = run_with_hooks(model, x, read=[src])
    a = acts[src]
    d = a.shape[-1]
    delta0 = torch.zeros(d)
    with torch.no_grad():
        jacfwd(g_for(x[0], a[0]))(delta0)  # warm-up
        t0 = time.perf_counter()
        Jl = torch.stack([jacfwd(g_for(x[i], a[i]))(delta0) for i in range(n_batched)])
        t_loop = time.perf_counter() - t0

    def jvp_loop(i: int) -> torch.Tensor:
        g = g_for(x[i], a[i])
        eye = torch.eye(d)
        cols = [jvp(g, (delta0,), (eye[j],))[1] for j in range(d)]
        return torch.stack(cols, dim=-1)

    with torch.no_grad():
        t0 = time.perf_counter()
        Jj = torch.stack([jvp_loop(i) for i in range(n_jvp)])
        t_jvp = time.perf_counter() - t0

    # torch.autograd.functional.jacobian(vectorize=False) takes one backward per output entry
    # (T * d = 12,288 per sequence, > 8 minutes each here); the same loop is timed on the rows of
    # the last position only (192 backwards) and scaled by T.
    T = x.shape[1]
    rows = []
    t0 = time.perf_counter()
    for i in range(n_autograd):
        delta = delta0.clone().requires_grad_(True)
        y = g_for(x[i], a[i])(delta)[-1]
        rows.append(torch.stack([torch.autograd.grad(y[r], delta, retain_graph=True)[0] for r in range(y.shape[0])]))
    t_autograd = (time.perf_counter() - t0) * T
    Ja = torch.stack(rows)

    def rel(A: torch.Tensor, B: torch.Tensor) -> float:
        return float((A - B).abs().max() / B.abs().max())

    per_ex = {"batched_vmap": t_batched / n_batched, "loop_jacfwd": t_loop / n_batched,
              "loop_jvp_per_direction": t_jvp / n_jvp, "loop_autograd_jacobian": t_autograd / n_autograd}
    return {
        "source": src, "target": tgt, "jacobian_shape_per_example": list(Jb.shape[1:]), "chunk_size": CHUNK,
        "examples": {"batched_vmap": n_batched, "loop_jacfwd": n_batched, "loop_jvp_per_direction": n_jvp,
                     "loop_autograd_jacobian": n_autograd},
        "total_s": {"batched_vmap": t_batched, "loop_jacfwd": t_loop, "loop_jvp_per_direction": t_jvp,
                    "loop_autograd_jacobian": t_autograd},
        "per_example_s": per_ex,
        "speedup_vs": {k: v / per_ex["batched_vmap"] for k, v in per_ex.items() if k != "batched_vmap"},
        "max_rel_diff_vs_batched": {"loop_jacfwd": rel(Jl, Jb), "loop_jvp_per_direction": rel(Jj, Jb[:n_jvp]),
                                    "loop_autograd_jacobian": rel(Ja, Jb[:n_autograd, -1])},
        "peak_rss_mb": peak_rss_mb(),
    }


def _child(args: list[str], pythonpath: str | None = None) -> dict:
    env = dict(os.environ)
    if pythonpath:  # another checkout of the package (the "before" code), ahead of the installed one
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _lib_args(r: dict) -> list[str]:
    args = ["--stage", "lib", "--sequences", str(r["sequences"]), "--variant", r["variant"]]
    if r.get("stochastic"):
        args += ["--stochastic", str(r["stochastic"])]
    if r.get("save"):
        args += ["--save", r["save"]]
    if r.get("chunk", CHUNK) != CHUNK:
        args += ["--chunk", str(r["chunk"])]
    return args


def markdown(r: dict) -> str:
    runs = r["runs"]
    first = next(iter(runs.values()))
    lines = [
        "# LIB interaction basis: ~1M-parameter character transformer, 10k tokens, 2 CPU threads", "",
        f"Model: `char_transformer(d_model=192, d_mlp=768, n_heads=4, context=64)`, {first['n_params']:,} "
        f"parameters, trained briefly ({first['metrics']['n_tokens']:,} tokens; val loss "
        f"{first['metrics']['val_loss']:.3f} nats/char). The benchmark measures the basis computation, not "
        "model quality.",
        f"Data: the first N of 160 windows x 64 characters (160 = 10,240 tokens), float32; layers {LAYERS}; "
        f"Jacobian chunk {CHUNK} sequences; one fresh process per row (peak RSS is that row's).",
        f"Machine: {r['machine']}; load average before/after: {r['load_before']} / {r['load_after']}.", "",
        "| run | code | sequences | wall s | CPU s | CPU s / sequence | wall s at 160 (extrapolated) | peak RSS MiB "
        "| Jacobians + M' s | per pair s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in runs.items():
        per = v["cpu_s"] / v["sequences"]
        at160 = v["total_s"] * 160 / v["sequences"]
        pairs = "; ".join(f"{k}: {t:.1f}" for k, t in v["pairs_s"].items())
        lines.append(f"| {name} | {v.get('code', 'this')} | {v['sequences']} | {v['total_s']:.1f} | {v['cpu_s']:.1f} "
                     f"| {per:.2f} | {at160:.0f} | {v['peak_rss_mb']:.0f} "
                     f"| {v['stages_s']['jacobians_and_interaction']:.1f} | {pairs} |")
    if r.get("accuracy"):
        lines += ["", "## rib's stochastic sources against the exact per-position M' (same subset)", "",
                  "| run | layer | max abs. error of Lambda / largest Lambda | top-5 relative errors |",
                  "|---|---|---|---|"]
        for name, acc in r["accuracy"].items():
            for key, e in acc.items():
                lines.append(f"| {name} | {key} | {e['max_rel_err_vs_largest']:.2e} | "
                             f"{', '.join(f'{v:.1e}' for v in e['top5_rel_err'])} |")
    lines += ["", r.get("notes", ""), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["lib", "speedup"])
    ap.add_argument("--sequences", type=int, default=160)
    ap.add_argument("--variant", default="rib")
    ap.add_argument("--stochastic", type=int)
    ap.add_argument("--save")
    ap.add_argument("--chunk", type=int, default=CHUNK, help="Jacobian chunk (0: the default plan)")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in $TMPDIR/lib_rows.jsonl")
    ap.add_argument("--subset", type=int, default=4, help="sequences for the exact per-position run")
    ap.add_argument("--before", help="a checkout of the package before the change (for 'before' rows)")
    ap.add_argument("--n-batched", type=int, default=24)
    ap.add_argument("--n-jvp", type=int, default=2)
    ap.add_argument("--n-autograd", type=int, default=1)
    ap.add_argument("--notes", default="")
    a = ap.parse_args()
    setup_threads(2)
    if a.stage == "lib":
        print(json.dumps({**stage_lib(a.sequences, a.variant, a.stochastic, a.save, a.chunk or None),
                          "load": _load()}))
        return
    if a.stage == "speedup":
        print(json.dumps({**stage_speedup(a.n_batched, a.n_jvp, a.n_autograd), "load": _load()}))
        return
    _bundle()  # train (or load from the cache) once, outside the timed processes
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    sub = a.subset
    # the exact per-position Jacobian of one sequence is 0.6 GB (float32) + 1.2 GB (float64): the
    # exact rows (this code's and the "before" code's, which also forms it for the summed form) take
    # one sequence per chunk (the default plan refuses: its estimate, 24 GiB, is over the 2 GiB budget)
    plan = {
        "wdecomp-centred (sequence='summed')": dict(variant="wdecomp-centred", sequences=160),
        "rib, stochastic_sources=1": dict(variant="rib", stochastic=1, sequences=160),
        "rib exact (default), subset": dict(variant="rib", sequences=sub, save=str(tmp / "lib_exact.pt"), chunk=1),
        "rib, stochastic_sources=1, subset": dict(variant="rib", stochastic=1, sequences=sub,
                                                  save=str(tmp / "lib_r1.pt")),
        "rib, stochastic_sources=8, subset": dict(variant="rib", stochastic=8, sequences=sub,
                                                  save=str(tmp / "lib_r8.pt")),
    }
    if a.before:
        plan["wdecomp-centred (sequence='summed'), subset [before]"] = dict(variant="wdecomp-centred",
                                                                            sequences=sub, chunk=1, before=True)
        plan["rib exact (default), subset [before]"] = dict(variant="rib", sequences=sub, chunk=1, before=True)
    rows_file = tmp / "lib_rows.jsonl"
    done = {}
    if a.resume and rows_file.exists():
        done = {json.loads(line)["name"]: json.loads(line)["row"] for line in rows_file.read_text().splitlines()}
    elif rows_file.exists():
        rows_file.unlink()
    res: dict = {"machine": machine(), "load_before": _load(), "runs": {}}
    for name, r in plan.items():
        if name not in done:
            row = _child(_lib_args(r), a.before if r.get("before") else None)
            done[name] = {**row, "code": "before" if r.get("before") else "this"}
            with rows_file.open("a") as f:
                f.write(json.dumps({"name": name, "row": done[name]}) + "\n")
            print(name, json.dumps(done[name]), flush=True)
        res["runs"][name] = done[name]
    res["accuracy"] = {name: compare_saved(plan["rib exact (default), subset"]["save"], plan[name]["save"])
                       for name in ("rib, stochastic_sources=1, subset", "rib, stochastic_sources=8, subset")}
    res["load_after"] = _load()
    res["notes"] = a.notes
    write_results("lib", res, markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
