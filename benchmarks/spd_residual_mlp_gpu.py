"""Accelerator run (prepared, one script): SPD on the compressed-computation residual MLP (issue 17).

The target is the SPD paper's 1-layer residual MLP (arXiv 2506.20790, Sec. "Toy Model of Compressed
Computation"): 100 features, a fixed random unit-norm embedding of width 1000 (``W_U = W_E^T``), one
ReLU MLP of 50 neurons, labels ``y = x + ReLU(x)``, features active with probability 0.01 and then
``U[-1, 1]`` (``wdecomp.models.residual_mlp``; trained here on the CPU, 1000 AdamW steps of 2048).
SPD runs with the paper's settings (``PAPER_SETTINGS["residual_mlp"]``: ``C = 100``, 30k steps of
2048, constant lr 2e-3, minimality coefficient 1e-5, ``p = 2``) on ``layers.0.mlp_in`` and
``layers.0.mlp_out``.

Expected (the paper's Fig. 8, middle): the one-hot importance matrix of ``W_in`` (inputs ``0.75 e_i``)
is a 100-way permutation (the Hungarian identity test passes, tolerance 0.1, at most one error), and
``W_out`` is one dense rank-50 piece: about 50 alive subcomponents, each important on (almost) every
one-hot input. Writes ``benchmarks/results/spd_residual_mlp.{json,md}``.

Run on a machine with a GPU: ``python benchmarks/spd_residual_mlp_gpu.py [--steps 30000] [--device cuda]``;
``--steps 200 --device cpu`` is a smoke run (numbers then meaningless). Checkpoints every 1000 steps
to ``--checkpoint`` and resumes from it, so a run cut short continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, write_results  # noqa: E402

import wdecomp.models as wm  # noqa: E402
from wdecomp.decomposition import PAPER_SETTINGS, hungarian_identity, spd  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=PAPER_SETTINGS["residual_mlp"].steps)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="spd_residual_mlp.ckpt.safetensors")
    p.add_argument("--out", default="spd_residual_mlp")
    args = p.parse_args()
    device = torch.device(args.device)
    t0 = time.perf_counter()
    bundle = wm.residual_mlp(seed=args.seed, cache=False, progress=True)  # trained on the CPU (1000 small steps)
    model = bundle.model.to(device).eval()
    sample_cpu = bundle.extra["sample"]

    def sample(b: int, g: torch.Generator) -> torch.Tensor:
        return sample_cpu(b, g).to(device)

    target_seconds = time.perf_counter() - t0
    layers = ["layers.0.mlp_in", "layers.0.mlp_out"]
    t1 = time.perf_counter()
    res = spd(model, sample, modules=layers, config=PAPER_SETTINGS["residual_mlp"], steps=args.steps,
              seed=args.seed, checkpoint=args.checkpoint, progress=True)
    spd_seconds = time.perf_counter() - t1
    one_hot = {n: v.detach().cpu() for n, v in res.one_hot_importances(100).items()}
    hung_in = hungarian_identity(one_hot[layers[0]])
    g = torch.Generator().manual_seed(123)
    data = [(x, x) for x in (sample(2048, g) for _ in range(4))]
    alive = res.n_alive(data)
    out_imp = one_hot[layers[1]]
    alive_out = res.alive(data)[layers[1]].cpu()
    dense_fraction = float((out_imp[:, alive_out] > 0.5).to(torch.float64).mean()) if alive_out.any() else 0.0
    payload = {
        "machine": machine(), "device": str(device), "steps": args.steps, "target_seconds": target_seconds,
        "spd_seconds": spd_seconds, "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "target_metrics": bundle.metrics, "alive": alive, "ci_l0": res.ci_l0(data),
        "w_in_hungarian": hung_in.to_dict(), "w_out_alive": int(alive_out.sum()),
        "w_out_fraction_of_alive_important_on_each_input": dense_fraction,
        "final_losses": {k: v[-1] for k, v in res.history.items() if v},
        "masking": res.masking_report(data).to_dict(),
        "expected": {"w_in_permutation": hung_in.passed, "w_out_about_50_alive": 45 <= int(alive_out.sum()) <= 55,
                     "w_out_dense": dense_fraction >= 0.9},
    }
    md = "\n".join([
        "# SPD on the compressed-computation residual MLP (accelerator run)", "",
        f"Device {device}; {args.steps} SPD steps ({spd_seconds:.0f} s), target trained in {target_seconds:.0f} s.", "",
        f"- W_in one-hot importances: Hungarian identity test {'passed' if hung_in.passed else 'failed'} "
        f"({hung_in.errors} entries off by more than 0.1)",
        f"- W_out: {int(alive_out.sum())} alive subcomponents; fraction of (input, alive piece) pairs with importance "
        f"> 0.5: {dense_fraction:.3f}",
        f"- alive per layer: {alive}; CI-L0: {payload['ci_l0']}",
        f"- expected outcome met: {payload['expected']}",
    ]) + "\n"
    write_results(args.out, payload, md)
    print(md)


if __name__ == "__main__":
    main()
