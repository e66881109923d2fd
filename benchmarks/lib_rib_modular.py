"""LIB as rib runs it on modular addition (p = 113): the checks of the LIB paper's main experiment.

The paper's configuration (``interaction_basis`` defaults: centred, constant node first, ``jacobian``
basis formula, squared gradient edges) on wdecomp's modular-addition MLP (cached after the first
training run): (1) the constant node carries the largest Lambda at every rotated layer; (2) the top
non-constant LIB directions of the embedding are concentrated on one Fourier frequency; (3) edge
ablation: the fewest edges per layer pair that keep test accuracy within 1% of the original, next to
the total; (4) Louvain modules of the graph pruned to those edges (constant node left out).

Run: ``python benchmarks/lib_rib_modular.py [--p 113] [--top 6] [--plot modules.png]``. Prints a
per-stage time (the machine may be loaded: times are indicative only).
"""

from __future__ import annotations

import argparse
import time

import torch

from wdecomp.ablation.edges import edge_ablation
from wdecomp.bases import interaction_basis
from wdecomp.fourier import fourier_concentration
from wdecomp.graph import find_modules, interaction_graph
from wdecomp.models.modular import modular_addition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=int, default=113)
    parser.add_argument("--top", type=int, default=6, help="top LIB directions checked for Fourier concentration")
    parser.add_argument("--plot", default=None, help="write the module plot here (.png)")
    parser.add_argument("--arch", default="mlp", choices=["mlp", "transformer"],
                        help="wdecomp's modular MLP, or its one-layer ReLU transformer (rib's node layers: "
                             "resid_pre, resid_mid, resid_post, logits)")
    parser.add_argument("--skip-ablation", action="store_true", help="basis and Fourier checks only")
    args = parser.parse_args()
    t0 = time.perf_counter()

    def stage(name: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {name}", flush=True)

    bundle = modular_addition(p=args.p, arch=args.arch, dtype=torch.float64, progress=False)
    model, data, test = bundle.model, bundle.data, bundle.test
    stage(f"model: test accuracy {bundle.metrics['test_accuracy']:.4f} (from cache: {bundle.from_cache})")
    if args.arch == "mlp":
        layers = ["embed", "mlp.act", "unembed"]
    else:  # rib's ln1.0, ln2.0, unembed, output
        layers = ["blocks.0.ln1", "blocks.0.ln2", "ln_f", "unembed"]
    basis = interaction_basis(model, data, layers)
    stage("LIB basis (rib's paper configuration)")
    for point in layers[:-1]:
        lb = basis[point]
        lam = lb.eigenvalues
        print(f"  {point}: {lb.size} directions; constant node Lambda {float(lam[0]):.4g}, largest other "
              f"{float(lam[1:].max()):.4g}; constant largest: {bool(lam[0] >= lam[1:].max())}")
    lb = basis[layers[0]]
    E = model.embed.weight.detach()[: args.p]
    if args.arch == "transformer":  # the residual stream at the position of a, as a function of a
        E = E + model.pos_embed.W_pos.detach()[0]
    coords = lb.to_coordinates(E)
    conc = [fourier_concentration(coords[:, i]) for i in range(1, min(args.top + 1, lb.size))]
    print(f"  {layers[0]} top directions, concentration@frequency: " + ", ".join(f"{c:.4f}@{w}" for c, w in conc))
    print(f"  min concentration {min(c for c, _ in conc):.4f} (target >= 0.99)")
    if args.skip_ablation:
        return
    graph = interaction_graph(model, data, basis)
    stage(f"interaction graph: {graph.nx.number_of_nodes()} nodes, {graph.nx.number_of_edges()} edges")
    result = edge_ablation(model, test, basis, graph, metric="accuracy", tolerance=0.01, curve_points=6)
    stage("edge ablation (accuracy within 1% on the test set)")
    print(result)
    for pair in result.pairs:
        print(f"  {pair.source} -> {pair.target}: edges needed {pair.edges_needed} of {pair.total_edges} total")
    modules = find_modules(graph, edges_kept=result.edges_needed)
    stage("modules")
    print(modules)
    if args.plot:
        modules.plot(args.plot)
        print(f"  plot: {args.plot}")


if __name__ == "__main__":
    main()
