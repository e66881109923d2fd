"""Ablation study: how much of a character model survives removing PCA directions of its MLP?

Trains a tiny next-character model on the Zen of Python (text that ships with Python), builds a
centred PCA basis of its hidden activations, and mean-ablates the k least important directions
for a list of k. The result table puts side by side: the loss, loss recovered against zero- and
mean-ablation of the whole hook, the KL divergence from the original predictions, accuracy, and,
when ``wdecomp.scaling`` provides it, the compute- and parameter-equivalent on an illustrative
Chinchilla-form law whose irreducible loss sits below this model's loss (the published fits are
for large language models; fit your own sweep with ``wdecomp.scaling.fit``).

Run: ``python examples/ablation_study.py [--fast] [--out DIR]``; writes ``ablation.json``,
``ablation.csv`` and ``ablation.png`` to ``DIR``.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
from pathlib import Path

import torch
from torch import nn

from wdecomp.ablation import AblationResult, ablation_sweep
from wdecomp.activations import stream_activations
from wdecomp.bases import Basis, LayerBasis, model_signature
from wdecomp.scaling import ChinchillaLaw

CONTEXT = 4


class CharMLP(nn.Module):
    """``x (B, CONTEXT) -> logits (B, V)``: embeddings, one ReLU layer (hook ``mlp``), unembedding."""

    def __init__(self, vocab: int, d: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc = nn.Linear(CONTEXT * d, hidden)
        self.mlp = nn.ReLU()
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(self.fc(self.emb(x).flatten(1))))


def zen_data(batch: int = 256) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the poem
        import this
    text = codecs.decode(this.s, "rot13")
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    X = torch.stack([ids[i:i + CONTEXT] for i in range(len(ids) - CONTEXT)])
    y = ids[CONTEXT:]
    return [(X[i:i + batch], y[i:i + batch]) for i in range(0, len(X), batch)], len(chars)


def train_model(steps: int, seed: int = 0) -> tuple[nn.Module, list]:
    torch.manual_seed(seed)
    data, vocab = zen_data()
    model = CharMLP(vocab)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        x, y = data[step % len(data)]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = model.double().eval()
    return model, data


def pca_basis(model: nn.Module, data: list, point: str = "mlp") -> LayerBasis:
    """Centred PCA at ``point``: ``C`` = eigenvectors of the covariance (rows), importance = variance."""
    F = torch.cat([a[point] for a in stream_activations(model, data, [point])]).to(torch.float64)
    mu = F.mean(0)
    var, U = torch.linalg.eigh(torch.cov(F.T))
    var, U = var.flip(0), U.flip(1)
    return LayerBasis(point, U.T.contiguous(), U.contiguous(), var.clamp_min(0), mu, "pca")


#: Training tokens at which the illustrative law's parameter-equivalent is read. At this D the data
#: term B / D^beta of the law below is about 0.026 nats, so every loss above 0.5 x reference + 0.026
#: is reachable by some model size.
ILLUSTRATIVE_TOKENS = 1e15


def illustrative_law(loss: float):
    """A Chinchilla-form law (Hoffmann et al. 2022 constants A, B, alpha, beta) with E = loss / 2.

    A toy model has no scaling law of its own here; this one only shows how the compute scale
    reads. For a real model fit its own sweep (``wdecomp.scaling.fit``, see the demo).
    """
    return ChinchillaLaw(E=0.5 * loss, A=406.4, B=410.7, alpha=0.34, beta=0.28, name="illustrative")


def start(argv: list[str] | None, doc: str, fast_help: str, default_out: str) -> tuple[bool, Path, nn.Module, list]:
    """Parse ``--fast`` and ``--out`` (an example's command line), make the output folder and train
    the model (60 steps with ``--fast``, else 1500): ``(fast, out, model, data)``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help=fast_help)
    parser.add_argument("--out", default=default_out, help="output directory")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, data = train_model(60 if args.fast else 1500)
    return args.fast, out, model, data


def report(result: AblationResult, out: Path, stem: str) -> dict:
    """Print ``result``, write it to ``out`` as ``<stem>.json``, ``.csv`` and ``.png``; its dict."""
    print(result)
    paths = [out / f"{stem}.{ext}" for ext in ("json", "csv", "png")]
    result.to_json(paths[0])
    result.to_csv(paths[1])
    result.plot(paths[2])
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return result.to_dict()


def main(argv: list[str] | None = None) -> dict:
    fast, out, model, data = start(argv, __doc__, "few training steps, few levels (for tests)", "ablation_out")
    basis = pca_basis(model, data)
    full = Basis(("mlp",), {"mlp": basis}, "pca", model_signature(model))
    n = basis.size
    ks = [0, n // 2, 3 * n // 4, n] if fast else list(range(0, n + 1, 4))
    base = ablation_sweep(model, full, data, k=[0], method="mean", top_n=0)
    law = illustrative_law(base.original.loss)
    result = ablation_sweep(model, full, data, k=ks, method="mean", law=law, tokens=ILLUSTRATIVE_TOKENS)
    return report(result, out, "ablation")


if __name__ == "__main__":
    main()
