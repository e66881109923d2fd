"""Every function that takes data reads one convention (wdecomp.batch): forms accepted or refused."""

from __future__ import annotations

import pytest
import torch
from _rib_reference import DT, tanh_mlp

from wdecomp.bases import interaction_basis, interaction_matrix
from wdecomp.errors import DataError, SelectionError
from wdecomp.graph import interaction_graph


def _x(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, dtype=DT, generator=torch.Generator().manual_seed(seed))


def test_one_shot_iterator_is_read_once_for_the_interaction_matrix():
    model, x = tanh_mlp(), _x()
    M_iter = interaction_matrix(model, iter([(x, None)]), "1", "3")
    M_list = interaction_matrix(model, [(x, None)], "1", "3")
    assert torch.equal(M_iter, M_list) and float(M_list.abs().max()) > 0


def test_tuple_batch_is_one_batch_not_two():
    """(x, y) with targets as wide as the inputs is one batch: the basis equals the bare-input one."""
    model, x = tanh_mlp(), _x()
    y = torch.randn(12, 4, dtype=DT)  # as wide as x: reading it as inputs would not fail
    a = interaction_basis(model, (x, y), ["1", "3", "4"])
    b = interaction_basis(model, x, ["1", "3", "4"])
    c = interaction_basis(model, iter([(x[:5], y[:5]), (x[5:], y[5:])]), ["1", "3", "4"])
    assert a.info["examples"] == 12 and c.info["examples"] == 12
    for p in ("1", "3"):
        assert torch.allclose(a[p].eigenvalues, b[p].eigenvalues, rtol=1e-12)
        assert torch.allclose(a[p].eigenvalues, c[p].eigenvalues, rtol=1e-10)


def test_graph_accepts_every_form_with_the_same_result():
    model, x = tanh_mlp(), _x()
    basis = interaction_basis(model, x, ["1", "3", "4"])
    ref = interaction_graph(model, x, basis).attribution_matrix(0)
    for data in ((x, None), [(x[:7],), (x[7:],)], iter([(x[:3], None), (x[3:], None)])):
        assert abs(interaction_graph(model, data, basis).attribution_matrix(0) - ref).max() < 1e-12 * ref.max()


@pytest.mark.refuses("a list [xa, xb] of two tensors as data", "ambiguous: one (inputs, targets) batch or two "
                     "batches of inputs; write (x, y) or [(xa,), (xb,)]")
def test_ambiguous_list_refused():
    model, x = tanh_mlp(), _x()
    with pytest.raises(DataError, match="ambiguous"):
        interaction_basis(model, [x[:6], x[6:]], ["1", "3"])


@pytest.mark.refuses("interaction_basis layers out of forward order", "the basis is built from the output "
                     "backwards; the error lists the order the forward pass reaches them")
def test_layers_out_of_order_refused():
    with pytest.raises(SelectionError, match="forward order"):
        interaction_basis(tanh_mlp(), _x(), ["3", "1"])


@pytest.mark.refuses("empty data for interaction_basis", "no examples to fit a basis on")
def test_empty_data_refused():
    with pytest.raises(DataError):
        interaction_basis(tanh_mlp(), [], ["1", "3"])
