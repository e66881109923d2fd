"""SAE training throughput and peak memory: wdecomp's trainer against the same step as a plain loop.

Activations: the residual stream after block 0 of the default char transformer (d = 128), taken
once per process from 16 cached training batches (32 x 64 characters each: 32,768 activations).
For each width (256, 1024, 4096; TopK, k = 32) both implementations train for the same number of
steps on the same activations, batch 1024:

* ``wdecomp``: :func:`wdecomp.sae.fit_sae` (seeded reshuffling, minibatch cutting, finiteness
  check, dead-latent tracking, progress bar off, history rows);
* ``plain``: the same step written inline in PyTorch: TopK encode, decode, summed squared error,
  backward, parallel-gradient removal, Adam step, column renormalisation.

Each (width, implementation) runs in its own subprocess (so ``ru_maxrss`` is that run's peak
memory), the two implementations interleaved, ``--repeat`` times; the table reports the median
activations per second and the library's overhead ``t_wdecomp / t_plain - 1`` (target <= 10%).

Run: ``python benchmarks/bench_sae.py [--steps 200] [--repeat 3] [--threads 2]``; ``--quick``
for a smoke run (few steps). On a loaded machine wall times are not meaningful: use
``--clock cpu_seconds --threads 1`` (process CPU time of each run, interleaved).

``--inprocess``: both implementations in this one process (activations taken once, both warmed
up, then ``--repeat`` rounds alternating which runs first); reports each round's overhead and
their median, min and max (no peak memory). Less start-up noise than one subprocess per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, setup_threads, write_results  # noqa: E402

WIDTHS = (256, 1024, 4096)


def _activations() -> torch.Tensor:
    import wdecomp.models as wm
    from wdecomp.sae import hook_activations

    model, data = wm.char_transformer(n_data_batches=16, progress=False)
    return torch.cat(list(hook_activations(model, data, "blocks.0", buffer_batches=16, epochs=1)))


def _plain(X: torch.Tensor, width: int, k: int, steps: int, batch: int) -> None:
    """The training step written as a plain PyTorch loop."""
    g = torch.Generator().manual_seed(0)
    d = X.shape[1]
    W = torch.randn(d, width, generator=g)
    W /= W.norm(dim=0, keepdim=True)
    W_dec = W.clone().requires_grad_(True)
    W_enc = W.T.clone().requires_grad_(True)
    b_enc = torch.zeros(width, requires_grad=True)
    b_dec = torch.zeros(d, requires_grad=True)
    opt = torch.optim.Adam([W_dec, W_enc, b_enc, b_dec], lr=1e-3)
    perm = torch.randperm(X.shape[0], generator=g)
    at = 0
    for _ in range(steps):
        if at + batch > X.shape[0]:
            perm, at = torch.randperm(X.shape[0], generator=g), 0
        x = X[perm[at:at + batch]]
        at += batch
        pre = (x - b_dec) @ W_enc.T + b_enc
        top = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        loss = (f @ W_dec.T + b_dec - x).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= W_dec * (W_dec * W_dec.grad).sum(0, keepdim=True)
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=0, keepdim=True)


def _wdecomp(X: torch.Tensor, width: int, k: int, steps: int, batch: int) -> None:
    from wdecomp.sae import SparseAutoencoder, fit_sae

    fit_sae(SparseAutoencoder(X.shape[1], width, k=k, seed=0), X, steps=steps, batch_size=batch, lr=1e-3,
            lr_decay=0.0, progress=False)


def child(impl: str, width: int, k: int, steps: int, batch: int, threads: int) -> dict:
    setup_threads(threads)
    X = _activations()
    before = peak_rss_mb()
    fn = _plain if impl == "plain" else _wdecomp
    fn(X, width, k, 3, batch)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    fn(X, width, k, steps, batch)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"impl": impl, "width": width, "seconds": seconds, "cpu_seconds": cpu, "per_second": steps * batch / seconds,
            "peak_mb": peak_rss_mb(), "peak_before_mb": before}


def inprocess(X: torch.Tensor, widths: tuple[int, ...], k: int, steps: int, batch: int, rounds: int,
              clock: str) -> dict:
    """Overheads measured in one process: per width, each round's ``t_wdecomp / t_plain - 1``."""
    tick = time.process_time if clock == "cpu_seconds" else time.perf_counter
    impls = {"wdecomp": _wdecomp, "plain": _plain}
    table = {}
    for width in widths:
        for fn in impls.values():
            fn(X, width, k, 5, batch)  # warm-up
        t: dict[str, list[float]] = {name: [] for name in impls}
        for r in range(rounds):
            for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):  # alternate which runs first
                t0 = tick()
                impls[name](X, width, k, steps, batch)
                t[name].append(tick() - t0)
        ov = [w / p - 1 for w, p in zip(t["wdecomp"], t["plain"])]
        table[width] = {"wdecomp": t["wdecomp"], "plain": t["plain"], "overhead_per_round": ov,
                        "overhead_median": statistics.median(ov), "overhead_min": min(ov), "overhead_max": max(ov)}
        print(json.dumps({"width": width, **table[width]}), file=sys.stderr, flush=True)
    return table


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--quick", action="store_true", help="smoke run: 10 steps, one repeat")
    p.add_argument("--clock", choices=("seconds", "cpu_seconds"), default="seconds",
                   help="wall time (idle machine) or process CPU time (loaded machine; use --threads 1)")
    p.add_argument("--name", default=None, help="results file name (default sae / sae_quick)")
    p.add_argument("--inprocess", action="store_true", help="both implementations in this process, alternated")
    p.add_argument("--child", nargs=2, metavar=("IMPL", "WIDTH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        out = child(args.child[0], int(args.child[1]), args.k, args.steps, args.batch, args.threads)
        print(json.dumps(out))
        return out
    steps, repeat = (10, 1) if args.quick else (args.steps, args.repeat)
    if args.inprocess:
        setup_threads(args.threads)
        table = inprocess(_activations(), WIDTHS, args.k, steps, args.batch, repeat, args.clock)
        lines = ["# SAE training overhead, in one process: wdecomp.sae.fit_sae vs a plain PyTorch loop", "",
                 f"char transformer residual stream (d=128), TopK k={args.k}, batch {args.batch}, {steps} steps, "
                 f"{repeat} alternating rounds, {args.threads} threads, clock {args.clock}; {machine()}", "",
                 "| width | wdecomp s (median) | plain s (median) | overhead median | min | max |",
                 "|---|---|---|---|---|---|"]
        for width, row in table.items():
            med = {impl: statistics.median(row[impl]) for impl in ("wdecomp", "plain")}
            lines.append(f"| {width} | {med['wdecomp']:.3g} | {med['plain']:.3g} | "
                         f"{100 * row['overhead_median']:+.1f}% | {100 * row['overhead_min']:+.1f}% | "
                         f"{100 * row['overhead_max']:+.1f}% |")
        payload = {"machine": machine(), "steps": steps, "rounds": repeat, "clock": args.clock, "table": table}
        name = args.name or ("sae_inprocess_quick" if args.quick else "sae_inprocess")
        write_results(name, payload, "\n".join(lines) + "\n")
        print("\n".join(lines))
        print(json.dumps(payload))
        return payload
    runs: list[dict] = []
    for width in WIDTHS:
        for _ in range(repeat):
            for impl in ("wdecomp", "plain"):  # interleaved
                cmd = [sys.executable, __file__, "--child", impl, str(width), "--steps", str(steps), "--k",
                       str(args.k), "--batch", str(args.batch), "--threads", str(args.threads)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(runs[-1], flush=True)
    lines = ["# SAE training: wdecomp.sae.fit_sae vs a plain PyTorch loop", "",
             f"char transformer residual stream (d=128), TopK k={args.k}, batch {args.batch}, {steps} steps, "
             f"{repeat} interleaved repeats, {args.threads} threads, clock {args.clock}; "
             f"{machine() | {'threads': args.threads}}",
             "", "| width | wdecomp act/s | plain act/s | overhead | peak MiB wdecomp | peak MiB plain |",
             "|---|---|---|---|---|---|"]
    table = {}
    for width in WIDTHS:
        med = {impl: statistics.median(r[args.clock] for r in runs if r["width"] == width and r["impl"] == impl)
               for impl in ("wdecomp", "plain")}
        peak = {impl: max(r["peak_mb"] for r in runs if r["width"] == width and r["impl"] == impl)
                for impl in ("wdecomp", "plain")}
        rate = {impl: steps * args.batch / med[impl] for impl in med}
        overhead = med["wdecomp"] / med["plain"] - 1
        table[width] = {"rate": rate, "overhead": overhead, "peak_mb": peak}
        lines.append(f"| {width} | {rate['wdecomp']:.3g} | {rate['plain']:.3g} | {100 * overhead:+.1f}% | "
                     f"{peak['wdecomp']:.0f} | {peak['plain']:.0f} |")
    payload = {"machine": {**machine(), "threads": args.threads}, "steps": steps, "repeat": repeat, "runs": runs,
               "table": table, "quick": args.quick, "clock": args.clock}
    write_results(args.name or ("sae_quick" if args.quick else "sae"), payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
