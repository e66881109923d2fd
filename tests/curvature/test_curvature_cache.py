"""Cached product records (the Hessian's pullbacks; the GGN's and Fisher's Jacobian pullbacks):
exact, never stale, never shared, in float64."""

from __future__ import annotations

import importlib

import pytest
import torch
from _zoo import DT, cases, dense_ggn, dense_hessian, per_example_gradients, total_count, true_fisher_by_enumeration
from torch import nn

import wdecomp as wd

# the module (``wdecomp.curvature.hessian`` as an attribute is the function of that name)
hessian_module = importlib.import_module("wdecomp.curvature.hessian")
RTOL = 1e-10


def _case(name):
    return {c.name: c for c in cases()}[name]


def _objective(case):
    return wd.Objective(case.model, case.data, loss=case.loss)


def _uncached(case, objective=None):
    """An independent rule: forward-over-reverse, rebuilt on every call."""
    obj = objective if objective is not None else _objective(case)
    return wd.hessian(obj, params=case.params, method="forward-over-reverse")


def _close(a, b, scale=None):
    scale = float(b.abs().max()) if scale is None else scale
    torch.testing.assert_close(a, b, rtol=RTOL, atol=RTOL * max(scale, 1e-300))


def _count_calls(monkeypatch, name, *modules):
    """Replace the function ``name`` (one and the same in every module) by a wrapper that counts
    its calls; the list of calls, one entry each."""
    calls = []
    real = getattr(importlib.import_module(modules[0]), name)

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    for module in modules:
        assert getattr(importlib.import_module(module), name) is real
        monkeypatch.setattr(importlib.import_module(module), name, counting)
    return calls


@pytest.fixture
def count_builds(monkeypatch):
    """Count the ``vjp`` calls that record a gradient graph (one per build of a pullback)."""
    return _count_calls(monkeypatch, "vjp", "wdecomp.curvature.hessian")


# (case, cache setting that makes it cache): one-batch cases cache under "auto", multi-batch need True
CACHED = [
    ("layernorm", "auto"),
    ("tied_embedding", "auto"),
    ("param_subset", "auto"),
    ("tanh_mlp", True),
    ("attention_seq", True),
    ("conv_pool", True),
    ("batchnorm_eval", True),
]


@pytest.mark.parametrize("name,cache", CACHED)
def test_cached_products_equal_uncached_and_dense(name, cache, count_builds):
    case = _case(name)
    obj = _objective(case)
    H = wd.hessian(obj, params=case.params, cache=cache, chunk_size=3)
    assert H.caching
    ref = _uncached(case, obj)
    D = dense_hessian(case)
    g = torch.Generator().manual_seed(1)
    p = H.shape[0]
    v = torch.randn(p, generator=g, dtype=DT)
    small = torch.randn(p, 2, generator=g, dtype=DT)  # one vmap chunk
    big = torch.randn(p, 8, generator=g, dtype=DT)  # three chunks of at most 3
    for x in (v, small, big):
        out = H @ x
        _close(out, ref @ x)
        _close(out, D @ x)
    _close(H.dense(), D)
    # every product after the first reused the one pullback per batch
    assert len(count_builds) == obj.num_batches
    assert len(H._entries) == obj.num_batches
    assert H.matvec_count == 1 + 2 + 8 + p


def test_cache_modes_decide_when_to_cache():
    one, many = _case("layernorm"), _case("tanh_mlp")
    assert wd.hessian(_objective(one)).caching
    assert wd.hessian(_objective(one), method="reverse-over-reverse").caching
    assert not wd.hessian(_objective(one), method="forward-over-reverse").caching
    assert not wd.hessian(_objective(one), cache=False).caching
    assert not wd.hessian(_objective(many)).caching
    assert wd.hessian(_objective(many), cache=True).caching
    with pytest.raises(ValueError, match="cache=True.*forward-over-reverse"):
        wd.hessian(_objective(one), method="forward-over-reverse", cache=True)
    with pytest.raises(ValueError, match="cache"):
        wd.hessian(_objective(one), cache="always")


def test_auto_method_uses_the_cached_pullback_for_blocks(monkeypatch):
    case = _case("layernorm")
    H = wd.hessian(_objective(case), chunk_size=4)
    D = dense_hessian(case)

    def no_jvp(*args, **kwargs):
        raise AssertionError("forward-over-reverse used while caching")

    monkeypatch.setattr(hessian_module, "jvp", no_jvp)
    V = torch.randn(H.shape[0], 10, dtype=DT)
    _close(H @ V, D @ V)


