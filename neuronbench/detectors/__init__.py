"""Neuron detectors (SPEC §4): dead, rarely active, positional, token- and trigram-detecting,
Δ-sensitive, input-change sensitive; their overlaps and the figure data.

Every detector in :data:`DETECTORS` reads the :class:`~neuronbench.capture.ActivationStatistics`
of one capture pass (no forward pass of its own) and is called as
``DETECTORS[name](stats, layers=None, **thresholds) -> {layer: Detection}``. Thresholds are
keyword parameters with documented defaults; out-of-range values raise
:class:`~neuronbench.errors.ConfigError` naming the valid range.

=======================  ==========================================  ===========================
registry name            rule (defaults)                             score
=======================  ==========================================  ===========================
``dead``                 ``freq ≤ ε`` (ε = 0)                        ``freq``
``rarely_active``        ``0 < freq < ρ`` (ρ = 0.05)                 ``freq``
``positional``           ``I(act; pos) > 0.05`` nats                 ``mutual_information``
``positional_pearson``   ``|mean r(pos, a)| > 0.3``                  ``mean_pearson_r``
``token``                ``1 ≤ unigrams ≤ 5``, covered share ≥ 0.95  ``unigram_count``
``trigram``              ``1 ≤ trigrams ≤ 50``, covered share ≥ 0.95 ``trigram_count``
``delta``                top-k (10) by spread of ``log Δ`` (Mamba)   ``log_delta_std``
=======================  ==========================================  ===========================

"Active" is the capture's activation rule (:mod:`neuronbench.activation`). Every detector, and
input-change sensitivity, attaches a null calibration to each layer's detection (``Detection.null``,
:mod:`neuronbench.detectors.null`): the neurons it finds on a null of the same sample size, the
expected false positives and a warning; a sample below a detector's documented minimum is a
:class:`~neuronbench.errors.CaptureError` naming it. The nulls: dead and rarely active, a binomial
neuron at a rate just outside the definition (:mod:`~neuronbench.detectors.dead`); positional, a
simulated binomial null and Pearson's null distribution (:mod:`~neuronbench.detectors.positional`);
token and trigram, n-gram identities permuted against the activations
(:func:`~neuronbench.detectors.ngram.permutation_null`); Δ, a chance spread
(:mod:`~neuronbench.detectors.delta`); input change, neurons permuted within each replacement
(:mod:`~neuronbench.detectors.sensitivity`).

Input-change sensitivity needs forward passes of its own and is a separate analysis,
:func:`input_change_sensitivity` (method ``input_change``); :func:`sensitivity_method` picks
``delta`` or ``input_change`` for a model. Two-step exact trigram statistics:
:func:`trigram_candidates`, :func:`capture_trigram_statistics`.
"""

from __future__ import annotations

from collections.abc import Callable

from neuronbench.detectors.dead import DEAD_FREQ, RARE_FREQ, dead_fraction_sweep, detect_dead, detect_rarely_active
from neuronbench.detectors.delta import TOP_K, detect_delta_sensitive, log_delta_spread, require_delta
from neuronbench.detectors.ngram import (
    COVERED_SHARE,
    MAX_TOKENS,
    MIN_OCCURRENCES,
    NGRAM_COVERAGE,
    OCCURRENCE_RATE,
    detect_token_detecting,
    ngram_counts,
)
from neuronbench.detectors.overlap import TypeOverlaps, type_overlaps
from neuronbench.detectors.positional import (
    POSITIONAL_MI,
    POSITIONAL_R,
    POSITIONAL_TYPES,
    detect_positional,
    detect_positional_pearson,
    positional_mutual_information,
    positional_type,
)
from neuronbench.detectors.result import Detection
from neuronbench.detectors.sensitivity import (
    HORIZON,
    N_SAMPLES,
    NORMALIZER_EPS,
    SENSITIVITY_METHODS,
    input_change_sensitivity,
    sensitivity_method,
)
from neuronbench.detectors.trigram import (
    MAX_TRIGRAMS,
    MIN_TRIGRAMS,
    capture_trigram_statistics,
    detect_trigram,
    trigram_candidates,
)

DETECTORS: dict[str, Callable[..., dict[int, Detection]]] = {
    "dead": detect_dead,
    "rarely_active": detect_rarely_active,
    "positional": detect_positional,
    "positional_pearson": detect_positional_pearson,
    "token": detect_token_detecting,
    "trigram": detect_trigram,
    "delta": detect_delta_sensitive,
}
"""Statistics-based detectors by name: ``DETECTORS[name](stats, layers=None, **thresholds)``."""

__all__ = [
    "COVERED_SHARE", "DEAD_FREQ", "DETECTORS", "Detection", "HORIZON", "MAX_TOKENS", "MAX_TRIGRAMS",
    "MIN_OCCURRENCES", "MIN_TRIGRAMS", "NGRAM_COVERAGE", "N_SAMPLES", "NORMALIZER_EPS", "OCCURRENCE_RATE",
    "POSITIONAL_MI", "POSITIONAL_R", "POSITIONAL_TYPES", "RARE_FREQ", "SENSITIVITY_METHODS", "TOP_K",
    "TypeOverlaps", "capture_trigram_statistics", "dead_fraction_sweep", "detect_dead", "detect_delta_sensitive",
    "detect_positional", "detect_positional_pearson", "detect_rarely_active", "detect_token_detecting",
    "detect_trigram", "input_change_sensitivity", "log_delta_spread", "ngram_counts",
    "positional_mutual_information", "positional_type", "require_delta", "sensitivity_method",
    "trigram_candidates", "type_overlaps",
]
