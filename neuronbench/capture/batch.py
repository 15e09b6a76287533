"""What the statistics of one capture pass know about the current batch.

:class:`BatchContext` is computed once per batch for all layers (real positions, full windows,
token rows, trigram ids); :class:`LayerBatch` once per layer and batch: the layer's activations,
its activity mask (the activation rule of :mod:`neuronbench.activation`, applied once and read by
every statistic) and, when a statistic asks for them, per-window sufficient statistics
(:class:`WindowMoments`) shared by the moments and the positional statistics.

Cost rules (CPU and GPU alike): no float64 copy of a ``[tokens, W]`` tensor; every reduction runs
over a batch in float32 (or as a matmul) and only the per-batch results are accumulated in
float64 / int64; counts are column sums of a float32 0/1 mask, exact while a reduction covers
fewer than :data:`EXACT_ROWS` rows; every ``[tokens, W]`` intermediate (the mask, ``|a|``, the
sweep's masks, centred values) is written into a :class:`Workspace` buffer that the layers and
batches of a capture reuse (on a CPU a fresh tensor of that size costs more in page faults than the
arithmetic that fills it).
"""

from __future__ import annotations

import math
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


def column_sums(values: torch.Tensor) -> torch.Tensor:
    """``Σ_rows values`` of ``values [n, W]`` as one float32 matrix-vector product ``[W]`` (the
    fastest column reduction on a CPU; exact for 0/1 values, :func:`column_counts`, but for general
    values about 10× less exact than ``sum``'s cascade: 2–4e-6 relative at 1,000–4,000 rows)."""
    return (torch.ones(1, values.shape[0], dtype=values.dtype, device=values.device) @ values)[0]


def column_counts(mask: torch.Tensor) -> torch.Tensor:
    """``Σ_rows mask`` of a float32 0/1 mask ``[n, W]`` as int64 ``[W]`` (:func:`column_sums`,
    exact: chunks of fewer than :data:`EXACT_ROWS` rows)."""
    total = torch.zeros(mask.shape[1], dtype=torch.long, device=mask.device)
    for start in range(0, mask.shape[0], EXACT_ROWS - 1):
        total += column_sums(mask[start:start + EXACT_ROWS - 1]).long()
    return total


