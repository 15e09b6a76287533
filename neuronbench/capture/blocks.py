"""Every per-batch reduction of one layer from one read of its activations, a cached block at a time.

A layer's batch ``flat [n, W]`` (float32; 50 MB for 4,096 GPT-2-small tokens) is far larger than
a CPU's caches: reduced one statistic at a time, every reduction reads it from memory again
(about 20 reads for the full capture, each as slow as the first). :func:`reduce_layer` reads it
about twice: each *segment* (one window's real rows, consecutive in ``flat``) once for its mean,
then block by block (at most :data:`BLOCK_BYTES` of rows), and every reduction that a requested
statistic needs (:class:`Plan`) runs while the block is in cache. Only ``[W]``-sized results
are kept. Windows shorter than a block are grouped, several whole windows to a block of up to
:data:`GROUP_BYTES`, so that short windows (the built-in models') do not pay the per-operation
overhead once per window (:func:`plan_blocks`). On a device without sizes (a GPU), a block is a
whole segment, or all consecutive full windows of the batch.

Per block ``b`` of segment ``k`` (rows ``t₀ … t₀ + r − 1`` of a window, ``1`` a row of ones), with
``level = |b|`` for a relative rule, else ``b``, and the activity mask ``m = [level > cut(τ)]``
(float32 0/1, :mod:`neuronbench.activation`):

===============================  =====================================================================
reduction                        per block, accumulated per segment
===============================  =====================================================================
``counts``                       ``1ᵀ m`` (a matmul; float32 totals are exact below :data:`EXACT_ROWS`
                                 rows and are moved to int64 before they could round)
``sweep`` (plan.sweep)           ``1ᵀ [level > cut(τ_s)]`` for every sweep τ_s but τ, as ``counts``
``active`` (plan.active)         ``m`` as bool, into its rows of an ``[n, W]`` table
``Σ |a|``                        ``1ᵀ |b|``
``max``, ``min``                 of the block, then of the segment
``Σ d``, ``Σ (t − t̄) d``, ``Σ d²``  of ``d = b − m_k``, centred on the segment's float32 mean ``m_k``:
                                 ``[1, t − t̄][:, t₀:t₀+r] d`` and ``1ᵀ d²``
per position (plan.windowed,     ``pos_active[t₀:] += m``, ``pos_sum[t₀:] += b`` over the full windows
full windows)
===============================  =====================================================================

Per segment of ``s`` rows: ``Σ a = s·m_k + Σ d`` (the second term corrects the rounding of ``m_k``),
``Σ (a − ā)² = Σ d² − (Σ d)²/s``, ``Σ a² = Σ (a − ā)² + (Σ a)²/s``; the full windows' values are
their :class:`~neuronbench.capture.batch.WindowMoments` (the Pearson score's sufficient statistics),
and the batch's totals add the segments' in float64. The float32 sums are matmuls over one
block (tens of rows) added over the few blocks of a segment, then read out in float64: more exact
than the whole-batch float32 reductions they replace (the exactness tests compare every statistic
with float64 brute force), and centring keeps the rounding relative to a window's spread, not to ``|a|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from neuronbench.activation import Mask
from neuronbench.capture.batch import EXACT_ROWS, BatchContext, WindowMoments, Workspace

BLOCK_BYTES = {"cpu": 480 << 10}
"""The most bytes of a float32 ``[rows, W]`` block, per device type (others: a whole segment).
On a CPU 480 KiB (40 rows of 3,072 neurons): the block and its level, mask and centred values stay
in cache. Measured on a 2-core EPYC (1 MiB L2, 32 MiB L3): 320–640 KiB are equally fast;
smaller blocks pay more in per-operation overhead (about 25 operations a block) than they gain."""
GROUP_BYTES = {"cpu": 2 << 20}
"""The most bytes of a block of whole short windows, per device type (others: all consecutive full
windows): on a CPU 2 MiB (the built-in models' 128 × 512 windows, 8 to a block), where the
per-operation overhead of a block a window would cost more than the cache misses of a larger one."""


@dataclass(frozen=True)
class Plan:
    """What the requested statistics read: the mask at ``threshold`` (always), the counts at every
    τ of ``sweep``, the window statistics (``windowed``: positional statistics), the bool table
    (``active``: per-token or trigram counts)."""

    threshold: float
    sweep: tuple[float, ...] = ()
    windowed: bool = False
    active: bool = False


@dataclass
class Reductions:
    """One layer's batch reduced (see the module docstring): ``counts`` (int64 ``[W]``), ``sweep``
    (int64 ``[S, W]`` in the order of ``Plan.sweep``; ``None`` without a sweep), ``abs_sum``,
    ``total``, ``total_sq`` (float64 ``[W]``), ``max``, ``min`` (float32 ``[W]``); ``active`` (bool
    ``[n, W]``, plan.active); with plan.windowed, the full windows' :class:`WindowMoments`
    (``None`` when the batch has none) and the per-position sums over them, ``position_active``
    (float32 counts, exact) and ``position_sum`` (float32), both ``[T, W]``. ``active`` (and the
    tensor blocks' position sums) are :class:`~neuronbench.capture.batch.Workspace` buffers, valid
    until the next layer's reductions: a statistic adds them into its own totals, never keeps them."""

    counts: torch.Tensor
    sweep: torch.Tensor | None
    abs_sum: torch.Tensor
    total: torch.Tensor
    total_sq: torch.Tensor
    max: torch.Tensor
    min: torch.Tensor
    active: torch.Tensor | None = None
    windows: WindowMoments | None = None
    position_active: torch.Tensor | None = None
    position_sum: torch.Tensor | None = None


@dataclass(frozen=True)
class _Block:
    """Rows ``t₀:t₁`` of ``windows`` consecutive segments of ``size`` rows each, the first at flat
    row ``start`` and segment index ``first`` (``windows > 1`` only for whole full windows);
    ``positional``: full windows whose per-position sums are kept."""

    start: int
    windows: int
    size: int
    first: int
    t0: int
    t1: int
    positional: bool


def plan_blocks(segments: list[tuple[int, int, bool]], width: int, windowed: bool,
                device: torch.device) -> list[_Block]:
    """The blocks of a batch: a segment longer than :data:`BLOCK_BYTES` in equal blocks of rows;
    shorter full windows grouped, consecutive ones, into blocks of up to :data:`GROUP_BYTES` (on a
    device without sizes, every segment whole and all consecutive full windows in one block)."""
    budget, group = BLOCK_BYTES.get(device.type), GROUP_BYTES.get(device.type)
    blocks: list[_Block] = []
    index = 0
    while index < len(segments):
        start, size, full = segments[index]
        positional = full and windowed
        rows = size if budget is None else math.ceil(size / math.ceil(size / max(1, budget // (4 * width))))
        if rows == size and full:
            limit = len(segments) if group is None else max(1, group // (4 * width * size))
            count = 1
            while count < limit and index + count < len(segments) and segments[index + count][2]:
                count += 1
            blocks.append(_Block(start, count, size, index, 0, size, positional))
            index += count
            continue
        blocks.extend(_Block(start, 1, size, index, t0, min(t0 + rows, size), positional) for t0 in range(0, size, rows))
        index += 1
    return blocks


class _Counts:
    """A float32 running count ``[..., W]`` moved into an int64 total before it could round."""

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        self.partial = torch.zeros(shape, dtype=torch.float32, device=device)
        self.total = torch.zeros(shape, dtype=torch.long, device=device)
        self.rows = 0

    def room(self, rows: int) -> None:
        """Make room for ``rows`` more rows in the float32 count."""
        if self.rows + rows >= EXACT_ROWS:
            self.total += self.partial.long()
            self.partial.zero_()
            self.rows = 0
        self.rows += rows

    def result(self) -> torch.Tensor:
        return self.total + self.partial.long()


class _Segments:
    """Sums of each segment (a window's real rows) centred on the segment's float32 mean: float32
    totals of per-block matmuls (a few blocks per segment), read out in float64."""

    def __init__(self, sizes: torch.Tensor, length: int, width: int, device: torch.device) -> None:
        n, f32 = sizes.shape[0], torch.float32
        self.sizes = sizes
        self.basis = torch.stack([torch.ones(length, device=device),
                                  torch.arange(length, dtype=f32, device=device) - (length - 1) / 2])
        self.means = torch.empty(n, 1, width, dtype=f32, device=device)
        self.sums = torch.zeros(n, 2, width, dtype=f32, device=device)  # Σ d, Σ (t − t̄) d
        self.squares = torch.zeros(n, 1, width, dtype=f32, device=device)  # Σ d²
        self.magnitude = torch.zeros(n, 1, width, dtype=f32, device=device)  # Σ |a|
        self.max = torch.empty(n, width, dtype=f32, device=device)
        self.min = torch.empty(n, width, dtype=f32, device=device)

    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ a, Σ (a − ā)²)`` of each segment (float64 ``[n, W]``): ``Σ a = size·m + Σ d``,
        ``Σ (a − ā)² = Σ d² − (Σ d)²/size``."""
        residual = self.sums[:, 0].double()
        total = self.means[:, 0].double() * self.sizes + residual
        centred_sq = (self.squares[:, 0].double() - residual.square() / self.sizes).clamp_min(0.0)
        return total, centred_sq

    def windows(self, index: torch.Tensor, length: int) -> WindowMoments:
        """:class:`WindowMoments` of the segments ``index`` (int64: full windows of ``length`` rows)."""
        total, centred_sq = (value.index_select(0, index) for value in self.totals())
        return WindowMoments(total, self.sums[:, 1].index_select(0, index).double(), centred_sq,
                             self.max.index_select(0, index), self.min.index_select(0, index), length)


def reduce_layer(flat: torch.Tensor, batch: BatchContext, mask: Mask, plan: Plan,
                 workspace: Workspace) -> Reductions:
    """Every reduction of ``plan`` over one layer's batch ``flat [n_real, W]`` (float32,
    contiguous; ``n_real > 0``), one block of rows at a time (see the module docstring)."""
    (n, width), device = flat.shape, flat.device
    cut = mask.cut(plan.threshold)
    others = [mask.cut(tau) for tau in plan.sweep if tau != plan.threshold]
    length, segments = batch.real.shape[1], batch.segments
    blocks = plan_blocks(segments, width, plan.windowed, device)
    largest = max(block.windows * (block.t1 - block.t0) for block in blocks)
    positional = [i for i, (_, _, whole) in enumerate(segments) if whole] if plan.windowed else []

    counts = _Counts((1, width), device)
    sweep = _Counts((len(others), 1, width), device) if others else None
    ones = torch.ones(1, max(largest, length), dtype=torch.float32, device=device)
    active = workspace.buffer("active", (n, width), device, torch.bool) if plan.active else None
    sums = _Segments(batch.segment_sizes, length, width, device)
    position_active = position_sum = None
    if positional:
        position_active = workspace.buffer("position_active", (length, width), device)
        position_sum = workspace.buffer("position_sum", (length, width), device)

    for block in blocks:
        k, t0, t1 = block.windows, block.t0, block.t1
        r, seg = t1 - t0, slice(block.first, block.first + block.windows)
        whole = flat[block.start:block.start + k * block.size].view(k, block.size, width)
        if t0 == 0:
            torch.matmul(sums.basis[:1, :block.size], whole, out=sums.means[seg]).div_(block.size)
        values = whole[:, t0:t1]
        level, weights, d = (workspace.buffer(role, (k, r, width), device) for role in ("level", "mask", "scratch"))
        unit = ones[:, :r].expand(k, 1, r)
        torch.abs(values, out=level)
        sums.magnitude[seg].baddbmm_(unit, level)
        if not mask.relative:
            level = values
        torch.gt(level, cut, out=weights)
        rows = weights.view(k * r, width)
        counts.room(k * r)
        counts.partial.addmm_(ones[:, :k * r], rows)
        if sweep is not None:
            sweep.room(k * r)
            for i, other in enumerate(others):
                sweep.partial[i].addmm_(ones[:, :k * r], torch.gt(level, other, out=d).view(k * r, width))
        if active is not None:
            active[block.start + t0:block.start + t0 + k * r].copy_(rows)
        _first_or(sums.max[seg], values.amax(1), t0, torch.maximum)
        _first_or(sums.min[seg], values.amin(1), t0, torch.minimum)
        torch.sub(values, sums.means[seg], out=d)
        sums.sums[seg].baddbmm_(sums.basis[:, t0:t1].expand(k, 2, r), d)
        sums.squares[seg].baddbmm_(unit, d.mul_(d))
        if block.positional:
            beta = 0 if block.first == positional[0] else 1  # the first full window writes, the others add
            position_active[t0:t1].view(1, -1).addmm_(ones[:, :k], weights.view(k, r * width), beta=beta)
            position_sum[t0:t1].view(1, -1).addmm_(ones[:, :k], values.reshape(k, r * width), beta=beta)

    total, centred_sq = sums.totals()
    sum_sq = centred_sq + total.square() / sums.sizes
    at_tau = counts.result()[0]
    return Reductions(
        counts=at_tau, sweep=_sweep_in_order(plan, at_tau, sweep), abs_sum=sums.magnitude[:, 0].double().sum(0),
        total=total.sum(0), total_sq=sum_sq.sum(0), max=sums.max.amax(0), min=sums.min.amin(0), active=active,
        windows=sums.windows(batch.full_segments, length) if positional else None, position_active=position_active,
        position_sum=position_sum,
    )


def _first_or(running: torch.Tensor, value: torch.Tensor, first: int, combine) -> None:
    """``running = value`` when ``first == 0``, else ``running = combine(running, value)`` (in place)."""
    if first == 0:
        running.copy_(value)
    else:
        combine(running, value, out=running)


def _sweep_in_order(plan: Plan, counts: torch.Tensor, sweep: _Counts | None) -> torch.Tensor | None:
    """``[S, W]`` counts in the order of ``plan.sweep`` (``None`` without a sweep); a τ_s equal to
    τ is ``counts``, the counts at τ."""
    if not plan.sweep:
        return None
    others = iter(() if sweep is None else sweep.result()[:, 0])
    return torch.stack([counts if tau == plan.threshold else next(others) for tau in plan.sweep])
