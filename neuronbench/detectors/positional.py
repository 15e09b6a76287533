"""Positional neurons (Voita et al. 2023 §5), from the per-position counts of full windows.

Over the ``n`` full-length windows of length ``T`` (optionally only their first ``positions``
positions), ``fr_j(pos) = pos_active_j(pos) / pos_tokens(pos)`` and ``fr_j = mean_pos fr_j(pos)``.

* Mutual information between "active" and position (natural log, nats; ``0·log 0 := 0``)::

      I_j = (1/T) Σ_pos [ fr(pos) log(fr(pos)/fr) + (1 − fr(pos)) log((1 − fr(pos))/(1 − fr)) ]

  positional iff ``I_j > 0.05`` (method ``positional_mi``).
* Pearson score (the seed's): ``r̄_j = (1/n) Σ_windows r(pos, a_j)`` (r := 0 for a neuron constant
  within a window); positional iff ``|r̄_j| > 0.3`` (method ``positional_pearson``).

**Null of the MI detector** (:func:`mi_null`): no positional signal, each position's count of
activations ``Binomial(n, q_j)`` with ``q_j = fr_j`` the neuron's observed frequency. This is the
*parametric* form of permuting positions within windows; it is conservative (when a neuron's
activity varies between windows, the permutation null has a smaller per-position variance,
``Σ_w q_w (1 − q_w) ≤ n q (1 − q)``). The null distribution of ``I`` depends on ``(n, T, q)`` only, and
on ``q`` through ``min(q, 1 − q)`` (``I`` is symmetric under active ↔ inactive), so it is simulated
once per call on a grid of ``q`` (:data:`NULL_DRAWS` draws per grid point, seeded) and
interpolated: ``p_j = P_null(I > min_mi | q_j)``. The plug-in estimator is biased upwards: with
``N = nT`` samples, ``2N·Î`` is asymptotically ``χ²`` with ``(2 − 1)(T − 1)`` degrees of freedom under
independence (the G-test), hence ``E[Î] ≈ (T − 1) / (2nT)`` (Miller–Madow), ≈ 0.062 nats for
``n = 8`` windows: above the 0.05 threshold for every neuron. The **bias-corrected MI** reported
next to the raw one (``details["mi_corrected"]``) subtracts the simulated null mean at the
neuron's ``q``, ``Î_j − E_null[Î | q_j]``; it equals the Miller–Madow correction for large ``nq``
and stays right for rare neurons, whose bias is smaller. **Minimum sample**: ``n ≥
(T − 1)/(T · min_mi)`` full windows (:func:`min_mi_windows`; 20 for the defaults): below it the
null bias of a neuron without any positional signal exceeds half the threshold.

**Null of the Pearson detector**: under a random permutation of positions within a window, ``r`` of
any non-constant window has mean 0 and variance exactly ``1/(T − 1)``; over ``n`` independent
windows ``r̄ ≈ Normal(0, 1/(n(T − 1)))`` (constant windows give ``r = 0``, which only lowers the
spread), so ``p = erfc(min_abs_r · sqrt(n(T − 1)/2))`` for every neuron. **Minimum sample**:
``n ≥ 9/(min_abs_r² (T − 1))`` windows (:func:`min_pearson_windows`: the null's standard deviation
at most a third of the threshold).

Type of a positional neuron (Voita §5, Figure 7), from its profile ``fr(pos)``
(:func:`positional_type`), in two parts:

* **strength** (:func:`positional_strength`): ``strong`` when the profile reaches both 0 and 1
  (``min fr(pos) ≤ δ`` and ``max fr(pos) ≥ 1 − δ``, δ = :data:`EXTREME` = 0.05, option
  ``--positional-extreme``): the neuron is never active at some positions and always active at
  others, as in the paper's top row; ``weak`` otherwise (the pattern is there but the frequency
  stays inside (δ, 1 − δ) somewhere: the paper's bottom row).
* **shape** (:func:`positional_shape`), relative to the profile's own range: each position is
  *high* when ``fr(pos) ≥ lo + 2/3·(hi − lo)``, *low* when ``fr(pos) ≤ lo + 1/3·(hi − lo)`` and
  keeps the previous state in between (hysteresis against noise; the first position starts at
  the nearer side of the midpoint), with ``lo``/``hi`` the profile's minimum/maximum. With ``R``
  runs of high positions: ``oscillatory`` if ``R ≥ 3``; ``both extremes`` if ``R = 2`` and the runs
  touch the first and the last position; for ``R = 1`` with the run touching exactly one end,
  ``one extreme`` when the change is a step (at most a quarter of the positions lie strictly
  between the two hysteresis levels) and ``gradual`` when it is a ramp (more than a quarter: the
  paper's "less explicit" patterns of larger models; our name); ``other`` otherwise (a flat
  profile, a range in the middle, ...).

So a 1→0 step is a strong one-extreme neuron, a 0.6→0.4 step a weak one-extreme neuron, and a
0.3→0.5 ramp a weak gradual one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from neuronbench.capture import ActivationStatistics
from neuronbench.detectors.null import WARN_FRACTION, calibrate
from neuronbench.detectors.result import Detection, check_count, check_range, found, select_layers
from neuronbench.errors import CaptureError

POSITIONAL_MI = 0.05
"""Mutual-information threshold (nats): positional iff ``I > 0.05``."""
POSITIONAL_R = 0.3
"""Pearson threshold: positional iff ``|r̄| > 0.3``."""
POSITIONAL_TYPES = ("oscillatory", "both extremes", "one extreme", "gradual", "other")
POSITIONAL_STRENGTHS = ("strong", "weak")
EXTREME = 0.05
"""δ: a strong positional neuron's frequency comes within δ of both 0 and 1."""
RAMP_SHARE = 0.25
"""A one-sided change with more than this share of positions between the hysteresis levels is gradual."""
NULL_DRAWS = 1000
"""Simulated null profiles per grid point of the MI null."""
NULL_SEED = 0
"""Seed of the MI null's simulation (the null is deterministic)."""


