"""Batch back-off: the probe halves the batch size on out-of-memory, before anything is recorded."""

from __future__ import annotations

import pytest
import torch

from neuronbench.batching import fit_batch_size
from neuronbench.errors import ConfigError


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
