"""Neuron types of the suite and how the run's options set their detectors' thresholds.

``NEURON_TYPES[name]`` names a detector of :data:`neuronbench.detectors.DETECTORS` and maps a
:class:`~neuronbench.config.RunConfig` to that detector's keyword thresholds, so every threshold
is an option of the run and is recorded with the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from neuronbench.config import RunConfig


@dataclass(frozen=True)
class NeuronType:
    detector: str
    thresholds: Callable[[RunConfig], dict]
    ssm_only: bool = False


NEURON_TYPES: dict[str, NeuronType] = {
    "dead": NeuronType("dead", lambda c: {"eps": c.dead_freq, "null_freq": c.dead_null_freq,
                                          "warn_fraction": c.null_warn_fraction}),
    "rarely_active": NeuronType("rarely_active", lambda c: {"max_freq": c.rare_freq, "null_freq": c.rare_null_freq,
                                                            "warn_fraction": c.null_warn_fraction}),
    "positional": NeuronType("positional", lambda c: {"min_mi": c.positional_mi, "warn_fraction": c.null_warn_fraction,
                                                      "extreme": c.positional_extreme}),
    "positional_pearson": NeuronType("positional_pearson", lambda c: {"min_abs_r": c.positional_r,
                                                                      "warn_fraction": c.null_warn_fraction,
                                                                      "extreme": c.positional_extreme}),
    "token": NeuronType("token", lambda c: {"max_tokens": c.token_max_unigrams, "coverage": c.ngram_coverage,
                                            "min_occurrences": c.min_occurrences,
                                            "occurrence_rate": c.token_occurrence_rate,
                                            "covered_share": c.token_covered_share,
                                            "warn_fraction": c.null_warn_fraction}),
    "delta": NeuronType("delta", lambda c: {"top_k": c.top_k, "warn_fraction": c.null_warn_fraction}, ssm_only=True),
}


def trigram_thresholds(config: RunConfig) -> dict:
    """Thresholds of the trigram detector (and of its candidate pass)."""
    return {"coverage": config.ngram_coverage, "min_occurrences": config.min_occurrences,
            "occurrence_rate": config.token_occurrence_rate, "covered_share": config.token_covered_share,
            "warn_fraction": config.null_warn_fraction}
