"""Feature axes (channels of conv outputs; pixels are positions) and memory-aware chunking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wdecomp import hooks
from wdecomp.bases import interaction_basis
from wdecomp.bases.section import from_rows, memory_guard, plan_chunk, to_rows
from wdecomp.errors import DenseTooLargeError
from wdecomp.graph import interaction_graph

DT = torch.float64


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)).to(DT).eval()


def test_conv_basis_is_over_channels_and_rewrites_exactly():
    """The issue's example: a 16-dim channel basis (not image width 8), and an exact rewrite."""
    m = conv_net()
    x = torch.randn(24, 1, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(1))
    basis = interaction_basis(m, [(x, None)], ["1", "3"])
    lb = basis["1"]
    assert lb.dim == 16 and basis.info["feature_axes"]["1"] == 1
    assert interaction_basis(m, [(x, None)], ["1", "3"], feature_dim=-1)["1"].dim == 8  # explicit axis honoured
    ref = m(x)

    def through(f: torch.Tensor) -> torch.Tensor:
        rows = to_rows(f, 1)  # (B, 64 pixels, 16 channels)
        return from_rows(lb.from_coordinates(lb.to_coordinates(rows)), f.shape, 1)

    out, _ = hooks.run(m, x, write={"1": through})
    assert float((out - ref).abs().max().detach()) < 1e-10 * float(ref.abs().max().detach())
    g = interaction_graph(m, x, basis)  # the graph reads the same axis
    assert g.attribution_matrix(0).shape == (10, lb.size)


def test_chunk_from_memory_budget_and_estimate():
    per = 200_000  # bytes of Jacobians per example
    assert plan_chunk(per, None, 2_000_000, "test") == 10  # the old default of 32 would need 6.4 MB
    assert plan_chunk(per, 7, None, "test") == 7
    assert plan_chunk(per, None, 2_000_000, "test", examples=4) == 4  # never more than the batch
    with pytest.raises(DenseTooLargeError, match="max_memory"):
        plan_chunk(per, None, 100_000, "test")


def test_budgeted_graph_equals_unchunked():
    """A transformer-ish sequence model whose Jacobians per example are large: the budget picks a
    small chunk, and the result is the same as one example at a time."""
    torch.manual_seed(2)
    m = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 11)).to(DT).eval()
    t = torch.randint(0, 11, (12, 6), generator=torch.Generator().manual_seed(3))
    basis = interaction_basis(m, t, ["0", "2", "3"], max_memory=2_000_000)
    a = interaction_graph(m, t, basis, max_memory=2_000_000)
    b = interaction_graph(m, t, basis, chunk_size=1)
    for li in range(2):
        assert abs(a.attribution_matrix(li) - b.attribution_matrix(li)).max() < 1e-12 * b.attribution_matrix(li).max()


@pytest.mark.refuses("a Jacobian chunk that runs out of memory", "raised as DenseTooLargeError naming "
                     "chunk_size= / max_memory= (CLI --chunk-size / --max-memory) instead of a raw allocation error")
def test_out_of_memory_names_the_knobs():
    with pytest.raises(DenseTooLargeError, match="chunk_size") as info:
        with memory_guard("interaction_graph", 32):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 8589934592 bytes")
    assert "--max-memory" in str(info.value)
    with pytest.raises(ValueError, match="unrelated"), memory_guard("x", 1):
        raise ValueError("unrelated")
