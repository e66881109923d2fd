"""Sparse autoencoders on any hook point, scored with SAELens' metrics on the honest scale.

* :mod:`~wdecomp.sae.model`: :class:`SparseAutoencoder` (ReLU + L1 or TopK, unit-norm decoder
  columns) and the matrix-binding :class:`BindingSAE` (decoder ``[D, R D, R^2 D, ...]``);
  safetensors save / :func:`load_sae`.
* :mod:`~wdecomp.sae.train`: :func:`train_sae` on a model's activations streamed over the data
  (:func:`hook_activations`), :func:`fit_sae` on any activation stream, dead-latent tracking and
  resampling.
* :mod:`~wdecomp.sae.metrics`: :func:`evaluate_sae`: ``ce_loss_score``, ``kl_div_score``, L0,
  explained variance, MSE, cosine similarity, ``l2_ratio``, relative reconstruction bias, dead
  fraction, feature density (SAELens' names) next to the compute- and parameter-equivalent.
* :mod:`~wdecomp.sae.binding`: the planted binding benchmark and :func:`binding_report` (the fit
  test of the binding hypothesis), seeded by :func:`match_slots` (a plain SAE, its dictionary
  polished by :func:`refine_dictionary` with :func:`exact_codes` for ``k <= 2``, read as two bound
  slots) and finished by :func:`refit_binding`.

Example:
    >>> import wdecomp.models as wm                                                # doctest: +SKIP
    >>> from wdecomp.sae import train_sae, evaluate_sae                            # doctest: +SKIP
    >>> model, data = wm.char_transformer()                                        # doctest: +SKIP
    >>> sae = train_sae(model, data, "blocks.0", width=1024, k=16, steps=1500).sae  # doctest: +SKIP
    >>> print(evaluate_sae(model, sae, data))                                      # doctest: +SKIP
"""

from wdecomp.sae.binding import (
    BindingReport,
    PlantedBinding,
    SlotMatch,
    binding_from_plain,
    binding_report,
    exact_codes,
    match_slots,
    planted_binding,
    r_error,
    refine_dictionary,
    refit_binding,
)
from wdecomp.sae.metrics import ReconstructionStats, SAEMetrics, evaluate_sae, reconstruction_stats
from wdecomp.sae.model import ACTIVATIONS, BindingSAE, SparseAutoencoder, load_sae
from wdecomp.sae.train import SAETrainResult, fit_sae, hook_activations, train_sae

__all__ = [
    "ACTIVATIONS",
    "BindingReport",
    "BindingSAE",
    "PlantedBinding",
    "ReconstructionStats",
    "SAEMetrics",
    "SAETrainResult",
    "SlotMatch",
    "SparseAutoencoder",
    "binding_from_plain",
    "binding_report",
    "evaluate_sae",
    "exact_codes",
    "fit_sae",
    "hook_activations",
    "load_sae",
    "match_slots",
    "planted_binding",
    "r_error",
    "reconstruction_stats",
    "refine_dictionary",
    "refit_binding",
    "train_sae",
]
