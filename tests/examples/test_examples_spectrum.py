"""The curvature example on real digits, in fast mode: its numbers, not just that it ran."""

from __future__ import annotations

import torch
from _examples import load_example


def test_hessian_spectrum_example(tmp_path):
    res = load_example("hessian_spectrum").run(fast=True, out=tmp_path)
    eig = res["eigen"]
    assert bool(eig.converged.all())
    assert float(eig.relative_residuals.max()) < 1e-6
    assert bool((eig.eigenvalues[:-1] >= eig.eigenvalues[1:]).all())
    # Hutch++ with 90 products on a p ~ 1.2k operator: within 10% of the exact trace
    assert abs(float(res["trace"].estimate) - res["exact_trace"]) < 0.1 * abs(res["exact_trace"])
    # a trained classifier's GGN is degenerate: rank <= examples x (classes - 1) and < p
    r = res["ggn_rank"]
    assert 0 < r.rank < res["params"]
    assert r.rank + r.nullity == res["params"]
    boot = res["bootstrap"]
    assert float(boot.low[0]) <= float(boot.estimate[0]) * 1.5
    assert res["density_png"].stat().st_size > 5000
    assert abs(res["density"].integral() - 1) < 1e-3
    assert res["test_accuracy"] > 0.8
    assert torch.isfinite(eig.eigenvalues).all()
