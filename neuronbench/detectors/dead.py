"""Dead and rarely active neurons (Voita et al. 2023 §3), from activation frequencies.

``freq_j = #{tokens : j active} / n_tokens`` over *all* analysed tokens ("active" is the capture's
activation rule at τ, :mod:`neuronbench.activation`; the capture's τ sweep gives ``freq`` at
other thresholds).

* dead: ``freq_j ≤ ε`` (default ε = 0: never active). So that a user sees whether "dead" means
  inert, each layer's detection also reports the share of the layer's activation mass carried by
  its dead set, ``mass_share = Σ_{j dead} Σ_t |a_{t,j}| / Σ_j Σ_t |a_{t,j}|`` (0 when the layer's
  mass is 0), and each dead neuron's ``max |a| = max(|max_t a|, |min_t a|)``;
* rarely active: ``0 < freq_j < ρ`` (default ρ = 0.05).

**Null of the dead detector.** A neuron is "falsely dead" when it is alive, active on a share
``ρ₀`` of tokens (``--dead-null-freq``, default :data:`DEAD_NULL_FREQ` = 10⁻³, must exceed ε), yet
shows at most ``⌊ε n⌋`` activations in the ``n`` analysed tokens::

    p = P(Binomial(n, ρ₀) ≤ ⌊ε n⌋)        (= (1 − ρ₀)ⁿ for ε = 0)

the same for every neuron (:mod:`neuronbench.detectors.null` turns it into the null count
``W·p``). **Minimum sample**: the ``n`` from which on ``p ≤ 0.01`` (:func:`min_dead_tokens`; 4,603
tokens for ρ₀ = 10⁻³ and ε = 0): with fewer tokens a neuron active on 0.1% of tokens is called dead
more than once in a hundred, and detection is an error naming the minimum.

**Null of the rarely-active detector.** The claim "rarely active" is that ``j``'s true rate lies
below ρ; a false positive is a neuron that is *not* rare yet shows ``1 ≤ k < ρn`` activations in the
``n`` analysed tokens (a neuron with true rate 0 never fires, so it can only be called dead). The null
neuron is commonly active at rate ``ρ₁`` (``--rare-null-freq``, default ``min(2ρ, 1)``: twice the
threshold rate, clearly not rare; must lie in (ρ, 1])::

    p = P(1 ≤ Binomial(n, ρ₁) ≤ K),   K = max{k : k/n < ρ}   (= P(Bin ≤ K) − (1 − ρ₁)ⁿ)

the same for every neuron, so the null count is ``W·p``. The null is not put *at* the boundary
ρ: there ``p → ½`` at every sample size (a rate estimate cannot tell ρ from ρ − 0), which says
nothing about the sample. **Minimum sample**: the ``n`` from which on ``P(Bin(n, ρ₁) ≤ K) ≤ 0.01``
(:func:`min_rare_tokens`; 183 tokens for ρ = 0.05, ρ₁ = 0.1): with fewer, a neuron active on a
share ρ₁ of the tokens looks rare (or dead) more than once in a hundred, and detection is an error
naming the minimum. (Both probabilities are sawtooths in ``n``, jumping up where ``⌊εn⌋`` or ``K``
steps; a minimum is the sample size from which on they stay below the bound, :func:`smallest_sample`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import math

import numpy as np
import torch

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
"""The minimum sample makes a neuron active at ρ₀ look dead (at ρ₁: rare or dead) with at most this
probability."""


def binomial_cdf(n: int, k: int, rho: float) -> float:
    """``P(Binomial(n, ρ) ≤ k)`` (0 for ``k < 0``, 1 for ``ρ = 0``), summed exactly in log space."""
    if k < 0:
        return 0.0
    if rho == 0 or k >= n:
        return 1.0
    if rho == 1:
        return 0.0
    i = torch.arange(k + 1, dtype=torch.float64)
    log_choose = math.lgamma(n + 1) - torch.lgamma(i + 1) - torch.lgamma(n - i + 1)
    return float(torch.exp(log_choose + i * math.log(rho) + (n - i) * math.log1p(-rho)).sum())


def false_dead_probability(n: int, eps: float, rho0: float) -> float:
    """``P(Binomial(n, ρ₀) ≤ ⌊ε n⌋)``."""
    return binomial_cdf(n, math.floor(eps * n), rho0)


def below_count(n: int, rho: float) -> int:
    """``K = max{k : k/n < ρ}``, with the detector's own floating-point comparison."""
    k = math.ceil(rho * n) - 1
    while (k + 1) / n < rho:
        k += 1
    while k >= 0 and k / n >= rho:
        k -= 1
    return k


