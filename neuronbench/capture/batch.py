"""What the statistics of one capture pass know about the current batch.

:class:`BatchContext` is computed once per batch for all layers (real positions, full windows,
token rows, trigram ids); :class:`LayerBatch` once per layer and batch: the layer's activations
and its activity mask ``a > τ``, computed once and read by every statistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from neuronbench.capture.tokens import TierPart


@dataclass
class BatchContext:
    """What every layer needs to know about the current batch (flat = real positions, row-major).

    ``real [B, T]``, ``full [B]`` (windows without padding), ``all_real``; for the token table the
    kept positions split by count tier (``parts``); for trigrams the flat mask ``trigram``
    (trigram positions), the flat indices ``skipped`` (kept positions that are not trigram
    positions) and the id of each trigram position's trigram.
    """

    real: torch.Tensor
    full: torch.Tensor
    all_real: bool
    parts: list[TierPart] | None = None
    trigram: torch.Tensor | None = None
    skipped: torch.Tensor | None = None
    trigram_ids: np.ndarray | None = None

    def flat(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[B, T, ...]`` -> ``[n_real, ...]`` (a view when every position is real)."""
        return tensor.flatten(0, 1) if self.all_real else tensor[self.real]


@dataclass
class LayerBatch:
    """One layer's activations in one batch: ``acts [B, T, W]`` (float32), ``flat [n_real, W]``
    and the activity mask ``active = flat > τ``, computed once for every statistic."""

    acts: torch.Tensor
    flat: torch.Tensor
    active: torch.Tensor
    threshold: float
    batch: BatchContext

    @cached_property
    def full_windows(self) -> torch.Tensor:
        """``[n_full, T, W]`` activations of the windows without padding."""
        return self.acts if self.batch.all_real else self.acts[self.batch.full]

    @cached_property
    def full_active(self) -> torch.Tensor:
        """``[n_full, T, W]`` activity mask of the windows without padding (a view of ``active``
        when every position is real)."""
        if self.batch.all_real:
            return self.active.view(self.acts.shape)
        return self.full_windows > self.threshold


class NeuronStatistic(Protocol):
    """One kind of streamed statistic of one layer's neurons: one module per kind."""

    def update(self, view: LayerBatch) -> None:
        """Fold one batch into the running totals."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The totals as named numpy arrays (called once, at the end)."""
