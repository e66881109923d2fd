"""Benchmark: the scaling-law fitter, 20 points + 50 bootstrap refits (issue 15; target < 5 s on 2 idle cores).

The sweep: Epoch's law (Besiroglu et al. 2024) at 5 model sizes (10**7.5 to 10**9.5 parameters)
times 4 token counts (10**9.5 to 10**11), each loss multiplied by exp(0.005 z), z standard normal
(seeded). ``fit(points, n_bootstrap=50)`` with its defaults (32 grid starts refined, cases
bootstrap), timed ``--repeats`` times (median), plus the same for the 9-point 3 x 3 grid of a
small classifier (the degenerate case of issue 19). Also records the counts that do not depend on
the machine's load: starts, refits, and whether the fit is at a stationary point.

Run: ``flock /tmp/wdecomp-bench.lock python benchmarks/bench_scaling_fit.py`` (``--repeats 5``,
``--quick`` for a smoke run with 5 refits). Results: ``benchmarks/results/scaling_fit.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from common import machine, write_results  # noqa: E402

from wdecomp.scaling import EPOCH, ChinchillaLaw, fit  # noqa: E402


def sweep(law: ChinchillaLaw, n: np.ndarray, d: np.ndarray, noise: float, seed: int) -> np.ndarray:
    nn, dd = (a.ravel() for a in np.meshgrid(n, d))
    loss = law.loss(nn, dd) * np.exp(noise * np.random.default_rng(seed).standard_normal(nn.shape))
    return np.column_stack([nn, dd, loss])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 refits, 1 repeat, results not written")
    args = ap.parse_args()
    refits = 5 if args.quick else 50
    repeats = 1 if args.quick else args.repeats
    warnings.simplefilter("ignore")
    cases = {
        "epoch 5x4, 0.5% noise": sweep(EPOCH, np.logspace(7.5, 9.5, 5), np.logspace(9.5, 11, 4), 0.005, 1),
        "classifier 3x3, 2% noise": sweep(ChinchillaLaw(E=0.02, A=40.0, B=30.0, alpha=0.5, beta=0.45),
                                          np.array([2.5e3, 9.8e3, 4e4]), np.array([4e5, 1.2e6, 3.6e6]), 0.02, 0),
    }
    rows = []
    for name, pts in cases.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = fit(pts, n_bootstrap=refits)
            times.append(time.perf_counter() - t0)
        rows.append({"case": name, "points": len(pts), "refits": refits, "starts": res.n_starts,
                     "median_s": statistics.median(times), "times_s": times, "converged": res.converged,
                     "degenerate": res.degenerate})
        print(f"{name}: {len(pts)} points, {refits} refits: median {statistics.median(times):.2f} s "
              f"(runs {', '.join(f'{t:.2f}' for t in times)}), converged={res.converged}, "
              f"degenerate={res.degenerate}")
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    print(f"load average {load[0]:.1f} (the target assumes 2 idle cores)")
    if args.quick:
        return
    md = ["# Scaling-law fit timing", "", f"Load average at the run: {load[0]:.1f} ({machine()['cores']} cores).", "",
          "| case | points | refits | starts | median s | converged | degenerate |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['case']} | {r['points']} | {r['refits']} | {r['starts']} | {r['median_s']:.2f} | {r['converged']} "
           f"| {r['degenerate']} |" for r in rows]
    write_results("scaling_fit", {"machine": machine(), "load": load, "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
