"""The data fingerprint's reuse of a kept copy (issue 16): the same fingerprint as a fresh checksum,
every change still seen."""

from __future__ import annotations

import pytest
import torch

import wdecomp as wd
from wdecomp import batch as batching


def _count_checksums(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = batching.checksum
    monkeypatch.setattr(batching, "checksum", lambda t: calls.append(t.numel()) or real(t))
    return calls


def test_a_kept_copy_stands_in_for_the_checksum_only_while_the_bits_are_equal(monkeypatch):
    calls = _count_checksums(monkeypatch)
    x = torch.randn(128, 200)  # 100 KiB: above KEEP_MIN
    y = torch.randint(0, 3, (128,))  # small: checksummed every time
    batch = (x, y)
    first = batching.fingerprint(batch)
    assert batching.fingerprint(batch) == first  # the second fingerprint keeps a copy of x
    assert calls == [x.numel(), 128, x.numel(), 128]
    calls.clear()
    assert batching.fingerprint(batch) == first and calls == [128]  # x: one memcmp, no checksum
    x[5, 7] = -x[5, 7]
    changed = batching.fingerprint(batch)
    assert changed != first and calls == [128, x.numel(), 128]
    x[5, 7] = -x[5, 7]
    assert batching.fingerprint(batch) == first
    x.view(torch.int32)[0, 0] ^= 1  # one bit of one entry
    assert batching.fingerprint(batch) not in (first, changed)
    x.view(torch.int32)[0, 0] ^= 1
    zero = torch.zeros(64, 300)
    z_print = batching.fingerprint(zero)
    batching.fingerprint(zero)
    zero[3, 3] = -0.0  # equal as numbers, different bits
    assert batching.fingerprint(zero) != z_print
    # a fresh tensor with the same bits and every other shape/dtype agree with a plain fingerprint
    assert batching.fingerprint((x.clone(), y.clone())) == first
    assert batching.fingerprint((x.reshape(200, 128), y)) != first


def test_the_copies_stay_within_the_budget(monkeypatch):
    monkeypatch.setattr(batching, "KEEP_BUDGET", 150_000)
    before = batching._KEPT_BYTES[0]
    a, b = torch.randn(128, 256), torch.randn(128, 256)  # 128 KiB each: only one fits
    for _ in range(3):
        batching.fingerprint(a), batching.fingerprint(b)
    assert batching._KEPT_BYTES[0] - before == a.numel() * 4
    del a, b  # dropped with their tensors
    assert batching._KEPT_BYTES[0] == before


def test_the_objective_still_refuses_a_batch_changed_in_place():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    x, y = torch.randn(64, 300, dtype=torch.float64), torch.randint(0, 3, (64,))
    obj = wd.Objective(model, [(x, y)])
    g = obj.gradient()
    for _ in range(2):  # copies kept, then used
        assert torch.equal(obj.gradient(), g)
    x[10, 20] += 1e-12
    with pytest.raises(wd.DataError, match="batch 0 differs"):
        obj.gradient()
