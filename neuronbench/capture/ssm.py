"""Statistics of an SSM's discretization step Δ (Mamba), per channel of one layer.

==========================  ===================  ==============================================
array                       shape                definition
==========================  ===================  ==============================================
``log_delta_sum``           ``[D]``              ``Σ log Δ`` over real tokens
``log_delta_sum_sq``        ``[D]``              ``Σ (log Δ)²``
``log_delta_max``, ``_min`` ``[D]``              extremes of ``log Δ``
==========================  ===================  ==============================================

``log Δ`` is taken in float32 (Δ > 0 is a softplus output). Each batch is reduced around a
per-channel pivot ``c``, the first real token's ``log Δ`` (any value in the channel's range serves,
and a row costs nothing to take, unlike a column mean): ``Σ (x − c)`` and ``Σ (x − c)²`` stay small
where the ``x`` lie near each other, so their rounding does not swamp the spread that
:func:`neuronbench.detectors.delta.log_delta_spread` takes from the raw sums,
``Σ x = Σ (x − c) + n·c`` and ``Σ x² = Σ (x − c)² + 2c·Σ (x − c) + n·c²`` (float64). On a CPU one C
loop reduces a batch (:func:`neuronbench.capture.native.shifted_moments`, accumulating in double);
elsewhere float32 tensor reductions do.
"""

from __future__ import annotations

import numpy as np
import torch

from neuronbench.capture import native
from neuronbench.capture.batch import BatchContext, Workspace
from neuronbench.errors import CaptureError


class DeltaMoments:
    """Moments and extremes of ``log Δ`` of one layer's ``channels`` (the neurons' width: Mamba's
    Δ has one value per channel of the scan). Every total and the pivot are allocated here, before
    any forward pass (:class:`~neuronbench.capture.positions.Positions` says why)."""

    def __init__(self, channels: int, device: torch.device) -> None:
        f64 = torch.float64
        self.channels = channels
        self.n_tokens = 0
        self.pivot = torch.zeros(channels, dtype=torch.float32, device=device)
        self.totals = dict(
            shifted_sum=torch.zeros(channels, dtype=f64, device=device),
            shifted_sum_sq=torch.zeros(channels, dtype=f64, device=device),
            log_delta_max=torch.full((channels,), -torch.inf, dtype=f64, device=device),
            log_delta_min=torch.full((channels,), torch.inf, dtype=f64, device=device),
        )

    def update(self, delta: torch.Tensor, batch: BatchContext, workspace: Workspace) -> torch.Tensor | None:
        """Fold ``log Δ`` of the real positions of ``delta [B, T, D]``; return the batch's float64
        ``Σ (log Δ − c)`` (the non-finite check's checksum; ``None`` without real tokens)."""
        if delta.shape[-1] != self.channels:
            raise CaptureError(f"Δ has {delta.shape[-1]} channels, its layer {self.channels} neurons: an SSM "
                               "adapter hands one Δ per channel of the neurons (shape [B, T, D])")
        flat = batch.flat(delta)
        if flat.shape[0] == 0:
            return None
        log_delta = torch.log(flat, out=workspace.buffer("delta", flat.shape, flat.device))
        a = self.totals
        if self.n_tokens == 0:
            self.pivot.copy_(log_delta[0])  # log_delta is a reused buffer
        self.n_tokens += log_delta.shape[0]
        shifted_sum, shifted_sum_sq, high, low = self._batch_moments(log_delta)
        torch.maximum(a["log_delta_max"], high, out=a["log_delta_max"])
        torch.minimum(a["log_delta_min"], low, out=a["log_delta_min"])
        a["shifted_sum"] += shifted_sum
        a["shifted_sum_sq"] += shifted_sum_sq
        return shifted_sum

    def _batch_moments(self, log_delta: torch.Tensor) -> torch.Tensor:
        """``[Σ (x − c), Σ (x − c)², max x, min x]`` of one batch's ``log_delta [n, D]`` (float64
        ``[4, D]``); the float32 reductions overwrite ``log_delta`` with ``x − c``."""
        reduced = native.shifted_moments(log_delta, self.pivot)
        if reduced is not None:
            return reduced
        high, low = log_delta.amax(0).double(), log_delta.amin(0).double()
        shifted = log_delta.sub_(self.pivot)
        shifted_sum = shifted.sum(0).double()
        return torch.stack([shifted_sum, shifted.mul_(shifted).sum(0).double(), high, low])

    def arrays(self) -> dict[str, np.ndarray]:
        if self.n_tokens == 0:
            return {}
        a, c, n = self.totals, self.pivot.double(), self.n_tokens
        raw = {
            "log_delta_sum": a["shifted_sum"] + n * c,
            "log_delta_sum_sq": a["shifted_sum_sq"] + 2 * c * a["shifted_sum"] + n * c * c,
            "log_delta_max": a["log_delta_max"],
            "log_delta_min": a["log_delta_min"],
        }
        return {name: value.cpu().numpy() for name, value in raw.items()}
