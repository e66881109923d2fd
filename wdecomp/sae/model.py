"""Sparse autoencoders: the plain dictionary and the matrix-binding dictionary.

A sparse autoencoder (SAE) on activations ``x`` (width ``d``) with ``n`` latents computes

    f = sigma(W_enc (x - b_dec) + b_enc),        x_hat = W_dec f + b_dec,

with ``W_enc``: ``(n, d)``, ``W_dec``: ``(d, n)`` (column ``j`` is the dictionary element of
latent ``j``) and ``sigma`` either

* ``"relu"``: ``ReLU``, trained with an L1 penalty on ``f`` (Bricken et al. 2023, "Towards
  Monosemanticity"; SAELens' ``StandardSAE``), or
* ``"topk"``: keep the ``k`` largest pre-activations of each row and apply ``ReLU`` to them, zero
  the rest (Gao et al. 2024, arXiv 2406.04093, eq. 2; SAELens' ``TopKSAE``). Exactly ``k``
  latents are selected per row; a selected latent whose pre-activation is negative is zero.
* ``"slot_topk"`` (binding SAEs only; our variant, no published counterpart): TopK with ``k``
  latents *per slot*, so every row uses each slot (L0 at most ``s k``). It encodes the binding
  model's premise that a token carries its own feature(s) in every slot, and breaks the slots'
  symmetry that plain TopK leaves to the optimiser (see :mod:`wdecomp.sae.binding`).

The decoder columns are kept at unit norm by the trainer (:mod:`wdecomp.sae.train`).

**Matrix binding** (:class:`BindingSAE`; Bushnaq's proposal in the seed text): the dictionary
of ``s`` slots is ``W_dec = [D, R D, R^2 D, ..., R^{s-1} D]`` with one free dictionary ``D``
(``(d, m)``, unit-norm columns) and one learned linear map ``R`` (``(d, d)``), so a feature bound
to slot ``j`` is the slot-0 feature transformed by ``R^j``. The latents are ``n = s m``, ordered
slot by slot (latent ``j m + i`` is feature ``i`` in slot ``j``); the encoder stays free. Only
``D``'s columns are normalised: ``R^j D`` keeps the norms ``R`` gives it (normalising them would
undo the binding). The dictionary costs ``m d + d^2`` decoder parameters instead of ``s m d``.

Saved as safetensors (tensors only, loading runs no code) with the configuration as JSON in the
file's metadata, written atomically (:mod:`wdecomp.io`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from wdecomp.errors import DataError, NonFiniteError, ShapeError
from wdecomp.io import atomic_write_bytes

__all__ = ["ACTIVATIONS", "BindingSAE", "SparseAutoencoder", "load_sae"]

ACTIVATIONS = ("relu", "topk", "slot_topk")
_FORMAT = "wdecomp.sae/1"


class SparseAutoencoder(nn.Module):
    """``x -> W_dec sigma(W_enc (x - b_dec) + b_enc) + b_dec`` (see the module docstring).

    Args:
        d_in: activation width ``d``.
        width: number of latents ``n``.
        activation: ``"relu"`` (L1-trained) or ``"topk"``.
        k: latents kept per row for ``"topk"`` (``1 <= k <= width``).
        hook: the hook point the SAE was trained on (recorded, used by :meth:`splice`).
        dtype: parameter dtype.
        seed: seeds the initialisation (decoder columns uniform on the sphere, encoder its
            transpose, as Gao et al. 2024 section 2.2 initialise).

    Raises:
        ShapeError: ``width`` or ``d_in`` is not positive, or ``k`` is outside ``1..width``.
        ValueError: unknown ``activation``.
    """

    kind = "plain"

    def __init__(self, d_in: int, width: int, *, activation: str = "topk", k: int | None = None, hook: str = "",
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        if d_in < 1 or width < 1:
            raise ShapeError(f"an SAE needs d_in >= 1 and width >= 1, got d_in={d_in}, width={width}")
        if activation == "slot_topk" and self.kind != "binding":
            raise ValueError("activation 'slot_topk' (k latents per slot) needs a BindingSAE")
        if activation in ("topk", "slot_topk"):
            pool = width if activation == "topk" else self._slot_width()
            if k is None:
                raise ShapeError("a TopK SAE needs k (latents kept per row)")
            if not 1 <= k <= pool:
                raise ShapeError(f"k={k} latents cannot be kept out of width={pool}; choose 1 <= k <= {pool}")
        self.d_in = int(d_in)
        self.width = int(width)
        self.activation = activation
        self.k = None if k is None else int(k)
        self.hook = hook
        g = torch.Generator().manual_seed(int(seed))
        self._init_params(g, dtype)

    def _slot_width(self) -> int:
        return self.width

    # ------------------------------------------------------------------ parameters
    def _init_params(self, g: torch.Generator, dtype: torch.dtype) -> None:
        W = torch.randn(self.d_in, self.width, generator=g, dtype=torch.float64)
        W = W / W.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(W.to(dtype))
        self.W_enc = nn.Parameter(W.T.clone().to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(self.width, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in, dtype=dtype))

    def decoder(self) -> Tensor:
        """The dictionary ``W_dec``, shape ``(d, n)``."""
        return self.W_dec

    def free_columns(self) -> Tensor:
        """The parameter whose columns are kept at unit norm (``W_dec``; ``D`` for binding)."""
        return self.W_dec

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Scale each free decoder column to unit Euclidean norm (in place)."""
        W = self.free_columns()
        W.div_(W.norm(dim=0, keepdim=True).clamp_min(torch.finfo(W.dtype).tiny))

    @torch.no_grad()
    def remove_parallel_gradient_(self) -> None:
        """Project out of each free column's gradient its component along the column.

        With unit-norm columns this keeps the step tangent to the sphere (SAELens'
        ``remove_gradient_parallel_to_decoder_directions``; Bricken et al. 2023).
        """
        W = self.free_columns()
        if W.grad is None:
            return
        W.grad.sub_(W * (W * W.grad).sum(0, keepdim=True))

    # ------------------------------------------------------------------ forward
    def _check(self, x: Tensor) -> None:
        if x.shape[-1] != self.d_in:
            where = f" at '{self.hook}'" if self.hook else ""
            raise ShapeError(
                f"activations{where} have width {x.shape[-1]}, this SAE was built for width {self.d_in}; "
                "train or load an SAE for this hook point"
            )

    def pre_activations(self, x: Tensor) -> Tensor:
        """``W_enc (x - b_dec) + b_enc``, shape ``(..., n)``."""
        self._check(x)
        return (x - self.b_dec) @ self.W_enc.T + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """The latents ``f``, shape ``(..., n)`` (dense; at most ``k`` nonzero per row for TopK)."""
        return self._encode(x, fired=False)[0]

    def _encode(self, x: Tensor, fired: bool) -> tuple[Tensor, Tensor | None]:
        """:meth:`encode`'s ``f`` and, if ``fired``, which latents fired on some activation: the
        ``(n,)`` bool ``(f > 0)`` reduced by *any* over all leading axes (the trainer's dead-latent
        count), else ``None``. For TopK it is read off the ``k`` kept entries of each row (``B k``
        entries, not ``B n``; a latent fires exactly where it is kept with a value > 0)."""
        pre = self.pre_activations(x)
        if self.activation == "relu":
            f = torch.relu(pre)
            if not fired:
                return f, None
            # any over rows taken as a uint8 max: the same booleans, about twice as fast on CPU
            return f, (f.detach() > 0).reshape(-1, self.width).view(torch.uint8).amax(0) > 0
        assert self.k is not None
        slotted = self.activation == "slot_topk"  # TopK within each slot of _slot_width() latents
        if slotted:
            pre = pre.unflatten(-1, (-1, self._slot_width()))
        top = pre.topk(self.k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        if slotted:
            f = f.flatten(-2)
        if not fired:
            return f, None
        idx = top.indices
        if slotted:  # index within a slot -> latent index
            idx = idx + self._slot_width() * torch.arange(pre.shape[-2], device=idx.device).unsqueeze(-1)
        hits = (top.values.detach() > 0).reshape(-1).to(torch.int32)  # relu(v) > 0 iff v > 0 (NaN: neither)
        count = torch.zeros(self.width, dtype=torch.int32, device=idx.device).index_add_(0, idx.reshape(-1), hits)
        return f, count > 0

    def decode(self, f: Tensor) -> Tensor:
        """``W_dec f + b_dec``, shape ``(..., d)``."""
        return f @ self.decoder().T + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ``x_hat`` (same shape and dtype as ``x``; computed in the SAE's dtype);
        usable as a splice replacement."""
        dtype = self.W_enc.dtype
        return self.decode(self.encode(x if x.dtype == dtype else x.to(dtype))).to(x.dtype)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-ready)."""
        return {"kind": self.kind, "d_in": self.d_in, "width": self.width, "activation": self.activation,
                "k": self.k, "hook": self.hook, "dtype": str(self.W_enc.dtype).removeprefix("torch.")}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the parameters as safetensors with the configuration in the metadata (atomic)."""
        tensors = {name: p.detach().cpu().contiguous() for name, p in self.state_dict().items()}
        meta = {"format": _FORMAT, "config": json.dumps(self.config())}
        return atomic_write_bytes(path, st_save(tensors, metadata=meta))


class BindingSAE(SparseAutoencoder):
    """The matrix-binding SAE: ``W_dec = [D, R D, ..., R^{s-1} D]`` (see the module docstring).

    Args:
        d_in: activation width ``d``.
        n_free: free dictionary size ``m`` (columns of ``D``).
        slots: number of slots ``s >= 2``; the SAE has ``s m`` latents.
        activation: as for :class:`SparseAutoencoder`.
        k: as for :class:`SparseAutoencoder` (out of all ``s m`` latents).
        hook: as for :class:`SparseAutoencoder`.
        dtype: parameter dtype.
        seed: seeds the initialisation; ``R`` starts as a random orthogonal matrix (a start
            at the identity would make the slots indistinguishable).
    """

    kind = "binding"

    def __init__(self, d_in: int, n_free: int, *, slots: int = 2, activation: str = "topk", k: int | None = None,
                 hook: str = "", dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        if slots < 2:
            raise ShapeError(f"a binding SAE needs at least 2 slots, got {slots}")
        self.n_free = int(n_free)
        self.slots = int(slots)
        super().__init__(d_in, slots * n_free, activation=activation, k=k, hook=hook, dtype=dtype, seed=seed)

    def _init_params(self, g: torch.Generator, dtype: torch.dtype) -> None:
        D = torch.randn(self.d_in, self.n_free, generator=g, dtype=torch.float64)
        D = D / D.norm(dim=0, keepdim=True)
        Q, Rq = torch.linalg.qr(torch.randn(self.d_in, self.d_in, generator=g, dtype=torch.float64))
        Q = Q * torch.sign(torch.diagonal(Rq))
        self.D = nn.Parameter(D.to(dtype))
        self.R = nn.Parameter(Q.to(dtype))
        W = torch.cat([torch.linalg.matrix_power(Q, j) @ D for j in range(self.slots)], dim=1)
        W = W / W.norm(dim=0, keepdim=True)
        self.W_enc = nn.Parameter(W.T.clone().to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(self.width, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in, dtype=dtype))

    def _slot_width(self) -> int:
        return self.n_free

    def decoder(self) -> Tensor:
        """``[D, R D, ..., R^{s-1} D]``, shape ``(d, s m)``."""
        cols = [self.D]
        for _ in range(1, self.slots):
            cols.append(self.R @ cols[-1])
        return torch.cat(cols, dim=1)

    def free_columns(self) -> Tensor:
        return self.D

    @property
    def decoder_parameters(self) -> int:
        """``m d + d^2``: what the bound dictionary costs (biases excluded)."""
        return self.n_free * self.d_in + self.d_in**2

    @property
    def budget_saved(self) -> int:
        """``s m d - (m d + d^2)``: decoder parameters saved against a plain SAE of ``s m`` latents."""
        return self.width * self.d_in - self.decoder_parameters

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(n_free=self.n_free, slots=self.slots)
        return cfg


def load_sae(path: str | os.PathLike) -> SparseAutoencoder:
    """Load an SAE written by :meth:`SparseAutoencoder.save` (no code is executed).

    Raises:
        DataError: the file is not a wdecomp SAE (no or unknown metadata, missing tensors).
        NonFiniteError: a stored parameter is NaN or infinite.
    """
    raw = Path(path).read_bytes()
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise DataError(f"{path} is not a safetensors file: {exc}") from exc
    if meta.get("format") != _FORMAT or "config" not in meta:
        raise DataError(f"{path} is not a wdecomp SAE (metadata format {meta.get('format')!r}, expected {_FORMAT!r})")
    cfg = json.loads(meta["config"])
    dtype = getattr(torch, cfg.pop("dtype"))
    kind = cfg.pop("kind")
    if kind == "binding":
        width = cfg.pop("width")
        sae: SparseAutoencoder = BindingSAE(cfg.pop("d_in"), cfg.pop("n_free"), dtype=dtype, **cfg)
        if sae.width != width:
            raise DataError(f"{path}: stored width {width} does not match slots x n_free = {sae.width}")
    elif kind == "plain":
        sae = SparseAutoencoder(cfg.pop("d_in"), cfg.pop("width"), dtype=dtype, **cfg)
    else:
        raise DataError(f"{path}: unknown SAE kind {kind!r}")
    tensors = st_load(raw)
    own = sae.state_dict()
    if set(tensors) != set(own):
        raise DataError(f"{path}: tensors {sorted(tensors)} do not match an SAE's {sorted(own)}")
    for name, t in tensors.items():
        if t.shape != own[name].shape:
            raise DataError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(own[name].shape)}")
        if not torch.isfinite(t).all():
            raise NonFiniteError(f"{path}: tensor {name!r} holds NaN or infinite values")
    sae.load_state_dict(tensors)
    return sae.eval()

