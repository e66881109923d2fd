"""Per-stage profile of the LIB basis on a transformer: Gram pass, Jacobians, eigendecompositions.

Profiles ``wd.interaction_basis`` (rib's default, and ``sequence="summed"`` for comparison) on a
:class:`wdecomp.models.transformer.Transformer` with cProfile and reports, per stage, the cumulative
time and the work done: forward passes, Jacobian sweeps (JVPs or VJPs per sequence: rib's
per-position ``M`` needs a Jacobian of every source position, ``P_s (d+1)`` tangents per sequence,
where the summed form needs ``d``), and the eigendecompositions' sizes. Counts do not depend on the
machine's load; the times do (they are indicative only on a shared machine).

Run: ``python benchmarks/profile_lib.py [--d-model 192 --layers 2 --context 64 --sequences 160]``
(the issue-16 size: ~0.9M parameters, 10,240 tokens); ``--tiny`` for a smoke run.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

import torch

from wdecomp.bases import interaction_basis
from wdecomp.models.transformer import Transformer, TransformerConfig

STAGES = {
    "gram (one pass, all layers)": "gram_matrices",
    "M: Jacobian chunks (vmap of jacfwd/jacrev)": "batched_jacobians",
    "M: accumulate J^T J": "_second_moment",
    "eigendecompositions": "_interaction_layer",
    "section biases (call-order pass)": "section_biases",
}


def profile(model: Transformer, data: list, layers: list[str], **kw: object) -> dict[str, object]:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    basis = interaction_basis(model, data, layers, **kw)
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    out: dict[str, object] = {"total_s": total, "sizes": {p: basis[p].size for p in layers}}
    for label, fn in STAGES.items():
        cum = sum(v[3] for k, v in stats.stats.items() if k[2] == fn)  # cumulative time
        calls = sum(v[1] for k, v in stats.stats.items() if k[2] == fn)
        out[label] = {"seconds": round(cum, 3), "calls": calls}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--sequences", type=int, default=160)
    parser.add_argument("--tiny", action="store_true", help="smoke run: d 16, 1 layer, context 8, 8 sequences")
    args = parser.parse_args()
    if args.tiny:
        args.d_model, args.layers, args.context, args.sequences = 16, 1, 8, 8
    torch.manual_seed(0)
    cfg = TransformerConfig(d_vocab=65, d_model=args.d_model, n_layers=args.layers, n_heads=4,
                            context=args.context)
    model = Transformer(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, 65, (args.sequences, args.context), generator=torch.Generator().manual_seed(1))
    data = [(tokens[i:i + 16],) for i in range(0, args.sequences, 16)]
    layers = [f"blocks.{i}" for i in range(args.layers)] + ["ln_f"]
    P, d = args.context, args.d_model
    report = {"params": n_params, "tokens": args.sequences * args.context, "layers": layers,
              "threads": torch.get_num_threads(),
              "tangents_per_sequence": {"rib per-position": P * (d + 1), "summed": d}}
    for name, kw in (("rib (default)", {}), ("sequence='summed', no constant", {"sequence": "summed",
                                                                               "constant": False})):
        report[name] = profile(model, data, layers, **kw)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
