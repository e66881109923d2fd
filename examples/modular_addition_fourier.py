"""How concentrated is each top embedding direction on one Fourier frequency: LIB vs PCA vs neurons.

A modular-addition MLP (Nanda et al. 2023, arXiv 2301.05217) computes with discrete Fourier features
of its inputs. For a basis direction ``C_i`` of the embedding space, the direction's value on token
``t`` is ``c_i(t) = C_i (E_t - mu)``; its discrete Fourier power ``P_i(w)`` at frequency
``w = 1..(p-1)/2`` (``w`` and ``p - w`` together, the constant term left out) gives the
*concentration* ``max_w P_i(w) / sum_w P_i(w)`` (1: a pure frequency; ``2/(p-1)``: spread evenly).

Run: ``python examples/modular_addition_fourier.py [--fast]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from wdecomp.bases import interaction_basis
from wdecomp.components import decompose
from wdecomp.fourier import fourier_concentration
from wdecomp.models import modular_addition


def run(fast: bool = False, top: int = 6) -> dict[str, Any]:
    cfg = dict(p=23, d_embed=16, d_hidden=64, max_steps=1500) if fast else dict(p=113)
    bundle = modular_addition(**cfg, progress=False, dtype=torch.float64)
    model, data = bundle.model, bundle.data
    p = bundle.extra["p"]
    layers = ["embed", "mlp.act", "unembed"]
    out: dict[str, Any] = {"p": p, "metrics": {k: bundle.metrics[k] for k in ("train_accuracy", "test_accuracy")}}
    E = model.embed.weight.detach()[:p]
    for method in ("lib", "pca", "neuron"):
        basis = interaction_basis(model, data, layers, method=method)
        lb = basis["embed"]
        coords = lb.to_coordinates(E)  # (p, k): each direction as a function of the token
        ranked = range(lb.size) if method != "neuron" else torch.argsort(lb.eigenvalues, descending=True).tolist()
        order = [i for i in ranked if lb.constant is None or i != 0][:top]  # skip the constant node
        rows = [fourier_concentration(coords[:, int(i)]) for i in order]
        comps = decompose(model, basis, data)
        out[method] = {
            "concentration": [r[0] for r in rows], "frequency": [r[1] for r in rows],
            "mean_concentration": sum(r[0] for r in rows) / len(rows), "rewrite_error": comps.verify(model, data),
            "size": {k: basis[k].size for k in layers},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small modulus, short training")
    args = parser.parse_args()
    res = run(fast=args.fast)
    print(f"modular addition p = {res['p']}: accuracy {res['metrics']}")
    print(f"{'basis':<8} {'mean conc.':>10}  top directions: concentration@frequency      rewrite error")
    for method in ("lib", "pca", "neuron"):
        r = res[method]
        cells = "  ".join(f"{c:.2f}@{w}" for c, w in zip(r["concentration"], r["frequency"]))
        print(f"{method:<8} {r['mean_concentration']:>10.3f}  {cells:<44} {r['rewrite_error']:.1e}")


if __name__ == "__main__":
    main()
