"""Benchmark: a 50-level ablation sweep, wall time and the share spent in forward passes.

Target (issue 6): ablation overhead <= 20% over plain forward passes. Uses the character MLP of
``examples/ablation_study.py`` (a stand-in until the small character transformer is wired in)
on ``--tokens`` next-character predictions (the Zen of Python, repeated), float32, PCA basis of
its hidden layer, mean ablation. ``overhead = total / forward - 1``, where ``forward`` is the time
inside the model's forward passes (hooks included) and ``total`` the whole sweep (statistics pass,
both baselines, every level, metrics).

Run: ``python benchmarks/bench_ablation.py [--tokens 20000] [--levels 50] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from ablation_study import pca_basis, train_model  # noqa: E402

from wdecomp.ablation import ablation_sweep  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--levels", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, data = train_model(300)
    model = model.float()
    X = torch.cat([x for x, _ in data])
    y = torch.cat([t for _, t in data])
    reps = -(-args.tokens // len(X))
    X, y = X.repeat(reps, 1)[: args.tokens], y.repeat(reps)[: args.tokens]
    batches = [(X[i:i + args.batch], y[i:i + args.batch]) for i in range(0, len(X), args.batch)]
    basis = pca_basis(model.double(), data)
    model = model.float()
    n = basis.size
    ks = [round(i * n / (args.levels - 1)) for i in range(args.levels)]
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    plain = time.perf_counter() - t0
    res = ablation_sweep(model, basis, batches, k=ks, method="mean", top_n=10, progress=False)
    t = res.timings
    passes = args.levels + 3
    print(f"{args.tokens} tokens, {args.levels} levels ({passes} passes), {args.threads} threads")
    print(f"plain forward over the data: {plain * 1e3:.1f} ms  (x{passes} = {plain * passes:.3f} s)")
    print(f"sweep total {t['total']:.3f} s, inside forward {t['forward']:.3f} s "
          f"({100 * t['forward'] / t['total']:.1f}%), overhead {100 * (t['total'] / t['forward'] - 1):.1f}% "
          f"over hooked forwards, {100 * (t['total'] / (plain * passes) - 1):.1f}% over plain forwards")


if __name__ == "__main__":
    main()
