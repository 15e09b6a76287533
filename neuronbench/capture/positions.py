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

from neuronbench.capture.batch import LayerBatch, WindowMoments


def pearson_with_position(windows: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between position and activation, per window and neuron.

    ``r = Σ_t (t − t̄)(a_t − ā) / sqrt(Σ_t (t − t̄)² · Σ_t (a_t − ā)²)`` over the T positions of
    a window; defined as 0 where the neuron is constant within the window (``max == min``, an
    exact test). The numerator ``Σ_t (t − t̄) a_t`` is one float64 matmul, the spread is summed
    in float32 around the float64 window mean (:class:`~neuronbench.capture.batch.WindowMoments`);
    returns ``[n, W]`` float64.
    """
    return WindowMoments.of(windows.float()).pearson()


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
        a["pos_active"] += view.full_weights.sum(0).long()  # ≤ batch size terms: exact in float32
        a["pos_sum"] += view.window_moments.position_total
        a["pearson_sum"] += view.window_moments.pearson().sum(0)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: value.cpu().numpy() for name, value in self.totals.items()}
