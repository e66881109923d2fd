"""Interleaved A/B timing of two revisions of wdecomp on the same models: no slowdown beyond noise.

The architecture issue's must-hold: after a redesign, products and the eigensolver must not be
slower than before beyond noise. Timing two revisions in separate runs mixes the change with the
machine's drift, so this script checks the base revision out into a temporary ``git worktree`` and
alternates fresh subprocesses of the two revisions (A B A B ...), each timing the same operations on
the same seeded models with one torch thread:

* ``gradient``: ``Objective.gradient`` (the loss gradient over the data);
* ``hvp``: one cached Hessian-vector product (operator built once, graph warmed);
* ``hvp16``: a block of 16 Hessian-vector products, per vector;
* ``eigh20``: ``wd.eigh(H, k=20, tol=1e-4)`` from a cold operator, with its product count (every
  module is imported by a tiny warm-up call first: ``import wdecomp`` is lazy in newer revisions).

Each subprocess reports the median of ``--reps`` repetitions per operation; the result is the
median over ``--rounds`` rounds of the per-round ratio new/base (ratios of interleaved neighbours
cancel slow drift) with the interquartile range, written to ``results/revisions.{json,md}``.

Usage: ``python benchmarks/bench_revisions.py --base c969c46 [--rounds 5] [--reps 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# Runs inside a subprocess with the revision under test first on sys.path; prints one JSON line.
WORKER = r"""
import json, statistics, sys, time
import torch
from torch import nn
torch.set_num_threads(1)
import wdecomp as wd

def timed(fn, reps):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); out.append(time.perf_counter() - t0)
    return statistics.median(out)

def models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10)).eval()
    yield "mlp_85k", mlp, [(torch.randn(512, 64), torch.randint(0, 10, (512,)))]
    torch.manual_seed(1)
    d, v, t = 64, 32, 16
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(v, d)
            self.ln = nn.LayerNorm(d)
            self.att = nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
            self.out = nn.Linear(d, v)
        def forward(self, x):
            h = self.emb(x)
            h = h + self.att(self.ln(h)).cumsum(1) / torch.arange(1, x.shape[1] + 1)[None, :, None]
            h = h + self.mlp(self.ln(h))
            return self.out(h).reshape(-1, v)
    tok = torch.randint(0, v, (32, t + 1))
    yield "transformer_50k", Tiny().eval(), [(tok[:, :-1], tok[:, 1:].reshape(-1))]

reps = int(sys.argv[1])
# import everything a call will need before any clock starts (a lazy `import wdecomp` would otherwise
# charge its first eigh with the imports)
wd.eigh(wd.hessian(wd.Objective(nn.Linear(3, 2), [(torch.randn(4, 3), torch.randint(0, 2, (4,)))])), k=1)
res = {}
for name, model, data in models():
    obj = wd.Objective(model, data)
    H = wd.hessian(obj)
    p = H.shape[0]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(p, generator=g)
    V = torch.randn(p, 16, generator=g)
    H @ v  # build the cached graph
    r = {"p": p}
    r["gradient"] = timed(lambda: obj.gradient(), reps)
    r["hvp"] = timed(lambda: H @ v, reps)
    r["hvp16"] = timed(lambda: H.matmat(V), reps) / 16
    def eig():
        op = wd.hessian(wd.Objective(model, data))
        r["eigh20_products"] = int(wd.eigh(op, k=20, tol=1e-4).matvecs)
    r["eigh20"] = timed(eig, max(1, reps // 2))
    res[name] = r
print(json.dumps(res))
"""


def run_worker(tree: Path, reps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "WDECOMP_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", WORKER, str(reps)], env=env, capture_output=True, text=True,
                         cwd=tree, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare against (e.g. c969c46)")
    ap.add_argument("--rounds", type=int, default=5, help="A/B rounds (default 5)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per operation per subprocess (default 5)")
    ap.add_argument("--out", default=str(RESULTS / "revisions"), help="output path without suffix")
    args = ap.parse_args()
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="wdecomp-base-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True,
                       capture_output=True)
        try:
            rounds = []
            for i in range(args.rounds):
                a = run_worker(base, args.reps)
                b = run_worker(ROOT, args.reps)
                rounds.append({"base": a, "new": b})
                print(f"round {i + 1}/{args.rounds} done ({time.time() - start:.0f} s)", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False,
                           capture_output=True)
    summary = {}
    for model in rounds[0]["base"]:
        summary[model] = {"p": rounds[0]["new"][model]["p"]}
        for op in ("gradient", "hvp", "hvp16", "eigh20"):
            ratios = sorted(r["new"][model][op] / r["base"][model][op] for r in rounds)
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
            summary[model][op] = {
                "ratio_new_over_base": statistics.median(ratios), "q25": q[0], "q75": q[2],
                "base_s": statistics.median(r["base"][model][op] for r in rounds),
                "new_s": statistics.median(r["new"][model][op] for r in rounds),
            }
        summary[model]["eigh20_products"] = {
            "base": rounds[0]["base"][model]["eigh20_products"], "new": rounds[0]["new"][model]["eigh20_products"]}
    load = os.getloadavg()
    record = {"base": args.base, "rounds": args.rounds, "reps": args.reps, "loadavg": load, "summary": summary,
              "raw": rounds}
    Path(args.out + ".json").write_text(json.dumps(record, indent=1))
    lines = [f"# Revision A/B: this tree vs `{args.base}` (interleaved, {args.rounds} rounds x {args.reps} reps, "
             f"1 thread, load average at the end {load[0]:.1f})", "",
             "Ratio = new / base time (median over rounds; below 1 is faster). Products per eigh call shown.", "",
             "| model | p | operation | base (ms) | new (ms) | ratio | IQR |", "|---|---|---|---|---|---|---|"]
    for model, s in summary.items():
        for op in ("gradient", "hvp", "hvp16", "eigh20"):
            o = s[op]
            lines.append(f"| {model} | {s['p']} | {op} | {1e3 * o['base_s']:.2f} | {1e3 * o['new_s']:.2f} | "
                         f"{o['ratio_new_over_base']:.2f} | {o['q25']:.2f}-{o['q75']:.2f} |")
        lines.append(f"| {model} | {s['p']} | eigh20 products | {s['eigh20_products']['base']} | "
                     f"{s['eigh20_products']['new']} | | |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
