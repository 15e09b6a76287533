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

from collections.abc import Iterator, Sequence
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

    ``blocks`` stream the attention ``[units, queries, keys]``. The attention-mixed output
    ``o [T, U, k]`` is ``outputs`` when the model exposes it (heads, ``k = d_h``), otherwise it is
    ``Σ_j α_ij values_j`` mixed from the blocks (Mamba, ``values = x [T, U]``, ``k = 1``).
    ``grads`` is ``∂L/∂o`` ``[T, U, k]``; ``unit_values`` the tensor an ablation replaces
    (``[T, U]`` or ``[T, U, d_h]``).
    """

    blocks: Iterator[AttentionBlock]
    values: torch.Tensor | None
    outputs: torch.Tensor | None
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

    def matrices(self, model: nn.Module, adapter: ArchitectureAdapter, input_ids: torch.Tensor,
                 layer: int, units: Sequence[int], memory_budget_bytes: int) -> torch.Tensor:
        """The attention ``[len(units), T, T]`` of ``units`` on one sequence ``input_ids [T]``."""
