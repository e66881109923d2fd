"""Training sparse autoencoders on activations streamed from a model.

:func:`hook_activations` runs the model over the data batch by batch and yields the activations
of one hook point flattened to ``(tokens, d)``, shuffled inside a buffer of a few model batches
(seeded), so at most ``buffer_batches`` batches of activations are in memory at once.
:func:`fit_sae` trains any :class:`~wdecomp.sae.model.SparseAutoencoder` on such a stream (or on
a tensor); :func:`train_sae` does both for a model and a hook.

One step on a minibatch ``X`` (``(B, d)``) minimises

    L = (1/B) sum_b ||x_b - x_hat_b||^2  +  lambda (1/B) sum_b ||f_b||_1       (ReLU SAE)
    L = (1/B) sum_b ||x_b - x_hat_b||^2                                         (TopK SAE)

with Adam, the component of each free decoder column's gradient along the column projected out
before the step and the columns renormalised to unit norm after it (so ``||W_dec[:, j]|| = 1``
after every step; with unit columns the L1 term equals SAELens' decoder-norm-weighted one).
``b_dec`` starts at zero (as SAELens' SAEs initialise it) or, on request, at the mean of the
first minibatch (for sparse nonnegative codes the mean is a poor start: ``x - mean`` needs
negative coefficients a ReLU/TopK code cannot give).

**Dead latents.** A latent is *dead* when it has not fired (``f_j > 0``) on any of the last
``dead_window`` training activations. The trainer counts, per latent, the activations since it
last fired; every ``resample_every`` steps (up to ``resample_until``) dead latents are
resampled as in Bricken et al. 2023 ("Towards Monosemanticity", appendix on neuron
resampling): an input of the current minibatch is drawn with probability proportional to its
squared reconstruction error, the decoder column becomes the unit vector along ``x - b_dec``,
the encoder row the same direction scaled to 0.2 times the mean encoder row norm of the live
latents, the encoder bias 0, and Adam's moments of those entries are reset. For a
:class:`~wdecomp.sae.model.BindingSAE` a free column is resampled when its latents in every
slot are dead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from wdecomp.activations import capture
from wdecomp.batch import as_batches, split
from wdecomp.errors import DataError, NonFiniteError, ShapeError
from wdecomp.hooks import HookPoint
from wdecomp.progress import progress_bar
from wdecomp.sae.model import BindingSAE, SparseAutoencoder

__all__ = ["SAETrainResult", "fit_sae", "hook_activations", "train_sae"]


def hook_activations(
    model: nn.Module,
    data: Iterable[Any],
    hook: str,
    *,
    buffer_batches: int = 4,
    epochs: int | None = None,
    seed: int = 0,
) -> Iterator[Tensor]:
    """Stream one hook point's activations over the data, ``(tokens, d)`` chunks, shuffled.

    Args:
        model: The network (run without gradients).
        data: A re-iterable collection of ``(inputs, targets)`` batches (or bare inputs).
        hook: Hook point (``"blocks.0"``: a module's output; ``"mlp.out:input"``: its input).
        buffer_batches: Model batches whose activations are pooled and shuffled together
            (memory: this many batches of activations).
        epochs: Passes over the data; ``None`` repeats forever.
        seed: Seeds the shuffling.

    Yields:
        ``(tokens, d)`` tensors: all leading axes (batch, position) flattened.

    Raises:
        SelectionError: the hook point does not exist or is not reached.
        NonFiniteError: an activation is NaN or infinite.
        DataError: the data hold no batches.
    """
    if buffer_batches < 1:
        raise ValueError(f"buffer_batches must be >= 1, got {buffer_batches}")
    point = str(HookPoint.parse(hook))
    g = torch.Generator().manual_seed(int(seed))
    batches = as_batches(data, keep=epochs != 1, what="hook_activations")
    epoch = 0
    while epochs is None or epoch < epochs:
        buf: list[Tensor] = []
        seen = 0
        for batch in batches:
            act = capture(model, split(batch)[0], [point])[point]
            buf.append(act.reshape(-1, act.shape[-1]))
            seen += 1
            if len(buf) == buffer_batches:
                chunk = torch.cat(buf)
                buf = []
                yield chunk[torch.randperm(chunk.shape[0], generator=g).to(chunk.device)]
        if buf:
            chunk = torch.cat(buf)
            yield chunk[torch.randperm(chunk.shape[0], generator=g).to(chunk.device)]
        if seen == 0:
            raise DataError("the data hold no batches")
        epoch += 1


def _tensor_batches(X: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Minibatches of ``batch_size`` rows of ``X`` in the order of a seeded permutation drawn anew
    each epoch, a minibatch that crosses an epoch's end continuing into the next permutation. Each
    minibatch is gathered on its own (no permuted copy of ``X`` per epoch)."""
    g = torch.Generator().manual_seed(int(seed))
    n = X.shape[0]
    perm = torch.randperm(n, generator=g).to(X.device)
    at = 0
    while True:
        if at + batch_size <= n:
            idx = perm[at:at + batch_size]
            at += batch_size
        else:  # the rest of this epoch, then the start of the next
            rest = perm[at:]
            perm = torch.randperm(n, generator=g).to(X.device)
            at = batch_size - rest.shape[0]
            idx = torch.cat([rest, perm[:at]])
        yield X.index_select(0, idx)


def _check_finite(chunk: Tensor) -> None:
    """NaN/inf refused. One reduction first (NaN and inf propagate into the sum); the elementwise
    test runs only when the sum is not finite (a NaN/inf, or finite values that overflow the sum)."""
    if not bool(torch.isfinite(chunk.sum())) and not bool(torch.isfinite(chunk).all()):
        raise NonFiniteError("the activations contain NaN or infinite values; an SAE cannot be fitted to them")


def _minibatches(source: Iterator[Tensor], batch_size: int,
                 check: Callable[[Tensor], None] = _check_finite) -> Iterator[Tensor]:
    """Cut a stream of chunks into minibatches of exactly ``batch_size`` rows (each chunk passed
    to ``check`` first: NaN/inf refused)."""
    rest: Tensor | None = None
    for chunk in source:
        check(chunk)
        chunk = chunk if rest is None else torch.cat([rest, chunk])
        start = 0
        while start + batch_size <= chunk.shape[0]:
            yield chunk[start:start + batch_size]
            start += batch_size
        rest = chunk[start:] if start < chunk.shape[0] else None


@dataclass(frozen=True)
class SAETrainResult:
    """What :func:`fit_sae` returns.

    Attributes:
        sae: The trained SAE (eval mode, gradients off).
        steps: Optimiser steps taken.
        tokens: Activations seen.
        history: One dict per logged step: ``step``, ``loss``, ``mse`` (mean squared error summed
            over ``d``), ``l0`` (mean latents firing per activation), ``dead`` (dead latents).
        dead: Latents dead at the end (no firing in the last ``dead_window`` activations).
        tokens_since_fired: ``(n,)`` activations since each latent last fired.
        resampled: Total latents (free columns, for binding) resampled.
        seconds: Wall-clock training time.
    """

    sae: SparseAutoencoder
    steps: int
    tokens: int
    history: tuple[dict[str, float], ...]
    dead: int
    tokens_since_fired: Tensor = field(repr=False)
    resampled: int
    seconds: float

    def __str__(self) -> str:
        last = self.history[-1] if self.history else {}
        return (f"SAE training: {self.steps} steps, {self.tokens} activations, {self.seconds:.1f} s; "
                f"final loss {last.get('loss', float('nan')):.4g}, mse {last.get('mse', float('nan')):.4g}, "
                f"L0 {last.get('l0', float('nan')):.3g}; dead {self.dead}/{self.sae.width}, "
                f"resampled {self.resampled}")


def _reset_adam(opt: torch.optim.Optimizer, param: Tensor, index: tuple[Any, ...]) -> None:
    state = opt.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][index] = 0


