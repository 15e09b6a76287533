"""One layer's per-batch reductions as ``torch.compile``d functions (``CaptureConfig.compile``).

:func:`moment_reductions` computes, from one layer's batch ``flat [n, W]`` (float32) and the cut
levels ``cuts [S]`` (τ, then the sweep's τ_s, already multiplied by the layer scale for a relative
rule), everything :class:`~neuronbench.capture.moments.Moments` adds to its totals:
``counts[s] = Σ_rows [level(a) > cuts[s]]`` (int64, exact), ``Σ (a − p)`` and ``Σ (a − p)²`` around
the first row ``p`` (:func:`pivot_totals`), ``Σ |a|``, ``max``, ``min``.

:func:`window_reductions` computes, from the full windows ``[n, T, W]``, what
:class:`~neuronbench.capture.batch.WindowMoments` and :class:`~neuronbench.capture.positions.Positions`
need: per window ``Σ_t a_t``, ``Σ_t (t − t̄) a_t``, ``Σ_t a_t²``, max, min, and per position the
active count and ``Σ a`` over the windows.

Eager (as written here), these are about ``2S + 8`` and ``8`` passes over the batch; compiled (Inductor), the
reductions share loops and nothing of size ``[n, W]`` is written, so the sums accumulate in
float64 at no extra memory traffic (products of float32 values are exact in float64): more exact
than float32 sums. Counts are identical either way.

:func:`reduce_layer` puts them together into the :class:`~neuronbench.capture.blocks.Reductions`
that the eager :func:`~neuronbench.capture.blocks.reduce_layer` returns.

The first call of each compiles (tens of seconds on a CPU; Inductor caches the result on disk for
later processes). If compiling or running a compiled function fails, it warns once, naming the
error, and runs eagerly for the rest of the process (:data:`FALLBACK` records why).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable

import torch

from neuronbench.activation import Mask
from neuronbench.capture.batch import BatchContext, WindowMoments, Workspace
from neuronbench.capture.blocks import Plan, Reductions

FALLBACK: dict[str, str] = {}
"""``{function name: the error}`` for each compiled function that failed (then runs eagerly)."""
COMPILE_SECONDS: dict[str, float] = {}
"""Wall time of the first (compiling) call of each compiled function in this process."""


def moment_reductions(flat: torch.Tensor, cuts: torch.Tensor, relative: bool) -> tuple[torch.Tensor, ...]:
    """``(counts [S, W] int64, Σ (a − p), Σ (a − p)², Σ |a|, max, min)`` of ``flat [n, W]``
    (sums float64, extremes float32)."""
    magnitude = flat.abs()
    level = magnitude if relative else flat
    counts = torch.stack([(level > cuts[i]).sum(0) for i in range(cuts.shape[0])])
    shifted = flat.double() - flat[0].double()
    return (counts, shifted.sum(0), (shifted * shifted).sum(0), magnitude.double().sum(0), flat.amax(0),
            flat.amin(0))


def window_reductions(windows: torch.Tensor, cut: torch.Tensor, relative: bool) -> tuple[torch.Tensor, ...]:
    """Of full windows ``[n, T, W]``: per window ``(Σ_t a_t, Σ_t (t − t̄) a_t, Σ_t a_t²)`` (float64
    ``[n, W]``), ``max``, ``min`` (float32 ``[n, W]``); per position ``Σ_windows [level(a) > cut]``
    (int64 ``[T, W]``) and ``Σ_windows a`` (float64 ``[T, W]``)."""
    wide = windows.double()
    length = windows.shape[1]
    centre = torch.arange(length, dtype=torch.float64, device=windows.device) - (length - 1) / 2
    level = windows.abs() if relative else windows
    return (wide.sum(1), (wide * centre[:, None]).sum(1), (wide * wide).sum(1), windows.amax(1), windows.amin(1),
            (level > cut).sum(0), wide.sum(0))


class Compiled:
    """``fn`` under ``torch.compile`` (dynamic shapes), with the eager fallback described above."""

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.compiled = torch.compile(fn, dynamic=True)

    def __call__(self, *args) -> tuple[torch.Tensor, ...]:
        if self.name in FALLBACK:
            return self.fn(*args)
        start = time.perf_counter()
        try:
            result = self.compiled(*args)
        except Exception as error:  # any compiler or runtime failure of the compiled code: eager from now on
            FALLBACK[self.name] = f"{type(error).__name__}: {error}"
            warnings.warn(f"torch.compile of the capture's {self.name} failed "
                          f"({FALLBACK[self.name].splitlines()[0]}); using the eager function", RuntimeWarning,
                          stacklevel=2)
            return self.fn(*args)
        COMPILE_SECONDS.setdefault(self.name, time.perf_counter() - start)
        return result


moments = Compiled(moment_reductions)
windows = Compiled(window_reductions)


def pivot_totals(shifted_sum: torch.Tensor, shifted_sq: torch.Tensor, pivot: torch.Tensor,
                 n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ a, Σ a²)`` (float64) of ``n`` rows from their sums around ``p``: ``Σ a = Σ (a − p) + n·p``,
    ``Σ a² = Σ (a − p)² + 2p·Σ (a − p) + n·p²``."""
    s1, s2, p = shifted_sum.double(), shifted_sq.double(), pivot.double()
    return s1 + n * p, s2 + 2 * p * s1 + n * p * p


@functools.lru_cache(maxsize=256)
def _cuts(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The cuts as a tensor on ``device``, made once per layer's values: made afresh for every
    layer and batch, it would be a host-to-device copy, a synchronisation with a GPU in the
    middle of the forward pass."""
    return torch.tensor(values, dtype=dtype).to(device)


def reduce_layer(flat: torch.Tensor, batch: BatchContext, mask: Mask, plan: Plan,
                 workspace: Workspace) -> Reductions:
    """:func:`neuronbench.capture.blocks.reduce_layer` from the compiled functions (``workspace`` unused)."""
    cuts = _cuts(tuple(mask.cut(tau) for tau in (plan.threshold, *plan.sweep)), flat.dtype, flat.device)
    counts, shifted_sum, shifted_sq, abs_sum, largest, smallest = moments(flat, cuts, mask.relative)
    total, total_sq = pivot_totals(shifted_sum, shifted_sq, flat[0], flat.shape[0])
    reduced = Reductions(counts=counts[0], sweep=counts[1:] if plan.sweep else None, abs_sum=abs_sum, total=total,
                         total_sq=total_sq, max=largest, min=smallest)
    if plan.active:
        reduced.active = mask.above(mask.level(flat), plan.threshold).bool()
    full = [flat[start:start + size] for start, size, whole in batch.segments if whole]
    if plan.windowed and full:
        length = batch.real.shape[1]
        window_sum, moment, window_sq, window_max, window_min, reduced.position_active, reduced.position_sum = windows(
            torch.stack(full), cuts[:1].reshape(()), mask.relative)
        centred_sq = (window_sq - window_sum.square() / length).clamp_min(0.0)
        reduced.windows = WindowMoments(window_sum, moment, centred_sq, window_max, window_min, length)
    return reduced
