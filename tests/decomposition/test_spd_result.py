"""SPDResult as a component model (ablation), its files, checkpoints, metrics and plots."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wdecomp.ablation import ablate, ablation_sweep
from wdecomp.decomposition import SPDResult, hungarian_identity, load_spd, mmcs_ml2r, spd
from wdecomp.decomposition.plot import plot_importance_matrix, plot_norms, plot_training
from wdecomp.errors import ModelMismatchError
from wdecomp.models.spd_targets import TMS, sparse_features
from wdecomp.scaling import ComputeLaw, compute_equivalent

DT = torch.float64


def _tms() -> nn.Module:
    torch.manual_seed(0)
    m = TMS(5, 2).to(DT).eval()
    with torch.no_grad():
        m.linear2.bias.fill_(-0.1)
    return m


def _sample(b: int, g: torch.Generator) -> torch.Tensor:
    return sparse_features(b, 5, 0.2, g).to(DT)


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x = _sample(64, torch.Generator().manual_seed(7))
    return [(x, x)]


@pytest.fixture(scope="module")
def result() -> SPDResult:
    return spd(_tms(), _sample, modules=["linear1", "linear2"], C=4, steps=3, batch_size=32, gate_hidden=3,
               init="svd", progress=False)


def test_tied_pair_is_one_weight_group_and_removal_matches_manual_weights(result: SPDResult) -> None:
    model = result.model
    (group,) = result.groups
    assert group.label == "linear1+linear2" and group.parameter == "linear1.weight" and not group.transposed
    assert result.size == 4 and result.importance.shape == (4,)
    W = model.linear1.weight.detach().clone()
    U, V = result.factors("linear1")
    cut = group.remove({"linear1.weight": W}, torch.tensor([0, 2]))["linear1.weight"]
    assert torch.allclose(cut, W - U[:, [0, 2]] @ V[[0, 2]], atol=1e-14)
    data = _data()
    got = ablate(model, result, [0, 2], data=data, loss="mse")
    manual = TMS(5, 2).to(DT).eval()
    with torch.no_grad():
        manual.linear1.weight.copy_(cut)
        manual.linear2.bias.copy_(model.linear2.bias)
    x = data[0][0]
    with torch.no_grad():
        expect = float(((manual(x) - x) ** 2).mean())
    assert got.levels[-1].loss == pytest.approx(expect, rel=1e-10)
    sweep = ablation_sweep(model, result, data, k=[0, 4], loss="mse")
    assert sweep.levels[0].loss == pytest.approx(float(((model(x) - x) ** 2).mean()), rel=1e-12)


def test_save_load_round_trip_and_mismatch(result: SPDResult, tmp_path) -> None:  # noqa: ANN001
    path = result.save(tmp_path / "spd.safetensors")
    back = load_spd(path, result.model)
    for n in result.layers:
        for a, b in zip(result.factors(n), back.factors(n)):
            assert torch.equal(a, b)
    x = _data()[0][0]
    assert torch.equal(back.importances(x)["linear2"], result.importances(x)["linear2"])
    assert back.history == result.history and back.tied == {"linear2": "linear1"}
    assert torch.equal(SPDResult.load(path, result.model).mean_importance["linear1"], result.mean_importance["linear1"])
    with pytest.raises(ModelMismatchError):
        load_spd(path, TMS(6, 2).to(DT))


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path) -> None:  # noqa: ANN001
    kw = dict(modules=["linear1", "linear2"], C=4, batch_size=16, gate_hidden=3, lr_schedule="constant",
              progress=False)
    full = spd(_tms(), _sample, steps=6, **kw)
    ckpt = tmp_path / "run.safetensors"
    spd(_tms(), _sample, steps=3, checkpoint=ckpt, **kw)
    resumed = spd(_tms(), _sample, steps=6, checkpoint=ckpt, **kw)
    assert resumed.info["resumed_from"] == 3
    assert resumed.history["total"] == full.history["total"]
    assert torch.equal(resumed.factors("linear1")[0], full.factors("linear1")[0])


def test_masking_report_columns(result: SPDResult) -> None:
    data = _data()
    law = ComputeLaw(E=0.0, A=1.0, alpha=0.5)
    rep = result.masking_report(data, law=law)
    rows = {r["mode"]: r for r in rep.rows}
    x = data[0][0]
    assert rep.target_loss == pytest.approx(float(((result.model(x) - x) ** 2).mean()), rel=1e-12)
    assert rows["zero"]["recovered"] == pytest.approx(0.0, abs=1e-12)
    # svd init and three small steps: the unmasked pieces are still almost the target
    assert rows["unmasked"]["divergence"] < 1e-4
    zero = rows["zero"]["loss"]
    for r in rep.rows:
        want = 1 - (r["loss"] - rep.target_loss) / (zero - rep.target_loss)
        assert r["recovered"] == pytest.approx(want, rel=1e-12)
        assert r["compute_equivalent"] == pytest.approx(compute_equivalent(r["loss"], rep.target_loss, law).fraction)
    assert math.isnan(result.masking_report(data).rows[0]["compute_equivalent"])
    assert "recovered" in str(rep)


def test_mmcs_ml2r_perfect_and_svd_control() -> None:
    angles = torch.arange(5, dtype=DT) * 2 * math.pi / 5
    W = torch.stack([torch.cos(angles), torch.sin(angles)]) * 1.2  # pentagon, (2, 5)
    perfect = mmcs_ml2r(W, torch.cat([W, torch.zeros(2, 3, dtype=DT)], 1), torch.eye(8, 5, dtype=DT))
    assert perfect.mmcs == pytest.approx(1.0) and perfect.ml2r == pytest.approx(1.0)
    Us, s, Vh = torch.linalg.svd(W, full_matrices=False)
    svd = mmcs_ml2r(W, Us * s, Vh)
    assert svd.mmcs < 0.99  # the negative control: singular directions are not the features
    half = mmcs_ml2r(W, torch.cat([W, W], 1) / 2, torch.cat([torch.eye(5, dtype=DT)] * 2))
    assert half.mmcs == pytest.approx(1.0) and half.ml2r == pytest.approx(0.5)  # a split feature shows in ML2R


def test_hungarian_identity_cases() -> None:
    eye = torch.eye(4, 6, dtype=DT)
    perm = eye[:, torch.tensor([3, 0, 5, 1, 2, 4])]
    ok = hungarian_identity(perm + 0.05)
    assert ok.passed and ok.errors == 0 and ok.matched == (1, 3, 4, 0)
    split = perm.clone()
    split[0, 2] = 0.6  # input 0 also needs a second subcomponent
    bad = hungarian_identity(split)
    assert bad.passed and bad.errors == 1  # one error is allowed
    two = split.clone()
    two[1, 2] = 0.5
    assert not hungarian_identity(two).passed and hungarian_identity(two).errors == 2
    weak = perm * 0.7  # importances that never reach 1 (collapse)
    assert hungarian_identity(weak).errors == 4


def test_plots_write_files(result: SPDResult, tmp_path) -> None:  # noqa: ANN001
    for fn, name in ((plot_importance_matrix, "imp.png"), (plot_norms, "norms.png"), (plot_training, "train.png")):
        path = fn(result, tmp_path / name)
        assert path.exists() and path.stat().st_size > 1000
