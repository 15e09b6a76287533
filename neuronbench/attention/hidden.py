"""Mamba's hidden attention (Ali, Zimerman & Wolf 2024), computed exactly, in chunks.

For one sequence and channel ``d`` of a selective-scan layer (``Δ`` ``[T, D]``, ``B``, ``C``
``[T, N]``, ``A = −exp(A_log)`` ``[D, N]``) the scan ``h_i = exp(Δ_i A) h_{i−1} + Δ_i B_i x_i``,
``y_i = C_i · h_i`` unrolls into a causal attention matrix

    α_{i,j}[d] = Σ_n C_i[n] · exp(A[d,n] · Σ_{k=j+1..i} Δ_k[d]) · Δ_j[d] · B_j[n]   (j ≤ i),
    α_{i,j}[d] = 0                                                                  (j > i),

with ``Σ_j α_{i,j}[d] x_j[d] = y_i[d]``, the scan output before the ``D`` skip and the gate.

Numerics. The decay is never formed as a product of many factors ``exp(Δ_k A) < 1``. With the
cumulative sum ``S_i[d] = Σ_{k≤i} Δ_k[d]`` (float64) the exponent is ``A[d,n] · (S_i − S_j)``;
differences of ``S`` are taken in float64 and rounded once to float32, so they keep float32
relative precision even after thousands of tokens. Every exponent is ``≤ 0``, so nothing
overflows and entries whose true value is below float32's range come out as exact zeros
(``exp(−1e4) = 0``), never NaN or inf:

* keys before a stretch of queries (``j < i0 ≤ i``): with the reference ``r = S_{i0−1}``,
  ``S_j ≤ r ≤ S_i``, so ``exp(A (S_i − S_j)) = exp(A (S_i − r)) · exp(A (r − S_j))`` is a product
  of exactly two factors in ``(0, 1]``, and the sum over ``n`` becomes one batched matrix product
  ``[C_i[n] exp(A[d,n] (S_i − r))] @ [exp(A[d,n] (r − S_j)) Δ_j[d] B_j[n]]``;
* keys inside the stretch: it is halved recursively (the second half's keys in the first half
  are again the case above) down to :data:`DIAGONAL_LEAF` tokens, where ``S_i − S_j`` is used
  directly; above the diagonal it is clamped to 0 *before* the exponential and the weight
  ``C_i B_j`` is masked to 0 there.

Memory. A whole layer's ``α`` is ``D × T × T`` (6.4 GB in float32 for mamba-130m at T = 1024),
so it is produced as blocks of ``channel_block`` channels × ``query_block`` queries, each with
only the keys ``0 .. query_stop − 1`` (all later keys are zero by causality). Block sizes come
from ``memory_budget_bytes`` (:func:`plan_chunks`, accounting :func:`block_bytes`); a request
that cannot fit raises :class:`~neuronbench.errors.ConfigError` and nothing partial is ever
returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from neuronbench.errors import ConfigError, NeuronRangeError

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Default extra memory (bytes) one hidden-attention computation may use: 2 GiB."""

DEFAULT_QUERY_BLOCK = 128
"""Default number of query rows per block: small enough that the causal blocks skip most of
the zero upper triangle, large enough that every block is one big vectorised operation."""

BYTES_PER_BLOCK_ELEMENT = 16
"""Accounted bytes per element of one ``[channels, queries, keys]`` block: four float32
block-sized tensors live at the peak — the block itself, the caller's previous block (still
referenced while the next one is computed) and two temporaries of a caller's reduction."""

DIAGONAL_LEAF = 32
"""Longest stretch of queries whose attention to each other is computed from the masked
difference directly (a loop over ``n``); longer stretches are halved, the lower-left quarter
going through the batched two-factor product."""

DIAGONAL_TILE_ELEMENTS = 2**18
"""Elements (channels × queries × keys) of one tile of a direct leaf: small enough for the
per-``n`` loop to run in cache. Its temporaries (float64 difference, float32 copy, exponential:
16 bytes per element) are accounted once per block."""


def _channel_bytes(queries: int, length: int, n_state: int) -> int:
    """Accounted bytes that grow with the number of channels (see :func:`block_bytes`)."""
    return length * (BYTES_PER_BLOCK_ELEMENT * queries + 8 * n_state + 12) + 4 * queries * n_state


