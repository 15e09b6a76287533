"""Dead and rarely active neurons (Voita et al. 2023 §3), from activation frequencies.

``freq_j = #{tokens : a_j > τ} / n_tokens`` over *all* analysed tokens (τ is the capture's
threshold; the capture's τ sweep gives ``freq`` at other thresholds).

* dead: ``freq_j ≤ ε`` (default ε = 0: never active);
* rarely active: ``0 < freq_j < ρ`` (default ρ = 0.05).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neuronbench.capture import ActivationStatistics
from neuronbench.detectors.result import Detection, check_range, found, select_layers
from neuronbench.errors import CaptureError

DEAD_FREQ = 0.0
"""ε: a neuron is dead iff ``freq ≤ ε``."""
RARE_FREQ = 0.05
"""ρ: a neuron is rarely active iff ``0 < freq < ρ``."""


def _frequencies(stats: ActivationStatistics, layer: int) -> np.ndarray:
    if stats.n_tokens <= 0:
        raise CaptureError("activation frequencies need at least one analysed token; the capture saw none")
    return stats.freq(layer)


def detect_dead(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                eps: float = DEAD_FREQ) -> dict[int, Detection]:
    """Dead neurons: ``freq_j ≤ ε``, ε ∈ [0, 1). Scores: ``freq``."""
    eps = check_range("dead-neuron frequency ε", eps, 0.0, 1.0, high_open=True)
    out = {}
    for layer in select_layers(stats, layers):
        freq = _frequencies(stats, layer)
        out[layer] = Detection("dead", layer, found(freq <= eps), freq, "freq",
                               {"eps": eps, "tau": stats.threshold}, stats.n_tokens)
    return out


def detect_rarely_active(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                         max_freq: float = RARE_FREQ) -> dict[int, Detection]:
    """Rarely active neurons: ``0 < freq_j < ρ``, ρ ∈ (0, 1]. Scores: ``freq``."""
    max_freq = check_range("rarely-active frequency ρ", max_freq, 0.0, 1.0, low_open=True)
    out = {}
    for layer in select_layers(stats, layers):
        freq = _frequencies(stats, layer)
        out[layer] = Detection("rarely_active", layer, found((freq > 0) & (freq < max_freq)), freq, "freq",
                               {"max_freq": max_freq, "tau": stats.threshold}, stats.n_tokens)
    return out


def dead_fraction_sweep(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                        eps: float = DEAD_FREQ) -> dict:
    """Dead fraction per layer at every τ of the capture's sweep: ``#{j : sweep_count_j(τ)/n ≤ ε} / W``.

    Returns ``{"tau": [S], "layers": [L], "dead_percent": [L][S]}`` (percent).
    """
    eps = check_range("dead-neuron frequency ε", eps, 0.0, 1.0, high_open=True)
    chosen = select_layers(stats, layers)
    if stats.n_tokens <= 0:
        raise CaptureError("the τ sweep needs at least one analysed token; the capture saw none")
    percent = [(100.0 * (stats.layer(layer)["sweep_count"] / stats.n_tokens <= eps).mean(axis=1)).tolist()
               for layer in chosen]
    return {"tau": list(stats.sweep), "layers": list(chosen), "dead_percent": percent, "eps": eps}
