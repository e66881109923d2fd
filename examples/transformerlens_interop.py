"""A TransformerLens ``HookedTransformer`` taken apart by wdecomp: curvature, a basis, ablations.

Builds a 2-layer ``HookedTransformer`` from a ``HookedTransformerConfig`` (seeded, float64, no
downloads), trains it briefly as a character model on the English help text that ships with
Python (``pydoc_data.topics``), and then

1. checks the Hessian-vector products of block 0's MLP weights against finite differences
   (``op.check()``) and computes the top Hessian eigenpairs with their residuals;
2. reads wdecomp's activations at TransformerLens hook points and compares them with
   ``run_with_cache``;
3. fits a Local Interaction Basis at ``blocks.0.hook_resid_mid`` and ``blocks.0.hook_resid_post``
   and checks the round trip ``f -> C^+ C f`` through TransformerLens's own ``run_with_hooks``
   and through wdecomp's rewritten model (outputs unchanged);
4. runs a zero-ablation sweep over the basis directions.

Run: ``python examples/transformerlens_interop.py [--fast] [--out DIR]``; writes
``transformerlens.json`` to ``DIR``. Needs ``pip install "wdecomp[interop]"``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import wdecomp as wd
from wdecomp.activations import capture
from wdecomp.components import decompose
from wdecomp.interop import hooked_transformer, require, tl_hook_points
from wdecomp.models import char_corpus
from wdecomp.threads import limit_threads

LAYERS = ["blocks.0.hook_resid_mid", "blocks.0.hook_resid_post"]
CONTEXT = 16  # characters per training window


def text_batches(context: int, batch: int, n_batches: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` batches of ``(tokens (B, T), next tokens (B, T))`` windows of the training text."""
    ids = char_corpus().train
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - context - 1, (n_batches, batch), generator=gen)
    out = []
    for s in starts:
        seq = ids[s[:, None] + torch.arange(context + 1)]
        out.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
    return out


def build(fast: bool) -> torch.nn.Module:
    """The model: a HookedTransformer from its config (random weights from ``seed``)."""
    tl = require("transformer_lens")
    cfg = tl.HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=CONTEXT, d_head=8, n_heads=4, d_mlp=64, d_vocab=char_corpus().vocab_size,
        act_fn="gelu", normalization_type="LN", seed=0, dtype=torch.float64,
    )
    return hooked_transformer(cfg)