class Workspace:
    """Scratch buffers of one capture, by role, reused by every layer and batch.

    :meth:`buffer` hands out a view of the role's storage, grown to the largest request so far.
    A role's contents are valid only until its next request: ``"acts"``, ``"mask"`` and ``"level"``
    live for one layer's update (every statistic reads them), ``"scratch"`` only within the one call that
    requests it (``|a|``, centred values; ``"sweep"``: the sweep's block of masks; ``"scale"``: the
    layer scale's float64 block), ``"acts"`` for activations that
    arrive in another dtype or layout (one copy into float32, contiguous). Buffers are ordinary tensors even when the capture runs under ``inference_mode``.
    """

    def __init__(self) -> None:
        self._storage: dict[str, torch.Tensor] = {}

    def buffer(self, role: str, shape: tuple[int, ...] | torch.Size, device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        numel = math.prod(shape)
        held = self._storage.get(role)
        if held is None or held.numel() < numel or held.dtype != dtype or held.device != device:
            with torch.inference_mode(False):
                held = torch.empty(numel, dtype=dtype, device=device)
            self._storage[role] = held
        return held[:numel].view(shape)


@dataclass(frozen=True)
class WindowMoments:
    """Sufficient statistics of each full window ``[n, T, W]`` and neuron, for the Pearson score
    and (when every window is full) the moments, in float32 around each window's float32 mean
    ``m = Σ_t a_t / T``, with the centred values ``d_t = a_t − m`` (two reads of the windows, no
    float64 copy; results ``[n, W]``, float64 but for the extremes):

    ``total = T·m + Σ_t d_t`` (the second term corrects the rounding of ``m``),
    ``moment = Σ_t (t − t̄) d_t = Σ_t (t − t̄) a_t`` (as ``Σ_t (t − t̄) = 0``; one matmul of the basis
    ``[1, t − t̄]`` with ``d``, which also gives ``Σ_t d_t``), ``centred_sq = Σ_t d_t² − (Σ_t d_t)²/T
    = Σ_t (a_t − ā)²``, ``sum_sq = centred_sq + total²/T``, ``max``, ``min`` (float32, exact).
    Centring keeps the float32 rounding relative to the window's spread, not to ``|a|``.
    """

    total: torch.Tensor
    moment: torch.Tensor
    centred_sq: torch.Tensor
    max: torch.Tensor
    min: torch.Tensor
    length: int

    @classmethod
    def of(cls, windows: torch.Tensor, scratch: torch.Tensor | None = None) -> WindowMoments:
        """From float32 ``windows [n, T, W]``; ``scratch`` (same shape) receives the centred values."""
        length = windows.shape[1]
        positions = torch.arange(length, dtype=windows.dtype, device=windows.device)
        basis = torch.stack([torch.ones_like(positions), positions - (length - 1) / 2])
        means = torch.matmul(basis[:1], windows) / length  # [n, 1, W]
        if scratch is None:
            scratch = torch.empty_like(windows)
        centred = torch.sub(windows, means, out=scratch)
        sums = torch.matmul(basis, centred)
        residual, moment = sums[:, 0].double(), sums[:, 1].double()
        squares = torch.matmul(basis[:1], centred.mul_(centred))[:, 0].double()
        total = means[:, 0].double() * length + residual
        centred_sq = (squares - residual.square() / length).clamp_min(0.0)
        return cls(total, moment, centred_sq, windows.amax(1), windows.amin(1), length)

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
    (trigram positions), the flat indices ``outside`` (real positions that are not trigram
    positions) and the id of each trigram position's trigram.
    """

    real: torch.Tensor
    full: torch.Tensor
    n_full: int
    parts: list[TierPart] | None = None
    trigram: torch.Tensor | None = None
    outside: torch.Tensor | None = None
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
    """One layer's activations in one batch: ``acts [B, T, W]`` (float32), ``flat [n_real, W]``,
    ``level = mask.level(flat)`` (``|a|`` for a relative rule, else ``flat``) and the activity mask
    ``weights = mask(flat, τ)`` (float32 0/1; ``mask`` is the capture's activation rule with the
    layer scale bound, :mod:`neuronbench.activation`), computed once, when first read, for every statistic.
    ``windowed``: a statistic reads :attr:`window_moments` (so the moments may too). Buffers come
    from ``workspace`` (:class:`Workspace`). ``compiled``: window statistics come from
    :func:`neuronbench.capture.compiled.window_reductions`."""

    acts: torch.Tensor
    flat: torch.Tensor
    threshold: float
    batch: BatchContext
    mask: Mask
    workspace: Workspace
    windowed: bool = False
    compiled: bool = False

    def scratch(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """The float32 ``"scratch"`` buffer (valid until the next request)."""
        return self.workspace.buffer("scratch", shape, self.flat.device)

    @cached_property
    def level(self) -> torch.Tensor:
        """``mask.level(flat)``: ``|a|`` (in the ``"level"`` buffer) for a relative rule, else ``flat``."""
        out = self.workspace.buffer("level", self.flat.shape, self.flat.device) if self.mask.relative else None
        return self.mask.level(self.flat, out)

    @cached_property
    def weights(self) -> torch.Tensor:
        """The activity mask ``mask(flat, τ)`` (float32 0/1, in the ``"mask"`` buffer)."""
        return self.mask.above(self.level, self.threshold, self.workspace.buffer("mask", self.flat.shape,
                                                                                  self.flat.device))

    @cached_property
    def counts(self) -> torch.Tensor:
        """``Σ_rows weights``: the batch's active count per neuron (int64 ``[W]``, :func:`column_counts`)."""
        return column_counts(self.weights)

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
        windows = self.full_windows
        if not self.compiled:
            return WindowMoments.of(windows, self.scratch(windows.shape))
        total, moment, sum_sq, largest, smallest = self._compiled_windows[:5]
        length = windows.shape[1]
        centred_sq = (sum_sq - total.square() / length).clamp_min(0.0)
        return WindowMoments(total, moment, centred_sq, largest, smallest, length)

    @cached_property
    def position_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ_windows mask, Σ_windows a)`` per position ``[T, W]`` over the full windows (float32
        matrix-vector products; compiled: int64 and float64)."""
        if self.compiled:
            return self._compiled_windows[5], self._compiled_windows[6]
        windows = self.full_windows
        n = windows.shape[0]
        ones = torch.ones(1, n, dtype=windows.dtype, device=windows.device)
        return ((ones @ self.full_weights.reshape(n, -1)).view(windows.shape[1:]),
                (ones @ windows.reshape(n, -1)).view(windows.shape[1:]))

    @cached_property
    def _compiled_windows(self) -> tuple[torch.Tensor, ...]:
        from neuronbench.capture import compiled

        cut = torch.tensor(self.mask.cut(self.threshold), dtype=torch.float32, device=self.flat.device)
        return compiled.windows(self.full_windows, cut, self.mask.relative)


class NeuronStatistic(Protocol):
    """One kind of streamed statistic of one layer's neurons: one module per kind."""

    def update(self, view: LayerBatch) -> None:
        """Fold one batch into the running totals."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The totals as named numpy arrays (called once, at the end)."""
