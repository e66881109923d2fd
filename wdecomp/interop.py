"""Glue for TransformerLens ``HookedTransformer`` and Hugging Face ``transformers`` models.

Both libraries work with wdecomp as they are; this module holds the few pieces that make them
convenient, and imports neither package until one of its functions is called (``import wdecomp``
never pulls them in). Install them with the ``interop`` extra: ``pip install "wdecomp[interop]"``.

**TransformerLens.** ``HookedTransformer.forward(tokens)`` returns logits ``(B, T, V)``, so the model
goes straight into :class:`~wdecomp.Objective` with ``loss="cross_entropy"`` and targets ``(B, T)``.
Its ``HookPoint`` modules are ordinary modules, so wdecomp's hook points are their names
(``"blocks.0.hook_resid_mid"``, ``"blocks.0.hook_resid_post"``, ``"blocks.0.mlp.hook_post"``), and
``torch.func`` transforms (``functional_call``, ``jvp``, ``vmap``) run through its forward pass.
:func:`hooked_transformer` builds one from a config without downloading anything and
:func:`tl_hook_points` lists the hook names. TransformerLens 4 removed ``HookedTransformer``; the
``interop`` extra pins a 3.x release that still has it.

**Hugging Face.** A ``transformers`` model returns a ``ModelOutput``, not a tensor;
:func:`logits_module` wraps it so ``forward(input_ids)`` returns the logits. It also switches the
attention to the ``"eager"`` implementation: PyTorch's fused scaled-dot-product attention has no
forward-mode derivative, which every Hessian-vector product here needs. Inside the wrapper the
model is the submodule ``model``, so names gain that prefix: parameters
``"model.transformer.h.0.mlp.*"``, hook points ``"model.transformer.h.0"`` (a GPT-2 block's output,
the residual stream) or ``"model.transformer.h.0.ln_2:input"`` (the residual stream between the
attention and the MLP). Build models from configs (``GPT2LMHeadModel(GPT2Config(...))``); nothing
here loads weights or tokenizers.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = [
    "INSTALL",
    "PINS",
    "LogitsModule",
    "hooked_transformer",
    "logits_module",
    "require",
    "tl_hook_points",
]

#: The versions the ``interop`` extra installs (TransformerLens 4 has no ``HookedTransformer``).
PINS = ("transformer-lens==3.9.0", "transformers>=5.9,<6")

#: The command that installs them.
INSTALL = 'pip install "wdecomp[interop]"  (or: pip install ' + " ".join(f'"{p}"' for p in PINS) + ")"

_DISTRIBUTIONS = {"transformer_lens": "transformer-lens", "transformers": "transformers"}


def require(module: str) -> Any:
    """Import ``module`` (``"transformer_lens"`` or ``"transformers"``), or explain how to install it.

    Args:
        module: The importable name.

    Returns:
        The imported module.

    Raises:
        ImportError: The package is missing or broken; the message names the install command.

    Example:
        >>> require("torch").__name__
        'torch'
    """
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        dist = _DISTRIBUTIONS.get(module, module)
        raise ImportError(
            f"wdecomp.interop needs the package '{dist}' ({type(exc).__name__}: {exc}); install it with: {INSTALL}"
        ) from exc
    if module == "transformer_lens" and not hasattr(mod, "HookedTransformer"):
        version = getattr(mod, "__version__", "?")
        raise ImportError(
            f"transformer_lens {version} has no HookedTransformer (TransformerLens 4 removed it); "
            f"install a 3.x release with: {INSTALL}"
        )
    return mod


# ---------------------------------------------------------------------- TransformerLens
def hooked_transformer(config: Any = None, /, **config_kwargs: Any) -> nn.Module:
    """A TransformerLens ``HookedTransformer`` built from a config, in eval mode, no downloads.

    Args:
        config: A ``HookedTransformerConfig``, or ``None`` to build one from ``config_kwargs``.
        **config_kwargs: ``HookedTransformerConfig`` fields (``n_layers``, ``d_model``, ``n_ctx``,
            ``d_head``, ``d_vocab``, ``act_fn``, ``seed``, ``dtype``...), when ``config`` is ``None``.

    Returns:
        The model (random weights from the config's ``seed``), in eval mode. TransformerLens 3
        marks ``HookedTransformer`` deprecated; that warning is silenced here.

    Raises:
        ImportError: TransformerLens (3.x) is not installed.
        ValueError: Both ``config`` and keyword fields were given, or the config names a
            tokenizer (which would be downloaded).
    """
    tl = require("transformer_lens")
    if config is None:
        config = tl.HookedTransformerConfig(**config_kwargs)
    elif config_kwargs:
        raise ValueError("pass a HookedTransformerConfig or its fields, not both")
    if getattr(config, "tokenizer_name", None):
        raise ValueError(
            f"the config names the tokenizer '{config.tokenizer_name}', which TransformerLens would "
            "download; leave tokenizer_name unset and feed token ids"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
        model = tl.HookedTransformer(config)
    return model.eval()


def tl_hook_points(model: nn.Module) -> list[str]:
    """Names of a TransformerLens model's ``HookPoint`` modules, in registration order.

    Each name is a valid wdecomp hook point (the hook's output is the activation).

    Args:
        model: A ``HookedTransformer`` (or any module holding TransformerLens ``HookPoint`` s).

    Returns:
        Names such as ``"hook_embed"``, ``"blocks.0.hook_resid_mid"``, ``"blocks.0.mlp.hook_post"``.
    """
    return [name for name, module in model.named_modules() if type(module).__name__ == "HookPoint"]


# ---------------------------------------------------------------------- Hugging Face
class LogitsModule(nn.Module):
    """Wraps a Hugging Face model so that ``forward(input_ids)`` returns a tensor.

    Args:
        model: A ``transformers`` model (``GPT2LMHeadModel``, ``BertForSequenceClassification``...),
            stored as the submodule ``model``.
        output: The field of the ``ModelOutput`` returned (``"logits"``).
        call_kwargs: Keyword arguments passed on every call (``use_cache=False`` by default, so no
            key/value cache is built).
    """

    def __init__(self, model: nn.Module, output: str = "logits", call_kwargs: Mapping[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.output = output
        self.call_kwargs = {"use_cache": False, **dict(call_kwargs or {})}

    def forward(self, input_ids: Tensor | None = None, **kwargs: Any) -> Tensor:
        """The ``output`` field of ``model(input_ids=input_ids, **call_kwargs, **kwargs)``."""
        out = self.model(input_ids=input_ids, **{**self.call_kwargs, **kwargs})
        if isinstance(out, Mapping):
            return out[self.output]
        if isinstance(out, tuple):
            return out[0]
        return getattr(out, self.output)


def logits_module(
    model: nn.Module,
    output: str = "logits",
    *,
    eager_attention: bool = True,
    **call_kwargs: Any,
) -> LogitsModule:
    """A Hugging Face model whose forward returns its logits tensor (for curvature, bases, ablations).

    Args:
        model: A ``transformers`` model, usually built from a config (no downloads). Its
            training/eval mode is kept: call ``.eval()`` (dropout in training mode is refused by
            :class:`~wdecomp.Objective`).
        output: The ``ModelOutput`` field to return.
        eager_attention: Switch to the ``"eager"`` attention implementation (plain matmuls and
            softmax). PyTorch's fused scaled-dot-product attention has no forward-mode derivative,
            so Hessian-vector products (forward-over-reverse) fail through it.
        **call_kwargs: Passed on every forward call (``use_cache=False`` unless given).

    Returns:
        A :class:`LogitsModule`; hook points and parameter names are prefixed with ``"model."``.
    """
    if eager_attention:
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
        elif getattr(model, "config", None) is not None:
            model.config._attn_implementation = "eager"
    wrapper = LogitsModule(model, output, call_kwargs)
    wrapper.train(model.training)
    return wrapper
