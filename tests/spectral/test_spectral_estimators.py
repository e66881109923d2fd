"""Trace, diagonal and SLQ density estimators."""

import json
import math

import numpy as np
import pytest
import scipy.fft
import torch
from scipy.sparse.linalg import LinearOperator

from wdecomp.spectral import hutchinson_diagonal, hutchinson_trace, hutchpp_trace, plot_density, slq_density

F64 = torch.float64


def dct_operator(lams, seed=0):
    """PSD ``A = D C^T diag(lams) C D`` (orthonormal DCT ``C``, random signs ``D``), fast products."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=len(lams))
    lam = np.asarray(lams)

    def mm(X):
        X = X.reshape(len(lam), -1)
        Y = scipy.fft.dct(signs[:, None] * X, axis=0, norm="ortho")
        return signs[:, None] * scipy.fft.idct(lam[:, None] * Y, axis=0, norm="ortho")

    return LinearOperator((len(lam), len(lam)), matvec=mm, matmat=mm, dtype=np.float64)


def test_hutchpp_reaches_1e3_within_theory_budget():
    """Meyer et al. 2021 (arXiv 2010.09649), PSD ``A``: Hutch++ error <= c / m * tr(A).

    The proof bounds the Hutchinson part's standard deviation by
    ``sqrt(2 / l) ||A - QQ^T A||_F`` with ``l = m/3`` probes, and ``||A - QQ^T A||_F`` by
    ``~ 2 ||A - A_k||_F <= 2 tr(A) / sqrt(k)``, ``k = m/3`` — so ``std <= 6 sqrt(2) tr(A) / m``,
    and relative error ``eps`` at 3 standard deviations needs at most ``m = 18 sqrt(2) / eps``
    products for any PSD spectrum (the O(1/eps) budget). With ``||A - A_k||_F`` computed from
    the known eigenvalues the same bound gives a smaller, spectrum-aware budget; Hutch++ gets
    exactly that budget, and Hutchinson with the same budget has a standard error above 1e-3
    (its budget is O(1/eps^2)).
    """
    p, eps = 2000, 1e-3
    lams = 1.0 / np.arange(1, p + 1) ** 1.2
    tr = lams.sum()
    # smallest m (multiple of 3) with 3 * sqrt(2/(m/3)) * 2 * ||A - A_{m/3}||_F <= eps * tr
    tail = np.sqrt(np.cumsum((lams**2)[::-1])[::-1])  # tail[k] = ||A - A_k||_F
    m = next(m for m in range(3, p, 3) if 3 * math.sqrt(2 / (m / 3)) * 2 * tail[m // 3] <= eps * tr)
    assert m <= 18 * math.sqrt(2) / eps  # inside the worst-case O(1/eps) budget
    A = dct_operator(lams)
    errs = [abs(hutchpp_trace(A, m, seed=s).estimate - tr) / tr for s in range(3)]
    assert max(errs) <= eps, (m, errs)
    h = hutchinson_trace(A, m, seed=0)
    assert h.std_error / tr > eps
    assert h.matvecs == m


def test_hutchinson_standard_error_is_calibrated():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(300, 300, generator=g, dtype=F64)
    A = B @ B.T / 300
    tr = float(A.trace())
    zs = []
    for s in range(20):
        e = hutchinson_trace(A, 200, seed=s)
        zs.append((e.estimate - tr) / e.std_error)
    zs = np.array(zs)
    assert abs(zs.mean()) < 1.0 and 0.5 < zs.std() < 1.6
    # Rademacher variance 2 (||A||_F^2 - sum diag^2) / n
    se_theory = math.sqrt(2 * (float((A * A).sum()) - float((A.diagonal() ** 2).sum())) / 200)
    assert 0.7 < e.std_error / se_theory < 1.3
    d = json.loads(json.dumps(e.to_dict()))
    assert d["method"] == "hutchinson" and "trace" in str(e)


def test_hutchinson_diagonal():
    g = torch.Generator().manual_seed(1)
    D = torch.diag(torch.linspace(1, 5, 200, dtype=F64))
    r = hutchinson_diagonal(D, 4)  # exact for diagonal matrices with Rademacher probes
    assert torch.allclose(r.estimate, D.diagonal(), rtol=1e-14)
    B = torch.randn(200, 200, generator=g, dtype=F64) * 0.05
    A = D + B @ B.T
    r = hutchinson_diagonal(A, 400, seed=2)
    z = (r.estimate - A.diagonal()) / r.std_error
    assert z.abs().mean() < 1.2 and (z.abs() < 5).all()
    assert r.matvecs == 400 and "diagonal" in str(r)


def test_slq_density_integrates_to_one_and_mean_is_trace_over_p(tmp_path):
    g = torch.Generator().manual_seed(3)
    p = 800
    lams = torch.cat([torch.rand(780, generator=g, dtype=F64) * 0.1, torch.linspace(1, 5, 20, dtype=F64)])
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=F64))
    A = (Q * lams) @ Q.T
    d = slq_density(A, steps=60, num_starts=16, seed=0)
    assert abs(d.integral() - 1) < 1e-6
    assert torch.allclose(d.weights.sum(1), torch.ones(16, dtype=F64), atol=1e-12)
    # the density's mean is exactly the Hutchinson estimate from the same starts ...
    tr, se = d.trace()
    assert abs(d.mean() * p - tr) < 1e-9 * abs(tr)
    # ... and matches the true trace / p within its standard error
    true = float(lams.sum()) / p
    assert abs(d.mean() - true) <= 4 * se / p, (d.mean(), true, se / p)
    # extreme Ritz values converge: the largest node is the largest eigenvalue
    assert abs(float(d.nodes.max()) - 5.0) < 1e-8
    # eigenvalue count above a threshold (20 outliers above 0.5)
    cnt, cse = d.count_above(0.5)
    assert abs(cnt - 20) <= max(4 * cse, 1.0)
    f1 = tmp_path / "density.png"
    f2 = tmp_path / "density_log.png"
    plot_density(d, f1)
    d.plot(f2, log_y=True, log_x=True)
    for f in (f1, f2):
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000
    assert "SLQ" in str(d) and len(json.loads(json.dumps(d.to_dict()))["density"]) == 1000


def test_slq_low_rank_breakdown_is_exact():
    g = torch.Generator().manual_seed(4)
    B = torch.randn(100, 5, generator=g, dtype=F64)
    A = B @ B.T  # rank 5: Lanczos stops after <= 6 steps, quadrature exact
    d = slq_density(A, steps=30, num_starts=4)
    assert (d.weights[:, 7:] == 0).all()
    cnt, _ = d.count_above(1e-8 * float(d.nodes.max()))
    assert 0 < cnt < 100


def test_deflated_trace_is_honest_where_outliers_dominate():
    """A few outliers hold most of the trace: Hutchinson on a handful of SLQ starts is skewed and its
    standard error too small; deflating the converged outliers gives an estimate within its error bar."""
    g = torch.Generator().manual_seed(3)
    p = 400
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=F64))
    lam = torch.rand(p, generator=g, dtype=F64) * 0.05
    lam[:5] = torch.tensor([40.0, 30.0, 20.0, 15.0, 10.0], dtype=F64)
    A = (Q * lam) @ Q.T
    truth = float(lam.sum())
    d = slq_density(A, steps=40, num_starts=8, seed=0)
    est, se, k = d.deflated_trace()
    assert k >= 5
    assert abs(est - truth) <= 3 * se + 1e-9 * truth, (est, se, truth)
    plain, plain_se = d.trace()
    assert se < plain_se / 10  # the outliers' variance is gone
    assert "converged outliers deflated" in str(d)


def test_slq_count_interval_brackets_the_count():
    g = torch.Generator().manual_seed(4)
    p = 300
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=F64))
    lam = torch.cat([torch.logspace(0, -1, 60, dtype=F64), torch.zeros(p - 60, dtype=F64)])
    A = (Q * lam) @ Q.T
    d = slq_density(A, steps=30, num_starts=16, seed=1)
    lo, hi = d.count_bounds(1e-3)
    assert (lo <= hi + 1e-12).all()
    low, high = d.count_interval(1e-3)
    assert low <= 60 <= high and high - low < 0.1 * p


@pytest.mark.refuses("SLQ with zero steps or zero starts; a trace estimate with no products",
                     "no quadrature rule or sample exists to estimate anything from")
def test_estimators_refuse_zero_work():
    from wdecomp.errors import ArgumentError

    A = torch.eye(5, dtype=F64)
    with pytest.raises(ArgumentError):
        slq_density(A, steps=0)
    with pytest.raises(ArgumentError):
        slq_density(A, num_starts=0)
    with pytest.raises(ArgumentError):
        hutchinson_trace(A, num_matvecs=0)
    with pytest.raises(ArgumentError):
        hutchpp_trace(A, num_matvecs=2)


@pytest.mark.refuses("a NaN/inf operator given to Hutchinson, Hutch++ or SLQ",
                     "a trace or density of a non-finite operator means nothing; fix the loss or weights")
def test_estimators_refuse_non_finite_operators():
    from wdecomp.errors import NonFiniteError

    A = torch.eye(6, dtype=F64)
    A[2, 2] = float("nan")
    with pytest.raises(NonFiniteError):
        hutchinson_trace(A, num_matvecs=4)
    with pytest.raises(NonFiniteError):
        hutchpp_trace(A, num_matvecs=6)
    with pytest.raises(NonFiniteError):
        slq_density(A, steps=3, num_starts=2)
