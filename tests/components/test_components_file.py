"""Components files: a fingerprint of the weights, every tensor's shape and every name validated;
malformed files end in a wdecomp error, never a raw exception or a silent wrong load."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from _fuzz import damage_json
from _zoo import TokenPairNet, token_pairs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from wdecomp.bases import curvature_basis, interaction_basis
from wdecomp.batch import fingerprint
from wdecomp.components import Components, decompose, load_basis, load_components, save_basis, weights_fingerprint
from wdecomp.errors import FileFormatError, ModelMismatchError, WdecompError

DT = torch.float64


Net = TokenPairNet
_data = token_pairs


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A PCA components file (centred: every tensor kind) and its (header, tensors)."""
    model, data = Net().to(DT).eval(), _data()
    comps = decompose(model, interaction_basis(model, data, ["hidden", "act"], method="pca"), data)
    path = comps.save(tmp_path_factory.mktemp("c") / "comps.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["wdecomp"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return model, data, comps, path, meta, tensors


def _write(path, meta, tensors, refingerprint=True):
    """Write a (possibly malformed) components file; by default with a tensors fingerprint that
    matches the tensors written, so shape and value checks are reached."""
    meta = copy.deepcopy(meta) if isinstance(meta, dict) else meta
    if refingerprint and isinstance(meta, dict):
        meta["tensors_fingerprint"] = fingerprint({k: tensors[k].contiguous() for k in sorted(tensors)})
    header = meta if isinstance(meta, str) else json.dumps(meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"wdecomp": header})
    return path


def _same(a: Components, b: Components) -> bool:
    return a.basis.layers == b.basis.layers and all(
        torch.equal(a.basis[p].transform, b.basis[p].transform) and torch.equal(a.basis[p].inverse, b.basis[p].inverse)
        and torch.equal(a.basis[p].eigenvalues, b.basis[p].eigenvalues) for p in a.basis.layers)


def test_round_trip_keeps_the_weights_fingerprint(saved, tmp_path):
    model, data, comps, path, meta, _ = saved
    assert meta["weights_fingerprint"] == weights_fingerprint(model) == comps.fingerprint
    again = Components.load(path, model)
    assert _same(again, comps) and again.adjacency == comps.adjacency and again.verify(model, data) < 1e-10
    cb = curvature_basis(model, data[:1], "out.weight", kind="ggn")
    p = save_basis(cb, tmp_path / "cb.safetensors", model=model)
    assert torch.equal(load_basis(p, model).eigenvectors, cb.eigenvectors)


@pytest.mark.refuses("a components file loaded with a same-shaped model that has other weights",
                     "the file stores a fingerprint of the weights it was saved with; load it with that model, "
                     "or pass weights='warn'")
def test_other_weights_are_refused_or_warned(saved):
    model, data, comps, path, *_ = saved
    other = Net(seed=1).to(DT).eval()
    with pytest.raises(ModelMismatchError, match="other weights"):
        load_components(path, other)
    with pytest.warns(UserWarning, match="other weights"):
        again = load_components(path, other, weights="warn")
    assert _same(again, comps)
    with pytest.raises(WdecompError, match="weights must be one of"):
        load_components(path, model, weights="ignore-it")


@pytest.mark.refuses("a malformed components file (bad JSON, a missing key, deep nesting, wrong shapes or "
                     "widths, NaN tensors, unknown modules, corrupted bytes)",
                     "FileFormatError names the file and the problem; save the components again")
