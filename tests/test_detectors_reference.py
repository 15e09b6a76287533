"""Brute-force reference implementations of every detector score, computed from the *full*
activation tensor (no streaming), plus checks of the references themselves on hand-made cases.

The other detector tests import these functions; they are deliberately naive (loops, dicts).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest


def naive_freq(acts: np.ndarray, mask: np.ndarray, tau: float) -> np.ndarray:
    """``acts [N, T, W]``, ``mask [N, T]`` -> fraction of real tokens with ``a > τ``."""
    real = acts[mask.astype(bool)]
    return (real > tau).sum(axis=0) / real.shape[0]


def naive_mutual_information(acts: np.ndarray, mask: np.ndarray, tau: float) -> np.ndarray:
    full = acts[mask.astype(bool).all(axis=1)]
    n, t, w = full.shape
    out = np.zeros(w)
    for j in range(w):
        fr_pos = [(full[:, pos, j] > tau).sum() / n for pos in range(t)]
        fr = sum(fr_pos) / t
        total = 0.0
        for p in fr_pos:
            if p > 0:
                total += p * math.log(p / fr)
            if 1 - p > 0:
                total += (1 - p) * math.log((1 - p) / (1 - fr))
        out[j] = total / t
    return out


def naive_mean_pearson(acts: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over full windows of ``np.corrcoef(position, a_j)`` (0 for a constant neuron)."""
    full = acts[mask.astype(bool).all(axis=1)].astype(np.float64)
    positions = np.arange(full.shape[1], dtype=np.float64)
    out = np.zeros(full.shape[2])
    for window in full:
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.corrcoef(np.vstack([positions, window.T]))[0, 1:]
        out += np.where(window.std(axis=0) > 0, r, 0.0)
    return out / full.shape[0]


def _ngram_count(counter: Counter, coverage: float) -> int:
    total = sum(counter.values())
    if total == 0:
        return 0
    running = 0
    for k, value in enumerate(sorted(counter.values(), reverse=True), start=1):
        running += value
        if running >= coverage * total:
            return k
    raise AssertionError("unreachable")


def naive_ngram_tables(acts: np.ndarray, ids: np.ndarray, mask: np.ndarray, tau: float, excluded: set[int],
                       n: int) -> tuple[list[Counter], Counter]:
    """Per neuron, Counter of the n-grams (tuples) triggering its activations; and n-gram occurrences.

    Unigrams: every real non-excluded position. Trigrams: positions k ≥ 2 of a window whose three
    tokens are real and whose last token is not excluded.
    """
    eligible = np.zeros(ids.shape, dtype=bool)
    for i in range(ids.shape[0]):
        for k in range(n - 1, ids.shape[1]):
            eligible[i, k] = all(mask[i, k - d] for d in range(n)) and int(ids[i, k]) not in excluded
    grams = np.stack([np.roll(ids, shift, axis=1) for shift in reversed(range(n))], axis=-1)[eligible]
    base = int(ids.max()) + 1
    codes = grams.astype(np.int64) @ base ** np.arange(n - 1, -1, -1, dtype=np.int64)

    def counter(selected: np.ndarray) -> Counter:
        unique, counts = np.unique(selected, return_counts=True)
        digits = unique[:, None] // base ** np.arange(n - 1, -1, -1, dtype=np.int64) % base
        return Counter(dict(zip(map(tuple, digits.tolist()), counts.tolist())))

    active = acts[eligible] > tau
    return [counter(codes[active[:, j]]) for j in range(acts.shape[2])], counter(codes)


def naive_ngram_detection(per_neuron: list[Counter], occurrences: Counter, *, max_count: int, min_count: int = 1,
                          coverage: float = 0.95, occurrence_rate: float = 0.95, covered_share: float = 0.95,
                          min_occurrences: int = 1) -> tuple[np.ndarray, dict[int, set]]:
    """``(n-gram count per neuron, {detected neuron: covered n-grams})``."""
    counts = np.array([_ngram_count(c, coverage) for c in per_neuron])
    detected = {}
    for j, counter in enumerate(per_neuron):
        covered = {g for g, c in counter.items()
                   if occurrences[g] >= min_occurrences and c >= occurrence_rate * occurrences[g]}
        total = sum(counter.values())
        if min_count <= counts[j] <= max_count and sum(counter[g] for g in covered) >= covered_share * total:
            detected[j] = covered
    return counts, detected


def naive_log_delta_std(delta: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.log(delta[mask.astype(bool)].astype(np.float64)).std(axis=0)


# -- the references themselves ----------------------------------------------------------------
def test_reference_mutual_information_of_known_profiles():
    t = 4
    acts = np.zeros((2, t, 3))
    acts[:, :2, 0] = 1.0  # active exactly on the first half: I = H(1/2) = ln 2
    acts[:, :, 1] = 1.0  # always active: I = 0
    acts[0, 0, 2] = 1.0  # active once at position 0 in one of two windows
    mi = naive_mutual_information(acts, np.ones((2, t)), 0.0)
    fr = 1 / 8
    expected_third = (0.5 * math.log(0.5 / fr) + 0.5 * math.log(0.5 / (1 - fr)) + 3 * math.log(1 / (1 - fr))) / t
    np.testing.assert_allclose(mi, [math.log(2), 0.0, expected_third], rtol=1e-12)


def test_reference_ngram_count_and_coverage():
    per_neuron = [Counter({"a": 90, "b": 6, "c": 4}), Counter({"a": 50, "b": 50}), Counter()]
    occurrences = Counter({"a": 100, "b": 6, "c": 400})
    counts, detected = naive_ngram_detection(per_neuron, occurrences, max_count=5)
    assert counts.tolist() == [2, 2, 0]
    # neuron 0: covered = {b} (6 of 6) but it fires on 90% of "a" only: covered share 6% -> not detected
    assert detected == {}
    per_neuron[0]["a"] = 100
    counts, detected = naive_ngram_detection(per_neuron, occurrences, max_count=5)
    assert detected == {0: {"a", "b"}}


@pytest.mark.parametrize("n", [1, 3])
def test_reference_ngram_tables_skip_excluded_padding_and_window_start(n):
    ids = np.array([[9, 1, 2, 3], [1, 2, 3, 0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    acts = np.ones((2, 4, 1))
    per_neuron, occurrences = naive_ngram_tables(acts, ids, mask, 0.0, {9}, n)
    if n == 1:
        assert occurrences == Counter({(1,): 2, (2,): 2, (3,): 2})
    else:
        assert occurrences == Counter({(9, 1, 2): 1, (1, 2, 3): 2})
    assert per_neuron[0] == occurrences
