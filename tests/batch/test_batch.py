"""The one data convention (``wdecomp.batch``): batch forms, data arguments, and the operations."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wdecomp import batch as B
from wdecomp.errors import DataError

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def batches(draw):
    """A batch of random structure: a tensor, a dict of keyword inputs, or (inputs, targets)."""
    n = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, draw(st.integers(1, 4)), generator=gen, dtype=torch.float64)
    kind = draw(st.sampled_from(["tensor", "dict", "pair", "positional", "inputs-only"]))
    if kind == "tensor":
        return x
    ids = torch.randint(0, 5, (n, 3), generator=gen)
    if kind == "dict":
        return {"x": x, "ids": ids}
    y = torch.randint(0, 3, (n,), generator=gen)
    if kind == "pair":
        return (x, y)
    if kind == "positional":
        return ((x, ids), y)
    return (x,)


def _equal(a, b) -> bool:
    return B.fingerprint(a) == B.fingerprint(b) and all(
        torch.equal(s, t) for (_, s), (_, t) in zip(B.tensor_leaves(a), B.tensor_leaves(b))
    )


@SETTINGS
@given(batches(), st.data())
def test_slicing_then_concatenating_returns_the_batch(batch, data):
    n = B.num_examples(batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    bounds = [0, *cuts, n]
    pieces = [B.slice_examples(batch, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    assert _equal(B.concat(pieces), batch)
    assert sum(B.num_examples(p) for p in pieces) == n  # counting is additive over splits
    size = data.draw(st.integers(1, n + 2))
    chunks = list(B.chunks(batch, size))
    assert [B.num_examples(c) for c in chunks] == [min(size, n - s) for s in range(0, n, size)]
    assert _equal(B.concat(chunks), batch)


@SETTINGS
@given(batches(), st.data())
def test_fingerprint_changes_when_any_value_changes(batch, data):
    before = B.fingerprint(batch)
    assert B.fingerprint(B.map_tensors(torch.clone, batch)) == before  # a copy is the same data
    leaves = list(B.tensor_leaves(batch))
    path, t = leaves[data.draw(st.integers(0, len(leaves) - 1))]
    i = data.draw(st.integers(0, t.numel() - 1))
    changed = B.map_tensors(torch.clone, batch)
    target = dict(B.tensor_leaves(changed))[path].view(-1)
    if t.is_floating_point():
        target[i] = data.draw(st.sampled_from([target[i].item() + 1.0, -target[i].item() or -0.0, float("nan")]))
    else:
        target[i] = target[i] + 1
    assert B.fingerprint(changed) != before


def test_fingerprint_sees_signed_zero_dtype_shape_and_keys():
    z = torch.zeros(4)
    prints = {
        B.fingerprint(z),
        B.fingerprint(-z),
        B.fingerprint(z.double()),
        B.fingerprint(z.reshape(2, 2)),
        B.fingerprint({"a": z}),
        B.fingerprint({"b": z}),
        B.fingerprint((z,)),
        B.fingerprint([z]),
    }
    assert len(prints) == 8


def test_split_reads_each_batch_form():
    x, y = torch.randn(3, 2), torch.arange(3)
    assert B.split(x)[1] is None and B.split(x)[0] is x
    assert B.split({"x": x})[1] is None
    assert B.split((x, y))[1] is y and B.split([x, y])[1] is y  # a DataLoader yields lists
    assert B.split((x,))[1] is None
    assert B.num_examples(((x, x), y)) == 3


def test_a_bare_tensor_is_one_batch_never_rows():
    x = torch.randn(5, 3)
    data = B.as_batches(x)
    assert len(data) == 1 and data[0] is x


def test_a_tuple_pair_is_one_batch_and_a_list_of_pairs_is_many():
    x, y = torch.randn(4, 6), torch.randn(4, 6)
    assert len(B.as_batches((x, y))) == 1
    assert len(B.as_batches([(x, y), (x, y)])) == 2
    assert len(B.as_batches([(x,), (y,)])) == 2
    assert len(B.as_batches([x, y, x])) == 3  # three entries cannot be one (inputs, targets) batch


@pytest.mark.refuses(
    "a list of two tensors [a, b] as data",
    "ambiguous: one (inputs, targets) batch or two batches of inputs; write (a, b) or [(a,), (b,)]",
)
def test_a_list_of_two_tensors_is_refused_with_how_to_write_it():
    with pytest.raises(DataError, match=r"ambiguous.*\(inputs, targets\).*\[\(a,\), \(b,\)\]"):
        B.as_batches([torch.zeros(2, 3), torch.zeros(2, 3)])


@pytest.mark.refuses(
    "a tuple of two (inputs, targets) pairs as data",
    "a tuple is one batch; pass several batches as a list [(x1, y1), (x2, y2)]",
)
def test_a_tuple_of_pairs_is_refused():
    x = torch.zeros(2, 3)
    with pytest.raises(DataError, match=r"list \[\(x1, y1\), \(x2, y2\)\]"):
        B.as_batches(((x, x), (x, x)))


@pytest.mark.refuses("a batch tuple of three entries", "a batch is (inputs, targets) or (inputs,); "
                     "several model inputs are written ((a, b, c), targets)")
def test_a_three_tuple_batch_is_refused():
    x = torch.zeros(2, 3)
    with pytest.raises(DataError, match=r"\(\(a, b, c\), targets\)"):
        B.as_batches((x, x, x))
    with pytest.raises(DataError, match="batch of 3 entries"):
        B.split([x, x, x])


@pytest.mark.refuses("tensors in one batch with different numbers of examples",
                     "every tensor of a batch needs the examples on its first axis")
def test_tensors_with_different_example_counts_are_refused():
    with pytest.raises(DataError, match=r"batch\[1\] has 3 examples.*batch\[0\] has 2"):
        B.num_examples((torch.zeros(2, 3), torch.zeros(3)))
    with pytest.raises(DataError, match="0-dimensional"):
        B.slice_examples((torch.zeros(2, 3), torch.tensor(1.0)), 0, 1)


@pytest.mark.refuses("empty data, or data that is not a batch or batches",
                     "data is one batch, a list of batches, a DataLoader or an iterator")
def test_empty_and_non_data_are_refused():
    with pytest.raises(DataError, match="no batches"):
        B.as_batches([])
    with pytest.raises(DataError, match="data cannot be a int"):
        B.as_batches(3)


def test_replayable_replays_a_one_shot_iterator():
    items = [(torch.full((2, 1), float(i)), torch.zeros(2)) for i in range(3)]
    data = B.as_batches(iter(items))
    assert isinstance(data, B.Replayable)
    first = next(iter(data))  # a partial pass, then two full ones
    assert first is items[0]
    assert [b[0][0, 0].item() for b in data] == [0.0, 1.0, 2.0]
    assert [b[0][0, 0].item() for b in data] == [0.0, 1.0, 2.0]


@pytest.mark.refuses("a one-shot iterator where a second pass is needed (keep=False)",
                     "pass a list of batches or a re-iterable such as a DataLoader")
def test_replayable_without_keeping_refuses_a_second_pass():
    data = B.as_batches(iter([torch.zeros(2, 1)]), keep=False, what="interaction_matrix")
    assert len(list(data)) == 1
    with pytest.raises(DataError, match="interaction_matrix needs a second pass"):
        list(data)


def test_to_casts_floats_only_and_keeps_complex():
    batch = ((torch.zeros(2, 2), torch.zeros(2, dtype=torch.complex64)), torch.arange(2))
    out = B.to(batch, "cpu", torch.float64)
    assert out[0][0].dtype == torch.float64
    assert out[0][1].dtype == torch.complex64
    assert out[1].dtype == torch.int64


def test_call_runs_each_input_form_and_functional_state():
    lin = torch.nn.Linear(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64)

    class Two(torch.nn.Module):
        def forward(self, a, b):
            return a + b

    assert torch.equal(B.call(lin, x), lin(x))
    assert torch.equal(B.call(Two(), (x, x)), 2 * x)
    assert torch.equal(B.call(Two(), {"a": x, "b": x}), 2 * x)
    state = {"weight": torch.zeros(2, 3, dtype=torch.float64), "bias": torch.ones(2, dtype=torch.float64)}
    assert torch.equal(B.call(lin, x, state), torch.ones(4, 2, dtype=torch.float64))
    assert B.add_example_axis({"a": x[0]})["a"].shape == (1, 3)
