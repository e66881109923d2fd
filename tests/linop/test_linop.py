"""The linear-operator layer: one protocol, adapters at the edge, one counter, one guarded dense path."""

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.sparse.linalg import LinearOperator

from wdecomp.errors import DenseTooLargeError, DtypeError, NonFiniteError, ShapeError
from wdecomp.linop import FunctionOperator, LinOp, OperatorCapabilityError, TensorOperator, aslinop, to_dense

F64 = torch.float64


def _sym(p=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(p, p, generator=g, dtype=F64)
    return B + B.T


class _Diag(LinOp):
    """The smallest LinOp: a subclass supplies only shape, dtype, device and ``_matmat``."""

    def __init__(self, d):
        self.d, self.shape, self.dtype, self.device = d, (len(d), len(d)), d.dtype, d.device

    def _matmat(self, V):
        return self.d[:, None] * V


class _OnlyVectors:  # an outside object known by .shape and @, single vectors only
    def __init__(self, A):
        self.A, self.shape, self.dtype = A, tuple(A.shape), A.dtype

    def __matmul__(self, v):
        assert v.dim() == 1, "vectors only"
        return self.A @ v


class _WithMatmat(_OnlyVectors):
    def matmat(self, V):
        return self.A @ V


def _forms(A):
    An = A.numpy()
    return {
        "tensor": A,
        "ndarray": An,
        "scipy": LinearOperator(A.shape, matvec=lambda x: An @ x, matmat=lambda X: An @ X, dtype=np.float64),
        "sparse": scipy.sparse.csr_matrix(An),
        "callable": lambda V: A @ V,
        "only @": _OnlyVectors(A),
        "matmat": _WithMatmat(A),
    }


@pytest.mark.parametrize("form", list(_forms(_sym())))
def test_every_outside_form_gives_the_same_products_and_counts(form):
    A = _sym()
    op = aslinop(_forms(A)[form], shape=A.shape)
    assert isinstance(op, LinOp) and op.shape == (30, 30) and op.dtype == F64
    V = torch.randn(30, 3, dtype=F64)
    torch.testing.assert_close(op @ V, A @ V, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op @ V[:, 0], A @ V[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op @ V.numpy(), (A @ V).numpy(), rtol=1e-12, atol=1e-12)  # numpy in, numpy out
    torch.testing.assert_close(op.to_scipy().matmat(V.numpy()), (A @ V).numpy(), rtol=1e-12, atol=1e-12)
    assert op.matvecs == 3 + 1 + 3 + 3  # one counter, a block of k counts k
    assert op.matvec_count == op.matvecs  # the deprecated alias reads the same counter
    assert torch.equal(op.dense(), 0.5 * (A + A.T)) or torch.allclose(op.dense(), A, rtol=1e-13, atol=1e-13)


def test_linop_passes_through_and_a_subclass_needs_only_matmat():
    d = torch.linspace(1, 2, 50, dtype=F64)
    op = _Diag(d)
    assert aslinop(op) is op
    torch.testing.assert_close(op.dense(), torch.diag(d), rtol=0, atol=0)
    assert op.matvecs == 50  # dense counts every identity column
    with pytest.raises(OperatorCapabilityError, match="restrict"):
        op.restrict("w")
    with pytest.raises(OperatorCapabilityError, match="num_batches"):
        op.num_batches  # noqa: B018


def test_dense_is_symmetrised_in_place_exactly():
    g = torch.Generator().manual_seed(3)
    M = _sym(130) + 1e-9 * torch.randn(130, 130, generator=g, dtype=F64)  # round-off-like asymmetry
    op = FunctionOperator(lambda V: M @ V, (130, 130), F64)
    assert torch.equal(op.dense(), 0.5 * (M + M.T))  # strips of 64 columns, bit for bit
    assert torch.equal(to_dense(M), 0.5 * (M + M.T))
    ns = FunctionOperator(lambda V: M @ V, (130, 130), F64, symmetric=False)
    assert torch.equal(ns.dense(), M)


@pytest.mark.refuses("a dense matrix whose build would exceed max_bytes",
                     "the dense path counts its whole peak (matrix plus one identity block); raise max_bytes "
                     "or use products")
def test_dense_refuses_above_its_real_peak():
    op = _Diag(torch.ones(100, dtype=F64))
    need = 100 * 100 * 8
    with pytest.raises(DenseTooLargeError, match="max_bytes"):
        op.dense(max_bytes=need)  # the matrix alone fits, the identity block does not
    assert op.dense(max_bytes=need + 2 * 100 * 8).shape == (100, 100)  # one column at a time fits


_PEAK_SCRIPT = """
import sys, torch
from wdecomp.linop import aslinop

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

p = int(sys.argv[1])
d = torch.linspace(1, 2, p, dtype=torch.float64)
aslinop(lambda V: d[:200, None] * V, shape=(200, 200)).dense()  # warm-up: code paths, allocator
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident size (VmHWM) to the current one
base = rss("VmRSS:")
limit = p * p * 8 + 2 * p * 16 * 8  # the matrix and a 16-column identity block with its product
M = aslinop(lambda V: d[:, None] * V, shape=(p, p)).dense(max_bytes=limit)
print((rss("VmHWM:") - base) / limit)
"""


def test_dense_peak_memory_stays_within_max_bytes():
    """Measured in its own process (peak resident size, VmHWM, reset just before): at its limit
    the dense path peaks at max_bytes (the old to_dense peaked at 3.6x in this measurement: a
    copy for M + M^T and another for the scaling)."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, "2000"], capture_output=True, text=True,
                          timeout=300, check=True)
    ratio = float(proc.stdout.split()[-1])
    assert 0.9 <= ratio <= 1.05, f"dense peak {ratio:.2f} x max_bytes"


@pytest.mark.refuses("a complex vector given to a real operator",
                     "the imaginary part would be silently dropped; multiply real and imaginary parts separately")
def test_complex_inputs_and_operators_are_refused():
    op = aslinop(_sym(10))
    with pytest.raises(DtypeError, match="imaginary"):
        op @ torch.ones(10, dtype=torch.complex128)
    with pytest.raises(DtypeError, match="complex"):
        aslinop(torch.eye(4, dtype=torch.complex64))


@pytest.mark.refuses("an operator whose product is NaN or inf",
                     "every product is checked once in the operator base; fix the loss, weights or matrix")
def test_non_finite_products_raise_a_typed_error():
    A = _sym(10)
    A[3, 4] = float("nan")
    op = aslinop(A)
    with pytest.raises(NonFiniteError, match="not finite"):
        op @ torch.ones(10, dtype=F64)
    assert op.matvecs == 0  # a refused product is not counted


@pytest.mark.refuses("a vector of the wrong length, or a product of the wrong shape",
                     "shapes are checked on the way in and out of every operator")
def test_shapes_are_checked_in_and_out():
    op = aslinop(_sym(10))
    with pytest.raises(ShapeError, match=r"\(10,\) or \(10, k\)"):
        op @ torch.ones(11, dtype=F64)
    bad = aslinop(lambda V: V[:-1], shape=(10, 10))
    with pytest.raises(ShapeError, match="returned shape"):
        bad @ torch.ones(10, 2, dtype=F64)
    with pytest.raises(ShapeError, match="square"):
        aslinop(torch.ones(3, 4, dtype=F64))
    assert isinstance(aslinop(torch.ones(3, 4, dtype=F64), square=False), TensorOperator)


def test_curvature_operators_are_linops_with_one_counter():
    from torch import nn

    from wdecomp.curvature import ggn, hessian
    from wdecomp.objective import Objective

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(8, 3, dtype=F64), torch.randint(0, 2, (8,))
    for make in (hessian, ggn):
        op = make(Objective(model, (x, y), loss="cross_entropy"))
        assert isinstance(op, LinOp) and aslinop(op) is op
        D = op.dense()
        assert op.matvecs == op.matvec_count == op.shape[0]
        assert torch.equal(D, D.T)
        v = torch.randn(op.shape[0], dtype=F64)
        torch.testing.assert_close(torch.as_tensor(op.to_scipy().matvec(v.numpy())), D @ v, rtol=1e-10, atol=1e-12)
