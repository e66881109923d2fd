"""Tiny float64 models of many kinds, and independent dense references for curvature tests.

The references never go through wdecomp or ``torch.func``: the Hessian is built row by row by
double backward (``torch.autograd.grad(create_graph=True)``), the GGN as explicit ``J^T H J``
from ``torch.autograd.functional.jacobian``, the Fisher from per-example gradients in a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wdecomp.sae.model import SparseAutoencoder

DT = torch.float64


class TinyAttention(nn.Module):
    """One causal self-attention block with residual, LayerNorm and a tied (un)embedding."""

    def __init__(self, vocab: int = 5, d: int = 4, tied: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(3, d) * 0.3)
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d)
        self.ln = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, vocab, bias=False)
        if tied:
            self.unembed.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        q, k, v = self.q(h), self.k(h), self.v(h)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        t = tokens.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        att = scores.masked_fill(mask, float("-inf")).softmax(-1)
        h = h + att @ v
        return self.unembed(self.ln(h))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.mpool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mpool(self.pool(torch.tanh(self.conv(x))))
        return self.fc(h.flatten(1))


class TokenPairNet(nn.Module):
    """Two tokens embedded, flattened, one ReLU layer: an Embedding producer and Linear consumers
    (the components tests' model)."""

    def __init__(self, seed: int = 0, width: int = 6) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(7, 3)
        self.hidden = nn.Linear(6, width)
        self.act = nn.ReLU()
        self.out = nn.Linear(width, 5)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(self.embed(t).flatten(1))))


def cli_classifier(sizes: tuple[int, ...] = (16, 8)) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A factory as users write them for ``wdecomp ... --model module:function``: the float32
    classifier ``hidden`` (3 -> 6), ``act`` (tanh), ``out`` (6 -> 3), 45 parameters, from
    ``torch.manual_seed(0)``, and 24 examples in batches of ``sizes``."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("hidden", nn.Linear(3, 6))
    model.add_module("act", nn.Tanh())
    model.add_module("out", nn.Linear(6, 3))
    x = torch.randn(24, 3)
    y = torch.randint(0, 3, (24,))
    return model, list(zip(x.split(list(sizes)), y.split(list(sizes))))