def test_repeated_products_are_identical():
    case = _case("attention_seq")
    H = wd.hessian(_objective(case), cache=True, chunk_size=3)
    V = torch.randn(H.shape[0], 7, dtype=DT)
    first, second = H @ V, H @ V
    assert torch.equal(first, second)
    assert torch.equal(H @ V[:, 2], H @ V[:, 2])


def _set_to(model, state):
    model.load_state_dict(state)


def _change_no_grad(model, params):
    with torch.no_grad():
        next(model.parameters()).add_(0.3)


def _change_optimizer(model, params):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()


def _change_load_state_dict(model, params):
    state = {k: v + 0.2 for k, v in model.state_dict().items()}
    model.load_state_dict(state)


def _change_through_data(model, params):
    next(model.parameters()).data.mul_(1.5)  # bypasses the version counter


def _change_vector_to_parameters(model, params):
    vec = torch.nn.utils.parameters_to_vector(model.parameters())
    torch.nn.utils.vector_to_parameters(vec, model.parameters())
    return vec  # the parameters now live in vec; changing vec changes them silently


CHANGES = {
    "no_grad_add": _change_no_grad,
    "optimizer_step": _change_optimizer,
    "load_state_dict": _change_load_state_dict,
    "through_data": _change_through_data,
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("name", ["layernorm", "tied_embedding", "attention_seq"])
def test_in_place_weight_changes_are_never_stale(name, change):
    case = _case(name)
    obj = _objective(case)
    H = wd.hessian(obj, params=case.params, cache=True)
    v = torch.randn(H.shape[0], dtype=DT)
    V = torch.randn(H.shape[0], 5, dtype=DT)
    old_v, old_V = H @ v, H @ V
    CHANGES[change](case.model, case.params)
    fresh = _uncached(case)
    new_v, new_V = H @ v, H @ V
    _close(new_v, fresh @ v)
    _close(new_V, fresh @ V)
    _close(new_v, dense_hessian(case) @ v)
    assert (new_v - old_v).abs().max() > 1e-6 * old_v.abs().max()
    assert (new_V - old_V).abs().max() > 1e-6 * old_V.abs().max()


def test_parameters_shared_with_a_reused_vector_are_never_stale():
    case = _case("layernorm")
    vec = _change_vector_to_parameters(case.model, case.params)
    H = wd.hessian(_objective(case))
    v = torch.randn(H.shape[0], dtype=DT)
    old = H @ v
    with torch.no_grad():
        vec.mul_(0.7)  # neither the parameters' version counters nor their pointers change
    new = H @ v
    _close(new, _uncached(case) @ v)
    assert (new - old).abs().max() > 1e-6 * old.abs().max()


def test_changes_outside_the_selection_are_never_stale():
    """The loss also reads unselected weights, buffers and train/eval flags."""
    case = _case("param_subset")  # selects 0.weight and 2.bias
    H = wd.hessian(_objective(case), params=case.params)
    v = torch.randn(H.shape[0], dtype=DT)
    old = H @ v
    with torch.no_grad():
        case.model[2].weight.mul_(2.0)
    new = H @ v
    _close(new, _uncached(case) @ v)
    assert (new - old).abs().max() > 1e-6 * old.abs().max()

    bn = _case("batchnorm_eval")
    obj = _objective(bn)
    H = wd.hessian(obj, cache=True)
    old = H @ torch.ones(H.shape[0], dtype=DT)
    bn.model[1].running_var.mul_(3.0)  # a buffer, in place
    new = H @ torch.ones(H.shape[0], dtype=DT)
    _close(new, wd.hessian(obj, cache=False) @ torch.ones(H.shape[0], dtype=DT))
    assert (new - old).abs().max() > 1e-6 * old.abs().max()


class _ModeDependent(nn.Module):
    """Deterministic, but a different function in training mode."""

    def forward(self, h):
        return torch.tanh(h) if self.training else torch.sin(h)


def test_a_train_eval_switch_is_never_stale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), _ModeDependent(), nn.Linear(4, 3)).to(DT)
    x, y = torch.randn(6, 3, dtype=DT), torch.randint(0, 3, (6,))
    obj = wd.Objective(model, (x, y))
    H = wd.hessian(obj)
    v = torch.randn(H.shape[0], dtype=DT)
    old = H @ v
    model.eval()
    new = H @ v
    _close(new, wd.hessian(obj, cache=False) @ v)
    assert (new - old).abs().max() > 1e-6 * old.abs().max()


