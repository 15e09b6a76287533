"""The prepared GPU check (``benchmarks/gpu_check.py``, run by ``benchmarks/gpu_check.sh``)
rehearsed on the CPU, so that a lent GPU's few minutes are not lost to an error in the script:
each check runs with its device set to the CPU and the capture on the code a GPU runs (no C
loops, no block sizes), the out-of-memory one with a small model and simulated out-of-memory.
Whether CUDA itself behaves is what only the GPU run can show."""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from neuronbench import batching
from neuronbench.capture import StatisticsCollector
from neuronbench.capture.topk import TopActivations
from neuronbench.capture.batch import Workspace

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch, gpu_code_path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "DEVICE", "cpu")
    return module


def test_the_capture_check_runs(gpu_check, tmp_path):
    assert gpu_check.check_capture(tmp_path).startswith("CUDA capture equals CPU capture (gpt2, mamba); sdpa vs eager")


def test_the_sync_check_counts_synchronisations_inside_the_hooks(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)
    monkeypatch.setattr(gpu_check, "TOPK_BATCH", (2, 16, 8))
    merges = []
    merge_dense, merge_above = TopActivations._merge_dense, TopActivations._merge_above
    monkeypatch.setattr(TopActivations, "_merge_dense", lambda *a: merges.append("dense") or merge_dense(*a))
    monkeypatch.setattr(TopActivations, "_merge_above", lambda *a: merges.append("sparse") or merge_above(*a))
    line = gpu_check.check_syncs(tmp_path / "quiet")
    assert re.fullmatch(r"syncs gpt2: 0 in the hooks, 0 in the preparation, 0\.0 per batch in all; mamba: 0 in the "
                        r"hooks, 0 in the preparation, 0\.0 per batch in all; top-k merge of 2 x 16 x 8: dense \d+\.\d\d ms, sparse \d+\.\d\d ms", line), line
    assert merges[-8:] == ["dense"] * 4 + ["sparse"] * 4  # each timing's fill, then its merges
    assert gpu_check.capture_batch.HOST_READ_DEVICES == frozenset()  # restored
    receive = StatisticsCollector.receive

    def synchronising(self, name, tensor):
        warnings.warn("called a synchronizing CUDA operation", UserWarning)
        receive(self, name, tensor)

    monkeypatch.setattr(StatisticsCollector, "receive", synchronising)
    with pytest.raises(AssertionError, match="gpt2: 6 synchronisations inside the hooks"):  # 3 batches × 2 layers
        gpu_check.check_syncs(tmp_path / "noisy")
    assert StatisticsCollector.receive is synchronising  # restored
    monkeypatch.setattr(StatisticsCollector, "receive", receive)
    prepare = StatisticsCollector.prepare_batch

    def synchronising_preparation(self, *args):
        warnings.warn("called a synchronizing CUDA operation", UserWarning)
        return prepare(self, *args)

    monkeypatch.setattr(StatisticsCollector, "prepare_batch", synchronising_preparation)
    with pytest.raises(AssertionError, match="gpt2: 3 synchronisations inside the preparation"):  # 3 batches
        gpu_check.check_syncs(tmp_path / "noisy preparation")


def test_the_out_of_memory_check_backs_off_and_captures(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "OOM_SHAPE", dict(n_embd=32, n_layer=2, n_head=2, n_positions=1024, vocab_size=500))
    monkeypatch.setattr(gpu_check, "OOM_WINDOWS", 64)
    monkeypatch.setattr(batching, "probes_memory", lambda device: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    buffer = Workspace.buffer

    def scarce(self, role, shape, device, dtype=torch.float32):  # room for the buffers of 10 windows
        if np.prod(shape) > 10 * 1024 * 4 * 32:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return buffer(self, role, shape, device, dtype)

    monkeypatch.setattr(Workspace, "buffer", scarce)
    assert gpu_check.check_oom(tmp_path) == "batch 64 x 1024 tokens backed off to 8; capture of 9216 tokens ran"
