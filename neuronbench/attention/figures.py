"""Figure data of the attention-neuron analysis (data only; plotting lives with the figures).

* attention heatmaps: the attention of a few units in a few layers on one sequence;
* score distributions, activation vs importance (``attention_weighted`` vs ``gradient_guided``)
  and distance vs entropy: the columns of :meth:`AttentionUnitScores.to_frame`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.attention.hidden import DEFAULT_MEMORY_BUDGET
from neuronbench.attention.kinds import attention_units
from neuronbench.attention.scores import AttentionUnitScores, row_normalized
from neuronbench.errors import ConfigError


@dataclass
class AttentionFigureData:
    """``heatmaps[(layer, unit)]`` ``[T, T]`` and the per-unit ``scores`` frame."""

    heatmaps: dict[tuple[int, int], np.ndarray]
    scores: pd.DataFrame
    normalized: bool


def attention_heatmaps(model: nn.Module, adapter: ArchitectureAdapter, input_ids: torch.Tensor,
                       units: Mapping[int, Sequence[int]], normalized: bool = True,
                       memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET) -> dict[tuple[int, int], np.ndarray]:
    """The attention ``[T, T]`` of each ``(layer, unit)`` in ``units`` on one sequence
    ``input_ids [T]``: Mamba hidden attention ``α`` or head probabilities, row-normalised
    magnitudes ``α̂`` when ``normalized``."""
    kind = attention_units(adapter)
    maps = {}
    for layer, indices in units.items():
        matrices = kind.matrices(model, adapter, input_ids, layer, list(indices), memory_budget_bytes)
        if normalized:
            matrices = row_normalized(matrices)[0]
        maps.update({(layer, int(unit)): matrix.cpu().numpy() for unit, matrix in zip(indices, matrices)})
    return maps


def spread_layers(layers: Sequence[int], count: int) -> list[int]:
    """``count`` layers evenly spread over ``layers`` (first and last included)."""
    ordered = sorted(layers)
    if count >= len(ordered):
        return ordered
    picks = np.linspace(0, len(ordered) - 1, count).round().astype(int)
    return sorted({ordered[i] for i in picks})


def attention_figure_data(model: nn.Module, adapter: ArchitectureAdapter, scores: AttentionUnitScores,
                          input_ids: torch.Tensor, n_layers: int = 3, n_units: int = 4,
                          method: str = "attention_weighted", normalized: bool = True,
                          memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET) -> AttentionFigureData:
    """Heatmaps of the ``n_units`` top units under ``method`` in ``n_layers`` layers spread over
    the analysed ones, on ``input_ids [T]``, with the scores frame."""
    if n_layers <= 0 or n_units <= 0:
        raise ConfigError(f"n_layers and n_units must be positive, got {n_layers} and {n_units}")
    chosen = {}
    for layer in spread_layers(list(scores.layers), n_layers):
        order = np.argsort(-scores.measure(method)[layer], kind="stable")
        chosen[layer] = [int(unit) for unit in order[:n_units]]
    heatmaps = attention_heatmaps(model, adapter, input_ids, chosen, normalized, memory_budget_bytes)
    return AttentionFigureData(heatmaps=heatmaps, scores=scores.to_frame(), normalized=normalized)
