"""N-gram coverage and token-detecting neurons (Voita et al. 2023 §4).

A neuron active at position ``k`` is *triggered by* the n-gram ending at ``k``. For neuron ``j``
let ``c_j(g)`` be its number of activations triggered by n-gram ``g``, ``N_j = Σ_g c_j(g)`` and
``occ(g)`` the occurrences of ``g`` (excluded tokens such as BOS never count, neither as a
trigger nor as an occurrence).

* n-gram count: ``n_j = min{k : (sum of the k largest c_j(g)) ≥ coverage · N_j}`` (0 if ``N_j = 0``),
  default coverage 0.95;
* covered n-grams: ``{g : occ(g) ≥ min_occurrences and c_j(g) ≥ occurrence_rate · occ(g)}``
  (the neuron fires on ≥ 95% of the n-gram's occurrences; default min_occurrences 1);
* covered share: ``Σ_{g covered} c_j(g) / N_j``.

Token-detecting (unigrams): ``1 ≤ n_j ≤ 5`` and covered share ``≥ 0.95``. Trigram-detecting
(:mod:`neuronbench.detectors.trigram`) applies the same rule to trigrams with ``1 ≤ n_j ≤ 50``.
Unigram statistics count every real, non-excluded position.

**Null of the n-gram detectors** (:func:`permutation_null`): n-gram identities permuted against
the activations. Under that permutation a neuron with ``N_j`` activations at counted positions has
them on a uniformly random ``N_j``-subset of the ``n`` counted positions, so its per-n-gram counts are
multivariate hypergeometric with the stream's occurrences ``occ(g)``: computable from the streamed
tables alone (``N_j`` and ``occ``), with no second pass. The token detector uses the unigram
occurrences and its ``1 ≤ count ≤ max_tokens``; the trigram detector
(:mod:`neuronbench.detectors.trigram`) the trigram occurrences (``n`` = the trigram positions,
``N_j = E_j``) and its ``min_trigrams ≤ count ≤ max_trigrams``. The probability ``p(N)`` that such a
neuron passes the detector depends only on ``N``; it is simulated (:data:`NULL_DRAWS` draws, seeded)
and interpolated in ``log N`` (``p_j = p(N_j)``; ``p = 0`` for ``N_j = 0``). A draw is a prefix of a
random ordering of the ``n`` positions (one ordering per draw serves every ``N``: each prefix is a
uniformly random subset). The grid is every ``N`` from 1 to ``⌈(high + 1)/coverage⌉`` (``p`` has a
sawtooth of period ``1/(1 − coverage)`` there and falls to ≈ 0 at ``high/coverage`` on streams of
mostly distinct n-grams) and :data:`NULL_GRID` geometric points up to
the **reach** ``R = ⌊T_high / coverage⌋ + 1``, with ``T_high`` the sum of the ``high`` largest
occurrences: a neuron with ``N > R`` cannot have ``≤ high`` n-grams covering ``coverage · N``
(each covers at most its ``occ(g)`` activations), so ``p(N) = 0`` exactly there. Rare neurons are the
ones at risk: one activation on a token seen once is a "token detector" at ``min_occurrences = 1``.
The Monte Carlo error of ``Σ p_j`` is bounded by ``Σ_j sqrt(p_j (1 − p_j) / draws)`` (the grid points
share their draws, so the errors are added as if fully correlated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from neuronbench.capture import ActivationStatistics
from neuronbench.detectors.null import WARN_FRACTION, NullCalibration, calibrate
from neuronbench.detectors.result import Detection, check_count, check_range, select_layers
from neuronbench.errors import CaptureError

NGRAM_COVERAGE = 0.95
"""Share of a neuron's activations its n-gram count must cover."""
OCCURRENCE_RATE = 0.95
"""A covered n-gram: the neuron fires on at least this share of its occurrences."""
COVERED_SHARE = 0.95
"""Share of a detector's activations its covered n-grams must account for."""
MIN_OCCURRENCES = 1
"""A covered n-gram occurs at least this many times."""
MAX_TOKENS = 5
"""Token-detecting: at most this many unigrams cover its activations."""
NEURON_CHUNK = 256
"""Neurons per block when the per-token table is materialised (bounds analysis memory)."""
NULL_DRAWS = 200
"""Simulated null neurons per grid point of the n-gram null."""
NULL_GRID = 40
"""Geometric grid points (in N) of the n-gram null."""
NULL_SEED = 0
"""Seed of the n-gram null's simulation (the null is deterministic)."""
NULL_CHUNK = 25
"""Simulated draws per block (a block's tables are ``hit n-grams × draws``: small blocks keep them small)."""
NULL_CELLS = 1 << 22
"""Bound on the cells (draws × (positions + n-grams)) of one block of simulated draws (memory)."""


