"""``wdecomp decompose``: parameter decomposition of chosen linear layers (``--method spd``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from wdecomp.cli._args import add_common, name_list, nonnegative_int, positive_float, positive_int
from wdecomp.cli._common import LoadedModel, check_outputs, emit, load_model, wrote
from wdecomp.decomposition import PAPER_SETTINGS, SPDConfig, spd
from wdecomp.errors import SelectionError

METHODS = ["spd"]


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--method", default="spd", choices=METHODS, help="decomposition method (default spd: "
                   "Stochastic Parameter Decomposition, arXiv 2506.20790)")
    p.add_argument("--layers", type=name_list, default=None, metavar="A,B",
                   help="comma-separated linear modules to decompose (default: the built-in model's own, else "
                        "every nn.Linear)")
    p.add_argument("--C", type=positive_int, default=None, help="subcomponents per layer (default: the paper's "
                   "setting for a built-in TMS/residual-MLP model, else 20)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the paper's, 40000 "
                   "for TMS; long on a CPU)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="examples per step (default: the paper's)")
    p.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default: the paper's)")
    p.add_argument("--importance-coeff", type=float, default=None,
                   help="importance-minimality coefficient (default: the paper's)")
    p.add_argument("--p", type=positive_float, default=None, help="exponent of the minimality penalty")
    p.add_argument("--warmup", type=nonnegative_int, default=None,
                   help="faithfulness warm-up steps before training (default 0, the paper)")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="checkpoint file (.safetensors), written every 1000 steps; resumes from it when it exists")
    p.add_argument("--out", default=None, metavar="FILE", help="save the decomposition to FILE (.safetensors)")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write the importance heat map, norms and training curves (PNG) to DIR")


def _default_layers(loaded: LoadedModel) -> list[str]:
    if loaded.name in PAPER_SETTINGS and loaded.hook_points:
        return list(loaded.hook_points)
    found = [n for n, m in loaded.model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise SelectionError("this model has no nn.Linear modules; name the linear-like modules with --layers")
    return found


def run(args: argparse.Namespace) -> None:
    check_outputs(args, files=("out", "checkpoint"), folders=("plots",) if args.plots else ())
    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, dtype="float32",
                        progress=args.progress)
    config = PAPER_SETTINGS.get(loaded.name, SPDConfig())
    settings = {k: v for k, v in {"C": args.C, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                                  "importance_coeff": args.importance_coeff, "p": args.p,
                                  "faithfulness_warmup_steps": args.warmup, "seed": args.seed}.items()
                if v is not None}
    sample = (loaded.bundle.extra.get("sample") if loaded.bundle is not None else None) or loaded.data
    layers = args.layers or _default_layers(loaded)
    result = spd(loaded.model, sample, modules=layers, config=config, checkpoint=args.checkpoint,
                 progress=args.progress, **settings)
    if args.out:
        result.save(args.out)
        wrote(args.out)
    if args.plots:
        from wdecomp.decomposition.plot import plot_importance_matrix, plot_norms, plot_training

        folder = Path(args.plots)
        for path in (plot_importance_matrix(result, folder / "importance.png"),
                     plot_norms(result, folder / "norms.png"), plot_training(result, folder / "training.png")):
            wrote(path)
    emit(result, args)