def train(model: torch.nn.Module, steps: int, context: int) -> list[float]:
    """A few Adam steps of next-character prediction (through the model's own forward)."""
    batches = text_batches(context, 32, steps, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def round_trip_tl(model: torch.nn.Module, basis: wd.Basis, tokens: torch.Tensor) -> float:
    """Largest change of the logits when every basis layer is replaced by ``C^+ C f`` via TL hooks."""

    def through_basis(name: str):
        lb = basis[name]
        return lambda act, hook: lb.from_coordinates(lb.to_coordinates(act))

    with torch.no_grad():
        ref = model(tokens)
        hooked = model.run_with_hooks(tokens, fwd_hooks=[(name, through_basis(name)) for name in basis.layers])
    return float((hooked - ref).abs().max())


def train_and_analyse(model: torch.nn.Module, params: str, layers: list[str], fast: bool,
                      round_trip: Callable[[torch.nn.Module, wd.Basis, torch.Tensor], float],
                      round_trip_name: str) -> tuple[list, dict[str, Any]]:
    """Train ``model`` briefly, then steps 1, 3 and 4 of the module docstring (shared with the
    Hugging Face example): the Hessian of ``params`` checked and its top eigenpairs; a Local
    Interaction Basis at ``layers`` with its round trip through ``round_trip`` (the library's own
    hooks, reported as ``round_trip_name``) and through wdecomp's rewritten model; a zero-ablation
    sweep. Returns the data and the numbers (JSON-ready)."""
    losses = train(model, 40 if fast else 400, CONTEXT)
    data = text_batches(CONTEXT, 16 if fast else 32, 2 if fast else 4, seed=2)
    obj = wd.Objective(model, data, loss="cross_entropy")

    # 1. curvature of block 0's MLP weights
    H = wd.hessian(obj, params=params)
    check = H.check()
    eig = wd.eigh(H, k=4 if fast else 8)

    # 3. a Local Interaction Basis of the residual stream, and its round trip. The checks here are about
    # hooks (exact round trips, zero-ablating every direction = zero-ablating the hook), so the basis is
    # the uncentred one without a constant node; the paper's configuration (rib's default, constant node
    # first) is shown in examples/modular_addition_fourier.py.
    basis = wd.interaction_basis(model, data, layers, method="lib", variant="wdecomp-uncentred",
                                 drop_noninteracting=False)
    hooks_round_trip = max(round_trip(model, basis, x) for x, _ in data)
    rewrite_error = decompose(model, basis, data).verify(model, data)

    # 4. zero-ablate the least important directions
    n = sum(basis[p].size for p in basis.layers)
    ks = [0, n // 4, n // 2, n] if fast else list(range(0, n + 1, max(1, n // 16)))
    sweep = wd.ablation_sweep(model, basis, data, k=ks, method="zero", top_n=0, progress=False)

    return data, {
        "train_loss": {"first": losses[0], "last": losses[-1]},
        "loss": obj.value(),
        "hessian": {"dim": H.shape[0], "check_passed": bool(check.passed), "check_errors": list(check.relative_errors),
                    "symmetry_error": check.symmetry_error,
                    "eigenvalues": eig.eigenvalues.tolist(), "residuals": eig.residuals.tolist(),
                    "relative_residuals": eig.relative_residuals.tolist(), "converged": bool(eig.all_converged)},
        "basis": {p: {"size": basis[p].size, "dim": basis[p].dim, "importance": basis[p].eigenvalues.tolist()}
                  for p in basis.layers},
        "round_trip": {round_trip_name: hooks_round_trip, "rewritten_model": rewrite_error},
        "ablation": sweep.to_dict(),
    }


def run(fast: bool = False) -> dict[str, Any]:
    """Everything in the module docstring; returns the numbers (JSON-ready)."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build(fast)
    data, found = train_and_analyse(model, "blocks.0.mlp.*", LAYERS, fast, round_trip_tl, "transformer_lens_hooks")

    # 2. wdecomp's hook points are TransformerLens's hook names
    x0 = data[0][0]
    with torch.no_grad():
        _, cache = model.run_with_cache(x0, names_filter=lambda n: n in LAYERS)
    ours = capture(model, x0, LAYERS)
    cache_diff = max(float((ours[n] - cache[n]).abs().max()) for n in LAYERS)

    return {
        "model": {"n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model, "d_vocab": model.cfg.d_vocab,
                  "parameters": sum(p.numel() for p in model.parameters()), "hook_points": len(tl_hook_points(model))},
        "cache_difference": cache_diff,
        **found,
        "seconds": time.perf_counter() - t0,
    }


def example_main(argv: list[str] | None, doc: str, run: Callable[..., dict[str, Any]], *, name: str, title: str,
                 params: str, compared: tuple[str, str], round_trip: dict[str, str]) -> dict[str, Any]:
    """The examples' command line (``--fast``, ``--out``, default ``<name>_out``): ``run`` on one
    thread, its numbers printed (``compared``: key and label of the activation comparison;
    ``round_trip``: key -> label) and written as JSON to ``<out>/<name>.json``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="short training, fewer eigenpairs (for tests)")
    parser.add_argument("--out", default=f"{name}_out", help="output directory")
    args = parser.parse_args(argv)
    with limit_threads(1):  # a model this small runs fastest on one thread (wdecomp.threads)
        res = run(fast=args.fast)
    h = res["hessian"]
    print(f"{title} {res['model']}; train loss {res['train_loss']['first']:.3f} -> "
          f"{res['train_loss']['last']:.3f}; objective {res['loss']:.4f}")
    print(f"Hessian of {params} ({h['dim']} weights): check passed={h['check_passed']} "
          f"errors {', '.join(f'{e:.1e}' for e in h['check_errors'])}")
    for lam, r in zip(h["eigenvalues"], h["relative_residuals"]):
        print(f"  eigenvalue {lam:11.5f}   relative residual {r:.1e}")
    print(f"{compared[1]}: max difference {res[compared[0]]:.1e}")
    for p, b in res["basis"].items():
        print(f"LIB at {p}: {b['size']}/{b['dim']} directions, top importance "
              + " ".join(f"{v:.3g}" for v in b["importance"][:4]))
    print("round trip f -> C^+ C f: " + ", ".join(f"{label} {res['round_trip'][key]:.1e}"
                                                  for key, label in round_trip.items()))
    print(wd.AblationResult.from_dict(res["ablation"]))
    path = Path(args.out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2))
    print(f"\nwrote {path} ({res['seconds']:.1f} s)")
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return example_main(argv, __doc__, run, name="transformerlens", title="HookedTransformer", params="blocks.0.mlp.*",
                        compared=("cache_difference", "wdecomp activations vs run_with_cache"),
                        round_trip={"transformer_lens_hooks": "TL run_with_hooks",
                                    "rewritten_model": "rewritten model"})


if __name__ == "__main__":
    main()
