"""Exact per-token activation counts ``#{occurrences of token t : a_j > τ}``, stored compactly.

A neuron's count on token ``t`` never exceeds the occurrences of ``t``. Each token's row therefore
lives in the narrowest *count tier* whose dtype holds its occurrence count (:data:`COUNT_TIERS`:
uint8 up to 255, int16 up to 32,767, int32, int64), and is promoted, with its counts, before a
batch that would push it over its tier. Counts stay exact; memory is about ``V_seen × W`` bytes
per layer (most tokens of a Zipfian stream are rare) instead of ``4 × V_seen × W``. A promoted
row's old slot is left unused (zero), which costs at most one narrow row per promoted token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from neuronbench.capture import native
from neuronbench.capture.batch import BatchContext, LayerBatch

COUNT_TIERS: tuple[tuple[torch.dtype, int], ...] = (
    (torch.uint8, 255),
    (torch.int16, 32_767),
    (torch.int32, 2**31 - 1),
    (torch.int64, 2**63 - 1),
)
"""Storage tiers of the per-token count table: ``(dtype, largest count it holds)``."""

_TIER_LIMITS = np.array([limit for _, limit in COUNT_TIERS[:-1]], dtype=np.int64)


def count_tier(occurrences: np.ndarray) -> np.ndarray:
    """Index of the narrowest tier of :data:`COUNT_TIERS` that holds each count."""
    return np.searchsorted(_TIER_LIMITS, occurrences)


@dataclass(frozen=True)
class Promotion:
    """Rows moved to a wider tier before a batch: old and new ``(tier, slot)`` per row."""

    from_tier: torch.Tensor
    from_slot: torch.Tensor
    to_tier: torch.Tensor
    to_slot: torch.Tensor


class TokenRows:
    """Maps token ids to compact rows and each row to a ``(tier, slot)`` of the count tables.

    Shared by every layer, so a row means the same token in all layers. Rows are assigned in
    order of first appearance; a row's tier is the narrowest that holds its token's occurrence
    count (:func:`count_tier`). The bookkeeping lives in host numpy arrays (``row_of [V]``,
    ``occurrences [V]``, and per row ``token_ids``, ``tier``, ``slot``): a batch updates only the
    rows of the tokens it holds (0.44× the time of the same bookkeeping in torch tensors over every
    seen row with a vocabulary of 2048, 0.27× with 50,257; 49 batches of 1024 tokens, paired).
    """

    def __init__(self, vocab_size: int) -> None:
        self.row_of = np.full(vocab_size, -1, dtype=np.int64)
        self.token_ids = np.empty(0, dtype=np.int64)
        self.occurrences = np.zeros(vocab_size, dtype=np.int64)
        self.tier = np.empty(0, dtype=np.int64)
        self.slot = np.empty(0, dtype=np.int64)
        self.tier_rows = [0] * len(COUNT_TIERS)
        """Slots handed out so far in each tier."""

    @property
    def size(self) -> int:
        return self.token_ids.size

    @property
    def vocab_size(self) -> int:
        return self.row_of.size

    def update(self, tokens: torch.Tensor) -> Promotion:
        """Count ``tokens`` (CPU), give new tokens rows and every row the tier its new occurrence
        count needs; return the rows that moved to a wider tier. Only the rows of this batch's
        tokens can change tier; the changed ones get their new slots in row order."""
        present, counts = np.unique(tokens.numpy(), return_counts=True)
        self.occurrences[present] += counts
        fresh = present[self.row_of[present] < 0]
        old_size = self.size
        self.row_of[fresh] = np.arange(old_size, old_size + fresh.size)
        self.token_ids = np.concatenate([self.token_ids, fresh])
        self.tier = np.concatenate([self.tier, np.full(fresh.size, -1, dtype=np.int64)])
        self.slot = np.concatenate([self.slot, np.full(fresh.size, -1, dtype=np.int64)])
        rows = self.row_of[present]
        needed = count_tier(self.occurrences[present])
        differs = needed != self.tier[rows]
        order = np.argsort(rows[differs], kind="stable")
        changed, to_tier = rows[differs][order], needed[differs][order]
        slots = np.empty_like(changed)
        for tier in range(len(COUNT_TIERS)):
            into = to_tier == tier
            count = int(np.count_nonzero(into))
            slots[into] = np.arange(self.tier_rows[tier], self.tier_rows[tier] + count)
            self.tier_rows[tier] += count
        moved = changed < old_size
        promotion = Promotion(*(torch.from_numpy(a) for a in (
            self.tier[changed[moved]], self.slot[changed[moved]], to_tier[moved], slots[moved])))
        self.tier[changed] = to_tier
        self.slot[changed] = slots
        return promotion

    def locate(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tier, slot)`` of each of ``tokens`` (CPU, all counted by :meth:`update`), int64 tensors."""
        rows = self.row_of[tokens.numpy()]
        return torch.from_numpy(self.tier[rows]), torch.from_numpy(self.slot[rows])


