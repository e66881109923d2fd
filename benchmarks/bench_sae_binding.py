"""The planted matrix-binding benchmark: recovery of ``R*``, the fit ratio, and the control.

For each case, :func:`wdecomp.sae.binding.planted_binding` data (``d = 16``, ``m = 24`` features
per slot, 40,000 activations, occupancy 0.7, magnitudes 0.5-1.5, noise 0.01) with an orthogonal
or a general ``R*`` (singular values 0.8-1.25), or the no-binding control (slot 2 unrelated to
slot 1), go through :func:`wdecomp.sae.binding.binding_report` with its defaults (plain-seeded
search, TopK ``k = 2`` for both SAEs, 6000 steps of batch 256, lr 3e-3). Reported per case: the
relative error of the recovered ``R`` against ``R*`` (the smaller of the two slot orders, see
:func:`~wdecomp.sae.binding.r_error`), the fit ratio, FVU of the binding SAE and of the plain SAE
with ``2 m`` latents at equal L0, the dictionary residual, the verdict, and the process CPU
seconds of the case (one thread; each case runs in its own subprocess).

Run: ``python benchmarks/bench_sae_binding.py [--cases general:0 orthogonal:1 control-general:0 ...]
[--jobs 2] [--name sae_binding]``.

``--char``: the same report on the default char transformer's residual stream after block 0
(``d = 128``): binding SAE with ``m = 512`` free columns against a plain SAE with 1024 latents,
both TopK ``k = 8``, ``--char-steps`` (500) steps of 1024 streamed activations, FVU on the first 8
validation batches; writes ``sae_binding_char``.
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
from common import machine, write_results  # noqa: E402

DEFAULT_CASES = [f"{kind}:{seed}" for kind in ("orthogonal", "general") for seed in (0, 1, 2)] + [
    "control-general:0", "control-orthogonal:0"]


def child(case: str) -> dict:
    from wdecomp.sae.binding import binding_report, planted_binding

    torch.set_num_threads(1)
    kind, seed_s = case.split(":")
    seed = int(seed_s)
    bound = not kind.startswith("control-")
    R = kind.removeprefix("control-")
    P = planted_binding(40000, 16, 24, R=R, bound=bound, seed=seed)
    t0 = time.process_time()
    rep = binding_report(P.X, n_free=24, k=2, steps=6000, batch_size=256, lr=3e-3, seed=seed, R_true=P.R,
                         progress=False)
    cpu = time.process_time() - t0
    return {"case": case, "R": R, "seed": seed, "bound": bound, "r_error": rep.r_error,
            "orientation": rep.orientation, "fit_ratio": rep.fit_ratio, "fvu_binding": rep.fvu_binding,
            "fvu_plain": rep.fvu_plain, "l0_binding": rep.l0_binding, "l0_plain": rep.l0_plain,
            "dict_residual": rep.dict_residual, "supported": rep.supported, "cpu_seconds": cpu,
            "decoder_params": [rep.decoder_params_binding, rep.decoder_params_plain]}


def char_run(steps: int) -> dict:
    import wdecomp.models as wm
    from wdecomp.sae.binding import binding_report
    from wdecomp.sae.train import hook_activations

    torch.set_num_threads(1)
    bundle = wm.char_transformer(n_data_batches=None)
    model, data = bundle
    val = bundle.test[:8]
    hook = "blocks.0"
    t0 = time.process_time()
    rep = binding_report(lambda: hook_activations(model, data, hook, seed=1), n_free=512, k=8, steps=steps,
                         batch_size=1024, eval_source=lambda: hook_activations(model, val, hook, epochs=1),
                         progress=False)
    cpu = time.process_time() - t0
    sv = rep.r_singular_values
    out = {"hook": hook, "steps": steps, "fit_ratio": rep.fit_ratio, "fvu_binding": rep.fvu_binding,
           "fvu_plain": rep.fvu_plain, "l0_binding": rep.l0_binding, "l0_plain": rep.l0_plain,
           "dict_residual": rep.dict_residual, "supported": rep.supported, "slot_usage": list(rep.slot_usage),
           "r_singular_values": [sv[0], sv[len(sv) // 2], sv[-1]], "cpu_seconds": cpu,
           "decoder_params": [rep.decoder_params_binding, rep.decoder_params_plain], "report": str(rep)}
    md = (f"# Matrix-binding SAE on the char transformer ({hook}, d=128, m=512, k=8, {steps} steps)\n\n"
          f"{machine() | {'threads': 1}}; {cpu:.0f} CPU s\n\n```\n{rep}\n```\n")
    write_results("sae_binding_char", {"machine": {**machine(), "threads": 1}, **out}, md)
    print(md)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="KIND:SEED, KIND orthogonal|general|control-...")
    p.add_argument("--jobs", type=int, default=2, help="cases run at once (one thread each)")
    p.add_argument("--name", default="sae_binding")
    p.add_argument("--char", action="store_true", help="the char transformer's residual stream instead")
    p.add_argument("--char-steps", type=int, default=500)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.char:
        return char_run(args.char_steps)
    if args.child:
        out = child(args.child)
        print(json.dumps(out))
        return out
    procs: list[tuple[str, subprocess.Popen]] = []
    runs: list[dict] = []
    pending = list(args.cases)
    while pending or procs:
        while pending and len(procs) < args.jobs:
            case = pending.pop(0)
            procs.append((case, subprocess.Popen([sys.executable, __file__, "--child", case], text=True,
                                                 stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})))
        case, proc = procs.pop(0)
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"case {case} failed (exit {proc.returncode})")
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    lines = ["# Matrix-binding SAE on planted data (d=16, m=24, 40k activations, TopK k=2, 6000 steps)", "",
             f"{machine() | {'threads': 1}}; CPU seconds per case, one thread", "",
             "| case | R* error (order) | fit ratio | FVU binding / plain 2m | L0 b / p | dict residual | verdict "
             "| CPU s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        err = "-" if not r["bound"] else f"{r['r_error']:.4f} ({r['orientation']})"
        lines.append(f"| {r['case']} | {err} | {r['fit_ratio']:.3f} | {r['fvu_binding']:.4f} / {r['fvu_plain']:.4f} | "
                     f"{r['l0_binding']:.2f} / {r['l0_plain']:.2f} | {r['dict_residual']:.2e} | "
                     f"{'supported' if r['supported'] else 'NOT supported'} | {r['cpu_seconds']:.1f} |")
    payload = {"machine": {**machine(), "threads": 1}, "runs": runs}
    write_results(args.name, payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
