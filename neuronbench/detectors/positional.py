"""Positional neurons (Voita et al. 2023 §5), from the per-position counts of full windows.

Over the ``n`` full-length windows of length ``T`` (optionally only their first ``positions``
positions), ``fr_j(pos) = pos_active_j(pos) / pos_tokens(pos)`` and ``fr_j = mean_pos fr_j(pos)``.

* Mutual information between "active" and position (natural log, nats; ``0·log 0 := 0``)::

      I_j = (1/T) Σ_pos [ fr(pos) log(fr(pos)/fr) + (1 − fr(pos)) log((1 − fr(pos))/(1 − fr)) ]

  positional iff ``I_j > 0.05`` (method ``positional_mi``).
* Pearson score (the seed's): ``r̄_j = (1/n) Σ_windows r(pos, a_j)`` (r := 0 for a neuron constant
  within a window); positional iff ``|r̄_j| > 0.3`` (method ``positional_pearson``).

Type of a positional neuron, a cheap rule on its profile ``fr(pos)`` (:func:`positional_type`):
each position is *high* when ``fr(pos) ≥ lo + 2/3·(hi − lo)``, *low* when
``fr(pos) ≤ lo + 1/3·(hi − lo)`` and keeps the previous state in between (hysteresis against
noise; the first position starts at the nearer side of the midpoint), with ``lo``/``hi`` the
profile's minimum/maximum. With ``R`` runs of high positions:
``oscillatory`` if ``R ≥ 3``; ``one extreme`` if ``R = 1`` and the run touches exactly one end of
the window; ``both extremes`` if ``R = 2`` and the runs touch the first and the last position;
``other`` otherwise (a flat profile, a range in the middle, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neuronbench.capture import ActivationStatistics
from neuronbench.detectors.result import Detection, check_count, check_range, found, select_layers
from neuronbench.errors import CaptureError

POSITIONAL_MI = 0.05
"""Mutual-information threshold (nats): positional iff ``I > 0.05``."""
POSITIONAL_R = 0.3
"""Pearson threshold: positional iff ``|r̄| > 0.3``."""
POSITIONAL_TYPES = ("oscillatory", "one extreme", "both extremes", "other")


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


def positional_type(profile: np.ndarray) -> str:
    """Classify one ``fr(pos)`` profile ``[T]`` (rule in the module docstring)."""
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
        return "one extreme"
    if runs == 2 and starts[0] == 0 and ends[-1] == profile.size - 1:
        return "both extremes"
    return "other"


def _types(fr_pos: np.ndarray, indices: np.ndarray) -> dict[int, str]:
    return {int(j): positional_type(fr_pos[:, j]) for j in indices}


def detect_positional(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                      min_mi: float = POSITIONAL_MI, positions: int | None = None) -> dict[int, Detection]:
    """Positional neurons by mutual information: ``I_j > min_mi`` (``min_mi`` ∈ [0, ln 2)).

    Scores: ``I_j`` (nats). ``details["types"]``: type of each positional neuron.
    """
    min_mi = check_range("positional mutual-information threshold", min_mi, 0.0, float(np.log(2)),
                         high_open=True)
    out = {}
    for layer in select_layers(stats, layers):
        fr_pos = position_frequencies(stats, layer, positions)
        mi = positional_mutual_information(fr_pos)
        indices = found(mi > min_mi)
        out[layer] = Detection("positional_mi", layer, indices, mi, "mutual_information",
                               {"min_mi": min_mi, "positions": fr_pos.shape[0], "tau": stats.threshold},
                               stats.n_windows * fr_pos.shape[0],
                               {"types": _types(fr_pos, indices), "n_windows": stats.n_windows})
    return out


def detect_positional_pearson(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                              min_abs_r: float = POSITIONAL_R) -> dict[int, Detection]:
    """Positional neurons by the seed's score: ``|r̄_j| > min_abs_r`` (``min_abs_r`` ∈ [0, 1)).

    Scores: ``r̄_j`` (signed). ``details["types"]``: type of each positional neuron.
    """
    min_abs_r = check_range("positional Pearson threshold |r|", min_abs_r, 0.0, 1.0, high_open=True)
    out = {}
    for layer in select_layers(stats, layers):
        fr_pos = position_frequencies(stats, layer)
        r = stats.layer(layer)["pearson_sum"] / stats.n_windows
        indices = found(np.abs(r) > min_abs_r)
        out[layer] = Detection("positional_pearson", layer, indices, r, "mean_pearson_r",
                               {"min_abs_r": min_abs_r}, stats.n_windows * stats.window,
                               {"types": _types(fr_pos, indices), "n_windows": stats.n_windows})
    return out
