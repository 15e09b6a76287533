"""Top-k activating positions of every neuron, streamed in the capture pass (the neuron pages'
input: Neuroscope-style top-activating contexts).

==========================  ===================  ==============================================
array                       shape                definition
==========================  ===================  ==============================================
``topk_values``             ``[k, W]`` float32   the k largest activations ``a_j`` over every
                                                 real token, in descending order (equal values:
                                                 lowest position first)
``topk_positions``          ``[k, W]`` int64     where: ``window · T + t`` (row-major in the
                                                 capture's token windows), ``-1`` if fewer than
                                                 k real tokens were seen
==========================  ===================  ==============================================

Exact running top-k: each batch's own top-k per neuron is merged with the running top-k by a
stable sort of the ``2k`` candidates, so the state is ``k × W`` values and positions per layer
(12 bytes each), flat in the number of tokens. Once k values are held, only a batch's values above
their neuron's current k-th can enter: they are found with one comparison and merged with the
held ones by a sort of the few candidates (:meth:`TopActivations._merge_above`), not by a
``torch.topk`` over the whole ``[tokens, W]`` batch.
**Ties** are broken by position: the result is the first k of all real positions ordered by
``(value descending, position ascending)``, a brute-force sort of the full ``[tokens, W]`` tensor,
whatever the batching. ``torch.topk`` picks among equal values arbitrarily, so a batch's own top-k
is taken with one value more: where the (k+1)-th equals the k-th, the column's tied rows are
chosen lowest first (:meth:`TopActivations._batch_top`); candidates are kept in
``(value, position)`` order and merged with a stable sort, in which the running ones (earlier
positions) come first. On a CPU with the C library (:mod:`.native`) one C pass does all of this:
each row's values are compared with their neuron's k-th (16 neurons per vector comparison) and an
entering value is inserted after the equal values held.
"""

from __future__ import annotations

import numpy as np
import torch

from neuronbench.capture import native
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
        flat, real, rows = view.flat, view.batch.real, view.batch.rows
        window = real.shape[1]
        if rows is None:  # every position real
            rows = torch.arange(real.numel(), device=flat.device)
        positions = self.windows_seen * window + rows  # row-major index (b·T + t) of each real position
        self.windows_seen += real.shape[0]
        if flat.shape[0] == 0:
            return
        if flat.device.type == "cpu" and self._merge_native(flat, positions):
            return
        if self.values.shape[0] == self.k:
            self._merge_above(flat, positions)
        else:
            self.values, self.positions = self._merge(flat, positions, self.values, self.positions)

    def _merge_native(self, flat: torch.Tensor, positions: torch.Tensor) -> bool:
        """The C pass (:func:`neuronbench.capture.native.merge_top_rows`) on a ``[k, W]`` state, its
        unfilled slots -inf and -1; ``False`` without the library."""
        if native.library() is None:
            return False
        missing = self.k - self.values.shape[0]
        if missing:
            width = flat.shape[1]
            self.values = torch.cat([self.values, torch.full((missing, width), -torch.inf)]).contiguous()
            self.positions = torch.cat([self.positions, torch.full((missing, width), -1, dtype=torch.long)]).contiguous()
        return native.merge_top_rows(flat.contiguous(), positions.contiguous(), self.values, self.positions)

    def _merge_above(self, flat: torch.Tensor, positions: torch.Tensor) -> None:
        """Merge a batch into a full state: only values above their column's k-th can enter (an
        equal one comes later than the held one), so the candidates are the entries of
        ``flat > k-th``, usually few, sorted with the held ones by (column, value descending,
        position ascending) and cut at k per column."""
        rows, columns = (flat > self.values[-1]).nonzero(as_tuple=True)  # row-major: rows ascending
        if rows.numel() == 0:
            return
        k, width = self.values.shape
        held = torch.arange(width, device=flat.device).repeat_interleave(k)
        values = torch.cat([self.values.t().reshape(-1), flat[rows, columns]])
        kept = torch.cat([self.positions.t().reshape(-1), positions[rows]])
        owner = torch.cat([held, columns])
        by_value = torch.sort(values, descending=True, stable=True).indices  # held first among equals
        order = by_value[torch.sort(owner[by_value], stable=True).indices]
        counts = torch.bincount(owner, minlength=width)
        first = torch.cumsum(counts, 0) - counts
        take = order[first[:, None] + torch.arange(k, device=flat.device)]  # [W, k]
        self.values, self.positions = values[take].t().contiguous(), kept[take].t().contiguous()

    def _merge(self, flat: torch.Tensor, positions: torch.Tensor, values: torch.Tensor,
               kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k of the running ``(values, kept)`` and the batch's ``flat`` at ``positions``,
        in ``(value descending, position ascending)`` order."""
        top, rows = self._batch_top(flat)
        values = torch.cat([values, top])
        candidates = torch.cat([kept, positions[rows]])
        order = torch.sort(values, dim=0, descending=True, stable=True).indices[: self.k]
        return torch.gather(values, 0, order), torch.gather(candidates, 0, order)

    def _batch_top(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, rows)`` of each column's k largest values in ``flat``, equal values lowest
        row first, in ``(value descending, row ascending)`` order."""
        n = flat.shape[0]
        k = min(self.k, n)
        top, rows = (t.t() for t in torch.topk(flat.t().contiguous(), min(k + 1, n), dim=1))  # 2× dim=0's speed
        if n > k:
            ambiguous = (top[k] == top[k - 1]).nonzero().flatten()  # tied rows beyond the k-th
            top, rows = top[:k].clone(), rows[:k].clone()
            if ambiguous.numel():
                self._lowest_tied_rows(flat[:, ambiguous], top, rows, ambiguous)
        rows, by_row = torch.sort(rows, dim=0)
        top = torch.gather(top, 0, by_row)
        order = torch.sort(top, dim=0, descending=True, stable=True).indices
        return torch.gather(top, 0, order), torch.gather(rows, 0, order)

    @staticmethod
    def _lowest_tied_rows(columns: torch.Tensor, top: torch.Tensor, rows: torch.Tensor,
                          ambiguous: torch.Tensor) -> None:
        """Replace, in the ``ambiguous`` columns of ``(top, rows)``, the picks among the values equal
        to the k-th by the lowest rows holding it."""
        k = top.shape[0]
        kth = top[k - 1, ambiguous]
        above, tied = columns > kth, columns == kth
        take = above | (tied & (tied.cumsum(0) <= k - above.sum(0)))
        chosen = torch.sort(take.to(torch.int8), dim=0, descending=True, stable=True).indices[:k]
        rows[:, ambiguous] = chosen
        top[:, ambiguous] = torch.gather(columns, 0, chosen)

    def arrays(self) -> dict[str, np.ndarray]:
        missing = self.k - self.values.shape[0]
        values, positions = self.values.cpu().numpy(), self.positions.cpu().numpy()
        if missing > 0:
            width = values.shape[1]
            values = np.concatenate([values, np.full((missing, width), -np.inf, dtype=np.float32)])
            positions = np.concatenate([positions, np.full((missing, width), -1, dtype=np.int64)])
        return {"topk_values": values, "topk_positions": positions}
