"""``wdecomp basis``: the interaction basis (LIB) of the named layers and the components it gives."""

from __future__ import annotations

import argparse

from wdecomp.bases import interaction_basis
from wdecomp.cli._args import add_common, name_list
from wdecomp.cli._common import check_outputs, emit, layers, load_model, wrote
from wdecomp.components import decompose

BASES = ["lib", "pca", "neuron", "jacobian"]
LAYERS_HELP = "comma-separated hook points (module names) in forward order (default: the model's own)"


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--layers", type=name_list, default=None, metavar="A,B,C", help=LAYERS_HELP)
    p.add_argument("--method", default="lib", choices=BASES, help="which basis (default lib)")
    p.add_argument("--out", default=None, metavar="FILE", help="save the components to FILE (.safetensors)")


def run(args: argparse.Namespace) -> None:
    check_outputs(args, files=("out",))
    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, progress=args.progress)
    basis = interaction_basis(loaded.model, loaded.data, layers=layers(loaded, args.layers), method=args.method)
    components = decompose(loaded.model, basis)
    if args.out:
        components.save(args.out)
        wrote(args.out)
    emit(components, args)
