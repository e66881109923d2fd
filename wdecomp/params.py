"""Parameter selection: which weights of an ``nn.Module`` a curvature operator lives on.

A :class:`ParamSet` is an ordered set of named parameters with a fixed flattening
``theta = concat(vec(W_1), ..., vec(W_m))`` of total length ``p``. Every operator in
wdecomp acts on such flat vectors, and every flat vector can be turned back into named
tensors of the parameters' own shapes.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor, nn

from wdecomp.errors import SelectionError, ShapeError

#: What ``params=`` accepts: ``None`` (all trainable), a glob (``"mlp.*"``), a regex written
#: ``"re:<pattern>"`` or compiled, a submodule of the model, or a list mixing these.
ParamSpec = Union[None, str, "re.Pattern[str]", nn.Module, Sequence[Union[str, "re.Pattern[str]", nn.Module]]]


@dataclass(frozen=True)
class ParamSet:
    """An ordered, flattenable set of a model's parameters.

    Tied parameters (one tensor reachable under several names) appear once, under the first
    name ``model.named_parameters()`` gives; ``aliases`` records the other names.

    Attributes:
        names: Parameter names, in the model's registration order.
        shapes: Shape of each parameter.
        tensors: The live parameter tensors (not copies).
        aliases: For tied parameters, other names that refer to the same tensor.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    tensors: tuple[Tensor, ...]
    aliases: Mapping[str, tuple[str, ...]]

    @property
    def numel(self) -> int:
        """Total number of scalar parameters ``p``."""
        return sum(int(s.numel()) for s in self.shapes)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(s.numel()) for s in self.shapes)

    @property
    def slices(self) -> dict[str, slice]:
        """Where each parameter lives in the flat vector."""
        out, start = {}, 0
        for name, size in zip(self.names, self.sizes):
            out[name] = slice(start, start + size)
            start += size
        return out

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors[0].dtype

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device

    def __len__(self) -> int:
        return len(self.names)

    def as_dict(self, detach: bool = True) -> dict[str, Tensor]:
        """Named current values (detached by default, for use with ``torch.func``)."""
        return {n: (t.detach() if detach else t) for n, t in zip(self.names, self.tensors)}

    def flat(self) -> Tensor:
        """Current parameter values as one flat vector of length ``p``."""
        return self.flatten(self.as_dict())

    def flatten(self, named: Mapping[str, Tensor] | Sequence[Tensor]) -> Tensor:
        """Concatenate per-parameter tensors into a flat vector.

        Args:
            named: A mapping name -> tensor, or a sequence in ``names`` order. Each tensor has
                the parameter's shape, optionally with leading batch dimensions ``(*b, *shape)``;
                the result then has shape ``(*b, p)``.
        """
        parts = [named[n] for n in self.names] if isinstance(named, Mapping) else list(named)
        if len(parts) != len(self.names):
            raise ShapeError(f"expected {len(self.names)} tensors, got {len(parts)}")
        flat = []
        for part, shape, name in zip(parts, self.shapes, self.names):
            nd = part.dim() - len(shape)
            if nd < 0 or tuple(part.shape[nd:]) != tuple(shape):
                raise ShapeError(
                    f"tensor for parameter '{name}' has shape {tuple(part.shape)}, "
                    f"expected (..., {', '.join(map(str, shape))})"
                )
            flat.append(part.reshape(*part.shape[:nd], -1))
        return torch.cat(flat, dim=-1)

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """Split a flat vector ``(*b, p)`` into named tensors ``(*b, *shape)`` (views)."""
        self.check_flat(vec, last_dim=True)
        out = {}
        for (name, sl), shape in zip(self.slices.items(), self.shapes):
            out[name] = vec[..., sl].reshape(*vec.shape[:-1], *shape)
        return out

    def unflatten_columns(self, mat: Tensor) -> dict[str, Tensor]:
        """Split a block ``(p, k)`` of column vectors into named tensors ``(k, *shape)``."""
        return self.unflatten(mat.T)

    def check_flat(self, vec: Tensor, last_dim: bool = False) -> None:
        """Raise :class:`ShapeError` unless ``vec`` has length ``p`` along its vector axis."""
        axis = -1 if last_dim else 0
        if vec.dim() == 0 or vec.shape[axis] != self.numel:
            raise ShapeError(
                f"vector has shape {tuple(vec.shape)}; this parameter set has p = {self.numel} "
                f"entries ({', '.join(self.names[:4])}{', ...' if len(self.names) > 4 else ''})"
            )

    def subset(self, names: Iterable[str]) -> ParamSet:
        """The parameter set restricted to ``names`` (kept in this set's order)."""
        wanted = set(names)
        unknown = wanted - set(self.names)
        if unknown:
            raise SelectionError(f"not in this parameter set: {sorted(unknown)}")
        keep = [i for i, n in enumerate(self.names) if n in wanted]
        return ParamSet(
            names=tuple(self.names[i] for i in keep),
            shapes=tuple(self.shapes[i] for i in keep),
            tensors=tuple(self.tensors[i] for i in keep),
            aliases={n: a for n, a in self.aliases.items() if n in wanted},
        )

    def groups(self, by: str = "parameter") -> dict[str, list[str]]:
        """Group parameter names: ``"parameter"`` (one each) or ``"module"`` (by owner module)."""
        if by == "parameter":
            return {n: [n] for n in self.names}
        if by == "module":
            out: dict[str, list[str]] = {}
            for n in self.names:
                out.setdefault(n.rpartition(".")[0] or "(top level)", []).append(n)
            return out
        raise ValueError(f"unknown grouping '{by}' (use 'parameter' or 'module')")


