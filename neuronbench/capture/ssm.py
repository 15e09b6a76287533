"""Statistics of an SSM's discretization step Δ (Mamba), per channel of one layer.

==========================  ===================  ==============================================
array                       shape                definition
==========================  ===================  ==============================================
``log_delta_sum``           ``[D]``              ``Σ log Δ`` over real tokens
``log_delta_sum_sq``        ``[D]``              ``Σ (log Δ)²``
``log_delta_max``, ``_min`` ``[D]``              extremes of ``log Δ``
==========================  ===================  ==============================================
"""

from __future__ import annotations

import numpy as np
import torch


class DeltaMoments:
    """Moments and extremes of ``log Δ`` of one layer (allocated on the first batch, when the
    channel count is known)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.n_tokens = 0
        self.totals: dict[str, torch.Tensor] = {}

    def update(self, delta: torch.Tensor, mask: torch.Tensor) -> None:
        """Fold ``log Δ`` of the real positions (``mask [B, T]``) of ``delta [B, T, D]``."""
        log_delta = delta[mask].double().log()
        a = self.totals
        if not a:
            d, dev = log_delta.shape[-1], self.device
            a.update(
                log_delta_sum=torch.zeros(d, dtype=torch.float64, device=dev),
                log_delta_sum_sq=torch.zeros(d, dtype=torch.float64, device=dev),
                log_delta_max=torch.full((d,), -torch.inf, dtype=torch.float64, device=dev),
                log_delta_min=torch.full((d,), torch.inf, dtype=torch.float64, device=dev),
            )
        self.n_tokens += log_delta.shape[0]
        a["log_delta_sum"] += log_delta.sum(0)
        a["log_delta_sum_sq"] += log_delta.square().sum(0)
        if log_delta.shape[0]:
            torch.maximum(a["log_delta_max"], log_delta.max(0).values, out=a["log_delta_max"])
            torch.minimum(a["log_delta_min"], log_delta.min(0).values, out=a["log_delta_min"])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: value.cpu().numpy() for name, value in self.totals.items()}
