"""Batch size that backs off on out-of-memory.

Before a pass over equal-length windows, :func:`fit_batch_size` runs one plain forward pass (no
hooks, nothing recorded) on the first ``batch_size`` windows and halves the batch size on a
CUDA/MPS out-of-memory error until it fits. Probing up front, rather than catching OOM in the
middle of a recorded pass, guarantees that no statistic ever sees half a batch.
"""

from __future__ import annotations

import logging

import torch

from neuronbench.errors import ConfigError

log = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def fit_batch_size(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   batch_size: int, forward_kwargs: dict | None = None) -> int:
    """Largest ``b ≤ batch_size`` (halving) whose forward pass on ``input_ids[:b]`` fits.

    On CPU the requested size is returned unchanged (no probe: host memory is not probed).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    if device.type == "cpu":
        return batch_size
    size = min(batch_size, input_ids.shape[0])
    while True:
        try:
            with torch.inference_mode():
                model(input_ids=input_ids[:size].to(device), attention_mask=attention_mask[:size].to(device),
                      use_cache=False, **(forward_kwargs or {}))
            return size
        except RuntimeError as error:
            if not is_out_of_memory(error) or size == 1:
                raise
            torch.cuda.empty_cache()
            size //= 2
            log.warning("out of memory at batch size %d; backing off to %d", size * 2, size)
