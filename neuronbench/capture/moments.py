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

Each batch's counts, sums and extremes are the layer's :class:`~neuronbench.capture.blocks.Reductions`
(one read of the activations, float32 per block of rows, accumulated in float64 / int64;
:mod:`.blocks`); only those are added to the float64 / int64 totals. The τ sweep is optional
(``CaptureConfig.sweep = ()``: no ``sweep_count`` and no comparison per τ_s; only the
dead-fraction sweep figure reads it).

The reductions' ``total + total_sq`` is also the batch's checksum: ``Σ a + Σ a²`` (float64, NaN or
±inf wherever an input value is, and ±inf where either float32 sum overflowed), which the
non-finite check of :mod:`neuronbench.capture.checks` reads instead of reducing the tensor once
more.
"""

from __future__ import annotations

import numpy as np
import torch

from neuronbench.capture.batch import LayerBatch


class Moments:
    """``active_count``, ``sweep_count`` (when ``sweep`` is not empty), ``sum``, ``sum_sq``, ``abs_sum``,
    ``max``, ``min`` of one layer."""

    def __init__(self, width: int, sweep: tuple[float, ...], device: torch.device) -> None:
        long, f64 = torch.long, torch.float64
        self.sweep = sweep
        self.n_tokens = 0
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
        self.n_tokens += view.flat.shape[0]
        reduced = view.reductions
        if reduced is None:
            return
        a = self.totals
        a["active_count"] += reduced.counts
        if self.sweep:
            a["sweep_count"] += reduced.sweep
        a["abs_sum"] += reduced.abs_sum
        a["sum"] += reduced.total
        a["sum_sq"] += reduced.total_sq
        torch.maximum(a["max"], reduced.max.double(), out=a["max"])
        torch.minimum(a["min"], reduced.min.double(), out=a["min"])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: value.cpu().numpy() for name, value in self.totals.items()}
