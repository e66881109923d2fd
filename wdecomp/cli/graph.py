"""``wdecomp graph``: build, prune, export and plot an interaction graph."""

from __future__ import annotations

import argparse

from wdecomp.bases import interaction_basis
from wdecomp.cli._args import add_common, fraction, name_list
from wdecomp.cli._common import check_outputs, emit, layers, load_model, wrote
from wdecomp.cli.basis import BASES, LAYERS_HELP, add_memory_options, add_variant_option
from wdecomp.graph import interaction_graph


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--layers", type=name_list, default=None, metavar="A,B,C", help=LAYERS_HELP)
    p.add_argument("--basis", default="lib", choices=BASES, help="basis of each layer's nodes (default lib)")
    add_variant_option(p)
    p.add_argument("--method", default="jacobian", choices=["jacobian", "integrated_gradients"],
                   help="edge attribution (default jacobian)")
    p.add_argument("--keep", type=fraction, default=0.9,
                   help="keep the strongest edges carrying this fraction of the attribution (default 0.9)")
    p.add_argument("--out", required=True, metavar="FILE", help="graph file: .graphml, .gexf, .json or .dot")
    p.add_argument("--plot", default=None, metavar="FILE", help="also draw the layered graph to FILE (.png, .svg)")
    add_memory_options(p)


def run(args: argparse.Namespace) -> None:
    check_outputs(args, files=("out", "plot"))
    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, progress=args.progress)
    memory = {"chunk_size": args.chunk_size, "max_memory": args.max_memory}
    basis = interaction_basis(loaded.model, loaded.data, layers=layers(loaded, args.layers), method=args.basis,
                              variant=args.variant, **memory)
    graph = interaction_graph(loaded.model, loaded.data, basis, method=args.method, progress=args.progress, **memory)
    graph = graph.prune(fraction=args.keep)
    graph.save(args.out)
    wrote(args.out)
    if args.plot:
        graph.plot(args.plot)
        wrote(args.plot)
    emit(graph.summary(), args)
