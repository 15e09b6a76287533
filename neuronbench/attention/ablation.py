"""Ablating attention units through the adapter's ``register_head_edit``.

A Mamba channel is ablated as the neuron of the same index (its whole neuron
``(y + D⊙x) ⊙ silu(z)``); a transformer head as its output ``[d_h]`` before the attention output
projection. The hooks, modes and validation are :func:`neuronbench.ablation.hooks.ablated` with
``unit="head"``; this module only turns attention units into the unit set it takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from neuronbench.ablation.hooks import ablated
from neuronbench.ablation.neurons import NeuronSet, NeuronSetLike, neuron_set
from neuronbench.adapters import ArchitectureAdapter
from neuronbench.attention.scores import AttentionUnit, AttentionUnitScores
from neuronbench.capture import ActivationStatistics

MAX_ABLATED_SHARE = 0.5
"""The ``attention`` ablation condition removes at most this share of a layer's attention units.
Its random control draws the same number of units of the same layer, so a condition that removed
every unit of every layer (top-10 heads of a 4-head model) would be its own control: no contrast,
``z`` undefined."""


def unit_set(units: Iterable[AttentionUnit] | NeuronSetLike) -> NeuronSet:
    """``{layer: indices}`` of attention units (e.g. :meth:`AttentionUnitScores.top_k`)."""
    if isinstance(units, Mapping):
        return neuron_set(units)
    grouped: dict[int, list[int]] = {}
    for unit in units:
        grouped.setdefault(unit.layer, []).append(unit.index)
    return neuron_set(grouped)


def units_to_ablate(scores: AttentionUnitScores, method: str, k: int, scope: str = "layer",
                    share: float = MAX_ABLATED_SHARE) -> NeuronSet:
    """The best units under ``method`` (:meth:`AttentionUnitScores.top_k` with ``k`` and ``scope``),
    keeping in each layer of ``U`` units only the ``max(1, floor(share·U))`` best of them."""
    kept: dict[int, list[int]] = {}
    for unit in scores.top_k(method, k, scope):
        width = scores.layers[unit.layer]["distance"].shape[0]
        chosen = kept.setdefault(unit.layer, [])
        if len(chosen) < max(1, int(share * width)):
            chosen.append(unit.index)
    return neuron_set(kept)


@contextmanager
def ablated_attention_units(adapter: ArchitectureAdapter, units: Iterable[AttentionUnit] | NeuronSetLike,
                            mode: str = "zero",
                            stats: ActivationStatistics | None = None) -> Iterator[NeuronSet]:
    """Within the ``with`` block the attention ``units`` are ablated (``mode`` ``"zero"``, or
    ``"mean"`` for Mamba channels with the analysis split's ``stats``); hooks removed on exit."""
    with ablated(adapter, unit_set(units), mode=mode, unit="head", stats=stats) as normal:
        yield normal