class TinyLM(nn.Module):
    """Embedding -> a named residual point -> unembedding (activations (B, T, d)), the
    SAE and compare tests' language model."""

    def __init__(self, vocab: int = 7, d: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.resid = nn.Identity()
        self.mix = nn.Linear(d, d)
        self.unembed = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.resid(self.embed(tokens))
        return self.unembed(h + torch.tanh(self.mix(h)))


def token_batches(n: int = 3, b: int = 4, t: int = 6, vocab: int = 7, seed: int = 0) -> list:
    """``n`` batches of random ``(tokens (b, t), targets (b, t))`` over ``vocab``."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, (b, t), generator=g), torch.randint(0, vocab, (b, t), generator=g))
            for _ in range(n)]


def identity_sae(d: int) -> SparseAutoencoder:
    """Width 2d, W_enc = [I; -I], W_dec = [I, -I]: relu(x) - relu(-x) = x exactly."""
    sae = SparseAutoencoder(d, 2 * d, activation="relu", dtype=DT, hook="resid")
    eye = torch.eye(d, dtype=DT)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=1))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def token_pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """All 49 token pairs of :class:`TokenPairNet` in two batches, with class-0 targets."""
    t = torch.stack(torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij"), -1).reshape(-1, 2)
    return [(t[:30], torch.zeros(30, dtype=torch.long)), (t[30:], torch.zeros(19, dtype=torch.long))]


@dataclass
class Case:
    name: str
    model: nn.Module
    data: list[tuple[Any, torch.Tensor]]
    loss: str = "cross_entropy"
    params: Any = None


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cases() -> list[Case]:
    """The model zoo: every case small enough for a dense Hessian (p <= ~120)."""
    torch.manual_seed(0)
    out = []
    g = _gen(1)
    x = torch.randn(7, 3, generator=g, dtype=DT)
    y = torch.randint(0, 3, (7,), generator=g)
    mlp_tanh = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    out.append(Case("tanh_mlp", mlp_tanh, [(x[:4], y[:4]), (x[4:], y[4:])]))
    mlp_relu = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).to(DT)
    yr = torch.randn(7, 2, generator=g, dtype=DT)
    out.append(Case("relu_mlp_mse", mlp_relu, [(x[:5], yr[:5]), (x[5:], yr[5:])], loss="mse"))
    conv = ConvNet().to(DT)
    xi = torch.randn(5, 1, 4, 4, generator=g, dtype=DT)
    out.append(Case("conv_pool", conv, [(xi[:3], y[:3]), (xi[3:], y[3:5])]))
    ln = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.LayerNorm(4), nn.Linear(4, 3)).to(DT)
    out.append(Case("layernorm", ln, [(x, y)]))
    tok = torch.randint(0, 5, (5, 3), generator=g)
    nxt = torch.randint(0, 5, (5, 3), generator=g)
    out.append(Case("attention_seq", TinyAttention().to(DT), [(tok[:3], nxt[:3]), (tok[3:], nxt[3:])]))
    out.append(Case("tied_embedding", TinyAttention(tied=True).to(DT), [(tok, nxt)]))
    sub = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    out.append(Case("param_subset", sub, [(x, y)], params=["0.weight", "2.bias"]))
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    bn[1].running_mean.normal_(generator=g)
    bn[1].running_var.uniform_(0.5, 2.0, generator=g)
    bn.eval()
    out.append(Case("batchnorm_eval", bn, [(x[:3], y[:3]), (x[3:6], y[3:6]), (x[6:], y[6:])]))
    return out


# ---------------------------------------------------------------------------- references
def selected(model: nn.Module, names: list[str] | None) -> list[tuple[str, torch.Tensor]]:
    items = list(model.named_parameters())  # tied parameters once (first name)
    if names is None:
        return items
    return [(n, p) for n, p in items if n in names]


def full_loss(case: Case) -> torch.Tensor:
    """``sum of per-term losses / number of terms`` over all batches, by plain autograd."""
    total, count = 0.0, 0
    for xb, yb in case.data:
        out = case.model(xb)
        if case.loss == "cross_entropy":
            total = total + F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1), reduction="sum")
            count += yb.numel()
        else:
            total = total + ((out - yb) ** 2).reshape(out.shape[0], -1).mean(1).sum()
            count += yb.shape[0]
    return total / count


def dense_hessian(case: Case) -> torch.Tensor:
    """Row-by-row double backward."""
    ps = [p for _, p in selected(case.model, case.params)]
    grads = torch.autograd.grad(full_loss(case), ps, create_graph=True)
    g = torch.cat([t.reshape(-1) for t in grads])
    rows = []
    for i in range(g.numel()):
        r = torch.autograd.grad(g[i], ps, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(r, ps)]))
    return torch.stack(rows).detach()


def flat_gradient(case: Case) -> torch.Tensor:
    ps = [p for _, p in selected(case.model, case.params)]
    return torch.cat([t.reshape(-1) for t in torch.autograd.grad(full_loss(case), ps)])


def fd_hessian_columns(case: Case, cols: list[int], eps: float = 1e-5) -> torch.Tensor:
    """Central finite differences of the gradient, for a few columns."""
    ps = [p for _, p in selected(case.model, case.params)]
    out = []
    for c in cols:
        vals = []
        for sign in (1, -1):
            with torch.no_grad():
                _nudge(ps, c, sign * eps)
            vals.append(flat_gradient(case))
            with torch.no_grad():
                _nudge(ps, c, -sign * eps)
        out.append((vals[0] - vals[1]) / (2 * eps))
    return torch.stack(out, dim=1)


def _nudge(ps: list[torch.Tensor], index: int, delta: float) -> None:
    for p in ps:
        if index < p.numel():
            p.view(-1)[index] += delta
            return
        index -= p.numel()


def _flat_params(case: Case) -> tuple[list[str], list[torch.Tensor]]:
    items = selected(case.model, case.params)
    return [n for n, _ in items], [p.detach() for _, p in items]


def _outputs_of(case: Case, flat: torch.Tensor, xb: Any) -> torch.Tensor:
    names, ps = _flat_params(case)
    state, start = {}, 0
    for n, p in zip(names, ps):
        state[n] = flat[start : start + p.numel()].reshape(p.shape)
        start += p.numel()
    return torch.func.functional_call(case.model, state, (xb,))


def total_count(case: Case) -> int:
    return sum(yb.numel() if case.loss == "cross_entropy" else yb.shape[0] for _, yb in case.data)


def dense_ggn(case: Case) -> torch.Tensor:
    """Explicit ``sum_b J_b^T H_b J_b / N`` with dense Jacobians and output Hessians."""
    _, ps = _flat_params(case)
    theta = torch.cat([p.reshape(-1) for p in ps])
    N = total_count(case)
    G = torch.zeros(theta.numel(), theta.numel(), dtype=DT)
    for xb, yb in case.data:
        out = _outputs_of(case, theta, xb)
        J = torch.autograd.functional.jacobian(lambda t, xb=xb: _outputs_of(case, t, xb).reshape(-1), theta)

        def loss_of(o: torch.Tensor, yb: torch.Tensor = yb, shape: torch.Size = out.shape) -> torch.Tensor:
            o = o.reshape(shape)
            if case.loss == "cross_entropy":
                return F.cross_entropy(o.reshape(-1, shape[-1]), yb.reshape(-1), reduction="sum")
            return ((o - yb) ** 2).reshape(shape[0], -1).mean(1).sum()

        Hout = torch.autograd.functional.hessian(loss_of, out.reshape(-1).detach())
        G += J.T @ Hout @ J
    return G / N


def per_example_gradients(case: Case) -> torch.Tensor:
    """Rows ``grad s_i`` in a plain loop over examples."""
    ps = [p for _, p in selected(case.model, case.params)]
    rows = []
    for xb, yb in case.data:
        for i in range(yb.shape[0]):
            out = case.model(xb[i : i + 1])
            if case.loss == "cross_entropy":
                s = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb[i : i + 1].reshape(-1), reduction="sum")
            else:
                s = ((out - yb[i : i + 1]) ** 2).mean()
            rows.append(torch.cat([t.reshape(-1) for t in torch.autograd.grad(s, ps)]))
    return torch.stack(rows)


def true_fisher_by_enumeration(case: Case) -> torch.Tensor:
    """``sum_i sum_c p(c | x_i) g_ic g_ic^T / N`` for cross-entropy, every label enumerated."""
    ps = [p for _, p in selected(case.model, case.params)]
    F_ = None
    for xb, _ in case.data:
        for i in range(xb.shape[0]):
            logits = case.model(xb[i : i + 1]).reshape(-1, case.model(xb[i : i + 1]).shape[-1])
            probs = logits.softmax(-1).detach()
            # each position is an independent categorical: enumerate one position at a time
            for pos in range(logits.shape[0]):
                for c in range(logits.shape[1]):
                    nll = -logits.log_softmax(-1)[pos, c]
                    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(nll, ps, retain_graph=True)])
                    term = probs[pos, c] * torch.outer(g, g)
                    F_ = term if F_ is None else F_ + term
    return F_ / total_count(case)
