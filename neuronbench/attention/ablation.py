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
from neuronbench.attention.scores import AttentionUnit
from neuronbench.capture import ActivationStatistics


def unit_set(units: Iterable[AttentionUnit] | NeuronSetLike) -> NeuronSet:
    """``{layer: indices}`` of attention units (e.g. :meth:`AttentionUnitScores.top_k`)."""
    if isinstance(units, Mapping):
        return neuron_set(units)
    grouped: dict[int, list[int]] = {}
    for unit in units:
        grouped.setdefault(unit.layer, []).append(unit.index)
    return neuron_set(grouped)


@contextmanager
def ablated_attention_units(adapter: ArchitectureAdapter, units: Iterable[AttentionUnit] | NeuronSetLike,
                            mode: str = "zero",
                            stats: ActivationStatistics | None = None) -> Iterator[NeuronSet]:
    """Within the ``with`` block the attention ``units`` are ablated (``mode`` ``"zero"``, or
    ``"mean"`` for Mamba channels with the analysis split's ``stats``); hooks removed on exit."""
    with ablated(adapter, unit_set(units), mode=mode, unit="head", stats=stats) as normal:
        yield normal