def false_rare_probability(n: int, rho: float, rho1: float) -> float:
    """``P(1 ≤ Binomial(n, ρ₁) ≤ K)`` (module docstring)."""
    return max(binomial_cdf(n, below_count(n, rho), rho1) - (1.0 - rho1) ** n, 0.0)


def first_above(f: Callable[[int], int], n: int) -> int:
    """The smallest ``m > n`` with ``f(m) > f(n)`` for a non-decreasing, unbounded ``f``."""
    low, high = n, 2 * n
    while f(high) <= f(n):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if f(middle) > f(n) else (middle, high)
    return high


def smallest_sample(count: Callable[[int], int], rate: float) -> int:
    """The smallest ``n`` from which on ``P(Binomial(m, rate) ≤ count(m)) ≤`` :data:`MAX_FALSE_DEAD`
    for every ``m ≥ n`` (``count`` non-decreasing and unbounded).

    The probability is a sawtooth: it decreases in ``m`` while ``count(m)`` stays, and jumps up where
    ``count`` steps. So the segments of constant ``count`` are walked: the answer is found at the first
    segment whose first (highest) value is below the bound, as the first good ``m`` of the segment before
    (found by bisection) or that segment's start; the peaks decrease from there on (a binomial lower
    tail below its mean, ``count(m)/m < rate``)."""
    def probability(m: int) -> float:
        return binomial_cdf(m, count(m), rate)

    n, answer = 1, None
    while probability(n) > MAX_FALSE_DEAD:
        end = first_above(count, n)
        answer = None
        if probability(end - 1) <= MAX_FALSE_DEAD:
            low, high = n, end - 1
            while low < high:
                middle = (low + high) // 2
                low, high = (middle + 1, high) if probability(middle) > MAX_FALSE_DEAD else (low, middle)
            answer = low
        n = end
    return n if answer is None else answer


def min_dead_tokens(eps: float = DEAD_FREQ, rho0: float = DEAD_NULL_FREQ) -> int:
    """The ``n`` from which on ``false_dead_probability(n, ε, ρ₀) ≤`` :data:`MAX_FALSE_DEAD`."""
    closed_form = math.ceil(math.log(MAX_FALSE_DEAD) / math.log1p(-rho0))
    if eps == 0:
        return closed_form
    return smallest_sample(lambda n: math.floor(eps * n), rho0)


def rare_null_freq(rho: float, rho1: float | None) -> float:
    """ρ₁: ``min(2ρ, 1)`` by default, else ``rho1`` checked to lie in (ρ, 1]."""
    if rho1 is None:
        return min(2.0 * rho, 1.0)
    if rho == 1.0:
        return check_range("rarely-active null frequency ρ₁", rho1, rho, 1.0)
    return check_range("rarely-active null frequency ρ₁", rho1, rho, 1.0, low_open=True)


def min_rare_tokens(rho: float = RARE_FREQ, rho1: float | None = None) -> int:
    """The ``n`` from which on ``P(Binomial(n, ρ₁) ≤ K(n)) ≤`` :data:`MAX_FALSE_DEAD` (module docstring)."""
    rho1 = rare_null_freq(rho, rho1)
    if rho1 == 1.0:
        return 1
    return smallest_sample(lambda n: below_count(n, rho), rho1)


