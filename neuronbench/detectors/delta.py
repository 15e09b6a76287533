"""Δ-sensitive channels of state-space models (Mamba).

``Δ_t = softplus(W_dt · dt_t + b_dt)`` is ``intermediate_size`` wide: channel ``d`` of Δ is neuron
``d`` of the same layer. The score is the spread of the channel's log time scale over the
analysed tokens, the population standard deviation::

    s_d = sqrt( Σ_t (log Δ_{t,d})² / n − (Σ_t log Δ_{t,d} / n)² )

(from the capture's ``log_delta_sum``/``log_delta_sum_sq``; clipped at 0 against rounding). The
``top_k`` channels by score are reported (method ``delta_log_std``). Models without Δ
(transformers) use input-change sensitivity instead (:mod:`neuronbench.detectors.sensitivity`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neuronbench.capture import ActivationStatistics
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


def detect_delta_sensitive(stats: ActivationStatistics, *, layers: Sequence[int] | str | None = None,
                           top_k: int = TOP_K) -> dict[int, Detection]:
    """The ``top_k`` channels per layer by ``s_d`` (all of them if the layer is narrower)."""
    k = check_count("top-k", top_k)
    out = {}
    for layer in select_layers(stats, layers):
        spread = log_delta_spread(stats, layer)
        out[layer] = Detection("delta_log_std", layer, highest(spread, k), spread, "log_delta_std",
                               {"top_k": k}, stats.n_tokens)
    return out
