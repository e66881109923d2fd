"""Character-level transformer on the English text that ships with Python, and a scaling sweep.

The corpus is ``pydoc_data.topics.topics`` (the help texts of the ``help()`` system): the values
concatenated in sorted key order, about 465k characters. The last 10% of the characters are the
validation split, the rest the training split; the vocabulary is every distinct character of the
whole text, sorted by code point. The text differs between Python versions, so its SHA-256 is
part of every cache key.

The scaling sweep (:func:`char_scaling_sweep`) trains a family of sizes :math:`N` for matched
token budgets :math:`D` and reports validation losses :math:`L(N, D)`, the points a fit of
:math:`L = E + A/N^\\alpha + B/D^\\beta` (Hoffmann et al. 2022, arXiv 2203.15556) consumes. Following
Kaplan et al. 2020 (arXiv 2001.08361), :math:`N` counts non-embedding parameters: every parameter
except the token and position embeddings (the unembedding is counted).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from wdecomp.models.base import ModelBundle, build, or_defaults
from wdecomp.models.training import (
    Batch,
    count_parameters,
    cross_entropy,
    evaluate,
    progress_enabled,
)
from wdecomp.models.training import train as train_loop
from wdecomp.models.transformer import Transformer, TransformerConfig

__all__ = [
    "CharCorpus",
    "ScalingPoint",
    "char_corpus",
    "char_scaling_sweep",
    "char_transformer",
    "sweep_points",
    "unigram_entropy",
]

#: Fraction of the text (at the end) held out for validation.
VAL_FRACTION = 0.1
#: Parameter-name prefixes not counted in the non-embedding parameter count N.
EMBEDDING_PREFIXES = ("embed", "pos_embed")


@dataclass(frozen=True)
class CharCorpus:
    """The tokenised corpus.

    Attributes:
        chars: the vocabulary; token ``i`` is ``chars[i]``.
        train: ``(n_train,)`` int64 token ids of the training split.
        val: ``(n_val,)`` int64 token ids of the validation split.
        sha256: hex digest of the UTF-8 text (identifies the Python version's corpus).
    """

    chars: str
    train: Tensor
    val: Tensor
    sha256: str

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """Token ids ``(len(text),)`` of ``text``; raises ``KeyError`` on an unknown char."""
        index = {c: i for i, c in enumerate(self.chars)}
        return torch.tensor([index[c] for c in text], dtype=torch.int64)

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """The string of token ids."""
        return "".join(self.chars[int(i)] for i in ids)


@functools.lru_cache(maxsize=1)
def char_corpus() -> CharCorpus:
    """Load, tokenise and split the ``pydoc_data.topics`` text (cached in memory)."""
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    chars = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
    n_val = int(round(VAL_FRACTION * len(ids)))
    return CharCorpus(
        chars=chars,
        train=ids[:-n_val].clone(),
        val=ids[-n_val:].clone(),
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def unigram_entropy(split: str = "all") -> float:
    """Entropy in nats of the character frequencies, the loss of the best context-free model.

    Args:
        split: ``"all"`` for :math:`H(p) = -\\sum_c p_c \\log p_c` over the whole text, or
            ``"val"`` for the cross-entropy of the validation split under the training split's
            frequencies (add-one smoothed), :math:`-\\sum_c q_c \\log \\hat p_c`.
    """
    corpus = char_corpus()
    v = corpus.vocab_size
    if split == "all":
        counts = torch.bincount(torch.cat([corpus.train, corpus.val]), minlength=v).double()
        p = counts / counts.sum()
        nz = p > 0
        return float(-(p[nz] * p[nz].log()).sum())
    if split == "val":
        p = torch.bincount(corpus.train, minlength=v).double() + 1.0
        p = p / p.sum()
        q = torch.bincount(corpus.val, minlength=v).double()
        q = q / q.sum()
        return float(-(q * p.log()).sum())
    raise ValueError(f"split must be 'all' or 'val', got {split!r}")


def _windows(ids: Tensor, context: int, starts: Tensor) -> Batch:
    offsets = starts[:, None] + torch.arange(context + 1)
    seq = ids[offsets]
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def _eval_batches(
    ids: Tensor, context: int, batch_size: int, n_batches: int | None
) -> list[Batch]:
    """Non-overlapping windows; ``n_batches`` of them spread evenly over the split."""
    n_windows = (len(ids) - 1) // context
    starts = torch.arange(n_windows) * context
    if n_batches is not None and n_batches * batch_size < n_windows:
        pick = torch.linspace(0, n_windows - 1, n_batches * batch_size).round().long()
        starts = starts[pick]
    x, y = _windows(ids, context, starts)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def non_embedding_params(model: torch.nn.Module) -> int:
    """Kaplan et al. 2020's :math:`N`: parameters other than the token/position embeddings."""
    return count_parameters(model, exclude=EMBEDDING_PREFIXES)


def char_transformer(
    d_model: int = 128,
    n_layers: int = 2,
    n_heads: int = 4,
    context: int = 64,
    *,
    d_mlp: int | None = None,
    tokens: int = 2_000_000,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.1,
    warmup: int = 100,
    seed: int = 0,
    n_data_batches: int | None = 8,
    train: bool = True,
    cache: bool = True,
    progress: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> ModelBundle:
    """A pre-LayerNorm character transformer trained on ``pydoc_data.topics``.

    Training samples random windows of ``context + 1`` characters from the training split
    (seeded), ``ceil(tokens / (batch_size * context))`` AdamW steps with linear warm-up and
    cosine decay to 10%, gradient norm clipped at 1. The model is a
    :class:`~wdecomp.models.transformer.Transformer` (GELU MLP of width ``4 * d_model`` by
    default); see that module for hook-point names. Measured with the defaults (410k
    parameters, 2M tokens, 977 steps, 92 s on 2 CPU cores): validation loss 1.343 nats per
    character (training 1.280), against 3.25 nats for the unigram distribution.

    Args:
        d_model: residual width.
        n_layers: number of blocks.
        n_heads: attention heads per block.
        context: window length :math:`T`.
        d_mlp: MLP width (default ``4 * d_model``).
        tokens: training token budget :math:`D` (predicted positions seen).
        batch_size: windows per step (and per returned batch).
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup: warm-up steps (capped at a tenth of the run).
        seed: seeds initialisation and window sampling.
        n_data_batches: number of batches in the returned ``data`` (non-overlapping windows
            spread over the training split); ``None`` for every window of the split.
        train: ``False`` returns the untrained (seeded) initialisation.
        cache: load/store trained weights in the cache.
        progress: progress bar on/off; ``None`` shows it only on a terminal.
        dtype: float32 or float64.

    Returns:
        A :class:`~wdecomp.models.base.ModelBundle`: inputs ``(B, T)`` int64, targets
        ``(B, T)`` next-character ids, logits ``(B, T, V)``. ``test`` is every non-overlapping
        window of the validation split. ``metrics`` holds ``val_loss`` (nats per character,
        over all validation windows), ``train_loss`` (over ``data``), ``n_params``
        (non-embedding :math:`N`), ``n_params_total``, ``n_tokens`` (:math:`D`).
        ``extra["corpus"]`` is the :class:`CharCorpus` (vocabulary, encode/decode).
    """
    corpus = char_corpus()
    tcfg = TransformerConfig(
        d_vocab=corpus.vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
        d_mlp=d_mlp, context=context, act="gelu", layer_norm=True, output="all",
    )
    steps = max(1, math.ceil(tokens / (batch_size * context)))
    config = dict(
        transformer=tcfg.to_dict(), tokens=int(tokens), batch_size=batch_size, lr=float(lr),
        weight_decay=float(weight_decay), warmup=warmup, seed=seed, train=train,
        text_sha256=corpus.sha256, val_fraction=VAL_FRACTION,
    )
    data = _eval_batches(corpus.train, context, batch_size, n_data_batches)
    test = _eval_batches(corpus.val, context, batch_size, None)
    train_ids = corpus.train
    n_starts = len(train_ids) - context

    def sample(step: int, g: torch.Generator) -> Batch:
        return _windows(train_ids, context, torch.randint(0, n_starts, (batch_size,), generator=g))

    def fit(model: Transformer) -> dict:
        steps_done, seconds, cpu = 0, 0.0, 0.0
        if train:
            log = train_loop(
                model, cross_entropy, sample, steps=steps, lr=lr, weight_decay=weight_decay,
                betas=(0.9, 0.95), warmup=min(warmup, steps // 10), schedule="cosine",
                min_lr_ratio=0.1, grad_clip=1.0, seed=seed, progress=progress,
                desc=f"char_transformer[d={d_model},L={n_layers}]",
            )
            steps_done, seconds, cpu = log.steps, log.seconds, log.cpu_seconds
        return {
            "val_loss": evaluate(model, test, cross_entropy),
            "train_loss": evaluate(model, data, cross_entropy),
            "n_params": non_embedding_params(model),
            "n_params_total": count_parameters(model),
            "n_tokens": steps_done * batch_size * context,
            "train_steps": steps_done,
            "train_seconds": seconds,
            "train_cpu_seconds": cpu,
        }

    model, metrics, from_cache = build(
        "char_transformer", config, lambda: Transformer(tcfg), fit, seed=seed,
        cache=cache and train, dtype=dtype,
    )
    return ModelBundle(
        model, data, test=test, loss=cross_entropy, loss_name="cross_entropy",
        metrics=metrics, config=config, name="char_transformer", from_cache=from_cache,
        hook_points=model.hook_points(), extra={"corpus": corpus},
    )


@dataclass(frozen=True)
class ScalingPoint:
    """One run of a scaling sweep: :math:`(N, D, L)` plus how it was obtained.

    Behaves as the 3-sequence ``(n_params, n_tokens, loss)``, so a list of points converts
    with ``numpy.asarray(points)`` to the ``(n, 3)`` array a scaling-law fitter takes, and
    ``N, D, L = point`` unpacks.

    Attributes:
        n_params: non-embedding parameters :math:`N`.
        n_tokens: training tokens :math:`D` (predicted characters).
        loss: validation cross-entropy in nats per character.
        d_model: residual width of the run.
        n_layers: number of blocks.
        n_heads: attention heads.
        n_params_total: all parameters, embeddings included.
        train_loss: loss on the returned training batches.
        train_seconds: wall-clock training time (0 when loaded from the cache).
        seed: training seed.
    """

    n_params: int
    n_tokens: int
    loss: float
    d_model: int
    n_layers: int
    n_heads: int
    n_params_total: int
    train_loss: float
    train_seconds: float
    seed: int

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> float:
        return (self.n_params, self.n_tokens, self.loss)[i]

    def __iter__(self) -> Iterator[float]:
        return iter((self.n_params, self.n_tokens, self.loss))

    @property
    def flops(self) -> float:
        """Training compute estimate :math:`C \\approx 6ND` (Kaplan et al. 2020)."""
        return 6.0 * self.n_params * self.n_tokens

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


def sweep_points(points: Sequence[ScalingPoint]) -> dict[str, list[float]]:
    """Columns ``{"N": [...], "D": [...], "loss": [...]}`` of a sweep, for a fitter."""
    return {
        "N": [p.n_params for p in points],
        "D": [p.n_tokens for p in points],
        "loss": [p.loss for p in points],
    }


#: Sizes ``(d_model, n_layers, n_heads)`` and token budgets of the sweep presets.
SWEEP_PRESETS: dict[str, dict] = {
    "quick": dict(
        sizes=((16, 1, 2), (24, 1, 2), (32, 2, 2)),
        tokens=(32_768, 65_536, 131_072),
        context=32,
        batch_size=16,
    ),
    "default": dict(
        sizes=((32, 2, 2), (48, 2, 2), (64, 2, 4), (96, 2, 4)),
        tokens=(262_144, 524_288, 1_048_576),
        context=64,
        batch_size=32,
    ),
}


def char_scaling_sweep(
    sizes: Sequence[tuple[int, int, int]] | None = None,
    tokens: Sequence[int] | None = None,
    *,
    preset: str = "default",
    context: int | None = None,
    batch_size: int | None = None,
    lr: float = 3e-3,
    seed: int = 0,
    cache: bool = True,
    progress: bool | None = None,
) -> list[ScalingPoint]:
    """Train character transformers of several sizes for several token budgets.

    Every pair (size, budget) is its own run with its own cosine schedule ending at the budget
    (an intermediate checkpoint of a longer run would overstate the loss at that budget;
    Hoffmann et al. 2022, arXiv 2203.15556). Runs go through :func:`char_transformer`, so they
    are cached individually and a repeated sweep only loads weights.

    Args:
        sizes: ``(d_model, n_layers, n_heads)`` triples; default from ``preset``.
        tokens: training token budgets :math:`D`; default from ``preset``.
        preset: ``"quick"`` (tiny models, tens of seconds on 2 CPU cores, for tests) or
            ``"default"`` (a few minutes).
        context: window length (default from ``preset``).
        batch_size: windows per step (default from ``preset``).
        lr: peak learning rate of every run.
        seed: seed of every run.
        cache: load/store each run in the cache.
        progress: a bar over the runs; ``None`` shows it only on a terminal.

    Returns:
        One :class:`ScalingPoint` per (size, budget), sizes outer, budgets inner.
    """
    if preset not in SWEEP_PRESETS:
        raise ValueError(f"preset must be one of {sorted(SWEEP_PRESETS)}, got {preset!r}")
    pre = SWEEP_PRESETS[preset]
    sizes, tokens, context, batch_size = or_defaults(pre, sizes=sizes, tokens=tokens, context=context,
                                                     batch_size=batch_size)
    runs = [(s, d) for s in sizes for d in tokens]
    from tqdm.auto import tqdm

    points = []
    for (d_model, n_layers, n_heads), budget in tqdm(
        runs, desc="char_scaling_sweep", disable=not progress_enabled(progress), leave=False
    ):
        b = char_transformer(
            d_model=d_model, n_layers=n_layers, n_heads=n_heads, context=context,
            tokens=budget, batch_size=batch_size, lr=lr, seed=seed, cache=cache,
            progress=False, n_data_batches=2,
        )
        m = b.metrics
        points.append(
            ScalingPoint(
                n_params=int(m["n_params"]), n_tokens=int(m["n_tokens"]),
                loss=float(m["val_loss"]), d_model=d_model, n_layers=n_layers,
                n_heads=n_heads, n_params_total=int(m["n_params_total"]),
                train_loss=float(m["train_loss"]),
                train_seconds=0.0 if b.from_cache else float(m["train_seconds"]), seed=seed,
            )
        )
    return points
