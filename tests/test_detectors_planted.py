"""Planted ground truth on synthetic activation streams fed through the real capture statistics.

Two layers of 24 neurons see a stream of 400 windows × 32 tokens (BOS = token 0 at position 0
of each window, excluded). Each neuron plays a role; every detector at its documented defaults
must find exactly the neurons planted for it (precision = recall = 1), and its scores must equal
the brute-force reference computed from the full tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronbench.capture import CaptureConfig, NeuronLayout, StatisticsCollector
from neuronbench.detectors import (
    DETECTORS,
    detect_dead,
    detect_delta_sensitive,
    detect_positional,
    detect_positional_pearson,
    detect_rarely_active,
    detect_token_detecting,
    detect_trigram,
    positional_type,
    trigram_candidates,
    type_overlaps,
)
from neuronbench.detectors import figures
from neuronbench.errors import AnalysisUnavailableError, CaptureError, ConfigError
from neuronbench.names import NEURONS, SSM_DELTA, act_name
from test_detectors_reference import (
    naive_freq,
    naive_log_delta_std,
    naive_mean_pearson,
    naive_mutual_information,
    naive_ngram_detection,
    naive_ngram_tables,
)

T, N_WINDOWS, VOCAB, WIDTH, BATCH = 32, 400, 64, 24, 16
BOS = 0
TRIGRAM_A, TRIGRAM_B, TRIGRAM_C = (20, 21, 22), (30, 31, 32), (40, 41, 42)
ROLES = ("dead", "noise", "step", "token_a", "noise", "oscillating", "many", "ramp", "trigram_a", "half_token",
         "dead_negative", "both_ends", "token_b", "rare", "trigram_bc", "noise", "noise", "noise", "noise", "noise",
         "noise", "noise", "noise", "noise")
LAYER_TOKENS = {0: {"token_a": {5}, "token_b": {6, 7}}, 1: {"token_a": {5}, "token_b": {8}}}
LAYER_SHIFT = {0: 0, 1: 7}
DELTA_VARYING = (4, 9, 17)


def make_tokens(generator: np.random.Generator) -> np.ndarray:
    """Tokens 5, 6, 7 at 8% and 8 at 10% each; the rest uniform; planted trigrams inserted."""
    weights = np.full(VOCAB, 1.0)
    weights[BOS] = 0
    rest = 1 - 0.34
    weights[[5, 6, 7, 8]] = 0
    weights *= rest / weights.sum()
    weights[[5, 6, 7]], weights[8] = 0.08, 0.10
    ids = generator.choice(VOCAB, size=(N_WINDOWS, T), p=weights)
    ids[:, 0] = BOS
    for trigram in (TRIGRAM_A, TRIGRAM_B, TRIGRAM_C):
        for window in generator.choice(N_WINDOWS, size=60, replace=False):
            start = generator.integers(1, T - 2)
            ids[window, start:start + 3] = trigram
    return ids


def ends_with(ids: np.ndarray, trigram: tuple[int, int, int]) -> np.ndarray:
    hit = np.zeros(ids.shape, dtype=bool)
    hit[:, 2:] = (ids[:, :-2] == trigram[0]) & (ids[:, 1:-1] == trigram[1]) & (ids[:, 2:] == trigram[2])
    return hit


def role_activations(role: str, ids: np.ndarray, layer: int, generator: np.random.Generator) -> np.ndarray:
    """``[N, T]`` activations of one planted role (active iff > 0)."""
    pos = np.broadcast_to(np.arange(T), ids.shape)
    on = lambda mask: np.where(mask, 1.0 + generator.random(ids.shape), -generator.random(ids.shape))  # noqa: E731
    tokens = LAYER_TOKENS[layer]
    return {
        "dead": lambda: np.zeros(ids.shape),
        "dead_negative": lambda: -0.5 - generator.random(ids.shape),
        "noise": lambda: generator.standard_normal(ids.shape),
        "step": lambda: on(pos < 8),
        "oscillating": lambda: on((pos // 4) % 2 == 0),
        "both_ends": lambda: on((pos < 4) | (pos >= T - 4)),
        "ramp": lambda: 1.0 + pos / T + 0.01 * generator.random(ids.shape),
        "token_a": lambda: on(np.isin(ids, list(tokens["token_a"]))),
        "token_b": lambda: on(np.isin(ids, list(tokens["token_b"]))),
        "many": lambda: on(np.isin(ids, np.arange(33, 63))),
        "half_token": lambda: on((ids == 8) & (generator.random(ids.shape) < 0.75)),
        "rare": lambda: on(generator.random(ids.shape) < 0.01),
        "trigram_a": lambda: on(ends_with(ids, TRIGRAM_A)),
        "trigram_bc": lambda: on(ends_with(ids, TRIGRAM_B) | ends_with(ids, TRIGRAM_C)),
    }[role]()


def column_of(layer: int) -> dict[str, list[int]]:
    columns: dict[str, list[int]] = {}
    for index, role in enumerate(ROLES):
        columns.setdefault(role, []).append((index + LAYER_SHIFT[layer]) % WIDTH)
    return columns


def planted(layer: int, *roles: str) -> set[int]:
    columns = column_of(layer)
    return {c for role in roles for c in columns[role]}


@pytest.fixture(scope="module")
def stream():
    generator = np.random.default_rng(0)
    ids = make_tokens(generator)
    acts = {}
    for layer in (0, 1):
        layer_acts = np.zeros((N_WINDOWS, T, WIDTH), dtype=np.float32)
        for index, role in enumerate(ROLES):
            layer_acts[:, :, (index + LAYER_SHIFT[layer]) % WIDTH] = role_activations(role, ids, layer, generator)
        acts[layer] = layer_acts
    log_delta = generator.normal(-2.0, 0.1, size=(N_WINDOWS, T, WIDTH))
    log_delta[:, :, list(DELTA_VARYING)] = generator.normal(-2.0, 1.0, size=(N_WINDOWS, T, len(DELTA_VARYING)))
    delta = np.exp(log_delta).astype(np.float32)
    mask = np.ones(ids.shape, dtype=np.int64)
    return ids, mask, acts, delta


def feed(stream, n_windows: int = N_WINDOWS, **config) -> object:
    """Feed the first ``n_windows`` windows of the stream to the capture statistics."""
    ids, mask, acts, delta = stream
    layout = NeuronLayout(num_layers=2, width=WIDTH, has_ssm=True)
    config = CaptureConfig(exclude_token_ids=frozenset({BOS}), batch_size=BATCH, **config)
    collector = StatisticsCollector(layout, config, T, VOCAB, torch.device("cpu"))
    for start in range(0, n_windows, BATCH):
        part = slice(start, start + BATCH)
        activations = {act_name(layer, NEURONS): torch.from_numpy(acts[layer][part]) for layer in (0, 1)}
        if config.delta is not False:
            activations.update({act_name(layer, SSM_DELTA): torch.from_numpy(delta[part]) for layer in (0, 1)})
        collector.feed(torch.from_numpy(ids[part]), torch.from_numpy(mask[part]), activations)
    return collector.result()


@pytest.fixture(scope="module")
def stats(stream):
    return feed(stream, trigram_neurons="all")


@pytest.fixture(scope="module")
def found(stats):
    return {name: detector(stats) for name, detector in DETECTORS.items() if name != "delta"} | {
        "delta": detect_delta_sensitive(stats, top_k=len(DELTA_VARYING))}


EXPECTED_ROLES = {
    "dead": ("dead", "dead_negative"),
    "rarely_active": ("rare", "trigram_a", "trigram_bc"),
    "positional": ("step", "oscillating", "both_ends"),
    "positional_pearson": ("step", "ramp"),
    "token": ("token_a", "token_b"),
    "trigram": ("trigram_a", "trigram_bc"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ROLES))
@pytest.mark.parametrize("layer", [0, 1])
def test_each_detector_finds_exactly_the_planted_neurons(found, name, layer):
    assert set(found[name][layer].indices.tolist()) == planted(layer, *EXPECTED_ROLES[name])


def test_delta_sensitive_channels_are_the_planted_ones(found):
    for layer in (0, 1):
        assert found["delta"][layer].indices.tolist() == list(DELTA_VARYING)
        assert found["delta"][layer].method == "delta_log_std"


def test_positional_types(found):
    for layer in (0, 1):
        columns = column_of(layer)
        details = found["positional"][layer].details
        assert details["types"] == {columns["step"][0]: "one extreme", columns["oscillating"][0]: "oscillatory",
                                    columns["both_ends"][0]: "both extremes"}
        assert set(details["strength"].values()) == {"strong"}  # every planted profile runs from 0 to 1


POSITION = np.arange(64)
HAND_MADE = {
    "1→0 step": (np.where(POSITION < 20, 1.0, 0.0), ("one extreme", "strong")),
    "0→1 step": (np.where(POSITION < 40, 0.02, 0.97), ("one extreme", "strong")),
    "0.6→0.4 step": (np.where(POSITION < 20, 0.6, 0.4), ("one extreme", "weak")),
    "0.3–0.5 ramp": (0.3 + 0.2 * POSITION / 63, ("gradual", "weak")),
    "1→0 ramp": (1 - POSITION / 63, ("gradual", "strong")),
    "0/1 square wave": (((POSITION // 8) % 2).astype(float), ("oscillatory", "strong")),
    "0.45/0.55 wave": (0.45 + 0.1 * ((POSITION // 8) % 2), ("oscillatory", "weak")),
    "both ends": (np.where((POSITION < 6) | (POSITION >= 58), 1.0, 0.0), ("both extremes", "strong")),
    "both ends, weak": (np.where((POSITION < 6) | (POSITION >= 58), 0.7, 0.2), ("both extremes", "weak")),
    "middle bump": (np.where((POSITION > 20) & (POSITION < 40), 1.0, 0.0), ("other", "strong")),
    "flat": (np.full(64, 0.5), ("other", "weak")),
}


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_positional_type_of_hand_made_profiles(name):
    profile, expected = HAND_MADE[name]
    assert positional_type(profile) == expected


def test_covered_tokens_and_trigrams(found):
    for layer in (0, 1):
        columns, tokens = column_of(layer), LAYER_TOKENS[layer]
        covered = {j: set(t.tolist()) for j, t in found["token"][layer].details["covered_tokens"].items()}
        assert covered == {columns["token_a"][0]: tokens["token_a"], columns["token_b"][0]: tokens["token_b"]}
        covered_trigrams = found["trigram"][layer].details["covered_trigrams"]
        trigrams = {j: {tuple(g) for g in t.tolist()} for j, t in covered_trigrams.items()}
        assert trigrams == {columns["trigram_a"][0]: {TRIGRAM_A}, columns["trigram_bc"][0]: {TRIGRAM_B, TRIGRAM_C}}
        assert found["trigram"][layer].scores[columns["trigram_a"][0]] == 1
        assert found["trigram"][layer].scores[columns["trigram_bc"][0]] == 2


def test_scores_equal_brute_force(stream, stats, found):
    ids, mask, acts, delta = stream
    for layer in (0, 1):
        a = acts[layer]
        np.testing.assert_array_equal(found["dead"][layer].scores, naive_freq(a, mask, 0.0))
        np.testing.assert_allclose(found["positional"][layer].scores, naive_mutual_information(a, mask, 0.0),
                                   rtol=1e-9, atol=1e-12)
        # A mean of per-window correlations in [-1, 1] can cancel: each window's r is within 1e-7
        # of the float64 reference (float32 sums of centred values), so the mean is too.
        np.testing.assert_allclose(found["positional_pearson"][layer].scores, naive_mean_pearson(a, mask),
                                   rtol=1e-6, atol=1e-7)
        for n, name, max_count in ((1, "token", 5), (3, "trigram", 50)):
            tables, occurrences = naive_ngram_tables(a, ids, mask, 0.0, {BOS}, n)
            counts, detected = naive_ngram_detection(tables, occurrences, max_count=max_count)
            np.testing.assert_array_equal(found[name][layer].scores, counts)
            assert set(detected) == set(found[name][layer].indices.tolist())
        np.testing.assert_allclose(found["delta"][layer].scores, naive_log_delta_std(delta, mask), rtol=1e-6)


def test_two_step_trigram_tables_give_the_same_answer(stream, stats, found):
    first = feed(stream)
    candidates = trigram_candidates(first)
    for layer in (0, 1):
        assert planted(layer, "trigram_a", "trigram_bc") <= set(candidates[layer].tolist())
        assert planted(layer, "noise", "step", "ramp", "many", "token_a", "token_b").isdisjoint(candidates[layer])
    with pytest.raises(AnalysisUnavailableError, match="capture_trigram_statistics"):
        detect_trigram(first)
    second = feed(stream, positional=False, token_counts=False, trigram_neurons=candidates)
    two_step = detect_trigram(first, trigram_stats=second)
    for layer in (0, 1):
        one_pass = found["trigram"][layer]
        np.testing.assert_array_equal(two_step[layer].indices, one_pass.indices)
        exact = np.isin(np.arange(WIDTH), candidates[layer]) | (one_pass.scores == 0)
        np.testing.assert_array_equal(two_step[layer].scores[exact], one_pass.scores[exact])
        assert np.all(np.isinf(two_step[layer].scores[~exact]))
        assert np.all(one_pass.scores[~exact] > 50)


def test_overlaps(found):
    overlaps = type_overlaps({name: found[name] for name in ("rarely_active", "trigram", "positional",
                                                            "positional_pearson")})
    for layer in (0, 1):
        sets = {k: set(v.tolist()) for k, v in overlaps[layer].sets.items()}
        assert sets["rarely_active&trigram"] == planted(layer, "trigram_a", "trigram_bc")
        assert sets["positional&positional_pearson"] == planted(layer, "step")
        assert sets["rarely_active&positional"] == set()
        assert sets["all"] == set()
        assert overlaps[layer].counts()["rarely_active&trigram"] == 2


def test_figure_data(stats, found):
    assert figures.dead_percent(found["dead"]) == {"layers": [0, 1], "dead_percent": [100 * 2 / 24] * 2,
                                                   "n_neurons": [24, 24]}
    alive = figures.alive_mean_frequency(found["dead"])
    for layer, value in zip(alive["layers"], alive["mean_freq_alive"]):
        expected = np.delete(stats.freq(layer), sorted(planted(layer, "dead", "dead_negative"))).mean()
        assert value == pytest.approx(expected)
    assert figures.token_detectors_per_layer(found["token"])["token_detecting"] == [2, 2]
    assert figures.tokens_covered(found["token"]) == {"layers": [0, 1], "covered": [3, 2], "cumulative": [3, 4]}
    assert figures.new_tokens(found["token"]) == {"layers": [0, 1], "new_vs_all_earlier": [3, 1],
                                                 "new_vs_previous": [3, 1]}
    bins = figures.unigram_count_bins(found["token"], found["dead"], layers="all")
    assert figures.unigram_count_bins(found["token"], found["dead"], num_layers=4)["layers"] == [0, 1]
    assert figures.unigram_count_bins(found["token"], found["dead"], num_layers=2)["layers"] == [0]
    with pytest.raises(ConfigError, match="num_layers"):
        figures.unigram_count_bins(found["token"], found["dead"])
    assert bins["bins"][:3] == ["0", "1", "2-5"]
    # unigram count 1: token_a, trigram_a, half_token (+ token_b in layer 1); 2-5: trigram_bc (+ token_b in layer 0)
    for counts, expected in zip(bins["counts"], ([3, 2], [4, 1])):
        assert sum(counts) == WIDTH - 2  # every alive neuron lands in exactly one bin
        assert counts[1:3] == expected
    sweep = figures.tau_sweep(stats)
    assert sweep["tau"] == list(stats.sweep) and len(sweep["dead_percent"]) == 2
    assert sweep["dead_percent"][0][0] == pytest.approx(100 * 2 / 24)
    profiles = figures.position_profiles(stats, found["positional"], top=3)
    assert profiles["positions"] == list(range(T))
    for layer in (0, 1):
        entry, columns = profiles["layers"][layer], column_of(layer)
        assert entry["neurons"][0] == columns["oscillating"][0]  # I = ln 2, the others H(1/4)
        assert set(entry["neurons"][1:]) == {columns["step"][0], columns["both_ends"][0]}
        step = entry["neurons"].index(columns["step"][0])
        np.testing.assert_array_equal(entry["active_frequency"][step], (np.arange(T) < 8).astype(float))
        assert entry["types"][step] == "one extreme"
        assert all(value > 1 for value in entry["mean_activation"][step][:8])
    per_layer = figures.positional_per_layer(found["positional"], num_layers=2)
    assert per_layer["types"] == ["oscillatory", "both extremes", "one extreme", "gradual", "other"]
    assert per_layer["counts"] == per_layer["strong"] == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    examples = figures.positional_type_examples(stats, found["positional"], per_type=1)
    oscillating = examples["types"]["oscillatory"][0]
    assert (oscillating["layer"], oscillating["neuron"]) == (0, column_of(0)["oscillating"][0])  # I = ln 2, layer 0 first
    assert oscillating["strength"] == "strong" and oscillating["frequency"][:4] == [1.0] * 4
    assert examples["types"]["gradual"] == [] and len(examples["types"]["one extreme"]) == 1


@pytest.mark.parametrize("call, message", [
    (lambda s: detect_dead(s, eps=1.0), r"\[0.0, 1.0\)"),
    (lambda s: detect_rarely_active(s, max_freq=0.0), r"\(0.0, 1.0\]"),
    (lambda s: detect_positional(s, min_mi=-0.1), "mutual-information"),
    (lambda s: detect_positional_pearson(s, min_abs_r=1.5), r"\[0.0, 1.0\)"),
    (lambda s: detect_token_detecting(s, max_tokens=0), "integer ≥ 1"),
    (lambda s: detect_token_detecting(s, coverage=1.2), r"\(0.0, 1.0\]"),
    (lambda s: detect_trigram(s, min_trigrams=5, max_trigrams=4), "integer ≥ 5"),
    (lambda s: detect_delta_sensitive(s, top_k=0), "top-k"),
])
def test_out_of_range_thresholds_are_rejected_with_the_valid_range(stats, call, message):
    with pytest.raises(ConfigError, match=message):
        call(stats)


def test_too_few_windows_or_tokens_is_an_error_not_nan(stream, stats):
    with pytest.raises(CaptureError, match="windows of at least that length"):
        detect_positional(stats, positions=T + 1)
    no_windows = feed(stream, BATCH, positional=False)
    with pytest.raises(CaptureError, match="at least one full-length window"):
        detect_positional(no_windows)
    with pytest.raises(CaptureError, match="token_counts=True"):
        detect_token_detecting(feed(stream, BATCH, token_counts=False, trigrams=False))
    no_delta = feed(stream, BATCH, delta=False)
    with pytest.raises(AnalysisUnavailableError, match="input-change sensitivity"):
        detect_delta_sensitive(no_delta)
