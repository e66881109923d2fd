"""Which components carry which features in the toy model of superposition (5 features, 2 dims).

Two views. *Activation components* (LIB at the hidden layer ``h = W x`` and the output ReLU): feature
``j`` alone (``x = e_j``) gives coordinates ``c(e_j)``; the share ``|c_i(e_j)|^2 / sum_j' |c_i(e_j')|^2``
says how much of component ``i`` is feature ``j``. *Weight components* (eigenvectors of the
behavioural-loss Hessian of ``W``, arXiv 2405.10927): each eigenvector has the shape of ``W``
``(2, 5)``; the share of its squared norm in column ``j`` is how much of it belongs to feature ``j``.

Run: ``python examples/toy_superposition_components.py [--fast]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from wdecomp.bases import curvature_basis, interaction_basis
from wdecomp.components import decompose
from wdecomp.models import toy_superposition


def run(fast: bool = False) -> dict[str, Any]:
    bundle = toy_superposition(steps=800 if fast else 4000, n_batches=1 if fast else 4,
                               batch_size=256 if fast else 1024, progress=False, dtype=torch.float64)
    model, data = bundle.model, bundle.data
    n = model.W.shape[1]
    basis = interaction_basis(model, data, ["hidden", "act"], method="lib")
    comps = decompose(model, basis, data)
    eye = torch.eye(n, dtype=torch.float64)
    from wdecomp.activations import run_with_hooks

    _, acts = run_with_hooks(model, eye, read=["hidden", "act"])
    tables = {}
    for layer in ("hidden", "act"):
        c = basis[layer].to_coordinates(acts[layer].detach())  # (features, k)
        share = c.pow(2) / c.pow(2).sum(0, keepdim=True).clamp_min(1e-300)
        first = 0 if basis[layer].constant is None else 1  # the constant node (biases) is no feature
        tables[layer] = share.T[first:]  # (k, features)
    cb = curvature_basis(model, data, "W", kind="behavioural")
    V = cb.directions()["W"]  # (10, 2, 5)
    wshare = V.pow(2).sum(1)  # (10, 5): column shares (each eigenvector has unit norm)
    return {
        "column_norms": model.W.detach().norm(dim=0).tolist(),
        "activation_share": {k: v.tolist() for k, v in tables.items()},
        "activation_importance": {k: basis[k].eigenvalues[0 if basis[k].constant is None else 1:].tolist()
                                  for k in ("hidden", "act")},
        "weight_share": wshare.tolist(), "weight_eigenvalues": cb.eigenvalues.tolist(),
        "rewrite_error": comps.verify(model, data), "behavioural_rank": cb.rank,
    }


def _table(title: str, rows: list[list[float]], importance: list[float]) -> None:
    n = len(rows[0])
    print(title)
    print("  comp  importance  " + " ".join(f"  f{j}" for j in range(n)) + "   main feature")
    for i, (row, imp) in enumerate(zip(rows, importance)):
        j = max(range(n), key=lambda k: row[k])
        print(f"  {i:>4}  {imp:>10.3e}  " + " ".join(f"{v:4.2f}" for v in row) + f"   f{j} ({row[j]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="short training")
    res = run(fast=parser.parse_args().fast)
    print("feature column norms of W:", " ".join(f"{v:.2f}" for v in res["column_norms"]))
    for layer in ("hidden", "act"):
        _table(f"LIB components at '{layer}' (share of each feature):", res["activation_share"][layer],
               res["activation_importance"][layer])
    _table("behavioural-Hessian eigenvectors of W (share of each feature column):", res["weight_share"],
           res["weight_eigenvalues"])
    print(f"behavioural Hessian rank {res['behavioural_rank']} of 10; rewritten model error {res['rewrite_error']:.1e}")


if __name__ == "__main__":
    main()