def test_batch_changed_in_place_is_never_stale():
    case = _case("layernorm")
    # by default the data fingerprint refuses a changed batch (tests/objective); opted out, the
    # cache must still never be stale
    obj = wd.Objective(case.model, case.data, loss=case.loss, check_deterministic=False)
    H = wd.hessian(obj)
    v = torch.randn(H.shape[0], dtype=DT)
    old = H @ v
    case.data[0][0].mul_(-2.0)  # the objective holds this very tensor
    new = H @ v
    _close(new, wd.hessian(obj, cache=False) @ v)
    _close(new, dense_hessian(case) @ v)
    assert (new - old).abs().max() > 1e-6 * old.abs().max()


def _resampled_fresh(A, obj, uncached):
    """``A`` (caching) makes a product, then ``R = A.resample([1, 1, 0])``: ``R`` starts with an
    empty cache of its own and its product equals ``uncached`` on that subset; ``(R, v)``."""
    v = torch.randn(A.shape[0], dtype=DT)
    A @ v
    R = A.resample([1, 1, 0])
    assert R._entries == {} and R._entries is not A._entries
    _close(R @ v, uncached(obj.subset([1, 1, 0])) @ v)
    return R, v


def test_resample_and_restrict_get_their_own_fresh_caches():
    case = _case("attention_seq")
    obj = _objective(case)
    H = wd.hessian(obj, cache=True, chunk_size=3)
    R, v = _resampled_fresh(H, obj, lambda sub: wd.hessian(sub, method="forward-over-reverse"))
    assert len(R._entries) == 3 and len(H._entries) == 2
    names = ["q.weight", "unembed.weight"]
    S = H.restrict(names)
    sub = S.params.numel
    w = torch.randn(sub, 4, dtype=DT)
    _close(S @ w, wd.hessian(obj, params=names, method="forward-over-reverse") @ w)
    # after a weight change every operator sees it, whatever it cached before
    with torch.no_grad():
        case.model.q.weight.mul_(1.7)
    _close(R @ v, wd.hessian(obj.subset([1, 1, 0]), method="forward-over-reverse") @ v)
    _close(S @ w, wd.hessian(obj, params=names, method="forward-over-reverse") @ w)
    _close(H @ v, dense_hessian(case) @ v)


def test_clear_cache_rebuilds_and_stays_exact(count_builds):
    case = _case("tied_embedding")
    H = wd.hessian(_objective(case))
    v = torch.randn(H.shape[0], dtype=DT)
    first = H @ v
    H @ v
    assert len(count_builds) == 1
    H.clear_cache()
    assert H._entries == {}
    assert torch.equal(H @ v, first)
    assert len(count_builds) == 2


def test_float32_cached_passes_its_self_check():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    H = wd.hessian(wd.Objective(model, (x, y)))
    assert H.caching and H.check().passed


# ----------------------------------------------------------------------------- GGN and Fisher
def _empirical_fisher(case):
    G = per_example_gradients(case)
    return G.T @ G / total_count(case)


#: operator builder and independent dense float64 reference, per kind
OUTPUT_KINDS = {
    "ggn": (lambda obj, **kw: wd.ggn(obj, **kw), dense_ggn),
    "fisher_true": (lambda obj, **kw: wd.fisher(obj, kind="true", **kw), true_fisher_by_enumeration),
    "fisher_empirical": (lambda obj, **kw: wd.fisher(obj, kind="empirical", **kw), _empirical_fisher),
}


@pytest.fixture
def count_records(monkeypatch):
    """Count the Jacobian records built (one per batch and cache build)."""
    return _count_calls(monkeypatch, "jacobian_maps", "wdecomp.curvature.ggn", "wdecomp.curvature.fisher")


@pytest.mark.parametrize("kind", list(OUTPUT_KINDS))
@pytest.mark.parametrize("name,cache", [("layernorm", "auto"), ("tied_embedding", "auto"), ("param_subset", "auto"),
                                        ("attention_seq", True), ("conv_pool", True)])
