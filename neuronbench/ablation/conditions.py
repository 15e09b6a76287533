"""Ablation conditions: which units to remove, and how.

The conditions of a run (:func:`standard_conditions`), for each mode: every neuron type the
caller found (dead, positional, token-detecting, Δ-sensitive, attention, …), the union
``dead ∪ positional`` when both exist, and a pruning strategy (:func:`pruning_set`). The baseline
(nothing ablated) is measured by the runner itself.

Pruning priority
----------------
At ratio ``r ∈ (0, 1)`` each analysed layer of width ``W`` loses ``k = floor(r·W + 0.5)`` neurons,
taken in this order:

1. dead neurons (the caller's dead set),
2. then positional neurons (the caller's positional set),
3. then every other neuron,

and within each group by ascending ``RMS_j = sqrt(Σ a_j² / n_tokens)`` on the analysis split,
ties by ascending index. RMS stands in for mean ``|a_j|``, which the one-pass capture does not
stream; ``RMS_j >= mean|a_j|``, and both are 0 exactly for a neuron that is always 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from neuronbench.ablation.hooks import UNITS, resolve_unit
from neuronbench.ablation.neurons import NeuronSet, NeuronSetLike, neuron_set, pairs, union
from neuronbench.adapters import ArchitectureAdapter
from neuronbench.capture import ActivationStatistics
from neuronbench.errors import ConfigError

UNION_NAME = "dead+positional"
UNION_OF = ("dead", "positional")
PRUNING_NAME = "pruning"


@dataclass(frozen=True)
class Condition:
    """One ablation: ``name``, the units (``{layer: indices}``), ``mode`` (``"zero"`` or
    ``"mean"``) and ``unit`` (``"neuron"`` or ``"head"``)."""

    name: str
    neurons: NeuronSet = field(hash=False)
    mode: str = "zero"
    unit: str = "neuron"

    def __post_init__(self) -> None:
        object.__setattr__(self, "neurons", neuron_set(self.neurons))

    def key(self) -> tuple[str, str, frozenset[tuple[int, int]]]:
        """``(mode, unit, {(layer, index)})``: two conditions with equal keys are one evaluation."""
        return self.mode, self.unit, pairs(self.neurons)


def rms(stats: ActivationStatistics, layer: int) -> np.ndarray:
    """``sqrt(Σ a² / n_tokens)`` per neuron of ``layer``."""
    return np.sqrt(stats.layer(layer)["sum_sq"] / stats.n_tokens)


def check_ratio(ratio: float) -> float:
    """``ratio`` if ``0 < ratio < 1``, else ``ConfigError``."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ConfigError(f"pruning ratio {ratio!r} is out of range: it must lie strictly between 0 and 1")
    return float(ratio)


def pruning_order(stats: ActivationStatistics, layer: int, dead: Iterable[int] = (),
                  positional: Iterable[int] = ()) -> np.ndarray:
    """Neuron indices of ``layer`` in pruning priority (module docstring), first = pruned first."""
    score = rms(stats, layer)
    group = np.full(score.shape[0], 2)
    group[list(positional)] = 1
    group[list(dead)] = 0
    index = np.arange(score.shape[0])
    return np.lexsort((index, score, group))


def pruning_set(stats: ActivationStatistics, ratio: float, dead: NeuronSetLike | None = None,
                positional: NeuronSetLike | None = None,
                layers: Sequence[int] | None = None) -> NeuronSet:
    """The first ``floor(ratio·W + 0.5)`` neurons of :func:`pruning_order` in each layer
    (default: every layer of ``stats``)."""
    ratio = check_ratio(ratio)
    dead, positional = neuron_set(dead or {}), neuron_set(positional or {})
    chosen: dict[int, Iterable[int]] = {}
    for layer in sorted(stats.layers) if layers is None else layers:
        order = pruning_order(stats, layer, dead.get(layer, ()), positional.get(layer, ()))
        k = math.floor(ratio * order.shape[0] + 0.5)
        chosen[layer] = order[:k].tolist()
    return neuron_set(chosen)


def standard_conditions(neuron_types: Mapping[str, NeuronSetLike], modes: Sequence[str] = ("zero",),
                        units: Mapping[str, str] | None = None,
                        pruning: NeuronSetLike | None = None,
                        adapter: ArchitectureAdapter | None = None) -> list[Condition]:
    """For each mode: every neuron type (in the given order), ``dead+positional`` when both are
    given (as neuron units), and ``pruning`` when a pruning set is given.

    ``units`` maps a type name to its unit (default ``"neuron"``; e.g. ``{"attention": "head"}``).
    Units without streamed means get no ``"mean"`` condition: the capture statistics hold no
    per-head mean of a transformer head to ablate to. With ``adapter`` the units are resolved
    for that model (Mamba's heads are its channels, which have means); without it a ``"head"``
    is taken to be a transformer head.
    """
    units = dict(units or {})
    conditions = []
    for mode in modes:
        for name, neurons in neuron_types.items():
            unit = units.get(name, "neuron")
            if unit not in UNITS:
                raise ConfigError(f"neuron type {name!r}: unknown unit {unit!r}; choose one of {sorted(UNITS)}")
            resolved = UNITS[unit] if adapter is None else resolve_unit(adapter, unit)
            if mode == "mean" and not resolved.has_means:
                continue  # documented above: no mean to ablate a transformer head to
            conditions.append(Condition(name, neurons, mode, unit))
        if all(name in neuron_types and units.get(name, "neuron") == "neuron" for name in UNION_OF):
            conditions.append(Condition(UNION_NAME, union(*(neuron_types[n] for n in UNION_OF)), mode))
        if pruning is not None:
            conditions.append(Condition(PRUNING_NAME, pruning, mode))
    return conditions
