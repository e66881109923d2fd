"""The objective is never silently wrong (issue 13): shapes, random forwards, changing data,
ambiguous data, and inputs that used to end in raw tracebacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _zoo import DT
from torch import nn

import wdecomp as wd
from wdecomp.errors import DataError, ModelStateError


def _mlp(d_in: int = 3, d_out: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, 4), nn.Tanh(), nn.Linear(4, d_out)).to(DT)


def _xy(n: int = 8, d_in: int = 3, classes: int = 2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, d_in, generator=g, dtype=DT), torch.randint(0, classes, (n,), generator=g)


# ----------------------------------------------------------------------------- item 3: shapes
@pytest.mark.refuses(
    "mse with outputs (B, 1) and targets (B,)",
    "broadcasting would compare every output with every target (a B x B difference); reshape the targets",
)
def test_mse_refuses_outputs_and_targets_of_different_shapes():
    model = _mlp(d_out=1)
    x, _ = _xy()
    y = torch.randn(8, dtype=DT)
    with pytest.raises(DataError, match=r"mse needs targets of the outputs' shape \(8, 1\), got \(8,\)"):
        wd.Objective(model, (x, y), loss="mse").value()
    # written the right way it is the plain mean squared error
    value = wd.Objective(model, (x, y.unsqueeze(-1)), loss="mse").value()
    with torch.no_grad():
        assert value == pytest.approx(float((model(x) - y.unsqueeze(-1)).pow(2).mean()), rel=1e-12)


@pytest.mark.refuses(
    "cross_entropy targets whose shape is not the logits' minus the class axis",
    "class-index targets must have shape outputs.shape[:-1] (or probabilities of the outputs' shape)",
)
def test_cross_entropy_refuses_targets_of_the_wrong_shape():
    model = _mlp()
    x, y = _xy()
    with pytest.raises(DataError, match=r"class-index targets of shape \(8,\)"):
        wd.Objective(model, (x, y.unsqueeze(-1))).value()
    with pytest.raises(DataError, match="class-index targets"):
        wd.Objective(model, (x, y.to(DT))).value()  # float class indices


@pytest.mark.refuses(
    "a bare tensor of inputs with a loss of (outputs, targets)",
    "the batch holds no targets; pass (inputs, targets) batches or a BatchLoss",
)
def test_a_bare_tensor_has_no_targets_for_an_output_loss():
    x, _ = _xy()
    with pytest.raises(DataError, match="holds inputs only"):
        wd.Objective(_mlp(), x).value()
    # with a BatchLoss, a bare tensor is one batch of 8 examples (never 8 batches of rows)
    obj = wd.Objective(_mlp(), x, loss=wd.BatchLoss(lambda f, b: f(b).pow(2).mean()))
    assert obj.counts == [8]


# ----------------------------------------------------------------------------- item 4: random forwards
class _FunctionalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(F.dropout(x, p=0.5, training=True))


class _RandInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x + 0.1 * torch.rand_like(x))


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(3, 1, dropout=0.5, batch_first=True)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        h = x.reshape(x.shape[0], 1, 3).expand(-1, 4, -1)
        return self.out(self.mha(h, h, h, need_weights=False)[0].mean(1))


@pytest.mark.refuses(
    "a model switched to train() after its operator was built",
    "dropout in training mode makes every product random; the check runs at every product",
)
def test_train_mode_after_construction_is_refused_at_the_next_product():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).to(DT).eval()
    x, y = _xy()
    for op in (wd.hessian, wd.ggn, wd.fisher):
        A = op(wd.Objective(model, (x, y)))
        v = torch.randn(A.shape[0], dtype=DT)
        A @ v
        model.train()
        with pytest.raises(ModelStateError, match="'1' \\(Dropout\\) is in training mode"):
            A @ v
        model.eval()
        A @ v


@pytest.mark.refuses(
    "a random forward pass (F.dropout(training=True), attention dropout, torch.rand in forward)",
    "two evaluations of the loss at the same weights differ; remove the randomness or call model.eval()",
)
@pytest.mark.parametrize("make", [_FunctionalDropout, _RandInForward, _Attention])
def test_random_forwards_are_detected_generically(make):
    torch.manual_seed(0)
    model = make().to(DT)
    x, y = _xy()
    H = wd.hessian(wd.Objective(model, (x, y)))
    with pytest.raises(ModelStateError, match="two evaluations of the loss on the same batch"):
        H @ torch.randn(H.shape[0], dtype=DT)


def test_a_mode_dependent_random_forward_is_caught_after_a_switch():
    """Deterministic in eval mode, random in train mode, in a module wdecomp does not know."""

    class Noisy(nn.Module):
        def forward(self, h):
            return F.dropout(h, 0.5, training=self.training)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Noisy(), nn.Linear(4, 2)).to(DT).eval()
    H = wd.hessian(wd.Objective(model, _xy()))
    v = torch.randn(H.shape[0], dtype=DT)
    assert torch.equal(H @ v, H @ v)
    model.train()
    with pytest.raises(ModelStateError, match="random"):
        H @ v


# ----------------------------------------------------------------------------- item 5: data fingerprints
@pytest.mark.refuses(
    "data changed between passes (shuffling, augmentation, in-place edits), default settings",
    "curvature needs the same data on every pass; the data fingerprint check is on by default",
)
def test_changing_data_is_caught_by_default():
    model = _mlp()
    x, y = _xy()

    class Shuffling:
        def __init__(self):
            self.gen = torch.Generator().manual_seed(0)

        def __iter__(self):
            perm = torch.randperm(8, generator=self.gen)
            yield x[perm[:4]], y[perm[:4]]
            yield x[perm[4:]], y[perm[4:]]

    obj = wd.Objective(model, Shuffling())
    with pytest.raises(DataError, match="differs from the first pass"):
        for _ in range(3):
            obj.gradient()
    data = [(x.clone(), y)]
    obj = wd.Objective(model, data)
    obj.gradient()
    data[0][0][3, 1] += 1.0  # in place, one entry
    with pytest.raises(DataError, match="batch 0 differs"):
        obj.gradient()


# ----------------------------------------------------------------------------- item 6: ambiguous data
@pytest.mark.refuses(
    "a list of two tensors [x, y] given to Objective",
    "ambiguous (one batch or two); write a tuple (x, y) for one batch",
)
def test_a_list_of_two_tensors_is_refused_and_a_tuple_is_one_batch():
    x, y = _xy()
    with pytest.raises(DataError, match="ambiguous"):
        wd.Objective(_mlp(), [x, y])
    assert wd.Objective(_mlp(), (x, y)).counts == [8]


def test_a_one_shot_iterator_is_replayed():
    x, y = _xy()
    obj = wd.Objective(_mlp(), iter([(x[:5], y[:5]), (x[5:], y[5:])]))
    g1, g2 = obj.gradient(), obj.gradient()
    assert torch.equal(g1, g2)
    assert obj.counts == [5, 3]


# ----------------------------------------------------------------------------- raw tracebacks
@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")
@pytest.mark.refuses("complex weights", "the loss is differentiated in real weights; split real and imaginary parts")
def test_complex_weights_are_refused():
    model = nn.Linear(3, 2).to(torch.complex128)
    with pytest.raises(ModelStateError, match="parameter 'weight' is complex"):
        wd.Objective(model, _xy())


@pytest.mark.refuses("a model on the meta device", "meta tensors hold no values; materialise and load the weights")
def test_meta_weights_are_refused():
    model = nn.Linear(3, 2, device="meta")
    with pytest.raises(ModelStateError, match="meta device"):
        wd.Objective(model, _xy())


@pytest.mark.refuses("integer inputs to a float model", "the model cannot run on the batch; cast inputs with .float()")
def test_integer_inputs_are_a_clear_error():
    x, y = _xy()
    with pytest.raises(DataError, match=r"cannot be run on the first batch \(batch\[0\] \(8, 3\) torch.int64"):
        wd.Objective(_mlp(), (x.long(), y)).value()


@pytest.mark.refuses(
    "inputs of the wrong feature width", "the model cannot run on the batch; the message shows the shapes"
)
def test_wrong_feature_width_is_a_clear_error():
    x, y = _xy(d_in=5)
    H = wd.hessian(wd.Objective(_mlp(d_in=3), (x, y)))
    with pytest.raises(DataError, match=r"batch\[0\] \(8, 5\).*input width"):
        H @ torch.ones(H.shape[0], dtype=DT)


def test_float16_loss_of_a_large_batch_does_not_overflow():
    """70k examples of cross-entropy about 0.9 each sum to ~6e4-1e5, beyond float16's 65504."""
    torch.manual_seed(0)
    n = 70_000
    x = torch.randn(n, 4)
    y = torch.randint(0, 3, (n,))
    model = nn.Linear(4, 3)
    ref = wd.Objective(model.double(), (x, y)).value()
    half = wd.Objective(model.half(), (x, y)).value()
    assert ref > 65504 / n  # the summed loss really is beyond float16's range
    assert half == pytest.approx(ref, rel=2e-3)


def test_a_batch_loss_reads_batches_of_its_own_structure():
    """A BatchLoss may take (inputs, mask, labels) batches, given as a list; counted by batch[0]."""
    model = _mlp()
    x, y = _xy()
    mask = torch.ones(8, dtype=DT)
    loss = wd.BatchLoss(lambda f, b: F.cross_entropy(f(b[0]) * b[1][:, None], b[2]))
    obj = wd.Objective(model, [(x, mask, y)], loss=loss)
    assert obj.counts == [8]
    assert obj.value() == pytest.approx(wd.Objective(model, (x, y)).value(), rel=1e-14)
    with pytest.raises(DataError, match=r"a list of such batches"):
        wd.Objective(model, (x, mask, y), loss=loss)
