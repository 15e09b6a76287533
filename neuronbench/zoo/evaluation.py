"""Perplexities recorded in a built-in model's manifest.

Both the model and the unigram baseline score exactly the same tokens: the *targets* of a split's
windows (:func:`~neuronbench.data.tokenize_windows`, consecutive non-overlapping windows of the
training length, the last one partial) are every real token of a window except its first, which
has no context inside the window. Token perplexity is

    PPL = exp( −(1/n) Σ_targets log p(x_t | context) ),   n = number of targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from neuronbench.data import TokenWindows
from neuronbench.errors import ConfigError, NonFiniteLossError
from neuronbench.perplexity import token_nll


@dataclass(frozen=True)
class Perplexity:
    """``perplexity = exp(nll_sum / tokens_scored)``."""

    nll_sum: float
    tokens_scored: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.tokens_scored)


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise NonFiniteLossError(f"{what} is not finite ({value}); the model or its weights are broken")
    return value


def target_mask(windows: TokenWindows) -> torch.Tensor:
    """``[n, T-1]`` bool: which next-token targets ``input_ids[:, 1:]`` are scored (real tokens
    whose predecessor in the window is real)."""
    mask = windows.attention_mask.bool()
    return mask[:, 1:] & mask[:, :-1]


@torch.inference_mode()
def window_perplexity(model: nn.Module, windows: TokenWindows, batch_size: int) -> Perplexity:
    """Token perplexity of ``model`` on the targets of ``windows`` (see the module docstring).

    Each window is one forward pass (with its attention mask) and no context from earlier
    windows; the right padding of the last window is never scored.
    """
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, windows.input_ids.shape[0], batch_size):
            ids = windows.input_ids[start : start + batch_size]
            keep = target_mask(windows)[start : start + batch_size]
            mask = windows.attention_mask[start : start + batch_size]
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            total += token_nll(logits, ids[:, 1:])[keep].sum().item()
            count += int(keep.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("no token to score: every window holds fewer than 2 tokens")
    return Perplexity(_finite(total, "the summed negative log-likelihood"), count)


def unigram_log_probs(train_stream: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Add-one smoothed unigram log-probabilities over the whole vocabulary:

        p(v) = (c(v) + 1) / (N + V),

    ``c(v)`` = count of token ``v`` in ``train_stream``, ``N`` = its length, ``V`` = ``vocab_size``.
    """
    counts = torch.bincount(train_stream, minlength=vocab_size).double()
    if counts.numel() != vocab_size:
        raise ConfigError(f"token ids reach {counts.numel() - 1}, outside a vocabulary of {vocab_size}")
    return torch.log((counts + 1) / (train_stream.numel() + vocab_size))


def unigram_perplexity(log_probs: torch.Tensor, windows: TokenWindows) -> Perplexity:
    """Perplexity of the unigram model ``log_probs`` on the same targets as
    :func:`window_perplexity`."""
    targets = windows.input_ids[:, 1:][target_mask(windows)]
    if targets.numel() == 0:
        raise ConfigError("no token to score: every window holds fewer than 2 tokens")
    return Perplexity(-float(log_probs[targets].sum()), int(targets.numel()))
