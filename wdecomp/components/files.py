"""The components file: one safetensors file holding a basis (tensors), its adjacency and a JSON
header (format, version, kind, names, shapes, dtypes, the model's parameter signature, a fingerprint
of the model's weights and one of the saved tensors).

Writes are atomic (:func:`wdecomp.io.atomic_write`) and loading runs no code. Loading validates
every header key's type, every tensor's name, shape, dtype and finiteness, the tensors against
their stored fingerprint, and, given the model, every module name and width the file names; a
malformed file is a :class:`~wdecomp.errors.FileFormatError` that names the file and the problem.
A model whose weights differ from the ones the file was saved with (same names and shapes) is
refused (:class:`~wdecomp.errors.ModelMismatchError`) or, with ``weights="warn"``, warned about.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from wdecomp.bases.base import Basis, LayerBasis
from wdecomp.bases.curvature import CURVATURE_KINDS, CurvatureBasis
from wdecomp.batch import fingerprint
from wdecomp.errors import ArgumentError, FileFormatError, ModelMismatchError, SelectionError
from wdecomp.hooks import HookPoint
from wdecomp.io import atomic_write

__all__ = ["FORMAT_VERSION", "WEIGHT_CHECKS", "load_basis", "read_checked", "save_basis", "weights_fingerprint",
           "write_basis"]

FORMAT_VERSION = 1
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # convolutions that fold a channel basis (components.model)
_FORMAT = "wdecomp.components"


WEIGHT_CHECKS = ("refuse", "warn")


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter's and buffer's name, shape, dtype and bits
    (:func:`wdecomp.batch.fingerprint`): equal weights give equal fingerprints, any changed entry a
    different one."""
    named = {n: t.detach() for n, t in model.named_parameters()}
    named.update({n: b.detach() for n, b in model.named_buffers()})
    return fingerprint(named)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Tensor):
        return x.tolist()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _tensors_fingerprint(tensors: Mapping[str, Tensor]) -> str:
    return fingerprint({k: tensors[k] for k in sorted(tensors)})


def write_basis(basis: Basis | CurvatureBasis, path: str | os.PathLike, adjacency: Mapping[str, Any],
                weights: str | None) -> Path:
    """Write ``basis``, ``adjacency`` and a weights fingerprint (or ``None``) atomically to ``path``."""
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {"format": _FORMAT, "version": FORMAT_VERSION,
                            "signature": _jsonable(basis.signature), "info": _jsonable(basis.info),
                            "adjacency": _jsonable(adjacency), "weights_fingerprint": weights}
    if isinstance(basis, CurvatureBasis):
        meta.update(kind="curvature", curvature_kind=basis.kind, which=basis.which, names=list(basis.names),
                    shapes=[list(s) for s in basis.shapes], null_threshold=basis.null_threshold)
        tensors.update(eigenvalues=basis.eigenvalues, eigenvectors=basis.eigenvectors, spectrum=basis.spectrum)
    else:
        meta.update(kind="activation", method=basis.method, layers=list(basis.layers),
                    layer_methods={p: basis[p].method for p in basis.layers},
                    layer_constants={p: getattr(basis[p], "constant", None) for p in basis.layers})
        for i, p in enumerate(basis.layers):
            lb = basis[p]
            tensors[f"{i}/transform"] = lb.transform
            tensors[f"{i}/inverse"] = lb.inverse
            tensors[f"{i}/eigenvalues"] = lb.eigenvalues
            if lb.center is not None:
                tensors[f"{i}/center"] = lb.center
            if lb.const_column is not None and lb.const_row is not None:  # the general folded form
                tensors[f"{i}/const_column"] = lb.const_column
                tensors[f"{i}/const_row"] = lb.const_row
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta["tensors_fingerprint"] = _tensors_fingerprint(plain)
    meta["dtypes"] = {k: _dtype_name(v) for k, v in plain.items()}
    atomic_write(path, lambda tmp: save_file(plain, tmp, metadata={"wdecomp": json.dumps(meta)}))
    return path


def save_basis(basis: Basis | CurvatureBasis, path: str | os.PathLike,
               adjacency: Mapping[str, Any] | None = None, *, model: nn.Module | None = None) -> Path:
    """Save a basis (and optional adjacency) to a safetensors file with a JSON header, atomically
    (a temporary file in the same directory, then ``os.replace``).

    With ``model`` (checked to be the basis's model), the fingerprint of its weights
    (:func:`weights_fingerprint`) is stored, and loading with a model of other weights is refused
    (or warned about). A fingerprint of the saved tensors is always stored, so a corrupted file
    is refused on load.
    """
    if model is not None:
        basis.check_model(model)
    return write_basis(basis, path, adjacency or {}, weights_fingerprint(model) if model is not None else None)


