"""The ``wdecomp`` command line: ``spectrum | rank | basis | graph | ablate | demo``.

A model is named either by a built-in name (``modular_addition``, ``toy_superposition``,
``digits_mlp``, ``char_transformer``) or as ``package.module:factory``, a function returning
``(model, data)`` (``data``: a list of ``(inputs, targets)`` batches) or a
:class:`wdecomp.models.ModelBundle`. Exit codes: 0 success, 1 a wdecomp error (bad input,
non-finite values, a mismatched model: the message says which), 2 a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wdecomp.errors import WdecompError
from wdecomp.io import atomic_write_text


@dataclass
class LoadedModel:
    """What a subcommand needs: the model, its data, the loss and its hook points."""

    model: Any
    data: list
    loss: Any
    hook_points: tuple[str, ...]
    name: str
    bundle: Any = None


def load_model(spec: str, *, loss: str | None = None, max_batches: int | None = None, dtype: str = "float64",
               progress: bool | None = None) -> LoadedModel:
    """Resolve ``spec`` (a built-in name or ``module:factory``) into model, data and loss.

    Raises:
        WdecompError: the name cannot be resolved or the factory returns something else.
    """
    import torch

    from wdecomp.errors import SelectionError

    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise SelectionError(f"cannot load model factory '{spec}': {exc}") from exc
        produced = factory()
    else:
        from wdecomp import models

        if spec not in models.available():
            raise SelectionError(f"unknown model '{spec}'; built-in models: {', '.join(models.available())}, "
                                 "or name a factory as package.module:function")
        produced = models.load(spec, progress=progress)
    bundle = produced if hasattr(produced, "loss_name") else None
    if not isinstance(produced, (tuple, list)) or len(produced) < 2:
        raise SelectionError(f"model factory '{spec}' must return (model, data), got {type(produced).__name__}")
    model, data = produced[0], produced[1]
    model = model.to(getattr(torch, dtype)).eval()
    data = list(data) if not (isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[1])) \
        else [tuple(data)]
    if max_batches is not None:
        data = data[:max_batches]
    from wdecomp.objective import move_batch

    device = next(model.parameters()).device
    data = [move_batch(batch, device, getattr(torch, dtype)) for batch in data]
    loss_spec: Any = loss
    if loss_spec is None:
        if bundle is not None:
            loss_spec = bundle.loss_name if bundle.loss_name in ("cross_entropy", "mse") else bundle.loss
        elif len(produced) >= 3:
            loss_spec = produced[2]
        else:
            loss_spec = "cross_entropy"
    points = tuple(getattr(bundle, "hook_points", ()) or ())
    return LoadedModel(model, data, loss_spec, points, spec, bundle)


def _emit(result: Any, args: argparse.Namespace) -> None:
    if args.json:
        payload = result.to_dict() if hasattr(result, "to_dict") else result
        text = json.dumps(payload, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            atomic_write_text(args.json, text)
            print(f"wrote {args.json}", file=sys.stderr)
    if not args.json or args.json != "-":
        print(result)


def _operator(loaded: LoadedModel, kind: str, params: str | None) -> Any:
    import wdecomp as wd

    obj = wd.Objective(loaded.model, loaded.data, loss=loaded.loss)
    sel = params.split(",") if params else None
    if kind == "hessian":
        return wd.hessian(obj, sel)
    if kind == "ggn":
        return wd.ggn(obj, sel)
    if kind in ("fisher", "fisher_empirical"):
        return wd.fisher(obj, sel, kind="empirical")
    if kind == "fisher_true":
        return wd.fisher(obj, sel, kind="true")
    raise WdecompError(f"unknown operator '{kind}'")


def _layers(loaded: LoadedModel, layers: str | None) -> list[str]:
    if layers:
        return layers.split(",")
    if not loaded.hook_points:
        raise WdecompError("this model names no hook points: pass --layers a,b,c (module names in forward order)")
    return list(loaded.hook_points)


def cmd_spectrum(args: argparse.Namespace) -> None:
    from wdecomp.spectral import eigh

    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, progress=args.progress)
    op = _operator(loaded, args.operator, args.params)
    result = eigh(op, k=args.k, which=args.which, tol=args.tol, block_size=args.block_size, verify=args.verify,
                  seed=args.seed, progress=args.progress)
    _emit(result, args)
    if args.density:
        from wdecomp.spectral import slq_density

        density = slq_density(op, seed=args.seed)
        density.plot(args.density)
        print(f"wrote {args.density}", file=sys.stderr)


def cmd_rank(args: argparse.Namespace) -> None:
    from wdecomp.spectral import rank

    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, progress=args.progress)
    op = _operator(loaded, args.operator, args.params)
    _emit(rank(op, method=args.method, rtol=args.rtol, groups=args.groups, seed=args.seed), args)


def cmd_basis(args: argparse.Namespace) -> None:
    from wdecomp.bases import interaction_basis
    from wdecomp.components import decompose

    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, progress=args.progress)
    basis = interaction_basis(loaded.model, loaded.data, layers=_layers(loaded, args.layers), method=args.method)
    components = decompose(loaded.model, basis)
    if args.out:
        components.save(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    _emit(components, args)


def cmd_graph(args: argparse.Namespace) -> None:
    from wdecomp.bases import interaction_basis
    from wdecomp.graph import interaction_graph

    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, progress=args.progress)
    basis = interaction_basis(loaded.model, loaded.data, layers=_layers(loaded, args.layers), method=args.basis)
    graph = interaction_graph(loaded.model, loaded.data, basis, method=args.method, progress=args.progress)
    if args.keep is not None:
        graph = graph.prune(fraction=args.keep)
    graph.save(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.plot:
        graph.plot(args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    _emit(graph.summary(), args)


def _law(name: str | None) -> Any:
    if name is None:
        return None
    from wdecomp import scaling

    table = {"chinchilla": scaling.CHINCHILLA, "epoch": scaling.EPOCH, "kaplan": scaling.KAPLAN}
    if name.lower() in table:
        return table[name.lower()]
    path = Path(name)
    if path.exists():
        return scaling.law_from_dict(json.loads(path.read_text()))
    raise WdecompError(f"unknown scaling law '{name}': use chinchilla, epoch, kaplan or a JSON file of a fitted law")


def cmd_ablate(args: argparse.Namespace) -> None:
    from wdecomp.ablation import ablation_sweep
    from wdecomp.bases import interaction_basis

    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, progress=args.progress)
    layers = _layers(loaded, args.layers)
    basis = interaction_basis(loaded.model, loaded.data, layers=layers, method=args.basis)
    target = basis[args.at] if args.at else basis[layers[len(layers) // 2]]
    n = target.size
    levels = [int(v) for v in args.levels.split(",")] if args.levels else sorted({round(i * n / 10) for i in range(11)})
    result = ablation_sweep(loaded.model, target, loaded.data, k=levels, order=args.order, method=args.method,
                            loss=loaded.loss, law=_law(args.law), tokens=args.tokens, progress=args.progress)
    if args.plot:
        result.plot(args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    _emit(result, args)


def cmd_demo(args: argparse.Namespace) -> None:
    from wdecomp.demo import run_demo

    report = run_demo(args.out, quick=args.quick, progress=args.progress)
    print(report.summary())
    print(f"\nreport written to {report.folder}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wdecomp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, model: bool = True) -> None:
        if model:
            p.add_argument("--model", required=True, help="built-in name or package.module:factory")
            p.add_argument("--loss", default=None, help="cross_entropy or mse (default: the model's own)")
            p.add_argument("--max-batches", type=int, default=None, help="use only the first N batches of data")
        p.add_argument("--json", metavar="FILE", default=None, help="also write the result as JSON ('-': stdout only)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bars (default: on a terminal)")

    p = sub.add_parser("spectrum", help="top/bottom eigenpairs of a curvature operator, with residuals")
    common(p)
    p.add_argument("--operator", default="hessian", choices=["hessian", "ggn", "fisher", "fisher_true"])
    p.add_argument("--params", default=None, help="comma-separated globs/module names (default: all)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--which", default="largest", choices=["largest", "smallest", "magnitude"])
    p.add_argument("--tol", type=float, default=None)
    p.add_argument("--block-size", type=int, default=None,
                   help="Lanczos block size (default min(k, 4)); at least the largest multiplicity expected")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute each residual from a product (--no-verify: Ritz estimates, k fewer products)")
    p.add_argument("--density", metavar="PNG", default=None, help="also plot the spectral density (SLQ)")
    p.set_defaults(func=cmd_spectrum)

    p = sub.add_parser("rank", help="numerical rank and nullity (degeneracy), per parameter group")
    common(p)
    p.add_argument("--operator", default="ggn", choices=["hessian", "ggn", "fisher", "fisher_true"])
    p.add_argument("--params", default=None)
    p.add_argument("--method", default="auto", choices=["auto", "dense", "gram", "density"])
    p.add_argument("--rtol", type=float, default=None)
    p.add_argument("--groups", default="module", help="'parameter', 'module' or 'none'")
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("basis", help="interaction basis (LIB) and components; saves them")
    common(p)
    p.add_argument("--layers", default=None, help="comma-separated hook points in forward order")
    p.add_argument("--method", default="lib", choices=["lib", "pca", "neuron", "jacobian"])
    p.add_argument("--out", default=None, help="where to save the components (.safetensors)")
    p.set_defaults(func=cmd_basis)

    p = sub.add_parser("graph", help="build, prune and export an interaction graph")
    common(p)
    p.add_argument("--layers", default=None)
    p.add_argument("--basis", default="lib", choices=["lib", "pca", "neuron", "jacobian"])
    p.add_argument("--method", default="jacobian", choices=["jacobian", "integrated_gradients"])
    p.add_argument("--keep", type=float, default=0.9, help="keep edges carrying this fraction of attribution")
    p.add_argument("--out", required=True, help="graph file: .graphml, .gexf, .json or .dot")
    p.add_argument("--plot", default=None, help="PNG or SVG of the layered graph")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("ablate", help="ablation sweep scored by loss, KL, loss recovered, compute-equivalent")
    common(p)
    p.add_argument("--layers", default=None)
    p.add_argument("--at", default=None, help="hook point whose components are ablated")
    p.add_argument("--basis", default="lib", choices=["lib", "pca", "neuron", "jacobian"])
    p.add_argument("--method", default="zero", choices=["zero", "mean", "resample"])
    p.add_argument("--order", default="least_important", choices=["least_important", "most_important"])
    p.add_argument("--levels", default=None, help="comma-separated numbers of components to ablate")
    p.add_argument("--law", default=None, help="chinchilla, epoch, kaplan or a JSON file of a fitted law")
    p.add_argument("--tokens", type=float, default=None, help="training tokens D for the parameter-equivalent")
    p.add_argument("--plot", default=None)
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("demo", help="decompose small models end to end and write a report")
    common(p, model=False)
    p.add_argument("--out", default="wdecomp-report", help="report folder")
    p.add_argument("--quick", action="store_true", help="small settings (CI)")
    p.set_defaults(func=cmd_demo)
    return parser


def _version() -> str:
    from wdecomp import __version__

    return f"wdecomp {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "groups", None) == "none":
        args.groups = None
    try:
        args.func(args)
    except WdecompError as exc:
        print(f"wdecomp {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
