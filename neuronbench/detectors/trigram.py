"""Trigram-detecting neurons, exactly, with memory bounded by the neurons that can qualify.

Same rule as :mod:`neuronbench.detectors.ngram` with trigrams: the trigram count of neuron ``j`` is
the smallest number of distinct trigrams covering ≥ 95% of ``E_j``, its activations at trigram
positions (position ``k ≥ 2`` of a window, ``x_k`` not excluded; the first two positions of every
window have no full trigram and are left out). Trigram-detecting: ``1 ≤ count ≤ 50``, covered
trigrams (fires on ≥ 95% of ≥ ``min_occurrences`` occurrences) account for ≥ 95% of ``E_j``.

**Design (exact, two explicit steps).** Exact trigram counts need a ``(trigram, neuron)`` table,
which for every neuron of a large model is about one entry per activation. But only a few
neurons can have ``≤ m`` covering trigrams, and two *necessary* conditions computed from the
first pass's per-token table and trigram index prove it for all others
(:func:`trigram_candidates`):

1. the ``m`` tokens on which ``j`` fires most cover ``≥ coverage · E_j`` activations — the last
   tokens of ``j``'s ``≤ m`` covering trigrams are ``≤ m`` tokens that cover at least as much;
2. ``U_j ≥ coverage · E_j`` where ``U_j`` is the sum of the ``m`` largest
   ``v(g) = min(occ(g), c_j(last token of g))`` over all trigrams ``g`` — since
   ``c_j(g) ≤ v(g)``. It suffices to look at the ``m`` most frequent trigrams ending in each
   token, so this costs ``V_seen × m`` numbers once and ``(#tokens j fires on) × m`` per neuron
   that passed (1). It rejects token detectors of frequent tokens, whose activations spread over
   many contexts. (A neuron with ``E_j ≤ m`` has at most ``m`` trigrams: it is a candidate
   outright.)

Step 1 is the ordinary capture (``CaptureConfig(trigrams=True)``, the default). Step 2,
:func:`capture_trigram_statistics`, is a **second forward pass over the same windows** that keeps
exact tables for the candidates only (cost: one more forward pass; memory: 16 bytes per distinct
active ``(trigram, candidate)`` pair, at most ``Σ_candidates E_j``). For small models one pass
suffices: ``CaptureConfig(trigram_neurons="all")`` keeps every neuron's table in the first pass.
:func:`detect_trigram` reports exact trigram counts for every neuron that has a table, ``0`` for a
neuron with ``E_j = 0`` and ``inf`` (meaning "more than ``m``", proved by the bounds) for every
other one; it refuses to run if a candidate lacks its table.

**Null.** Trigram identities permuted against the activations, the token detector's null with the
trigram occurrences (:func:`neuronbench.detectors.ngram.permutation_null`): a null neuron's ``E_j``
activations fall on a uniformly random subset of the trigram positions. It needs only ``E_j`` and
the trigram occurrences, both kept by the first pass, so the exact permutation null costs no
forward pass. On text, where most trigrams occur once, it is the neurons with few activations
(``E_j`` up to about ``m / coverage``) that pass by chance at ``min_occurrences = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.capture import ActivationStatistics, CaptureConfig, capture_statistics
from neuronbench.data import TokenWindows
from neuronbench.detectors.ngram import (
    COVERED_SHARE,
    MIN_OCCURRENCES,
    NGRAM_COVERAGE,
    OCCURRENCE_RATE,
    NgramThresholds,
    ascending_by_neuron,
    neuron_chunks,
    permutation_null,
    require_token_counts,
)
from neuronbench.detectors.null import WARN_FRACTION
from neuronbench.detectors.result import Detection, check_count, check_range, select_layers
from neuronbench.errors import AnalysisUnavailableError, CaptureError, ConfigError

MAX_TRIGRAMS = 50
"""Trigram-detecting: at most this many trigrams cover its activations."""
MIN_TRIGRAMS = 1
"""Trigram-detecting: at least this many (1: any neuron active at a trigram position)."""


def _require_trigrams(stats: ActivationStatistics) -> None:
    if stats.trigram_tokens is None:
        raise CaptureError("trigram detectors need the trigram index: capture with CaptureConfig(trigrams=True)")


def top_trigram_occurrences(stats: ActivationStatistics, m: int) -> np.ndarray:
    """``[V_seen, m]``: the ``m`` largest occurrence counts of trigrams ending in each token row
    (descending, 0-padded)."""
    _require_trigrams(stats)
    row_of = np.full(int(stats.token_ids.max()) + 1, -1, dtype=np.int64)
    row_of[stats.token_ids] = np.arange(stats.token_ids.size)
    rows = row_of[stats.trigram_tokens[:, 2]]
    order = np.lexsort((-stats.trigram_occurrences, rows))
    rows, occurrences = rows[order], stats.trigram_occurrences[order]
    group_start = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if rows.size else np.empty(0, np.int64)
    rank = np.arange(rows.size) - np.repeat(group_start, np.diff(np.r_[group_start, rows.size]))
    keep = rank < m
    top = np.zeros((stats.token_ids.size, m), dtype=np.int64)
    top[rows[keep], rank[keep]] = occurrences[keep]
    return top


def _context_bound(counts: np.ndarray, top: np.ndarray, m: int) -> int:
    """``U_j`` for one neuron's token counts ``[V_seen]`` (condition 2 of the module docstring)."""
    support = np.flatnonzero(counts)
    values = np.minimum(top[support], counts[support, None]).ravel()
    if values.size > m:
        values = np.partition(values, values.size - m)[-m:]
    return int(values.sum())


