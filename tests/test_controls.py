"""Matched random controls: alive neurons outside the condition, with its activation-frequency
distribution (quantile bins per layer); which conditions get them; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from neuronbench.ablation.controls import (FREQUENCY_BINS, draw_control, draw_rule, matched_control,
                                           random_control)
from neuronbench.capture import ActivationStatistics
from neuronbench.config import RunConfig
from neuronbench.errors import ConfigError

FREQ = np.concatenate([np.zeros(10), np.linspace(0.001, 0.5, 190)])
"""Ten dead neurons (0..9), then 190 alive ones in increasing frequency."""


def bin_of(freq: np.ndarray, pool: np.ndarray, j: int) -> int:
    edges = np.quantile(freq[pool], np.linspace(0, 1, FREQUENCY_BINS + 1))
    return int(np.searchsorted(edges[1:-1], freq[j], side="right"))


def test_matched_control_keeps_the_frequency_distribution_and_avoids_dead_and_own_units():
    condition = {0: [150, 160, 170, 180, 190, 199]}
    pool = FREQ > 0
    pool[condition[0]] = False
    for seed in range(5):
        drawn = matched_control(condition, {0: FREQ}, seed)[0]
        assert len(drawn) == 6 and not set(drawn) & set(condition[0]) and all(FREQ[j] > 0 for j in drawn)
        assert sorted(bin_of(FREQ, pool, j) for j in drawn) == sorted(bin_of(FREQ, pool, j) for j in condition[0])
    assert matched_control(condition, {0: FREQ}, 3) == matched_control(condition, {0: FREQ}, 3)
    assert matched_control(condition, {0: FREQ}, 3) != matched_control(condition, {0: FREQ}, 4)


def test_a_dead_set_is_matched_with_the_rarest_alive_neurons():
    drawn = matched_control({0: list(range(10))}, {0: FREQ}, 0)[0]
    assert all(10 <= j < 10 + 2 * 19 for j in drawn)  # the two lowest bins of 19 alive neurons each
    uniform = random_control({0: list(range(10))}, {0: 200}, 0)[0]
    assert len(uniform) == 10


def test_draw_rules_per_condition_and_bad_input():
    assert draw_rule("dead", "neuron") == draw_rule("token", "neuron") == "matched"
    assert draw_rule("dead+positional", "neuron") == draw_rule("positional", "neuron") == "matched"
    assert draw_rule("pruning", "neuron") == draw_rule("attention", "head") == "uniform"
    assert draw_rule("dead", "neuron", "uniform") == "uniform"
    with pytest.raises(ConfigError, match=r"--control 'random' .* \['matched', 'uniform'\]"):
        draw_rule("dead", "neuron", "random")
    with pytest.raises(ConfigError, match="--control"):
        RunConfig(control="random")
    with pytest.raises(ConfigError, match="needs 180 alive neurons outside the condition, the layer has 10"):
        matched_control({0: list(range(20, 200))}, {0: FREQ}, 0)
    with pytest.raises(ConfigError, match="activation statistics"):
        draw_control("matched", {0: [1]}, {0: 200}, 0, None)


def test_draw_control_reads_the_frequencies_of_the_statistics():
    stats = ActivationStatistics(layers={2: {"active_count": (FREQ * 1000).round()}}, n_tokens=1000, n_windows=0,
                                 window=4, threshold=0.0, activation="positive", sweep=(), token_ids=None,
                                 token_occurrences=None, excluded_token_ids=())
    drawn = draw_control("matched", {2: [0, 1]}, {2: 200}, 0, stats)
    assert all(stats.freq(2)[j] > 0 for j in drawn[2])
