"""The result of one capture pass: per-layer numpy arrays plus what produced them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from neuronbench.capture.tokens import COUNT_TIERS
from neuronbench.errors import CaptureError


@dataclass
class ActivationStatistics:
    """The result of one capture pass: per-layer arrays plus what produced them.

    ``activation`` names the activation rule (:mod:`neuronbench.activation`) that ``threshold``
    (τ) belongs to; each layer's ``active_scale`` is its layer scale ``s_l`` (1 for an absolute τ).
    ``token_tier``/``token_slot`` locate each token row in the tiers ``token_active_tier{i}``;
    ``trigram_tokens``/``trigram_occurrences`` are the trigram index (``None`` when not kept).
    """

    layers: dict[int, dict[str, np.ndarray]]
    n_tokens: int
    n_windows: int
    window: int
    threshold: float
    activation: str
    sweep: tuple[float, ...]
    token_ids: np.ndarray | None
    token_occurrences: np.ndarray | None
    excluded_token_ids: tuple[int, ...]
    token_tier: np.ndarray | None = None
    token_slot: np.ndarray | None = None
    trigram_tokens: np.ndarray | None = None
    trigram_occurrences: np.ndarray | None = None

    GLOBAL_ARRAYS = ("token_ids", "token_occurrences", "token_tier", "token_slot", "trigram_tokens",
                     "trigram_occurrences")
    """The fields that are arrays shared by all layers (for storage)."""

    def __post_init__(self) -> None:
        for name in self.GLOBAL_ARRAYS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=np.int64))

    def layer(self, layer: int) -> dict[str, np.ndarray]:
        if layer not in self.layers:
            raise CaptureError(f"layer {layer} was not captured; captured: {sorted(self.layers)}")
        return self.layers[layer]

    def freq(self, layer: int) -> np.ndarray:
        """Activation frequency ``freq_j = active_count_j / n_tokens``."""
        return self.layer(layer)["active_count"] / self.n_tokens

    def mean(self, layer: int) -> np.ndarray:
        """Mean activation ``Σ a / n_tokens`` (the value used by mean-ablation)."""
        return self.layer(layer)["sum"] / self.n_tokens

    def token_active(self, layer: int, neurons: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Exact ``[V_seen, len(neurons)]`` int64 count table ``#{occurrences of token t : a_j > τ}``,
        rows in the order of ``token_ids`` (all neurons when ``neurons`` is None). Materialise it
        in chunks of neurons for wide layers: it is 8 bytes per entry."""
        arrays = self.layer(layer)
        if self.token_ids is None:
            raise CaptureError("per-token counts were not captured: use CaptureConfig(token_counts=True)")
        columns = np.arange(arrays["active_count"].size) if neurons is None else np.asarray(neurons)
        contiguous = columns.size > 0 and np.array_equal(columns, np.arange(columns[0], columns[0] + columns.size))
        out = np.zeros((self.token_ids.size, columns.size), dtype=np.int64)
        for tier in range(len(COUNT_TIERS)):
            rows = np.flatnonzero(self.token_tier == tier)
            if rows.size:
                table = arrays[f"token_active_tier{tier}"]
                part = table[:, columns[0]:columns[0] + columns.size] if contiguous else table[:, columns]
                out[rows] = part[self.token_slot[rows]]
        return out

    def metadata(self) -> dict:
        return {
            "n_tokens": self.n_tokens,
            "n_windows": self.n_windows,
            "window": self.window,
            "threshold": self.threshold,
            "activation": self.activation,
            "sweep": list(self.sweep),
            "layers": sorted(self.layers),
            "excluded_token_ids": list(self.excluded_token_ids),
        }