def trigram_candidates(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                       max_trigrams: int = MAX_TRIGRAMS,
                       coverage: float = NGRAM_COVERAGE) -> dict[int, np.ndarray]:
    """The neurons of each layer that may have ``≤ max_trigrams`` trigrams covering
    ``≥ coverage · E_j`` (both necessary conditions of the module docstring hold, ``E_j > 0``).
    Every other neuron provably has more. Layers without candidates are left out."""
    m = check_count("maximum trigrams", max_trigrams)
    coverage = check_range("n-gram coverage", coverage, 0.0, 1.0, low_open=True)
    require_token_counts(stats)
    top = top_trigram_occurrences(stats, m)
    out = {}
    for layer in select_layers(stats, layers):
        active = stats.layer(layer)["trigram_active_count"]
        chosen = []
        for neurons in neuron_chunks(active.size):
            counts = stats.token_active(layer, neurons)
            need = coverage * active[neurons]
            best = ascending_by_neuron(counts)[:, -m:].sum(axis=1, dtype=np.int64)
            for column in np.flatnonzero((active[neurons] > 0) & (best >= need)):
                few = active[neurons[column]] <= m  # at most m activations: at most m trigrams
                if few or _context_bound(counts[:, column], top, m) >= need[column]:
                    chosen.append(int(neurons[column]))
        if chosen:
            out[layer] = np.array(chosen, dtype=np.int64)
    return out


def capture_trigram_statistics(model: torch.nn.Module, adapter: ArchitectureAdapter, windows: TokenWindows,
                               stats: ActivationStatistics, *, max_trigrams: int = MAX_TRIGRAMS,
                               coverage: float = NGRAM_COVERAGE, batch_size: int | None = None,
                               progress: bool = True) -> ActivationStatistics | None:
    """Step 2: one more forward pass over the *same* ``windows`` (same activation rule, τ, layer
    scales and excluded tokens as the pass that produced ``stats``) keeping exact trigram tables for
    :func:`trigram_candidates` only. ``None`` when no neuron is a candidate (nothing to count)."""
    candidates = trigram_candidates(stats, max_trigrams=max_trigrams, coverage=coverage)
    if not candidates:
        return None
    scales = {layer: float(stats.layer(layer)["active_scale"]) for layer in candidates}
    config = CaptureConfig(layers=tuple(sorted(candidates)), activation=stats.activation, threshold=stats.threshold,
                           scales=scales, sweep=(),
                           positional=False, token_counts=False, delta=False,
                           exclude_token_ids=frozenset(stats.excluded_token_ids), batch_size=batch_size,
                           trigrams=True, trigram_neurons=candidates)
    return capture_statistics(model, adapter, windows, config, progress=progress)


def _check_same_tokens(stats: ActivationStatistics, tables: ActivationStatistics) -> None:
    same = (stats.n_tokens == tables.n_tokens and stats.window == tables.window
            and stats.threshold == tables.threshold and stats.activation == tables.activation
            and tuple(stats.excluded_token_ids) == tuple(tables.excluded_token_ids))
    if not same:
        raise ConfigError(
            "the trigram tables come from a different capture: tokens/window/τ/excluded tokens differ "
            f"({tables.n_tokens}/{tables.window}/{tables.threshold}/{tables.excluded_token_ids} against "
            f"{stats.n_tokens}/{stats.window}/{stats.threshold}/{stats.excluded_token_ids}); rerun "
            "capture_trigram_statistics on the same windows"
        )