def _tile_channels(channels: int, queries: int) -> int:
    """Channels per diagonal tile (at least one)."""
    return min(channels, max(1, DIAGONAL_TILE_ELEMENTS // (queries * queries))) if queries else 0


def block_bytes(channels: int, queries: int, length: int, n_state: int) -> int:
    """Accounted peak extra bytes of one block of ``channels`` × ``queries`` × ``length`` keys:
    :data:`BYTES_PER_BLOCK_ELEMENT` per block element; per channel the key factors and their
    exponents ``[N, T]`` (8 bytes per element), the float64 and float32 key differences
    ``[T]`` (12 bytes) and the query factors ``[queries, N]`` (4 bytes); one tile of a direct
    leaf (16 bytes per element) and its weights ``C_i B_j`` ``[N, leaf, leaf]``."""
    leaf = min(queries, DIAGONAL_LEAF)
    diagonal = 16 * _tile_channels(channels, leaf) * leaf**2 + 4 * n_state * leaf**2
    return channels * _channel_bytes(queries, length, n_state) + diagonal


@dataclass(frozen=True)
class ChunkPlan:
    """How a ``[channels, T, T]`` hidden attention is cut into blocks, and the accounted peak
    extra memory of one block (:func:`block_bytes`)."""

    channel_block: int
    query_block: int
    peak_bytes: int


@dataclass(frozen=True)
class AttentionBlock:
    """A block of hidden attention: ``alpha[c, q, k] = α_{query_start + q, k}[channels[c]]``
    for keys ``k < query_stop``; every key ``≥ query_stop`` has ``α = 0`` (causality)."""

    channels: torch.Tensor
    query_start: int
    query_stop: int
    alpha: torch.Tensor


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")


def _largest(fits: Callable[[int], bool], upper: int) -> int:
    """The largest ``n`` in ``0..upper`` with ``fits(n)``, for ``fits`` true up to some point."""
    low, high = 0, upper
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def plan_chunks(length: int, n_channels: int, n_state: int, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
                channel_block: int | None = None, query_block: int | None = None) -> ChunkPlan:
    """Block sizes for ``n_channels`` channels of a length-``length`` sequence with state size
    ``n_state``.

    Unset sizes are chosen automatically: ``query_block = min(length, DEFAULT_QUERY_BLOCK)`` and
    as many channels per block as ``memory_budget_bytes`` allows; if even one channel does not
    fit, fewer query rows. Raises :class:`ConfigError` if the budget cannot hold one query row of
    one channel, or if explicitly requested sizes do not fit the budget.
    """
    _check_positive("channel_block", channel_block)
    _check_positive("query_block", query_block)
    if memory_budget_bytes <= 0:
        raise ConfigError(f"memory_budget_bytes must be positive, got {memory_budget_bytes!r}")
    if block_bytes(1, 1, length, n_state) > memory_budget_bytes:
        raise ConfigError(
            f"a memory budget of {memory_budget_bytes} bytes cannot hold one query row of hidden "
            f"attention over {length} tokens ({block_bytes(1, 1, length, n_state)} bytes): raise "
            "memory_budget_bytes or use a shorter window"
        )

    def fits(channels: int, queries: int) -> bool:
        return block_bytes(channels, queries, length, n_state) <= memory_budget_bytes

    queries = min(query_block or DEFAULT_QUERY_BLOCK, length)
    if channel_block is None:
        channels = _largest(lambda n: fits(n, queries), n_channels)
        if channels == 0 and query_block is None:
            queries = _largest(lambda n: fits(1, n), queries)
        channels = max(channels, 1)
    else:
        channels = min(channel_block, n_channels)
        if query_block is None:
            queries = max(1, _largest(lambda n: fits(channels, n), queries))
    plan = ChunkPlan(channels, queries, block_bytes(channels, queries, length, n_state))
    if plan.peak_bytes > memory_budget_bytes:
        raise ConfigError(
            f"blocks of {plan.channel_block} channels × {plan.query_block} queries × {length} keys "
            f"need about {plan.peak_bytes / 2**20:.0f} MiB, over the memory budget of "
            f"{memory_budget_bytes / 2**20:.0f} MiB: ask for smaller blocks (or leave them unset "
            "to chunk automatically) or raise memory_budget_bytes"
        )
    return plan


def _check_inputs(delta: torch.Tensor, b: torch.Tensor, c: torch.Tensor, a: torch.Tensor) -> None:
    """Shapes ``Δ [T, D]``, ``B, C [T, N]``, ``A [D, N]``; ``Δ ≥ 0``, ``A ≤ 0``, all finite."""
    if delta.dim() != 2 or b.dim() != 2 or c.dim() != 2 or a.dim() != 2:
        raise ConfigError(
            "hidden attention takes one sequence: Δ [T, D], B [T, N], C [T, N], A [D, N]; got "
            f"Δ {tuple(delta.shape)}, B {tuple(b.shape)}, C {tuple(c.shape)}, A {tuple(a.shape)}"
        )
    length, width = delta.shape
    n_state = a.shape[1]
    if b.shape != (length, n_state) or c.shape != (length, n_state) or a.shape[0] != width:
        raise ConfigError(
            f"inconsistent shapes: Δ {tuple(delta.shape)}, B {tuple(b.shape)}, C {tuple(c.shape)}, "
            f"A {tuple(a.shape)} (expected Δ [T, D], B and C [T, N], A [D, N])"
        )
    if length == 0:
        raise ConfigError("hidden attention of an empty sequence (T = 0) is undefined")
    for name, tensor in (("Δ", delta), ("B", b), ("C", c), ("A", a)):
        if not torch.isfinite(tensor).all():
            raise ConfigError(f"{name} holds NaN or inf values; hidden attention needs finite inputs")
    if (delta < 0).any():
        raise ConfigError("Δ must be non-negative (Δ = softplus(...)); got negative entries")
    if (a > 0).any():
        raise ConfigError("A must be non-positive (A = −exp(A_log)); got positive entries")


def _channel_index(channels: Sequence[int] | torch.Tensor | None, width: int,
                   device: torch.device) -> torch.Tensor:
    if channels is None:
        return torch.arange(width, device=device)
    index = torch.as_tensor(channels, dtype=torch.long, device=device).reshape(-1)
    if index.numel() == 0:
        raise ConfigError("no channels requested: pass None for all channels or a non-empty list")
    bad = index[(index < 0) | (index >= width)]
    if bad.numel():
        raise NeuronRangeError(
            f"channels {bad.tolist()} are out of range for a layer with {width} channels "
            f"(valid 0..{width - 1})"
        )
    return index


@dataclass(frozen=True)
class _Chunk:
    """One channel chunk's scan inputs: ``cum`` ``S`` ``[c, T]`` (float64), ``delta`` ``[c, T]``,
    ``a`` ``[c, N]``, and the shared ``b``, ``c`` ``[T, N]`` (float32)."""

    cum: torch.Tensor
    delta: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor


def _direct(out: torch.Tensor, chunk: _Chunk, start: int, stop: int) -> None:
    """``α`` for queries and keys ``start..stop−1`` into ``out [c, q, q]`` from the masked
    difference, ``Σ_n C_i B_j exp(A (S_i − S_j)) Δ_j``, in cache-sized channel tiles."""
    size = stop - start
    mask = torch.ones(size, size, device=out.device).tril_()
    weights = [torch.outer(chunk.c[start:stop, n], chunk.b[start:stop, n]).mul_(mask)
               for n in range(chunk.a.shape[1])]
    tile = _tile_channels(out.shape[0], size)
    for first in range(0, out.shape[0], tile):
        rows = slice(first, first + tile)
        cum = chunk.cum[rows]
        diff = (cum[:, start:stop, None] - cum[:, None, start:stop]).clamp_min_(0.0).float()
        target = out[rows]
        target.zero_()
        decay = torch.empty_like(diff)
        for n, weight in enumerate(weights):
            torch.mul(diff, chunk.a[rows, n, None, None], out=decay).exp_()
            target.addcmul_(decay, weight)
        target.mul_(chunk.delta[rows, None, start:stop])


def _before(out: torch.Tensor, chunk: _Chunk, key_start: int, start: int, stop: int) -> None:
    """``α`` for queries ``start..stop−1`` and keys ``key_start..start−1`` into ``out`` as one
    batched product of the two decay factors around the reference ``r = S_{start−1}``."""
    reference = chunk.cum[:, start - 1 : start]
    query_decay = (chunk.cum[:, start:stop] - reference).float()
    key_decay = (reference - chunk.cum[:, key_start:start]).float()
    queries = torch.exp(query_decay[:, :, None] * chunk.a[:, None, :]).mul_(chunk.c[start:stop])
    keys = torch.exp(chunk.a[:, :, None] * key_decay[:, None, :])
    keys.mul_(chunk.b[key_start:start].T).mul_(chunk.delta[:, None, key_start:start])
    torch.bmm(queries, keys, out=out)


def _causal(out: torch.Tensor, chunk: _Chunk, start: int, stop: int) -> None:
    """``α`` for queries and keys ``start..stop−1`` into ``out [c, q, q]``: halves recursively
    (the lower-left quarter by :func:`_before`), leaves of ``≤ DIAGONAL_LEAF`` by :func:`_direct`."""
    if stop - start <= DIAGONAL_LEAF:
        _direct(out, chunk, start, stop)
        return
    middle = (start + stop) // 2
    split = middle - start
    _causal(out[:, :split, :split], chunk, start, middle)
    out[:, :split, split:].zero_()
    _before(out[:, split:, :split], chunk, start, middle, stop)
    _causal(out[:, split:, split:], chunk, middle, stop)


def _block(chunk: _Chunk, start: int, stop: int) -> torch.Tensor:
    """``α`` for the chunk's channels, queries ``start..stop−1``, keys ``0..stop−1``."""
    alpha = torch.empty(chunk.cum.shape[0], stop - start, stop, dtype=torch.float32, device=chunk.cum.device)
    if start > 0:
        _before(alpha[:, :, :start], chunk, 0, start, stop)
    _causal(alpha[:, :, start:], chunk, start, stop)
    return alpha


def iter_hidden_attention(delta: torch.Tensor, b: torch.Tensor, c: torch.Tensor, a: torch.Tensor,
                          channels: Sequence[int] | torch.Tensor | None = None, *,
                          memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
                          channel_block: int | None = None,
                          query_block: int | None = None, first_query: int = 0) -> Iterator[AttentionBlock]:
    """Stream the hidden attention of ``channels`` (default all) of one sequence in blocks.

    ``delta`` ``[T, D]``, ``b``/``c`` ``[T, N]``, ``a`` ``[D, N]`` (any float dtype; computed in
    float32). Blocks cover every (channel, query) pair with query ``≥ first_query`` exactly once:
    channel chunks in the order of ``channels``, each with query blocks in order. See the module
    docstring for the formula, the numerics and :func:`plan_chunks` for the block sizes. Inputs
    and sizes are checked before the first block is made.
    """
    _check_inputs(delta, b, c, a)
    if not 0 <= first_query < delta.shape[0]:
        raise ConfigError(f"first_query must lie in 0..{delta.shape[0] - 1}, got {first_query!r}")
    index = _channel_index(channels, delta.shape[1], delta.device)
    plan = plan_chunks(delta.shape[0], index.numel(), a.shape[1], memory_budget_bytes, channel_block, query_block)
    return _blocks(delta.float(), b.float(), c.float(), a.float(), index, plan, first_query)


def _blocks(delta: torch.Tensor, b: torch.Tensor, c: torch.Tensor, a: torch.Tensor, index: torch.Tensor,
            plan: ChunkPlan, first_query: int) -> Iterator[AttentionBlock]:
    length = delta.shape[0]
    for first in range(0, index.numel(), plan.channel_block):
        chunk = index[first : first + plan.channel_block]
        delta_t = delta[:, chunk].T.contiguous()
        inputs = _Chunk(delta_t.double().cumsum(dim=1), delta_t, a[chunk], b, c)
        for start in range(first_query, length, plan.query_block):
            stop = min(start + plan.query_block, length)
            yield AttentionBlock(chunk, start, stop, _block(inputs, start, stop))


def hidden_attention(delta: torch.Tensor, b: torch.Tensor, c: torch.Tensor, a: torch.Tensor,
                     channels: Sequence[int] | torch.Tensor | None = None, *,
                     memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
    """The complete hidden attention ``α [len(channels), T, T]`` (float32) of one sequence.

    The returned matrix itself counts against ``memory_budget_bytes``; when it does not fit,
    :class:`ConfigError` says so (ask for fewer channels, or stream the blocks with
    :func:`iter_hidden_attention`). Never returns a partial matrix.
    """
    _check_inputs(delta, b, c, a)
    length = delta.shape[0]
    index = _channel_index(channels, delta.shape[1], delta.device)
    result_bytes = index.numel() * length * length * 4
    if result_bytes + block_bytes(1, 1, length, a.shape[1]) > memory_budget_bytes:
        raise ConfigError(
            f"the full hidden attention of {index.numel()} channels over {length} tokens is "
            f"{result_bytes / 2**20:.0f} MiB, over the memory budget of "
            f"{memory_budget_bytes / 2**20:.0f} MiB: ask for fewer channels, raise "
            "memory_budget_bytes, or stream blocks with iter_hidden_attention"
        )
    out = torch.zeros(index.numel(), length, length, dtype=torch.float32, device=delta.device)
    offset = 0
    for block in iter_hidden_attention(delta, b, c, a, index,
                                       memory_budget_bytes=memory_budget_bytes - result_bytes):
        rows = slice(offset, offset + block.channels.numel())
        out[rows, block.query_start : block.query_stop, : block.query_stop] = block.alpha
        if block.query_stop == length:
            offset += block.channels.numel()
    return out


def mix(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The attention-mixed output of a block: ``o[c, q] = Σ_j α_{q,j}[c] x_j[c]``
    (``x`` ``[T, D]``, the scan input of the whole sequence); equals the scan output ``y``."""
    values = x.float()[: block.query_stop, block.channels].T
    return torch.bmm(block.alpha, values.unsqueeze(-1)).squeeze(-1)
