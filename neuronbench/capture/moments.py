"""Per-neuron counts, moments and extremes over every real token.

==========================  ===================  ==============================================
array                       shape                definition
==========================  ===================  ==============================================
``active_count``            ``[W]``              ``#{tokens : active at τ}`` (the capture's rule)
``sweep_count``             ``[S, W]``           ``#{tokens : active at τ_s}`` for each sweep τ_s (only when
                                                 ``CaptureConfig.sweep`` is not empty)
``sum``, ``sum_sq``         ``[W]``              ``Σ a``, ``Σ a²`` (float64 totals)
``abs_sum``                 ``[W]``              ``Σ |a|`` (activation mass; float64 total)
``max``, ``min``            ``[W]``              extremes of ``a``
==========================  ===================  ==============================================

Each batch is reduced in float32 (counts as matmuls of the 0/1 mask; sums around a pivot,
:func:`shifted_sums`) and only the per-batch results are added to the float64 / int64 totals. The
τ sweep is optional (``CaptureConfig.sweep = ()``: no ``sweep_count``, no comparison per τ_s; only the
dead-fraction sweep figure reads it). Its counts come from the layer's one ``level`` (``|a|`` or ``a``), compared with every τ_s a
block of rows at a time (:func:`sweep_counts`). When every window of the batch is full and the positional
statistics read the per-window sufficient statistics
(:class:`~neuronbench.capture.batch.WindowMoments`), the sums and extremes are read from those
instead of reducing the batch again. With ``CaptureConfig.compile`` the counts, sums and extremes
come from one compiled function instead (:mod:`.compiled`).

:attr:`Moments.checksum` is a per-batch reduction over every real value of the batch (float64,
NaN or ±inf wherever an input value is, barring float32 overflow): the non-finite check of
:mod:`neuronbench.capture.checks` reads it instead of reducing the tensor once more.
"""

from __future__ import annotations

import numpy as np
import torch

from neuronbench.capture.batch import EXACT_ROWS, LayerBatch, Workspace


def pivot_totals(shifted_sum: torch.Tensor, shifted_sq: torch.Tensor, pivot: torch.Tensor,
                 n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ a, Σ a²)`` (float64) from the float32 sums around ``p``: ``Σ a = Σ (a − p) + n·p``,
    ``Σ a² = Σ (a − p)² + 2p·Σ (a − p) + n·p²``."""
    s1, s2, p = shifted_sum.double(), shifted_sq.double(), pivot.double()
    return s1 + n * p, s2 + 2 * p * s1 + n * p * p


def shifted_sums(flat: torch.Tensor, scratch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ a, Σ a²)`` per column of ``flat [n, W]`` (float64), summed in float32 around the first
    row ``p`` (:func:`pivot_totals`). The float32 rounding is relative to the spread around ``p``,
    not to ``|a|``: exact for a constant neuron. ``scratch`` (shape of ``flat``) receives ``a − p``
    and then its squares."""
    pivot = flat[0]
    shifted = torch.sub(flat, pivot, out=torch.empty_like(flat) if scratch is None else scratch)
    s1 = shifted.sum(0)
    return pivot_totals(s1, shifted.mul_(shifted).sum(0), pivot, flat.shape[0])


SWEEP_BYTES = {"cpu": 2 << 20}
"""Size of the ``[S, rows, W]`` float32 block of masks that :func:`sweep_counts` fills at a time, per
device type (others: 1024 rows): on a CPU about 2 MiB, so that it stays in cache (32 rows at
``S = 6``, ``W = 3072``; 170 at ``W = 512``)."""


