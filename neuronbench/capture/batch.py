"""What the statistics of one capture pass know about the current batch.

:class:`BatchContext` is computed once per batch for all layers (real positions, full windows and
where each window's real rows lie, token rows, trigram ids); :class:`LayerBatch` once per layer and
batch: the layer's activations and their :class:`~neuronbench.capture.blocks.Reductions`, every
per-batch reduction that the requested statistics read (the activity mask of
:mod:`neuronbench.activation` applied once, the counts, sums, extremes, per-window sufficient
statistics :class:`WindowMoments`, per-position sums), computed from one read of the activations
(:mod:`.native` on a CPU, :mod:`.blocks` on a GPU).

Cost rules (CPU and GPU alike): no float64 copy of a ``[tokens, W]`` tensor; every reduction runs
in float32 (or as a matmul) and only its results are accumulated in float64 / int64; counts are
column sums of a float32 0/1 mask, exact while a float32 total covers fewer than
:data:`EXACT_ROWS` rows; every intermediate is written into a :class:`Workspace` buffer that the
layers and batches of a capture reuse (on a CPU a fresh tensor costs more in page faults than the
arithmetic that fills it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from neuronbench.capture.blocks import Reductions
    from neuronbench.capture.tokens import TierPart

EXACT_ROWS = 1 << 24
"""float32 holds every integer up to 2**24 exactly: a sum of at most that many 0/1 terms is exact."""


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
    """Sufficient statistics of each full window (``n`` windows of ``T = length`` positions) and
    neuron, for the Pearson score and the moments, summed around each window's float32 mean
    ``m = Σ_t a_t / T`` with the centred values ``d_t = a_t − m`` (:mod:`.blocks`; results
    ``[n, W]``, float64 but for the extremes):

    ``total = T·m + Σ_t d_t`` (the second term corrects the rounding of ``m``),
    ``moment = Σ_t (t − t̄) d_t = Σ_t (t − t̄) a_t`` (as ``Σ_t (t − t̄) = 0``), ``centred_sq =
    Σ_t d_t² − (Σ_t d_t)²/T = Σ_t (a_t − ā)²``, ``sum_sq = centred_sq + total²/T``, ``max``, ``min``
    (float32, exact). Centring keeps the float32 rounding relative to the window's spread, not to ``|a|``.
    ``pearson_sum``: ``Σ_windows r`` (:meth:`pearson`) when the reduction computed it along with the
    sums (the C loop, in double, formula for formula), else ``None`` (:meth:`pearson_total` computes it).
    """

    total: torch.Tensor
    moment: torch.Tensor
    centred_sq: torch.Tensor
    max: torch.Tensor
    min: torch.Tensor
    length: int
    pearson_sum: torch.Tensor | None = None

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

    def pearson_total(self) -> torch.Tensor:
        """``Σ_windows r`` per neuron (float64 ``[W]``)."""
        return self.pearson().sum(0) if self.pearson_sum is None else self.pearson_sum


HOST_READ_DEVICES = frozenset({"cpu"})
"""Device types on which reading a value back to the host waits for nothing (the CPU): there a
statistic may read data-dependent sizes as it goes; elsewhere (a GPU) it does not read inside the
hooks (:func:`reads_freely`)."""


def reads_freely(device: torch.device) -> bool:
    """Whether a statistic on ``device`` may read values back to the host inside the hooks
    (:data:`HOST_READ_DEVICES`)."""
    return device.type in HOST_READ_DEVICES


@dataclass
class BatchContext:
    """What every layer needs to know about the current batch (flat = real positions, row-major).

    ``real [B, T]`` and ``rows`` (the flat indices of the real positions among all ``B·T``;
    ``None`` when every position is real), ``segment_sizes`` (float64 ``[n, 1]``, the rows of each
    of :attr:`segments`) and ``full_segments`` (int64, the indices of the full ones) on the
    capture's device; ``lengths`` (real positions per window) on the host. For the token table
    the kept positions split by count tier (``parts``); for trigrams the flat indices ``trigram``
    of the trigram positions and ``outside`` of the real positions that are not trigram positions,
    and the id of each trigram position's trigram (``trigram_ids``, in the order of ``trigram``).
    All of it is computed on the host, from the batch before it is moved to the device
    (:meth:`to`), so preparing a batch reads nothing back from a GPU and can run while the device
    still computes the previous batch.
    """

    real: torch.Tensor
    lengths: list[int]
    rows: torch.Tensor | None = None
    segment_sizes: torch.Tensor | None = None
    full_segments: torch.Tensor | None = None
    parts: list[TierPart] | None = None
    trigram: torch.Tensor | None = None
    outside: torch.Tensor | None = None
    trigram_ids: np.ndarray | None = None

    @classmethod
    def of(cls, real: torch.Tensor, device: torch.device | None = None) -> BatchContext:
        """The context of a batch with real positions ``real [B, T]`` (bool), read on the host and
        held on ``device`` (default: where ``real`` lies)."""
        host = real.cpu()
        rows = None if bool(host.all()) else host.flatten().nonzero().flatten()
        context = cls(real=host, lengths=host.sum(dim=1).tolist(), rows=rows)
        segments = context.segments
        sizes = torch.tensor([size for _, size, _ in segments], dtype=torch.float64)
        context.segment_sizes = sizes.view(-1, 1)
        context.full_segments = torch.tensor([i for i, (_, _, whole) in enumerate(segments) if whole],
                                             dtype=torch.int64)
        return context.to(real.device if device is None else device)

    def to(self, device: torch.device) -> BatchContext:
        """This context with its tensors on ``device`` (itself when they are there already); the
        host-side ``lengths`` and ``trigram_ids`` are shared."""
        if self.real.device == torch.device(device):
            return self

        def moved(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)
        return BatchContext(real=self.real.to(device), lengths=self.lengths, rows=moved(self.rows),
                            segment_sizes=moved(self.segment_sizes), full_segments=moved(self.full_segments),
                            parts=None if self.parts is None else [part.to(device) for part in self.parts],
                            trigram=moved(self.trigram), outside=moved(self.outside), trigram_ids=self.trigram_ids)

    @cached_property
    def n_full(self) -> int:
        """Windows without padding."""
        return sum(length == self.real.shape[1] for length in self.lengths)

    def flat(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[B, T, ...]`` -> ``[n_real, ...]`` (a view when every position is real and the tensor's
        layout allows; else gathered by :attr:`rows`, which needs no host read)."""
        flat = tensor.flatten(0, 1)
        return flat if self.rows is None else flat.index_select(0, self.rows)

    @cached_property
    def segments(self) -> list[tuple[int, int, bool]]:
        """``(first flat row, rows, full)`` of each window's real positions, which are consecutive
        rows of the flat tensor (windows without real positions left out)."""
        starts = np.cumsum([0, *self.lengths[:-1]]).tolist()
        width = self.real.shape[1]
        return [(start, size, size == width) for start, size in zip(starts, self.lengths) if size]

    @cached_property
    def segment_table(self) -> SegmentTable:
        """:attr:`segments` as host tensors, for the C reduction (made once per batch, read by every layer)."""
        starts, sizes, whole = zip(*self.segments) if self.segments else ((), (), ())
        return SegmentTable(starts=torch.tensor(starts, dtype=torch.int64), sizes=torch.tensor(sizes, dtype=torch.int64),
                            full=torch.tensor(whole, dtype=torch.uint8))


@dataclass(frozen=True)
class SegmentTable:
    """The segments of a batch (:attr:`BatchContext.segments`) as int64 / uint8 host tensors:
    first flat row, rows, 1 for a full window."""

    starts: torch.Tensor
    sizes: torch.Tensor
    full: torch.Tensor


@dataclass
class LayerBatch:
    """One layer's activations in one batch: ``flat [n_real, W]`` (float32, contiguous, real
    positions row-major) and its :class:`~neuronbench.capture.blocks.Reductions` (``None`` when the
    batch has no real position), which every statistic reads instead of reducing ``flat`` again."""

    flat: torch.Tensor
    batch: BatchContext
    reductions: Reductions | None


class NeuronStatistic(Protocol):
    """One kind of streamed statistic of one layer's neurons: one module per kind."""

    def update(self, view: LayerBatch) -> None:
        """Fold one batch into the running totals."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The totals as named numpy arrays (called once, at the end)."""
