"""Per-neuron counts, moments and extremes over every real token.

==========================  ===================  ==============================================
array                       shape                definition
==========================  ===================  ==============================================
``active_count``            ``[W]``              ``#{tokens : a > τ}``
``sweep_count``             ``[S, W]``           ``#{tokens : a > τ_s}`` for each sweep τ_s
``sum``, ``sum_sq``         ``[W]``              ``Σ a``, ``Σ a²`` (float64 totals)
``max``, ``min``            ``[W]``              extremes of ``a``
==========================  ===================  ==============================================
"""

from __future__ import annotations

import numpy as np
import torch

from neuronbench.capture.batch import LayerBatch


class Moments:
    """``active_count``, ``sweep_count``, ``sum``, ``sum_sq``, ``max``, ``min`` of one layer."""

    def __init__(self, width: int, sweep: tuple[float, ...], device: torch.device) -> None:
        long, f64 = torch.long, torch.float64
        self.sweep = sweep
        self.n_tokens = 0
        self.totals = dict(
            active_count=torch.zeros(width, dtype=long, device=device),
            sweep_count=torch.zeros(len(sweep), width, dtype=long, device=device),
            sum=torch.zeros(width, dtype=f64, device=device),
            sum_sq=torch.zeros(width, dtype=f64, device=device),
            max=torch.full((width,), -torch.inf, dtype=f64, device=device),
            min=torch.full((width,), torch.inf, dtype=f64, device=device),
        )

    def update(self, view: LayerBatch) -> None:
        flat, a = view.flat, self.totals
        self.n_tokens += flat.shape[0]
        a["active_count"] += torch.count_nonzero(view.active, dim=0)
        for i, tau in enumerate(self.sweep):
            a["sweep_count"][i] += torch.count_nonzero(flat > tau, dim=0)
        a["sum"] += flat.sum(0, dtype=torch.float64)
        a["sum_sq"] += (flat * flat).sum(0).double()  # one batch in float32 (all terms ≥ 0), totals in float64
        if flat.shape[0]:
            torch.maximum(a["max"], flat.amax(0).double(), out=a["max"])
            torch.minimum(a["min"], flat.amin(0).double(), out=a["min"])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: value.cpu().numpy() for name, value in self.totals.items()}
