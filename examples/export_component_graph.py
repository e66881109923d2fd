"""Build, prune, export and plot the interaction graph of a small network's components.

Trains a tiny tanh MLP on two independent regression targets (``y0 = sin(2 x0) x1`` and
``y1 = x2^2 - x3``, both from a 4-d input), fits a basis of its activations (the Local Interaction
Basis, Bushnaq et al. 2024, arXiv:2405.10928, by default; ``--basis pca`` or ``neuron`` as
controls), joins the components of consecutive layers by their integrated-gradient attributions
(and Jacobian attributions for comparison), prunes the graph to the edges that carry 90% of each
layer pair's attribution, prints the summary (edges kept vs. attribution kept, sparsity,
components, communities, completeness of the integrated gradients) and writes:

``graph.graphml``, ``graph.gexf``, ``graph.json`` (node-link), ``graph.dot`` (when ``pydot`` is
installed), ``graph.png``, ``graph.svg`` and ``summary.json`` into ``--out``.

Run: ``python examples/export_component_graph.py [--fast] [--out DIR] [--basis lib|pca|neuron]``.
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from wdecomp.bases import interaction_basis
from wdecomp.graph import interaction_graph

LAYERS = ["act1", "act2", "out"]


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.stack([torch.sin(2 * x[:, 0]) * x[:, 1], x[:, 2] ** 2 - x[:, 3]], dim=1)
    return x, y


def train_model(steps: int, hidden: int = 12, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(OrderedDict([
        ("inp", nn.Linear(4, hidden)), ("act1", nn.Tanh()),
        ("mid", nn.Linear(hidden, hidden)), ("act2", nn.Tanh()),
        ("out", nn.Linear(hidden, 2)),
    ])).double()
    x, y = make_data(256, seed=seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    model.eval()
    print(f"trained {steps} steps: mse {loss.detach().item():.4f}")
    return model


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="fewer training steps, examples and quadrature nodes")
    parser.add_argument("--out", type=Path, default=Path("graph_out"))
    parser.add_argument("--basis", choices=["lib", "pca", "neuron"], default="lib")
    parser.add_argument("--fraction", type=float, default=0.9, help="attribution kept per layer pair")
    args = parser.parse_args(argv)

    model = train_model(100 if args.fast else 1500)
    x, _ = make_data(64 if args.fast else 1024, seed=2)
    data = [(x[i:i + 256], None) for i in range(0, len(x), 256)]
    basis = interaction_basis(model, data, LAYERS, method=args.basis)
    print("basis sizes:", {p: basis[p].size for p in basis.layers})

    steps = 8 if args.fast else 32
    graph = interaction_graph(model, data, basis, method="integrated_gradients", steps=steps, chunk_size=64)
    jac = interaction_graph(model, data, basis, method="jacobian", chunk_size=64)
    pruned = graph.prune(fraction=args.fraction)
    summary = pruned.summary()
    print(summary)
    print()
    print("Jacobian attributions, same pruning:")
    print(jac.prune(fraction=args.fraction).summary())

    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in ("graphml", "gexf", "json", "dot"):
        try:
            written.append(pruned.save(args.out / f"graph.{fmt}"))
        except ImportError as exc:  # DOT needs the optional pydot
            print(f"skipped graph.{fmt}: {exc}")
    for ext in ("png", "svg"):
        pruned.plot(args.out / f"graph.{ext}", title=f"{args.basis} components of a tanh MLP ({summary.edges} edges)")
        written.append(args.out / f"graph.{ext}")
    result = {"basis": args.basis, "summary": summary.to_dict(), "files": [str(p) for p in written]}
    (args.out / "summary.json").write_text(json.dumps(result, indent=1))
    print("wrote", ", ".join(p.name for p in written), "and summary.json to", args.out)
    return result


if __name__ == "__main__":
    main()