class _Header:
    """Typed reads from a components file's JSON header; every failure is a :class:`FileFormatError`
    naming the file and the key."""

    def __init__(self, path: str | os.PathLike, meta: Any) -> None:
        self.path = str(path)
        if not isinstance(meta, dict):
            raise self.error(f"the header is a JSON {type(meta).__name__}, not an object")
        self.meta = meta

    def error(self, problem: str) -> FileFormatError:
        return FileFormatError(f"{self.path}: {problem}; this is not a components file wdecomp wrote "
                               "(or it was edited or corrupted): save it again with Components.save")

    def get(self, key: str, kinds: type | tuple[type, ...], what: str, *, optional: bool = False) -> Any:
        if key not in self.meta:
            if optional:
                return None
            raise self.error(f"the header has no '{key}'")
        value = self.meta[key]
        if value is None and optional:
            return None
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in _tuple(kinds):
            raise self.error(f"'{key}' is a JSON {type(value).__name__}, expected {what}")
        return value

    def names(self, key: str) -> list[str]:
        value = self.get(key, list, "a list of names")
        if not value or not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
            raise self.error(f"'{key}' must be a non-empty list of distinct strings")
        return value

    def shape(self, value: Any, where: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                  for v in value):
            raise self.error(f"{where} is not a shape (a list of non-negative integers)")
        return tuple(value)

    def number(self, key: str) -> float:
        value = self.get(key, (int, float), "a number")
        if not math.isfinite(value) or value < 0:
            raise self.error(f"'{key}' = {value} is not a finite number >= 0")
        return float(value)


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _read(path: str | os.PathLike) -> tuple[_Header, dict[str, Tensor]]:
    """The header (typed, checked) and tensors of a components file (no code is executed)."""
    if not Path(path).is_file():
        raise FileFormatError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own (and torch's) errors for every kind of damage
        raise FileFormatError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
    if "wdecomp" not in header:
        raise FileFormatError(f"{path} is not a wdecomp file (no 'wdecomp' metadata in its safetensors header)")
    try:
        meta = json.loads(header["wdecomp"])
    except (ValueError, RecursionError) as e:
        raise FileFormatError(f"{path}: the wdecomp header is not valid JSON ({type(e).__name__})") from e
    h = _Header(path, meta)
    if h.get("format", str, "a string") != _FORMAT:
        raise h.error(f"unknown format {meta.get('format')!r}")
    version = h.get("version", int, "an integer")
    if version > FORMAT_VERSION:
        raise FileFormatError(f"{path} has format version {version}; this wdecomp reads up to {FORMAT_VERSION}")
    stored = h.get("tensors_fingerprint", str, "a string", optional=True)
    dtypes = h.get("dtypes", dict, "an object of tensor dtypes", optional=True)
    if dtypes is not None and sorted(dtypes) != sorted(tensors):
        raise h.error(f"the header lists tensors {sorted(dtypes)[:5]}, the file holds {sorted(tensors)[:5]}")
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise h.error(f"tensor '{key}' has dtype {t.dtype}, not a floating-point dtype")
        if dtypes is not None and dtypes[key] != _dtype_name(t):
            raise h.error(f"tensor '{key}' has dtype {_dtype_name(t)}, but was saved as {dtypes[key]!r}")
        if not torch.isfinite(t).all():
            raise h.error(f"tensor '{key}' contains NaN or inf")
    if stored is not None and stored != _tensors_fingerprint(tensors):
        raise h.error("the tensors do not match the fingerprint stored when the file was written")
    return h, tensors


def _tensor(h: _Header, t: Mapping[str, Tensor], key: str, shape: tuple[int | None, ...]) -> Tensor:
    if key not in t:
        raise h.error(f"tensor '{key}' is missing")
    x = t[key]
    if x.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise h.error(f"tensor '{key}' has shape {tuple(x.shape)}, expected {want}")
    return x


def _basis_from(h: _Header, t: Mapping[str, Tensor]) -> Basis | CurvatureBasis:
    """The basis a checked header and its tensors describe (every shape and name validated)."""
    sig_raw = h.get("signature", dict, "an object of parameter shapes")
    sig = {str(k): list(h.shape(v, f"signature['{k}']")) for k, v in sig_raw.items()}
    info = h.get("info", dict, "an object", optional=True) or {}
    kind = h.get("kind", str, "a string")
    expected: set[str]
    if kind == "curvature":
        names = h.names("names")
        shapes_raw = h.get("shapes", list, "a list of shapes")
        if len(shapes_raw) != len(names):
            raise h.error(f"{len(shapes_raw)} shapes for {len(names)} parameter names")
        shapes = tuple(h.shape(s, f"shapes[{i}]") for i, s in enumerate(shapes_raw))
        for n, s in zip(names, shapes):
            if n not in sig or tuple(sig[n]) != s:
                raise h.error(f"parameter '{n}' of shape {s} is not in the file's model signature")
        curvature_kind = h.get("curvature_kind", str, "a string")
        if curvature_kind not in CURVATURE_KINDS:
            raise h.error(f"curvature_kind {curvature_kind!r} is not one of {CURVATURE_KINDS}")
        p = sum(math.prod(s) for s in shapes)
        vectors = _tensor(h, t, "eigenvectors", (p, None))
        k = vectors.shape[1]
        expected = {"eigenvalues", "eigenvectors", "spectrum"}
        basis: Basis | CurvatureBasis = CurvatureBasis(
            names=tuple(names), shapes=shapes, eigenvalues=_tensor(h, t, "eigenvalues", (k,)), eigenvectors=vectors,
            kind=curvature_kind, which=h.get("which", str, "a string"), spectrum=_tensor(h, t, "spectrum", (None,)),
            null_threshold=h.number("null_threshold"), signature=sig, info=info,
        )
    elif kind == "activation":
        layers = h.names("layers")
        methods = h.get("layer_methods", dict, "an object")
        constants = h.get("layer_constants", dict, "an object", optional=True) or {}
        bases, expected = {}, set()
        for i, point in enumerate(layers):
            try:
                HookPoint.parse(point)
            except SelectionError as e:
                raise h.error(f"layer '{point}' is not a hook point ({e})") from e
            if not isinstance(methods.get(point), str):
                raise h.error(f"layer_methods has no method for layer '{point}'")
            constant = constants.get(point)
            if constant is not None and (not isinstance(constant, (int, float)) or isinstance(constant, bool)
                                         or not math.isfinite(constant)):
                raise h.error(f"layer_constants['{point}'] = {constant!r} is not a finite number")
            T = _tensor(h, t, f"{i}/transform", (None, None))
            k, d = T.shape
            center = _tensor(h, t, f"{i}/center", (d,)) if f"{i}/center" in t else None
            extra: dict[str, Any] = {"constant": float(constant)} if constant is not None else {}
            folded = {f"{i}/const_column", f"{i}/const_row"} & set(t)
            if folded:
                if len(folded) == 1 or center is not None or constant is not None:
                    raise h.error(f"layer '{point}': const_column and const_row come together, without a centre "
                                  "or constant node (the general folded form)")
                extra.update(const_column=_tensor(h, t, f"{i}/const_column", (k,)),
                             const_row=_tensor(h, t, f"{i}/const_row", (k,)))
            bases[point] = LayerBasis(point, T, _tensor(h, t, f"{i}/inverse", (d, k)),
                                      _tensor(h, t, f"{i}/eigenvalues", (k,)), center, methods[point], **extra)
            expected |= {f"{i}/transform", f"{i}/inverse", f"{i}/eigenvalues"} | ({f"{i}/center"} if center is not None
                                                                                 else set()) | folded
        basis = Basis(tuple(layers), bases, h.get("method", str, "a string"), sig, info)
    else:
        raise h.error(f"kind {kind!r} is neither 'activation' nor 'curvature'")
    unexpected = sorted(set(t) - expected)
    if unexpected:
        raise h.error(f"unexpected tensors {unexpected[:5]}")
    groups = [[k for k in t if k.split("/")[0] == str(i)] for i in range(len(basis.layers))] if kind == "activation" \
        else [list(t)]
    for keys in groups:
        if len({t[k].dtype for k in keys}) > 1:
            names = sorted({_dtype_name(t[k]) for k in keys})
            raise h.error(f"tensors {keys} of one layer have different dtypes {names}")
    return basis


def _adjacency_from(h: _Header, basis: Basis | CurvatureBasis) -> dict[str, dict[str, Any]]:
    raw = h.get("adjacency", dict, "an object", optional=True) or {}
    layers = set(basis.layers) if isinstance(basis, Basis) else set()
    out = {}
    for point, entry in raw.items():
        if point not in layers:
            raise h.error(f"the adjacency names '{point}', which is not a layer of the basis")
        if not isinstance(entry, dict):
            raise h.error(f"adjacency['{point}'] is not an object")
        producer, consumers = entry.get("producer"), entry.get("consumers", [])
        if producer is not None and not isinstance(producer, str):
            raise h.error(f"adjacency['{point}']['producer'] is not a module name")
        if not isinstance(consumers, list) or not all(isinstance(c, str) for c in consumers):
            raise h.error(f"adjacency['{point}']['consumers'] is not a list of module names")
        out[point] = {"producer": producer, "consumers": list(consumers)}
    return out


def _check_against(h: _Header, basis: Basis | CurvatureBasis, adjacency: Mapping[str, Mapping[str, Any]],
                   model: nn.Module, weights: str) -> None:
    """The file's names and widths exist in ``model``, and its weights are the ones saved with."""
    if weights not in WEIGHT_CHECKS:
        raise ArgumentError(f"weights must be one of {WEIGHT_CHECKS}, not {weights!r}")
    basis.check_model(model)
    if isinstance(basis, Basis):
        modules = dict(model.named_modules())

        def width(name: str, side: str, kinds: tuple[type, ...] = ()) -> int | None:
            m = modules.get(name)
            if m is None:
                raise h.error(f"module '{name}' named in the file does not exist in {type(model).__name__}")
            if kinds and not isinstance(m, kinds):
                raise h.error(f"the adjacency names '{name}', a {type(m).__name__}, where a "
                              f"{' or '.join(k.__name__ for k in kinds)} belongs")
            if isinstance(m, nn.Linear):
                if side == "input" and name != hp.module and m.in_features % d == 0:
                    return None  # a Linear after nn.Flatten reads d x positions features
                return m.out_features if side == "output" else m.in_features
            if isinstance(m, nn.Embedding):
                return m.embedding_dim if side == "output" else None
            if isinstance(m, _CONV):
                return m.out_channels if side == "output" else m.in_channels
            return None

        for point in basis.layers:
            hp, d = HookPoint.parse(point), basis[point].dim
            found = [(hp.module, width(hp.module, hp.side))]
            adj = adjacency.get(point, {})
            if adj.get("producer") is not None:
                found.append((adj["producer"], width(adj["producer"], "output", (nn.Linear, nn.Embedding, *_CONV))))
            found += [(c, width(c, "input", (nn.Linear, *_CONV))) for c in adj.get("consumers", [])]
            for name, w in found:
                if w is not None and w != d:
                    raise h.error(f"layer '{point}' has width {d}, but module '{name}' there has width {w}")
    saved = h.get("weights_fingerprint", str, "a string", optional=True)
    if saved is not None and saved != weights_fingerprint(model):
        message = (f"{h.path} was saved for a model with other weights (the same names and shapes, different "
                   "values); its components describe those weights, not these")
        if weights == "refuse":
            raise ModelMismatchError(message + "; load it with the model it was saved for, or pass weights='warn'")
        warnings.warn(message, stacklevel=3)


def load_basis(path: str | os.PathLike, model: nn.Module | None = None, *,
               weights: str = "refuse") -> Basis | CurvatureBasis:
    """Read a basis written by :func:`save_basis` (no code is executed).

    Every header key, tensor shape and name is validated (:class:`FileFormatError` otherwise). With
    ``model``: the file's parameter signature, module names and widths must be the model's
    (:class:`ModelMismatchError` / :class:`FileFormatError`), and when the file stores a weights
    fingerprint, a model with other weights is refused (``weights="refuse"``) or warned about
    (``weights="warn"``).
    """
    h, t = _read(path)
    basis = _basis_from(h, t)
    if model is not None:
        _check_against(h, basis, _adjacency_from(h, basis), model, weights)
    return basis


def read_checked(path: str | os.PathLike, model: nn.Module, weights: str = "refuse"
                 ) -> tuple[Basis | CurvatureBasis, dict[str, dict[str, Any]]]:
    """The basis and adjacency of a components file, validated for ``model`` (as :func:`load_basis`)."""
    h, t = _read(path)
    basis = _basis_from(h, t)
    adjacency = _adjacency_from(h, basis)
    _check_against(h, basis, adjacency, model, weights)
    return basis, adjacency
