"""Testing the matrix-binding hypothesis: a planted benchmark and a report with a fit test.

The seed text's proposal: if activations bind features to slots by a linear map (a "red" feature
in slot 1 and a "cube" feature in slot 2 written as ``d_red + R d_cube``), an SAE whose decoder is
``[D, R D, ...]`` (:class:`~wdecomp.sae.model.BindingSAE`) should reconstruct as well as a plain
SAE with the same number of latents, at the same L0, with a fraction of the dictionary.

**Fit test.** :func:`binding_report` trains a binding SAE (``m`` free columns, ``s`` slots,
``s m`` latents) and a plain SAE with ``s m`` latents, both TopK with the same ``k`` (equal L0),
and reports the *fit ratio* ``rho = FVU_binding / FVU_plain`` (FVU: fraction of variance
unexplained, ``1 - explained_variance``). When the data hold binding the constrained dictionary
loses nothing (``rho <= 1`` up to optimisation noise); when they do not, ``R`` cannot map ``m``
directions onto ``m`` unrelated ones once ``m > d`` (``d^2`` unknowns against ``m d``
equations), and ``rho`` grows. Binding is *flagged as unsupported* when ``rho > threshold``
(default 1.5). For ``m <= d`` any two dictionaries are related by some ``R`` and the test says
nothing; the report says so.

**Planted data** (:func:`planted_binding`): ``x = a_i d_i + b_j R* d_j + noise`` with ``D*``
(``(d, m)``) random unit columns, one feature per slot per sample (``i``, ``j`` uniform),
magnitudes uniform in ``[0.8, 1.2]`` and Gaussian noise; ``R*`` orthogonal or a general map with
singular values spread over ``[lo, hi]``. The control (``bound=False``) replaces ``R* D*`` by
independent random unit columns. The recovered ``R`` is compared with ``R*`` by relative
Frobenius error ``||R - R*||_F / ||R*||_F``; the slots of the planted data are exchangeable
(``D* -> R* D*``, ``R* -> R*^{-1}`` gives the same data), so the error is taken for both
orientations and the smaller one is reported, with the orientation. ``R`` acts on the whole
space and ``D*`` spans it (``m >= d``), so no permutation or sign alignment is needed: the
dictionary's order and signs do not change ``R``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from wdecomp.errors import ShapeError
from wdecomp.sae.metrics import reconstruction_stats
from wdecomp.sae.model import BindingSAE, SparseAutoencoder
from wdecomp.sae.train import fit_sae

__all__ = ["BindingReport", "PlantedBinding", "binding_report", "planted_binding", "r_error"]


@dataclass(frozen=True)
class PlantedBinding:
    """Synthetic activations with planted binding (see the module docstring).

    Attributes:
        X: ``(n, d)`` float32 activations.
        D: ``(d, m)`` float64 slot-1 dictionary.
        R: ``(d, d)`` float64 planted map ``R*``.
        E: ``(d, m)`` float64 slot-2 dictionary (``R* D*``, or independent for the control).
        bound: Whether slot 2 is ``R* D*``.
    """

    X: Tensor = field(repr=False)
    D: Tensor = field(repr=False)
    R: Tensor = field(repr=False)
    E: Tensor = field(repr=False)
    bound: bool


def _orthogonal(d: int, g: torch.Generator) -> Tensor:
    Q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(r))


def planted_binding(
    n: int = 20000,
    d: int = 24,
    m: int = 36,
    *,
    R: str | Tensor = "orthogonal",
    singular_values: tuple[float, float] = (0.8, 1.25),
    bound: bool = True,
    magnitude: tuple[float, float] = (0.8, 1.2),
    noise: float = 0.01,
    seed: int = 0,
) -> PlantedBinding:
    """Activations ``x = a_i d_i + b_j R* d_j + noise`` (see the module docstring).

    Args:
        n: Samples.
        d: Activation width.
        m: Features per slot.
        R: ``"orthogonal"``, ``"general"`` (``U diag(s) V^T``, ``s`` evenly spaced over
            ``singular_values``) or a ``(d, d)`` tensor.
        singular_values: Range of the general map's singular values.
        bound: ``False`` gives the control (slot 2 unrelated to slot 1).
        magnitude: Range of the uniform feature magnitudes.
        noise: Standard deviation of the Gaussian noise per coordinate.
        seed: Seeds everything.
    """
    # a stream of its own: the SAEs' initialisation draws D and R from manual_seed(seed) in the
    # same order, and would otherwise start at the planted answer
    g = torch.Generator().manual_seed(1_000_003 * int(seed) + 7919)
    D = torch.randn(d, m, generator=g, dtype=torch.float64)
    D = D / D.norm(dim=0)
    if isinstance(R, Tensor):
        if R.shape != (d, d):
            raise ShapeError(f"R must be ({d}, {d}), got {tuple(R.shape)}")
        Rs = R.to(torch.float64)
    elif R == "orthogonal":
        Rs = _orthogonal(d, g)
    elif R == "general":
        lo, hi = singular_values
        Rs = _orthogonal(d, g) @ torch.diag(torch.linspace(lo, hi, d, dtype=torch.float64)) @ _orthogonal(d, g).T
    else:
        raise ValueError(f"R must be 'orthogonal', 'general' or a tensor, not {R!r}")
    if bound:
        E = Rs @ D
    else:
        E = torch.randn(d, m, generator=g, dtype=torch.float64)
        E = E / E.norm(dim=0)
    lo, hi = magnitude
    rows = torch.arange(n)
    a = torch.zeros(n, m, dtype=torch.float64)
    b = torch.zeros(n, m, dtype=torch.float64)
    a[rows, torch.randint(0, m, (n,), generator=g)] = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    b[rows, torch.randint(0, m, (n,), generator=g)] = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    X = a @ D.T + b @ E.T + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return PlantedBinding(X.float(), D, Rs, E, bound)


def r_error(R: Tensor, R_true: Tensor) -> tuple[float, str]:
    """``min(||R - R*||_F, ||R^{-1} - R*||_F) / ||R*||_F`` and which orientation attained it
    (``"R"`` or ``"R^-1"``; the slots are exchangeable, see the module docstring)."""
    R64, T = R.detach().to(torch.float64).cpu(), R_true.detach().to(torch.float64).cpu()
    direct = float((R64 - T).norm() / T.norm())
    try:
        inverse = float((torch.linalg.inv(R64) - T).norm() / T.norm())
    except RuntimeError:  # singular R
        inverse = float("inf")
    return (direct, "R") if direct <= inverse else (inverse, "R^-1")


@dataclass(frozen=True)
class BindingReport:
    """Result of :func:`binding_report`.

    Attributes:
        R: The learned map ``(d, d)``.
        slots: ``s``.
        n_free: ``m``.
        d: Activation width.
        k: TopK of both SAEs.
        fvu_binding: Fraction of variance unexplained by the binding SAE.
        fvu_plain: The same for the plain SAE with ``s m`` latents.
        fit_ratio: ``fvu_binding / fvu_plain``.
        threshold: Flag level of the fit ratio.
        supported: ``fit_ratio <= threshold`` and ``m > d`` (else the test is uninformative).
        l0_binding: Measured L0 of the binding SAE.
        l0_plain: Measured L0 of the plain SAE.
        slot_usage: Share of the binding SAE's firing latents in each slot.
        decoder_params_binding: ``m d + d^2``.
        decoder_params_plain: ``s m d``.
        budget_saved: ``decoder_params_plain - decoder_params_binding``.
        r_singular_values: Singular values of the learned ``R``, descending.
        r_error: Relative error against a known ``R*`` (``None`` without one).
        orientation: ``"R"`` or ``"R^-1"`` (see :func:`r_error`).
        binding: The trained binding SAE.
        plain: The trained plain SAE.
        notes: Caveats.
    """

    R: Tensor = field(repr=False)
    slots: int
    n_free: int
    d: int
    k: int
    fvu_binding: float
    fvu_plain: float
    fit_ratio: float
    threshold: float
    supported: bool
    l0_binding: float
    l0_plain: float
    slot_usage: tuple[float, ...]
    decoder_params_binding: int
    decoder_params_plain: int
    budget_saved: int
    r_singular_values: tuple[float, ...] = field(repr=False)
    r_error: float | None
    orientation: str | None
    binding: BindingSAE = field(repr=False)
    plain: SparseAutoencoder = field(repr=False)
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        sv = self.r_singular_values
        lines = [
            f"Matrix-binding SAE: {self.slots} slots x {self.n_free} free columns (d={self.d}, TopK k={self.k})",
            f"  FVU binding {self.fvu_binding:.4g}  vs plain SAE with {self.slots * self.n_free} latents "
            f"{self.fvu_plain:.4g}  (L0 {self.l0_binding:.2f} vs {self.l0_plain:.2f})",
            f"  fit ratio FVU_binding / FVU_plain = {self.fit_ratio:.3f}  (flag above {self.threshold:g}): "
            + ("binding SUPPORTED" if self.supported else "binding NOT supported"),
            f"  slot usage (share of firing latents): {', '.join(f'{u:.2f}' for u in self.slot_usage)}",
            f"  decoder parameters: {self.decoder_params_binding} vs {self.decoder_params_plain} "
            f"(saved {self.budget_saved}, {100 * self.budget_saved / self.decoder_params_plain:.1f}%)",
            f"  learned R: singular values {sv[0]:.3g} .. {sv[-1]:.3g}",
        ]
        if self.r_error is not None:
            lines.append(f"  relative error vs planted R*: {self.r_error:.4f} (orientation {self.orientation})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


Source = Tensor | Callable[[], Iterable[Tensor]]


def _fvu_l0(sae: SparseAutoencoder, source: Source) -> tuple[float, float, Tensor]:
    stats = reconstruction_stats(sae, source if isinstance(source, Tensor) else source())
    rec = stats.metrics()
    assert stats.fired is not None
    return 1.0 - rec["explained_variance"], rec["l0"], stats.fired


def binding_report(
    source: Source,
    *,
    n_free: int,
    k: int,
    slots: int = 2,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    R_true: Tensor | None = None,
    threshold: float = 1.5,
    eval_source: Source | None = None,
    init: BindingSAE | None = None,
    progress: bool | None = None,
    **kwargs: Any,
) -> BindingReport:
    """Train a binding SAE and a plain SAE with as many latents; compare them (module docstring).

    Args:
        source: ``(N, d)`` activations, or a function returning a fresh iterable of ``(n_i, d)``
            chunks (e.g. ``lambda: hook_activations(model, data, hook)``; streamed, never all
            in memory).
        n_free: Free dictionary size ``m`` of the binding SAE.
        k: TopK of both SAEs (equal L0 budget).
        slots: ``s``.
        steps: Training steps of each SAE.
        batch_size: Activations per step.
        lr: Adam learning rate.
        seed: Seeds both SAEs.
        R_true: A planted ``R*`` to report the recovery error against.
        threshold: Fit-ratio flag level.
        eval_source: Activations for the FVU (default: ``source``).
        init: A binding SAE to start from (trained further in place; its ``n_free``, ``slots``
            and ``k`` must match), e.g. a warm start; default a fresh seeded one.
        progress: Progress bars.
        **kwargs: Passed to :func:`~wdecomp.sae.train.fit_sae`.
    """
    first = source if isinstance(source, Tensor) else next(iter(source()))
    d = int(first.shape[-1])

    def stream() -> Tensor | Iterable[Tensor]:
        return source if isinstance(source, Tensor) else source()

    bind = init if init is not None else BindingSAE(d, n_free, slots=slots, k=k, seed=seed)
    if (bind.n_free, bind.slots, bind.k, bind.d_in) != (n_free, slots, k, d):
        raise ShapeError(f"init has n_free={bind.n_free}, slots={bind.slots}, k={bind.k}, d={bind.d_in}; "
                         f"expected {n_free}, {slots}, {k}, {d}")
    fit_sae(bind, stream(), steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress, **kwargs)
    plain = SparseAutoencoder(d, slots * n_free, k=k, seed=seed)
    fit_sae(plain, stream(), steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress, **kwargs)
    ev = eval_source if eval_source is not None else source
    fvu_b, l0_b, fired = _fvu_l0(bind, ev)
    fvu_p, l0_p, _ = _fvu_l0(plain, ev)
    usage = fired.reshape(slots, n_free).sum(1)
    usage = usage / usage.sum().clamp_min(1)
    ratio = fvu_b / fvu_p if fvu_p > 0 else float("inf")
    notes = []
    if n_free <= d:
        notes.append(f"m = {n_free} <= d = {d}: any two dictionaries are related by some R, so the fit ratio "
                     "cannot reject binding; use m > d")
    err, orient = (None, None) if R_true is None else r_error(bind.R, R_true)
    plain_params = slots * n_free * d
    return BindingReport(
        R=bind.R.detach().clone(), slots=slots, n_free=n_free, d=d, k=k, fvu_binding=fvu_b, fvu_plain=fvu_p,
        fit_ratio=ratio, threshold=threshold, supported=bool(ratio <= threshold and n_free > d),
        l0_binding=l0_b, l0_plain=l0_p, slot_usage=tuple(float(u) for u in usage),
        decoder_params_binding=bind.decoder_parameters, decoder_params_plain=plain_params,
        budget_saved=plain_params - bind.decoder_parameters,
        r_singular_values=tuple(float(s) for s in torch.linalg.svdvals(bind.R.detach().double())),
        r_error=err, orientation=orient, binding=bind, plain=plain, notes=tuple(notes),
    )