def packed(counts: torch.Tensor) -> torch.Tensor:
    """``counts [n, W]`` (contiguous) viewed as int64 lanes ``[n, W·size/8]`` when its rows are a
    whole number of 8-byte words, else itself.

    Adding two packed words adds every lane (8 uint8, 4 int16 or 2 int32 counts) at once and is
    exact as long as no lane's sum exceeds its dtype's range, since only then would a carry reach the
    next lane. A count table's lanes never do: a count never exceeds its token's occurrences, and a
    row is promoted to a wider tier before a batch that would push its occurrences past its tier's
    limit (:data:`COUNT_TIERS`, all within the lanes' unsigned range), so every partial sum is at
    most the final count."""
    if counts.dtype == torch.int64 or not counts.is_contiguous() or counts.shape[-1] * counts.element_size() % 8:
        return counts
    return counts.view(torch.int64)


class TokenCountTable:
    """Exact ``#{occurrences of token t : a_j > τ}`` of one layer, in the tiers of
    :data:`COUNT_TIERS` (rows addressed by ``(tier, slot)`` from :class:`TokenRows`)."""

    GROWTH = 1.25
    """A tier that must grow is reallocated to ``GROWTH ×`` the rows it needs (at least
    ``MIN_GROWTH`` more, at most ``max_rows``): a logarithmic number of copies, at most 20%
    unused capacity. A token takes at most one slot per tier, so no tier needs more rows than
    the vocabulary: tier 0 never exceeds ``V × W`` bytes."""
    MIN_GROWTH = 64

    def __init__(self, width: int, max_rows: int, device: torch.device) -> None:
        self.width = width
        self.max_rows = max_rows
        self.tiers = [torch.zeros(0, width, dtype=dtype, device=device) for dtype, _ in COUNT_TIERS]

    def prepare(self, rows: TokenRows, promotion: Promotion) -> None:
        """Make room for every slot handed out and move promoted rows (before a batch)."""
        for tier, needed in enumerate(rows.tier_rows):
            self._reserve(tier, needed)
        if promotion.from_tier.numel() == 0:
            return
        device = self.tiers[0].device
        pairs = torch.stack([promotion.from_tier, promotion.to_tier], dim=1).unique(dim=0)
        for source, target in pairs.tolist():
            sel = (promotion.from_tier == source) & (promotion.to_tier == target)
            old_slots, new_slots = promotion.from_slot[sel].to(device), promotion.to_slot[sel].to(device)
            self.tiers[target][new_slots] = self.tiers[source][old_slots].to(self.tiers[target].dtype)
            self.tiers[source][old_slots] = 0

    def _reserve(self, tier: int, needed: int) -> None:
        table = self.tiers[tier]
        if table.shape[0] >= needed:
            return
        rows = min(max(int(needed * self.GROWTH), needed + self.MIN_GROWTH), self.max_rows)
        grown = torch.empty(rows, self.width, dtype=table.dtype, device=table.device)
        grown[: table.shape[0]] = table
        grown[table.shape[0]:] = 0
        self.tiers[tier] = grown

    def add(self, parts: Sequence[TierPart], active: torch.Tensor) -> None:
        """Add the rows of ``active [n, W]`` (bool) to the count rows named by ``parts``: on a CPU by
        the C loop (:func:`neuronbench.capture.native.add_token_rows`), else in packed lanes
        (:func:`packed`): one int64 addition adds 8 uint8 (4 int16, 2 int32) counts."""
        for part in parts:
            table = self.tiers[part.tier]
            if native.add_token_rows(table, part.slots, active, part.positions):
                continue
            rows = (active if part.positions is None else active.index_select(0, part.positions)).view(torch.uint8)
            rows = rows if table.dtype == torch.uint8 else rows.to(table.dtype)
            packed(table).index_put_((part.slots,), packed(rows), accumulate=True)

    def arrays(self, rows: TokenRows) -> dict[str, np.ndarray]:
        """The used part of each tier as ``token_active_tier{i}`` (views of the tables on the CPU)."""
        out = {f"token_active_tier{i}": table[:used].cpu().numpy()
               for i, (table, used) in enumerate(zip(self.tiers, rows.tier_rows))}
        self.tiers = []
        return out


