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

Exact running top-k: the state is ``k × W`` values and positions per layer (12 bytes each), flat in
the number of tokens. **Ties** are broken by position: the result is the first k of all real
positions ordered by ``(value descending, position ascending)``, a brute-force sort of the full
``[tokens, W]`` tensor, whatever the batching. Three merges give exactly this order:

* **the C pass** (:mod:`.native`), on a CPU with the C library: each row's values are compared
  with their neuron's k-th (16 neurons per vector comparison) and an entering value is inserted
  after the equal values held;
* **the dense merge** (:meth:`TopActivations._merge_dense`), which reads nothing back to the host:
  each value and its position are packed into one int64 sort key,
  ``key = ordered(a) · 2³² + (2³² − 1 − position)``, where ``ordered`` maps a float32's bits to an
  int32 of the same order (``-0.0`` as ``+0.0``). Keys are distinct, so ``torch.topk`` of the
  batch's keys and then of those with the held ones is the exact order, ties included, with no
  data-dependent shape. This is the merge on a GPU (a host read would stall the forward's
  queue). Positions must stay below ``2³²`` (4.29 billion window positions);
* **the sparse merge** (:meth:`TopActivations._merge_above`), on a CPU without the C library: only
  a batch's values that reach the k-th largest of the held and the batch's values together can
  enter (once k values are held: those above the held k-th). They are found with one comparison
  (whose count is read back, free on a CPU) and merged with the held ones by a sort of the few
  candidates: 8× the dense merge's speed on a full state (``[4096, 3072]`` float32, one thread).
"""

from __future__ import annotations

import numpy as np
import torch

from neuronbench.capture import native
from neuronbench.capture.batch import LayerBatch, reads_freely
from neuronbench.errors import CaptureError, ConfigError

DEFAULT_K = 20
POSITION_LIMIT = 2**32
"""The dense merge's sort keys hold positions (``window · T + t``) below this."""
_LOW_BITS = 2**32 - 1


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
        self.window = 0
        self.values = torch.full((0, width), -torch.inf, dtype=torch.float32, device=device)
        self.positions = torch.full((0, width), -1, dtype=torch.long, device=device)

    def update(self, view: LayerBatch) -> None:
        flat, real, rows = view.flat, view.batch.real, view.batch.rows
        window = self.window = real.shape[1]
        if rows is None:  # every position real
            rows = torch.arange(real.numel(), device=flat.device)
        positions = self.windows_seen * window + rows  # row-major index (b·T + t) of each real position
        self.windows_seen += real.shape[0]
        if flat.shape[0] == 0:
            return
        if flat.device.type == "cpu" and self._merge_native(flat, positions):
            return
        if reads_freely(flat.device):
            self._merge_above(flat, positions)
        else:
            self._merge_dense(flat, positions)

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
        """Merge a batch by its candidates, sorted with the held values by (column, value descending,
        position ascending) and cut at k per column. Into a full state only values above their
        column's k-th can enter (an equal one comes later than the held one): the candidates are
        the entries of ``flat > k-th``, usually few. Into a state of fewer than k they are the
        entries that reach the k-th largest of the held and the batch's values together (ties at it
        included: their positions decide), every entry when there are no more than k."""
        held_rows, width = self.values.shape
        if held_rows == self.k:
            entering = flat > self.values[-1]
        elif held_rows + flat.shape[0] > self.k:
            pooled = torch.cat([self.values, flat]) if held_rows else flat
            entering = flat >= torch.topk(pooled, self.k, dim=0, sorted=False).values.min(0).values
        else:
            entering = torch.ones_like(flat, dtype=torch.bool)
        rows, columns = entering.nonzero(as_tuple=True)  # row-major: rows ascending
        if rows.numel() == 0:
            return
        held = torch.arange(width, device=flat.device).repeat_interleave(held_rows)
        values = torch.cat([self.values.t().reshape(-1), flat[rows, columns]])
        kept = torch.cat([self.positions.t().reshape(-1), positions[rows]])
        owner = torch.cat([held, columns])
        by_value = torch.sort(values, descending=True, stable=True).indices  # held first among equals
        order = by_value[torch.sort(owner[by_value], stable=True).indices]
        counts = torch.bincount(owner, minlength=width)
        first = torch.cumsum(counts, 0) - counts
        kept_rows = min(self.k, held_rows + flat.shape[0])  # every column holds at least this many now
        take = order[first[:, None] + torch.arange(kept_rows, device=flat.device)]  # [W, kept_rows]
        self.values, self.positions = values[take].t().contiguous(), kept[take].t().contiguous()

    def _merge_dense(self, flat: torch.Tensor, positions: torch.Tensor) -> None:
        """Merge a batch by the int64 sort keys of the module docstring: the batch's top-k keys,
        then the top-k of those and the held ones; no host read, no data-dependent shape."""
        if self.windows_seen * self.window > POSITION_LIMIT:
            raise CaptureError(f"top-k positions reach {self.windows_seen * self.window:,}, but the dense merge's "
                               "sort keys hold positions below 2^32: capture fewer tokens (--max-tokens), or "
                               "top-k on a CPU with the C library")
        keys = _sort_keys(flat, positions[:, None])
        keys = torch.topk(keys, min(self.k, keys.shape[0]), dim=0, sorted=False).values
        if self.values.shape[0]:
            keys = torch.cat([_sort_keys(self.values, self.positions), keys])
        keys = torch.topk(keys, min(self.k, keys.shape[0]), dim=0).values
        self.values, self.positions = _unpack_keys(keys)

    def arrays(self) -> dict[str, np.ndarray]:
        missing = self.k - self.values.shape[0]
        values, positions = self.values.cpu().numpy(), self.positions.cpu().numpy()
        if missing > 0:
            width = values.shape[1]
            values = np.concatenate([values, np.full((missing, width), -np.inf, dtype=np.float32)])
            positions = np.concatenate([positions, np.full((missing, width), -1, dtype=np.int64)])
        return {"topk_values": values, "topk_positions": positions}


def _sort_keys(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered as ``(value descending, position ascending)`` is descending:
    ``ordered(a) · 2³² + (2³² − 1 − position)``; ``positions`` broadcasts against ``values``. In
    place where it can: 16 bytes per value at the peak (the float32 values not counted)."""
    ordered = (values + 0.0).view(torch.int32)  # + 0.0: -0.0 becomes +0.0, equal to it
    ordered ^= (ordered >> 31).bitwise_and_(0x7FFFFFFF)  # negative floats: larger bits, smaller value
    keys = ordered.to(torch.int64)
    del ordered
    return keys.bitwise_left_shift_(32).bitwise_or_(_LOW_BITS - positions)


def _unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 values and int64 positions of :func:`_sort_keys`' keys."""
    ordered = (keys >> 32).to(torch.int32)
    values = (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).view(torch.float32)
    return values, _LOW_BITS - (keys & _LOW_BITS)
