"""Shared machinery of decoder-only transformers: an MLP whose output projection reads the
neurons, and an attention module whose probabilities and per-head outputs are exposed.

A concrete family (GPT-2, OPT, Llama, GPT-NeoX) only names its module paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from neuronbench.adapters.attention_impl import hold_eager
from neuronbench.adapters.base import ArchitectureAdapter, Sink, Tap, TensorEdit
from neuronbench.errors import CaptureError
from neuronbench.names import ATTN_HEADS, ATTN_PATTERN, NEURONS


def _first_input(inputs: tuple, _output: object) -> dict[str, torch.Tensor]:
    return {NEURONS: inputs[0]}


class TransformerAdapter(ArchitectureAdapter):
    """Adapter for a decoder-only transformer, configured by dotted module paths."""

    blocks_path: ClassVar[str]
    """Path from the ``*ForCausalLM`` model to the list of blocks (e.g. ``transformer.h``)."""
    neuron_path: ClassVar[str]
    """Path from a block to the MLP output projection (its input is the neuron tensor)."""
    attention_path: ClassVar[str]
    """Path from a block to the attention module (returns ``(output, probabilities)``)."""
    attention_out_path: ClassVar[str]
    """Path from a block to the attention output projection (its input is the heads)."""

    def blocks(self) -> Sequence[nn.Module]:
        return self.model.get_submodule(self.blocks_path)

    def _block_part(self, layer: int, path: str) -> nn.Module:
        return self.blocks()[self.check_layer(layer)].get_submodule(path)

    def neuron_module(self, layer: int) -> nn.Module:
        return self._block_part(layer, self.neuron_path)

    def attention_module(self, layer: int) -> nn.Module:
        """The attention module of ``layer`` (it calls the attention implementation)."""
        return self._block_part(layer, self.attention_path)

    def attention_out_module(self, layer: int) -> nn.Module:
        """The attention output projection ``W_O`` of ``layer`` (its input is the heads)."""
        return self._block_part(layer, self.attention_out_path)

    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    def taps(self, layer: int) -> list[Tap]:
        return [
            Tap(self.neuron_module(layer), (NEURONS,), _first_input, pre=True),
            Tap(self.attention_module(layer), (ATTN_PATTERN,), self._pattern(layer)),
            Tap(self._block_part(layer, self.attention_out_path), (ATTN_HEADS,), self._heads, pre=True),
        ]

    def _pattern(self, layer: int):
        def extract(_inputs: tuple, output: object) -> dict[str, torch.Tensor]:
            probabilities = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if probabilities is None:
                raise CaptureError(
                    f"layer {layer} attention returned no probabilities: run the forward pass with "
                    "adapter.forward_kwargs(kinds) (output_attentions=True) while the capture hooks "
                    "are registered (they switch the model to eager attention)"
                )
            return {ATTN_PATTERN: probabilities}

        return extract

    def _split_heads(self, merged: torch.Tensor) -> torch.Tensor:
        return merged.unflatten(-1, (self.num_heads, merged.shape[-1] // self.num_heads))

    def _heads(self, inputs: tuple, _output: object) -> dict[str, torch.Tensor]:
        return {ATTN_HEADS: self._split_heads(inputs[0])}

    def register_head_edit(self, layer: int, edit: TensorEdit) -> RemovableHandle:
        module = self.attention_out_module(layer)

        def pre_hook(_module: nn.Module, inputs: tuple) -> tuple:
            heads = edit(self._split_heads(inputs[0]))
            return (heads.flatten(-2), *inputs[1:])

        return module.register_forward_pre_hook(pre_hook)

    def register_capture(self, layer: int, kinds: Iterable[str], sink: Sink) -> list[RemovableHandle]:
        """As the base class; reading ``attn.pattern`` also switches the model to eager attention
        until the returned handles are removed (:mod:`neuronbench.adapters.attention_impl`)."""
        kinds = tuple(kinds)
        handles = super().register_capture(layer, kinds, sink)
        if ATTN_PATTERN in kinds:
            try:
                handles.append(hold_eager(self.model))
            except Exception:
                for handle in handles:
                    handle.remove()
                raise
        return handles

    def forward_kwargs(self, kinds) -> dict:
        return {"output_attentions": True} if ATTN_PATTERN in set(kinds) else {}