@dataclass(frozen=True)
class TierPart:
    """The kept positions of a batch whose tokens sit in ``tier``: their flat indices among the
    real positions (``None``: all real positions) and their slots in that tier."""

    tier: int
    positions: torch.Tensor | None
    slots: torch.Tensor

    def to(self, device: torch.device) -> TierPart:
        return TierPart(self.tier, None if self.positions is None else self.positions.to(device), self.slots.to(device))


def tier_parts(keep: torch.Tensor | None, tier: torch.Tensor, slot: torch.Tensor) -> list[TierPart]:
    """Split a batch's kept positions (flat mask ``keep``, ``None`` = all) by count tier."""
    kept = torch.arange(tier.numel(), device=tier.device) if keep is None else keep.nonzero().flatten()
    parts = []
    for index in tier.unique().tolist():
        sel = tier == index
        whole = keep is None and bool(sel.all())
        parts.append(TierPart(index, None if whole else kept[sel], slot[sel]))
    return parts


class TokenStatistics:
    """One layer's per-token count table and, when trigrams are kept, ``trigram_active_count``.

    ``trigram_active_count`` (``E_j = #{trigram positions : a_j > τ}``) is streamed per batch as the
    layer's column counts over every real position minus the activations at the few real positions
    that are not trigram positions (``BatchContext.outside``: excluded tokens, each window's first
    two): integers throughout, so exact, and no reduction of the table at the end.
    """

    def __init__(self, width: int, rows: TokenRows, device: torch.device, trigrams: bool) -> None:
        self.rows = rows
        self.table = TokenCountTable(width, rows.vocab_size, device)
        self.trigram_active = torch.zeros(width, dtype=torch.long, device=device) if trigrams else None

    def prepare(self, promotion: Promotion) -> None:
        self.table.prepare(self.rows, promotion)

    def update(self, view: LayerBatch) -> None:
        reduced = view.reductions
        if reduced is not None:
            self.add(reduced.active, view.batch, reduced.counts if self.trigram_active is not None else None)

    def add(self, active: torch.Tensor, batch: BatchContext, counts: torch.Tensor | None = None) -> None:
        """Fold ``active [n_real, W]`` (row-major real positions) into the table; ``counts`` is
        ``Σ_rows active`` (int64 ``[W]``) when the caller has it."""
        self.table.add(batch.parts, active)
        if self.trigram_active is not None:
            total = active.sum(0) if counts is None else counts
            self.trigram_active += total - active.index_select(0, batch.outside).sum(0)

    def arrays(self) -> dict[str, np.ndarray]:
        """``token_active_tier{i}`` (and ``trigram_active_count``); consumes the table."""
        out = {} if self.trigram_active is None else {"trigram_active_count": self.trigram_active.cpu().numpy()}
        out.update(self.table.arrays(self.rows))
        return out
