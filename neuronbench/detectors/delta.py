"""Δ-sensitive channels of state-space models (Mamba).

``Δ_t = softplus(W_dt · dt_t + b_dt)`` is ``intermediate_size`` wide: channel ``d`` of Δ is neuron
``d`` of the same layer. The score is the spread of the channel's log time scale over the
analysed tokens, the population standard deviation::

    s_d = sqrt( Σ_t (log Δ_{t,d})² / n − (Σ_t log Δ_{t,d} / n)² )

(from the capture's ``log_delta_sum``/``log_delta_sum_sq``; clipped at 0 against rounding). The
``top_k`` channels by score are reported (method ``delta_log_std``).

**Null (chance spread).** Every channel's Δ depends on the input, so the question is whether the
top channels stand out from the layer's other channels by more than chance: the null is a layer
whose channels differ only by chance, their scores Normal around the layer's median ``m`` with the
robust spread ``σ = 1.4826 · MAD`` (median absolute deviation). Each channel's ``robust_z =
(s_d − m)/σ`` is reported, and a null channel passes the top-k cutoff ``c`` (the k-th highest score)
with ``p = ½ erfc((c − m)/(σ √2))``, so the null count is ``W · p`` (``p = 0`` when ``σ = 0`` and ``c > m``).
A null count near ``k`` says the top-k are not special. Models without Δ
(transformers) use input-change sensitivity instead (:mod:`neuronbench.detectors.sensitivity`).
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import numpy as np

from neuronbench.capture import ActivationStatistics
from neuronbench.detectors.null import WARN_FRACTION, NullCalibration, calibrate
from neuronbench.detectors.result import Detection, check_count, highest, select_layers
from neuronbench.errors import AnalysisUnavailableError, CaptureError

TOP_K = 10
"""Neurons reported per layer by the sensitivity detectors (``--top-k``)."""

ALTERNATIVE = ("input-change sensitivity: neuronbench.detectors.input_change_sensitivity(model, adapter, "
               "windows) (registry name 'input_change')")


def require_delta(adapter: object) -> None:
    """Raise :class:`AnalysisUnavailableError` naming the alternative for a model without Δ."""
    if not getattr(adapter, "has_ssm", False):
        family = getattr(adapter, "family", type(adapter).__name__)
        raise AnalysisUnavailableError(
            f"Δ-sensitivity needs the SSM time step Δ, which {family} models do not have; use {ALTERNATIVE}"
        )


def log_delta_spread(stats: ActivationStatistics, layer: int) -> np.ndarray:
    """``s_d`` (module docstring) for every channel of ``layer``."""
    arrays = stats.layer(layer)
    if "log_delta_sum" not in arrays:
        raise AnalysisUnavailableError(
            f"layer {layer} has no Δ statistics: they exist only for state-space models (Mamba) captured with "
            f"CaptureConfig(delta=True or None); for a model without Δ use {ALTERNATIVE}"
        )
    if stats.n_tokens < 2:
        raise CaptureError(f"the spread of log Δ needs at least 2 tokens; the capture saw {stats.n_tokens}")
    mean = arrays["log_delta_sum"] / stats.n_tokens
    return np.sqrt(np.maximum(arrays["log_delta_sum_sq"] / stats.n_tokens - mean**2, 0.0))


def chance_spread(scores: np.ndarray, chosen: np.ndarray, warn_fraction: float) -> tuple[np.ndarray, NullCalibration]:
    """``(robust_z per channel, null calibration of the top-k cutoff)`` (module docstring)."""
    median = float(np.median(scores))
    sigma = 1.4826 * float(np.median(np.abs(scores - median)))
    cutoff = float(scores[chosen].min())
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (scores - median) / sigma if sigma > 0 else np.where(scores > median, np.inf, 0.0)
    p = 0.5 * math.erfc((cutoff - median) / (sigma * math.sqrt(2))) if sigma > 0 else float(cutoff <= median)
    return z, calibrate("chance spread: Normal(median, 1.4826·MAD) of the layer's scores", np.full(scores.size, p),
                        chosen.size, warn_fraction)


def detect_delta_sensitive(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                           top_k: int = TOP_K, warn_fraction: float = WARN_FRACTION) -> dict[int, Detection]:
    """The ``top_k`` channels per layer by ``s_d`` (all of them if the layer is narrower), with the
    chance-spread null. ``details["robust_z"]``: each channel's robust z-score."""
    k = check_count("top-k", top_k)
    out = {}
    for layer in select_layers(stats, layers):
        spread = log_delta_spread(stats, layer)
        chosen = highest(spread, k)
        z, null = chance_spread(spread, chosen, warn_fraction)
        out[layer] = Detection("delta_log_std", layer, chosen, spread, "log_delta_std",
                               {"top_k": k, "warn_fraction": warn_fraction}, stats.n_tokens, {"robust_z": z}, null)
    return out
