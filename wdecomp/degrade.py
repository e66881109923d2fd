"""Looking at a degraded model: side-by-side generations and where the loss rises.

A loss number says *how much* an edit (a spliced SAE, an ablation, a decomposition) damages a
model; this module shows *what* changed, as the seed text asks ("spend some time playing with the
degraded model ... figure out in what ways it is worse"):

* :func:`compare_generations`: continuations of each prompt from the original and the edited
  model, greedy and sampled, the sampled ones drawn with the same seeded generator for both, so
  an edit that changes nothing gives identical text for every prompt and seed. Each pair records
  its *divergence index*: the first continuation token where the two differ (``None`` if none).
  Written as markdown and HTML with the divergence point marked.
* :func:`token_degradation`: per-token loss of both models over data, ``Δ_t = l'_t - l_t``,
  grouped by the class of the predicted token (letter, space, punctuation, digit, newline,
  other), its position in the word (the number of word characters immediately before it), and
  its frequency bucket (tokens ordered by frequency in the data; the ones making up the first
  50% of occurrences are "frequent", the next 40% "middle", the last 10% "rare"), each group
  with its mean ``Δ`` and its share of the total increase, worst group first; and the inputs
  (windows) whose mean ``Δ`` is largest, decoded.

An *edit* is ``(hook, replacement)`` (the replacement spliced at the hook with
:func:`wdecomp.ablation.splice`), a mapping ``{hook: replacement}``, a function ``model -> context
manager`` that applies any change for the duration of the block, or ``None`` (no change).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wdecomp.ablation import splice
from wdecomp.errors import DataError, ShapeError
from wdecomp.io import atomic_write_text
from wdecomp.progress import progress_bar

__all__ = [
    "Continuation",
    "GenerationComparison",
    "GroupDegradation",
    "TokenDegradation",
    "applied",
    "compare_generations",
    "generate",
    "token_class",
    "token_degradation",
]

Edit = Any


@contextmanager
def applied(model: nn.Module, edit: Edit) -> Iterator[nn.Module]:
    """Apply ``edit`` to ``model`` for the duration of the block (see the module docstring)."""
    if edit is None:
        yield model
        return
    with ExitStack() as stack:
        if isinstance(edit, tuple) and len(edit) == 2 and isinstance(edit[0], str):
            stack.enter_context(splice(model, edit[0], edit[1]))
        elif isinstance(edit, Mapping):
            for hook, fn in edit.items():
                stack.enter_context(splice(model, hook, fn))
        elif callable(edit):
            cm = edit(model)
            if not isinstance(cm, AbstractContextManager):
                raise TypeError("an edit function must return a context manager (e.g. wdecomp.ablation.splice(...))")
            stack.enter_context(cm)
        else:
            raise TypeError(
                f"an edit is (hook, replacement), {{hook: replacement}}, a function model -> context manager or "
                f"None, not {type(edit).__name__}"
            )
        yield model


def _last_logits(model: nn.Module, ids: Tensor) -> Tensor:
    out = model(ids[None])
    return out[0, -1] if out.dim() == 3 else out[0]


def _context(model: nn.Module, context: int | None) -> int | None:
    if context is not None:
        return context
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "context", None)


@torch.no_grad()
def generate(model: nn.Module, prompt: Tensor, max_new_tokens: int, *, temperature: float | None = None,
             generator: torch.Generator | None = None, context: int | None = None) -> list[int]:
    """Continue ``prompt`` (``(T,)`` token ids) by ``max_new_tokens`` tokens.

    Greedy (``temperature=None``: ``argmax`` of the last logits) or sampled from
    ``softmax(logits / temperature)`` with ``generator``. Only the last ``context`` tokens are
    fed (the model's ``cfg.context`` when it has one).
    """
    ctx = _context(model, context)
    ids = prompt.clone()
    new: list[int] = []
    for _ in range(max_new_tokens):
        window = ids if ctx is None else ids[-ctx:]
        logits = _last_logits(model, window).to(torch.float64)
        if temperature is None:
            nxt = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        new.append(nxt)
        ids = torch.cat([ids, torch.tensor([nxt], dtype=ids.dtype, device=ids.device)])
    return new


def _divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@dataclass(frozen=True)
class Continuation:
    """One prompt continued by both models.

    Attributes:
        prompt: The prompt text.
        mode: ``"greedy"`` or ``"sample"``.
        seed: Seed of the sampling generator (``None`` for greedy).
        original: Token ids the original model produced.
        edited: Token ids the edited model produced.
        original_text: ``original`` decoded.
        edited_text: ``edited`` decoded.
        divergence: Index of the first token where they differ, or ``None`` (identical).
    """

    prompt: str
    mode: str
    seed: int | None
    original: tuple[int, ...]
    edited: tuple[int, ...]
    original_text: str
    edited_text: str
    divergence: int | None


def _split(tokens: Sequence[int], at: int | None, decode: Callable[[list[int]], str]) -> tuple[str, str]:
    if at is None:
        return decode(list(tokens)), ""
    return decode(list(tokens[:at])), decode(list(tokens[at:]))


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("\n", "⏎")


@dataclass(frozen=True)
class GenerationComparison:
    """Side-by-side continuations of :func:`compare_generations`.

    Attributes:
        continuations: One per (prompt, mode, seed), prompts outer.
        label: Name of the edit.
        decode: Token ids -> text (used to mark the divergence point).
        degradation: The per-token degradation report when data were given.
    """

    continuations: tuple[Continuation, ...]
    label: str
    decode: Callable[[list[int]], str] = field(repr=False)
    degradation: TokenDegradation | None = None

    @property
    def identical(self) -> bool:
        """Every continuation pair is identical."""
        return all(c.divergence is None for c in self.continuations)

    def to_markdown(self) -> str:
        """Markdown: a table per prompt, the edited text's divergence marked with ``⟦▶`` ... ``⟧``."""
        lines = [f"# Generations: original vs {self.label}", "",
                 "`⏎` is a newline; the edited continuation's text from the first differing token on is "
                 "between `⟦▶` and `⟧`.", ""]
        prompt = None
        for c in self.continuations:
            if c.prompt != prompt:
                prompt = c.prompt
                lines += ["", f"## Prompt: `{_md(prompt)}`", "", "| mode | seed | diverges at | original | edited |",
                          "|---|---|---|---|---|"]
            same_o, diff_o = _split(c.original, c.divergence, self.decode)
            same_e, diff_e = _split(c.edited, c.divergence, self.decode)
            orig = _md(same_o) + (f"⟦▶{_md(diff_o)}⟧" if c.divergence is not None else "")
            edit = _md(same_e) + (f"⟦▶{_md(diff_e)}⟧" if c.divergence is not None else "")
            at = "-" if c.divergence is None else str(c.divergence)
            lines.append(f"| {c.mode} | {'-' if c.seed is None else c.seed} | {at} | {orig} | {edit} |")
        if self.degradation is not None:
            lines += ["", self.degradation.to_markdown()]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """A self-contained HTML page; the text after the divergence point is highlighted."""
        def span(same: str, diff: str, cls: str) -> str:
            out = html.escape(same)
            if diff:
                out += f'<span class="{cls}">{html.escape(diff)}</span>'
            return out

        rows = []
        for c in self.continuations:
            same_o, diff_o = _split(c.original, c.divergence, self.decode)
            same_e, diff_e = _split(c.edited, c.divergence, self.decode)
            at = "-" if c.divergence is None else str(c.divergence)
            rows.append(
                f"<tr><td><pre>{html.escape(c.prompt)}</pre></td><td>{c.mode}</td>"
                f"<td>{'-' if c.seed is None else c.seed}</td><td>{at}</td>"
                f"<td><pre>{span(same_o, diff_o, 'orig')}</pre></td>"
                f"<td><pre>{span(same_e, diff_e, 'div')}</pre></td></tr>"
            )
        deg = ""
        if self.degradation is not None:
            deg = "<h2>Per-token degradation</h2>" + self.degradation.to_html()
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>wdecomp generations</title><style>"
            "body{font-family:sans-serif} td{vertical-align:top;border-bottom:1px solid #ccc;padding:4px}"
            "pre{white-space:pre-wrap;margin:0} .div{background:#fbb} .orig{background:#bdf}</style></head><body>"
            f"<h1>Generations: original vs {html.escape(self.label)}</h1>"
            "<p>Highlighted: each continuation from the first token where the two models differ.</p>"
            "<table><tr><th>prompt</th><th>mode</th><th>seed</th><th>diverges at</th><th>original</th>"
            f"<th>edited</th></tr>{''.join(rows)}</table>{deg}</body></html>\n"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the continuations (token ids and text) and the degradation groups."""
        out: dict[str, Any] = {"label": self.label, "identical": self.identical,
                               "continuations": [asdict(c) for c in self.continuations]}
        if self.degradation is not None:
            deg = self.degradation
            out["degradation"] = {
                "original": deg.original, "edited": deg.edited, "n_tokens": deg.n_tokens,
                "groups": {k: [asdict(r) for r in rows] for k, rows in deg.groups.items()},
                "worst_inputs": [list(w) for w in deg.worst_inputs],
            }
        return out

    def save(self, directory: str | os.PathLike, stem: str = "generations") -> tuple[Path, Path]:
        """Write ``<stem>.md`` and ``<stem>.html`` (atomically); returns both paths."""
        d = Path(directory)
        return (atomic_write_text(d / f"{stem}.md", self.to_markdown()),
                atomic_write_text(d / f"{stem}.html", self.to_html()))

    def __str__(self) -> str:
        return self.to_markdown()


def _encode_prompts(prompts: Sequence[Any], encode: Callable[[str], Any] | None,
                    decode: Callable[[list[int]], str]) -> list[tuple[str, Tensor]]:
    out = []
    for p in prompts:
        if isinstance(p, Tensor):
            ids = p.reshape(-1).long()
            text = decode(ids.tolist())
        else:
            if encode is None:
                raise TypeError("text prompts need encode= (text -> token ids)")
            text = str(p)
            ids = torch.as_tensor(encode(text), dtype=torch.long).reshape(-1)
        if ids.numel() == 0:
            raise DataError("a prompt is empty; every prompt needs at least one token to condition on")
        out.append((text, ids))
    return out


def compare_generations(
    model: nn.Module,
    edit: Edit,
    prompts: Sequence[str | Tensor],
    *,
    encode: Callable[[str], Any] | None = None,
    decode: Callable[[list[int]], str],
    max_new_tokens: int = 64,
    seeds: Sequence[int] = (0, 1, 2),
    temperature: float = 1.0,
    greedy: bool = True,
    context: int | None = None,
    data: Any = None,
    vocab: Sequence[str] | None = None,
    label: str = "edited",
    top_inputs: int = 5,
    progress: bool | None = None,
) -> GenerationComparison:
    """Continue every prompt with the original and the edited model, side by side.

    For each prompt: one greedy continuation (if ``greedy``) and one sampled continuation per
    seed, the sampled tokens drawn from ``softmax(logits / temperature)`` by a
    ``torch.Generator`` seeded with the seed, afresh for each model, so both models consume the
    same random stream: identical models give identical text, and after the first differing
    token the two continue from different contexts.

    Args:
        model: The network (token ids ``(B, T)`` -> logits ``(B, T, V)`` or ``(B, V)``).
        edit: The edit (see the module docstring); ``None`` compares the model with itself.
        prompts: Text prompts (with ``encode``) or 1-D token-id tensors.
        encode: Text -> token ids.
        decode: Token ids -> text.
        max_new_tokens: Tokens to generate per continuation.
        seeds: Seeds of the sampled continuations.
        temperature: Sampling temperature.
        greedy: Also generate greedily.
        context: Tokens the model sees (default ``model.cfg.context`` when present).
        data: Optional ``(inputs, targets)`` batches; then :func:`token_degradation` is added.
        vocab: Token id -> string (for the degradation report; default ``decode([i])``).
        label: Name of the edit in the report.
        top_inputs: Inputs listed in the degradation report.
        progress: Progress bar.

    Returns:
        :class:`GenerationComparison` (``.to_markdown()``, ``.to_html()``, ``.save(dir)``).

    Raises:
        DataError: no prompts, or an empty prompt.
    """
    if len(prompts) == 0:
        raise DataError("no prompts given; pass at least one prompt to continue")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    encoded = _encode_prompts(prompts, encode, decode)
    modes: list[tuple[str, int | None]] = ([("greedy", None)] if greedy else []) + [("sample", int(s)) for s in seeds]
    if not modes:
        raise ValueError("nothing to generate: greedy=False and no seeds")
    was_training = model.training
    model.eval()
    results: list[Continuation] = []
    try:
        with progress_bar(total=len(encoded) * len(modes), desc="generations", enabled=progress) as bar:
            for text, ids in encoded:
                for mode, seed in modes:
                    outs = []
                    for use_edit in (False, True):
                        g = torch.Generator().manual_seed(seed) if seed is not None else None
                        with applied(model, edit if use_edit else None):
                            outs.append(generate(model, ids, max_new_tokens,
                                                 temperature=None if mode == "greedy" else temperature,
                                                 generator=g, context=context))
                    results.append(Continuation(
                        prompt=text, mode=mode, seed=seed, original=tuple(outs[0]), edited=tuple(outs[1]),
                        original_text=decode(outs[0]), edited_text=decode(outs[1]),
                        divergence=_divergence(outs[0], outs[1])))
                    bar.update(1)
        deg = None
        if data is not None:
            deg = token_degradation(model, edit, data, vocab=vocab or [decode([i]) for i in range(_vocab_size(model))],
                                    decode=decode, top_inputs=top_inputs)
    finally:
        model.train(was_training)
    return GenerationComparison(tuple(results), label, decode, deg)


def _vocab_size(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    v = getattr(cfg, "d_vocab", None)
    if v is None:
        raise ShapeError("give vocab= (token id -> string): the model does not state its vocabulary size")
    return int(v)


# ---------------------------------------------------------------------------- degradation
CLASSES = ("letter", "space", "newline", "digit", "punctuation", "other")


def token_class(token: str) -> str:
    """``letter`` / ``space`` / ``newline`` / ``digit`` / ``punctuation`` / ``other`` of a token's text."""
    if token and token.isalpha():
        return "letter"
    if token and all(c == "\n" for c in token):
        return "newline"
    if token and token.isspace():
        return "space"
    if token and token.isdigit():
        return "digit"
    if token and all(not c.isalnum() and not c.isspace() and c.isprintable() for c in token):
        return "punctuation"
    return "other"


def _word_chars(vocab: Sequence[str]) -> Tensor:
    return torch.tensor([bool(t) and all(c.isalnum() or c in "_'" for c in t) for t in vocab])


def _position_in_word(inputs: Tensor, targets: Tensor, word: Tensor) -> Tensor:
    """Number of word tokens immediately before each target (``-1`` when the target is not a word token).

    The sequence is ``inputs[0], targets`` (next-token targets); runs are counted inside the window.
    """
    seq = torch.cat([inputs[:, :1], targets], dim=1)  # (B, T + 1): seq[:, t + 1] = targets[:, t]
    is_word = word[seq]
    run = torch.zeros_like(seq)
    for t in range(seq.shape[1]):
        prev = run[:, t - 1] if t > 0 else torch.zeros_like(run[:, 0])
        run[:, t] = torch.where(is_word[:, t], prev + 1, torch.zeros_like(prev))
    before = run[:, :-1]  # word tokens up to and including the input at t
    pos = torch.where(is_word[:, 1:], before, torch.full_like(before, -1))
    return pos


def _position_label(p: int) -> str:
    if p < 0:
        return "not in a word"
    return ("1st", "2nd", "3rd")[p] + " char of word" if p < 3 else "4th+ char of word"


@dataclass(frozen=True)
class GroupDegradation:
    """One group of predicted tokens.

    Attributes:
        grouping: ``"class"``, ``"position in word"`` or ``"frequency"``.
        group: The group's name.
        count: Tokens in the group.
        original: Mean loss of the original model.
        edited: Mean loss of the edited model.
        increase: Mean ``Δ = edited - original``.
        share: The group's share of the total increase ``sum Δ`` (NaN if that is 0).
    """

    grouping: str
    group: str
    count: int
    original: float
    edited: float
    increase: float
    share: float


@dataclass(frozen=True)
class TokenDegradation:
    """Result of :func:`token_degradation`.

    Attributes:
        groups: Per grouping, its groups sorted by mean increase, worst first.
        worst_inputs: ``(example index, mean Δ, text)`` of the inputs that degrade most.
        original: Mean loss of the original model.
        edited: Mean loss of the edited model.
        n_tokens: Tokens evaluated.
    """

    groups: dict[str, tuple[GroupDegradation, ...]]
    worst_inputs: tuple[tuple[int, float, str], ...]
    original: float
    edited: float
    n_tokens: int

    def to_markdown(self) -> str:
        lines = [f"## Per-token degradation ({self.n_tokens} tokens: loss {self.original:.4f} -> "
                 f"{self.edited:.4f} nats)", ""]
        for name, rows in self.groups.items():
            lines += [f"### By {name} (worst first)", "",
                      "| group | tokens | original | edited | mean Δ | share of Δ |", "|---|---|---|---|---|---|"]
            lines += [f"| {r.group} | {r.count} | {r.original:.4f} | {r.edited:.4f} | {r.increase:+.4f} | "
                      f"{100 * r.share:.1f}% |" for r in rows]
            lines.append("")
        lines += ["### Inputs that degrade most", "", "| example | mean Δ | text |", "|---|---|---|"]
        lines += [f"| {i} | {d:+.4f} | `{_md(t)}` |" for i, d, t in self.worst_inputs]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        parts = []
        for name, rows in self.groups.items():
            body = "".join(f"<tr><td>{html.escape(r.group)}</td><td>{r.count}</td><td>{r.original:.4f}</td>"
                           f"<td>{r.edited:.4f}</td><td>{r.increase:+.4f}</td><td>{100 * r.share:.1f}%</td></tr>"
                           for r in rows)
            parts.append(f"<h3>By {html.escape(name)}</h3><table><tr><th>group</th><th>tokens</th><th>original</th>"
                         f"<th>edited</th><th>mean Δ</th><th>share</th></tr>{body}</table>")
        body = "".join(f"<tr><td>{i}</td><td>{d:+.4f}</td><td><pre>{html.escape(t)}</pre></td></tr>"
                       for i, d, t in self.worst_inputs)
        parts.append(f"<h3>Inputs that degrade most</h3><table><tr><th>example</th><th>mean Δ</th><th>text</th></tr>"
                     f"{body}</table>")
        return "".join(parts)

    def __str__(self) -> str:
        return self.to_markdown()


def _group(grouping: str, labels: list[str], keys: Tensor, lo: Tensor, le: Tensor, total: float
           ) -> tuple[GroupDegradation, ...]:
    rows = []
    for i, name in enumerate(labels):
        m = keys == i
        n = int(m.sum())
        if n == 0:
            continue
        o, e = float(lo[m].mean()), float(le[m].mean())
        inc = float((le[m] - lo[m]).sum())
        rows.append(GroupDegradation(grouping, name, n, o, e, e - o, inc / total if total != 0 else math.nan))
    return tuple(sorted(rows, key=lambda r: -r.increase))


@torch.no_grad()
def token_degradation(
    model: nn.Module,
    edit: Edit,
    data: Any,
    *,
    vocab: Sequence[str],
    decode: Callable[[list[int]], str] | None = None,
    top_inputs: int = 5,
) -> TokenDegradation:
    """Per-token loss increase of the edited model, grouped by token class, position in word and
    frequency bucket (see the module docstring), and the inputs that degrade most.

    Args:
        model: A next-token model: inputs ``(B, T)`` ids, targets ``(B, T)`` ids, logits ``(B, T, V)``.
        edit: The edit.
        data: ``(inputs, targets)`` batches.
        vocab: Token id -> its text.
        decode: Token ids -> text, for the worst inputs (default: joins ``vocab``).
        top_inputs: How many worst inputs to list.

    Raises:
        DataError: no batches, or targets that are not token ids of the shape of the inputs.
    """
    batches = [data] if isinstance(data, tuple) else list(data)
    if not batches:
        raise DataError("the data hold no batches")
    dec = decode or (lambda ids: "".join(vocab[i] for i in ids))
    inputs, targets, lo, le = [], [], [], []
    for x, y in batches:
        if y.dtype not in (torch.int64, torch.int32) or y.shape != x.shape:
            raise DataError("token degradation needs next-token targets: integer ids of the inputs' shape (B, T)")
        out = model(x)
        lo.append(F.cross_entropy(out.flatten(0, -2).double(), y.reshape(-1), reduction="none").reshape(y.shape))
        with applied(model, edit):
            out2 = model(x)
        le.append(F.cross_entropy(out2.flatten(0, -2).double(), y.reshape(-1), reduction="none").reshape(y.shape))
        inputs.append(x)
        targets.append(y)
    X, Y, LO, LE = torch.cat(inputs), torch.cat(targets), torch.cat(lo), torch.cat(le)
    V = len(vocab)
    flat_y, flat_o, flat_e = Y.reshape(-1), LO.reshape(-1), LE.reshape(-1)
    total = float((flat_e - flat_o).sum())
    # token class
    cls_of = torch.tensor([CLASSES.index(token_class(t)) for t in vocab])
    by_class = _group("class", list(CLASSES), cls_of[flat_y], flat_o, flat_e, total)
    # position in word
    pos = _position_in_word(X, Y, _word_chars(vocab)).reshape(-1).clamp(max=3)
    pos_labels = [_position_label(p) for p in (-1, 0, 1, 2, 3)]
    by_pos = _group("position in word", pos_labels, pos + 1, flat_o, flat_e, total)
    # frequency bucket
    counts = torch.bincount(flat_y, minlength=V).to(torch.float64)
    order = torch.argsort(counts, descending=True, stable=True)
    before = torch.cumsum(counts[order], 0) - counts[order]  # occurrences of more frequent tokens
    frac = before / counts.sum()
    bucket_sorted = torch.where(frac < 0.5, 0, torch.where(frac < 0.9, 1, 2))
    bucket = torch.empty(V, dtype=torch.long)
    bucket[order] = bucket_sorted
    freq_labels = ["frequent (first 50% of occurrences)", "middle (next 40%)", "rare (last 10%)"]
    by_freq = _group("frequency", freq_labels, bucket[flat_y], flat_o, flat_e, total)
    # worst inputs
    per_input = (LE - LO).mean(1)
    k = min(top_inputs, per_input.numel())
    top = torch.topk(per_input, k)
    worst = tuple((int(i), float(v), dec(torch.cat([X[i, :1], Y[i]]).tolist()))
                  for v, i in zip(top.values, top.indices))
    return TokenDegradation(
        groups={"token class": by_class, "position in word": by_pos, "frequency bucket": by_freq},
        worst_inputs=worst, original=float(flat_o.mean()), edited=float(flat_e.mean()), n_tokens=int(flat_y.numel()),
    )
