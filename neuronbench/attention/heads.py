"""Transformer attention heads as attention units, from the model's real attention probabilities.

Head ``h`` of layer ``l``: its attention is the probability matrix ``p^{(l,h)}`` the model itself
computed (``attn.pattern``, eager attention), its attention-mixed output is ``o_i = Σ_j p_ij v_j``
as the model computed it (``attn.heads``: the input of the attention output projection, split by
head, ``d_h`` wide), and what it writes into the residual stream is

    c_i = o_i · W_O[h·d_h : (h+1)·d_h, :]       (``d_model`` wide; bias excluded: it is no head's),

its block of rows of the input-major ``W_O``. Ablating it replaces ``o`` (``register_head_edit``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.adapters.base import weight_by_input
from neuronbench.attention.forward import UnitPass, capture_activations
from neuronbench.attention.hidden import AttentionBlock
from neuronbench.attention.units import UnitWindow
from neuronbench.errors import NeuronRangeError
from neuronbench.names import ATTN_PATTERN


def head_count(adapter: ArchitectureAdapter) -> int:
    """Number of attention heads per layer; :class:`AnalysisUnavailableError` without heads."""
    return adapter.num_heads


def head_attention(model: nn.Module, adapter: ArchitectureAdapter, input_ids: torch.Tensor, layer: int,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The attention probabilities ``[B, H, T, T]`` the model uses in ``layer`` (one forward)."""
    head_count(adapter)
    layer = adapter.check_layer(layer)
    return capture_activations(model, adapter, [layer], [ATTN_PATTERN], input_ids, attention_mask)[layer][ATTN_PATTERN]


class TransformerHeads:
    """Attention units of a transformer: its heads."""

    name = "head"
    kinds = (ATTN_PATTERN,)

    def count(self, adapter: ArchitectureAdapter, layer: int) -> int:
        adapter.check_layer(layer)
        return head_count(adapter)

    def window(self, adapter: ArchitectureAdapter, layer: int, seen: UnitPass, row: int, length: int,
               memory_budget_bytes: int) -> UnitWindow:
        pattern = seen.captured[layer][ATTN_PATTERN][row, :, :length, :length].float()
        heads = torch.arange(pattern.shape[0], device=pattern.device)
        outputs = seen.outputs[layer][row, :length].float()
        return UnitWindow(blocks=iter([AttentionBlock(heads, 0, length, pattern)]), values=None,
                          assemble=lambda _mixed: outputs, grads=seen.grads[layer][row, :length].float(),
                          unit_values=outputs)

    def write_gram(self, adapter: ArchitectureAdapter, layer: int) -> torch.Tensor:
        rows = weight_by_input(adapter.attention_out_module(layer)).detach().double().cpu()
        blocks = rows.unflatten(0, (head_count(adapter), -1))
        return blocks @ blocks.transpose(1, 2)

    def matrices(self, model: nn.Module, adapter: ArchitectureAdapter, input_ids: torch.Tensor,
                 layer: int, units: Sequence[int], memory_budget_bytes: int) -> torch.Tensor:
        count = self.count(adapter, layer)
        bad = [unit for unit in units if not 0 <= unit < count]
        if bad:
            raise NeuronRangeError(f"heads {bad} are out of range for layer {layer}, which has {count} "
                                   f"heads (valid 0..{count - 1})")
        return head_attention(model, adapter, input_ids.reshape(1, -1), layer)[0, list(units)].float()
