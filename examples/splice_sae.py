"""Score spliced replacements of an MLP's activations on the compute-equivalent scale.

Trains the tiny character model of ``ablation_study.py``, collects its hidden activations, and
splices in, one at a time: small sparse autoencoders (ReLU encoder, linear decoder, L1 penalty,
trained for a few hundred steps) and rank-r PCA approximations ``f -> mu + U_r U_r^T (f - mu)``.
Each replacement is one row of the table: loss, loss recovered against zero- and mean-ablation
of the hook, KL, accuracy, and the compute-/parameter-equivalent when ``wdecomp.scaling`` is there
(an illustrative law; see ``ablation_study.py``). The identity is included as a control: it must
reproduce the original loss exactly.

Run: ``python examples/splice_sae.py [--fast] [--out DIR]``; writes ``splice.json``/``.csv``/``.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_study import ILLUSTRATIVE_TOKENS, illustrative_law, pca_basis, report, start  # noqa: E402

from wdecomp.ablation import score_splice  # noqa: E402
from wdecomp.activations import stream_activations  # noqa: E402


class SAE(nn.Module):
    """``f -> W_d ReLU(W_e (f - b_d) + b_e) + b_d`` (a sparse autoencoder)."""

    def __init__(self, d: int, m: int) -> None:
        super().__init__()
        self.enc = nn.Linear(d, m)
        self.dec = nn.Linear(m, d)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.dec(torch.relu(self.enc(f - self.dec.bias)))


def hidden_activations(model: nn.Module, data: list, point: str = "mlp") -> torch.Tensor:
    return torch.cat([a[point] for a in stream_activations(model, data, [point])])


def train_sae(F: torch.Tensor, m: int, steps: int, l1: float = 1e-3, seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(F.shape[1], m).to(F.dtype)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(steps):
        z = torch.relu(sae.enc(F - sae.dec.bias))
        loss = (sae.dec(z) - F).pow(2).sum(1).mean() + l1 * z.abs().sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sae.eval().requires_grad_(False)


def low_rank(basis, r: int):
    U = basis.inverse[:, :r]
    mu = basis.center

    def fn(f: torch.Tensor) -> torch.Tensor:
        return mu + (f - mu) @ U @ U.T

    return fn


def main(argv: list[str] | None = None) -> dict:
    fast, out, model, data = start(argv, __doc__, "few training steps (for tests)", "splice_out")
    F = hidden_activations(model, data)
    basis = pca_basis(model, data)
    steps = 100 if fast else 2000
    replacements = {"identity": nn.Identity()}
    for m in (32, 128):
        replacements[f"sae m={m}"] = train_sae(F, m, steps)
    for r in (8, 16, 32):
        replacements[f"pca r={r}"] = low_rank(basis, r)
    first = score_splice(model, "mlp", nn.Identity(), data, top_n=0)
    law = illustrative_law(first.original.loss)
    result = score_splice(model, "mlp", replacements, data, law=law, tokens=ILLUSTRATIVE_TOKENS)
    return report(result, out, "splice")


if __name__ == "__main__":
    main()
