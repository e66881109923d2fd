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

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import wdecomp as wd
from wdecomp.activations import HookPoint, capture, resolve_module
from wdecomp.components import decompose
from wdecomp.interop import logits_module, require
from wdecomp.models import char_corpus
from wdecomp.threads import limit_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transformerlens_interop import text_batches, train  # noqa: E402  (shared with the TransformerLens example)

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
    context = 16
    model = build(context)
    losses = train(model, 40 if fast else 400, context)
    data = text_batches(context, 16 if fast else 32, 2 if fast else 4, seed=2)
    obj = wd.Objective(model, data, loss="cross_entropy")

    # 1. curvature of block 0's MLP weights
    H = wd.hessian(obj, params="model.transformer.h.0.mlp.*")
    check = H.check()
    eig = wd.eigh(H, k=4 if fast else 8)

    # 2. wdecomp's activation at a block = the model's own hidden state after that block
    x0 = data[0][0]
    with torch.no_grad():
        hidden = model.model(input_ids=x0, use_cache=False, output_hidden_states=True).hidden_states
    ours = capture(model, x0, ["model.transformer.h.0"])["model.transformer.h.0"]
    hidden_diff = float((ours - hidden[1]).abs().max())

    # 3. a Local Interaction Basis of the residual stream, and its round trip. The checks here are about
    # hooks (exact round trips, zero-ablating every direction = zero-ablating the hook), so the basis is
    # the uncentred one without a constant node; the paper's configuration (rib's default, constant node
    # first) is shown in examples/modular_addition_fourier.py.
    basis = wd.interaction_basis(model, data, LAYERS, method="lib", variant="wdecomp-uncentred",
                                 drop_noninteracting=False)
    hook_round_trip = max(round_trip_hooks(model, basis, x) for x, _ in data)
    rewrite_error = decompose(model, basis, data).verify(model, data)

    # 4. zero-ablate the least important directions
    n = sum(basis[p].size for p in basis.layers)
    ks = [0, n // 4, n // 2, n] if fast else list(range(0, n + 1, max(1, n // 16)))
    sweep = wd.ablation_sweep(model, basis, data, k=ks, method="zero", top_n=0, progress=False)

    cfg = model.model.config
    return {
        "model": {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "vocab_size": cfg.vocab_size,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "attn_implementation": cfg._attn_implementation},
        "train_loss": {"first": losses[0], "last": losses[-1]},
        "loss": obj.value(),
        "hessian": {"dim": H.shape[0], "check_passed": bool(check.passed),
                    "check_errors": list(check.relative_errors), "symmetry_error": check.symmetry_error,
                    "eigenvalues": eig.eigenvalues.tolist(), "residuals": eig.residuals.tolist(),
                    "relative_residuals": eig.relative_residuals.tolist(), "converged": bool(eig.all_converged)},
        "hidden_state_difference": hidden_diff,
        "basis": {p: {"size": basis[p].size, "dim": basis[p].dim, "importance": basis[p].eigenvalues.tolist()}
                  for p in basis.layers},
        "round_trip": {"torch_hooks": hook_round_trip, "rewritten_model": rewrite_error},
        "ablation": sweep.to_dict(),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="short training, fewer eigenpairs (for tests)")
    parser.add_argument("--out", default="huggingface_out", help="output directory")
    args = parser.parse_args(argv)
    with limit_threads(1):  # a model this small runs fastest on one thread (wdecomp.threads)
        res = run(fast=args.fast)
    h = res["hessian"]
    print(f"GPT2LMHeadModel {res['model']}; train loss {res['train_loss']['first']:.3f} -> "
          f"{res['train_loss']['last']:.3f}; objective {res['loss']:.4f}")
    print(f"Hessian of model.transformer.h.0.mlp.* ({h['dim']} weights): check passed={h['check_passed']} "
          f"errors {', '.join(f'{e:.1e}' for e in h['check_errors'])}")
    for lam, r in zip(h["eigenvalues"], h["relative_residuals"]):
        print(f"  eigenvalue {lam:11.5f}   relative residual {r:.1e}")
    print(f"wdecomp activation vs output_hidden_states: max difference {res['hidden_state_difference']:.1e}")
    for p, b in res["basis"].items():
        print(f"LIB at {p}: {b['size']}/{b['dim']} directions, top importance "
              + " ".join(f"{v:.3g}" for v in b["importance"][:4]))
    rt = res["round_trip"]
    print(f"round trip f -> C^+ C f: torch hooks {rt['torch_hooks']:.1e}, rewritten model {rt['rewritten_model']:.1e}")
    print(wd.AblationResult.from_dict(res["ablation"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "huggingface.json").write_text(json.dumps(res, indent=2))
    print(f"\nwrote {out / 'huggingface.json'} ({res['seconds']:.1f} s)")
    return res


if __name__ == "__main__":
    main()
