"""Top-k activating positions of every neuron, streamed in the capture pass (the neuron pages'
input: Neuroscope-style top-activating contexts).

==========================  ===================  ==============================================
array                       shape                definition
==========================  ===================  ==============================================
``topk_values``             ``[k, W]`` float32   the k largest activations ``a_j`` over every
                                                 real token, in descending order
``topk_positions``          ``[k, W]`` int64     where: ``window · T + t`` (row-major in the
                                                 capture's token windows), ``-1`` if fewer than
                                                 k real tokens were seen
==========================  ===================  ==============================================

Exact running top-k: each batch's own top-k per neuron (``torch.topk`` over its real positions)
is merged with the running top-k by one more ``torch.topk`` over the ``2k`` candidates, so the
state is ``k × W`` values and positions per layer (12 bytes each), flat in the number of tokens.
Once k values are held, only the neurons with some activation in the batch above their current
k-th value are merged (the others cannot change).
The values equal a brute-force ``torch.topk`` over the full ``[tokens, W]`` tensor exactly.
**Ties**: where several positions share the k-th largest value, which of them are kept is
whatever ``torch.topk`` picks (deterministic for the same input on the same device, but not
"lowest position first"); the values are the same either way.
"""

from __future__ import annotations

import numpy as np
import torch

from neuronbench.capture.batch import LayerBatch
from neuronbench.errors import ConfigError

DEFAULT_K = 20


def topk_state_bytes(k: int, width: int) -> int:
    """Memory of one layer's top-k state: float32 values and int64 positions, ``12 · k · W``."""
    return k * width * (4 + 8)


class TopActivations:
    """``topk_values``, ``topk_positions`` of one layer (see the module docstring)."""

    def __init__(self, width: int, k: int, device: torch.device) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"top_activations (--top-contexts) must be an integer ≥ 1, got {k!r}")
        self.k = k
        self.windows_seen = 0
        self.values = torch.full((0, width), -torch.inf, dtype=torch.float32, device=device)
        self.positions = torch.full((0, width), -1, dtype=torch.long, device=device)

    def update(self, view: LayerBatch) -> None:
        flat, real = view.flat, view.batch.real
        window = real.shape[1]
        rows = real.flatten().nonzero().flatten()  # row-major index (b·T + t) of each real position
        positions = self.windows_seen * window + rows
        self.windows_seen += real.shape[0]
        if flat.shape[0] == 0:
            return
        if self.values.shape[0] == self.k:  # full: only neurons with a value above their k-th can change
            columns = (flat > self.values[-1]).any(0).nonzero().flatten()
            if columns.numel() < flat.shape[1]:
                values, kept = self._merge(flat[:, columns], positions, self.values[:, columns],
                                           self.positions[:, columns])
                self.values[:, columns], self.positions[:, columns] = values, kept
                return
        self.values, self.positions = self._merge(flat, positions, self.values, self.positions)

    def _merge(self, flat: torch.Tensor, positions: torch.Tensor, values: torch.Tensor,
               kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k of the running ``(values, kept)`` and the batch's ``flat`` at ``positions``."""
        top, where = torch.topk(flat, min(self.k, flat.shape[0]), dim=0)
        values = torch.cat([values, top])
        candidates = torch.cat([kept, positions[where]])
        values, order = torch.topk(values, min(self.k, values.shape[0]), dim=0)
        return values, torch.gather(candidates, 0, order)

    def arrays(self) -> dict[str, np.ndarray]:
        missing = self.k - self.values.shape[0]
        values, positions = self.values.cpu().numpy(), self.positions.cpu().numpy()
        if missing > 0:
            width = values.shape[1]
            values = np.concatenate([values, np.full((missing, width), -np.inf, dtype=np.float32)])
            positions = np.concatenate([positions, np.full((missing, width), -1, dtype=np.int64)])
        return {"topk_values": values, "topk_positions": positions}
