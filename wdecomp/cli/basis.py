"""``wdecomp basis``: the interaction basis (LIB) of the named layers and the components it gives."""

from __future__ import annotations

import argparse

from wdecomp.bases import interaction_basis
from wdecomp.bases.interaction import VARIANTS
from wdecomp.cli._args import add_common, name_list, positive_int
from wdecomp.cli._common import check_outputs, emit, layers, load_model, wrote
from wdecomp.components import decompose

BASES = ["lib", "pca", "neuron", "jacobian"]
LAYERS_HELP = "comma-separated hook points (module names) in forward order (default: the model's own)"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def memory_size(text: str) -> int:
    """Bytes from ``"2G"``, ``"512M"``, ``"100000"`` (K/M/G/T, powers of 1024; an optional ``B``/``iB``)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _UNITS and not t[-1:].isdigit() else ""
    try:
        value = float(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a memory size: '{text}' (write e.g. 2G, 512M or a number of bytes)") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"memory size must be > 0, got '{text}'")
    return int(value)


def add_memory_options(p: argparse.ArgumentParser) -> None:
    """``--chunk-size`` and ``--max-memory``: how many examples one vectorised Jacobian call holds."""
    p.add_argument("--chunk-size", type=positive_int, default=None, metavar="N",
                   help="examples per vectorised Jacobian call (default: from --max-memory)")
    p.add_argument("--max-memory", type=memory_size, default=None, metavar="SIZE",
                   help="memory budget for one chunk of Jacobians, e.g. 2G or 512M (default: a share of the "
                        "available memory, at most 2 GiB)")


def add_variant_option(p: argparse.ArgumentParser) -> None:
    """``--variant``: the LIB configuration by name (``wdecomp.bases.interaction.VARIANTS``)."""
    p.add_argument("--variant", default="rib", choices=sorted(VARIANTS),
                   help="LIB configuration (default rib: the LIB paper's, as Apollo's rib runs it; rib-uncentred: "
                        "rib's center: false; wdecomp-centred / wdecomp-uncentred: wdecomp's earlier forms; see "
                        "docs/concepts/lib-variants.md)")


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--layers", type=name_list, default=None, metavar="A,B,C", help=LAYERS_HELP)
    p.add_argument("--method", default="lib", choices=BASES, help="which basis (default lib)")
    add_variant_option(p)
    p.add_argument("--out", default=None, metavar="FILE", help="save the components to FILE (.safetensors)")
    add_memory_options(p)


def run(args: argparse.Namespace) -> None:
    check_outputs(args, files=("out",))
    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, progress=args.progress)
    basis = interaction_basis(loaded.model, loaded.data, layers=layers(loaded, args.layers), method=args.method,
                              variant=args.variant, chunk_size=args.chunk_size, max_memory=args.max_memory)
    components = decompose(loaded.model, basis)
    if args.out:
        components.save(args.out)
        wrote(args.out)
    emit(components, args)