def test_cached_ggn_and_fisher_equal_uncached_and_dense(kind, name, cache, count_records):
    build, reference = OUTPUT_KINDS[kind]
    case = _case(name)
    obj = _objective(case)
    A = build(obj, params=case.params, cache=cache, chunk_size=3)
    assert A.caching
    plain = build(obj, params=case.params, cache=False)
    D = reference(case)
    g = torch.Generator().manual_seed(2)
    v = torch.randn(A.shape[0], generator=g, dtype=DT)
    V = torch.randn(A.shape[0], 7, generator=g, dtype=DT)  # three chunks of at most 3
    for x in (v, V, v):
        out = A @ x
        _close(out, plain @ x)
        _close(out, D @ x)
    assert len(count_records) == len(case.data)  # built once per batch, reused by every product
    forwards = []
    handle = case.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        assert torch.equal(A @ V, A @ V)
    finally:
        handle.remove()
    assert forwards == []  # a cached product runs no forward pass at all


def _switch_mode(model):
    model.train()


def _change_weight(model):
    with torch.no_grad():
        next(model.parameters()).data.mul_(1.5)  # through .data: no version counter moves


@pytest.mark.parametrize("kind", list(OUTPUT_KINDS))
def test_ggn_and_fisher_caches_are_never_stale(kind, count_records):
    build, reference = OUTPUT_KINDS[kind]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), _ModeDependent(), nn.Linear(4, 3)).to(DT).eval()
    x, y = torch.randn(6, 3, dtype=DT), torch.randint(0, 3, (6,))
    data = [(x, y)]
    obj = wd.Objective(model, data, check_deterministic=False)  # in-place data edits are the point
    A = build(obj)
    v = torch.randn(A.shape[0], dtype=DT)
    last = A @ v
    builds = len(count_records)
    for change in (
        lambda: _change_weight(model),
        lambda: x.mul_(-2.0),  # the objective holds this very tensor
        lambda: _switch_mode(model),
    ):
        change()
        new = A @ v
        _close(new, build(obj, cache=False) @ v)
        assert (new - last).abs().max() > 1e-6 * last.abs().max()
        assert len(count_records) == builds + 1  # exactly one rebuild per change
        builds, last = len(count_records), new
    case = type("C", (), {})()
    case.model, case.data, case.params, case.loss = model, data, None, "cross_entropy"
    _close(last, reference(case) @ v)


def test_ggn_restrict_and_resample_get_fresh_caches():
    case = _case("attention_seq")
    obj = _objective(case)
    G = wd.ggn(obj, cache=True, chunk_size=3)
    _, v = _resampled_fresh(G, obj, lambda sub: wd.ggn(sub, cache=False))
    G.clear_cache()
    assert G._entries == {}
    _close(G @ v, dense_ggn(case) @ v)


def test_ggn_and_fisher_reject_an_unknown_cache_setting():
    obj = _objective(_case("layernorm"))
    with pytest.raises(ValueError, match="cache setting 'always'"):
        wd.ggn(obj, cache="always")
    with pytest.raises(ValueError, match="cache setting 1"):
        wd.fisher(obj, cache=1)


# ----------------------------------------------------------------------------- the per-call checks
cache_module = importlib.import_module("wdecomp.curvature._cache")


@pytest.fixture
def count_fingerprints(monkeypatch):
    """Count the passes over a batch's data that fingerprint it (the objective's data check)."""
    return _count_calls(monkeypatch, "fingerprint", "wdecomp.batch")


@pytest.mark.parametrize("kind", ["hessian", *OUTPUT_KINDS])
def test_a_cached_batch_is_read_once_per_product_and_a_changed_one_still_refused(kind, count_fingerprints):
    """The bit-for-bit comparison with the private copy vouches for the batch's fingerprint, so a
    cached product makes no second pass over the data; an in-place edit is still refused."""
    case = _case("layernorm")
    x, y = case.data[0]
    data = [(x.clone(), y.clone())]
    obj = wd.Objective(case.model, data, loss=case.loss)  # check_deterministic on (the default)
    A = wd.hessian(obj) if kind == "hessian" else OUTPUT_KINDS[kind][0](obj)
    assert A.caching
    v = torch.randn(A.shape[0], dtype=DT)
    first = A @ v
    count_fingerprints.clear()
    again = A @ v
    assert count_fingerprints == []
    assert torch.equal(again, first)
    data[0][0][1, 2] += 0.5  # in place, one entry
    with pytest.raises(wd.DataError, match="batch 0 differs"):
        A @ v