@torch.no_grad()
def _resample(sae: SparseAutoencoder, opt: torch.optim.Optimizer, dead: Tensor, x: Tensor, x_hat: Tensor,
              g: torch.Generator) -> int:
    """Resample dead latents from high-error inputs (see the module docstring); returns how many."""
    if isinstance(sae, BindingSAE):
        per = dead.reshape(sae.slots, sae.n_free).all(0)
        idx = torch.nonzero(per).reshape(-1)
    else:
        idx = torch.nonzero(dead).reshape(-1)
    if idx.numel() == 0:
        return 0
    err = (x - x_hat).pow(2).sum(-1).to(torch.float64).cpu()
    if not bool((err > 0).any()):
        return 0
    rows = torch.multinomial(err, idx.numel(), replacement=idx.numel() > err.numel(), generator=g)
    v = (x[rows.to(x.device)] - sae.b_dec).T  # (d, r)
    v = v / v.norm(dim=0, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    alive = ~dead
    scale = 0.2 * (sae.W_enc[alive].norm(dim=1).mean() if bool(alive.any()) else torch.tensor(1.0))
    free = sae.free_columns()
    free[:, idx] = v.to(free.dtype)
    _reset_adam(opt, free, (slice(None), idx))
    if isinstance(sae, BindingSAE):
        dirs = v
        for j in range(sae.slots):
            lat = idx + j * sae.n_free
            u = dirs / dirs.norm(dim=0, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
            sae.W_enc[lat] = (u.T * scale).to(sae.W_enc.dtype)
            sae.b_enc[lat] = 0
            _reset_adam(opt, sae.W_enc, (lat,))
            _reset_adam(opt, sae.b_enc, (lat,))
            dirs = sae.R @ dirs
    else:
        sae.W_enc[idx] = (v.T * scale).to(sae.W_enc.dtype)
        sae.b_enc[idx] = 0
        _reset_adam(opt, sae.W_enc, (idx,))
        _reset_adam(opt, sae.b_enc, (idx,))
    return int(idx.numel())


def fit_sae(
    sae: SparseAutoencoder,
    source: Tensor | Iterable[Tensor],
    *,
    steps: int,
    batch_size: int = 1024,
    lr: float = 1e-3,
    l1: float = 1e-3,
    seed: int = 0,
    dead_window: int | None = None,
    resample_every: int | None = None,
    resample_until: float = 0.6,
    lr_decay: float = 0.2,
    init_b_dec: str = "zeros",
    log_every: int = 50,
    callback: Callable[[int, SparseAutoencoder, Tensor], None] | None = None,
    progress: bool | None = None,
    encoder_only: bool = False,
) -> SAETrainResult:
    """Train ``sae`` in place on a stream of activations (see the module docstring).

    Args:
        sae: The SAE to train (plain or binding).
        source: ``(N, d)`` activations (reshuffled every epoch) or an iterable of ``(n_i, d)``
            chunks (e.g. :func:`hook_activations`), cut into minibatches.
        steps: Optimiser steps.
        batch_size: Activations per step.
        lr: Adam learning rate.
        l1: L1 coefficient ``lambda`` (ReLU SAEs only).
        seed: Seeds the minibatch order of a tensor source and the resampling draws.
        dead_window: Activations without firing after which a latent counts as dead (default: a
            quarter of the run's activations, at most 1000 minibatches, SAELens'
            ``dead_feature_window`` default).
        resample_every: Resample dead latents every this many steps (``None``: a quarter of
            ``steps``; ``0``: never).
        resample_until: Stop resampling after this fraction of the run.
        lr_decay: Fraction of the run at the end over which the learning rate decays linearly
            to 0 (SAELens' ``lr_decay_steps``; 0: constant).
        init_b_dec: ``"zeros"`` (SAELens' current default: ``b_dec`` as initialised) or
            ``"mean"`` (the mean of the first minibatch).
        log_every: Steps between history rows.
        callback: Called after every step as ``callback(step, sae, latents)``.
        progress: Progress bar (default: on a terminal).
        encoder_only: Train only ``W_enc`` and ``b_enc`` (the dictionary and ``b_dec`` stay as
            they are; no resampling, which rewrites dictionary columns).

    Returns:
        :class:`SAETrainResult`.

    Raises:
        ShapeError: the activations' width is not the SAE's ``d_in``.
        NonFiniteError: an activation is NaN or infinite.
        DataError: the source runs out before ``steps`` minibatches.
    """
    if init_b_dec not in ("zeros", "mean"):
        raise ValueError(f"init_b_dec must be 'zeros' or 'mean', not {init_b_dec!r}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}")
    if isinstance(source, Tensor):
        if source.dim() != 2:
            raise ShapeError(f"activations must be (N, d), got shape {tuple(source.shape)}")
        if source.shape[0] < batch_size:
            raise DataError(f"{source.shape[0]} activations are fewer than one minibatch of {batch_size}")
        sae._check(source)  # once: every minibatch is a set of the same rows
        _check_finite(source)
        batches = _tensor_batches(source, batch_size, seed)
    else:

        def check(chunk: Tensor) -> None:  # every chunk of a stream
            sae._check(chunk)
            _check_finite(chunk)

        batches = _minibatches(iter(source), batch_size, check)
    total_tokens = steps * batch_size
    window = dead_window if dead_window is not None else max(batch_size, min(total_tokens // 4, 1000 * batch_size))
    every = max(1, steps // 4) if resample_every is None else resample_every
    g = torch.Generator().manual_seed(int(seed) + 1)
    dtype = sae.W_enc.dtype
    sae.train().requires_grad_(True)
    if encoder_only:
        for prm in sae.parameters():
            prm.requires_grad_(False)
        sae.W_enc.requires_grad_(True)
        sae.b_enc.requires_grad_(True)
        every = 0  # resampling rewrites decoder columns
    opt = torch.optim.Adam([prm for prm in sae.parameters() if prm.requires_grad], lr=lr)
    decay_start = int(round((1 - lr_decay) * steps))

    def set_lr(s: int) -> None:  # lr * the schedule's factor after s steps (as LambdaLR would set it)
        factor = 1.0 if s < decay_start else max(0.0, (steps - s) / max(1, steps - decay_start))
        for group in opt.param_groups:
            group["lr"] = lr * factor

    set_lr(0)
    since = torch.zeros(sae.width, dtype=torch.long, device=sae.W_enc.device)  # kept on the SAE's device
    history: list[dict[str, float]] = []
    resampled = 0
    t0 = time.perf_counter()
    step = 0
    with progress_bar(total=steps, desc=f"SAE[{sae.width}]", enabled=progress) as bar:
        for step in range(1, steps + 1):
            try:
                x = next(batches)
            except StopIteration:
                raise DataError(f"the activation stream ran out after {step - 1} of {steps} steps") from None
            x = x.to(dtype)
            if step == 1 and init_b_dec == "mean":
                with torch.no_grad():
                    sae.b_dec.copy_(x.mean(0))
            f, fired = sae._encode(x, fired=True)
            x_hat = sae.decode(f)
            mse = (x_hat - x).pow(2).sum(-1).mean()
            loss = mse + l1 * f.sum(-1).mean() if sae.activation == "relu" else mse
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not encoder_only:
                sae.remove_parallel_gradient_()
            opt.step()
            if step >= decay_start:  # before it the factor is 1
                set_lr(step)
            if not encoder_only:
                sae.normalize_decoder_()
            since.add_(batch_size).masked_fill_(fired, 0)
            if every and step % every == 0 and step <= resample_until * steps:
                dead = since >= window
                if bool(dead.any()):
                    resampled += _resample(sae, opt, dead, x.detach(), x_hat.detach(), g)
            if callback is not None:
                callback(step, sae, f.detach())
            if step % log_every == 0 or step == steps:
                row = {"step": float(step), "loss": float(loss.detach()), "mse": float(mse.detach()),
                       "l0": float((f.detach() > 0).sum(-1).float().mean()),
                       "dead": float(int((since >= window).sum()))}
                history.append(row)
                bar.set_postfix_str(f"mse {row['mse']:.3g} L0 {row['l0']:.3g}")
            bar.update(1)
    sae.eval().requires_grad_(False)
    return SAETrainResult(
        sae=sae, steps=step, tokens=step * batch_size, history=tuple(history),
        dead=int((since >= window).sum()), tokens_since_fired=since.cpu(), resampled=resampled,
        seconds=time.perf_counter() - t0,
    )


def train_sae(
    model: nn.Module,
    data: Iterable[Any],
    hook: str,
    *,
    width: int,
    activation: str = "topk",
    k: int | None = None,
    slots: int = 1,
    steps: int = 1000,
    batch_size: int = 1024,
    buffer_batches: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> SAETrainResult:
    """Train an SAE on a model's activations at ``hook``, streamed over ``data``.

    Args:
        model: The network.
        data: Re-iterable ``(inputs, targets)`` batches (cycled as often as ``steps`` needs).
        hook: Hook point, e.g. ``"blocks.0"`` (the residual stream after block 0).
        width: Latents ``n`` (for ``slots > 1``: free dictionary size ``m``; latents ``slots m``).
        activation: ``"topk"`` or ``"relu"``.
        k: Latents kept per row (TopK).
        slots: ``1`` for a plain SAE, ``>= 2`` for a :class:`~wdecomp.sae.model.BindingSAE`.
        steps: Optimiser steps.
        batch_size: Activations per step.
        buffer_batches: Model batches shuffled together (see :func:`hook_activations`).
        seed: Seeds initialisation, shuffling and resampling.
        dtype: SAE parameter dtype.
        **kwargs: Passed to :func:`fit_sae` (``lr``, ``l1``, ``dead_window``, ``callback``, ...).

    Raises:
        SelectionError: the hook point does not exist.
        NonFiniteError: NaN or infinite activations.
    """
    stream = hook_activations(model, data, hook, buffer_batches=buffer_batches, seed=seed)
    first = next(stream)
    point = str(HookPoint.parse(hook))
    d = int(first.shape[-1])
    if slots > 1:
        sae: SparseAutoencoder = BindingSAE(d, width, slots=slots, activation=activation, k=k, hook=point,
                                            dtype=dtype, seed=seed)
    else:
        sae = SparseAutoencoder(d, width, activation=activation, k=k, hook=point, dtype=dtype, seed=seed)

    def chained() -> Iterator[Tensor]:
        yield first
        yield from stream

    return fit_sae(sae, chained(), steps=steps, batch_size=batch_size, seed=seed, **kwargs)
