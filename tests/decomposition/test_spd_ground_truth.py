"""SPD on TMS 5-2: a shortened run recovers the ground truth; the negative controls fail the checks.

The full settings (3 seeds, TMS 5-2 and 5-2+ID, 8000 steps of 1024) are in ``benchmarks/bench_spd.py``
(results in ``benchmarks/results/spd.md``); here one seed, ``STEPS`` steps of ``BATCH`` examples after a
200-step faithfulness warm-up, so the file stays near a minute on one core.
"""

from __future__ import annotations

import pytest
import torch

from wdecomp.decomposition import PAPER_SETTINGS, SPDModel, mmcs_ml2r, spd
from wdecomp.models.spd_targets import tms

STEPS, BATCH, LR = 2000, 256, 1e-2
pytestmark = pytest.mark.slow  # about 30 CPU seconds in all


@pytest.fixture(scope="module")
def bundle():
    return tms(5, 2, steps=3000, progress=False)


def _eval(bundle) -> list:
    g = torch.Generator().manual_seed(99)
    return [(x, x) for x in (bundle.extra["sample"](2048, g) for _ in range(2))]


def _run(bundle, **kw):
    settings = dict(steps=STEPS, batch_size=BATCH, lr=LR, faithfulness_warmup_steps=200, progress=False)
    settings.update(kw)
    return spd(bundle.model, bundle.extra["sample"], modules=["linear1", "linear2"], config=PAPER_SETTINGS["tms_5_2"],
               **settings)


def test_target_is_a_pentagon(bundle) -> None:
    norms = bundle.model.linear1.weight.detach().norm(dim=0)
    assert float(norms.min()) > 0.8 and float(norms.max() / norms.min()) < 1.2


def test_shortened_tms_5_2_recovers_the_ground_truth(bundle) -> None:
    res = _run(bundle)
    gt = res.ground_truth("linear1")
    assert gt.mmcs >= 0.99
    assert 0.95 <= gt.ml2r <= 1.05
    alive = res.alive(_eval(bundle))
    assert int((alive["linear1"] | alive["linear2"]).sum()) == 5
    assert res.hungarian("linear1").passed
    assert res.history["faithfulness"][-1] < 1e-4


def test_svd_of_the_layer_is_not_the_ground_truth(bundle) -> None:
    W = bundle.model.linear1.weight.detach()
    sm = SPDModel(["linear1"], {"linear1": tuple(W.shape)}, 20)
    sm.init_svd({"linear1": W})
    assert torch.allclose(sm.weight("linear1"), W, atol=1e-5)
    assert mmcs_ml2r(W, *(t.detach() for t in sm.factors("linear1"))).mmcs < 0.99


def test_coefficient_100x_collapses(bundle) -> None:
    res = _run(bundle, steps=600, importance_coeff=100 * PAPER_SETTINGS["tms_5_2"].importance_coeff)
    top = max(float(v.max()) for v in res.max_importances(_eval(bundle)).values())
    assert top < 0.9  # collapse: no importance reaches 0.9
    assert not res.hungarian("linear1").passed


def test_coefficient_zero_keeps_about_C_alive(bundle) -> None:
    res = _run(bundle, steps=600, importance_coeff=0.0)
    alive = res.alive(_eval(bundle))
    assert int(alive["linear1"].sum()) >= 15  # of C = 20
    assert not res.hungarian("linear1").passed
