"""Data-parallel curvature over torch.distributed: 2 gloo processes on loopback, uneven shards.

Every distributed number is compared in float64 with the same quantity from one process over
all the data (different batching too), to 1e-10 relative; ablation sweeps (global metrics, means and
degradation lists) to 1e-12. Failure tests check that a rank that
raises or hangs ends the run quickly with a clear :class:`DistributedError`.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import wdecomp as wd
from wdecomp import distributed as wdist
from wdecomp.distributed import DistributedError

DT = torch.float64
TOL = 1e-10
N_EXAMPLES = 23
# Uneven shards with different batchings: rank 0 has 13 examples in 3 batches, rank 1 has 10 in 1.
SHARDS = {0: [(0, 6), (6, 11), (11, 13)], 1: [(13, 23)]}
ONE_PROCESS_BATCHES = [(0, 8), (8, 16), (16, 23)]


def _setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT) * 0.7)
    x = torch.randn(N_EXAMPLES, 5, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (N_EXAMPLES,), generator=gen)
    return model, x, y


def _probe_block(p: int) -> torch.Tensor:
    return torch.randn(p, 3, generator=torch.Generator().manual_seed(11), dtype=DT)


def _has_module(name: str) -> bool:
    import importlib

    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _quantities(model: nn.Module, batches: list, distributed: bool) -> dict[str, torch.Tensor]:
    """Everything compared between one process and two: products, value, gradient, spectra, Gram."""
    obj = wd.Objective(model, batches, loss="cross_entropy", distributed=distributed)
    H = wd.hessian(obj)
    V = _probe_block(H.shape[0])
    out = {
        "value": torch.tensor(obj.value(), dtype=DT),
        "gradient": obj.gradient(),
        "total_count": torch.tensor(float(obj.total_count), dtype=DT),
        "hessian": H @ V,
        "hessian_rr": wd.hessian(obj, method="reverse-over-reverse") @ V,
        "ggn": wd.ggn(obj) @ V,
        "fisher_empirical": wd.fisher(obj) @ V,
        "fisher_true": wd.fisher(obj, kind="true") @ V,
        "hessian_fd": H._finite_difference(V[:, 0], 1e-4),
    }
    from wdecomp.spectral import eigh

    out["eigenvalues"] = eigh(H, k=3, which="largest").eigenvalues
    if _has_module("wdecomp.spectral.trace"):
        from wdecomp.spectral.trace import hutchinson_trace

        out["trace"] = torch.tensor(hutchinson_trace(H, 8, seed=3).estimate, dtype=DT)
    from wdecomp.spectral.rank import rank

    out["rank_ggn"] = torch.tensor(float(int(rank(wd.ggn(obj), method="dense"))), dtype=DT)
    if _has_module("wdecomp.bases.capture"):
        from wdecomp.bases.capture import gram_matrices
        from wdecomp.bases.interaction import interaction_basis, interaction_matrix

        out["gram_capture"] = gram_matrices(model, batches, ["1"], constant=True, distributed=distributed)["1"].gram
        # Per-rank mean Gram weighted by its vector count: the global mean Gram (uneven shards).
        g = gram_matrices(model, batches, ["1"])["1"]
        out["gram_weighted"], _ = wdist.reduce_mean_weighted(g.gram * g.count, g.count, distributed)
        out["interaction_matrix"] = interaction_matrix(model, batches, "1", "2", distributed=distributed)
        out["lib_eigenvalues"] = interaction_basis(model, batches, ["1", "2"], distributed=distributed)["1"].eigenvalues
    # Activation Gram of the hidden layer, summed over examples and reduced like the products.
    gram = torch.zeros(6, 6, dtype=DT)
    with torch.no_grad():
        for xb, _ in batches:
            a = model[1](model[0](xb))
            gram += a.T @ a
    out["gram"] = wdist.reduce_sum(gram, distributed)
    mean, count = wdist.reduce_mean_weighted(gram.trace(), sum(len(xb) for xb, _ in batches), distributed)
    out["gram_trace_mean"] = mean
    out["gram_count"] = torch.tensor(float(count), dtype=DT)
    return out


def _raises(fn) -> bool:
    try:
        fn()
    except DistributedError:
        return True
    return False


def _worker(rank: int, world_size: int) -> dict:
    model, x, y = _setup()
    local = [(x[a:b], y[a:b]) for a, b in SHARDS[rank]]
    out = _quantities(model, local, distributed=True)
    wdist.check_replicated(model)
    out["factors_refused"] = _raises(lambda: next(wd.ggn(wd.Objective(model, local, distributed=True)).factor_chunks()))
    out["per_sample_refused"] = _raises(lambda: wd.per_sample_gradients(wd.Objective(model, local, distributed=True)))
    with torch.no_grad():
        model[0].bias[0] += rank  # weights now differ between ranks: every rank must refuse
    out["mismatch_refused"] = _raises(lambda: wdist.check_replicated(model))
    out["rank"], out["world_size"] = wdist.get_rank(), wdist.get_world_size()
    return out


def _timed_launch(worker, label: str, timeout_s: float) -> list[dict]:
    start = time.monotonic()
    results = wdist.launch(worker, 2, timeout_s=timeout_s, pg_timeout_s=60)
    print(f"2-process {label}: {time.monotonic() - start:.1f} s")
    return results


@pytest.fixture(scope="module")
def two_process_results() -> list[dict]:
    return _timed_launch(_worker, "run", 180)


@pytest.fixture(scope="module")
def one_process_results() -> dict:
    model, x, y = _setup()
    return _quantities(model, [(x[a:b], y[a:b]) for a, b in ONE_PROCESS_BATCHES], distributed=False)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


QUANTITIES = [
    "value", "gradient", "total_count", "hessian", "hessian_rr", "ggn", "fisher_empirical",
    "fisher_true", "eigenvalues", "trace", "rank_ggn", "gram_capture", "gram_weighted",
    "interaction_matrix", "lib_eigenvalues", "gram", "gram_trace_mean", "gram_count",
]


@pytest.mark.parametrize("name", QUANTITIES)
def test_two_processes_match_one(name: str, two_process_results: list[dict], one_process_results: dict) -> None:
    if name not in one_process_results:
        pytest.skip(f"{name}: the module computing it is not available")
    ref = one_process_results[name]
    for rank, res in enumerate(two_process_results):
        err = _rel(res[name], ref)
        assert err <= TOL, f"rank {rank}: {name} differs from one process by {err:.2e} (relative)"
    # Every rank holds bitwise the same reduced result, so replicated algorithms stay in lockstep.
    assert torch.equal(two_process_results[0][name], two_process_results[1][name])


def test_finite_difference_reference_is_reduced(two_process_results: list[dict], one_process_results: dict) -> None:
    # A finite difference, so only to its own accuracy; what matters is that it is the global one.
    assert _rel(two_process_results[0]["hessian_fd"], one_process_results["hessian_fd"]) < 1e-8
    assert _rel(two_process_results[0]["hessian_fd"], one_process_results["hessian"][:, 0]) < 1e-5


def test_ranks_and_refusals(two_process_results: list[dict]) -> None:
    assert [r["rank"] for r in two_process_results] == [0, 1]
    assert all(r["world_size"] == 2 for r in two_process_results)
    assert all(r["per_sample_refused"] for r in two_process_results)
    assert all(r["factors_refused"] for r in two_process_results)
    assert all(r["mismatch_refused"] for r in two_process_results)


# ------------------------------------------------------------------------------ no process group
def test_distributed_objective_without_group_is_a_clear_error() -> None:
    model, x, y = _setup()
    assert not wdist.is_distributed()
    with pytest.raises(DistributedError, match="init_process_group"):
        wd.Objective(model, (x, y), distributed=True)
    with pytest.raises(DistributedError, match="process group"):
        wdist.all_reduce_sum(torch.ones(2))


def test_single_process_helpers() -> None:
    t = torch.arange(4.0)
    assert wdist.get_rank() == 0 and wdist.get_world_size() == 1 and wdist.is_main_process()
    assert wdist.reduce_sum(t, False) is t
    assert wdist.broadcast(t) is t
    mean, n = wdist.reduce_mean_weighted(t.sum(), 4, False)
    assert float(mean) == 1.5 and n == 4
    assert [list(wdist.shard_range(7, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(DistributedError):
        wdist.shard_range(1, 0, 2)


# ------------------------------------------------------------------------------ failures
def _raising_worker(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("boom on rank 1")
    wdist.all_reduce_sum(torch.ones(3))  # rank 0 waits here for a rank that will never come


def _hanging_worker(rank: int, world_size: int) -> None:
    if rank == 1:
        time.sleep(120)
    wdist.all_reduce_sum(torch.ones(3))


def test_a_rank_that_raises_ends_the_run_with_its_error() -> None:
    # Both timeouts are long: the run must end because rank 1 failed, not because one expired.
    start = time.monotonic()
    with pytest.raises(DistributedError, match=r"(?s)rank 1 of 2 failed first.*boom on rank 1"):
        wdist.launch(_raising_worker, 2, timeout_s=120, pg_timeout_s=120)
    assert time.monotonic() - start < 60


def test_a_rank_that_hangs_is_named_not_its_waiting_peer() -> None:
    # Rank 0's collective times out after pg_timeout_s because rank 1 hangs: the report blames rank 1
    # (where it is stuck, from its stack) and says rank 0 only timed out waiting for it.
    start = time.monotonic()
    with pytest.raises(DistributedError) as exc:
        wdist.launch(_hanging_worker, 2, timeout_s=120, pg_timeout_s=3)
    message = str(exc.value)
    assert message.startswith("rank 1 of 2 hung"), message
    assert "_hanging_worker" in message.splitlines()[0]
    assert "rank 0 timed out waiting for it" in message
    assert "rank 0 of 2 failed first" not in message
    assert time.monotonic() - start < 60


def test_launcher_wall_clock_timeout_kills_ranks_and_names_the_hung_one() -> None:
    start = time.monotonic()
    # 25 s: long enough for both ranks to start on a loaded machine, so both have a stack to read
    with pytest.raises(DistributedError) as exc:
        wdist.launch(_hanging_worker, 2, timeout_s=25, pg_timeout_s=60)
    message = str(exc.value)
    assert "did not finish within 25 s: rank(s) [0, 1] still running" in message
    assert "rank 1 of 2 hung outside any collective" in message and "_hanging_worker" in message
    assert "rank 0 of 2 was waiting in a collective" in message
    assert time.monotonic() - start < 40


def test_failure_report_reads_only_complete_reports(tmp_path) -> None:
    # rank 1 is still writing its report (a temp file) and an old-style report has an empty stamp:
    # neither may turn into "could not convert string to float: ''".
    (tmp_path / "rank0.err").write_text("12.5\nTraceback...\nValueError: boom on rank 0\n")
    (tmp_path / ".rank1.err.4242.tmp").write_text("")
    assert wdist._failure_report(str(tmp_path), 2).startswith("rank 0 of 2 failed first:")
    (tmp_path / "rank1.err").write_text("")
    report = wdist._failure_report(str(tmp_path), 2)
    assert report.startswith("rank 0 of 2 failed first:") and "rank 1 failed afterwards" in report


# ------------------------------------------------------------------------------ ablation
# A few hundred examples on uneven shards (rank 0: 117 in 3 batches, rank 1: 83 in 2), against one
# process with another batching. Mean ablation needs the global activation means, every metric the
# global sums, and the degradation list global example indices and the global top N.
ABL_EXAMPLES = 200
ABL_SHARDS = {0: [(0, 50), (50, 100), (100, 117)], 1: [(117, 160), (160, 200)]}
ABL_ONE_PROCESS_BATCHES = [(0, 64), (64, 128), (128, 192), (192, 200)]
ABL_TOP_N = 7
ABL_FIELDS = ("loss", "delta_loss", "kl", "accuracy", "recovered_zero", "recovered_mean", "compute_equivalent",
              "parameter_equivalent")


def _ablation_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(ABL_EXAMPLES, 5, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (ABL_EXAMPLES,), generator=gen)
    return x, y


def _ablation_results(model: nn.Module, batches: list, distributed: bool) -> dict:
    """Every row of zero- and mean-ablation sweeps of activation and weight components, as plain data."""
    from wdecomp import scaling
    from wdecomp.ablation import WeightComponents, ablation_sweep
    from wdecomp.bases.base import LayerBasis
    from wdecomp.params import select_parameters

    gen = torch.Generator().manual_seed(23)
    C = torch.randn(6, 6, generator=gen, dtype=DT) + 3 * torch.eye(6, dtype=DT)
    basis = LayerBasis("1", C, torch.linalg.inv(C), torch.rand(6, generator=gen, dtype=DT),
                       torch.randn(6, generator=gen, dtype=DT), "test")
    ps = select_parameters(model, "2")
    V = torch.linalg.qr(torch.randn(ps.numel, ps.numel, generator=gen, dtype=DT))[0]
    weights = WeightComponents.from_params(ps, V, torch.rand(ps.numel, generator=gen, dtype=DT), model=model)
    law = scaling.ChinchillaLaw(E=0.5, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    obj = wd.Objective(model, batches, loss="cross_entropy", distributed=distributed)
    out: dict = {"value": obj.value()}
    for name, comps, ks in (("activation", basis, [0, 2, 6]), ("weight", weights, [0, 5, 21])):
        for method in ("zero", "mean"):
            res = ablation_sweep(model, comps, obj, k=ks, method=method, law=law, tokens=1e13, top_n=ABL_TOP_N,
                                 progress=False)
            rows = [res.original, res.zero_baseline, res.mean_baseline, *res.levels]
            out[f"{name}/{method}"] = {
                "n_terms": res.n_terms,
                "rows": [{f: getattr(r, f) for f in ABL_FIELDS} for r in rows],
                "degradation": [[(d.example, d.position, d.original, d.ablated) for d in r.degradation]
                                for r in res.levels],
            }
    return out


def _ablation_worker(rank: int, world_size: int) -> dict:
    model, _, _ = _setup()
    x, y = _ablation_data()
    return _ablation_results(model, [(x[a:b], y[a:b]) for a, b in ABL_SHARDS[rank]], distributed=True)


@pytest.fixture(scope="module")
def two_process_ablation() -> list[dict]:
    return _timed_launch(_ablation_worker, "ablation run", 120)


@pytest.fixture(scope="module")
def one_process_ablation() -> dict:
    model, _, _ = _setup()
    x, y = _ablation_data()
    return _ablation_results(model, [(x[a:b], y[a:b]) for a, b in ABL_ONE_PROCESS_BATCHES], distributed=False)


def _close(a: float | None, b: float | None, tol: float = 1e-12, scale: float = 1e-300) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= tol * max(abs(b), scale)


@pytest.mark.parametrize("key", ["activation/zero", "activation/mean", "weight/zero", "weight/mean"])
def test_distributed_ablation_matches_one_process(key: str, two_process_ablation: list[dict],
                                                  one_process_ablation: dict) -> None:
    ref = one_process_ablation[key]
    # every rank holds bitwise the same result: global metrics, not rank-local ones
    assert two_process_ablation[0][key] == two_process_ablation[1][key]
    got = two_process_ablation[0][key]
    assert got["n_terms"] == ref["n_terms"] == ABL_EXAMPLES
    for row, want in zip(got["rows"], ref["rows"], strict=True):
        for f in ABL_FIELDS:
            # loss recovered is 1 - (a ratio of loss differences): relative to 1, as it is exactly 0 where a
            # level equals its baseline
            scale = 1.0 if f.startswith("recovered") else 1e-300
            assert _close(row[f], want[f], scale=scale), f"{key} {f}: {row[f]!r} vs one process {want[f]!r}"
    for level, want in zip(got["degradation"], ref["degradation"], strict=True):
        assert len(level) == len(want) == ABL_TOP_N
        assert [(e, p) for e, p, _, _ in level] == [(e, p) for e, p, _, _ in want]
        for (_, _, o, a), (_, _, wo, wa) in zip(level, want):
            assert _close(o, wo) and _close(a, wa)
    # ablating nothing: nothing degrades, so the ties give the first examples in global order
    assert [e for e, _, _, _ in got["degradation"][0]] == list(range(ABL_TOP_N))
    # the global top N draws on both shards (rank 1's examples carry its global offset, 117)
    examples = {e for level in got["degradation"][1:] for e, _, _, _ in level}
    assert min(examples) < 117 <= max(examples) < ABL_EXAMPLES


def test_distributed_ablation_of_nothing_is_the_objective_value(two_process_ablation: list[dict]) -> None:
    for res in two_process_ablation:
        for key in ("activation/zero", "activation/mean", "weight/zero", "weight/mean"):
            assert res[key]["rows"][0]["loss"] == res["value"]  # original, bit for bit
            assert res[key]["rows"][3]["loss"] == res["value"]  # level k = 0