def ascending_by_neuron(counts: np.ndarray) -> np.ndarray:
    """``counts [K, C]`` as ``[C, K]`` with each neuron's counts sorted ascending (exact; a radix sort
    on the narrowest unsigned dtype that holds them)."""
    top = int(counts.max(initial=0))
    dtype = next(d for d in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(d).max)
    return np.sort(np.ascontiguousarray(counts.T, dtype=dtype), axis=1, kind="stable")


def ngram_counts(counts: np.ndarray, coverage: float) -> tuple[np.ndarray, np.ndarray]:
    """``(n-gram count, N)`` per neuron of ``counts [K, C]`` (n-grams × neurons).

    With ``s`` a neuron's counts sorted ascending, the sum of its ``k`` largest is
    ``N − (s_0 + … + s_{K−k−1})``, so ``count = 1 + #{i < K−1 : N − (s_0 + … + s_i) < coverage·N}``
    (exact integer prefix sums; 0 when ``N = 0``).
    """
    total = counts.sum(axis=0)
    prefix = torch.from_numpy(ascending_by_neuron(counts)[:, :-1].astype(np.int64)).cumsum(dim=1).numpy()
    count = 1 + ((total[:, None] - prefix) < coverage * total[:, None]).sum(axis=1)
    count[total == 0] = 0
    return count.astype(np.int64), total


@dataclass(frozen=True)
class BlockDetection:
    """N-gram detection in a block of neurons (columns): counts and totals of every column; for
    columns whose count is in range, the covered share; for detected columns, the row indices of
    their covered n-grams."""

    count: np.ndarray
    total: np.ndarray
    share: dict[int, float]
    covered: dict[int, np.ndarray]


@dataclass(frozen=True)
class NgramThresholds:
    """Validated thresholds of an n-gram detector (ranges in :meth:`check`)."""

    coverage: float
    occurrence_rate: float
    covered_share: float
    min_occurrences: int

    @classmethod
    def check(cls, coverage: float, occurrence_rate: float, covered_share: float,
              min_occurrences: int) -> NgramThresholds:
        return cls(check_range("n-gram coverage", coverage, 0.0, 1.0, low_open=True),
                   check_range("covered n-gram occurrence rate", occurrence_rate, 0.0, 1.0, low_open=True),
                   check_range("covered share", covered_share, 0.0, 1.0, low_open=True),
                   check_count("minimum occurrences", min_occurrences))

    def detect(self, counts: np.ndarray, occurrences: np.ndarray, low: int, high: int) -> BlockDetection:
        """Detect in ``counts [K, C]``: ``low ≤ count ≤ high`` and covered share ``≥ covered_share``;
        ``occurrences`` is ``[K]`` (the same n-grams for every column) or ``[K, C]``."""
        count, total = ngram_counts(counts, self.coverage)
        columns = np.flatnonzero((count >= low) & (count <= high))
        hits = counts[:, columns]
        seen = occurrences[:, None] if occurrences.ndim == 1 else occurrences[:, columns]
        eligible = (seen >= self.min_occurrences) & (hits >= self.occurrence_rate * seen)
        covered_activations = np.where(eligible, hits, 0).sum(axis=0, dtype=np.int64)
        share = {int(c): int(a) / total[c] for c, a in zip(columns, covered_activations)}
        detected = covered_activations >= self.covered_share * total[columns]
        covered = {int(columns[i]): np.flatnonzero(eligible[:, i]) for i in np.flatnonzero(detected)}
        return BlockDetection(count, total, share, covered)

    def as_dict(self) -> dict[str, float]:
        return {"coverage": self.coverage, "occurrence_rate": self.occurrence_rate,
                "covered_share": self.covered_share, "min_occurrences": self.min_occurrences}


@dataclass(frozen=True)
class PermutationNull:
    """``p(N)`` on a grid of activation totals ``N`` (module docstring); ``p = 0`` above ``reach``."""

    method: str
    totals: np.ndarray
    passing: np.ndarray
    draws: int
    reach: int

    def at(self, totals: np.ndarray) -> np.ndarray:
        p = np.interp(np.log(np.maximum(totals, 1)), np.log(self.totals), self.passing)
        return np.where((totals > 0) & (totals <= self.reach), p, 0.0)

    def calibration(self, totals: np.ndarray, found: int, warn_fraction: float) -> NullCalibration:
        p = self.at(totals)
        return calibrate(self.method, p, found, warn_fraction, float(np.sqrt(p * (1 - p) / self.draws).sum()))


def null_totals(reach: int, high: int, coverage: float, grid: int) -> np.ndarray:
    """The grid of ``N`` (module docstring): every integer up to ``⌈(high + 1)/coverage⌉``, geometric to
    ``reach``."""
    dense = np.arange(1, min(reach, math.ceil((high + 1) / coverage)) + 1)
    return np.unique(np.r_[dense, np.round(np.geomspace(1, reach, grid))]).astype(np.int64)


