"""Modular addition, the grokking task (Power et al. 2022, arXiv 2201.02177).

Inputs are pairs :math:`(a, b) \\in \\{0, \\dots, p-1\\}^2`, the target is
:math:`(a + b) \\bmod p`. A random ``train_fraction`` of all :math:`p^2` pairs is the training
set, the rest the test set. Trained full-batch with AdamW and strong weight decay, the networks
first memorise and then generalise ("grok") to 100% test accuracy; the generalising solution
computes with discrete Fourier features of :math:`a` and :math:`b` (Nanda et al. 2023,
"Progress measures for grokking via mechanistic interpretability", arXiv 2301.05217).

Two architectures:

* ``"mlp"`` (:class:`ModularMLP`): a shared embedding of :math:`a` and :math:`b`,
  concatenated, one ReLU hidden layer, an unembedding to :math:`p` logits.
* ``"transformer"``: a one-layer, LayerNorm-free, ReLU transformer on the three tokens
  ``a, b, =`` (``=`` has index :math:`p`) that predicts at the last position, as in Nanda et al.
  2023 (smaller than theirs so it trains in a few minutes on a CPU). Measured with the defaults
  at :math:`p = 113`: 100% test accuracy (test loss 4.5e-4, minimum test margin 2.95) after 650
  full-batch steps, 146 s on 2 CPU cores. The MLP: 100% test accuracy after about 450 steps.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from wdecomp.models.base import ModelBundle, build, or_defaults
from wdecomp.models.training import (
    accuracy,
    batches,
    cross_entropy,
    evaluate,
    full_batch,
    make_generator,
)
from wdecomp.models.training import train as train_loop
from wdecomp.models.transformer import Transformer, TransformerConfig

__all__ = ["ModularMLP", "modular_addition", "modular_addition_data"]


class ModularHidden(nn.Module):
    """The MLP of :class:`ModularMLP`: ``act(hidden(x))`` with named submodules."""

    def __init__(self, d_in: int, d_hidden: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(d_in, d_hidden)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 2 d_embed) -> (B, d_hidden)``."""
        return self.act(self.hidden(x))


