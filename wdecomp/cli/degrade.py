"""``wdecomp degrade``: talk to a degraded model. Side-by-side generations of the original and the
edited model (an SAE spliced in, or a hook zero-ablated) with the divergence marked, and the
per-token degradation grouped by token class, position in word and frequency."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wdecomp.cli._args import add_common, int_list, positive_float, positive_int
from wdecomp.cli._common import check_outputs, emit, load_model, wrote
from wdecomp.degrade import compare_generations
from wdecomp.errors import DataError, SelectionError
from wdecomp.hooks import HookPoint, resolve_module
from wdecomp.sae.model import load_sae

SPLICE_HELP = ("the edit: sae:FILE (an SAE saved by wdecomp, spliced at its own hook or --hook) or zero:HOOK "
               "(the activation at HOOK set to zero)")


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--splice", required=True, metavar="KIND:ARG", help=SPLICE_HELP)
    p.add_argument("--hook", default=None, metavar="HOOK", help="hook point for sae:FILE (default: the SAE's own)")
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help="text file with one prompt per line (blank lines skipped; \\n in a line is a newline)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, metavar="N",
                   help="tokens generated per continuation (default 64)")
    p.add_argument("--seeds", type=int_list, default=[0, 1, 2], metavar="0,1,2",
                   help="seeds of the sampled continuations (default 0,1,2); both models draw from the same stream")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write generations.md and generations.html here")


def _edit(spec: str, hook: str | None, model: Any) -> tuple[tuple[str, Any], str]:
    kind, _, arg = spec.partition(":")
    if kind == "sae" and arg:
        path = Path(arg)
        if not path.is_file():
            raise SelectionError(f"--splice sae:{arg}: no such file (give an SAE saved with SparseAutoencoder.save)")
        sae = load_sae(path)
        point = hook or sae.hook
        if not point:
            raise SelectionError(f"the SAE in {arg} records no hook point: pass --hook")
        resolve_module(model, HookPoint.parse(point).module)
        return (point, sae), f"SAE {path.name} at {point}"
    if kind == "zero" and arg:
        resolve_module(model, HookPoint.parse(arg).module)
        return (arg, lambda f: f * 0), f"zero-ablated {arg}"
    raise SelectionError(f"--splice {spec!r}: write sae:FILE or zero:HOOK")


def _prompts(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise SelectionError(f"--prompts {path}: no such file")
    lines = [ln.replace("\\n", "\n") for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"--prompts {path} holds no prompts (one per line)")
    return lines


def run(args: argparse.Namespace) -> None:
    check_outputs(args, folders=("out",))
    prompts = _prompts(args.prompts)
    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, progress=args.progress)
    corpus = (getattr(loaded.bundle, "extra", None) or {}).get("corpus")
    if corpus is None:
        raise SelectionError(f"model '{args.model}' comes without a tokenizer (encode/decode); degrade needs a text "
                             "model such as char_transformer")
    unknown = sorted({c for p in prompts for c in p if c not in corpus.chars})
    if unknown:
        raise DataError(f"the prompts use characters outside the model's vocabulary: {unknown[:10]}")
    edit, label = _edit(args.splice, args.hook, loaded.model)
    result = compare_generations(loaded.model, edit, prompts, encode=corpus.encode, decode=corpus.decode,
                                 max_new_tokens=args.max_new_tokens, seeds=args.seeds, temperature=args.temperature,
                                 data=loaded.data, vocab=list(corpus.chars), label=label, progress=args.progress)
    emit(result, args)
    if args.out:
        for path in result.save(args.out):
            wrote(path)
