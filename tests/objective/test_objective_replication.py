"""Distributed objectives check that every rank holds the same weights, automatically and NaN-safely.

Two gloo processes on loopback (one launch for every case): a NaN on one rank, weights that differ
from the start, and weights that drift apart after the objective was built are each refused on
every rank with a message naming the ranks; identical weights pass.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import wdecomp as wd
from wdecomp import distributed as wdist
from wdecomp.distributed import DistributedError

pytestmark = pytest.mark.slow  # one 2-process launch (about 12 s of CPU)


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _outcome(fn) -> str:
    try:
        fn()
    except DistributedError as err:
        return str(err)
    return "ok"


def _worker(rank: int, world_size: int) -> dict:
    gen = torch.Generator().manual_seed(rank)
    data = (torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randint(0, 2, (5,), generator=gen))
    out = {}
    model = _model()
    out["same"] = _outcome(lambda: wdist.check_replicated(model))
    out["same_tolerant"] = _outcome(lambda: wdist.check_replicated(model, atol=1e-12))
    nan = _model()
    if rank == 1:
        with torch.no_grad():
            nan[0].weight[0, 0] = float("nan")
    out["nan_exact"] = _outcome(lambda: wdist.check_replicated(nan))
    out["nan_tolerant"] = _outcome(lambda: wdist.check_replicated(nan, atol=1.0))
    differ = _model()
    with torch.no_grad():
        differ[2].bias[0] += 1e-12 * rank  # one ulp-scale difference on rank 1
    out["built_differing"] = _outcome(lambda: wd.Objective(differ, data, distributed=True))
    obj = wd.Objective(model, data, distributed=True)
    H = wd.hessian(obj)
    v = torch.ones(H.shape[0], dtype=torch.float64)
    out["product_before"] = _outcome(lambda: H @ v)
    with torch.no_grad():
        model[0].bias[1] += float(rank)  # only rank 1 moves: the next product must refuse
    out["product_after_drift"] = _outcome(lambda: H @ v)
    out["gradient_after_drift"] = _outcome(lambda: obj.gradient())
    return out


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return wdist.launch(_worker, 2, timeout_s=180, pg_timeout_s=60)


def test_identical_weights_pass(results):
    for r in results:
        assert r["same"] == "ok" and r["same_tolerant"] == "ok" and r["product_before"] == "ok"


@pytest.mark.refuses(
    "a NaN weight on one rank of a distributed run",
    "every rank must hold the same finite weights; the message names the ranks with NaN",
)
def test_a_nan_on_one_rank_is_refused_on_every_rank(results):
    for r in results:
        for key in ("nan_exact", "nan_tolerant"):
            assert "ranks [1] hold other values than rank 0" in r[key]
            assert "ranks [1] hold NaN or inf" in r[key]


@pytest.mark.refuses(
    "ranks holding different weights in a distributed objective",
    "checked when the objective is built and before every reduction; load the same weights on every rank",
)
def test_differing_weights_are_refused_when_built_and_at_every_reduction(results):
    for r in results:
        assert "ranks [1] hold other values than rank 0" in r["built_differing"]
        assert "ranks [1] hold other values than rank 0" in r["product_after_drift"]
        assert "ranks [1] hold other values than rank 0" in r["gradient_after_drift"]
