"""Neuron sets: ``{layer: sorted unique indices}`` in a layer's unit index space.

A *unit* is what an ablation removes: ``"neuron"`` (one coordinate of the input of a block's
output projection, :mod:`neuronbench.names` ``NEURONS``) or ``"head"`` (one attention head of a
transformer; for Mamba, whose attention units are channels, a head is the neuron of the same
index). Layers with no index are dropped, so two sets are equal exactly when they hold the same
``(layer, index)`` pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

NeuronSet = dict[int, tuple[int, ...]]
"""``{layer: sorted unique indices}``; no empty layer."""

NeuronSetLike = Mapping[int, Iterable[int]]


def neuron_set(neurons: NeuronSetLike) -> NeuronSet:
    """Normalise a mapping ``layer -> indices``: ints, sorted, unique, empty layers dropped."""
    normal = {int(layer): tuple(sorted({int(i) for i in indices})) for layer, indices in neurons.items()}
    return {layer: normal[layer] for layer in sorted(normal) if normal[layer]}


def union(*sets: NeuronSetLike) -> NeuronSet:
    """The union of neuron sets, layer by layer."""
    merged: dict[int, set[int]] = {}
    for neurons in sets:
        for layer, indices in neurons.items():
            merged.setdefault(int(layer), set()).update(int(i) for i in indices)
    return neuron_set(merged)


def counts(neurons: NeuronSetLike) -> dict[int, int]:
    """Number of units per layer (empty layers left out)."""
    return {layer: len(indices) for layer, indices in neuron_set(neurons).items()}


def size(neurons: NeuronSetLike) -> int:
    """Total number of units."""
    return sum(counts(neurons).values())


def pairs(neurons: NeuronSetLike) -> frozenset[tuple[int, int]]:
    """The set as ``frozenset{(layer, index)}`` (a cache key)."""
    return frozenset((layer, i) for layer, indices in neuron_set(neurons).items() for i in indices)
