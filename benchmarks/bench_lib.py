"""LIB interaction basis of a ~1M-parameter two-layer character transformer over 10k tokens.

Model: :func:`wdecomp.models.char.char_transformer` with ``d_model=192, d_mlp=768, n_heads=4,
context=64`` (942,055 parameters), trained briefly (200k tokens, 98 AdamW steps; the weights are
cached). The benchmark measures the basis computation, not model quality: a short training run
only gives the activations and Jacobians realistic, non-random structure.

Data: 160 training windows of 64 characters = 10,240 tokens, float32, 2 threads.

Two measurements, each in a fresh subprocess (so ``ru_maxrss`` is that stage's peak):

1. ``lib``: ``wd.interaction_basis(model, data, ["blocks.0", "blocks.1", "ln_f"], "lib")``. The
   stages inside that one public call are timed by wrapping the module-level functions it calls
   (``gram_matrices``; ``interaction_matrix``, which streams Jacobian chunks and accumulates
   ``J^T J``; ``_interaction_layer``/``_static_basis``, the eigendecompositions). The largest
   Jacobian chunk ever materialised is recorded (``interaction_jacobians`` is wrapped too): a
   ``(chunk, T, k_next, d)`` tensor of activation Jacobians -- no ``(samples x params)`` or even
   ``(samples x ...)`` Jacobian is ever held.
2. ``speedup``: the same per-example Jacobians ``d f~_{blocks.1} / d f_{blocks.0}`` (source
   direction added at every position, 192 x 64 x 192 per sequence) on a subset, by

   * the batched path: ``interaction_jacobians`` (``vmap`` over examples of ``jacfwd``, chunks of 8);
   * a per-example loop of ``torch.func.jacfwd`` (no ``vmap`` over examples; ``jacfwd`` itself
     still batches its 192 tangents);
   * a per-example, per-direction loop of ``torch.func.jvp`` (no ``vmap`` at all), on fewer examples;
   * a per-example loop of one ``torch.autograd.grad`` per output entry (what
     ``torch.autograd.functional.jacobian(vectorize=False)`` does: 12,288 backwards per sequence),
     timed on the 192 rows of the last position of one sequence and scaled by 64 positions;

   each checked equal to the batched result; per-example times are compared.

Other engineers share the machine: run under ``flock /tmp/wdecomp-bench.lock``; the load average
is recorded. Run: ``flock /tmp/wdecomp-bench.lock python benchmarks/bench_lib.py``.
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


def stage_lib() -> dict:
    import wdecomp as wd
    from wdecomp.bases import interaction as inter

    bundle = _bundle()
    model = bundle.model.eval()
    data = bundle.data
    tokens = sum(x.numel() for x, _ in data)
    times: dict[str, float] = {"gram": 0.0, "jacobians_and_interaction": 0.0, "eigendecompositions": 0.0}
    per_pair: dict[str, float] = {}
    largest = {"shape": None, "bytes": 0, "chunks": 0}

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

    orig_jac = inter.interaction_jacobians

    def jac_wrapper(*args, **kwargs):
        for J in orig_jac(*args, **kwargs):
            largest["chunks"] += 1
            nbytes = J.numel() * J.element_size()
            if nbytes > largest["bytes"]:
                largest.update(shape=list(J.shape), bytes=nbytes)
            yield J

    inter.gram_matrices = timed("gram", inter.gram_matrices)
    inter.interaction_matrix = timed("jacobians_and_interaction", inter.interaction_matrix, pair=True)
    inter._interaction_layer = timed("eigendecompositions", inter._interaction_layer)
    inter._static_basis = timed("eigendecompositions", inter._static_basis)
    inter.interaction_jacobians = jac_wrapper

    t0 = time.perf_counter()
    basis = wd.interaction_basis(model, data, LAYERS, "lib", chunk_size=CHUNK)
    total = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    layers = {}
    for key in LAYERS:
        lb = basis[key]
        ev = lb.eigenvalues
        layers[key] = {"k": int(lb.transform.shape[0]), "d": int(lb.transform.shape[1]),
                       "top_eigenvalues": [float(v) for v in ev[:5]], "min_eigenvalue": float(ev[-1])}
    return {
        "n_params": n_params, "metrics": {k: bundle.metrics[k] for k in ("val_loss", "train_loss", "n_tokens")},
        "sequences": sum(len(x) for x, _ in data), "tokens": tokens, "chunk_size": CHUNK, "layers": layers,
        "total_s": total, "stages_s": times, "pairs_s": per_pair, "largest_jacobian_chunk": largest,
        "full_jacobian_bytes_if_held": None if largest["shape"] is None
        else largest["bytes"] // largest["shape"][0] * sum(len(x) for x, _ in data),
        "params_jacobian_bytes_if_held": tokens * n_params * 4,
        "peak_rss_mb": peak_rss_mb(), "dtype": "float32",
    }


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


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(r: dict) -> str:
    lib, sp = r["lib"], r["speedup"]
    lines = [
        "# LIB interaction basis: ~1M-parameter character transformer, 10k tokens, 2 CPU threads", "",
        f"Model: `char_transformer(d_model=192, d_mlp=768, n_heads=4, context=64)`, {lib['n_params']:,} parameters, "
        f"trained briefly ({lib['metrics']['n_tokens']:,} tokens; "
        f"val loss {lib['metrics']['val_loss']:.3f} nats/char). "
        "The benchmark measures the basis computation, not model quality.",
        f"Data: {lib['sequences']} sequences x 64 = {lib['tokens']:,} tokens, {lib['dtype']}; "
        f"layers {LAYERS}; Jacobian chunk {lib['chunk_size']} sequences.",
        f"Machine: {r['machine']}; load average before/after: {r['load_before']} / {r['load_after']} "
        "(shared 2-core machine: other engineers' jobs ran at the same time, so wall times are upper bounds).", "",
        "## LIB basis (one `wd.interaction_basis` call, fresh process)", "",
        "| stage | wall s |", "|---|---|",
    ]
    for k, v in lib["stages_s"].items():
        lines.append(f"| {k} | {v:.1f} |")
    for k, v in lib["pairs_s"].items():
        lines.append(f"| &nbsp; pair {k} | {v:.1f} |")
    lines += [f"| **total** | **{lib['total_s']:.1f}** |", "",
              f"Peak RSS (process, incl. model + data + torch): **{lib['peak_rss_mb']:.0f} MiB**.", "",
              f"Largest Jacobian ever held: one chunk of shape {lib['largest_jacobian_chunk']['shape']} "
              f"({lib['largest_jacobian_chunk']['bytes'] / 2**20:.0f} MiB; {lib['largest_jacobian_chunk']['chunks']} "
              "chunks streamed). Holding all examples' activation Jacobians at once would take "
              f"{lib['full_jacobian_bytes_if_held'] / 2**30:.1f} GiB; a (tokens x params) Jacobian "
              f"{lib['params_jacobian_bytes_if_held'] / 2**30:.1f} GiB. Neither is ever formed.", "",
              "| layer | k | d | top eigenvalues |", "|---|---|---|---|"]
    for k, v in lib["layers"].items():
        lines.append(f"| {k} | {v['k']} | {v['d']} | {', '.join(f'{e:.3g}' for e in v['top_eigenvalues'])} |")
    lines += ["", f"## Batched vmap Jacobians vs per-example loops ({sp['source']} -> {sp['target']}, "
              f"{sp['jacobian_shape_per_example']} per sequence)", "",
              "| path | sequences | s / sequence | batched speedup | max rel. diff vs batched |",
              "|---|---|---|---|---|"]
    for k in ("batched_vmap", "loop_jacfwd", "loop_jvp_per_direction", "loop_autograd_jacobian"):
        spd = "1.00x" if k == "batched_vmap" else f"{sp['speedup_vs'][k]:.2f}x"
        diff = "-" if k == "batched_vmap" else f"{sp['max_rel_diff_vs_batched'][k]:.1e}"
        lines.append(f"| {k} | {sp['examples'][k]} | {sp['per_example_s'][k]:.2f} | {spd} | {diff} |")
    lines += ["", f"Peak RSS of the speedup process: {sp['peak_rss_mb']:.0f} MiB.", "", r.get("notes", ""), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["lib", "speedup"])
    ap.add_argument("--n-batched", type=int, default=24)
    ap.add_argument("--n-jvp", type=int, default=2)
    ap.add_argument("--n-autograd", type=int, default=1)
    ap.add_argument("--notes", default="")
    ap.add_argument("--lib-json", help="use this saved --stage lib output instead of running it")
    ap.add_argument("--speedup-json", help="use this saved --stage speedup output instead of running it")
    a = ap.parse_args()
    setup_threads(2)
    if a.stage == "lib":
        print(json.dumps({**stage_lib(), "load": _load()}))
        return
    if a.stage == "speedup":
        print(json.dumps({**stage_speedup(a.n_batched, a.n_jvp, a.n_autograd), "load": _load()}))
        return
    _bundle()  # train (or load from the cache) once, outside the timed processes
    res = {"machine": machine(), "load_before": _load()}
    if a.lib_json:  # a stage run earlier on its own (``--stage lib > file``)
        res["lib"] = json.loads(Path(a.lib_json).read_text().strip().splitlines()[-1])
    else:
        res["lib"] = _child(["--stage", "lib"])
    if a.speedup_json:
        res["speedup"] = json.loads(Path(a.speedup_json).read_text().strip().splitlines()[-1])
    else:
        res["speedup"] = _child(["--stage", "speedup", "--n-batched", str(a.n_batched), "--n-jvp", str(a.n_jvp),
                                 "--n-autograd", str(a.n_autograd)])
    res["load_after"] = _load()
    res["notes"] = a.notes
    write_results("lib", res, markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
