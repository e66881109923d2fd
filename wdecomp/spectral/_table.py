"""Plain-text tables for the ``__str__`` of spectral results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor


def fmt(x: Any) -> str:
    """Format a scalar for a table cell."""
    if isinstance(x, Tensor):
        x = x.item()
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.6g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3e}"
    return str(x)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A right-aligned text table with a header rule."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths))
    out = [title] if title else []
    out += [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def to_jsonable(x: Any) -> Any:
    """Tensors to lists, recursively (for ``to_dict``)."""
    if isinstance(x, Tensor):
        return x.detach().cpu().tolist()
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    return x
