"""Edge ablation (rib's ablate_edges_and_eval) and Louvain modules of the pruned graph."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _rib_reference import DT
from torch import nn

from wdecomp import hooks
from wdecomp.ablation.edges import _PairEval, edge_ablation, edge_mask
from wdecomp.bases import interaction_basis
from wdecomp.bases.section import build_section
from wdecomp.errors import DataError
from wdecomp.graph import find_modules, interaction_graph
from wdecomp.objective import resolve_loss


def _setup(n: int = 48):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3)).to(DT).eval()
    with torch.no_grad():  # sharper, so that a few edges matter
        m[0].weight.mul_(2)
        m[2].weight.mul_(3)
    x = torch.randn(n, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    y = m(x).argmax(-1).detach()
    basis = interaction_basis(m, x, ["1", "3", "4"])
    return m, x, y, basis


def test_all_edges_kept_is_the_original_and_none_kept_is_ribs_baseline():
    m, x, y, basis = _setup()
    res = edge_ablation(m, (x, y), basis, tolerance=0.02, curve_points=0)
    original = float(F.cross_entropy(m(x), y).detach())
    assert res.original_loss == pytest.approx(original, rel=1e-12)
    for pair in res.pairs:
        top = pair.curve[0]
        assert top.n_kept == pair.total_edges and top.loss == res.original_loss  # exactly (no edit)
    # through the edge machinery with every edge kept: the same loss to 1e-10
    sec = build_section(m, x[:1], "1", "3", constant=True)
    ev = _PairEval(m, basis["1"], basis["3"], sec, sec.target_axis, resolve_loss("cross_entropy"))
    full = np.ones((basis["3"].size, basis["1"].size), dtype=bool)
    assert abs(ev.score([(x, y)], full, all_kept=False)[0] - original) < 1e-10
    # none kept, pair 1 -> 3: layer 3 becomes sigmoid(W2 0 + 0 b2) = 1/2 at s = 0, through the basis
    lb = basis["3"]
    half = torch.full((5,), 0.5, dtype=DT)
    f3 = (lb.inverse @ (lb.transform @ half)).expand(len(x), 5)  # C^+ C (1/2 - mu 0) + mu 0
    direct = float(F.cross_entropy(hooks.run(m, x, write={"3": f3})[0], y).detach())
    assert res.pairs[0].curve[-1].n_kept == 0 and abs(res.pairs[0].curve[-1].loss - direct) < 1e-10
    # none kept, pair 3 -> 4: the logits are W4 0 + 0 b4 = 0, so the loss is log 3
    assert abs(res.pairs[1].curve[-1].loss - math.log(3)) < 1e-12


def test_bisection_finds_the_fewest_edges():
    m, x, y, basis = _setup()
    res = edge_ablation(m, (x, y), basis, metric="loss", tolerance=0.01, curve_points=4)
    for pair in res.pairs:
        assert pair.met and 0 < pair.edges_needed <= pair.total_edges
        by_n = {c.n_kept: c for c in pair.curve}
        assert by_n[pair.edges_needed].loss <= res.original_loss + 0.01
        assert by_n[pair.edges_needed - 1].loss > res.original_loss + 0.01
        print(f"{pair.source}->{pair.target}: {pair.edges_needed} of {pair.total_edges} edges")
    assert "edges needed" in str(res)


def test_edge_mask_counts_and_constant_edges():
    w = np.array([[3.0, 1.0, 2.0], [0.5, 4.0, 4.0]])
    assert edge_mask(w, 2).sum() == 2 and edge_mask(w, 2)[1, 1] and edge_mask(w, 2)[1, 2]
    kept = edge_mask(w, 1, keep_constant=True)
    assert kept[:, 0].all() and kept[:, 1:].sum() == 1


@pytest.mark.refuses("edge ablation tolerance below 0", "no edge count can meet it (all edges give the "
                     "original score); the result says so and still holds the curve")
def test_unmeetable_tolerance_returns_the_curve():
    m, x, y, basis = _setup(24)
    res = edge_ablation(m, (x, y), basis, tolerance=-0.5, curve_points=3)
    for pair in res.pairs:
        assert not pair.met and pair.edges_needed is None and "tolerance" in pair.note
        assert len(pair.curve) >= 3 and pair.curve[-1].n_kept == 0


@pytest.mark.refuses("edge ablation on data without targets", "a loss needs targets: pass (inputs, targets) batches")
def test_data_without_targets_refused():
    m, x, _, basis = _setup(12)
    with pytest.raises(DataError, match="targets"):
        edge_ablation(m, x, basis)


def test_modules_leave_out_the_constant_and_find_two_blocks(tmp_path):
    """Two independent sub-networks side by side: Louvain finds them, the constant node is left out."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 4)).to(DT).eval()
    with torch.no_grad():
        for layer in (m[0], m[2], m[4]):
            W = layer.weight
            r, c = W.shape[0] // 2, W.shape[1] // 2
            W[:r, c:] = 0
            W[r:, :c] = 0
    g = torch.Generator().manual_seed(4)
    xa, xb = torch.randn(8, 2, generator=g, dtype=DT), torch.randn(8, 2, generator=g, dtype=DT)
    x = torch.cat([xa.repeat_interleave(8, 0), xb.repeat(8, 1)], 1)  # a product set: blocks exactly uncorrelated
    basis = interaction_basis(m, x, ["1", "3", "4"])
    graph = interaction_graph(m, x, basis)
    mods = find_modules(graph, resolutions=(0.5, 1.0))
    assert not any(c for _, c in mods.graph.nx.nodes(data="constant"))
    best = mods.best

    def block(node: str) -> int:  # which sub-network a LIB direction lives in
        li, j = (int(v) for v in node[1:].split("_"))
        row = basis[("1", "3", "4")[li]].transform[j].abs()
        half = row.shape[0] // 2
        assert min(float(row[:half].sum()), float(row[half:].sum())) < 1e-8 * float(row.sum())
        return int(float(row[half:].sum()) > float(row[:half].sum()))

    big = [mod for mod in best.modules if len(mod) > 1]
    assert len(big) >= 2 and best.modularity > 0.3
    assert all(len({block(n) for n in mod}) == 1 for mod in best.modules)  # no module mixes the two blocks
    mods.plot(tmp_path / "modules.png")
    assert (tmp_path / "modules.png").stat().st_size > 1000
