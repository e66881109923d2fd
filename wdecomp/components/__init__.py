"""Weight-space components: a network's weights rewritten in a basis.

:func:`decompose` turns a basis into :class:`Components`, one uniform object whatever the basis:

* **Activation bases** (:class:`~wdecomp.bases.Basis`: LIB, PCA, neuron, Jacobian). At a hook point
  with coordinates ``c = C (f - mu)`` (``C``: ``k x d``) and ``f = C^+ c + mu`` on the data, the
  weights next to the hook are rewritten in the basis: a producing ``Linear`` ``f = W a + b``
  becomes ``c = (C W) a + C (b - mu)`` (row ``i`` of ``C W`` is component ``i``'s input weights),
  a producing ``Embedding`` ``E`` becomes ``(E - mu) C^T``, and a consuming ``Linear``
  ``y = W' f + b'`` reads ``y = (W' C^+) c + W' mu + b'`` (column ``i`` of ``W' C^+`` is component
  ``i``'s output weights). Component ``i``'s weight-space *piece* is what removing it
  (``c_i -> 0``) takes out of the weights: ``C^+_{:,i} C_{i,:} W`` and ``C^+_{:,i} C_{i,:} (b - mu)``
  on the producing side (or ``W' C^+_{:,i} C_{i,:}`` and ``-W' C^+_{:,i} C_{i,:} mu`` on the consuming
  side when nothing linear produces the activation). A basis in the general folded form
  (``c = C f + b``, ``f = A c``; rib's ``center: false``, ``variant="rib-uncentred"``) is rewritten
  the same way with ``-C mu`` replaced by ``b`` and ``C^+`` by ``A`` (no bias on the way back).
* **Conv nets** (a basis over the channels, axis 1, of a conv activation ``(B, d, *pixels)``, as
  :func:`~wdecomp.bases.interaction_basis` builds by default; every pixel is a position). The same
  folds act on the channel axis at every pixel: a producing ``Conv1d/2d/3d`` (one group) becomes one
  with ``k`` output channels, ``W~[i] = sum_c C_{ic} W[c]``, bias ``C (b - mu)``; a consuming
  convolution reads ``W'[o, :, kernel] C^+`` (component ``i``'s output weights ``W'[o, :, kernel]
  C^+_{:,i}``), and a ``Linear`` after ``nn.Flatten`` reads its ``(out, d, pixels)`` weights the same
  way. A consuming convolution with zero padding sees no mean at the border, so a centred basis's
  pieces there are refused (the rewrite stays exact). A basis over an axis that is neither the
  channels nor the last is refused.
* **Curvature eigenbases** (:class:`~wdecomp.bases.CurvatureBasis`): component ``i`` is the
  eigenvector ``v_i`` in the parameters' shapes, importance ``lambda_i``; its piece is
  ``v_i v_i^T theta``.

Projection onto a subset ``S`` removes the pieces of the components outside ``S``:
``W_S = W - sum_{i not in S} piece_i``, so projecting on all components returns the weights
exactly (for a complete curvature eigenbasis it is the orthogonal projection onto ``span(v_S)``).

:meth:`Components.rewrite` returns a copy of the model that computes in the basis: at each hook
point the producing ``Linear``/``Embedding``/convolution is replaced by one with ``k`` outputs (``C``
folded into its weights) or followed by ``C`` (along the feature axis); the coordinates pass an ``nn.Identity`` named
``<point>.coords`` (a hook point of their own), and ``C^+`` (with ``mu`` as bias) is inserted
after it, so the copy computes the same function on the data the basis was fit on.

Components save to one safetensors file (tensors) with the JSON metadata in its header (format,
version, basis, model signature, a fingerprint of the model's weights and one of the saved
tensors); writes are atomic and loading runs no code. Loading validates every header key, tensor
shape, dtype and value (finite) and every name against the model (modules exist, widths agree), and
refuses (or, with ``weights="warn"``, warns about) a model whose weights differ from the ones the
components were saved with: a malformed file is a :class:`~wdecomp.errors.FileFormatError`, another
model a :class:`~wdecomp.errors.ModelMismatchError`.
"""

from wdecomp.components.files import FORMAT_VERSION, load_basis, save_basis, weights_fingerprint
from wdecomp.components.model import Component, Components, decompose, load_components

__all__ = [
    "FORMAT_VERSION",
    "Component",
    "Components",
    "decompose",
    "load_basis",
    "load_components",
    "save_basis",
    "weights_fingerprint",
]
