"""How concentrated is each top embedding direction on one Fourier frequency: LIB vs PCA vs neurons.

A modular-addition MLP (Nanda et al. 2023, arXiv 2301.05217) computes with discrete Fourier features
of its inputs. For a basis direction ``C_i`` of the embedding space, the direction's value on token
``t`` is ``c_i(t) = C_i (E_t - mu)``; its discrete Fourier power ``P_i(w)`` at frequency
``w = 1..(p-1)/2`` (``w`` and ``p - w`` together, the constant term left out) gives the
*concentration* ``max_w P_i(w) / sum_w P_i(w)`` (1: a pure frequency; ``2/(p-1)``: spread evenly).

Directions whose eigenvalues lie within a relative gap ``delta`` of each other are fixed only up to a
rotation, which moves power between them; so LIB and PCA directions are also scored per group
(``wdecomp.fourier.lambda_groups``, ``subspace_concentration``: a group's power on its top
``ceil(g/2)`` frequencies, unchanged by rotations inside it), at ``delta = 0.1`` and ``0.2``
(docs/concepts/lib-variants.md says why both). ``--cleanup`` uses the MLP trained through its cleanup
phase (``modular_addition(patience=None)``, shipped for p = 113) instead of the early-stopped one.

Run: ``python examples/modular_addition_fourier.py [--fast] [--cleanup]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from wdecomp.bases import interaction_basis
from wdecomp.components import decompose
from wdecomp.fourier import fourier_concentration, lambda_groups, subspace_concentration
from wdecomp.models import modular_addition

GAPS = (0.1, 0.2)


def run(fast: bool = False, top: int = 6, cleanup: bool = False) -> dict[str, Any]:
    cfg: dict[str, Any] = dict(p=23, d_embed=16, d_hidden=64, max_steps=1500) if fast else dict(p=113)
    bundle = modular_addition(**cfg, progress=False, dtype=torch.float64, patience=None if cleanup else 2)
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
        if method != "neuron":  # neurons have no eigenvalues to group by
            first = 0 if lb.constant is None else 1
            values, lam = coords[:, first:], lb.eigenvalues[first:]
            out[method]["groups"] = {
                gap: [(g, subspace_concentration(values[:, g])[0]) for g in lambda_groups(lam, top, gap)]
                for gap in GAPS
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small modulus, short training")
    parser.add_argument("--cleanup", action="store_true", help="the model trained through its cleanup phase")
    args = parser.parse_args()
    res = run(fast=args.fast, cleanup=args.cleanup)
    print(f"modular addition p = {res['p']}: accuracy {res['metrics']}")
    print(f"{'basis':<8} {'mean conc.':>10}  top directions: concentration@frequency      rewrite error")
    for method in ("lib", "pca", "neuron"):
        r = res[method]
        cells = "  ".join(f"{c:.2f}@{w}" for c, w in zip(r["concentration"], r["frequency"]))
        print(f"{method:<8} {r['mean_concentration']:>10.3f}  {cells:<44} {r['rewrite_error']:.1e}")
    for method in ("lib", "pca"):
        for gap, groups in res[method]["groups"].items():
            cells = "  ".join(f"{[i + 1 for i in g]}: {share:.3f}" for g, share in groups)
            print(f"{method:<8} groups at a {gap:.0%} Lambda gap (smallest {min(s for _, s in groups):.3f}): {cells}")


if __name__ == "__main__":
    main()
