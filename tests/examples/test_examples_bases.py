"""The bases examples run in fast mode and report what they claim."""

from __future__ import annotations

import math

import pytest
from _examples import load_example


@pytest.mark.slow
def test_toy_superposition_components_fast():
    res = load_example("toy_superposition_components").run(fast=True)
    assert res["rewrite_error"] < 1e-10
    # the rotation of the 2-d hidden space (W -> R W) leaves W^T W unchanged: one null direction
    assert res["behavioural_rank"] == 9
    for rows in list(res["activation_share"].values()) + [res["weight_share"]]:
        for row in rows:
            assert math.isclose(sum(row), 1.0, rel_tol=1e-9)
    assert len(res["activation_share"]["hidden"]) == 2 and len(res["activation_share"]["act"]) == 5


@pytest.mark.slow
def test_modular_addition_fourier_fast():
    res = load_example("modular_addition_fourier").run(fast=True)
    for method in ("lib", "pca", "neuron"):
        r = res[method]
        assert r["rewrite_error"] < 1e-10
        assert all(2 / (res["p"] - 1) - 1e-12 <= c <= 1 + 1e-12 for c in r["concentration"])
    if res["metrics"]["test_accuracy"] == 1.0:  # a generalising network computes with Fourier features
        assert res["lib"]["mean_concentration"] > res["neuron"]["mean_concentration"]
    for method in ("lib", "pca"):
        for groups in res[method]["groups"].values():
            assert sorted(i for g, _ in groups for i in g)[:6] == list(range(6))  # the top 6, in groups
            for g, share in groups:
                assert 0 < share <= 1 + 1e-12
                if len(g) == 1 and g[0] < 6:  # a group of one scores as its direction
                    assert share == pytest.approx(res[method]["concentration"][g[0]], rel=1e-12)
