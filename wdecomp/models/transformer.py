"""A small decoder-only transformer with named, hookable submodules.

Pre-LayerNorm blocks (Radford et al. 2019, GPT-2) with causal multi-head self-attention
(Vaswani et al. 2017, arXiv 1706.03762) and a two-layer MLP. For a residual stream
:math:`x \\in \\mathbb{R}^{T \\times d}`, block :math:`\\ell` computes

.. math::
    m = x + \\mathrm{Attn}(\\mathrm{LN}_1(x)), \\qquad
    x' = m + W_\\text{out}\\,\\sigma(W_\\text{hidden}\\,\\mathrm{LN}_2(m)),

with :math:`\\mathrm{Attn}(u) = \\mathrm{concat}_h\\big(\\mathrm{softmax}(q_h k_h^\\top /
\\sqrt{d_\\text{head}} + M)\\, v_h\\big) W_O` and :math:`M` the causal mask (:math:`-\\infty`
above the diagonal). Layer norms can be switched off (``layer_norm=False``; the one-layer
modular-addition model of Nanda et al. 2023, arXiv 2301.05217, has none).

Module names (hook points), for block ``i``::

    embed                    token embedding, output (B, T, d)
    pos_embed                learned positions, output (T, d)
    blocks.i                 the whole block, input = resid_pre, output = resid_post
    blocks.i.ln1             LayerNorm (Identity when layer_norm=False)
    blocks.i.attn            attention, output (B, T, d)
    blocks.i.attn.q/k/v      Linear(d, d) projections, output (B, T, d)
    blocks.i.attn.pattern    Identity on the attention probabilities (B, H, T, T)
    blocks.i.attn.out        Linear(d, d) output projection W_O
    blocks.i.resid_mid       Identity on the residual stream after attention (B, T, d)
    blocks.i.ln2             LayerNorm (Identity when layer_norm=False)
    blocks.i.mlp             the MLP, output (B, T, d)
    blocks.i.mlp.hidden      Linear(d, d_mlp)
    blocks.i.mlp.act         activation (GELU or ReLU), output (B, T, d_mlp)
    blocks.i.mlp.out         Linear(d_mlp, d)
    ln_f                     final LayerNorm (Identity when layer_norm=False)
    unembed                  Linear(d, V_out), logits

The model has no buffers; every tensor in its state dict is a parameter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = ["Attention", "Block", "MLP", "PosEmbed", "Transformer", "TransformerConfig"]


@dataclass(frozen=True)
class TransformerConfig:
    """Shape and options of a :class:`Transformer`.

    Attributes:
        d_vocab: input vocabulary size.
        d_model: residual stream width :math:`d`.
        n_layers: number of blocks.
        n_heads: attention heads per block; must divide ``d_model``.
        d_mlp: MLP hidden width (default ``4 * d_model``).
        context: maximum sequence length :math:`T`.
        d_vocab_out: output vocabulary size (default ``d_vocab``).
        act: ``"gelu"`` or ``"relu"``.
        layer_norm: use LayerNorms (``False`` replaces them by identities).
        output: ``"all"`` returns logits ``(B, T, V)``; ``"last"`` only the last position's
            ``(B, V)``; ``"last-mid"`` the same logits, with the sequence cut to its last position
            right after the last block's attention (``resid_mid`` onwards is ``(B, 1, d)``; rib's
            ``last_pos_module_type: add_resid1``, the node layout of the LIB paper's
            modular-addition runs).
        init_std: standard deviation of the normal weight initialisation; output projections
            of each block are additionally scaled by :math:`1/\\sqrt{2 n_\\text{layers}}`.
    """

    d_vocab: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int | None = None
    context: int = 64
    d_vocab_out: int | None = None
    act: str = "gelu"
    layer_norm: bool = True
    output: str = "all"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if self.act not in ("gelu", "relu"):
            raise ValueError(f"act must be 'gelu' or 'relu', got {self.act!r}")
        if self.output not in ("all", "last", "last-mid"):
            raise ValueError(f"output must be 'all', 'last' or 'last-mid', got {self.output!r}")

    @property
    def mlp_width(self) -> int:
        """The MLP hidden width actually used."""
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

    @property
    def vocab_out(self) -> int:
        """The output vocabulary size actually used."""
        return self.d_vocab_out if self.d_vocab_out is not None else self.d_vocab

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


class PosEmbed(nn.Module):
    """Learned position embedding ``W_pos`` of shape ``(context, d)``; returns ``(T, d)``."""

    def __init__(self, context: int, d_model: int) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.zeros(context, d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        """Position embeddings for the sequence length of ``tokens`` ``(B, T)``."""
        t = tokens.shape[-1]
        if t > self.W_pos.shape[0]:
            raise ValueError(f"sequence length {t} exceeds context {self.W_pos.shape[0]}")
        return self.W_pos[:t]


class Attention(nn.Module):
    """Causal multi-head self-attention with separate ``q``, ``k``, ``v``, ``out`` Linears."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.pattern = nn.Identity()
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, d_head)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, d) -> (B, T, d)``."""
        b, t, d = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        probs = self.pattern(torch.softmax(scores, dim=-1))
        z = (probs @ v).transpose(1, 2).reshape(b, t, d)
        return self.out(z)


class MLP(nn.Module):
    """``out(act(hidden(x)))`` with named ``hidden``, ``act``, ``out`` submodules."""

    def __init__(self, d_model: int, d_mlp: int, act: str = "gelu") -> None:
        super().__init__()
        self.hidden = nn.Linear(d_model, d_mlp)
        self.act = nn.GELU() if act == "gelu" else nn.ReLU()
        self.out = nn.Linear(d_mlp, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., d) -> (..., d)``."""
        return self.out(self.act(self.hidden(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention then MLP, each added to the residual."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        norm = (lambda: nn.LayerNorm(cfg.d_model)) if cfg.layer_norm else nn.Identity
        self.ln1 = norm()
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.resid_mid = nn.Identity()
        self.ln2 = norm()
        self.mlp = MLP(cfg.d_model, cfg.mlp_width, cfg.act)

    def forward(self, x: Tensor, cut: bool = False) -> Tensor:
        """Residual stream ``(B, T, d)`` in and out (``cut``: only the last position after attention)."""
        x = x + self.attn(self.ln1(x))
        x = self.resid_mid(x[:, -1:] if cut else x)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Decoder-only transformer: tokens ``(B, T)`` (int64) to logits.

    Returns ``(B, T, V_out)`` logits (``output="all"``) or ``(B, V_out)`` for the last
    position (``output="last"``). See the module docstring for hook-point names.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_embed = PosEmbed(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_out)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit LayerNorm gains (GPT-2 style)."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln" in name or name.startswith("ln_f"):
                nn.init.ones_(p)
            elif name.endswith("attn.out.weight") or name.endswith("mlp.out.weight"):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.cfg.n_layers))
            else:
                nn.init.normal_(p, std=std)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits for ``tokens`` of shape ``(B, T)``."""
        x = self.embed(tokens) + self.pos_embed(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, cut=self.cfg.output == "last-mid" and i == len(self.blocks) - 1)
        if self.cfg.output in ("last", "last-mid"):
            x = x[:, -1]
        return self.unembed(self.ln_f(x))

    def hook_points(self) -> tuple[str, ...]:
        """Names of the modules worth hooking, in forward order."""
        names = ["embed", "pos_embed"]
        for i in range(self.cfg.n_layers):
            b = f"blocks.{i}"
            names += [
                f"{b}.ln1", f"{b}.attn.q", f"{b}.attn.k", f"{b}.attn.v", f"{b}.attn.pattern",
                f"{b}.attn.out", f"{b}.attn", f"{b}.resid_mid", f"{b}.ln2",
                f"{b}.mlp.hidden", f"{b}.mlp.act", f"{b}.mlp.out", f"{b}.mlp", b,
            ]
        return (*names, "ln_f", "unembed")
