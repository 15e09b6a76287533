"""Per-neuron counts, moments and extremes over every real token.

==========================  ===================  ==============================================
array                       shape                definition
==========================  ===================  ==============================================
``active_count``            ``[W]``              ``#{tokens : active at τ}`` (the capture's rule)
``sweep_count``             ``[S, W]``           ``#{tokens : active at τ_s}`` for each sweep τ_s
``sum``, ``sum_sq``         ``[W]``              ``Σ a``, ``Σ a²`` (float64 totals)
``abs_sum``                 ``[W]``              ``Σ |a|`` (activation mass; float64 total)
``max``, ``min``            ``[W]``              extremes of ``a``
==========================  ===================  ==============================================

Each batch is reduced in float32 (counts as matmuls of the 0/1 mask; sums around a pivot,
:func:`shifted_sums`) and only the per-batch results are added to the float64 / int64 totals. When every
window of the batch is full and the positional statistics already computed the per-window
sufficient statistics (:class:`~neuronbench.capture.batch.WindowMoments`, float64 window sums),
the sums and extremes are read from those instead of reducing the batch again.
"""

from __future__ import annotations

import numpy as np
import torch

from neuronbench.capture.batch import LayerBatch, column_counts


def shifted_sums(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ a, Σ a²)`` per column of ``flat [n, W]`` (float64), summed in float32 around the first
    row ``p``: ``Σ a = Σ (a − p) + n·p``, ``Σ a² = Σ (a − p)² + 2p·Σ (a − p) + n·p²``. The float32
    rounding is relative to the spread around ``p``, not to ``|a|``: exact for a constant neuron."""
    pivot = flat[0]
    shifted = flat - pivot
    s1, s2, p, n = shifted.sum(0).double(), (shifted * shifted).sum(0).double(), pivot.double(), flat.shape[0]
    return s1 + n * p, s2 + 2 * p * s1 + n * p * p


class Moments:
    """``active_count``, ``sweep_count``, ``sum``, ``sum_sq``, ``abs_sum``, ``max``, ``min`` of one layer."""

    def __init__(self, width: int, sweep: tuple[float, ...], device: torch.device) -> None:
        long, f64 = torch.long, torch.float64
        self.sweep = sweep
        self.n_tokens = 0
        self.totals = dict(
            active_count=torch.zeros(width, dtype=long, device=device),
            sweep_count=torch.zeros(len(sweep), width, dtype=long, device=device),
            sum=torch.zeros(width, dtype=f64, device=device),
            sum_sq=torch.zeros(width, dtype=f64, device=device),
            abs_sum=torch.zeros(width, dtype=f64, device=device),
            max=torch.full((width,), -torch.inf, dtype=f64, device=device),
            min=torch.full((width,), torch.inf, dtype=f64, device=device),
        )

    def update(self, view: LayerBatch) -> None:
        flat, a = view.flat, self.totals
        self.n_tokens += flat.shape[0]
        if flat.shape[0] == 0:
            return
        a["active_count"] += column_counts(view.weights)
        for i, tau in enumerate(self.sweep):
            mask = view.weights if tau == view.threshold else view.mask(flat, tau)
            a["sweep_count"][i] += column_counts(mask)
        if view.windowed and view.batch.all_real:
            windows = view.window_moments
            total, total_sq = windows.total.sum(0), windows.sum_sq.sum(0)
            largest, smallest = windows.max.amax(0), windows.min.amin(0)
        else:
            total, total_sq = shifted_sums(flat)
            largest, smallest = flat.amax(0), flat.amin(0)
        a["sum"] += total
        a["sum_sq"] += total_sq
        torch.maximum(a["max"], largest.double(), out=a["max"])
        torch.minimum(a["min"], smallest.double(), out=a["min"])
        a["abs_sum"] += flat.abs().sum(0).double()  # a float32 reduction per batch, float64 totals

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: value.cpu().numpy() for name, value in self.totals.items()}
