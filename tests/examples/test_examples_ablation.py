"""The ablation examples run (``--fast``) and their numbers hang together."""

from __future__ import annotations

import json

import pytest
from _examples import load_example


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation_examples")
    study = load_example("ablation_study").main(["--fast", "--out", str(out)])
    spliced = load_example("splice_sae").main(["--fast", "--out", str(out)])
    return out, study, spliced


def test_ablation_study_outputs(outputs):
    out, study, _ = outputs
    for name in ("ablation.json", "ablation.csv", "ablation.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "ablation.json").read_text()) == study
    levels = study["levels"]
    assert levels[0]["n_ablated"] == 0 and levels[0]["loss"] == study["original"]["loss"]
    assert levels[0]["kl"] == 0.0
    # mean-ablating every PCA direction sets the hook to its mean: the mean baseline
    assert levels[-1]["loss"] == pytest.approx(study["mean_baseline"]["loss"], abs=1e-9)
    # removing the low-variance directions hurts less than the whole hook
    assert study["original"]["loss"] < levels[1]["loss"] < study["mean_baseline"]["loss"]


def test_splice_outputs_agree_with_the_ablation(outputs):
    out, study, spliced = outputs
    rows = {r["label"]: r for r in spliced["levels"]}
    assert rows["identity"]["loss"] == spliced["original"]["loss"] and rows["identity"]["kl"] == 0.0
    # rank-32 PCA projection == mean-ablating the 32 least important PCA directions (E[c] = 0)
    half = next(lv for lv in study["levels"] if lv["n_ablated"] == 32)
    assert rows["pca r=32"]["loss"] == pytest.approx(half["loss"], abs=1e-9)
    assert rows["pca r=8"]["loss"] > rows["pca r=16"]["loss"] > rows["pca r=32"]["loss"]
    assert (out / "splice.png").stat().st_size > 0


def test_compute_equivalent_columns_read_the_law(outputs):
    """k = 0 is exactly 1; more damage is less compute; the columns equal the law's own inverse."""
    from wdecomp.scaling import ChinchillaLaw, compute_equivalent

    _, study, spliced = outputs
    levels = study["levels"]
    assert levels[0]["compute_equivalent"] == 1.0 and levels[0]["parameter_equivalent"] == 1.0
    ce = [lv["compute_equivalent"] for lv in levels]
    losses = [lv["loss"] for lv in levels]
    for (l1, c1), (l2, c2) in zip(zip(losses, ce), zip(losses[1:], ce[1:])):
        assert (l2 > l1) == (c2 < c1)
    ref = study["original"]["loss"]
    law = ChinchillaLaw(E=0.5 * ref, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    assert levels[-1]["compute_equivalent"] == pytest.approx(float(compute_equivalent(losses[-1], ref, law)),
                                                             rel=1e-12)
    rows = {r["label"]: r for r in spliced["levels"]}
    assert rows["identity"]["compute_equivalent"] == 1.0
    assert rows["pca r=8"]["compute_equivalent"] < rows["pca r=32"]["compute_equivalent"] < 1.0
