"""``--operator``: the curvature operator a subcommand analyses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wdecomp.cli._common import LoadedModel
from wdecomp.curvature import fisher, ggn, hessian
from wdecomp.objective import Objective

OPERATORS = ("hessian", "ggn", "fisher", "fisher_true")


def operator(loaded: LoadedModel, kind: str, params: Sequence[str] | None) -> Any:
    """Build the ``kind`` operator of the loaded model's loss over ``params`` (default: all)."""
    obj = Objective(loaded.model, loaded.data, loss=loaded.loss)
    sel = list(params) if params else None
    if kind == "hessian":
        return hessian(obj, sel)
    if kind == "ggn":
        return ggn(obj, sel)
    return fisher(obj, sel, kind="empirical" if kind == "fisher" else "true")
