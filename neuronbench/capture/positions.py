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

from neuronbench.activation import Mask
from neuronbench.capture.batch import EXACT_ROWS, BatchContext, LayerBatch, Workspace
from neuronbench.capture.blocks import Plan
from neuronbench.capture.native import reduce_layer


def pearson_with_position(windows: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between position and activation, per window and neuron.

    ``r = Σ_t (t − t̄)(a_t − ā) / sqrt(Σ_t (t − t̄)² · Σ_t (a_t − ā)²)`` over the T positions of
    a window; defined as 0 where the neuron is constant within the window (``max == min``, an
    exact test). Numerator and spread are sums of the values centred on the window mean
    (:class:`~neuronbench.capture.batch.WindowMoments`, from :func:`~neuronbench.capture.native.reduce_layer`);
    returns ``[n, W]`` float64.
    """
    n, length, width = windows.shape
    batch = BatchContext.of(torch.ones(n, length, dtype=torch.bool, device=windows.device))
    flat = windows.reshape(n * length, width).to(torch.float32).contiguous()
    return reduce_layer(flat, batch, Mask(relative=False, scale=1.0), Plan(0.0, windowed=True), Workspace()).windows.pearson()


class Positions:
    """``pos_tokens``, ``pos_active``, ``pos_sum``, ``pearson_sum`` of one layer.

    Per batch, the sums over its full windows are the reductions' ``position_active`` and
    ``position_sum`` (:class:`~neuronbench.capture.blocks.Reductions`; ``pos_active`` sums at most a
    batch of 0/1 values: exact). ``pos_active`` is totalled in float32, exact while
    below :data:`~neuronbench.capture.batch.EXACT_ROWS` windows, and moved into an int64 total
    before it could get there (``moved``, made only then); ``pos_sum`` is totalled in float64. The
    ``[T, W]`` totals are allocated here, before any forward pass: made by the first batch, they
    were carved out of the heap space that the model's freed temporaries left, and split it so
    that the next layer's temporaries of the same size no longer fitted (a full 4 × 512-token
    mamba-130m pass: 12 MiB of totals per layer took the heap from 1.1 to 1.8–4.2 GiB).
    :meth:`arrays` adds nothing when no count was moved."""

    def __init__(self, width: int, window: int, device: torch.device) -> None:
        self.shape = (window, width)
        self.n_windows = 0
        self.pending = 0
        """Windows counted in the float32 total ``active``."""
        self.active = torch.zeros(self.shape, dtype=torch.float32, device=device)
        self.moved: torch.Tensor | None = None
        self.pos_sum = torch.zeros(self.shape, dtype=torch.float64, device=device)
        self.pearson_sum = torch.zeros(width, dtype=torch.float64, device=device)

    def update(self, view: LayerBatch) -> None:
        reduced = view.reductions
        if reduced is None or reduced.windows is None:
            return
        n = reduced.windows.total.shape[0]
        if self.pending + n >= EXACT_ROWS:
            self.moved = self.active.long() if self.moved is None else self.moved + self.active.long()
            self.active.zero_()
            self.pending = 0
        self.n_windows += n
        self.pending += n
        self.active += reduced.position_active
        self.pos_sum += reduced.position_sum
        self.pearson_sum += reduced.windows.pearson_total()

    def arrays(self) -> dict[str, np.ndarray]:
        active = self.active.long() if self.moved is None else self.moved + self.active.long()
        pos_tokens = np.full(self.shape[0], self.n_windows, dtype=np.int64)  # every full window covers every position
        return {"pos_tokens": pos_tokens, "pos_active": active.cpu().numpy(),
                "pos_sum": self.pos_sum.cpu().numpy(), "pearson_sum": self.pearson_sum.cpu().numpy()}