def test_a_cast_batch_is_still_fingerprinted(count_fingerprints):
    """float64 data for a float32 model: the batch the operator copies is a cast of what was read,
    so it cannot vouch for the read batch, which is fingerprinted on every pass; a change the
    cast rounds away is still refused."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(6, 3, dtype=DT), torch.randint(0, 3, (6,))
    data = [(x, y)]
    H = wd.hessian(wd.Objective(model, data))
    v = torch.randn(H.shape[0])
    H @ v
    count_fingerprints.clear()
    H @ v
    assert len(count_fingerprints) == 1
    before = x[0, 0].item()
    x[0, 0] += 1e-12 * abs(before)  # in place, below float32's resolution
    assert x[0, 0].item() != before and x[0, 0].float().item() == torch.tensor(before).float().item()
    with pytest.raises(wd.DataError, match="batch 0 differs"):
        H @ v


@pytest.mark.parametrize("compare", ["memcmp", "torch.equal", "fused"])
def test_every_comparison_sees_every_change(compare, monkeypatch, count_builds):
    """On the CPU the comparison is ``memcmp`` per contiguous tensor, ``torch.equal`` of bit
    patterns for anything else (a non-contiguous parameter here); without ``memcmp``, and on other
    devices (``fused``: the CPU treated as one), the weights of a dtype are concatenated and
    compared in one ``torch.equal``, and batches tensor by tensor with ``torch.equal``."""
    if compare == "memcmp":
        assert cache_module._MEMCMP is not None
    elif compare == "torch.equal":
        monkeypatch.setattr(cache_module, "_MEMCMP", None)
    else:
        monkeypatch.setattr(cache_module, "_MEMCMP_DEVICES", ())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).to(DT).eval()
    model[0].weight = nn.Parameter(torch.randn(3, 4, dtype=DT).T)  # (4, 3), not contiguous
    assert not model[0].weight.is_contiguous()
    with torch.no_grad():
        model[1].running_mean.normal_()
    x, y = torch.randn(6, 3, dtype=DT), torch.randint(0, 3, (6,))
    obj = wd.Objective(model, (x, y), check_deterministic=False)  # the batch is edited in place below
    H = wd.hessian(obj)
    v = torch.randn(H.shape[0], dtype=DT)
    last = H @ v
    assert len(count_builds) == 1
    for change in (
        lambda: model[0].weight.data.mul_(1.5),  # the non-contiguous parameter, through .data
        lambda: model[3].weight.data.mul_(1.5),  # a contiguous one
        lambda: model[1].running_var.mul_(2.0),  # a buffer
        lambda: x.mul_(-1.5),  # the batch
    ):
        change()
        new = H @ v
        _close(new, wd.hessian(obj, method="forward-over-reverse") @ v)  # no vjp: not counted
        assert (new - last).abs().max() > 1e-6 * last.abs().max()
        last = new
    assert len(count_builds) == 5  # one build per change, none in between
    H @ v
    assert len(count_builds) == 5


def test_the_comparison_is_bit_for_bit(count_builds):
    """``0.0`` and ``-0.0`` compare equal as numbers but are different weights to the cache (a
    record on either is exact; only bit-identical weights are treated as unchanged)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0
    x, y = torch.randn(6, 3, dtype=DT), torch.randint(0, 3, (6,))
    H = wd.hessian(wd.Objective(model, (x, y)))
    v = torch.randn(H.shape[0], dtype=DT)
    first = H @ v
    model[0].weight.data[0, 0] = -0.0
    _close(H @ v, first)
    assert len(count_builds) == 2


def test_a_changed_batch_rebuilds_only_its_own_record(count_builds):
    case = _case("tanh_mlp")  # two batches
    obj = wd.Objective(case.model, case.data, loss=case.loss, check_deterministic=False)
    H = wd.hessian(obj, cache=True)
    v = torch.randn(H.shape[0], dtype=DT)
    H @ v
    assert len(count_builds) == 2
    case.data[1][0].mul_(-1.5)
    _close(H @ v, dense_hessian(case) @ v)
    assert len(count_builds) == 3
