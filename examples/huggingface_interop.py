"""A Hugging Face GPT-2 built from a config, taken apart by wdecomp: curvature, a basis, ablations.

Builds a 2-layer ``GPT2LMHeadModel`` from a ``GPT2Config`` (seeded, float64; no weights or
tokenizer are downloaded), wraps it with :func:`wdecomp.interop.logits_module` so its forward
returns the logits tensor (and attention runs in the ``"eager"`` implementation, which has the
forward-mode derivatives Hessian products need), trains it briefly as a character model on the
English help text that ships with Python (``pydoc_data.topics``), and then

1. checks the Hessian-vector products of block 0's MLP weights against finite differences
   (``op.check()``) and computes the top Hessian eigenpairs with their residuals;
2. compares wdecomp's activation at ``model.transformer.h.0`` with the model's own
   ``output_hidden_states``;
3. fits a Local Interaction Basis at the residual stream between attention and MLP
   (``model.transformer.h.0.ln_2:input``) and after block 0 (``model.transformer.h.0``), and checks
   the round trip ``f -> C^+ C f`` through forward hooks and through wdecomp's rewritten model;
4. runs a zero-ablation sweep over the basis directions.

Run: ``python examples/huggingface_interop.py [--fast] [--out DIR]``; writes ``huggingface.json``
to ``DIR``. Needs ``pip install "wdecomp[interop]"``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

import wdecomp as wd
from wdecomp.activations import HookPoint, capture, resolve_module
from wdecomp.interop import logits_module, require
from wdecomp.models import char_corpus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transformerlens_interop import CONTEXT, example_main, train_and_analyse  # noqa: E402  (shared with the TL example)

LAYERS = ["model.transformer.h.0.ln_2:input", "model.transformer.h.0"]


def build(context: int) -> torch.nn.Module:
    """GPT-2 from a config (random weights from ``torch.manual_seed(0)``), wrapped to return logits."""
    transformers = require("transformers")
    cfg = transformers.GPT2Config(
        vocab_size=char_corpus().vocab_size, n_positions=context, n_embd=32, n_layer=2, n_head=4, n_inner=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).to(torch.float64)
    return logits_module(hf).eval()


def round_trip_hooks(model: torch.nn.Module, basis: wd.Basis, tokens: torch.Tensor) -> float:
    """Largest change of the logits when every basis layer is replaced by ``C^+ C f`` (torch hooks)."""
    handles = []
    for name in basis.layers:
        lb, point = basis[name], HookPoint.parse(name)
        module = resolve_module(model, point.module)
        if point.side == "input":
            handles.append(module.register_forward_pre_hook(
                lambda m, args, lb=lb: (lb.from_coordinates(lb.to_coordinates(args[0])), *args[1:])))
        else:
            def post(m: torch.nn.Module, args: Any, out: Any, lb=lb) -> Any:
                if isinstance(out, tuple):
                    return (lb.from_coordinates(lb.to_coordinates(out[0])), *out[1:])
                return lb.from_coordinates(lb.to_coordinates(out))

            handles.append(module.register_forward_hook(post))
    try:
        with torch.no_grad():
            hooked = model(tokens)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        ref = model(tokens)
    return float((hooked - ref).abs().max())


def run(fast: bool = False) -> dict[str, Any]:
    """Everything in the module docstring; returns the numbers (JSON-ready)."""
    t0 = time.perf_counter()
    model = build(CONTEXT)
    data, found = train_and_analyse(model, "model.transformer.h.0.mlp.*", LAYERS, fast, round_trip_hooks,
                                    "torch_hooks")

    # 2. wdecomp's activation at a block = the model's own hidden state after that block
    x0 = data[0][0]
    with torch.no_grad():
        hidden = model.model(input_ids=x0, use_cache=False, output_hidden_states=True).hidden_states
    ours = capture(model, x0, ["model.transformer.h.0"])["model.transformer.h.0"]
    hidden_diff = float((ours - hidden[1]).abs().max())

    cfg = model.model.config
    return {
        "model": {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "vocab_size": cfg.vocab_size,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "attn_implementation": cfg._attn_implementation},
        "hidden_state_difference": hidden_diff,
        **found,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return example_main(argv, __doc__, run, name="huggingface", title="GPT2LMHeadModel",
                        params="model.transformer.h.0.mlp.*",
                        compared=("hidden_state_difference", "wdecomp activation vs output_hidden_states"),
                        round_trip={"torch_hooks": "torch hooks", "rewritten_model": "rewritten model"})


if __name__ == "__main__":
    main()
