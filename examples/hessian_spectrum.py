"""Which weight directions matter, and how many? The curvature of an MLP trained on real digits.

Trains (or loads from the cache) a ReLU MLP on scikit-learn's bundled 8x8 handwritten digits,
then, over its training loss in float64:

* the top Hessian eigenpairs by block Lanczos, each with its residual ``||Hv - lambda v|| / |lambda|``;
* the trace by Hutch++, against the exact trace from the Hutchinson diagonal's own sum;
* the spectral density by stochastic Lanczos quadrature (written as a PNG);
* the exact rank of the GGN (through its Gram matrix) and of each layer's block: how
  degenerate the solution is;
* bootstrap error bars of the top eigenvalue over the data's batches.

Run: ``python examples/hessian_spectrum.py [--fast] [--out DIR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

import wdecomp as wd
from wdecomp.models import digits_mlp
from wdecomp.spectral import bootstrap_eigenvalues


def run(fast: bool = False, out: str | Path = "hessian-spectrum") -> dict[str, Any]:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    bundle = digits_mlp(hidden=(16,) if fast else (64,), steps=400 if fast else 1500, progress=False,
                        dtype=torch.float64)
    model, data = bundle.model, bundle.data
    data = data[:2] if fast else data
    obj = wd.Objective(model, data, loss="cross_entropy")
    H = wd.hessian(obj)
    k = 5 if fast else 20
    eig = wd.eigh(H, k=k, tol=1e-8)
    trace = wd.hutchpp_trace(H, num_matvecs=90 if fast else 300, seed=0)
    exact_trace = float(torch.diagonal(H.dense()).sum()) if H.shape[0] <= 4000 else float("nan")
    density = wd.slq_density(H, steps=40, num_starts=4)
    density.plot(folder / "density.png")
    ggn_rank = wd.rank(wd.ggn(obj), method="gram", groups="module")
    boot = bootstrap_eigenvalues(H, n_resamples=4 if fast else 10, k=1, seed=0)
    return {
        "params": H.shape[0],
        "test_accuracy": bundle.metrics["test_accuracy"],
        "eigen": eig,
        "trace": trace,
        "exact_trace": exact_trace,
        "density": density,
        "ggn_rank": ggn_rank,
        "bootstrap": boot,
        "density_png": folder / "density.png",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a narrow MLP, fewer eigenpairs")
    parser.add_argument("--out", default="hessian-spectrum")
    args = parser.parse_args()
    res = run(fast=args.fast, out=args.out)
    print(f"digits MLP: {res['params']} weights, test accuracy {res['test_accuracy']:.3f}\n")
    print(res["eigen"], "\n")
    print(res["trace"], f"(exact {res['exact_trace']:.6g})\n")
    print(res["ggn_rank"], "\n")
    print(res["bootstrap"])
    print(f"\nspectral density plot: {res['density_png']}")


if __name__ == "__main__":
    main()