@pytest.mark.parametrize("case", [
    "extra_eigenvector_rows", "nan_tensor", "renamed_layer", "bad_json", "missing_key", "deep_json",
    "wrong_width", "unexpected_tensor", "corrupt_tensor", "not_safetensors", "no_header", "int_tensor",
    "adjacency_to_activation",
])
def test_malformed_files_are_refused(saved, tmp_path, case):
    model, data, comps, path, meta, tensors = saved
    m, t, refp = copy.deepcopy(meta), dict(tensors), True
    target = tmp_path / "bad.safetensors"
    if case == "extra_eigenvector_rows":
        cb = curvature_basis(model, data[:1], "out.weight", kind="ggn")
        p = save_basis(cb, tmp_path / "cb.safetensors")
        with safe_open(str(p), framework="pt") as f:
            m = json.loads(f.metadata()["wdecomp"])
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        t["eigenvectors"] = torch.cat([t["eigenvectors"], torch.zeros(1, t["eigenvectors"].shape[1], dtype=DT)])
    elif case == "nan_tensor":
        t["0/eigenvalues"] = t["0/eigenvalues"].clone()
        t["0/eigenvalues"][0] = float("nan")
    elif case == "renamed_layer":
        m["layers"][0] = "hiddne"
        m["layer_methods"]["hiddne"] = m["layer_methods"].pop("hidden")
        m["adjacency"]["hiddne"] = m["adjacency"].pop("hidden")
    elif case == "bad_json":
        m = "{'format': wdecomp"
    elif case == "missing_key":
        del m["layers"]
    elif case == "deep_json":
        m = '{"format": "wdecomp.components", "version": 1, "info": ' + "[" * 100_000 + "]" * 100_000 + "}"
    elif case == "wrong_width":
        for key in ("0/transform",):
            t[key] = torch.cat([t[key], torch.zeros(t[key].shape[0], 1, dtype=DT)], dim=1)
        t["0/inverse"] = torch.cat([t["0/inverse"], torch.zeros(1, t["0/inverse"].shape[1], dtype=DT)])
        t["0/center"] = torch.cat([t["0/center"], torch.zeros(1, dtype=DT)])
    elif case == "unexpected_tensor":
        t["junk"] = torch.zeros(2, dtype=DT)
    elif case == "corrupt_tensor":
        t["1/transform"] = t["1/transform"] * 1.001
        refp = False
    elif case == "not_safetensors":
        target.write_bytes(b"not a safetensors file")
    elif case == "no_header":
        save_file(t, str(target))
    elif case == "int_tensor":
        t["0/eigenvalues"] = t["0/eigenvalues"].to(torch.int64)
    elif case == "adjacency_to_activation":
        m["adjacency"]["hidden"]["consumers"] = ["act"]
    if case not in ("not_safetensors", "no_header"):
        _write(target, m, t, refingerprint=refp)
    with pytest.raises(FileFormatError):
        load_components(target, model)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_malformed_files_end_in_a_wdecomp_error_or_a_correct_load(saved, tmp_path, data):
    """Property: a components file damaged anywhere (a header value replaced, deleted or deeply
    nested; a tensor reshaped, renamed, dropped, retyped or poisoned; bytes flipped) loads into the
    same components or raises a WdecompError — never another exception."""
    model, _, comps, path, meta, tensors = saved
    m, t = copy.deepcopy(meta), dict(tensors)
    target = tmp_path / "fuzz.safetensors"
    what = data.draw(st.sampled_from(["header", "tensor", "bytes"]))
    if what == "header":
        damage_json(m, data)
        _write(target, m, t)
    elif what == "tensor":
        key = data.draw(st.sampled_from(sorted(t)))
        how = data.draw(st.sampled_from(["row", "col", "drop", "rename", "int", "inf", "flat", "half"]))
        x = t.pop(key)
        if how == "row":
            t[key] = torch.cat([x, x[:1]])
        elif how == "col" and x.dim() == 2:
            t[key] = torch.cat([x, x[:, :1]], dim=1)
        elif how == "rename":
            t[key + "x"] = x
        elif how == "int":
            t[key] = x.to(torch.int32)
        elif how == "inf":
            t[key] = x.clone().reshape(-1).index_fill(0, torch.tensor([0]), float("inf")).reshape(x.shape)
        elif how == "flat":
            t[key] = x.reshape(-1)
        elif how == "half":
            t[key] = x.to(torch.float16)
        elif how != "drop":
            t[key] = x
        _write(target, m, t, refingerprint=data.draw(st.booleans()))
    else:
        raw = bytearray(path.read_bytes())
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        target.write_bytes(bytes(raw))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = load_components(target, model)
    except WdecompError:
        return
    assert _same(again, comps)
    assert again.verify(model, _data()) < 1e-8
