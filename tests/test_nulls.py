"""Null calibration on synthetic streams with no signal at several sample sizes: each detector's
null count matches the false positives it actually finds there (within 3 stated standard
deviations); a sample below a detector's documented minimum is an error naming the minimum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuronbench.capture import CaptureConfig, NeuronLayout, StatisticsCollector
from neuronbench.detectors import (detect_dead, detect_delta_sensitive, detect_positional, detect_positional_pearson,
                                   detect_token_detecting)
from neuronbench.detectors.dead import min_dead_tokens
from neuronbench.detectors.null import calibrate, combine
from neuronbench.detectors.positional import (mi_null, min_mi_windows, min_pearson_windows,
                                              position_frequencies, positional_mutual_information)
from neuronbench.errors import CaptureError
from neuronbench.names import NEURONS, SSM_DELTA, act_name


def capture(acts: np.ndarray, ids: np.ndarray | None = None, vocab: int = 8, delta: np.ndarray | None = None,
            **config) -> object:
    """Feed ``acts [N, T, W]`` (one layer) through the real capture statistics, 64 windows a batch."""
    n, t, w = acts.shape
    ids = np.ones((n, t), dtype=np.int64) if ids is None else ids
    layout = NeuronLayout(num_layers=1, width=w, has_ssm=delta is not None)
    defaults = dict(token_counts=False, trigrams=False, batch_size=64, delta=delta is not None)
    collector = StatisticsCollector(layout, CaptureConfig(**{**defaults, **config}), t, vocab, torch.device("cpu"))
    for start in range(0, n, 64):
        part = slice(start, start + 64)
        tensors = {act_name(0, NEURONS): torch.from_numpy(acts[part])}
        if delta is not None:
            tensors[act_name(0, SSM_DELTA)] = torch.from_numpy(delta[part])
        batch = torch.from_numpy(ids[part])
        collector.feed(batch, torch.ones_like(batch), tensors)
    return collector.result()


def bernoulli(generator, shape, rates) -> np.ndarray:
    """Activations ±1 with ``P(a > 0) = rate`` per neuron (last axis), independent of everything."""
    return np.where(generator.random(shape) < rates, 1.0, -1.0).astype(np.float32)


def assert_matches(detection, observed: int) -> None:
    """Observed false positives within 3 stated standard deviations (+1 for a count near 0)."""
    null = detection.null
    assert abs(observed - null.null_count) <= 3 * null.null_std + 1, (observed, null)


@pytest.mark.parametrize("n_tokens", [4603, 6000, 9000])
def test_dead_null_matches_alive_neurons_that_look_dead(n_tokens):
    generator = np.random.default_rng(n_tokens)
    acts = bernoulli(generator, (n_tokens, 1, 2000), 1e-3)
    found = detect_dead(capture(acts, positional=False))[0]
    assert found.null.null_count == pytest.approx(2000 * (1 - 1e-3) ** n_tokens)
    assert_matches(found, found.indices.size)


@pytest.mark.parametrize("n_windows", [4, 8, 16])
def test_mi_null_matches_false_positives_below_the_minimum_sample(n_windows):
    """Where the plug-in bias makes most noise neurons "positional" (8 windows: the issue's 99%), the
    simulated null predicts how many; the detector itself refuses these samples."""
    generator = np.random.default_rng(n_windows)
    rates = generator.uniform(0.02, 0.98, size=600)
    stats = capture(bernoulli(generator, (n_windows, 32, 600), rates))
    fr_pos = position_frequencies(stats, 0)
    observed = int((positional_mutual_information(fr_pos) > 0.05).sum())
    p, _ = mi_null(n_windows, 32, 0.05).at(fr_pos.mean(axis=0))
    null = calibrate("test", p, observed)
    assert null.null_count > 5
    assert abs(observed - null.null_count) <= 3 * null.null_std + 1, (observed, null)


@pytest.mark.parametrize("n_windows", [20, 40])
def test_mi_detector_at_its_minimum_sample_finds_almost_no_noise(n_windows):
    generator = np.random.default_rng(n_windows)
    rates = generator.uniform(0.02, 0.98, size=600)
    found = detect_positional(capture(bernoulli(generator, (n_windows, 32, 600), rates)))[0]
    assert found.null.null_count < 2
    assert_matches(found, found.indices.size)
    assert abs(found.details["mi_corrected"].mean()) < 0.2 * found.scores.mean()  # the bias is removed


def test_mi_null_mean_is_the_miller_madow_bias_for_common_neurons():
    null = mi_null(400, 32, 0.05, draws=4000)
    _, bias = null.at(np.array([0.5]))
    assert bias[0] == pytest.approx(31 / (2 * 400 * 32), rel=0.05)


@pytest.mark.parametrize("n_windows, min_abs_r", [(13, 0.15), (41, 0.085)])
def test_pearson_null_matches_false_positives(n_windows, min_abs_r):
    generator = np.random.default_rng(n_windows)
    found = detect_positional_pearson(capture(generator.standard_normal((n_windows, 32, 5000)).astype(np.float32)),
                                      min_abs_r=min_abs_r)[0]
    assert found.null.null_count > 2
    assert_matches(found, found.indices.size)


@pytest.mark.parametrize("n_tokens, vocab", [(2000, 300), (8000, 3000)])
def test_token_null_matches_chance_token_detectors(n_tokens, vocab):
    """Neurons firing at random, rare ones included, on a Zipfian token stream with min_occurrences 1."""
    generator = np.random.default_rng(n_tokens)
    weights = 1 / np.arange(1, vocab + 1)
    ids = generator.choice(vocab, size=(n_tokens // 20, 20), p=weights / weights.sum())
    rates = np.exp(generator.uniform(np.log(0.5 / n_tokens), np.log(0.2), size=1500))
    stats = capture(bernoulli(generator, (ids.shape[0], 20, 1500), rates), ids, vocab, positional=False,
                    token_counts=True)
    found = detect_token_detecting(stats, min_occurrences=1)[0]
    assert found.null.null_count > 5
    assert_matches(found, found.indices.size)


def test_delta_null_says_the_top_k_of_a_uniform_layer_are_not_special():
    generator = np.random.default_rng(0)
    log_delta = generator.normal(-2.0, 0.5, size=(64, 16, 1000))
    log_delta[:, :, :10] *= 4  # ten channels with a 4× larger spread
    acts = generator.standard_normal((64, 16, 1000)).astype(np.float32)
    stats = capture(acts, delta=np.exp(log_delta).astype(np.float32), positional=False)
    planted = detect_delta_sensitive(stats, top_k=10)[0]
    assert planted.indices.tolist() == list(range(10)) and planted.null.null_count < 0.01
    uniform = detect_delta_sensitive(stats, top_k=20)[0]  # the cutoff falls among chance channels
    assert uniform.null.null_count > 5 and uniform.null.warning is not None


def test_too_small_samples_are_errors_naming_the_minimum():
    generator = np.random.default_rng(0)
    few = capture(bernoulli(generator, (8, 32, 10), 0.5))
    with pytest.raises(CaptureError, match=f"at least {min_dead_tokens()} analysed tokens"):
        detect_dead(few)
    with pytest.raises(CaptureError, match=f"at least {min_mi_windows(32, 0.05)} full-length windows"):
        detect_positional(few)
    assert min_mi_windows(32, 0.05) == 20 and min_mi_windows(128, 0.05) == 20
    with pytest.raises(CaptureError, match=f"at least {min_pearson_windows(32, 0.3)} full-length windows"):
        detect_positional_pearson(capture(bernoulli(generator, (1, 32, 10), 0.5)), min_abs_r=0.3)


def test_calibration_arithmetic_and_warning():
    calibration = calibrate("test", np.full(100, 0.1), found=12, warn_fraction=0.1)
    assert calibration.null_count == pytest.approx(10)
    assert calibration.null_std == pytest.approx(math.sqrt(100 * 0.1 * 0.9))
    assert calibration.expected_false_positives == pytest.approx(10 * 88 / 90)
    assert "expected false positives" in calibration.warning
    quiet = calibrate("test", np.full(100, 0.001), found=50)
    assert quiet.warning is None and quiet.expected_false_positives == pytest.approx(0.1 * 50 / 99.9)
    total = combine([calibration, quiet])
    assert total.found == 62 and total.null_count == pytest.approx(10.1)
    assert calibrate("test", np.zeros(5), found=0).warning is None
