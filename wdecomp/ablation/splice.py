"""Splices: a replacement of the activation at a hook (an SAE, a low-rank projection), applied
in place for a ``with`` block (:func:`splice`, through :func:`wdecomp.hooks.edit`) or scored
like an ablation level (:func:`score_splice`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from wdecomp.ablation.engine import Engine, Plan, run
from wdecomp.ablation.report import AblationResult
from wdecomp.errors import SelectionError
from wdecomp.hooks import HookPoint, edit
from wdecomp.objective import LossSpec

__all__ = ["Splice", "score_splice", "splice"]


class Splice:
    """A replacement registered at a hook: the activation ``f`` becomes ``replacement(f)``.

    Made by :func:`splice`; use it as a context manager or call :meth:`remove`.
    """

    def __init__(self, model: nn.Module, hook: str, replacement: Callable[[Tensor], Tensor]) -> None:
        self.model = model
        self.hook = str(HookPoint.parse(hook))
        self.replacement = replacement
        self._edit: Any = edit(model, {self.hook: replacement})
        self._edit.__enter__()

    def remove(self) -> None:
        """Unregister the replacement (idempotent)."""
        if self._edit is not None:
            self._edit.__exit__(None, None, None)
            self._edit = None

    def __enter__(self) -> nn.Module:
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def splice(model: nn.Module, hook: str, replacement: Callable[[Tensor], Tensor]) -> Splice:
    """Replace the activation at ``hook`` by ``replacement(activation)`` in every forward pass.

    Args:
        model: The network (hooked in place; nothing is copied).
        hook: A hook point: ``"mlp.act"`` (module output) or ``"mlp.act:input"`` (first input).
        replacement: Any callable ``(..., d) -> (..., d)`` of the same shape, e.g. a sparse
            autoencoder ``x -> dec(enc(x))`` or a low-rank projection.

    Returns:
        A :class:`Splice`: ``with splice(model, "mlp.act", sae): loss = ...``; or keep it and
        call ``.remove()``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> x = torch.randn(4, 2)
        >>> with splice(model, "1", nn.Identity()):
        ...     y = model(x)
        >>> torch.equal(y, model(x))
        True
    """
    return Splice(model, hook, replacement)


def score_splice(
    model: nn.Module,
    hook: str,
    replacement: Callable[[Tensor], Tensor] | Mapping[str, Callable[[Tensor], Tensor]],
    data: Any,
    *,
    loss: LossSpec = "cross_entropy",
    law: Any = None,
    tokens: float | None = None,
    laws: Any = None,
    training_compute: float | None = None,
    n_params: float | None = None,
    trivial_loss: float | None = None,
    top_n: int = 10,
    progress: bool | None = None,
) -> AblationResult:
    """Score one or several replacements spliced at ``hook`` (e.g. SAEs of several sizes).

    Each replacement is one level of the result (labelled by its key when a mapping is given),
    with loss recovered against zero- and mean-ablation of the hook, KL, accuracy and the
    compute-/parameter-equivalent. A distributed :class:`Objective` as ``data`` gives global
    metrics, as for :func:`ablate`. ``law``, ``tokens``, ``laws``, ``training_compute``,
    ``n_params`` and ``trivial_loss`` are as for :func:`~wdecomp.ablation.ablate`: the
    equivalents per law with intervals and the fraction of the model's own training compute.
    """
    reps = dict(replacement) if isinstance(replacement, Mapping) else {"splice": replacement}
    if not reps:
        raise SelectionError("no replacement given")
    point = str(HookPoint.parse(hook))
    engine = Engine(model, None, data, loss, method=None, seed=0, top_n=top_n, hooks=(point,))
    plans = [Plan(label, None, splices=((point, fn),)) for label, fn in reps.items()]
    return run(engine, plans, method="splice", order="given", law=law, tokens=tokens, progress=progress,
                laws=laws, training_compute=training_compute, n_params=n_params, trivial_loss=trivial_loss,
                n_components=0, desc="splice")