def sweep_counts(level: torch.Tensor, cuts: list[float], workspace: Workspace) -> torch.Tensor:
    """``#{rows : level > cut_s}`` per column of ``level [n, W]`` for every cut (int64 ``[S, W]``).

    The rows are compared with all cuts a block at a time (:data:`SWEEP_BYTES`): one broadcast
    comparison into an ``[S, rows, W]`` buffer, then one batched matrix product adds the block's
    column sums to a float32 total (exact: fewer than :data:`EXACT_ROWS` rows per total). Each
    block of ``level`` is read from memory once while its ``S`` masks stay in cache; ``S``
    separate passes over the whole batch cost about twice as much on a CPU."""
    (n, width), count, device = level.shape, len(cuts), level.device
    budget = SWEEP_BYTES.get(device.type)
    block = min(1024 if budget is None else max(1, budget // (4 * count * width)), max(n, 1))
    thresholds = torch.tensor(cuts, dtype=level.dtype, device=device).view(count, 1, 1)
    masks = workspace.buffer("sweep", (count, block, width), device)
    ones = torch.ones(count, 1, block, dtype=level.dtype, device=device)
    total = torch.zeros(count, width, dtype=torch.long, device=device)
    span = (EXACT_ROWS - 1) // block * block
    for group in range(0, n, span):
        partial = torch.zeros(count, 1, width, dtype=level.dtype, device=device)
        for start in range(group, min(n, group + span), block):
            part = level[start:start + block]
            rows = part.shape[0]
            torch.gt(part.unsqueeze(0), thresholds, out=masks[:, :rows])
            partial.baddbmm_(ones[:, :, :rows], masks[:, :rows])
        total += partial[:, 0].long()
    return total


class Moments:
    """``active_count``, ``sweep_count`` (when ``sweep`` is not empty), ``sum``, ``sum_sq``, ``abs_sum``,
    ``max``, ``min`` of one layer."""

    def __init__(self, width: int, sweep: tuple[float, ...], device: torch.device, compiled: bool = False) -> None:
        long, f64 = torch.long, torch.float64
        self.sweep = sweep
        self.compiled = compiled
        self.n_tokens = 0
        self.checksum: torch.Tensor | None = None
        self.totals = dict(
            active_count=torch.zeros(width, dtype=long, device=device),
            **({"sweep_count": torch.zeros(len(sweep), width, dtype=long, device=device)} if sweep else {}),
            sum=torch.zeros(width, dtype=f64, device=device),
            sum_sq=torch.zeros(width, dtype=f64, device=device),
            abs_sum=torch.zeros(width, dtype=f64, device=device),
            max=torch.full((width,), -torch.inf, dtype=f64, device=device),
            min=torch.full((width,), torch.inf, dtype=f64, device=device),
        )

    def update(self, view: LayerBatch) -> None:
        flat = view.flat
        self.n_tokens += flat.shape[0]
        self.checksum = None
        if flat.shape[0] == 0:
            return
        if self.compiled:
            total, total_sq, largest, smallest = self._compiled_update(view)
        else:
            total, total_sq, largest, smallest = self._eager_update(view)
        a = self.totals
        self.checksum = total
        a["sum"] += total
        a["sum_sq"] += total_sq
        torch.maximum(a["max"], largest.double(), out=a["max"])
        torch.minimum(a["min"], smallest.double(), out=a["min"])

    def _eager_update(self, view: LayerBatch) -> tuple[torch.Tensor, ...]:
        """Counts and ``Σ |a|`` added; returns ``(Σ a, Σ a², max, min)`` of the batch."""
        flat, a = view.flat, self.totals
        counts = view.counts
        a["active_count"] += counts
        if self.sweep:
            self._sweep_update(view, counts)
        magnitude = view.level if view.mask.relative else torch.abs(flat, out=view.scratch(flat.shape))
        a["abs_sum"] += magnitude.sum(0)  # float32 cascade sum per batch (a matmul's is ~10× less exact)
        if view.windowed and view.batch.all_real:
            windows = view.window_moments
            return windows.total.sum(0), windows.sum_sq.sum(0), windows.max.amax(0), windows.min.amin(0)
        total, total_sq = shifted_sums(flat, view.scratch(flat.shape))
        return total, total_sq, flat.amax(0), flat.amin(0)

    def _sweep_update(self, view: LayerBatch, counts: torch.Tensor) -> None:
        """``sweep_count_s += #{rows : level > cut(τ_s)}``; a τ_s equal to the capture's τ reuses ``counts``."""
        sweep = self.totals["sweep_count"]
        others = [i for i, tau in enumerate(self.sweep) if tau != view.threshold]
        for i in set(range(len(self.sweep))) - set(others):
            sweep[i] += counts
        if others:
            cuts = [view.mask.cut(self.sweep[i]) for i in others]
            sweep[others] += sweep_counts(view.level, cuts, view.workspace)

    def _compiled_update(self, view: LayerBatch) -> tuple[torch.Tensor, ...]:
        """As :meth:`_eager_update`, from the compiled reductions (:mod:`.compiled`)."""
        from neuronbench.capture import compiled

        flat, a = view.flat, self.totals
        cuts = torch.tensor([view.mask.cut(tau) for tau in (view.threshold, *self.sweep)], dtype=flat.dtype,
                            device=flat.device)
        counts, shifted_sum, shifted_sq, abs_sum, largest, smallest = compiled.moments(flat, cuts, view.mask.relative)
        a["active_count"] += counts[0]
        if self.sweep:
            a["sweep_count"] += counts[1:]
        a["abs_sum"] += abs_sum
        total, total_sq = pivot_totals(shifted_sum, shifted_sq, flat[0], flat.shape[0])
        return total, total_sq, largest, smallest

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: value.cpu().numpy() for name, value in self.totals.items()}