def _matches(name: str, pattern: str | re.Pattern[str]) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(name) is not None
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if fnmatch.fnmatchcase(name, pattern):
        return True
    # A plain module name selects everything under it: "mlp" == "mlp.*".
    return name.startswith(pattern + ".")


def select_parameters(model: nn.Module, params: ParamSpec | ParamSet = None) -> ParamSet:
    """Choose parameters of ``model``.

    Args:
        model: The network.
        params: ``None`` for every parameter with ``requires_grad``; a glob on dotted names
            (``"mlp.*"``, ``"*.weight"``); a bare module name (``"mlp"``, all under it); a regex
            as ``"re:blocks\\.[01]\\..*"`` or a compiled pattern; a submodule of ``model``; or a
            list of these (union). A ready :class:`ParamSet` is returned unchanged.

    Returns:
        The selection in the model's registration order, tied parameters once.

    Raises:
        SelectionError: a pattern or module matches nothing, or nothing is trainable.
    """
    if isinstance(params, ParamSet):
        return params
    named = list(model.named_parameters(remove_duplicate=False))
    first_name: dict[int, str] = {}
    aliases: dict[str, list[str]] = {}
    for name, tensor in named:
        key = id(tensor)
        if key in first_name:
            aliases.setdefault(first_name[key], []).append(name)
        else:
            first_name[key] = name
    unique = [(n, t) for n, t in named if first_name[id(t)] == n]

    if params is None:
        chosen = {n for n, t in unique if t.requires_grad}
        if not chosen:
            raise SelectionError("the model has no trainable parameters (requires_grad=False everywhere)")
    else:
        specs = [params] if isinstance(params, (str, re.Pattern, nn.Module)) else list(params)
        if not specs:
            raise SelectionError("empty parameter selection")
        chosen = set()
        module_ids = {id(m): name for name, m in model.named_modules()}
        for spec in specs:
            if isinstance(spec, nn.Module):
                if id(spec) not in module_ids:
                    raise SelectionError(f"module {type(spec).__name__} is not a submodule of the model")
                ids = {id(t) for t in spec.parameters()}
                hit = {first_name[id(t)] for n, t in named if id(t) in ids}
                label = module_ids[id(spec)] or "(top level)"
            else:
                hit = set()
                for n, t in named:
                    if _matches(n, spec):
                        hit.add(first_name[id(t)])
                label = spec.pattern if isinstance(spec, re.Pattern) else spec
            if not hit:
                some = ", ".join(n for n, _ in unique[:8])
                raise SelectionError(
                    f"parameter selection {label!r} matches no parameter of "
                    f"{type(model).__name__}; names look like: {some}"
                )
            chosen |= hit

    keep = [(n, t) for n, t in unique if n in chosen]
    dtypes = {t.dtype for _, t in keep}
    if len(dtypes) > 1:
        raise SelectionError(f"selected parameters mix dtypes {sorted(map(str, dtypes))}; cast the model first")
    return ParamSet(
        names=tuple(n for n, _ in keep),
        shapes=tuple(t.shape for _, t in keep),
        tensors=tuple(t for _, t in keep),
        aliases={n: tuple(a) for n, a in aliases.items() if n in chosen},
    )
