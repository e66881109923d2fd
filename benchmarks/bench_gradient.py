"""``Objective.gradient`` against a plain ``torch.autograd.grad``, and cached against uncached GGN
products, by interleaved repetitions of CPU time.

Each repetition runs every variant once, in alternating order, and times it with the calling
thread's CPU clock (``time.thread_time``, one torch thread, so the clock sees all the work);
the reported ratio is the median over repetitions of ``plain / variant`` (1.0: as fast as plain;
0.95: 5% slower). CPU time instead of wall time keeps the comparison meaningful on a loaded
machine, where wall times swing by 2x.

Usage: ``python benchmarks/bench_gradient.py [--reps 60] [--smoke]``; writes
``benchmarks/results/gradient.{json,md}`` unless ``--smoke``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import MODELS, machine, write_results

import wdecomp as wd


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """CPU seconds of each callable per repetition, the order alternating between repetitions."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    items = list(fns.items())
    for i in range(reps):
        for name, f in items if i % 2 == 0 else items[::-1]:
            t0 = time.thread_time()
            f()
            times[name].append(time.thread_time() - t0)
    return times


def measure(name: str, reps: int, smoke: bool) -> dict[str, object]:
    model, data = MODELS[name]()
    if smoke:
        data = [(x[:8], y[: 8 * (y.numel() // x.shape[0])]) for x, y in data]
    (x, y), params = data[0], [p for p in model.parameters() if p.requires_grad]

    def plain() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    checked = wd.Objective(model, data)
    unchecked = wd.Objective(model, data, check_deterministic=False)
    assert torch.allclose(checked.gradient(), plain(), rtol=1e-4, atol=1e-6)
    v = torch.randn(sum(p.numel() for p in params))
    G_cached, G_plain = wd.ggn(checked, cache=True), wd.ggn(checked, cache=False)
    fns = {
        "plain autograd.grad": plain,
        "Objective.gradient": checked.gradient,
        "Objective.gradient, check_deterministic=False": unchecked.gradient,
        "GGN product, uncached": lambda: G_plain @ v,
        "GGN product, cached": lambda: G_cached @ v,
    }
    times = interleaved(fns, reps)
    base = times["plain autograd.grad"]
    rows = {}
    for k, ts in times.items():
        ref = base if "GGN" not in k else times["GGN product, uncached"]
        rows[k] = {
            "median_ms": statistics.median(ts) * 1e3,
            "ratio_to_reference": statistics.median(a / b for a, b in zip(ref, ts)),
            "ratio_q25_q75": [q for i, q in enumerate(statistics.quantiles([a / b for a, b in zip(ref, ts)], n=4))
                              if i != 1],
        }
    return {"model": name, "examples": int(x.shape[0]), "reps": reps, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--smoke", action="store_true", help="tiny data, few reps, nothing written")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reps = 4 if args.smoke else args.reps
    results = [measure(name, reps, args.smoke) for name in MODELS]
    lines = ["# Objective.gradient vs plain autograd.grad; cached vs uncached GGN products", "",
             "CPU time of the calling thread (one torch thread), interleaved repetitions; ratio = median over",
             "repetitions of reference time / this time (gradient rows: reference = plain autograd.grad; GGN",
             "rows: reference = the uncached product). Above 1 is faster than the reference.", ""]
    for r in results:
        lines += [f"## {r['model']} ({r['examples']} examples, {r['reps']} repetitions)", "",
                  "| variant | median ms | ratio | ratio q25-q75 |", "|---|---|---|---|"]
        for k, row in r["rows"].items():
            q = row["ratio_q25_q75"]
            lines.append(f"| {k} | {row['median_ms']:.2f} | {row['ratio_to_reference']:.3f} | {q[0]:.3f}-{q[1]:.3f} |")
        lines.append("")
    print("\n".join(lines))
    if not args.smoke:
        write_results("gradient", {"machine": machine(), "results": results}, "\n".join(lines))


if __name__ == "__main__":
    main()
