"""Batch sizes: the default token budget, and the back-off that halves the batch size on
out-of-memory before anything is recorded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronbench import batching
from neuronbench.batching import BATCH_TOKENS, MIN_BATCH_WINDOWS, fit_batch_size, windows_per_batch
from neuronbench.capture import CaptureConfig, capture_statistics
from neuronbench.data import TokenWindows
from neuronbench.errors import ConfigError
from neuronbench.models import load_model


class FakeGpuModel(torch.nn.Module):
    """Claims to live on a GPU and runs out of memory above ``capacity`` windows."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.seen: list[int] = []
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def parameters(self, recurse: bool = True):
        yield torch.empty(0, device="meta")

    def forward(self, input_ids, attention_mask, use_cache):
        self.seen.append(input_ids.shape[0])
        if input_ids.shape[0] > self.capacity:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_backs_off_by_halving_until_it_fits(monkeypatch):
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    model = FakeGpuModel(capacity=3)
    ids = torch.zeros(16, 8, dtype=torch.long)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)
    assert fit_batch_size(model, ids, torch.ones_like(ids), 16) == 2
    assert model.seen == [16, 8, 4, 2]


def test_other_errors_are_not_swallowed(monkeypatch):
    model = FakeGpuModel(capacity=0)
    model.forward = lambda **kwargs: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    ids = torch.zeros(4, 8, dtype=torch.long)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        fit_batch_size(model, ids, torch.ones_like(ids), 4)


def test_cpu_keeps_the_requested_size_and_bad_sizes_are_rejected():
    model = torch.nn.Linear(2, 2)
    ids = torch.zeros(4, 8, dtype=torch.long)
    assert fit_batch_size(model, ids, torch.ones_like(ids), 4) == 4
    with pytest.raises(ConfigError):
        fit_batch_size(model, ids, torch.ones_like(ids), 0)


def test_the_default_batch_fills_the_token_budget_and_an_explicit_size_is_kept():
    assert (BATCH_TOKENS, MIN_BATCH_WINDOWS) == (4096, 8)
    assert windows_per_batch(None, 128) == 32
    assert windows_per_batch(None, 129) == 31
    assert windows_per_batch(None, 512) == 8
    assert windows_per_batch(None, 1024) == 8
    assert windows_per_batch(None, 5000) == 8
    assert windows_per_batch(3, 128) == 3
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ConfigError, match="batch size must be a positive integer"):
            windows_per_batch(bad, 128)


def test_a_default_capture_runs_token_budget_batches_with_the_same_statistics(toy_model_dir, monkeypatch):
    """With no batch size the capture runs ⌊BATCH_TOKENS / T⌋ windows per forward pass, through the
    backbone only (the LM head never runs); the statistics of a rule without a first-batch scale
    equal those of any other batching."""
    monkeypatch.setattr(batching, "MIN_BATCH_WINDOWS", 1)
    loaded = load_model(str(toy_model_dir("opt")), device="cpu", dtype="float32")
    ids = torch.randint(0, loaded.model.config.vocab_size, (10, 16), generator=torch.Generator().manual_seed(0))
    windows = TokenWindows(ids, torch.ones_like(ids), ids.numel())
    monkeypatch.setattr(batching, "BATCH_TOKENS", 64)
    sizes: list[int] = []
    head_calls: list[int] = []
    handles = [loaded.model.base_model.register_forward_pre_hook(
                   lambda _, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True),
               loaded.model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))]
    auto = capture_statistics(loaded.model, loaded.adapter, windows, CaptureConfig(activation="positive"),
                              progress=False)
    for handle in handles:
        handle.remove()
    assert sizes == [4, 4, 2] and head_calls == []
    three = capture_statistics(loaded.model, loaded.adapter, windows,
                               CaptureConfig(activation="positive", batch_size=3), progress=False)
    for layer in range(loaded.adapter.num_layers):
        got, expected = auto.layer(layer), three.layer(layer)
        for name in ("active_count", "sweep_count", "pos_active"):
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        for name in ("sum_sq", "abs_sum", "max", "min", "pearson_sum"):
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-9, err_msg=name)
