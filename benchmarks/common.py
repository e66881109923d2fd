"""Shared pieces of the benchmarks: the benchmark models, timing, peak memory, result files.

Benchmarks are run by hand (never in CI). Peers (curvlinops, hessian-eigenthings, PyHessian)
are installed in a separate environment with torch pinned:
``pip install torch==2.13.0 curvlinops-for-pytorch hessian-eigenthings==1.0.0a5 pyhessian``,
plus ``pip install -e .`` of this repository.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"


def setup_threads(n: int = 2) -> None:
    torch.set_num_threads(n)


def mlp_670k(seed: int = 0, n: int = 512) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """784-512-512-10 ReLU MLP (669,706 parameters) and 512 random inputs, one batch."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    x, y = torch.randn(n, 784), torch.randint(0, 10, (n,))
    return model.eval(), [(x, y)]


class Block(nn.Module):
    def __init__(self, d: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, mlp), nn.Linear(mlp, d)
        self.heads = heads

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / (d // self.heads) ** 0.5
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=h.device), 1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        h = h + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return h + self.out(torch.relu(self.fc(self.ln2(h))))


class FlatTransformer(nn.Module):
    """Two-layer pre-LN decoder; outputs logits flattened to ``(B*T, V)`` so every library's
    cross-entropy sees a plain classification problem."""

    def __init__(self, vocab: int = 96, d: int = 192, heads: int = 4, mlp: int = 768, layers: int = 2, ctx: int = 64):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads, mlp) for _ in range(layers))
        self.ln, self.unembed = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            h = block(h)
        return self.unembed(self.ln(h)).reshape(-1, self.unembed.out_features)


def transformer_1m(seed: int = 0, batch: int = 8, ctx: int = 64) -> tuple[nn.Module, list]:
    """~0.93M-parameter two-layer transformer on random tokens (batch x ctx tokens)."""
    torch.manual_seed(seed)
    model = FlatTransformer(ctx=ctx)
    tok = torch.randint(0, 96, (batch, ctx))
    nxt = torch.randint(0, 96, (batch, ctx)).reshape(-1)
    return model.eval(), [(tok, nxt)]


MODELS: dict[str, Callable[[], tuple[nn.Module, list]]] = {"mlp_670k": mlp_670k, "transformer_1m": transformer_1m}


def time_it(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }


def write_results(name: str, payload: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(payload, indent=2)), (".md", markdown)):
        tmp = RESULTS / f".{name}{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, RESULTS / f"{name}{suffix}")


class FlatLogits(nn.Module):
    """``model(x)`` reshaped to ``(-1, V)``: a sequence model as a plain classifier for the peers
    (curvlinops, hessian-eigenthings, PyHessian), which expect ``(N, C)`` logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.reshape(-1, out.shape[-1])

