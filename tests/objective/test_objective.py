"""Parameter selection and the objective: exact weighting, checks, clear errors."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from _zoo import DT, TinyAttention
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import wdecomp as wd
from wdecomp.params import select_parameters


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)


def test_select_by_glob_regex_module_and_list():
    model = _mlp()
    assert select_parameters(model).names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert select_parameters(model, "*.weight").names == ("0.weight", "2.weight")
    assert select_parameters(model, "2").names == ("2.weight", "2.bias")
    assert select_parameters(model, "re:0\\..*").names == ("0.weight", "0.bias")
    assert select_parameters(model, re.compile(r".*bias")).names == ("0.bias", "2.bias")
    assert select_parameters(model, model[2]).names == ("2.weight", "2.bias")
    assert select_parameters(model, ["0.bias", model[2]]).names == ("0.bias", "2.weight", "2.bias")
    assert select_parameters(model).numel == 3 * 4 + 4 + 4 * 2 + 2


def test_selection_that_matches_nothing_is_an_error():
    model = _mlp()
    with pytest.raises(wd.SelectionError, match="matches no parameter"):
        select_parameters(model, "mlp.*")
    with pytest.raises(wd.SelectionError, match="not a submodule"):
        select_parameters(model, nn.Linear(2, 2))


def test_frozen_parameters_are_excluded_by_default():
    model = _mlp()
    model[0].weight.requires_grad_(False)
    assert "0.weight" not in select_parameters(model).names


def test_tied_parameters_counted_once():
    model = TinyAttention(tied=True).to(DT)
    ps = select_parameters(model)
    assert "unembed.weight" not in ps.names
    assert ps.aliases["embed.weight"] == ("unembed.weight",)
    assert ps.numel == sum(p.numel() for p in model.parameters())  # parameters() deduplicates


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.integers(1, 3))
def test_flatten_unflatten_round_trip(dims, batch):
    model = nn.Sequential(*[nn.Linear(d, d + 1) for d in dims])
    ps = select_parameters(model)
    vec = torch.randn(batch, ps.numel)
    named = ps.unflatten(vec)
    for name, shape in zip(ps.names, ps.shapes):
        assert named[name].shape == (batch, *shape)
    torch.testing.assert_close(ps.flatten(named), vec, rtol=0, atol=0)
    torch.testing.assert_close(ps.flat(), torch.cat([p.reshape(-1) for p in model.parameters()]), rtol=0, atol=0)


def test_uneven_last_batch_is_weighted_exactly():
    """The mean over all 10 examples, not the mean of the two batch means (7 and 3 examples)."""
    model = _mlp()
    x, y = torch.randn(10, 3, dtype=DT), torch.randint(0, 2, (10,))
    whole = F.cross_entropy(model(x), y).item()
    split = wd.Objective(model, [(x[:7], y[:7]), (x[7:], y[7:])])
    assert split.value() == pytest.approx(whole, rel=1e-14)
    naive = 0.5 * (F.cross_entropy(model(x[:7]), y[:7]) + F.cross_entropy(model(x[7:]), y[7:])).item()
    assert abs(naive - whole) > 1e-4  # the trap this avoids is real on this data
    torch.testing.assert_close(
        wd.hessian(split).dense(), wd.hessian(wd.Objective(model, (x, y))).dense(), rtol=1e-12, atol=1e-14
    )
    assert split.counts == [7, 3] and split.total_count == 10


def test_sequence_loss_is_mean_over_all_tokens():
    torch.manual_seed(0)
    model = TinyAttention().to(DT)
    tok, nxt = torch.randint(0, 5, (4, 3)), torch.randint(0, 5, (4, 3))
    obj = wd.Objective(model, [(tok[:3], nxt[:3]), (tok[3:], nxt[3:])])
    ref = F.cross_entropy(model(tok).reshape(-1, 5), nxt.reshape(-1)).item()
    assert obj.value() == pytest.approx(ref, rel=1e-14)
    assert obj.total_count == 12


def test_gradient_matches_autograd():
    model = _mlp()
    x, y = torch.randn(9, 3, dtype=DT), torch.randint(0, 2, (9,))
    obj = wd.Objective(model, [(x[:4], y[:4]), (x[4:], y[4:])])
    ref = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    torch.testing.assert_close(obj.gradient(), torch.cat([g.reshape(-1) for g in ref]), rtol=1e-12, atol=1e-14)


def test_one_shot_iterators_are_materialised():
    model = _mlp()
    x, y = torch.randn(6, 3, dtype=DT), torch.randint(0, 2, (6,))
    obj = wd.Objective(model, iter([(x[:3], y[:3]), (x[3:], y[3:])]))
    assert obj.value() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-14)
    assert obj.value() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-14)


@pytest.mark.parametrize("module", [nn.Dropout(0.1), nn.BatchNorm1d(4)])
def test_training_mode_stochastic_modules_are_refused(module):
    model = nn.Sequential(nn.Linear(3, 4), module, nn.Linear(4, 2))
    with pytest.raises(wd.ModelStateError, match="training mode.*model.eval"):
        wd.Objective(model, (torch.randn(4, 3), torch.randint(0, 2, (4,))))
    model.eval()
    wd.Objective(model, (torch.randn(4, 3), torch.randint(0, 2, (4,))))


def test_changing_data_is_detected():
    model = _mlp()

    class Shuffling:
        def __init__(self):
            self.calls = 0

        def __iter__(self):
            self.calls += 1
            g = torch.Generator().manual_seed(self.calls)
            yield torch.randn(4, 3, generator=g, dtype=DT), torch.randint(0, 2, (4,), generator=g)

    obj = wd.Objective(model, Shuffling(), check_deterministic=True)
    with pytest.raises(wd.DataError, match="differs from the first pass"):
        obj.value()
        obj.value()


def test_deterministic_data_passes_the_check():
    model = _mlp()
    data = [(torch.randn(4, 3, dtype=DT), torch.randint(0, 2, (4,)))]
    obj = wd.Objective(model, data, check_deterministic=True)
    assert obj.value() == obj.value()


def test_empty_data_is_an_error():
    with pytest.raises(wd.DataError, match="no batches"):
        wd.Objective(_mlp(), [])


def test_float32_data_is_cast_to_a_float64_model():
    model = _mlp()
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    obj = wd.Objective(model, (x, y))
    assert obj.value() == pytest.approx(F.cross_entropy(model(x.double()), y).item(), rel=1e-14)


def test_state_is_named_parameters_then_named_buffers():
    """``state()`` reads every module once; it equals the two torch walks, tied and shared tensors
    once, under their first names, in the same order."""
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(TinyAttention(tied=True), nn.BatchNorm1d(3), shared, shared).to(DT)
    model[0].register_buffer("unused", None)
    model[1].register_parameter("extra", None)
    obj = wd.Objective(model.eval(), (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)))
    expected = [*model.named_parameters(), *model.named_buffers()]
    state = obj.state()
    assert list(state) == [n for n, _ in expected]
    for (name, t), got in zip(expected, state.values()):
        assert got.data_ptr() == t.data_ptr() and not got.requires_grad, name
    sub = {"2.bias": torch.ones(4, dtype=DT)}
    assert torch.equal(obj.state(sub)["2.bias"], sub["2.bias"])
    shared.train()  # the flags come from the same walk, in model.modules() order
    flags = tuple(m.training for m in model.modules())
    assert obj.state_and_modes()[1] == obj.modes() == flags and sum(flags) == 1


def test_a_known_fingerprint_replaces_the_pass_and_is_compared_the_same(monkeypatch):
    model = _mlp()
    data = [(torch.randn(4, 3, dtype=DT), torch.randint(0, 2, (4,)))]
    obj = wd.Objective(model, data)
    first = list(obj.batches())  # the first pass records the fingerprints
    calls = []
    real = wd.batch.fingerprint
    monkeypatch.setattr(wd.batch, "fingerprint", lambda b: calls.append(1) or real(b))
    known = obj._fingerprints[0]
    seen = []
    again = list(obj.batches(known_fingerprint=lambda i, raw, batch: seen.append((i, raw, batch)) or known))
    assert calls == [] and len(again) == len(first) == 1
    (i, raw, batch), = seen
    assert i == 0 and raw is data[0] and batch[0] is data[0][0]  # same dtype and device: not copied
    list(obj.batches(known_fingerprint=lambda *args: None))  # cannot vouch: fingerprinted here
    assert calls == [1]
    with pytest.raises(wd.DataError, match="batch 0 differs"):
        list(obj.batches(known_fingerprint=lambda *args: "another batch"))
