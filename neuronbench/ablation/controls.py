"""Random controls: the same number of units per layer, drawn at random, and the z-score of a
condition against them.

Drawing (:func:`random_control`): for seed ``s`` one ``numpy.random.Generator(PCG64(s))``
(``np.random.default_rng(s)``) visits the layers in ascending order and, for a layer of width
``W`` where the condition ablates ``k`` units, draws ``rng.choice(W, size=k, replace=False)``:
``k`` distinct units uniformly from all ``W`` (the condition's own units included). A control
depends only on the seed, the per-layer counts and the widths, so it is the same in every run,
and conditions of equal per-layer size share their controls (evaluated once).

Summary (:func:`summarize_controls`) over the controls' perplexities ``p_1..p_n``::

    mean = (1/n) Σ p_s,    std = sqrt( Σ (p_s − mean)² / (n − 1) )     (ddof = 1, n >= 2)
    z    = (ppl_condition − mean) / std

with IEEE semantics when ``std = 0`` (every control gave the same perplexity): ``z = ±inf`` if
the condition differs from the controls' mean, ``nan`` if it equals it. ``z`` is never replaced
by 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import statistics

import numpy as np

from neuronbench.ablation.neurons import NeuronSet, NeuronSetLike, counts
from neuronbench.errors import ConfigError

DEFAULT_SEEDS = 5
MIN_SEEDS = 2


def resolve_seeds(seeds: int | Sequence[int] = DEFAULT_SEEDS) -> tuple[int, ...]:
    """``n`` -> seeds ``0..n-1``; a sequence -> its distinct non-negative seeds, in order.

    At least :data:`MIN_SEEDS` are needed for a standard deviation with ddof=1.
    """
    if isinstance(seeds, bool):
        raise ConfigError(f"seeds must be a count or a list of seeds, got {seeds!r}")
    chosen = tuple(range(seeds)) if isinstance(seeds, int) else tuple(dict.fromkeys(int(s) for s in seeds))
    if len(chosen) < MIN_SEEDS or any(s < 0 for s in chosen):
        raise ConfigError(f"random controls need at least {MIN_SEEDS} distinct non-negative seeds "
                          f"(the standard deviation uses ddof=1); got {seeds!r}")
    return chosen


def random_control(neurons: NeuronSetLike, widths: Mapping[int, int], seed: int) -> NeuronSet:
    """Units drawn uniformly without replacement, as many per layer as ``neurons`` holds."""
    rng = np.random.default_rng(seed)
    control: NeuronSet = {}
    for layer, k in sorted(counts(neurons).items()):
        drawn = rng.choice(widths[layer], size=k, replace=False)
        control[layer] = tuple(sorted(int(i) for i in drawn))
    return control


def z_score(value: float, mean: float, std: float) -> float:
    """``(value − mean) / std``; ``±inf`` or ``nan`` when ``std == 0`` (module docstring)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(value - mean) / np.float64(std))


@dataclass(frozen=True)
class ControlSummary:
    """Perplexities of the random controls, one per seed, and the condition's z-score."""

    seeds: tuple[int, ...]
    ppls: tuple[float, ...]
    mean: float
    std: float
    z: float


def summarize_controls(ppl: float, seeds: Sequence[int], ppls: Sequence[float]) -> ControlSummary:
    """Mean, std (ddof=1) and z of a condition's perplexity ``ppl`` against its controls.

    Computed with :mod:`statistics` (exact rational arithmetic), so identical control values give
    exactly ``std = 0`` and their own value as the mean, never a rounding-noise z-score."""
    values = tuple(float(v) for v in ppls)
    mean, std = statistics.fmean(values), statistics.stdev(values)
    if len(set(values)) == 1:
        mean = values[0]
    return ControlSummary(tuple(seeds), values, mean, std, z_score(ppl, mean, std))
