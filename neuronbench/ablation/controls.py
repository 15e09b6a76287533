"""Random controls: the same number of units per layer, drawn at random, and the z-score of a
condition against them. Two draw rules (:data:`DRAW_RULES`, option ``--control``):

``uniform`` (:func:`random_control`): for seed ``s`` one ``numpy.random.Generator(PCG64(s))``
(``np.random.default_rng(s)``) visits the layers in ascending order and, for a layer of width
``W`` where the condition ablates ``k`` units, draws ``rng.choice(W, size=k, replace=False)``:
``k`` distinct units uniformly from all ``W`` (the condition's own units included). A control
depends only on the seed, the per-layer counts and the widths, so it is the same in every run,
and conditions of equal per-layer size share their controls (evaluated once).

``matched`` (:func:`matched_control`, the default for the ``dead``, ``positional``, ``token`` and
``dead+positional`` conditions of neurons, :func:`draw_rule`): drawn from the layer's *alive*
neurons (active at least once on the analysis split) outside the condition, with the condition's
activation-frequency distribution. Per layer, the pool's frequencies are cut into
:data:`FREQUENCY_BINS` = 10 quantile bins (``np.quantile`` of the pool's ``freq`` at ``0, 0.1, …,
1``); each condition neuron, in ascending index order, takes one unit drawn uniformly
(``rng.choice``, same seeding as ``uniform``, layers ascending) from the pool members of its own
bin not drawn yet (a neuron below the lowest edge, e.g. a dead one, belongs to the lowest bin);
when that bin is used up, from the nearest non-empty bin (lower first on a tie). A pool smaller
than the condition is a :class:`ConfigError`. A matched control depends on the condition's own
neurons, so only conditions with the same neurons share it. So a dead set is compared with the rarest alive
neurons, and a positional set with neurons that fire as often as its members, never with dead
units or with its own.

Summary (:func:`summarize_controls`) over the controls' perplexities ``p_1..p_n``::

    mean = (1/n) Σ p_s,    std = sqrt( Σ (p_s − mean)² / (n − 1) )     (ddof = 1, n >= 2)
    z    = (ppl_condition − mean) / std

with IEEE semantics when ``std = 0`` (every control gave the same perplexity): ``z = ±inf`` if
the condition differs from the controls' mean, ``nan`` if it equals it. ``z`` is never replaced
by 0.

No seeds (``--seeds 0``) means no random controls: each condition is evaluated alone, and its
summary has no perplexities, ``mean = std = z = nan`` and the rule ``none``
(:data:`NO_CONTROLS`). That is what a regression against committed baselines needs
(:mod:`results.baselines` compares each condition's own Δppl only), at a fraction of the passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import math
import statistics

import numpy as np

from neuronbench.ablation.neurons import NeuronSet, NeuronSetLike, counts, neuron_set
from neuronbench.capture import ActivationStatistics
from neuronbench.errors import ConfigError

DEFAULT_SEEDS = 5
MIN_SEEDS = 2
NO_CONTROLS = "none"
"""The draw rule recorded when a run has no random controls (no seeds)."""
FREQUENCY_BINS = 10
"""Quantile bins of activation frequency per layer for matched controls."""
MATCHED_CONDITIONS = ("dead", "positional", "token", "dead+positional")
"""Conditions whose controls are ``matched`` by default."""


def resolve_seeds(seeds: int | Sequence[int] = DEFAULT_SEEDS) -> tuple[int, ...]:
    """``n`` -> seeds ``0..n-1``; a sequence -> its distinct non-negative seeds, in order.

    At least :data:`MIN_SEEDS` are needed for a standard deviation with ddof=1; none (``0`` or an
    empty sequence) means no random controls.
    """
    if isinstance(seeds, bool):
        raise ConfigError(f"seeds must be a count or a list of seeds, got {seeds!r}")
    chosen = tuple(range(seeds)) if isinstance(seeds, int) else tuple(dict.fromkeys(int(s) for s in seeds))
    if 0 < len(chosen) < MIN_SEEDS or any(s < 0 for s in chosen) or (isinstance(seeds, int) and seeds < 0):
        raise ConfigError(f"random controls need at least {MIN_SEEDS} distinct non-negative seeds "
                          f"(the standard deviation uses ddof=1), or none; got {seeds!r}")
    return chosen


def random_control(neurons: NeuronSetLike, widths: Mapping[int, int], seed: int) -> NeuronSet:
    """Units drawn uniformly without replacement, as many per layer as ``neurons`` holds."""
    rng = np.random.default_rng(seed)
    control: NeuronSet = {}
    for layer, k in sorted(counts(neurons).items()):
        drawn = rng.choice(widths[layer], size=k, replace=False)
        control[layer] = tuple(sorted(int(i) for i in drawn))
    return control


def _bins(freq: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Quantile-bin index (0..FREQUENCY_BINS−1) of every neuron's frequency, edges from ``pool``."""
    edges = np.quantile(freq[pool], np.linspace(0, 1, FREQUENCY_BINS + 1))
    return np.searchsorted(edges[1:-1], freq, side="right")


