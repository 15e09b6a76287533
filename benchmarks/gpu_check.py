"""GPU checks run by ``benchmarks/gpu_check.sh`` (each prints one summary line, exits non-zero on failure).
``tests/test_gpu_check.py`` rehearses each on the CPU (:data:`DEVICE`), with the GPU's code path.

* ``capture``: the statistics of a capture on CUDA equal those on the CPU (toy GPT-2 and Mamba,
  float32 with TF32 off; counts exact, floats within 1e-4 relative: GPU kernels sum in another
  order), and default (SDPA / flash) attention agrees with eager attention, which a pattern read
  switches on. TF32 is off because cuDNN allows it by default, and Mamba's slow path runs its
  causal convolution through ``nn.Conv1d``: its 10-bit mantissa (about 1e-3 relative) would move
  activations across the activity threshold. On the CPU, perturbing every weight by 1e-6 relative
  moves no count and no float beyond these tolerances on the same data.
* ``syncs``: the host synchronisations of a capture on CUDA (``torch.cuda.set_sync_debug_mode``),
  counted inside the collector's hooks (while the forward pass runs: expected none for the
  default statistics, top-k and exact trigram tables), in the next batch's host preparation
  (``prepare_batch``, which runs while the device computes: expected none) and in all, per batch, for toy GPT-2 and
  Mamba with full windows and with a padded last window; then the time of top-k's two merges of
  a full state on the GPU (:data:`TOPK_BATCH` activations, k = 20, CUDA-synchronised wall time):
  the dense merge that a GPU runs (no host read) against the sparse merge that reads its
  candidates back (:mod:`neuronbench.capture.topk`), so that the choice rests on a measurement.
* ``oom``: the capture's batch probe (:func:`neuronbench.capture.capture_batch_size`: one capture
  step, statistics attached) backs off from a batch that does not fit (a GPT-2-small shape,
  1024-token windows) and the capture then runs, over one batch of the size it backed off to and
  one window more.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from neuronbench.adapters.attention_impl import attention_implementation, eager_attention
from neuronbench.capture import CaptureConfig, StatisticsCollector, capture_batch_size, capture_statistics
from neuronbench.capture import batch as capture_batch
from neuronbench.capture.batch import BatchContext, LayerBatch
from neuronbench.capture.topk import TopActivations
from neuronbench.data import TokenWindows
from neuronbench.models import load_model
from neuronbench.toy import build_toy_model


DEVICE = "cuda"
"""The device checked (``tests/test_gpu_check.py`` rehearses the checks on the CPU)."""
OOM_SHAPE = dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)
"""GPT-2 small: the model whose capture of :data:`OOM_WINDOWS` windows of 1024 tokens does not fit."""
OOM_WINDOWS = 8192
TOPK_BATCH = (8, 1024, 3072)
"""Windows, tokens per window, neurons of the top-k merge timing (a GPT-2-small MLP layer)."""


def windows(vocab: int, n: int, length: int) -> TokenWindows:
    ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[-1, length // 2:] = 0
    return TokenWindows(ids, mask, int(mask.sum()))


def check_capture(root: Path) -> str:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    notes = []
    for family in ("gpt2", "mamba"):
        directory = str(build_toy_model(family, root / family))
        data = windows(300, 9, 64)
        stats = [capture_statistics((m := load_model(directory, device=device, dtype="float32")).model,
                                    m.adapter, data, CaptureConfig(batch_size=4), progress=False)
                 for device in ("cpu", DEVICE)]
        for layer in stats[0].layers:
            cpu, gpu = stats[0].layer(layer), stats[1].layer(layer)
            assert cpu.keys() == gpu.keys(), (family, layer)
            for name in cpu:
                if np.issubdtype(cpu[name].dtype, np.integer):
                    np.testing.assert_array_equal(gpu[name], cpu[name], err_msg=f"{family} {layer} {name}")
                else:
                    np.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-4, atol=1e-5, err_msg=f"{family} {layer} {name}")
        if family == "gpt2":
            loaded = load_model(directory, device=DEVICE, dtype="float32")
            ids = data.input_ids[:2].to(DEVICE)
            with torch.no_grad():
                fast = loaded.model(input_ids=ids).logits
                with eager_attention(loaded.model):
                    eager = loaded.model(input_ids=ids).logits
            error = (fast - eager).abs().max().item()
            assert error < 1e-3, error
            notes.append(f"{attention_implementation(loaded.model)} vs eager logits max |Δ| {error:.1e}")
    return "CUDA capture equals CPU capture (gpt2, mamba); " + "; ".join(notes)


def check_oom(root: Path) -> str:
    loaded = load_model(str(build_toy_model("gpt2", root / "big", **OOM_SHAPE)), device=DEVICE, dtype="bfloat16")
    asked = OOM_WINDOWS
    ids = torch.randint(0, OOM_SHAPE["vocab_size"], (asked, 1024))
    config = CaptureConfig(batch_size=asked, token_counts=False, trigrams=False)
    every = TokenWindows(ids, torch.ones_like(ids), ids.numel())
    chosen = capture_batch_size(loaded.model, loaded.adapter, every, config)
    assert chosen < asked, "the probe did not back off: the batch fitted"
    small = TokenWindows(ids[: chosen + 1], torch.ones_like(ids[: chosen + 1]), (chosen + 1) * 1024)
    capture_statistics(loaded.model, loaded.adapter, small, config, progress=False)
    return f"batch {asked} x 1024 tokens backed off to {chosen}; capture of {small.n_tokens} tokens ran"


def check_syncs(root: Path) -> str:
    notes = []
    for family in ("gpt2", "mamba"):
        loaded = load_model(str(build_toy_model(family, root / f"syncs-{family}")), device=DEVICE, dtype="float32")
        data = windows(300, 12, 64)
        watched = {"receive": "hooks", "prepare_batch": "preparation"}
        originals = {method: getattr(StatisticsCollector, method) for method in watched}
        counted = {"hooks": 0, "preparation": 0, "all": 0}

        def synchronisations() -> int:
            return sum("synchroniz" in str(warning.message) for warning in caught)

        def counting(method: str):
            def run(self, *args, **kwargs):
                before = synchronisations()
                try:
                    return originals[method](self, *args, **kwargs)
                finally:
                    counted[watched[method]] += synchronisations() - before
            return run

        for method in watched:
            setattr(StatisticsCollector, method, counting(method))
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                config = CaptureConfig(batch_size=4, top_activations=5, trigram_neurons={0: range(8)})
                capture_statistics(loaded.model, loaded.adapter, data, config, progress=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            for method, original in originals.items():
                setattr(StatisticsCollector, method, original)
        counted["all"] = synchronisations()
        batches = -(-data.input_ids.shape[0] // 4)
        notes.append(f"{family}: {counted['hooks']} in the hooks, {counted['preparation']} in the preparation, "
                     f"{counted['all'] / batches:.1f} per batch in all")
        for where in ("hooks", "preparation"):
            assert counted[where] == 0, f"{family}: {counted[where]} synchronisations inside the {where}"
    merges = {merge: topk_merge_ms(merge == "sparse") for merge in ("dense", "sparse")}
    return "syncs " + "; ".join(notes) + "; top-k merge of {} x {} x {}: ".format(*TOPK_BATCH) + ", ".join(
        f"{merge} {ms:.2f} ms" for merge, ms in merges.items())


def topk_merge_ms(sparse: bool) -> float:
    """Milliseconds per batch of :data:`TOPK_BATCH` Gaussian activations merged into a full top-20
    state: by the sparse merge (host reads allowed on this device) or the dense one."""
    windows, length, width = TOPK_BATCH
    device = torch.device(DEVICE)
    batch = BatchContext.of(torch.ones(windows, length, dtype=torch.bool), device)
    generator = torch.Generator(device=device).manual_seed(0)
    views = [LayerBatch(torch.randn(windows * length, width, device=device, generator=generator), batch, None)
             for _ in range(4)]
    top = TopActivations(width, 20, device)
    allowed = capture_batch.HOST_READ_DEVICES
    capture_batch.HOST_READ_DEVICES = allowed | {device.type} if sparse else allowed - {device.type}
    try:
        top.update(views[0])  # fills the state
        settle = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        settle()
        start = time.perf_counter()
        for view in views[1:]:
            top.update(view)
        settle()
        return (time.perf_counter() - start) / (len(views) - 1) * 1000
    finally:
        capture_batch.HOST_READ_DEVICES = allowed


CHECKS = {"capture": check_capture, "syncs": check_syncs, "oom": check_oom}

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as root:
        print(CHECKS[sys.argv[1]](Path(root)))
