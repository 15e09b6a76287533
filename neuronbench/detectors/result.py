"""What every detector returns, and the checks every detector applies to its thresholds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from neuronbench.adapters.base import parse_layers
from neuronbench.capture import ActivationStatistics
from neuronbench.detectors.null import NullCalibration
from neuronbench.errors import ConfigError


@dataclass(frozen=True)
class Detection:
    """One detector's answer for one layer.

    ``indices`` are the neurons found (sorted); ``scores`` the per-neuron score behind the
    decision for *every* neuron of the layer (its name in ``score``); ``thresholds`` every
    threshold used; ``n_tokens`` the number of tokens (or positions) the scores are computed
    over; ``method`` names the method; ``details`` holds method-specific extras (e.g. the
    covered tokens of each token-detecting neuron); ``null`` how many neurons the same detector
    finds on a null of the same sample size (:mod:`neuronbench.detectors.null`; ``None`` for a
    detector without one).
    """

    method: str
    layer: int
    indices: np.ndarray
    scores: np.ndarray
    score: str
    thresholds: Mapping[str, float]
    n_tokens: int
    details: Mapping[str, object] = field(default_factory=dict)
    null: NullCalibration | None = None

    @property
    def width(self) -> int:
        return int(self.scores.size)

    def record(self) -> dict:
        """A JSON-ready summary (no per-neuron score array)."""
        return {"method": self.method, "layer": self.layer, "score": self.score,
                "indices": self.indices.tolist(), "count": int(self.indices.size), "width": self.width,
                "thresholds": dict(self.thresholds), "n_tokens": self.n_tokens,
                **({} if self.null is None else self.null.record())}


def found(mask: np.ndarray) -> np.ndarray:
    """Sorted int64 indices where ``mask`` holds."""
    return np.flatnonzero(mask).astype(np.int64)


def highest(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``min(k, W)`` highest-scoring neurons (ties broken by lower index), sorted by index."""
    order = np.lexsort((np.arange(scores.size), -scores))
    return np.sort(order[:k]).astype(np.int64)


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> float:
    """Return ``value`` if it lies in the interval, else raise :class:`ConfigError` naming it."""
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or np.isnan(value) \
            or below or above:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def check_count(name: str, value: int, low: int = 1) -> int:
    """Return ``value`` if it is an integer ``≥ low``, else raise :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer ≥ {low}, got {value!r}")
    return int(value)


def select_layers(stats: ActivationStatistics, layers: Sequence[int] | str | None) -> tuple[int, ...]:
    """The requested captured layers (all captured ones when ``layers`` is None)."""
    if layers is None:
        return tuple(sorted(stats.layers))
    chosen = parse_layers(layers, max(stats.layers) + 1)
    for layer in chosen:
        stats.layer(layer)
    return chosen
