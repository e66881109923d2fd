"""Stochastic Parameter Decomposition of the toy model of superposition TMS 5-2.

Trains (or loads from the cache) the SPD paper's target model ``ReLU(W^T W x + b)`` with five
features in two dimensions (each feature active with probability 0.05, value ``U[0, 1]``), then
decomposes ``linear1`` (``W``) and ``linear2`` (``W^T``, tied to it) into ``C = 20`` rank-one
subcomponents with the paper's loss coefficients (arXiv 2506.20790). It prints and writes:

* MMCS and ML2R of the subcomponents against the columns of ``W`` (ground truth: one piece per
  feature, same norm);
* the alive pieces and the one-hot importance matrix with the Hungarian identity test;
* the masking table: the decomposed model with masks ``1``, ``g``, stochastic, rounded and ``0``;
* an ablation sweep of the pieces (least important first), which works on the result as on any
  other wdecomp components;
* plots: ``importance.png``, ``norms.png``, ``training.png``.

Run: ``python examples/spd_toy_superposition.py [--steps N] [--seed S] [--fast] [--out DIR]``.
The default (a 200-step faithfulness warm-up, then 2000 steps of 256 examples at peak lr 1e-2, about
15 CPU seconds) recovers the five features on the benchmark's seeds (``benchmarks/results/spd.md``);
the paper trains 40,000 steps of 4096 at lr 1e-3. ``--fast`` runs 300 steps of 128 (for tests: the
numbers are then not converged).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import wdecomp.models as wm
from wdecomp.ablation import ablation_sweep
from wdecomp.decomposition import PAPER_SETTINGS, spd
from wdecomp.decomposition.plot import plot_importance_matrix, plot_norms, plot_training


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="SPD steps (paper: 40000)")
    parser.add_argument("--batch-size", type=int, default=256, help="examples per step (paper: 4096)")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (paper: 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="300 steps of 128 (for tests)")
    parser.add_argument("--out", default="spd_out", help="output directory")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps, batch = (300, 128) if args.fast else (args.steps, args.batch_size)

    bundle = wm.load("tms_5_2", steps=2000 if args.fast else 10_000)
    model = bundle.model
    result = spd(model, bundle.extra["sample"], modules=["linear1", "linear2"], config=PAPER_SETTINGS["tms_5_2"],
                 steps=steps, batch_size=batch, lr=args.lr, seed=args.seed, faithfulness_warmup_steps=200)
    print(result)

    gt = result.ground_truth("linear1")
    g = torch.Generator().manual_seed(1)
    data = [(x, x) for x in (bundle.extra["sample"](4096, g) for _ in range(2))]
    alive = result.n_alive(data)
    hung = result.hungarian("linear1")
    print(f"MMCS {gt.mmcs:.4f}  ML2R {gt.ml2r:.4f}  alive {alive}  Hungarian identity test: "
          f"{'passed' if hung.passed else 'failed'} ({hung.errors} entries off by more than 0.1)")
    masking = result.masking_report(data)
    print(masking)
    sweep = ablation_sweep(model, result, data, k=[0, 5, 10, 15, 20], loss="mse", top_n=0)
    print(sweep)

    plot_importance_matrix(result, out / "importance.png")
    plot_norms(result, out / "norms.png")
    plot_training(result, out / "training.png")
    summary = {"mmcs": gt.mmcs, "ml2r": gt.ml2r, "alive": alive, "hungarian": hung.to_dict(),
               "masking": masking.to_dict(), "sweep_losses": [lv.loss for lv in sweep.levels],
               "steps": steps, "batch_size": batch, "final_losses": {k: v[-1] for k, v in result.history.items()}}
    (out / "spd.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
