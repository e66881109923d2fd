"""Pruning semantics and summaries of interaction graphs, on graphs built from known matrices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wdecomp.graph import InteractionGraph


def small() -> InteractionGraph:
    # layer a (3 nodes) -> b (2 nodes) -> c (2 nodes); rows = later nodes, columns = earlier nodes
    A1 = np.array([[6.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    A2 = np.array([[4.0, 0.0], [0.0, 0.0]])
    return InteractionGraph.from_attributions(["a", "b", "c"], [A1, A2], eigenvalues=[[3, 2, 1], [5, 4], [1, 1]],
                                              info={"method": "jacobian"})


def edges(g: InteractionGraph) -> set[tuple[str, str]]:
    return set(g.nx.edges)


def test_from_attributions_layout():
    g = small()
    assert g.nx.number_of_nodes() == 7 and g.nx.number_of_edges() == 6 + 4
    assert g.nx.edges["L0_1", "L1_0"]["attribution"] == 3.0
    assert g.pair_totals == (10.0, 4.0) and g.layer_sizes == (3, 2, 2) and g.pair_edges == (6, 4)
    np.testing.assert_array_equal(g.attribution_matrix("b"), [[4.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError):
        InteractionGraph.from_attributions(["a", "b"], [np.ones((2, 3)), np.ones((2, 2))])


def test_threshold_fraction_topk():
    g = small()
    assert edges(g.prune(threshold=0.0)) == {("L0_0", "L1_0"), ("L0_1", "L1_0"), ("L0_2", "L1_1"), ("L1_0", "L2_0")}
    # 60% of pair 0 (total 10) needs the 6-edge only; 100% of pair 1 needs the 4-edge
    assert edges(g.prune(fraction=0.6)) == {("L0_0", "L1_0"), ("L1_0", "L2_0")}
    assert edges(g.prune(fraction=0.61)) == {("L0_0", "L1_0"), ("L0_1", "L1_0"), ("L1_0", "L2_0")}
    assert edges(g.prune(fraction=1.0)) == edges(g.prune(threshold=0.0))
    assert edges(g.prune(fraction=0.0)) == set()
    assert edges(g.prune(top_k_in=1, threshold=0)) == {("L0_0", "L1_0"), ("L0_2", "L1_1"), ("L1_0", "L2_0")}
    assert edges(g.prune(top_k_out=1, threshold=0)) == {("L0_0", "L1_0"), ("L0_1", "L1_0"), ("L0_2", "L1_1"),
                                                       ("L1_0", "L2_0")}
    # isolated nodes dropped unless asked to keep them
    p = g.prune(threshold=0.0)
    assert set(p.nx.nodes) == {"L0_0", "L0_1", "L0_2", "L1_0", "L1_1", "L2_0"}
    assert g.prune(threshold=0.0, drop_isolated=False).nx.number_of_nodes() == 7
    assert p.info["pruning"] == [{"threshold": 0.0, "drop_isolated": True}]
    with pytest.raises(ValueError):
        g.prune(fraction=1.5)


def test_summary_numbers():
    g = small()
    s = g.prune(fraction=0.6).summary()
    assert (s.nodes, s.nodes_total, s.edges, s.edges_total) == (3, 7, 2, 10)
    assert s.attribution_kept == pytest.approx(10 / 14)
    assert s.edges_kept == pytest.approx(0.2)
    assert [(p.edges, p.possible_edges, p.attribution_kept) for p in s.pairs] == [(1, 6, 0.6), (1, 4, 1.0)]
    assert s.pairs[0].density == pytest.approx(1 / 6)
    assert s.weakly_connected == 1 and s.component_sizes == (3,) and s.strongly_connected == 3
    full = g.prune(threshold=0.0).summary()
    assert full.weakly_connected == 2 and full.component_sizes == (4, 2)
    assert sorted(map(len, full.communities)) == [2, 4] or len(full.communities) >= 2
    assert full.modularity is not None and full.modularity > 0
    d = json.loads(json.dumps(full.to_dict()))
    assert d["edges"] == 4 and d["pairs"][0]["source"] == "a"
    text = str(full)
    assert "weakly connected components: 2" in text and "source" in text and "100.00%" in text


def test_summary_of_an_edgeless_graph():
    g = InteractionGraph.from_attributions(["a", "b"], [np.zeros((2, 2))])
    s = g.summary()
    # zero-attribution edges still join nodes until pruned; without weight, communities = components
    assert s.modularity is None and len(s.communities) == 1 and s.attribution_kept == 1.0
    assert g.prune(threshold=0).nx.number_of_nodes() == 0


matrices = st.integers(1, 4).flatmap(
    lambda k0: st.lists(st.integers(1, 4), min_size=1, max_size=3).flatmap(
        lambda ks: st.tuples(*[
            st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 3.25, 7.0]), min_size=a * b, max_size=a * b).map(
                lambda v, a=a, b=b: np.array(v).reshape(b, a))
            for a, b in zip([k0, *ks[:-1]], ks)
        ])
    )
)


@settings(max_examples=60, deadline=None)
@given(mats=matrices, f=st.tuples(st.floats(0, 1), st.floats(0, 1)), k=st.tuples(st.integers(0, 5), st.integers(0, 5)),
       t=st.tuples(st.floats(0, 8), st.floats(0, 8)), drop=st.booleans())
def test_pruning_is_monotone(mats, f, k, t, drop):
    g = InteractionGraph.from_attributions([f"l{i}" for i in range(len(mats) + 1)], list(mats))
    f_lo, f_hi = sorted(f)
    k_lo, k_hi = sorted(k)
    t_lo, t_hi = sorted(t)
    strict = [dict(fraction=f_lo), dict(top_k_in=k_lo), dict(top_k_out=k_lo), dict(threshold=t_hi),
              dict(fraction=f_lo, top_k_in=k_lo, top_k_out=k_lo, threshold=t_hi)]
    loose = [dict(fraction=f_hi), dict(top_k_in=k_hi), dict(top_k_out=k_hi), dict(threshold=t_lo),
             dict(fraction=f_hi, top_k_in=k_hi, top_k_out=k_hi, threshold=t_lo)]
    for s, lo in zip(strict, loose):
        a, b = g.prune(drop_isolated=drop, **s), g.prune(drop_isolated=drop, **lo)
        assert edges(a) <= edges(b)
        assert set(a.nx.nodes) <= set(b.nx.nodes)
        assert a.summary(communities=False).attribution_kept <= b.summary(communities=False).attribution_kept + 1e-12
    # the fraction criterion keeps at least the requested share of each pair
    kept = g.prune(fraction=f_hi)
    for li, total in enumerate(g.pair_totals):
        assert kept.attribution_matrix(li).sum() >= f_hi * total - 1e-9
    # pruning a pruned graph never adds edges
    twice = g.prune(fraction=f_hi).prune(top_k_in=k_hi)
    assert edges(twice) <= edges(g.prune(fraction=f_hi))