class ModularMLP(nn.Module):
    """Embedding-MLP-unembedding network for :math:`(a, b) \\mapsto (a + b) \\bmod p`.

    .. math::
        z = U\\,\\mathrm{ReLU}\\big(W [E_a; E_b] + c\\big) + u

    Input: tokens ``(B, 2)`` (int64). Output: logits ``(B, p)``.
    Hook points: ``embed`` (``(B, 2, d_embed)``), ``mlp.hidden`` (pre-activation
    ``(B, d_hidden)``), ``mlp.act`` (post-ReLU), ``mlp`` (same as ``mlp.act``), ``unembed``.
    """

    def __init__(self, p: int, d_embed: int, d_hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(p, d_embed)
        self.mlp = ModularHidden(2 * d_embed, d_hidden)
        self.unembed = nn.Linear(d_hidden, p)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(B, p)`` for tokens ``(B, 2)``."""
        return self.unembed(self.mlp(self.embed(tokens).flatten(1)))


def modular_addition_data(
    p: int, train_fraction: float, seed: int, with_equals: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All :math:`p^2` pairs split at random into train and test.

    Args:
        p: the modulus.
        train_fraction: fraction of pairs in the training set.
        seed: seeds the split.
        with_equals: append the ``=`` token (index ``p``) to each input.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; inputs ``(N, 2)`` or ``(N, 3)`` int64,
        targets ``(N,)`` int64.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    cols = [a, b] + ([torch.full_like(a, p)] if with_equals else [])
    x, y = torch.stack(cols, dim=1), (a + b) % p
    perm = torch.randperm(p * p, generator=make_generator(seed))
    n = int(round(train_fraction * p * p))
    tr, te = perm[:n], perm[n:]
    return x[tr], y[tr], x[te], y[te]


_DEFAULTS = {
    "mlp": dict(
        train_fraction=0.5, d_embed=32, d_hidden=256, lr=1e-2, weight_decay=1.0, max_steps=3000
    ),
    "transformer": dict(
        train_fraction=0.5, d_embed=64, d_hidden=256, lr=3e-3, weight_decay=1.0, max_steps=4000
    ),
}


def modular_addition(
    p: int = 113,
    arch: Literal["mlp", "transformer"] = "mlp",
    train_fraction: float | None = None,
    *,
    seed: int = 0,
    d_embed: int | None = None,
    d_hidden: int | None = None,
    n_heads: int = 4,
    lr: float | None = None,
    weight_decay: float | None = None,
    max_steps: int | None = None,
    patience: int | None = 2,
    train: bool = True,
    cache: bool = True,
    progress: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> ModelBundle:
    """Modular addition model, trained until it generalises (grokking setup).

    Full-batch AdamW (betas 0.9, 0.98) with weight decay. Every 50 steps the test accuracy
    is measured; training stops once it has been 100% at ``patience`` consecutive checks, or
    after ``max_steps``. (Using the test split as a stopping rule is deliberate: the point of
    this model is a network known to implement the general algorithm.) The stored metrics say
    whether it got there. ``patience=None`` never stops early: the model trains all
    ``max_steps``, past the point where it first generalises, into what Nanda et al. 2023
    ("Progress measures for grokking via mechanistic interpretability", arXiv 2301.05217, sec. 5)
    call the *cleanup* phase (weight decay removing the memorising solution's remnants; their
    account, not measured here).

    Args:
        p: modulus (113 in the papers).
        arch: ``"mlp"`` (:class:`ModularMLP`) or ``"transformer"`` (one layer, no LayerNorm).
        train_fraction: fraction of the :math:`p^2` pairs used for training (default 0.5).
        seed: seeds the split, the initialisation and training.
        d_embed: embedding width for the MLP / ``d_model`` for the transformer
            (defaults 32 / 64).
        d_hidden: MLP hidden width (default 256).
        n_heads: attention heads (transformer only).
        lr: AdamW learning rate (defaults 1e-2 / 3e-3).
        weight_decay: AdamW weight decay (default 1.0).
        max_steps: step limit (defaults 3000 / 4000).
        patience: consecutive 100%-test-accuracy checks needed to stop; ``None``: never stop early.
        train: ``False`` returns the untrained (seeded) initialisation.
        cache: load/store trained weights in the cache.
        progress: progress bar on/off; ``None`` shows it only on a terminal.
        dtype: float32 or float64.

    Returns:
        A :class:`~wdecomp.models.base.ModelBundle`: ``data`` is the training set as one batch
        ``[(x, y)]``, ``test`` the test set; inputs are int64 tokens ``(N, 2)`` (MLP) or
        ``(N, 3)`` (transformer), targets ``(N,)``; the model returns logits ``(N, p)``.
        ``metrics`` holds ``train_accuracy``, ``test_accuracy``, ``train_loss``,
        ``test_loss``, ``train_steps``, ``train_seconds``, ``grokked``.
    """
    if arch not in _DEFAULTS:
        raise ValueError(f"arch must be 'mlp' or 'transformer', got {arch!r}")
    d = _DEFAULTS[arch]
    train_fraction, d_embed, d_hidden, lr, weight_decay, max_steps = or_defaults(
        d, train_fraction=train_fraction, d_embed=d_embed, d_hidden=d_hidden, lr=lr, weight_decay=weight_decay,
        max_steps=max_steps)
    config = dict(
        p=p, arch=arch, train_fraction=float(train_fraction), seed=seed, d_embed=d_embed,
        d_hidden=d_hidden, n_heads=n_heads if arch == "transformer" else None, lr=float(lr),
        weight_decay=float(weight_decay), max_steps=max_steps, patience=patience, train=train,
    )
    is_tf = arch == "transformer"
    x_tr, y_tr, x_te, y_te = modular_addition_data(p, train_fraction, seed, with_equals=is_tf)
    data, test = batches(x_tr, y_tr), batches(x_te, y_te)

    if is_tf:
        tcfg = TransformerConfig(
            d_vocab=p + 1, d_model=d_embed, n_layers=1, n_heads=n_heads, d_mlp=d_hidden,
            context=3, d_vocab_out=p, act="relu", layer_norm=False, output="last",
            init_std=d_embed**-0.5,
        )

        def make() -> nn.Module:
            return Transformer(tcfg)
    else:

        def make() -> nn.Module:
            return ModularMLP(p, d_embed, d_hidden)

    def fit(model: nn.Module) -> dict:
        steps, seconds, cpu, streak = 0, 0.0, 0.0, [0]
        if train:

            def check(step: int) -> bool:
                streak[0] = streak[0] + 1 if accuracy(model, test) == 1.0 else 0
                return patience is not None and streak[0] >= patience

            log = train_loop(
                model, cross_entropy, full_batch(x_tr, y_tr), steps=max_steps, lr=lr,
                weight_decay=weight_decay, betas=(0.9, 0.98), seed=seed, progress=progress,
                desc=f"modular_addition[{arch}]", callback=check, callback_every=50,
            )
            steps, seconds, cpu = log.steps, log.seconds, log.cpu_seconds
        test_acc = accuracy(model, test)
        return {
            "train_accuracy": accuracy(model, data),
            "test_accuracy": test_acc,
            "train_loss": evaluate(model, data, cross_entropy),
            "test_loss": evaluate(model, test, cross_entropy),
            "min_test_margin": _min_margin(model, x_te, y_te),
            "grokked": test_acc == 1.0,
            "train_steps": steps,
            "train_seconds": seconds,
            "train_cpu_seconds": cpu,
        }

    model, metrics, from_cache = build(
        "modular_addition", config, make, fit, seed=seed, cache=cache and train, dtype=dtype
    )
    hooks = (
        ("embed", "mlp.hidden", "mlp.act", "mlp", "unembed")
        if not is_tf
        else model.hook_points()
    )
    return ModelBundle(
        model, data, test=test, loss=cross_entropy, loss_name="cross_entropy",
        metrics=metrics, config=config, name="modular_addition", from_cache=from_cache,
        hook_points=hooks, extra={"p": p},
    )


@torch.no_grad()
def _min_margin(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Smallest gap between the correct logit and the best wrong one over ``(x, y)``."""
    logits = model(x)
    correct = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return float((correct - wrong).min())