def matched_control(neurons: NeuronSetLike, freq: Mapping[int, np.ndarray], seed: int) -> NeuronSet:
    """Alive neurons outside ``neurons`` with their frequency distribution (module docstring);
    ``freq[layer]`` is the layer's activation frequency on the analysis split."""
    rng = np.random.default_rng(seed)
    control: NeuronSet = {}
    for layer, chosen in sorted(neuron_set(neurons).items()):
        f = np.asarray(freq[layer])
        pool = f > 0
        pool[list(chosen)] = False
        if pool.sum() < len(chosen):
            raise ConfigError(f"layer {layer}: a matched control needs {len(chosen)} alive neurons outside the "
                              f"condition, the layer has {int(pool.sum())}; use --control uniform")
        bins = _bins(f, pool)
        free = {b: list(np.flatnonzero(pool & (bins == b))) for b in range(FREQUENCY_BINS)}
        drawn = []
        for neuron in sorted(chosen):
            target = int(bins[neuron])
            nearest = min((b for b in free if free[b]), key=lambda b: (abs(b - target), b))
            drawn.append(int(free[nearest].pop(int(rng.choice(len(free[nearest]))))))
        control[layer] = tuple(sorted(drawn))
    return control


def draw_rule(condition: str, unit: str, choice: str = "matched") -> str:
    """The draw rule of a condition's controls: ``choice`` (``--control``) for the conditions of
    :data:`MATCHED_CONDITIONS` on neurons, ``uniform`` for every other condition."""
    if choice not in DRAW_RULES:
        raise ConfigError(f"--control {choice!r} is not a draw rule; choose one of {list(DRAW_RULES)}")
    return choice if condition in MATCHED_CONDITIONS and unit == "neuron" else "uniform"


def draw_control(rule: str, neurons: NeuronSetLike, widths: Mapping[int, int], seed: int,
                 stats: ActivationStatistics | None) -> NeuronSet:
    """One control under ``rule`` (``matched`` needs the analysis statistics)."""
    if rule == "uniform":
        return random_control(neurons, widths, seed)
    if stats is None:
        raise ConfigError("matched controls need the analysis split's activation statistics (stats=...)")
    return matched_control(neurons, {layer: stats.freq(layer) for layer in counts(neurons)}, seed)


DRAW_RULES = ("matched", "uniform")
"""Draw rules of random controls (``--control``)."""


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
    rule: str = "uniform"


def summarize_controls(ppl: float, seeds: Sequence[int], ppls: Sequence[float], rule: str = "uniform") -> ControlSummary:
    """Mean, std (ddof=1) and z of a condition's perplexity ``ppl`` against its controls.

    Computed with :mod:`statistics` (exact rational arithmetic), so identical control values give
    exactly ``std = 0`` and their own value as the mean, never a rounding-noise z-score. No
    controls give ``nan`` for all three and the rule :data:`NO_CONTROLS`."""
    values = tuple(float(v) for v in ppls)
    if not values:
        return ControlSummary((), (), math.nan, math.nan, math.nan, NO_CONTROLS)
    mean, std = statistics.fmean(values), statistics.stdev(values)
    if len(set(values)) == 1:
        mean = values[0]
    return ControlSummary(tuple(seeds), values, mean, std, z_score(ppl, mean, std), rule)
