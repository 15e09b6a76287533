"""What an attention unit is, per model kind (the registry is :mod:`neuronbench.attention.kinds`).

* SSMs (Mamba): a unit is channel ``d`` of a layer — the neuron of the same index — with its
  hidden attention ``α^{(d)}`` (:mod:`neuronbench.attention.channels`).
* Transformers: a unit is an attention head, with its real attention probabilities
  (:mod:`neuronbench.attention.heads`).

Both give, for one window of one layer, a :class:`UnitWindow`: the attention as blocks that cover
every (unit, query) pair once, the units' attention-mixed outputs and the gradient of the LM loss
with respect to those outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.attention.forward import UnitPass
from neuronbench.attention.hidden import AttentionBlock


@dataclass
class UnitWindow:
    """One window (``length`` real tokens) of one layer, seen through its attention units.

    ``blocks`` stream the attention ``[units, queries, keys]``. ``values`` (Mamba: the scan input
    ``x [T, U]``) are what the blocks mix: ``m_i = Σ_j α_ij x_j``; heads need no mixing
    (``values`` is ``None``, the model exposes the mixed output). ``assemble(m)`` turns the mixed
    output (``None`` for heads) into the unit's vector ``u_i`` ``[T, U, k]`` that its write matrix
    ``W_u`` ``[k, d_model]`` maps into the residual stream (channel: ``k = 1``,
    ``u_i = (m_i + D x_i) ⊙ silu(z_i)``; head: ``k = d_h``, ``u_i = Σ_j p_ij v_j``).
    ``grads`` is ``∂L/∂u`` ``[T, U, k]``; ``unit_values`` the tensor an ablation replaces
    (``[T, U]`` or ``[T, U, d_h]``).
    """

    blocks: Iterator[AttentionBlock]
    values: torch.Tensor | None
    assemble: Callable[[torch.Tensor | None], torch.Tensor]
    grads: torch.Tensor
    unit_values: torch.Tensor


class AttentionUnits(Protocol):
    """One model kind's attention units."""

    name: str
    """``"channel"`` or ``"head"``."""
    kinds: tuple[str, ...]
    """Named activations (:mod:`neuronbench.names`) a :func:`unit_pass` must capture."""

    def count(self, adapter: ArchitectureAdapter, layer: int) -> int:
        """Number of units in ``layer``."""

    def window(self, adapter: ArchitectureAdapter, layer: int, seen: UnitPass, row: int, length: int,
               memory_budget_bytes: int) -> UnitWindow:
        """Window ``row`` (its first ``length`` positions are the real tokens) of ``layer``."""

    def write_gram(self, adapter: ArchitectureAdapter, layer: int) -> torch.Tensor:
        """``G_u = W_u W_uᵀ`` ``[U, k, k]`` (float64) of each unit's write matrix ``W_u`` into the
        residual stream, so that ``‖u_i W_u‖ = sqrt(u_i G_u u_iᵀ)``."""

    def matrices(self, model: nn.Module, adapter: ArchitectureAdapter, input_ids: torch.Tensor,
                 layer: int, units: Sequence[int], memory_budget_bytes: int) -> torch.Tensor:
        """The attention ``[len(units), T, T]`` of ``units`` on one sequence ``input_ids [T]``."""
