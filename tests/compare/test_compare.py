"""compare_decompositions: PCA rows against the covariance spectrum, the identity SAE exact, LIB rows
against a direct splice, equivalents with intervals, refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _zoo import TinyLM, identity_sae

from wdecomp.ablation import splice
from wdecomp.bases import interaction_basis
from wdecomp.compare import compare_decompositions, truncation
from wdecomp.errors import SelectionError
from wdecomp.scaling import ChinchillaLaw, fit

DT = torch.float64


@pytest.fixture(scope="module")
def setup():
    model = TinyLM().to(DT).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        data = [(x, model(x).argmax(-1)) for x in (torch.randint(0, 7, (4, 6), generator=g) for _ in range(3))]
    return model, data


def _ce(model, data) -> float:
    with torch.no_grad():
        return float(torch.cat([F.cross_entropy(model(x).transpose(1, 2), y, reduction="none").reshape(-1)
                                for x, y in data]).mean())


def test_rows_against_direct_computations(setup, tmp_path) -> None:
    model, data = setup
    t = compare_decompositions(model, data, "resid", saes={"identity": identity_sae(5)}, pca_k=(1, 2, 5),
                               lib_k=(2,), lib_layers=["resid", "unembed"])
    assert [r.label for r in t.rows] == ["identity", "PCA-1", "PCA-2", "PCA-5", "LIB-2"]
    rows = {r.label: r for r in t.rows}
    assert t.ce_clean == pytest.approx(_ce(model, data), rel=1e-13)
    ident = rows["identity"]
    assert ident.ce == t.ce_clean and ident.loss_recovered == 1.0 and ident.explained_variance == 1.0
    assert ident.l0 == 5.0
    # PCA: explained variance of the top-k projection = sum of the top k covariance eigenvalues / total
    with torch.no_grad():
        X = torch.cat([model.embed(x).reshape(-1, 5) for x, _ in data])
    lam = torch.linalg.eigvalsh(torch.cov(X.T, correction=0)).flip(0)
    for k in (1, 2, 5):
        assert rows[f"PCA-{k}"].explained_variance == pytest.approx(float(lam[:k].sum() / lam.sum()), rel=1e-10)
        assert rows[f"PCA-{k}"].l0 == k
    assert rows["PCA-5"].ce == pytest.approx(t.ce_clean, rel=1e-12)
    # LIB: the row is the direct splice of the truncated basis
    lib = interaction_basis(model, data, ["resid", "unembed"], method="lib")["resid"]
    with splice(model, "resid", truncation(lib, 2)):
        ce_lib = _ce(model, data)
    assert rows["LIB-2"].ce == pytest.approx(ce_lib, rel=1e-12)
    assert rows["LIB-2"].loss_recovered == pytest.approx((t.ce_zero - ce_lib) / (t.ce_zero - t.ce_clean), rel=1e-10)
    assert all(math.isnan(r.compute_equivalent) for r in t.rows)  # no law given
    assert f"CE clean **{t.ce_clean:.4f}**" in t.to_markdown()
    back = json.loads(t.to_json(tmp_path / "t.json").read_text())
    assert back["rows"][0]["label"] == "identity" and back["rows"][0]["compute_equivalent"] is None


def test_equivalents_with_interval(setup, tmp_path) -> None:
    model, data = setup
    law = ChinchillaLaw(E=0.3, A=40.0, B=60.0, alpha=0.34, beta=0.28)
    rng = np.random.default_rng(1)
    pts = np.array([(n, d, float(law.loss(n, d)) * math.exp(0.01 * rng.standard_normal()))
                    for n in (1e4, 1e5, 1e6, 1e7) for d in (1e6, 1e7, 1e8, 1e9)])
    fitted = fit(pts, n_bootstrap=20, n_starts=8, seed=0)
    t = compare_decompositions(model, data, "resid", saes={"identity": identity_sae(5)}, pca_k=(2,), law=fitted)
    ident, pca = t.rows
    assert ident.compute_equivalent == 1.0 and ident.ce_low <= 1.0 <= ident.ce_high
    assert pca.ce_low <= pca.compute_equivalent <= pca.ce_high and pca.compute_equivalent < 1
    assert t.law == fitted.law.name and "bootstrap" in t.interval_source
    png = t.plot(tmp_path / "t.png")
    assert png.stat().st_size > 5000


@pytest.mark.refuses("compare_decompositions with nothing to compare", "give saes=, pca_k=, lib_k= or others=")
def test_nothing_to_compare_refused(setup) -> None:
    model, data = setup
    with pytest.raises(SelectionError, match="nothing to compare"):
        compare_decompositions(model, data, "resid")


@pytest.mark.refuses("a PCA/LIB rank larger than the basis at the hook", "k directions cannot exceed the basis size")
def test_rank_too_large_refused(setup) -> None:
    model, data = setup
    with pytest.raises(SelectionError, match="k=6 directions requested from a basis of 5"):
        compare_decompositions(model, data, "resid", pca_k=(6,))
