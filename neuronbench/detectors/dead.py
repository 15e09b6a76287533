"""Dead and rarely active neurons (Voita et al. 2023 §3), from activation frequencies.

``freq_j = #{tokens : j active} / n_tokens`` over *all* analysed tokens ("active" is the capture's
activation rule at τ, :mod:`neuronbench.activation`; the capture's τ sweep gives ``freq`` at
other thresholds).

* dead: ``freq_j ≤ ε`` (default ε = 0: never active). So that a user sees whether "dead" means
  inert, each layer's detection also reports the share of the layer's activation mass carried by
  its dead set, ``mass_share = Σ_{j dead} Σ_t |a_{t,j}| / Σ_j Σ_t |a_{t,j}|`` (0 when the layer's
  mass is 0), and each dead neuron's ``max |a| = max(|max_t a|, |min_t a|)``;
* rarely active: ``0 < freq_j < ρ`` (default ρ = 0.05). A band of the frequency estimate, not a test
  against a null: it has no null calibration (the binomial error of ``freq_j`` is
  ``sqrt(freq_j (1 − freq_j) / n)``).

**Null of the dead detector.** A neuron is "falsely dead" when it is alive, active on a share
``ρ₀`` of tokens (``--dead-null-freq``, default :data:`DEAD_NULL_FREQ` = 10⁻³, must exceed ε), yet
shows at most ``⌊ε n⌋`` activations in the ``n`` analysed tokens::

    p = P(Binomial(n, ρ₀) ≤ ⌊ε n⌋)        (= (1 − ρ₀)ⁿ for ε = 0)

the same for every neuron (:mod:`neuronbench.detectors.null` turns it into the null count
``W·p``). **Minimum sample**: the smallest ``n`` with ``p ≤ 0.01`` (:func:`min_dead_tokens`; 4,603
tokens for ρ₀ = 10⁻³ and ε = 0): with fewer tokens a neuron active on 0.1% of tokens is called dead
more than once in a hundred, and detection is an error naming the minimum.
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import numpy as np

from neuronbench.capture import ActivationStatistics
from neuronbench.detectors.null import WARN_FRACTION, calibrate
from neuronbench.detectors.result import Detection, check_range, found, select_layers
from neuronbench.errors import CaptureError

DEAD_FREQ = 0.0
"""ε: a neuron is dead iff ``freq ≤ ε``."""
RARE_FREQ = 0.05
"""ρ: a neuron is rarely active iff ``0 < freq < ρ``."""
DEAD_NULL_FREQ = 1e-3
"""ρ₀: the activation frequency of the alive neuron of the dead detector's null."""
MAX_FALSE_DEAD = 0.01
"""The minimum sample makes a neuron active at ρ₀ look dead with at most this probability."""


def false_dead_probability(n: int, eps: float, rho0: float) -> float:
    """``P(Binomial(n, ρ₀) ≤ ⌊ε n⌋)``, summed exactly in log space."""
    k = math.floor(eps * n)
    i = np.arange(k + 1, dtype=np.float64)
    log_choose = np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in i])
    terms = log_choose + i * math.log(rho0) + (n - i) * math.log1p(-rho0)
    return float(np.exp(terms).sum())


def min_dead_tokens(eps: float = DEAD_FREQ, rho0: float = DEAD_NULL_FREQ) -> int:
    """The smallest ``n`` with ``false_dead_probability(n, ε, ρ₀) ≤`` :data:`MAX_FALSE_DEAD`."""
    if eps == 0:
        return math.ceil(math.log(MAX_FALSE_DEAD) / math.log1p(-rho0))
    high = math.ceil(math.log(MAX_FALSE_DEAD) / math.log1p(-rho0))
    while false_dead_probability(high, eps, rho0) > MAX_FALSE_DEAD:
        high *= 2
    low = 1
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if false_dead_probability(middle, eps, rho0) > MAX_FALSE_DEAD else (low, middle)
    return low


def _frequencies(stats: ActivationStatistics, layer: int) -> np.ndarray:
    if stats.n_tokens <= 0:
        raise CaptureError("activation frequencies need at least one analysed token; the capture saw none")
    return stats.freq(layer)


def detect_dead(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                eps: float = DEAD_FREQ, null_freq: float = DEAD_NULL_FREQ,
                warn_fraction: float = WARN_FRACTION) -> dict[int, Detection]:
    """Dead neurons: ``freq_j ≤ ε``, ε ∈ [0, 1), with the null of the module docstring (ρ₀ =
    ``null_freq`` ∈ (ε, 1)). Scores: ``freq``. Fewer tokens than :func:`min_dead_tokens` is a
    :class:`CaptureError`."""
    eps = check_range("dead-neuron frequency ε", eps, 0.0, 1.0, high_open=True)
    null_freq = check_range("dead-null frequency ρ₀", null_freq, eps, 1.0, low_open=True, high_open=True)
    needed = min_dead_tokens(eps, null_freq)
    if stats.n_tokens < needed:
        raise CaptureError(
            f"dead-neuron detection needs at least {needed} analysed tokens (so that a neuron active on a share "
            f"{null_freq:g} of tokens is called dead with probability ≤ {MAX_FALSE_DEAD:g}); the capture saw "
            f"{stats.n_tokens}: analyse more tokens (--max-tokens) or raise --dead-null-freq")
    p = false_dead_probability(stats.n_tokens, eps, null_freq)
    out = {}
    for layer in select_layers(stats, layers):
        freq = _frequencies(stats, layer)
        dead = found(freq <= eps)
        null = calibrate(f"alive at rate {null_freq:g}: P(Bin(n, ρ₀) ≤ ⌊εn⌋) = {p:.3g} per neuron",
                         np.full(freq.size, p), dead.size, warn_fraction)
        out[layer] = Detection("dead", layer, dead, freq, "freq",
                               {"eps": eps, "tau": stats.threshold, "activation": stats.activation,
                                "null_freq": null_freq, "warn_fraction": warn_fraction},
                               stats.n_tokens, dead_mass(stats, layer, dead), null)
    return out


def dead_mass(stats: ActivationStatistics, layer: int, dead: np.ndarray) -> dict:
    """``{"mass_share": share of Σ|a| carried by ``dead``, "max_abs": {j: max |a_j|}}`` (module docstring)."""
    arrays = stats.layer(layer)
    total = float(arrays["abs_sum"].sum())
    share = float(arrays["abs_sum"][dead].sum()) / total if total > 0 else 0.0
    peak = np.maximum(np.abs(arrays["max"][dead]), np.abs(arrays["min"][dead]))
    return {"mass_share": share, "max_abs": {int(j): float(v) for j, v in zip(dead, peak)}}


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
