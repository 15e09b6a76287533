"""Per-position statistics over full-length windows (the positional detectors' input).

==========================  ===================  ==============================================
array                       shape                definition
==========================  ===================  ==============================================
``pos_tokens``              ``[T]``              full-length windows seen (per position)
``pos_active``              ``[T, W]``           ``#{full windows : a(pos) > τ}``
``pos_sum``                 ``[T, W]``           ``Σ a(pos)`` over full windows
``pearson_sum``             ``[W]``              ``Σ_windows r(pos, a)`` (r := 0 for a neuron
                                                 constant within a window)
==========================  ===================  ==============================================
"""

from __future__ import annotations

import numpy as np
import torch

from neuronbench.capture.batch import LayerBatch


def pearson_with_position(windows: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between position and activation, per window and neuron.

    ``r = Σ_t (t − t̄)(a_t − ā) / sqrt(Σ_t (t − t̄)² · Σ_t (a_t − ā)²)`` over the T positions of
    a window; defined as 0 where the neuron is constant within the window (``max == min``, an
    exact test). Computed in float64 (a score near 0 must stay exact to 1e-6 relative); returns
    ``[n, W]`` float64.
    """
    x = windows.double()
    positions = torch.arange(x.shape[1], dtype=torch.float64, device=x.device)
    positions = positions - positions.mean()
    centred = x - x.mean(dim=1, keepdim=True)
    numerator = torch.einsum("t,ntw->nw", positions, centred)
    denominator = positions.norm() * centred.norm(dim=1)
    varying = x.amax(dim=1) > x.amin(dim=1)
    r = numerator / denominator.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(varying, r, 0.0)


class Positions:
    """``pos_tokens``, ``pos_active``, ``pos_sum``, ``pearson_sum`` of one layer."""

    def __init__(self, width: int, window: int, device: torch.device) -> None:
        long, f64 = torch.long, torch.float64
        self.n_windows = 0
        self.totals = dict(
            pos_tokens=torch.zeros(window, dtype=long, device=device),
            pos_active=torch.zeros(window, width, dtype=long, device=device),
            pos_sum=torch.zeros(window, width, dtype=f64, device=device),
            pearson_sum=torch.zeros(width, dtype=f64, device=device),
        )

    def update(self, view: LayerBatch) -> None:
        windows = view.full_windows
        if windows.shape[0] == 0:
            return
        a = self.totals
        self.n_windows += windows.shape[0]
        a["pos_tokens"] += windows.shape[0]
        a["pos_active"] += torch.count_nonzero(view.full_active, dim=0)
        a["pos_sum"] += windows.sum(0, dtype=torch.float64)
        a["pearson_sum"] += pearson_with_position(windows).sum(0)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: value.cpu().numpy() for name, value in self.totals.items()}
