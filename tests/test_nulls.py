"""Null calibration on synthetic streams with no signal at several sample sizes: each detector's
null count matches the false positives it actually finds there (within 3 stated standard
deviations); a sample below a detector's documented minimum is an error naming the minimum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuronbench.capture import CaptureConfig, NeuronLayout, StatisticsCollector
from neuronbench.data import TokenWindows
from neuronbench.detectors import (detect_dead, detect_delta_sensitive, detect_positional, detect_positional_pearson,
                                   detect_rarely_active, detect_token_detecting, detect_trigram,
                                   input_change_sensitivity)
from neuronbench.detectors.dead import false_rare_probability, min_dead_tokens, min_rare_tokens
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
    assert found.null.null_count > 2
    assert_matches(found, found.indices.size)


@pytest.mark.parametrize("n_tokens", [200, 300])
def test_rare_null_matches_common_neurons_that_look_rare(n_tokens):
    """Neurons active on ρ₁ = 2ρ of the tokens, just above the minimum sample."""
    generator = np.random.default_rng(n_tokens)
    found = detect_rarely_active(capture(bernoulli(generator, (n_tokens, 1, 4000), 0.1), positional=False))[0]
    assert found.null.null_count == pytest.approx(4000 * false_rare_probability(n_tokens, 0.05, 0.1))
    assert found.null.null_count > 2
    assert_matches(found, found.indices.size)


def test_rare_detector_finds_planted_rare_neurons_with_a_negligible_null():
    generator = np.random.default_rng(1)
    rates = np.r_[np.full(10, 0.01), np.zeros(5), np.full(300, 0.1), generator.uniform(0.2, 0.9, 300)]
    found = detect_rarely_active(capture(bernoulli(generator, (2000, 1, rates.size), rates), positional=False))[0]
    assert found.indices.tolist() == list(range(10))
    assert found.null.null_count < 1e-3 and found.null.warning is None


def zipf_ids(generator, n_windows: int, length: int, vocab: int) -> np.ndarray:
    weights = 1 / np.arange(1, vocab + 1)
    return generator.choice(vocab, size=(n_windows, length), p=weights / weights.sum())


def trigram_stats(acts: np.ndarray, ids: np.ndarray, vocab: int) -> object:
    return capture(acts, ids, vocab, positional=False, token_counts=True, trigrams=True, trigram_neurons="all")


@pytest.mark.parametrize("n_tokens", [1000, 3000])
def test_trigram_null_matches_chance_trigram_detectors(n_tokens):
    """Neurons firing at random, rare ones included, on a Zipfian token stream."""
    generator = np.random.default_rng(n_tokens)
    ids = zipf_ids(generator, n_tokens // 20, 20, 300)
    rates = np.exp(generator.uniform(np.log(2 / n_tokens), np.log(0.2), size=400))
    found = detect_trigram(trigram_stats(bernoulli(generator, (ids.shape[0], 20, 400), rates), ids, 300))[0]
    assert found.null.null_count > 5 and found.null.warning is not None
    assert_matches(found, found.indices.size)


def test_trigram_detector_finds_planted_frequent_trigrams_with_a_negligible_null():
    """Two neurons fire exactly at the end of a planted trigram (≈100 occurrences each), 200 at
    random rates ≥ 5%: the planted ones are found, and no null neuron has their activation counts."""
    generator = np.random.default_rng(2)
    ids = zipf_ids(generator, 150, 20, 300)
    planted = ((7, 8, 9), (11, 12, 13))
    for trigram in planted:
        for window in generator.choice(150, size=100, replace=False):
            start = generator.integers(0, 17)
            ids[window, start:start + 3] = trigram
    acts = bernoulli(generator, (150, 20, 202), generator.uniform(0.05, 0.5, size=202))
    for column, (a, b, c) in enumerate(planted):
        end = np.zeros(ids.shape, dtype=bool)
        end[:, 2:] = (ids[:, :-2] == a) & (ids[:, 1:-1] == b) & (ids[:, 2:] == c)
        acts[:, :, column] = np.where(end, 1.0, -1.0)
    found = detect_trigram(trigram_stats(acts, ids, 300))[0]
    assert found.indices.tolist() == [0, 1]
    assert found.null.null_count < 0.1 and found.null.warning is None


class NoisyLookup(torch.nn.Module):
    """A one-layer "model": ``a_j(t) = 1 + 0.1·ε_{t,j} + s_j · table[x_t, j]``, with ``ε`` fresh standard
    normal noise on every forward pass (seeded) and a fixed standard normal ``table``. Neurons with
    ``s_j = 0`` do not read the input: they differ only by chance."""

    def __init__(self, reads: np.ndarray, vocab: int = 200):
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab, reads.size, generator=self.generator, dtype=torch.float64)
                                        * torch.from_numpy(reads), requires_grad=False)
        self.neurons = torch.nn.Identity()
        self.config = type("Config", (), {"vocab_size": vocab})()

    @property
    def base_model(self) -> NoisyLookup:
        """It has no head: its backbone is itself."""
        return self

    def forward(self, input_ids, attention_mask, use_cache):
        noise = torch.randn(*input_ids.shape, self.table.shape[1], generator=self.generator, dtype=torch.float64)
        return self.neurons(1 + 0.1 * noise + self.table[input_ids])


class NoisyLookupAdapter:
    num_layers = 1

    def __init__(self, model: NoisyLookup):
        self.model = model

    def neuron_width(self, layer: int) -> int:
        return self.model.table.shape[1]

    def register_capture(self, layer, kinds, sink):
        return [self.model.neurons.register_forward_hook(lambda _, __, out: sink(act_name(0, NEURONS), out))]


def lookup_sensitivity(reads: np.ndarray, n_samples: int, top_k: int, seed: int) -> object:
    """Input-change sensitivity of a :class:`NoisyLookup` over 64 random windows of 16 tokens."""
    model = NoisyLookup(reads)
    ids = torch.from_numpy(np.random.default_rng(seed).integers(0, 200, size=(64, 16)))
    windows = TokenWindows(input_ids=ids, attention_mask=torch.ones_like(ids), n_tokens=ids.numel())
    return input_change_sensitivity(model, NoisyLookupAdapter(model), windows, n_samples=n_samples, horizon=4,
                                    top_k=top_k, batch_size=64, seed=seed)[0]


@pytest.mark.parametrize("n_samples", [32, 128])
def test_input_change_null_says_the_top_k_of_a_uniform_layer_are_chance(n_samples):
    """Neurons that differ only by chance: every one of the top 10 is a false positive."""
    found = lookup_sensitivity(np.zeros(1000), n_samples, 10, n_samples)
    assert found.null.warning is not None
    assert_matches(found, 10)


def test_input_change_null_of_planted_sensitive_neurons_is_negligible():
    found = lookup_sensitivity(np.r_[np.full(10, 3.0), np.zeros(990)], 64, 10, 0)
    assert found.indices.tolist() == list(range(10))
    assert found.null.null_count < 0.01 and found.null.warning is None
    assert found.details["above_null"] == 10 and found.details["null_p"][:10].max() < 1e-3


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
    with pytest.raises(CaptureError, match=f"at least {min_rare_tokens()} analysed tokens"):
        detect_rarely_active(capture(bernoulli(generator, (182, 1, 10), 0.5)))
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