def require_sample(stats: ActivationStatistics, needed: int, detection: str, null_freq: float, mistaken: str,
                   option: str) -> None:
    """A :class:`CaptureError` when the capture saw fewer than ``needed`` tokens, the smallest sample
    in which a neuron active on a share ``null_freq`` of tokens ``mistaken`` (is called dead, …)
    with probability ≤ :data:`MAX_FALSE_DEAD`; it names the remedies (``--max-tokens``, ``option``)."""
    if stats.n_tokens < needed:
        raise CaptureError(
            f"{detection} detection needs at least {needed} analysed tokens (so that a neuron active on a share "
            f"{null_freq:g} of tokens {mistaken} with probability ≤ {MAX_FALSE_DEAD:g}); the capture saw "
            f"{stats.n_tokens}: analyse more tokens (--max-tokens) or raise {option}")


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
    require_sample(stats, min_dead_tokens(eps, null_freq), "dead-neuron", null_freq, "is called dead",
                   "--dead-null-freq")
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
                         max_freq: float = RARE_FREQ, null_freq: float | None = None,
                         warn_fraction: float = WARN_FRACTION) -> dict[int, Detection]:
    """Rarely active neurons: ``0 < freq_j < ρ``, ρ ∈ (0, 1], with the null of the module docstring
    (ρ₁ = ``null_freq``, default ``min(2ρ, 1)``). Scores: ``freq``. Fewer tokens than
    :func:`min_rare_tokens` is a :class:`CaptureError`."""
    max_freq = check_range("rarely-active frequency ρ", max_freq, 0.0, 1.0, low_open=True)
    null_freq = rare_null_freq(max_freq, null_freq)
    require_sample(stats, min_rare_tokens(max_freq, null_freq), "rarely-active", null_freq,
                   "looks rarely active or dead", "--rare-null-freq")
    p = false_rare_probability(stats.n_tokens, max_freq, null_freq) if stats.n_tokens > 0 else 0.0
    out = {}
    for layer in select_layers(stats, layers):
        freq = _frequencies(stats, layer)
        rare = found((freq > 0) & (freq < max_freq))
        null = calibrate(f"active at rate {null_freq:g}: P(1 ≤ Bin(n, ρ₁) < ρn) = {p:.3g} per neuron",
                         np.full(freq.size, p), rare.size, warn_fraction)
        out[layer] = Detection("rarely_active", layer, rare, freq, "freq",
                               {"max_freq": max_freq, "tau": stats.threshold, "null_freq": null_freq,
                                "warn_fraction": warn_fraction}, stats.n_tokens, null=null)
    return out


def dead_fraction_sweep(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                        eps: float = DEAD_FREQ) -> dict:
    """Dead fraction per layer at every τ of the capture's sweep: ``#{j : sweep_count_j(τ)/n ≤ ε} / W``.

    Returns ``{"tau": [S], "layers": [L], "dead_percent": [L][S]}`` (percent). A capture without
    the sweep (``CaptureConfig.sweep = ()``) is a :class:`CaptureError`.
    """
    eps = check_range("dead-neuron frequency ε", eps, 0.0, 1.0, high_open=True)
    chosen = select_layers(stats, layers)
    if not stats.sweep:
        raise CaptureError("the τ sweep was not captured (CaptureConfig.sweep is empty; in the suite a case "
                           "that reads it declares the capture part 'sweep')")
    if stats.n_tokens <= 0:
        raise CaptureError("the τ sweep needs at least one analysed token; the capture saw none")
    percent = [(100.0 * (stats.layer(layer)["sweep_count"] / stats.n_tokens <= eps).mean(axis=1)).tolist()
               for layer in chosen]
    return {"tau": list(stats.sweep), "layers": list(chosen), "dead_percent": percent, "eps": eps}
