"""One-pass capture: a single forward pass per batch feeds streaming statistics for every
requested layer at once.

Hooks registered through the adapter hand each named activation (``blocks.{l}.neurons``,
``blocks.{l}.ssm.delta``) to the statistics that consume it *while the forward pass runs*; the
tensor is reduced at once and dropped, so nothing of size tokens × neurons is ever kept. Padded
positions (``attention_mask == 0``) never count. The same statistics can be fed without a model
(:class:`NeuronLayout`, :meth:`StatisticsCollector.feed`), which is how synthetic streams are
tested and benchmarked.

Statistics kept per layer (``a`` is a neuron's activation on one real token, τ the threshold):

==========================  ===================  ==============================================
array                       shape                definition
==========================  ===================  ==============================================
``active_count``            ``[W]``              ``#{tokens : a > τ}``
``sweep_count``             ``[S, W]``           ``#{tokens : a > τ_s}`` for each sweep τ_s
``sum``, ``sum_sq``         ``[W]``              ``Σ a``, ``Σ a²`` (float64)
``max``, ``min``            ``[W]``              extremes of ``a``
``pos_tokens``              ``[T]``              full-length windows seen (per position;
                                                 ``pos_*`` and ``pearson_sum`` only with
                                                 ``positional=True``)
``pos_active``              ``[T, W]``           ``#{full windows : a(pos) > τ}``
``pos_sum``                 ``[T, W]``           ``Σ a(pos)`` over full windows
``pearson_sum``             ``[W]``              ``Σ_windows r(pos, a)`` (r := 0 for a neuron
                                                 constant within a window)
``token_active_tier{i}``    ``[R_i, W]``         ``#{occurrences of token t : a > τ}``: the
                                                 per-token count table, stored in count tiers
                                                 (read it with
                                                 :meth:`ActivationStatistics.token_active`)
``trigram_active_count``    ``[W]``              ``E_j = #{trigram positions : a > τ}`` (below;
                                                 with the per-token counts)
``trigram_pair_*``          ``[P]``              exact ``(trigram, neuron)`` activation counts
                                                 for the neurons named in
                                                 ``CaptureConfig.trigram_neurons`` (below)
``log_delta_*``             ``[D]``              Mamba: sum, sum_sq, min, max of ``log Δ``
==========================  ===================  ==============================================

and once for all layers: ``token_ids`` (row order of the token table), ``token_occurrences``
``[V]``, and the trigram index ``trigram_tokens [G, 3]`` / ``trigram_occurrences [G]``.

**Per-token counts, exactly and compactly.** A neuron's count on token ``t`` never exceeds the
occurrences of ``t``. Each token's row therefore lives in the narrowest *count tier* whose dtype
holds its occurrence count (:data:`COUNT_TIERS`: uint8 up to 255, int16 up to 32,767, int32,
int64), and is promoted, with its counts, before a batch that would push it over its tier. Counts
stay exact; memory is about ``V_seen × W`` bytes per layer (most tokens of a Zipfian stream are
rare) instead of ``4 × V_seen × W``. A promoted row's old slot is left unused (zero), which costs
at most one narrow row per promoted token.

**Trigram positions.** A neuron active at position ``k`` is triggered by the trigram
``(x_{k−2}, x_{k−1}, x_k)`` ending there. A position is a *trigram position* when ``k ≥ 2`` within
its window (the first two positions of every window have no full trigram in the model's context;
they are left out of every trigram statistic), all three tokens are real (not padding), and
``x_k`` is not an excluded token (BOS). ``trigram_occurrences`` counts each trigram over trigram
positions; ``trigram_active_count`` is each neuron's number of activations there (derived at
the end from the per-token table: its column sum minus the activations on kept tokens at
non-trigram positions, which are streamed; so it needs ``token_counts=True``).

**Exact trigram tables for chosen neurons.** A full ``(trigram, neuron)`` table for every neuron
is neither needed nor affordable for large models (it holds up to one entry per activation).
``CaptureConfig.trigram_neurons`` names the neurons that get one (``"all"``, or
``{layer: indices}``); their tables are exact sparse counts, ``12–16`` bytes per distinct active
``(trigram, neuron)`` pair. :mod:`neuronbench.detectors.trigram` derives, from a first pass,
the only neurons that can possibly have ≤ N covering trigrams and runs this as a second,
explicit pass for just those.

``n_tokens`` counts real tokens; ``n_windows`` the full-length windows. Derived quantities
(frequency, mean, spread) are methods of :class:`ActivationStatistics` or the detectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.adapters.base import parse_layers
from neuronbench.batching import fit_batch_size
from neuronbench.data import TokenWindows
from neuronbench.errors import CaptureError, ConfigError, NeuronRangeError
from neuronbench.names import NEURONS, SSM_DELTA, parse_act_name

DEFAULT_SWEEP = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)

COUNT_TIERS: tuple[tuple[torch.dtype, int], ...] = (
    (torch.uint8, 255),
    (torch.int16, 32_767),
    (torch.int32, 2**31 - 1),
    (torch.int64, 2**63 - 1),
)
"""Storage tiers of the per-token count table: ``(dtype, largest count it holds)``."""

_TIER_LIMITS = torch.tensor([limit for _, limit in COUNT_TIERS[:-1]], dtype=torch.long)


@dataclass(frozen=True)
class CaptureConfig:
    """What one capture pass computes.

    ``threshold`` is τ (``None``: the adapter's default); ``sweep`` the extra τ values for the
    dead-neuron sweep; ``exclude_token_ids`` tokens left out of the per-token and trigram counts
    (BOS); ``delta`` reads Δ statistics (only for SSMs; ``None`` means "when the model has Δ");
    ``trigrams`` keeps the trigram index (and, with ``token_counts``, ``trigram_active_count``);
    ``trigram_neurons`` the neurons that get exact ``(trigram, neuron)`` tables: ``None``,
    ``"all"`` or ``{layer: neuron indices}``.
    """

    layers: tuple[int, ...] | str | None = None
    threshold: float | None = None
    sweep: tuple[float, ...] = DEFAULT_SWEEP
    positional: bool = True
    token_counts: bool = True
    delta: bool | None = None
    exclude_token_ids: frozenset[int] = frozenset()
    batch_size: int = 8
    trigrams: bool = True
    trigram_neurons: Mapping[int, Sequence[int]] | str | None = None


@dataclass(frozen=True)
class NeuronLayout:
    """A model-free stand-in for an adapter: the layer set that synthetic activations are fed
    to (:meth:`StatisticsCollector.feed`), for tests and benchmarks."""

    num_layers: int
    width: int
    default_threshold: float = 0.0
    has_ssm: bool = False

    def neuron_width(self, layer: int) -> int:
        return self.width


# -- per-token counts -----------------------------------------------------------------------------
def count_tier(occurrences: torch.Tensor) -> torch.Tensor:
    """Index of the narrowest tier of :data:`COUNT_TIERS` that holds each count."""
    return torch.searchsorted(_TIER_LIMITS, occurrences)


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
    count (:func:`count_tier`).
    """

    def __init__(self, vocab_size: int) -> None:
        self.row_of = torch.full((vocab_size,), -1, dtype=torch.long)
        self.token_ids = torch.empty(0, dtype=torch.long)
        self.occurrences = torch.zeros(vocab_size, dtype=torch.long)
        self.tier = torch.empty(0, dtype=torch.long)
        self.slot = torch.empty(0, dtype=torch.long)
        self.tier_rows = [0] * len(COUNT_TIERS)
        """Slots handed out so far in each tier."""

    @property
    def size(self) -> int:
        return self.token_ids.numel()

    def update(self, tokens: torch.Tensor) -> Promotion:
        """Count ``tokens`` (CPU), give new tokens rows and every row the tier its new occurrence
        count needs; return the rows that moved to a wider tier."""
        self.occurrences += torch.bincount(tokens, minlength=self.row_of.numel())
        old_size = self.size
        new = torch.unique(tokens[self.row_of[tokens] < 0])
        self.row_of[new] = torch.arange(old_size, old_size + new.numel())
        self.token_ids = torch.cat([self.token_ids, new])
        needed = count_tier(self.occurrences[self.token_ids])
        previous = torch.cat([self.tier, torch.full((new.numel(),), -1, dtype=torch.long)])
        changed = (needed != previous).nonzero().flatten()
        slots = torch.empty_like(changed)
        for tier in range(len(COUNT_TIERS)):
            into = needed[changed] == tier
            count = int(into.sum())
            slots[into] = torch.arange(self.tier_rows[tier], self.tier_rows[tier] + count)
            self.tier_rows[tier] += count
        moved = changed < old_size
        promotion = Promotion(self.tier[changed[moved]], self.slot[changed[moved]], needed[changed[moved]],
                              slots[moved])
        self.tier = needed
        self.slot = torch.cat([self.slot, torch.empty(new.numel(), dtype=torch.long)])
        self.slot[changed] = slots
        return promotion


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
        """Add the rows of ``active [n, W]`` (bool) to the count rows named by ``parts``."""
        for part in parts:
            table = self.tiers[part.tier]
            rows = (active if part.positions is None else active.index_select(0, part.positions)).view(torch.uint8)
            table.index_put_((part.slots,), rows if table.dtype == torch.uint8 else rows.to(table.dtype),
                             accumulate=True)

    SUM_ROWS = 4096
    """Rows summed at a time by :meth:`column_sums` (a sum casts its input to int64 first)."""

    def column_sums(self, rows: TokenRows) -> torch.Tensor:
        """``Σ_t count_j(t)`` over every token row (int64 ``[W]``)."""
        return sum(table[start:min(start + self.SUM_ROWS, used)].sum(0, dtype=torch.long)
                   for table, used in zip(self.tiers, rows.tier_rows) for start in range(0, used, self.SUM_ROWS))

    def arrays(self, rows: TokenRows) -> dict[str, np.ndarray]:
        """The used part of each tier as ``token_active_tier{i}`` (views of the tables on the CPU)."""
        out = {f"token_active_tier{i}": table[:used].cpu().numpy()
               for i, (table, used) in enumerate(zip(self.tiers, rows.tier_rows))}
        self.tiers = []
        return out


# -- trigrams -------------------------------------------------------------------------------------
class TrigramRows:
    """Ids and occurrence counts of the trigrams at trigram positions, shared by every layer.

    A trigram ``(a, b, c)`` is coded ``(a·V + b)·V + c`` (int64; needs ``V³ < 2⁶³``); ids are
    assigned in order of first appearance.
    """

    def __init__(self, vocab_size: int) -> None:
        if vocab_size**3 >= 2**63:
            raise CaptureError(f"vocabulary of {vocab_size} tokens is too large to code trigrams in int64")
        self.vocab_size = vocab_size
        self.sorted_codes = np.empty(0, dtype=np.int64)
        self.sorted_ids = np.empty(0, dtype=np.int64)
        self.code_of = np.empty(0, dtype=np.int64)
        self.occurrences = np.empty(0, dtype=np.int64)

    def ids(self, codes: np.ndarray) -> np.ndarray:
        """Id of each trigram code, assigning ids to new ones; counts the occurrences."""
        unique, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
        at = np.searchsorted(self.sorted_codes, unique)
        known = at < self.sorted_codes.size
        known[known] = self.sorted_codes[at[known]] == unique[known]
        ids = np.empty(unique.size, dtype=np.int64)
        ids[known] = self.sorted_ids[at[known]]
        new = ~known
        ids[new] = np.arange(self.code_of.size, self.code_of.size + int(new.sum()))
        self.sorted_codes = np.insert(self.sorted_codes, at[new], unique[new])
        self.sorted_ids = np.insert(self.sorted_ids, at[new], ids[new])
        self.code_of = np.concatenate([self.code_of, unique[new]])
        self.occurrences = np.concatenate([self.occurrences, np.zeros(int(new.sum()), dtype=np.int64)])
        self.occurrences[ids] += counts
        return ids[inverse]

    def tokens(self) -> np.ndarray:
        """``[G, 3]`` token ids ``(x_{k−2}, x_{k−1}, x_k)`` of each trigram, by id."""
        v = self.vocab_size
        return np.stack([self.code_of // (v * v), (self.code_of // v) % v, self.code_of % v], axis=1)


def trigram_codes(input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[B, T]`` code of the trigram ending at each position (0 at positions 0 and 1)."""
    codes = torch.zeros_like(input_ids)
    codes[:, 2:] = (input_ids[:, :-2] * vocab_size + input_ids[:, 1:-1]) * vocab_size + input_ids[:, 2:]
    return codes


def trigram_positions(real: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` trigram positions: ``k ≥ 2``, ``x_{k−2..k}`` real, ``x_k`` kept."""
    positions = torch.zeros_like(real)
    positions[:, 2:] = real[:, 2:] & real[:, 1:-1] & real[:, :-2]
    return positions & kept


class TrigramCounts:
    """Exact ``#{occurrences of trigram g : a_j > τ}`` for chosen neurons of one layer, as a
    sparse table of distinct ``(trigram, neuron)`` pairs (pending pairs are merged in bulk)."""

    MERGE_AT = 1 << 22
    """Pending pairs that trigger a merge into the table (bounds the transient memory)."""

    def __init__(self, neurons: np.ndarray, device: torch.device) -> None:
        self.neurons = neurons
        self.columns = torch.as_tensor(neurons, device=device)
        self.keys = np.empty(0, dtype=np.int64)
        self.counts = np.empty(0, dtype=np.int64)
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def add(self, trigram_ids: np.ndarray, active: torch.Tensor, positions: torch.Tensor) -> None:
        """``active [n, W]`` of a batch's real positions; ``positions [n]`` marks its trigram
        positions, whose trigrams are ``trigram_ids``."""
        position, column = active[:, self.columns][positions].nonzero(as_tuple=True)
        keys = trigram_ids[position.cpu().numpy()] * self.neurons.size + column.cpu().numpy()
        self.pending.append(keys)
        self.n_pending += keys.size
        if self.n_pending >= max(self.MERGE_AT, self.keys.size):
            self._merge()

    def _merge(self) -> None:
        keys = np.concatenate([self.keys, *self.pending])
        counts = np.concatenate([self.counts, np.ones(self.n_pending, dtype=np.int64)])
        self.pending, self.n_pending = [], 0
        if keys.size == 0:
            return
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        self.keys, self.counts = keys[starts], np.add.reduceat(counts, starts)

    def arrays(self) -> dict[str, np.ndarray]:
        """``trigram_neurons`` and the pairs sorted by (neuron, trigram)."""
        self._merge()
        neuron = self.neurons[self.keys % self.neurons.size]
        trigram = self.keys // self.neurons.size
        order = np.lexsort((trigram, neuron))
        return {"trigram_neurons": self.neurons.copy(), "trigram_pair_neuron": neuron[order],
                "trigram_pair_trigram": trigram[order], "trigram_pair_count": self.counts[order]}


# -- one batch ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TierPart:
    """The kept positions of a batch whose tokens sit in ``tier``: their flat indices among the
    real positions (``None``: all real positions) and their slots in that tier."""

    tier: int
    positions: torch.Tensor | None
    slots: torch.Tensor


def tier_parts(keep: torch.Tensor | None, tier: torch.Tensor, slot: torch.Tensor) -> list[TierPart]:
    """Split a batch's kept positions (flat mask ``keep``, ``None`` = all) by count tier."""
    kept = torch.arange(tier.numel(), device=tier.device) if keep is None else keep.nonzero().flatten()
    parts = []
    for index in tier.unique().tolist():
        sel = tier == index
        whole = keep is None and bool(sel.all())
        parts.append(TierPart(index, None if whole else kept[sel], slot[sel]))
    return parts


@dataclass
class BatchContext:
    """What every layer needs to know about the current batch (flat = real positions, row-major).

    ``real [B, T]``, ``full [B]`` (windows without padding), ``all_real``; for the token table the
    kept positions split by count tier (``parts``); for trigrams the flat mask ``trigram``
    (trigram positions), the flat indices ``skipped`` (kept positions that are not trigram
    positions) and the id of each trigram position's trigram.
    """

    real: torch.Tensor
    full: torch.Tensor
    all_real: bool
    parts: list[TierPart] | None = None
    trigram: torch.Tensor | None = None
    skipped: torch.Tensor | None = None
    trigram_ids: np.ndarray | None = None

    def flat(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[B, T, ...]`` -> ``[n_real, ...]`` (a view when every position is real)."""
        return tensor.flatten(0, 1) if self.all_real else tensor[self.real]


@dataclass
class LayerStatistics:
    """Streaming statistics of one layer's neurons (and Δ channels, for an SSM)."""

    layer: int
    width: int
    threshold: float
    sweep: tuple[float, ...]
    window: int
    device: torch.device
    positional: bool = True
    token_table: TokenCountTable | None = None
    trigrams: bool = False
    trigram_counts: TrigramCounts | None = None
    n_tokens: int = 0
    n_windows: int = 0
    n_delta_tokens: int = 0
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w, t, d = self.width, self.window, self.device
        long, f64 = torch.long, torch.float64
        self.arrays.update(
            active_count=torch.zeros(w, dtype=long, device=d),
            sweep_count=torch.zeros(len(self.sweep), w, dtype=long, device=d),
            sum=torch.zeros(w, dtype=f64, device=d),
            sum_sq=torch.zeros(w, dtype=f64, device=d),
            max=torch.full((w,), -torch.inf, dtype=f64, device=d),
            min=torch.full((w,), torch.inf, dtype=f64, device=d),
        )
        if self.positional:
            self.arrays.update(
                pos_tokens=torch.zeros(t, dtype=long, device=d),
                pos_active=torch.zeros(t, w, dtype=long, device=d),
                pos_sum=torch.zeros(t, w, dtype=f64, device=d),
                pearson_sum=torch.zeros(w, dtype=f64, device=d),
            )
        if self.trigrams and self.token_table is not None:
            self.arrays["skipped_active"] = torch.zeros(w, dtype=long, device=d)

    # -- updates -------------------------------------------------------------------------------
    def update_neurons(self, acts: torch.Tensor, batch: BatchContext) -> None:
        """Fold one batch ``acts [B, T, W]`` (real positions where ``batch.real``) into the totals."""
        if acts.shape[-1] != self.width or acts.shape[:2] != batch.real.shape:
            raise CaptureError(
                f"layer {self.layer}: neuron tensor of shape {tuple(acts.shape)} does not match "
                f"the batch {tuple(batch.real.shape)} and width {self.width}"
            )
        acts = acts.float()
        flat = batch.flat(acts)
        active = flat > self.threshold
        self._update_moments(flat, active)
        if self.positional:
            self._update_positions(acts[batch.full])
        self.update_ngrams(active, batch)

    def update_ngrams(self, active: torch.Tensor, batch: BatchContext) -> None:
        """Fold ``active [n_real, W]`` (``a > τ`` at the real positions, row-major) into the per-token
        and trigram statistics only."""
        if self.token_table is not None:
            self.token_table.add(batch.parts, active)
            if self.trigrams:
                self.arrays["skipped_active"] += active.index_select(0, batch.skipped).sum(0)
        if self.trigram_counts is not None:
            self.trigram_counts.add(batch.trigram_ids, active, batch.trigram)

    def _update_moments(self, flat: torch.Tensor, active: torch.Tensor) -> None:
        a = self.arrays
        self.n_tokens += flat.shape[0]
        a["active_count"] += torch.count_nonzero(active, dim=0)
        for i, tau in enumerate(self.sweep):
            a["sweep_count"][i] += torch.count_nonzero(flat > tau, dim=0)
        a["sum"] += flat.sum(0, dtype=torch.float64)
        a["sum_sq"] += (flat * flat).sum(0).double()  # one batch in float32 (all terms ≥ 0), totals in float64
        if flat.shape[0]:
            torch.maximum(a["max"], flat.amax(0).double(), out=a["max"])
            torch.minimum(a["min"], flat.amin(0).double(), out=a["min"])

    def _update_positions(self, windows: torch.Tensor) -> None:
        """Full-length windows ``[n, T, W]``: per-position counts and the Pearson score."""
        if windows.shape[0] == 0:
            return
        a = self.arrays
        self.n_windows += windows.shape[0]
        a["pos_tokens"] += windows.shape[0]
        a["pos_active"] += torch.count_nonzero(windows > self.threshold, dim=0)
        a["pos_sum"] += windows.sum(0, dtype=torch.float64)
        a["pearson_sum"] += pearson_with_position(windows).sum(0)

    def update_delta(self, delta: torch.Tensor, mask: torch.Tensor) -> None:
        """Fold ``log Δ`` of the real positions into per-channel moments and extremes."""
        log_delta = delta[mask].double().log()
        a = self.arrays
        if "log_delta_sum" not in a:
            d, dev = log_delta.shape[-1], self.device
            a.update(
                log_delta_sum=torch.zeros(d, dtype=torch.float64, device=dev),
                log_delta_sum_sq=torch.zeros(d, dtype=torch.float64, device=dev),
                log_delta_max=torch.full((d,), -torch.inf, dtype=torch.float64, device=dev),
                log_delta_min=torch.full((d,), torch.inf, dtype=torch.float64, device=dev),
            )
        self.n_delta_tokens += log_delta.shape[0]
        a["log_delta_sum"] += log_delta.sum(0)
        a["log_delta_sum_sq"] += log_delta.square().sum(0)
        if log_delta.shape[0]:
            torch.maximum(a["log_delta_max"], log_delta.max(0).values, out=a["log_delta_max"])
            torch.minimum(a["log_delta_min"], log_delta.min(0).values, out=a["log_delta_min"])

    def result(self, rows: TokenRows | None) -> dict[str, np.ndarray]:
        """Every array as numpy (consumes the count tables)."""
        if "skipped_active" in self.arrays:
            skipped = self.arrays.pop("skipped_active")
            self.arrays["trigram_active_count"] = self.token_table.column_sums(rows) - skipped
        arrays = {name: value.cpu().numpy() for name, value in self.arrays.items()}
        if self.token_table is not None:
            arrays.update(self.token_table.arrays(rows))
        if self.trigram_counts is not None:
            arrays.update(self.trigram_counts.arrays())
        return arrays


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


@dataclass
class ActivationStatistics:
    """The result of one capture pass: per-layer arrays plus what produced them.

    ``token_tier``/``token_slot`` locate each token row in the tiers ``token_active_tier{i}``;
    ``trigram_tokens``/``trigram_occurrences`` are the trigram index (``None`` when not kept).
    """

    layers: dict[int, dict[str, np.ndarray]]
    n_tokens: int
    n_windows: int
    window: int
    threshold: float
    sweep: tuple[float, ...]
    token_ids: np.ndarray | None
    token_occurrences: np.ndarray | None
    excluded_token_ids: tuple[int, ...]
    token_tier: np.ndarray | None = None
    token_slot: np.ndarray | None = None
    trigram_tokens: np.ndarray | None = None
    trigram_occurrences: np.ndarray | None = None

    GLOBAL_ARRAYS = ("token_ids", "token_occurrences", "token_tier", "token_slot", "trigram_tokens",
                     "trigram_occurrences")
    """The fields that are arrays shared by all layers (for storage)."""

    def __post_init__(self) -> None:
        for name in self.GLOBAL_ARRAYS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=np.int64))

    def layer(self, layer: int) -> dict[str, np.ndarray]:
        if layer not in self.layers:
            raise CaptureError(f"layer {layer} was not captured; captured: {sorted(self.layers)}")
        return self.layers[layer]

    def freq(self, layer: int) -> np.ndarray:
        """Activation frequency ``freq_j = active_count_j / n_tokens``."""
        return self.layer(layer)["active_count"] / self.n_tokens

    def mean(self, layer: int) -> np.ndarray:
        """Mean activation ``Σ a / n_tokens`` (the value used by mean-ablation)."""
        return self.layer(layer)["sum"] / self.n_tokens

    def token_active(self, layer: int, neurons: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Exact ``[V_seen, len(neurons)]`` int64 count table ``#{occurrences of token t : a_j > τ}``,
        rows in the order of ``token_ids`` (all neurons when ``neurons`` is None). Materialise it
        in chunks of neurons for wide layers: it is 8 bytes per entry."""
        arrays = self.layer(layer)
        if self.token_ids is None:
            raise CaptureError("per-token counts were not captured: use CaptureConfig(token_counts=True)")
        columns = np.arange(arrays["active_count"].size) if neurons is None else np.asarray(neurons)
        contiguous = columns.size > 0 and np.array_equal(columns, np.arange(columns[0], columns[0] + columns.size))
        out = np.zeros((self.token_ids.size, columns.size), dtype=np.int64)
        for tier in range(len(COUNT_TIERS)):
            rows = np.flatnonzero(self.token_tier == tier)
            if rows.size:
                table = arrays[f"token_active_tier{tier}"]
                part = table[:, columns[0]:columns[0] + columns.size] if contiguous else table[:, columns]
                out[rows] = part[self.token_slot[rows]]
        return out

    def metadata(self) -> dict:
        return {
            "n_tokens": self.n_tokens,
            "n_windows": self.n_windows,
            "window": self.window,
            "threshold": self.threshold,
            "sweep": list(self.sweep),
            "layers": sorted(self.layers),
            "excluded_token_ids": list(self.excluded_token_ids),
        }


def _trigram_neurons(spec: Mapping[int, Sequence[int]] | str | None, layers: tuple[int, ...],
                     widths: Mapping[int, int]) -> dict[int, np.ndarray]:
    """Resolve ``CaptureConfig.trigram_neurons`` to sorted neuron indices per captured layer."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        if spec != "all":
            raise ConfigError(f"trigram_neurons must be None, 'all' or {{layer: indices}}, got {spec!r}")
        return {layer: np.arange(widths[layer]) for layer in layers}
    resolved = {}
    for layer, neurons in spec.items():
        if layer not in widths:
            raise ConfigError(f"trigram_neurons names layer {layer}, which is not captured (captured: {list(layers)})")
        indices = np.unique(np.asarray(neurons, dtype=np.int64))
        bad = indices[(indices < 0) | (indices >= widths[layer])]
        if bad.size:
            raise NeuronRangeError(f"trigram_neurons: neurons {bad.tolist()} out of range for layer {layer}: "
                                   f"valid neurons are 0..{widths[layer] - 1}")
        if indices.size:
            resolved[layer] = indices
    return resolved


class StatisticsCollector:
    """Receives named activations from the hooks (or :meth:`feed`) and routes them to each
    layer's statistics. ``adapter`` may be a :class:`NeuronLayout` for model-free feeding."""

    def __init__(self, adapter: ArchitectureAdapter | NeuronLayout, config: CaptureConfig, window: int,
                 vocab_size: int, device: torch.device) -> None:
        self.adapter = adapter
        self.config = config
        self.vocab_size = vocab_size
        self.layers = parse_layers(config.layers, adapter.num_layers)
        self.threshold = adapter.default_threshold if config.threshold is None else float(config.threshold)
        self.delta = adapter.has_ssm if config.delta is None else config.delta
        self.rows = TokenRows(vocab_size) if config.token_counts else None
        if config.trigram_neurons is not None and not config.trigrams:
            raise ConfigError("trigram_neurons needs trigrams=True (the trigram index)")
        self.trigram_rows = TrigramRows(vocab_size) if config.trigrams else None
        self.exclude = torch.tensor(sorted(config.exclude_token_ids), dtype=torch.long, device=device)
        widths = {layer: adapter.neuron_width(layer) for layer in self.layers}
        chosen = _trigram_neurons(config.trigram_neurons, self.layers, widths)
        self.stats = {
            layer: LayerStatistics(
                layer, widths[layer], self.threshold, tuple(config.sweep), window, device,
                positional=config.positional,
                token_table=TokenCountTable(widths[layer], vocab_size, device) if self.rows is not None else None,
                trigrams=config.trigrams,
                trigram_counts=TrigramCounts(chosen[layer], device) if layer in chosen else None,
            )
            for layer in self.layers
        }
        self._batch: BatchContext | None = None
        self._seen: set[str] = set()

    @property
    def kinds(self) -> tuple[str, ...]:
        return (NEURONS, SSM_DELTA) if self.delta else (NEURONS,)

    @contextmanager
    def hooked(self) -> Iterator[None]:
        handles = [h for layer in self.layers for h in self.adapter.register_capture(layer, self.kinds, self.receive)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def start_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        real = attention_mask.bool()
        kept = real & ~torch.isin(input_ids, self.exclude)
        batch = BatchContext(real=real, full=real.all(dim=1), all_real=bool(real.all()))
        if self.rows is not None:
            tokens = input_ids[kept].cpu()
            promotion = self.rows.update(tokens)
            for stats in self.stats.values():
                stats.token_table.prepare(self.rows, promotion)
            rows = self.rows.row_of[tokens]
            keep = None if bool(kept[real].all()) else kept[real]
            batch.parts = tier_parts(keep, self.rows.tier[rows].to(real.device), self.rows.slot[rows].to(real.device))
        if self.trigram_rows is not None:
            positions = trigram_positions(real, kept)
            batch.trigram, batch.skipped = positions[real], (kept & ~positions)[real].nonzero().flatten()
            codes = trigram_codes(input_ids, self.vocab_size)[positions]
            batch.trigram_ids = self.trigram_rows.ids(codes.cpu().numpy())
        self._batch = batch
        self._seen = set()

    def receive(self, name: str, tensor: torch.Tensor) -> None:
        layer, kind = parse_act_name(name)
        if kind == NEURONS:
            self.stats[layer].update_neurons(tensor, self._batch)
        else:
            self.stats[layer].update_delta(tensor, self._batch.real)
        self._seen.add(name)

    def end_batch(self) -> None:
        """Fail loudly if any hook did not fire during the forward pass."""
        expected = {f"blocks.{layer}.{kind}" for layer in self.layers for kind in self.kinds}
        missing = expected - self._seen
        if missing:
            raise CaptureError(
                f"hooks did not fire for {sorted(missing)}: the model's forward pass did not call "
                "the hooked modules (is the adapter right for this model?)"
            )

    def feed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             activations: Mapping[str, torch.Tensor]) -> None:
        """Fold one batch of activations given directly (``{act name: tensor}``), without a model."""
        self.start_batch(input_ids, attention_mask)
        for name, tensor in activations.items():
            self.receive(name, tensor)
        self.end_batch()

    def feed_ngrams(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    active: Mapping[int, torch.Tensor]) -> None:
        """Fold one batch of already thresholded activations ``{layer: [B, T, W] bool}`` into the
        per-token and trigram statistics only (the other statistics are left untouched); used to
        measure their memory without a model."""
        self.start_batch(input_ids, attention_mask)
        for layer, mask in active.items():
            self.stats[layer].update_ngrams(self._batch.flat(mask), self._batch)

    def result(self) -> ActivationStatistics:
        """The statistics as numpy arrays. Call once: it hands over (and frees) the count tables."""
        first = self.stats[self.layers[0]]
        layers = {layer: stats.result(self.rows) for layer, stats in self.stats.items()}
        rows, trigrams = self.rows, self.trigram_rows
        return ActivationStatistics(
            layers=layers,
            n_tokens=first.n_tokens,
            n_windows=first.n_windows,
            window=first.window,
            threshold=self.threshold,
            sweep=tuple(self.config.sweep),
            token_ids=None if rows is None else rows.token_ids.numpy(),
            token_occurrences=None if rows is None else rows.occurrences.numpy(),
            excluded_token_ids=tuple(sorted(self.config.exclude_token_ids)),
            token_tier=None if rows is None else rows.tier.numpy(),
            token_slot=None if rows is None else rows.slot.numpy(),
            trigram_tokens=None if trigrams is None else trigrams.tokens(),
            trigram_occurrences=None if trigrams is None else trigrams.occurrences.copy(),
        )


def batches(windows: TokenWindows, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(input_ids, attention_mask)`` batches of ``batch_size`` windows."""
    if batch_size <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    for start in range(0, windows.input_ids.shape[0], batch_size):
        yield (windows.input_ids[start : start + batch_size],
               windows.attention_mask[start : start + batch_size])


def capture_statistics(model: torch.nn.Module, adapter: ArchitectureAdapter, windows: TokenWindows,
                       config: CaptureConfig, progress: bool = True) -> ActivationStatistics:
    """Run one forward pass per batch of ``windows`` and return the streamed statistics.

    On a GPU the batch size is first probed and halved on out-of-memory
    (:func:`neuronbench.batching.fit_batch_size`), before any statistic is updated."""
    if windows.n_tokens == 0:
        raise CaptureError("no tokens to capture: the token windows are empty")
    device = next(model.parameters()).device
    collector = StatisticsCollector(adapter, config, windows.input_ids.shape[1],
                                    model.config.vocab_size, device)
    batch_size = fit_batch_size(model, windows.input_ids, windows.attention_mask, config.batch_size)
    total = -(-windows.input_ids.shape[0] // batch_size)
    with torch.inference_mode(), collector.hooked():
        for input_ids, attention_mask in tqdm(batches(windows, batch_size), total=total,
                                              desc="capture", unit="batch", disable=not progress):
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            collector.start_batch(input_ids, attention_mask)
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            collector.end_batch()
    return collector.result()
