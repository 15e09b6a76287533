"""What the statistics of one capture pass know about the current batch.

:class:`BatchContext` is computed once per batch for all layers (real positions, full windows,
token rows, trigram ids); :class:`LayerBatch` once per layer and batch: the layer's activations,
its activity mask (the activation rule of :mod:`neuronbench.activation`, applied once and read by
every statistic) and, when a
statistic asks for them, per-window sufficient statistics (:class:`WindowMoments`) shared by the
moments and the positional statistics.

Cost rules (CPU and GPU alike): no float64 copy of a ``[tokens, W]`` tensor except the one
:class:`WindowMoments` needs for the Pearson numerator; every reduction runs over a batch in
float32 (or as a matmul) and only the per-batch results are accumulated in float64 / int64;
counts are column sums of a float32 0/1 mask, exact while a reduction covers fewer than
:data:`EXACT_ROWS` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from neuronbench.activation import Mask

if TYPE_CHECKING:
    from neuronbench.capture.tokens import TierPart

EXACT_ROWS = 1 << 24
"""float32 holds every integer up to 2**24 exactly: a sum of at most that many 0/1 terms is exact."""


def column_counts(mask: torch.Tensor) -> torch.Tensor:
    """``Σ_rows mask`` of a float32 0/1 mask ``[n, W]`` as int64 ``[W]`` (a matrix-vector
    product, exact: chunks of fewer than :data:`EXACT_ROWS` rows)."""
    total = torch.zeros(mask.shape[1], dtype=torch.long, device=mask.device)
    for start in range(0, mask.shape[0], EXACT_ROWS - 1):
        part = mask[start:start + EXACT_ROWS - 1]
        total += (torch.ones(1, part.shape[0], dtype=part.dtype, device=part.device) @ part)[0].long()
    return total


@dataclass(frozen=True)
class WindowMoments:
    """Sufficient statistics of each full window ``[n, T, W]`` and neuron, for the Pearson score
    and (when every window is full) the moments:

    ``total = Σ_t a_t``, ``moment = Σ_t (t − t̄) a_t`` (float64: one matmul of the float64
    windows with the basis ``[1, t − t̄]``), ``centred_sq = Σ_t (a_t − ā)²`` (float32 over the
    window, with ``ā`` from ``total``: no cancellation), ``sum_sq = centred_sq + total²/T``,
    ``max``, ``min`` (float32, exact); and over the windows ``position_total = Σ_windows a``
    ``[T, W]`` (float64, a matrix-vector product of the float64 windows).
    """

    total: torch.Tensor
    moment: torch.Tensor
    centred_sq: torch.Tensor
    max: torch.Tensor
    min: torch.Tensor
    position_total: torch.Tensor
    length: int

    @classmethod
    def of(cls, windows: torch.Tensor) -> WindowMoments:
        length = windows.shape[1]
        positions = torch.arange(length, dtype=torch.float64, device=windows.device)
        basis = torch.stack([torch.ones_like(positions), positions - positions.mean()])
        wide = windows.double()
        sums = torch.matmul(basis, wide)
        total, moment = sums[:, 0], sums[:, 1]
        position_total = (torch.ones(1, wide.shape[0], dtype=wide.dtype, device=wide.device)
                          @ wide.flatten(1)).view(windows.shape[1:])
        centred = windows - (total / length).float().unsqueeze(1)
        centred_sq = (centred * centred).sum(1).double()
        return cls(total, moment, centred_sq, windows.amax(1), windows.amin(1), position_total, length)

    @property
    def sum_sq(self) -> torch.Tensor:
        """``Σ_t a_t²`` per window (float64)."""
        return self.centred_sq + self.total.square() / self.length

    def pearson(self) -> torch.Tensor:
        """``r = moment / sqrt(Σ_t (t − t̄)² · centred_sq)``, 0 where ``max == min`` (float64 ``[n, W]``)."""
        t = self.length
        position_ss = (t - 1) * t * (t + 1) / 12.0  # Σ_t (t − t̄)² over t = 0..T−1
        denominator = (position_ss * self.centred_sq).sqrt().clamp_min(torch.finfo(torch.float64).tiny)
        return torch.where(self.max > self.min, self.moment / denominator, 0.0)


@dataclass
class BatchContext:
    """What every layer needs to know about the current batch (flat = real positions, row-major).

    ``real [B, T]``, ``full [B]`` (windows without padding) and their number ``n_full`` (the one
    host synchronisation of a batch); for the token table the
    kept positions split by count tier (``parts``); for trigrams the flat mask ``trigram``
    (trigram positions), the flat indices ``skipped`` (kept positions that are not trigram
    positions) and the id of each trigram position's trigram.
    """

    real: torch.Tensor
    full: torch.Tensor
    n_full: int
    parts: list[TierPart] | None = None
    trigram: torch.Tensor | None = None
    skipped: torch.Tensor | None = None
    trigram_ids: np.ndarray | None = None

    @property
    def all_real(self) -> bool:
        """Every position of the batch is real (every window is full)."""
        return self.n_full == self.real.shape[0]

    def flat(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[B, T, ...]`` -> ``[n_real, ...]`` (a view when every position is real)."""
        return tensor.flatten(0, 1) if self.all_real else tensor[self.real]

    def full_rows(self) -> torch.Tensor:
        """Flat indices (among the real positions) of the positions of full windows."""
        index = torch.full(self.real.shape, -1, dtype=torch.long, device=self.real.device)
        index[self.real] = torch.arange(int(self.real.sum()), device=self.real.device)
        return index[self.full].flatten()


@dataclass
class LayerBatch:
    """One layer's activations in one batch: ``acts [B, T, W]`` (float32), ``flat [n_real, W]``
    and the activity mask ``weights = mask(flat, τ)`` (float32 0/1; ``mask`` is the capture's
    activation rule with the layer scale bound, :mod:`neuronbench.activation`), computed once for
    every statistic. ``windowed``: a statistic reads :attr:`window_moments` (so the moments may too)."""

    acts: torch.Tensor
    flat: torch.Tensor
    weights: torch.Tensor
    threshold: float
    batch: BatchContext
    mask: Mask
    windowed: bool = False

    @cached_property
    def active(self) -> torch.Tensor:
        """The activity mask as bool ``[n_real, W]`` (for the count tables)."""
        return self.weights.bool()

    @cached_property
    def full_windows(self) -> torch.Tensor:
        """``[n_full, T, W]`` activations of the windows without padding."""
        return self.acts if self.batch.all_real else self.acts[self.batch.full]

    @cached_property
    def full_weights(self) -> torch.Tensor:
        """``[n_full, T, W]`` activity mask of the windows without padding (a view of ``weights``
        when every position is real, else its rows of the full windows)."""
        shape = self.full_windows.shape
        if self.batch.all_real:
            return self.weights.view(shape)
        return self.weights.index_select(0, self.batch.full_rows()).view(shape)

    @cached_property
    def window_moments(self) -> WindowMoments:
        """:class:`WindowMoments` of the full windows (computed once per layer and batch)."""
        return WindowMoments.of(self.full_windows)


class NeuronStatistic(Protocol):
    """One kind of streamed statistic of one layer's neurons: one module per kind."""

    def update(self, view: LayerBatch) -> None:
        """Fold one batch into the running totals."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The totals as named numpy arrays (called once, at the end)."""
