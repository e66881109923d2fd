"""Every function that takes data reads it the one way :mod:`wdecomp.batch` defines.

The model is 6 wide in and out and the targets are 6 wide too, so a ``(x, y)`` tuple read as two
batches of inputs would run without error and give a different answer (issue 14's silent case):
each function must give the same result for the tuple, a list holding it, and a one-shot
iterator of it, and refuse the ambiguous ``[x, y]``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import wdecomp as wd
from wdecomp.activations import activation_jacobians
from wdecomp.bases.capture import gram_matrices
from wdecomp.bases.curvature import behavioural_objective
from wdecomp.errors import DataError
from wdecomp.sae.train import hook_activations

DT = torch.float64


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 6)).to(DT)
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(9, 6, generator=g, dtype=DT), torch.randn(9, 6, generator=g, dtype=DT)


def _gram(model, data):
    r = gram_matrices(model, data, ["1"])["1"]
    return torch.cat([torch.tensor([float(r.count)], dtype=DT), r.gram.reshape(-1).to(DT)])


def _jacobians(model, data):
    return torch.cat([J.reshape(-1) for J, _ in activation_jacobians(model, data, "0", "2", chunk_size=4)])


def _behavioural(model, data):
    obj = behavioural_objective(model, data)
    return torch.tensor([float(sum(obj.counts))]), obj.gradient()


def _sae_stream(model, data):
    return torch.cat(list(hook_activations(model, data, "1", epochs=1, buffer_batches=1, seed=0)))


def _objective(model, data):
    return wd.Objective(model, data, loss="mse").gradient()


def _lib(model, data):
    basis = wd.interaction_basis(model, data, ["0", "2"])
    return torch.cat([basis[k].transform.reshape(-1).abs() for k in basis])


CALLERS = {
    "Objective": _objective,
    "gram_matrices": _gram,
    "activation_jacobians": _jacobians,
    "behavioural_objective": _behavioural,
    "hook_activations": _sae_stream,
    "interaction_basis": _lib,
}


def _flat(result):
    return torch.cat([t.reshape(-1).to(DT) for t in result]) if isinstance(result, tuple) else result


@pytest.mark.parametrize("name", list(CALLERS))
def test_a_tuple_is_one_batch_for_every_caller(name):
    model, x, y = _setup()
    fn = CALLERS[name]
    as_list = _flat(fn(model, [(x, y)]))
    torch.testing.assert_close(_flat(fn(model, (x, y))), as_list, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_flat(fn(model, iter([(x, y)]))), as_list, rtol=1e-12, atol=1e-12)
    split = _flat(fn(model, [(x[:4], y[:4]), (x[4:], y[4:])]))
    if name == "hook_activations":  # shuffled within each buffered batch: the same rows, reordered
        split, as_list = split.sort(dim=0).values, as_list.sort(dim=0).values
    torch.testing.assert_close(split, as_list, rtol=1e-10, atol=1e-12)


@pytest.mark.refuses(
    "a list of two tensors [x, y] given to any function that takes data",
    "ambiguous (one batch or two batches of inputs); write (x, y) or [(x,), (y,)]",
)
@pytest.mark.parametrize("name", list(CALLERS))
def test_a_list_of_two_tensors_is_refused_by_every_caller(name):
    model, x, y = _setup()
    with pytest.raises(DataError, match="ambiguous"):
        _flat(CALLERS[name](model, [x, y]))