def min_mi_windows(window: int, min_mi: float) -> int:
    """Full windows the MI detector needs: ``⌈(T − 1)/(T · min_mi)⌉`` (1 when ``min_mi = 0``)."""
    return 1 if min_mi == 0 else math.ceil((window - 1) / (window * min_mi))


def min_pearson_windows(window: int, min_abs_r: float) -> int:
    """Full windows the Pearson detector needs: ``⌈9/(min_abs_r² (T − 1))⌉`` (1 when ``min_abs_r = 0``)."""
    return 1 if min_abs_r == 0 else math.ceil(9 / (min_abs_r**2 * (window - 1)))


def _require_windows(stats: ActivationStatistics, needed: int, what: str) -> None:
    if stats.n_windows < needed:
        raise CaptureError(
            f"{what} needs at least {needed} full-length windows of {stats.window} tokens at this threshold (below "
            f"that, the null of a neuron without positional signal is too close to the threshold); the capture saw "
            f"{stats.n_windows}: analyse more tokens (--max-tokens)")


@dataclass(frozen=True)
class MutualInformationNull:
    """The simulated MI null on a grid of ``q = min(fr, 1 − fr)``: exceedance and mean per grid point."""

    grid: np.ndarray
    exceed: np.ndarray
    mean: np.ndarray
    draws: int

    def at(self, fr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(P_null(I > min_mi), E_null[I])`` at each neuron's marginal frequency ``fr``."""
        q = np.minimum(fr, 1.0 - fr)
        return np.interp(q, self.grid, self.exceed), np.interp(q, self.grid, self.mean)

    def monte_carlo_std(self, p: np.ndarray) -> float:
        """A bound on the Monte Carlo error of ``Σ p_j`` (errors of neurons sharing a grid point add up)."""
        return float(np.sqrt(p * (1 - p) / self.draws).sum())


def mi_null(n_windows: int, positions: int, min_mi: float, draws: int = NULL_DRAWS,
            seed: int = NULL_SEED) -> MutualInformationNull:
    """Simulate ``I`` of profiles with per-position counts ``Binomial(n, q)`` (module docstring)."""
    rng = np.random.default_rng(seed)
    grid = np.unique(np.concatenate([np.linspace(0.0, 0.5, 41),
                                     np.geomspace(0.25 / (n_windows * positions), 0.05, 24)]))
    exceed, mean = np.empty(grid.size), np.empty(grid.size)
    for i, q in enumerate(grid):
        profiles = rng.binomial(n_windows, q, size=(positions, draws)) / n_windows
        mi = positional_mutual_information(profiles)
        exceed[i], mean[i] = (mi > min_mi).mean(), mi.mean()
    return MutualInformationNull(grid, exceed, mean, draws)


def _check_windows(stats: ActivationStatistics, positions: int | None) -> int:
    """The number of positions analysed; errors when there is no full window to analyse."""
    if stats.n_windows < 1:
        raise CaptureError(
            f"positional statistics need at least one full-length window of {stats.window} tokens; the "
            "capture saw none (the text is shorter than one window, or it ran with positional=False)"
        )
    if positions is None:
        return stats.window
    positions = check_count("positions", positions, low=2)
    if positions > stats.window:
        raise CaptureError(f"positional analysis over {positions} positions needs windows of at least that "
                           f"length; the capture's windows have {stats.window} tokens")
    return positions


def position_frequencies(stats: ActivationStatistics, layer: int, positions: int | None = None) -> np.ndarray:
    """``fr_j(pos)`` as ``[T, W]`` over full windows (first ``positions`` positions)."""
    t = _check_windows(stats, positions)
    arrays = stats.layer(layer)
    return arrays["pos_active"][:t] / arrays["pos_tokens"][:t, None]


def _p_log_p_over_q(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``p log(p/q)`` elementwise, 0 where ``p = 0`` (``q > 0`` wherever ``p > 0``)."""
    q = np.broadcast_to(q, p.shape)
    out = np.zeros_like(p, dtype=np.float64)
    nonzero = p > 0
    out[nonzero] = p[nonzero] * np.log(p[nonzero] / q[nonzero])
    return out


def positional_mutual_information(fr_pos: np.ndarray) -> np.ndarray:
    """``I_j`` (module docstring) from ``fr_pos [T, W]``."""
    fr = fr_pos.mean(axis=0, keepdims=True)
    terms = _p_log_p_over_q(fr_pos, fr) + _p_log_p_over_q(1.0 - fr_pos, 1.0 - fr)
    return terms.mean(axis=0)


def positional_strength(profile: np.ndarray, extreme: float = EXTREME) -> str:
    """``strong`` iff the profile ``[T]`` comes within ``extreme`` of both 0 and 1, else ``weak``."""
    return "strong" if profile.min() <= extreme and profile.max() >= 1 - extreme else "weak"


def positional_type(profile: np.ndarray, extreme: float = EXTREME) -> tuple[str, str]:
    """``(shape, strength)`` of one ``fr(pos)`` profile ``[T]`` (module docstring)."""
    return positional_shape(profile), positional_strength(profile, extreme)


def positional_shape(profile: np.ndarray) -> str:
    """The shape of one ``fr(pos)`` profile ``[T]`` (rule in the module docstring)."""
    lo, hi = float(profile.min()), float(profile.max())
    if hi <= lo:
        return "other"
    high_at, low_at = lo + 2 * (hi - lo) / 3, lo + (hi - lo) / 3
    state = profile[0] >= (lo + hi) / 2
    high = np.empty(profile.size, dtype=bool)
    for i, value in enumerate(profile):
        state = True if value >= high_at else False if value <= low_at else state
        high[i] = state
    starts = np.flatnonzero(high & ~np.r_[False, high[:-1]])
    ends = np.flatnonzero(high & ~np.r_[high[1:], False])
    runs = starts.size
    at_start, at_end = bool(high[0]), bool(high[-1])
    if runs >= 3:
        return "oscillatory"
    if runs == 1 and at_start != at_end:
        between = float(((profile > low_at) & (profile < high_at)).mean())
        return "gradual" if between > RAMP_SHARE else "one extreme"
    if runs == 2 and starts[0] == 0 and ends[-1] == profile.size - 1:
        return "both extremes"
    return "other"


def _types(fr_pos: np.ndarray, indices: np.ndarray, extreme: float) -> dict[str, dict[int, str]]:
    """``{"types": {j: shape}, "strength": {j: strong/weak}}`` of the detected neurons."""
    typed = {int(j): positional_type(fr_pos[:, j], extreme) for j in indices}
    return {"types": {j: t[0] for j, t in typed.items()}, "strength": {j: t[1] for j, t in typed.items()}}


def detect_positional(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                      min_mi: float = POSITIONAL_MI, positions: int | None = None,
                      warn_fraction: float = WARN_FRACTION, extreme: float = EXTREME) -> dict[int, Detection]:
    """Positional neurons by mutual information: ``I_j > min_mi`` (``min_mi`` ∈ [0, ln 2)), with the
    null of the module docstring.

    Scores: ``I_j`` (nats). ``details``: ``types`` and ``strength`` (of each positional neuron),
    ``mi_corrected`` (bias-corrected MI of every neuron), ``n_windows``.
    """
    min_mi = check_range("positional mutual-information threshold", min_mi, 0.0, float(np.log(2)),
                         high_open=True)
    extreme = check_range("positional extreme δ", extreme, 0.0, 0.5, high_open=True)
    t = _check_windows(stats, positions)
    _require_windows(stats, min_mi_windows(t, min_mi), f"positional MI over {t} positions (I > {min_mi:g})")
    null = mi_null(stats.n_windows, t, min_mi)
    out = {}
    for layer in select_layers(stats, layers):
        fr_pos = position_frequencies(stats, layer, positions)
        mi = positional_mutual_information(fr_pos)
        indices = found(mi > min_mi)
        p, bias = null.at(fr_pos.mean(axis=0))
        calibration = calibrate("binomial per-position counts at the neuron's frequency (simulated)", p, indices.size,
                                warn_fraction, null.monte_carlo_std(p))
        out[layer] = Detection("positional_mi", layer, indices, mi, "mutual_information",
                               {"min_mi": min_mi, "positions": fr_pos.shape[0], "tau": stats.threshold,
                                "activation": stats.activation, "warn_fraction": warn_fraction, "extreme": extreme},
                               stats.n_windows * fr_pos.shape[0],
                               {**_types(fr_pos, indices, extreme), "n_windows": stats.n_windows,
                                "mi_corrected": mi - bias}, calibration)
    return out


def detect_positional_pearson(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                              min_abs_r: float = POSITIONAL_R, warn_fraction: float = WARN_FRACTION,
                              extreme: float = EXTREME) -> dict[int, Detection]:
    """Positional neurons by the seed's score: ``|r̄_j| > min_abs_r`` (``min_abs_r`` ∈ [0, 1)), with the
    null of the module docstring.

    Scores: ``r̄_j`` (signed). ``details``: ``types`` and ``strength`` of each positional neuron.
    """
    min_abs_r = check_range("positional Pearson threshold |r|", min_abs_r, 0.0, 1.0, high_open=True)
    extreme = check_range("positional extreme δ", extreme, 0.0, 0.5, high_open=True)
    _check_windows(stats, None)
    _require_windows(stats, min_pearson_windows(stats.window, min_abs_r), f"the Pearson score (|r| > {min_abs_r:g})")
    p = math.erfc(min_abs_r * math.sqrt(stats.n_windows * (stats.window - 1) / 2))
    out = {}
    for layer in select_layers(stats, layers):
        fr_pos = position_frequencies(stats, layer)
        r = stats.layer(layer)["pearson_sum"] / stats.n_windows
        indices = found(np.abs(r) > min_abs_r)
        calibration = calibrate(f"permuted positions: r̄ ~ Normal(0, 1/(n(T−1))), p = {p:.3g} per neuron",
                                np.full(r.size, p), indices.size, warn_fraction)
        out[layer] = Detection("positional_pearson", layer, indices, r, "mean_pearson_r",
                               {"min_abs_r": min_abs_r, "warn_fraction": warn_fraction, "extreme": extreme},
                               stats.n_windows * stats.window,
                               {**_types(fr_pos, indices, extreme), "n_windows": stats.n_windows}, calibration)
    return out
