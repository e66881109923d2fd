"""The objective: an exact mean loss of a model over a dataset, as a function of its weights.

For batches ``b = 1..B`` with summed losses ``S_b(theta)`` over ``n_b`` loss terms, the
objective is

    L(theta) = (sum_b S_b(theta)) / N,    N = sum_b n_b,

so an uneven last batch is weighted by its size exactly (never a mean of batch means).
Every curvature operator differentiates this function, batch by batch, through
``torch.func.functional_call``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wdecomp import batch as batching
from wdecomp import distributed as dist
from wdecomp.batch import Batch
from wdecomp.errors import DataError, ModelStateError, NonFiniteError, WdecompError
from wdecomp.params import ParamSet, ParamSpec, select_parameters


class BatchLoss:
    """Marks a loss written against the whole batch: ``fn(model_fn, batch)``.

    ``model_fn(inputs)`` runs the model with the weights being differentiated. ``fn`` returns
    either a scalar mean over the batch's ``len(batch[0])`` examples, or a pair
    ``(summed_loss, count)`` when its loss terms are counted differently (tokens, say).
    Operators that need the model's outputs (GGN, Fisher, per-sample gradients) are not
    available for such losses.

    Example:
        >>> loss = BatchLoss(lambda model_fn, batch: model_fn(batch[0]).pow(2).mean())
    """

    def __init__(self, fn: Callable[[Callable[[Any], Tensor], Batch], Tensor | tuple[Tensor, Any]]):
        self.fn = fn


LossSpec = str | Callable[[Tensor, Tensor], Tensor] | BatchLoss


@dataclass(frozen=True)
class OutputLoss:
    """A loss of the model's outputs and targets, summed over loss terms.

    ``summed(outputs, targets)`` returns ``(S, n)``: the summed loss and the number of loss
    terms it sums; ``per_example(outputs, targets)`` returns the summed loss of each example
    (first axis), shape ``(B,)``; ``output_fisher`` (if known in closed form) maps
    ``(outputs, targets, U)`` to ``F_out U`` for the Fisher of the predictive distribution
    (Martens 2020, arXiv 1412.1193, sec. 9.2), per summed-loss scale.
    """

    name: str
    summed: Callable[[Tensor, Tensor], tuple[Tensor, int]]
    per_example: Callable[[Tensor, Tensor], Tensor]
    output_fisher: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None
    output_hessian_sqrt: Callable[[Tensor, Tensor], Tensor] | None = None


def _wide(t: Tensor) -> Tensor:
    """``t`` in float32 if it is float16 or bfloat16 (sums of many loss terms overflow there)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _ce_flat(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    classes = outputs.shape[-1]
    logits = _wide(outputs).reshape(-1, classes)
    if targets.is_floating_point() and targets.shape == outputs.shape:
        return logits, targets.to(logits.dtype).reshape(-1, classes)
    if targets.is_floating_point() or targets.is_complex() or targets.shape != outputs.shape[:-1]:
        raise DataError(
            f"cross_entropy needs class-index targets of shape {tuple(outputs.shape[:-1])} (integers) or "
            f"class probabilities of the outputs' shape {tuple(outputs.shape)}; got targets "
            f"{tuple(targets.shape)} {targets.dtype}"
        )
    return logits, targets.reshape(-1)


def _ce_summed(outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
    logits, t = _ce_flat(outputs, targets)
    return F.cross_entropy(logits, t, reduction="sum"), logits.shape[0]


def _ce_per_example(outputs: Tensor, targets: Tensor) -> Tensor:
    logits, t = _ce_flat(outputs, targets)
    terms = F.cross_entropy(logits, t, reduction="none")
    return terms.reshape(outputs.shape[0], -1).sum(dim=1)


def _ce_fisher(outputs: Tensor, targets: Tensor, u: Tensor) -> Tensor:
    # E_{y ~ softmax(f)} [grad log p grad log p^T] u = (diag(p) - p p^T) u, per position.
    p = outputs.softmax(dim=-1)
    return p * u - p * (p * u).sum(dim=-1, keepdim=True)


def _ce_hessian_sqrt(outputs: Tensor, targets: Tensor) -> Tensor:
    # diag(p) - p p^T = L L^T with L = diag(s) - p s^T, s = sqrt(p), since s^T s = 1.
    p = outputs.softmax(dim=-1)
    s = p.sqrt()
    eye = torch.diag_embed(s)
    return eye - p.unsqueeze(-1) * s.unsqueeze(-2)


def _mse_summed(outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
    return _mse_per_example(outputs, targets).sum(), outputs.shape[0]


def _mse_per_example(outputs: Tensor, targets: Tensor) -> Tensor:
    if outputs.shape != targets.shape:
        raise DataError(
            f"mse needs targets of the outputs' shape {tuple(outputs.shape)}, got {tuple(targets.shape)} "
            "(broadcasting them would compare every output with every target); reshape the targets, "
            "e.g. y.reshape(outputs.shape) or y.unsqueeze(-1)"
        )
    diff = (_wide(outputs) - _wide(targets)).reshape(outputs.shape[0], -1)
    return diff.pow(2).mean(dim=1)


def _mse_fisher(outputs: Tensor, targets: Tensor, u: Tensor) -> Tensor:
    # Per-example loss (1/d)||f - y||^2 is the NLL of N(f, d/2 I) up to a constant, whose
    # Fisher is (2/d) I, which is also its Hessian.
    d = outputs[0].numel()
    return (2.0 / d) * u


def _mse_hessian_sqrt(outputs: Tensor, targets: Tensor) -> Tensor:
    d = outputs[0].numel()
    eye = torch.eye(outputs.shape[-1], dtype=outputs.dtype, device=outputs.device)
    return (2.0 / d) ** 0.5 * eye.expand(*outputs.shape, outputs.shape[-1])


CROSS_ENTROPY = OutputLoss("cross_entropy", _ce_summed, _ce_per_example, _ce_fisher, _ce_hessian_sqrt)
MSE = OutputLoss("mse", _mse_summed, _mse_per_example, _mse_fisher, _mse_hessian_sqrt)


def _custom_output_loss(fn: Callable[[Tensor, Tensor], Tensor]) -> OutputLoss:
    name = getattr(fn, "__name__", "custom")

    def summed(outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        return _wide(fn(outputs, targets)) * outputs.shape[0], outputs.shape[0]

    def per_example(outputs: Tensor, targets: Tensor) -> Tensor:
        return torch.vmap(lambda o, t: fn(o.unsqueeze(0), t.unsqueeze(0)))(outputs, targets)

    return OutputLoss(name, summed, per_example)


def resolve_loss(loss: LossSpec) -> OutputLoss | BatchLoss:
    """Turn a ``loss=`` argument into an :class:`OutputLoss` or a :class:`BatchLoss`."""
    if isinstance(loss, (OutputLoss, BatchLoss)):
        return loss
    if isinstance(loss, str):
        table = {"cross_entropy": CROSS_ENTROPY, "ce": CROSS_ENTROPY, "mse": MSE}
        if loss not in table:
            raise ValueError(f"unknown loss '{loss}'; use 'cross_entropy', 'mse' or a callable")
        return table[loss]
    if callable(loss):
        return _custom_output_loss(loss)
    raise TypeError(f"loss must be a name, a callable or a BatchLoss, got {type(loss).__name__}")


_STOCHASTIC_TRAIN_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def check_model_state(model: nn.Module) -> None:
    """Refuse models whose forward pass is random or batch-dependent.

    Raises:
        ModelStateError: a dropout or batch-norm module is in training mode.
    """
    for name, module in model.named_modules():
        if module.training and isinstance(module, _STOCHASTIC_TRAIN_MODULES):
            if isinstance(module, nn.modules.instancenorm._InstanceNorm) and not module.track_running_stats:
                continue
            raise ModelStateError(
                f"module '{name or '<root>'}' ({type(module).__name__}) is in training mode, so the "
                "loss is random or depends on the batch composition; call model.eval() first"
            )


def check_weights(model: nn.Module) -> None:
    """Refuse weights no curvature can be computed on: complex, or on the meta device.

    Raises:
        ModelStateError: a parameter or buffer is on the meta device (it holds no values), or a
            parameter is complex (the loss is a real function of real weights here).
    """
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise ModelStateError(
                f"'{name}' is on the meta device, so it holds no values; materialise the model "
                "(model.to_empty(device='cpu') then load_state_dict) before computing curvature"
            )
    for name, t in model.named_parameters():
        if t.is_complex():
            raise ModelStateError(
                f"parameter '{name}' is complex ({t.dtype}); wdecomp differentiates a real loss in real "
                "weights: write the layer with separate real and imaginary parameters"
            )


def _same_bits(a: Tensor, b: Tensor) -> bool:
    a, b = a.detach().reshape(-1), b.detach().reshape(-1)
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a.view(torch.uint8), b.view(torch.uint8)))


def _describe(batch: Batch) -> str:
    return ", ".join(f"{path} {tuple(t.shape)} {t.dtype}" for path, t in batching.tensor_leaves(batch))


class Objective:
    """Mean loss of ``model`` over ``data``, differentiable in any subset of its weights.

    Args:
        model: The network (in eval mode if it has dropout or batch norm).
        data: A data argument as :mod:`wdecomp.batch` defines it: one batch (a tuple
            ``(inputs, targets)``; a tensor or a dict of inputs for a :class:`BatchLoss`), a list of
            batches, a re-iterable such as a ``DataLoader``, or a one-shot iterator (its batches
            are kept on the first pass and replayed). Real floating-point tensors are cast to
            the model's dtype and device; integer and complex ones keep their dtype.
        loss: ``"cross_entropy"`` (logits ``(..., C)``, class-index targets ``(...)``; a sequence
            loss over all tokens is the mean over every token), ``"mse"`` (mean over examples of
            the per-example mean squared error; outputs and targets of the same shape), a callable
            ``(outputs, targets) -> mean over the batch``, or a :class:`BatchLoss` for anything else.
            Losses of float16/bfloat16 outputs are summed in float32.
        check_deterministic: Fingerprint every batch (:func:`wdecomp.batch.fingerprint`) on the
            first pass and raise :class:`DataError` if a later pass differs (shuffling loaders,
            augmentation, data changed in place). On by default; the cost is one integer pass
            over the data per pass, small next to a forward pass.
        distributed: Treat ``data`` as this process's shard; every sum over data is all-reduced
            over the default ``torch.distributed`` process group (see :mod:`wdecomp.distributed`),
            and the weights are checked to be identical on every rank
            (:func:`wdecomp.distributed.check_replicated`) when the objective is built and at
            every reduction.

    Every pass over the data checks the model first: no dropout or batch-norm module in
    training mode (:func:`check_model_state`), and, once for each combination of the modules'
    train/eval flags, that two evaluations of the loss on the first batch at the same weights
    agree bit for bit (a random forward: ``F.dropout(training=True)``, attention dropout,
    ``torch.rand`` in ``forward``, is refused with :class:`ModelStateError`).

    The objective is ``L(theta) = sum_b S_b(theta) / N`` with ``S_b`` the summed loss of batch
    ``b`` and ``N`` the total number of loss terms.

    Raises:
        ModelStateError: dropout or batch norm in training mode, complex or meta weights, or
            (on the first pass) a random forward.
        DataError: data in an ambiguous or unknown form (see :mod:`wdecomp.batch`), no batches,
            or (on the first pass) a model that cannot be run on the first batch.
        DistributedError: ``distributed=True`` without a process group, or weights that differ
            between ranks.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Batch | Iterable[Batch],
        loss: LossSpec = "cross_entropy",
        *,
        check_deterministic: bool = True,
        distributed: bool = False,
    ) -> None:
        check_model_state(model)
        check_weights(model)
        self.model = model
        self.loss = resolve_loss(loss)
        self.check_deterministic = check_deterministic
        self.distributed = distributed
        if distributed:
            dist.require_process_group("Objective(distributed=True)")
            dist.check_replicated(model)
        self._data: Iterable[Batch] = batching.as_batches(data, what="Objective")
        self._fingerprints: list[str] | None = None
        self._counts: list[int] | None = None
        self._total: int | None = None
        self._subset: list[int] | None = None
        self._checked_modes: tuple[bool, ...] | None = None
        first = next(iter(self.model.parameters()), None)
        self.dtype = first.dtype if first is not None else torch.get_default_dtype()
        self.device = first.device if first is not None else torch.device("cpu")

    # ----------------------------------------------------------------- data
    def _raw_batches(self) -> Iterator[Batch]:
        if self._subset is None:
            yield from self._data
            return
        cached = self._data if isinstance(self._data, Sequence) else list(self._data)
        for i in self._subset:
            yield cached[i]

    def batches(self, *, known_fingerprint: Callable[[int, Batch, Batch], str | None] | None = None) -> Iterator[Batch]:
        """Yield the batches on the model's device and dtype, checking the model and the data.

        Each pass first checks the model's train/eval state (and, after a change of the modules'
        flags, that its forward is repeatable on the first batch), then compares every batch's
        fingerprint with the first pass's (``check_deterministic``).

        Args:
            known_fingerprint: For a caller that keeps bit-exact private copies of batches (a
                cached curvature operator): ``known_fingerprint(i, raw, batch)`` returns the
                fingerprint of batch ``i`` as read (``raw``; ``batch`` is it on the model's device
                and dtype) when the caller can vouch for it without a pass over the data (``raw``
                is bit for bit a batch it fingerprinted before), else ``None`` (then the batch is
                fingerprinted here). The comparison with the first pass is the same either way.
        """
        modes = self.modes()
        if any(modes):  # only a module in training mode can be refused
            check_model_state(self.model)
        prints = []
        for i, raw in enumerate(self._raw_batches()):
            batch = batching.to(raw, self.device, self.dtype)
            if self.check_deterministic:
                known = known_fingerprint(i, raw, batch) if known_fingerprint is not None else None
                prints.append(known if known is not None else batching.fingerprint(raw))
                if self._fingerprints is not None and (
                    i >= len(self._fingerprints) or self._fingerprints[i] != prints[-1]
                ):
                    raise DataError(
                        f"batch {i} differs from the first pass over the data; curvature needs the "
                        "same data on every pass (turn off shuffling and augmentation, fix the seed, "
                        "or do not modify the tensors in place; check_deterministic=False turns the "
                        "check off)"
                    )
            if i == 0:
                self._check_forward(batch, modes)
            yield batch
        if self.check_deterministic:
            if self._fingerprints is not None and len(prints) != len(self._fingerprints):
                raise DataError(
                    f"the data yielded {len(prints)} batches, the first pass {len(self._fingerprints)}"
                )
            self._fingerprints = prints

    def modes(self) -> tuple[bool, ...]:
        """The ``training`` flag of every module, in ``model.modules()`` order."""
        return tuple(m.training for m in self.model.modules())

    def _check_forward(self, batch: Batch, modes: tuple[bool, ...]) -> None:
        """Run the loss twice on ``batch`` (once per combination ``modes`` of the modules'
        train/eval flags) and refuse a forward that cannot run or that gives two different values."""
        if modes == self._checked_modes:
            return
        with torch.no_grad():
            state = self.state()
            try:
                first = self.batch_summed_loss(state, batch)[0]
            except WdecompError:
                raise
            except (RuntimeError, TypeError, ValueError, IndexError) as err:
                raise DataError(
                    f"the model cannot be run on the first batch ({_describe(batch)}; weights "
                    f"{self.dtype} on {self.device}): {err}. Check the input width and dtype (integer "
                    "inputs need .float() unless the model embeds token ids) and the device"
                ) from err
            second = self.batch_summed_loss(state, batch)[0]
        if not _same_bits(first, second):
            raise ModelStateError(
                f"two evaluations of the loss on the same batch at the same weights differ ({float(first)!r} "
                f"vs {float(second)!r}): the forward pass is random (dropout in training mode, such as "
                "F.dropout(..., training=True) or attention dropout, or torch.rand/randn/randint in "
                "forward), or uses a non-deterministic kernel; call model.eval(), remove the "
                "randomness, or set torch.use_deterministic_algorithms(True)"
            )
        self._checked_modes = modes

    @property
    def num_batches(self) -> int:
        if self._subset is not None:
            return len(self._subset)
        return len(self.counts)

    @property
    def counts(self) -> list[int]:
        """Number of loss terms ``n_b`` in each batch (computed once, with one forward pass each)."""
        if self._counts is None:
            self._compute_counts()
        assert self._counts is not None
        return self._counts

    @property
    def total_count(self) -> int:
        """``N``, the number of loss terms over all data (over all ranks when distributed)."""
        if self._total is None:
            total = sum(self.counts)
            if self.distributed:
                total = int(dist.all_reduce_sum(torch.tensor(float(total), dtype=torch.float64)).item())
            self._total = total
        return self._total

    def _compute_counts(self) -> None:
        counts = []
        with torch.no_grad():
            state = self.state()
            for batch in self.batches():
                _, n = self.batch_summed_loss(state, batch)
                counts.append(int(n))
        if not counts:
            raise DataError("the data hold no batches")
        if any(c <= 0 for c in counts):
            raise DataError(f"a batch has no loss terms (counts {counts})")
        self._counts = counts

    def subset(self, indices: Sequence[int]) -> Objective:
        """The objective over a multiset of this one's batches (repeats count repeatedly).

        Used for bootstrap error bars: ``obj.subset(rng.integers(0, B, B))``.
        """
        counts = self.counts
        idx = [int(i) for i in indices]
        if not idx:
            raise DataError("an empty subset of batches")
        bad = [i for i in idx if not 0 <= i < len(counts)]
        if bad:
            raise DataError(f"batch indices {bad[:5]} out of range 0..{len(counts) - 1}")
        base = list(self._raw_batches()) if self._subset is not None else self._data
        new = object.__new__(Objective)
        new.__dict__.update(self.__dict__)
        new._data = base if isinstance(base, Sequence) else list(base)
        new._subset = idx
        new._counts = [counts[i] for i in idx] if self._subset is None else [self._counts[i] for i in idx]
        new._total = None
        new._fingerprints = None
        return new

    # ----------------------------------------------------------------- functional pieces
    def state(self, params: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Detached parameters and buffers, with ``params`` substituted (tied names once): the
        names and order of ``named_parameters()`` then ``named_buffers()``."""
        return self.state_and_modes(params)[0]

    def state_and_modes(
        self, params: Mapping[str, Tensor] | None = None
    ) -> tuple[dict[str, Tensor], tuple[bool, ...]]:
        """:meth:`state` and :meth:`modes` from one walk over the modules."""
        out: dict[str, Tensor] = {}
        buffers: dict[str, Tensor] = {}
        modes: list[bool] = []
        seen_params: set[int] = set()
        seen_buffers: set[int] = set()
        for prefix, module in self.model.named_modules():
            modes.append(module.training)
            dot = prefix + "." if prefix else ""
            for table, into, seen in ((module._parameters, out, seen_params), (module._buffers, buffers, seen_buffers)):
                for name, t in table.items():
                    if t is not None and id(t) not in seen:
                        seen.add(id(t))
                        into[dot + name] = t.detach()
        out.update(buffers)
        if params:
            out.update(params)
        return out, tuple(modes)

    def model_fn(self, state: Mapping[str, Tensor] | None) -> Callable[[Any], Tensor]:
        """A function ``inputs -> outputs`` that runs the model on ``state`` (``None``: its own weights)."""
        return lambda inputs: batching.call(self.model, inputs, state)

    def output_function(
        self, inputs: Any, base: Mapping[str, Tensor] | None = None
    ) -> Callable[[dict[str, Tensor]], Tensor]:
        """``theta_sel -> model outputs`` on fixed ``inputs``; the other weights and buffers are
        ``base`` (a full state, e.g. a cached private copy) or, by default, the model's own."""
        if base is None:
            return lambda p: batching.call(self.model, inputs, self.state(p))
        return lambda p: batching.call(self.model, inputs, {**base, **p})

    def batch_summed_loss(self, state: Mapping[str, Tensor] | None, batch: Batch) -> tuple[Tensor, int]:
        """``(S_b, n_b)`` for one batch: the summed loss and its number of loss terms, with the
        parameters and buffers replaced by ``state`` (``None``: the model's own)."""
        if isinstance(self.loss, BatchLoss):
            value = self.loss.fn(self.model_fn(state), batch)
            if isinstance(value, tuple):
                return value[0], int(value[1])
            n = batching.num_examples(batch[0] if isinstance(batch, (tuple, list)) else batch)
            return value * n, n
        inputs, targets = self.inputs_targets(batch)
        outputs = batching.call(self.model, inputs, state)
        return self.loss.summed(outputs, targets)

    def inputs_targets(self, batch: Batch) -> tuple[Any, Tensor]:
        """``(inputs, targets)`` of a batch, refusing a batch without targets (a loss of outputs
        and targets needs them)."""
        inputs, targets = batching.split(batch)
        if targets is None:
            name = getattr(self.loss, "name", "loss")
            raise DataError(
                f"loss '{name}' compares outputs with targets, but the batch holds inputs only (a bare "
                "tensor or dict); pass (inputs, targets) batches, or a BatchLoss"
            )
        return inputs, targets

    def batch_objective(self, batch: Batch, params: ParamSet) -> Callable[[dict[str, Tensor]], Tensor]:
        """``theta_sel -> S_b(theta) / N``: this batch's share of the objective."""
        total = float(self.total_count)

        def f(p: dict[str, Tensor]) -> Tensor:
            return self.batch_summed_loss(self.state(p), batch)[0] / total

        return f

    def output_loss(self) -> OutputLoss:
        """The :class:`OutputLoss`, or a clear error for a :class:`BatchLoss`."""
        if isinstance(self.loss, BatchLoss):
            raise TypeError(
                "this operator needs the model's outputs and a loss of (outputs, targets); a "
                "BatchLoss only defines the scalar loss (use the Hessian instead)"
            )
        return self.loss

    def reduce(self, tensor: Tensor) -> Tensor:
        """Sum over processes when distributed (identity otherwise).

        Distributed, it first checks that every rank still holds the same weights
        (:func:`wdecomp.distributed.check_replicated`), so a product, gradient or value is never
        summed over ranks that differentiated different functions.
        """
        if self.distributed:
            dist.check_replicated(self.model)
            return dist.all_reduce_sum(tensor)
        return tensor

    # ----------------------------------------------------------------- values
    def value(self) -> float:
        """``L(theta)`` at the model's current weights (checked finite)."""
        with torch.no_grad():
            state = self.state()
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for batch in self.batches():
                s, _ = self.batch_summed_loss(state, batch)
                total = total + s.to(torch.float64)
            total = self.reduce(total)
        value = float(total) / self.total_count
        if not torch.isfinite(torch.tensor(value)):
            raise NonFiniteError(f"the loss is {value} at the model's current weights")
        return value

    def gradient(self, params: ParamSpec | ParamSet = None) -> Tensor:
        """Flat gradient ``dL/dtheta`` over the selected parameters (plain reverse mode, batch by batch).

        When every selected parameter requires grad, the model runs on its own parameters and
        ``torch.autograd.grad`` differentiates with respect to them directly (no functional call,
        no copies: the cost of a plain ``autograd.grad`` plus the data checks); otherwise on
        detached copies through :func:`torch.func.functional_call`.
        """
        pset = select_parameters(self.model, params)
        own = all(t.requires_grad for t in pset.tensors)
        g: Tensor | None = None
        with torch.enable_grad():
            for batch in self.batches():
                if own:
                    inputs: list[Tensor] = list(pset.tensors)
                    loss = self.batch_summed_loss(None, batch)[0] / float(self.total_count)
                else:
                    theta = {n: t.detach().requires_grad_() for n, t in pset.as_dict().items()}
                    inputs = list(theta.values())
                    loss = self.batch_objective(batch, pset)(theta)
                flat = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, inputs)])  # names order
                g = flat if g is None else g + flat
        assert g is not None  # the data hold at least one batch (counted before the first product)
        return self.reduce(g)

