"""Registry of architecture adapters, keyed by ``config.model_type``.

To support a new family, write one module with an :class:`ArchitectureAdapter` subclass (for a
decoder-only transformer, a :class:`TransformerAdapter` that names four module paths) and add it
to ``ADAPTERS`` below.
"""

from __future__ import annotations

from torch import nn

from neuronbench.adapters.base import ArchitectureAdapter, Tap
from neuronbench.adapters.gpt2 import GPT2Adapter
from neuronbench.adapters.gpt_neox import GPTNeoXAdapter
from neuronbench.adapters.llama import LlamaAdapter
from neuronbench.adapters.mamba import MambaAdapter
from neuronbench.adapters.opt import OPTAdapter
from neuronbench.adapters.transformer import TransformerAdapter
from neuronbench.errors import UnsupportedArchitectureError

ADAPTERS: dict[str, type[ArchitectureAdapter]] = {
    model_type: adapter
    for adapter in (GPT2Adapter, OPTAdapter, LlamaAdapter, GPTNeoXAdapter, MambaAdapter)
    for model_type in adapter.model_types
}


def require_supported(model_type: str | None, model: str) -> None:
    """Raise :class:`UnsupportedArchitectureError` unless ``model_type`` has an adapter; the
    message lists the supported types in one line."""
    if model_type not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"model {model!r} has model_type {model_type!r}, which neuronbench does not support; supported "
            f"model types: {', '.join(sorted(ADAPTERS))}. Add an adapter module under neuronbench/adapters/ "
            "to support it."
        )


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model``, chosen by ``model.config.model_type``."""
    model_type = getattr(model.config, "model_type", None)
    require_supported(model_type, getattr(model.config, "_name_or_path", type(model).__name__))
    return ADAPTERS[model_type](model)


__all__ = ["ADAPTERS", "ArchitectureAdapter", "Tap", "TransformerAdapter", "adapter_for", "require_supported"]
