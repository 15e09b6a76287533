"""Batch sizes: a token budget by default, and a back-off on out-of-memory.

Without an explicit batch size, every pass over windows of ``L`` tokens runs
:func:`windows_per_batch` ``= max(MIN_BATCH_WINDOWS, ⌊BATCH_TOKENS / L⌋)`` windows per forward
pass: 32 windows of the default analysis window (128 tokens), 8 of GPT-2's 1024-token perplexity
windows. A pass costs a fixed amount per batch and layer (hooks, the statistics' per-batch
reductions, kernel launches) and, in transformers' slow Mamba path on a CPU, a Python step per
position of the window; so short windows want more of them per batch (the token budget) and
long ones at least a few (the floor, the batch of 8 windows that every pass ran before).
The memory of one batch stays bounded (it is flat in the number of batches).

On a GPU, before a pass, :func:`fit_batch_size` runs one step of that pass on its first
``batch_size`` windows (the pass's own step: the capture's forward with its statistics attached,
perplexity's forward with its loss; its results discarded) and halves the batch size on a
CUDA/MPS out-of-memory error until it fits. Probing up front, rather than catching OOM in the
middle of a recorded pass, guarantees that no statistic ever sees half a batch; probing with the
pass's own step, rather than a plain forward, means the memory the pass adds to the forward
(the statistics' ``[batch tokens, W]`` buffers, perplexity's float32 logits) is probed too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

from neuronbench.data import TokenWindows
from neuronbench.errors import ConfigError

log = logging.getLogger(__name__)

BATCH_TOKENS = 4096
"""Tokens per forward pass, at least, when no batch size is given (:func:`windows_per_batch`)."""
MIN_BATCH_WINDOWS = 8
"""Windows per forward pass, at least, when no batch size is given (:func:`windows_per_batch`)."""


def windows_per_batch(batch_size: int | None, window_length: int) -> int:
    """``batch_size`` windows, or with ``None`` as many windows of ``window_length`` tokens as
    fill :data:`BATCH_TOKENS`, and at least :data:`MIN_BATCH_WINDOWS`:
    ``max(MIN_BATCH_WINDOWS, ⌊BATCH_TOKENS / window_length⌋)``."""
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch size must be a positive integer (or None: {BATCH_TOKENS} tokens per batch), "
                              f"got {batch_size!r}")
        return batch_size
    if window_length < 1:
        raise ConfigError(f"window length must be positive, got {window_length}")
    return max(MIN_BATCH_WINDOWS, BATCH_TOKENS // window_length)


def batches(windows: TokenWindows, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(input_ids, attention_mask)`` batches of ``batch_size`` windows."""
    if batch_size <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    for start in range(0, windows.input_ids.shape[0], batch_size):
        yield (windows.input_ids[start : start + batch_size],
               windows.attention_mask[start : start + batch_size])


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def probes_memory(device: torch.device) -> bool:
    """Whether a pass on ``device`` probes its batch size: on a GPU (CUDA, MPS), not on the host,
    whose memory is not probed."""
    return device.type != "cpu"


def fit_batch_size(attempt: Callable[[int], object], batch_size: int, device: torch.device) -> int:
    """Largest ``b ≤ batch_size`` (halving) for which ``attempt(b)`` runs without out-of-memory.

    ``attempt(b)`` runs one step of the pass on its first ``b`` windows, under
    ``torch.inference_mode``, and keeps nothing. An error other than out-of-memory, or
    out-of-memory at ``b = 1``, is raised. The memory of a failed attempt is released (its frames
    left, then ``torch.cuda.empty_cache``) before the next. On a CPU (:func:`probes_memory`)
    ``batch_size`` is returned unchanged and nothing runs.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    if not probes_memory(device):
        return batch_size
    size = batch_size
    while True:
        try:
            with torch.inference_mode():
                attempt(size)
            return size
        except RuntimeError as error:
            if not is_out_of_memory(error) or size == 1:
                raise
        torch.cuda.empty_cache()
        log.warning("out of memory at batch size %d; backing off to %d", size, size // 2)
        size //= 2
