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


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model``, chosen by ``model.config.model_type``."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not supported; supported types: {sorted(ADAPTERS)}. "
            "Add an adapter module under neuronbench/adapters/ to support it."
        )
    return ADAPTERS[model_type](model)


__all__ = ["ADAPTERS", "ArchitectureAdapter", "Tap", "TransformerAdapter", "adapter_for"]
