"""Mamba channels as attention units: the hidden attention of a real model's layers.

Channel ``d`` of layer ``l`` is neuron ``d`` of that layer (SPEC §4). Its attention is
``α^{(l,d)}`` (:mod:`neuronbench.attention.hidden`) built from the ``Δ``, ``B``, ``C`` the
adapter captures and the layer's ``A = −exp(A_log)``. Its attention-mixed output is the scan
output ``m_i[d] = Σ_j α_{i,j}[d] x_j[d]``, and what it writes into the residual stream is

    c_i[d] = (m_i[d] + D[d] x_i[d]) · silu(z_i[d]) · W_out[:, d]     (``d_model`` wide),

the neuron ``u_i[d] = (m_i + D x_i) ⊙ silu(z_i)`` through its column of ``out_proj`` (write
matrix ``W_u = W_out[:, d]ᵀ``, ``k = 1``). The gradient the forward pass records is
``∂L/∂u``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.adapters.base import weight_by_input
from neuronbench.attention.forward import UnitPass, capture_activations
from neuronbench.attention.hidden import DEFAULT_MEMORY_BUDGET, hidden_attention, iter_hidden_attention
from neuronbench.attention.units import UnitWindow
from neuronbench.errors import AnalysisUnavailableError, ConfigError
from neuronbench.names import NEURONS, SSM_B, SSM_C, SSM_DELTA, SSM_X, SSM_Z

SSM_KINDS = (SSM_X, SSM_DELTA, SSM_B, SSM_C, SSM_Z)
"""What the hidden attention and the channel scores read from a Mamba layer."""


def require_ssm(adapter: ArchitectureAdapter) -> None:
    """:class:`AnalysisUnavailableError` unless the model has selective-scan (SSM) layers."""
    if not adapter.has_ssm:
        raise AnalysisUnavailableError(
            f"hidden attention needs selective-scan (SSM) layers, and this {adapter.family} model has "
            "none; for transformers the attention units are heads (neuronbench.attention.heads)"
        )


@dataclass
class SsmTensors:
    """A Mamba layer's scan inputs for a batch: ``x``, ``delta``, ``z`` ``[B, T, D]``; ``b``,
    ``c`` ``[B, T, N]``; ``neurons`` ``[B, T, D]``; ``a`` ``[D, N]`` and ``d`` ``[D]`` (float32)."""

    x: torch.Tensor
    delta: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    z: torch.Tensor
    neurons: torch.Tensor
    a: torch.Tensor
    d: torch.Tensor

    def hidden_attention(self, row: int = 0, channels: Sequence[int] | None = None,
                         memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
        """``α [channels, T, T]`` of sequence ``row`` (see :func:`hidden_attention`)."""
        return hidden_attention(self.delta[row], self.b[row], self.c[row], self.a, channels,
                                memory_budget_bytes=memory_budget_bytes)


def capture_ssm(model: nn.Module, adapter: ArchitectureAdapter, input_ids: torch.Tensor,
                layers: Sequence[int], attention_mask: torch.Tensor | None = None) -> dict[int, SsmTensors]:
    """The scan inputs and neurons of ``layers`` from one forward pass of the model itself."""
    require_ssm(adapter)
    captured = capture_activations(model, adapter, layers, (*SSM_KINDS, NEURONS), input_ids, attention_mask)
    tensors = {}
    for layer, kinds in captured.items():
        parameters = adapter.ssm_parameters(layer)
        tensors[layer] = SsmTensors(kinds[SSM_X], kinds[SSM_DELTA], kinds[SSM_B], kinds[SSM_C],
                                    kinds[SSM_Z], kinds[NEURONS], parameters["A"].detach(),
                                    parameters["D"].detach())
    return tensors


def _sequence(input_ids: torch.Tensor) -> torch.Tensor:
    """``input_ids`` as one sequence ``[1, T]`` (accepts ``[T]`` or ``[1, T]``)."""
    ids = input_ids.reshape(1, -1) if input_ids.dim() == 1 else input_ids
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ConfigError(f"expected one sequence of token ids ([T] or [1, T]), got {tuple(input_ids.shape)}")
    return ids


def layer_hidden_attention(model: nn.Module, adapter: ArchitectureAdapter, input_ids: torch.Tensor,
                           layer: int, channels: Sequence[int] | None = None,
                           memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
    """Hidden attention ``α [channels, T, T]`` of ``layer`` on one sequence of token ids.

    Raises :class:`AnalysisUnavailableError` for a model without SSM layers and
    :class:`ConfigError` when the matrix does not fit ``memory_budget_bytes``.
    """
    require_ssm(adapter)
    ids = _sequence(input_ids)
    tensors = capture_ssm(model, adapter, ids, [adapter.check_layer(layer)])[layer]
    return tensors.hidden_attention(0, channels, memory_budget_bytes)


class MambaChannels:
    """Attention units of an SSM: the channels (neurons) of each layer."""

    name = "channel"
    kinds = SSM_KINDS

    def count(self, adapter: ArchitectureAdapter, layer: int) -> int:
        return adapter.neuron_width(layer)

    def window(self, adapter: ArchitectureAdapter, layer: int, seen: UnitPass, row: int, length: int,
               memory_budget_bytes: int) -> UnitWindow:
        kinds = {kind: tensor[row, :length] for kind, tensor in seen.captured[layer].items()}
        parameters = adapter.ssm_parameters(layer)
        blocks = iter_hidden_attention(kinds[SSM_DELTA], kinds[SSM_B], kinds[SSM_C], parameters["A"].detach(),
                                       memory_budget_bytes=memory_budget_bytes)
        x = kinds[SSM_X].float()
        skip = parameters["D"].detach().float() * x
        gate = F.silu(kinds[SSM_Z].float())

        def assemble(mixed: torch.Tensor | None) -> torch.Tensor:
            return ((mixed.to(x.device) + skip) * gate).unsqueeze(-1)

        return UnitWindow(blocks=blocks, values=x, assemble=assemble,
                          grads=seen.grads[layer][row, :length].float().unsqueeze(-1),
                          unit_values=seen.outputs[layer][row, :length].float())

    def write_gram(self, adapter: ArchitectureAdapter, layer: int) -> torch.Tensor:
        columns = weight_by_input(adapter.neuron_module(layer)).detach().double().cpu()
        return columns.pow(2).sum(-1).reshape(-1, 1, 1)

    def matrices(self, model: nn.Module, adapter: ArchitectureAdapter, input_ids: torch.Tensor,
                 layer: int, units: Sequence[int], memory_budget_bytes: int) -> torch.Tensor:
        return layer_hidden_attention(model, adapter, input_ids, layer, units, memory_budget_bytes)