def _layer_tables(stats: ActivationStatistics, tables: ActivationStatistics, layer: int,
                  candidates: np.ndarray) -> dict[str, np.ndarray]:
    """The trigram tables of ``layer``, checked to cover every candidate and to agree with ``stats``."""
    arrays = tables.layers.get(layer, {})
    have = arrays.get("trigram_neurons", np.empty(0, dtype=np.int64))
    missing = np.setdiff1d(candidates, have)
    if missing.size:
        raise AnalysisUnavailableError(
            f"layer {layer}: neurons {missing[:10].tolist()}{' ...' if missing.size > 10 else ''} may be trigram "
            "detectors but have no exact trigram table; run step 2, "
            "neuronbench.detectors.capture_trigram_statistics(model, adapter, windows, stats), and pass its "
            "result as trigram_stats (or capture with CaptureConfig(trigram_neurons='all'))"
        )
    if not have.size:
        return arrays
    counted = np.bincount(np.searchsorted(have, arrays["trigram_pair_neuron"]), weights=arrays["trigram_pair_count"],
                          minlength=have.size)
    if not np.array_equal(counted, stats.layer(layer)["trigram_active_count"][have]):
        raise ConfigError(f"layer {layer}: the trigram tables saw different activations than the statistics "
                          "(another model, device or batch size?); rerun both on the same setup")
    return arrays


def detect_trigram(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                   trigram_stats: ActivationStatistics | None = None, min_trigrams: int = MIN_TRIGRAMS,
                   max_trigrams: int = MAX_TRIGRAMS, coverage: float = NGRAM_COVERAGE,
                   occurrence_rate: float = OCCURRENCE_RATE, covered_share: float = COVERED_SHARE,
                   min_occurrences: int = MIN_OCCURRENCES, warn_fraction: float = WARN_FRACTION
                   ) -> dict[int, Detection]:
    """Trigram-detecting neurons: ``min_trigrams ≤ trigram count ≤ max_trigrams`` and covered
    trigrams account for ``≥ covered_share`` of ``E_j``.

    ``trigram_stats``: the step-2 result (``None``: the tables of ``stats`` itself). Scores: the
    trigram count (float64; ``inf`` = more than ``max_trigrams``, not counted). ``details``:
    ``covered_trigrams`` (``[k, 3]`` token ids per detected neuron), ``n_activations`` (``E_j``).
    ``null``: trigram identities permuted against the activations (module docstring).
    """
    thresholds = NgramThresholds.check(coverage, occurrence_rate, covered_share, min_occurrences)
    min_trigrams = check_count("minimum trigrams", min_trigrams)
    max_trigrams = check_count("maximum trigrams", max_trigrams, low=min_trigrams)
    tables = stats if trigram_stats is None else trigram_stats
    _check_same_tokens(stats, tables)
    _require_trigrams(tables)
    candidates = trigram_candidates(stats, layers=layers, max_trigrams=max_trigrams, coverage=coverage)
    null = permutation_null(tables.trigram_occurrences, thresholds, min_trigrams, max_trigrams,
                            "trigram identities permuted against activations (simulated)")
    out = {}
    for layer in select_layers(stats, layers):
        active = stats.layer(layer)["trigram_active_count"]
        arrays = _layer_tables(stats, tables, layer, candidates.get(layer, np.empty(0, dtype=np.int64)))
        scores = np.where(active == 0, 0.0, np.inf)
        covered: dict[int, np.ndarray] = {}
        for neuron, trigrams, counts in _pairs_by_neuron(arrays):
            block = thresholds.detect(counts[:, None], tables.trigram_occurrences[trigrams], min_trigrams,
                                      max_trigrams)
            scores[neuron] = block.count[0]
            if 0 in block.covered:
                covered[neuron] = tables.trigram_tokens[trigrams[block.covered[0]]]
        out[layer] = Detection("trigram", layer, np.array(sorted(covered), dtype=np.int64), scores,
                               "trigram_count", {**thresholds.as_dict(), "min_trigrams": min_trigrams,
                                                 "max_trigrams": max_trigrams, "tau": stats.threshold,
                                                 "warn_fraction": warn_fraction},
                               int(tables.trigram_occurrences.sum()),
                               {"covered_trigrams": covered, "n_activations": active},
                               null.calibration(active, len(covered), warn_fraction))
    return out


def _pairs_by_neuron(arrays: dict[str, np.ndarray]):
    """``(neuron, trigram ids, counts)`` for each neuron with a table and ``E_j > 0``."""
    if "trigram_neurons" not in arrays:
        return
    neuron = arrays["trigram_pair_neuron"]
    starts = np.flatnonzero(np.r_[True, neuron[1:] != neuron[:-1]]) if neuron.size else np.empty(0, np.int64)
    for start, stop in zip(starts, np.r_[starts[1:], neuron.size]):
        yield int(neuron[start]), arrays["trigram_pair_trigram"][start:stop], arrays["trigram_pair_count"][start:stop]