def drawn_tables(orders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, counts [U, D])``: the n-grams any of the ``D`` draws (rows of ``orders``) hits, and each
    draw's count of each."""
    rows, inverse = np.unique(orders, return_inverse=True)
    draws = orders.shape[0]
    keys = inverse.reshape(orders.shape) * draws + np.arange(draws)[:, None]
    return rows, np.bincount(keys.ravel(), minlength=rows.size * draws).reshape(rows.size, draws)


def permutation_null(occurrences: np.ndarray, thresholds: NgramThresholds, low: int, high: int, method: str,
                     draws: int = NULL_DRAWS, grid: int = NULL_GRID, seed: int = NULL_SEED) -> PermutationNull:
    """Simulate neurons whose ``N`` activations fall on uniformly random counted positions of a stream
    with n-gram ``occurrences`` and apply the detector ``low ≤ count ≤ high`` to them."""
    rng = np.random.default_rng(seed)
    n = int(occurrences.sum())
    reach = min(n, math.floor(np.sort(occurrences)[-high:].sum() / thresholds.coverage) + 1)
    if reach < 1:
        return PermutationNull(method, np.ones(1, dtype=np.int64), np.zeros(1), draws, 0)
    totals = null_totals(reach, high, thresholds.coverage, grid)
    stream = np.repeat(np.arange(occurrences.size), occurrences)
    passing = np.zeros(totals.size)
    chunk = max(1, min(draws, NULL_CHUNK, NULL_CELLS // (int(totals[-1]) + occurrences.size)))
    for start in range(0, draws, chunk):
        orders = np.stack([stream[rng.choice(n, int(totals[-1]), replace=False)]
                           for _ in range(min(chunk, draws - start))])
        for i, total in enumerate(totals):
            rows, counts = drawn_tables(orders[:, :total])
            top = -np.partition(-counts, min(high, rows.size) - 1, axis=0)[:high].sum(axis=0)
            candidates = np.flatnonzero(top >= thresholds.coverage * total)  # count ≤ high is possible
            if candidates.size:
                passing[i] += len(thresholds.detect(counts[:, candidates], occurrences[rows], low, high).covered)
    return PermutationNull(method, totals, passing / draws, draws, reach)


def require_token_counts(stats: ActivationStatistics) -> None:
    if stats.token_ids is None:
        raise CaptureError("n-gram detectors need the per-token counts: capture with CaptureConfig(token_counts=True)")
    if stats.token_ids.size == 0:
        raise CaptureError("n-gram detectors need at least one non-excluded token; the capture counted none")


def neuron_chunks(width: int, chunk: int = NEURON_CHUNK) -> list[np.ndarray]:
    return [np.arange(start, min(start + chunk, width)) for start in range(0, width, chunk)]


def detect_token_detecting(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                           max_tokens: int = MAX_TOKENS, coverage: float = NGRAM_COVERAGE,
                           occurrence_rate: float = OCCURRENCE_RATE, covered_share: float = COVERED_SHARE,
                           min_occurrences: int = MIN_OCCURRENCES, warn_fraction: float = WARN_FRACTION
                           ) -> dict[int, Detection]:
    """Token-detecting neurons: ``1 ≤ unigram count ≤ max_tokens`` and covered share ≥ ``covered_share``.

    Scores: the unigram count of every neuron (float64; 0 for a neuron never active on a
    non-excluded token). ``details``: ``covered_tokens`` (token ids per detected neuron),
    ``n_activations`` (``N_j`` per neuron) and ``covered_share`` (for each neuron whose unigram count
    is in range).
    """
    thresholds = NgramThresholds.check(coverage, occurrence_rate, covered_share, min_occurrences)
    max_tokens = check_count("maximum tokens of a token-detecting neuron", max_tokens)
    require_token_counts(stats)
    occurrences = stats.token_occurrences[stats.token_ids]
    null = permutation_null(occurrences, thresholds, 1, max_tokens,
                            "token identities permuted against activations (simulated)")
    out = {}
    for layer in select_layers(stats, layers):
        width = stats.layer(layer)["active_count"].size
        count, total = np.zeros(width), np.zeros(width, dtype=np.int64)
        share: dict[int, float] = {}
        covered: dict[int, np.ndarray] = {}
        for neurons in neuron_chunks(width):
            block = thresholds.detect(stats.token_active(layer, neurons), occurrences, 1, max_tokens)
            count[neurons], total[neurons] = block.count, block.total
            share.update({int(neurons[c]): value for c, value in block.share.items()})
            covered.update({int(neurons[c]): stats.token_ids[rows] for c, rows in block.covered.items()})
        out[layer] = Detection("token", layer, np.array(sorted(covered), dtype=np.int64), count, "unigram_count",
                               {**thresholds.as_dict(), "max_tokens": max_tokens, "tau": stats.threshold,
                                "activation": stats.activation, "warn_fraction": warn_fraction},
                               int(stats.token_occurrences.sum()),
                               {"covered_tokens": covered, "n_activations": total, "covered_share": share},
                               null.calibration(total, len(covered), warn_fraction))
    return out
