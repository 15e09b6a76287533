"""Capture overhead and memory (issue: foundation).

* Time: the full statistics pass (one forward per batch with every statistic on every layer)
  against a plain forward pass over the same tokens, same model, same run. Target ≤ 1.25×.
* Memory: peak resident memory of a capture over 10k and 100k tokens, each in a fresh process;
  it must stay flat (statistics are streamed, nothing tokens × neurons is kept).

Run: ``python -m pytest benchmarks/bench_capture.py --benchmark-only``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from neuronbench.capture import CaptureConfig, batches, capture_statistics
from neuronbench.data import TokenWindows
from neuronbench.models import load_model
from neuronbench.toy import build_toy_model

WINDOW, N_WINDOWS, BATCH = 128, 16, 8
SHAPES = {
    "tiny-gpt2": None,
    "tiny-mamba": None,
    "gpt2-small-shape": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=8192)),
    "mamba-130m-shape": ("mamba", dict(hidden_size=768, num_hidden_layers=24, state_size=16, vocab_size=8192)),
}
"""The built-in trained models, and random models of the real shapes (weights do not change the
cost), so the overhead is measured where the forward pass is as expensive as in practice."""


def synthetic_windows(vocab: int, n_windows: int, seed: int = 0) -> TokenWindows:
    ids = torch.randint(0, vocab, (n_windows, WINDOW), generator=torch.Generator().manual_seed(seed))
    return TokenWindows(ids, torch.ones_like(ids), ids.numel())


@pytest.fixture(scope="module", params=list(SHAPES))
def loaded(request, tmp_path_factory):
    torch.set_num_threads(2)
    if SHAPES[request.param] is None:
        return load_model(request.param, device="cpu", dtype="float32")
    family, shape = SHAPES[request.param]
    directory = build_toy_model(family, tmp_path_factory.mktemp(request.param), **shape)
    return load_model(str(directory), device="cpu", dtype="float32")


def plain_forward(loaded, windows: TokenWindows) -> None:
    with torch.inference_mode():
        for input_ids, mask in batches(windows, BATCH):
            loaded.model(input_ids=input_ids, attention_mask=mask, use_cache=False)


def test_plain_forward(benchmark, loaded):
    windows = synthetic_windows(loaded.model.config.vocab_size, N_WINDOWS)
    benchmark.group, benchmark.extra_info["role"] = f"capture-{loaded.name}", "baseline"
    benchmark.pedantic(plain_forward, args=(loaded, windows), rounds=3, warmup_rounds=1)


def test_capture_pass(benchmark, loaded):
    windows = synthetic_windows(loaded.model.config.vocab_size, N_WINDOWS)
    config = CaptureConfig(batch_size=BATCH)
    benchmark.group, benchmark.extra_info["role"] = f"capture-{loaded.name}", "candidate"
    benchmark.pedantic(capture_statistics, args=(loaded.model, loaded.adapter, windows, config),
                       kwargs={"progress": False}, rounds=3, warmup_rounds=1)


PEAK_SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    from neuronbench.capture import CaptureConfig, capture_statistics
    from neuronbench.models import load_model
    sys.path.insert(0, "benchmarks")
    from bench_capture import synthetic_windows
    loaded = load_model(sys.argv[1], device="cpu", dtype="float32")
    windows = synthetic_windows(loaded.model.config.vocab_size, int(sys.argv[2]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    capture_statistics(loaded.model, loaded.adapter, windows, CaptureConfig(batch_size=8), progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": after / 1024, "growth_mib": (after - before) / 1024}))
""")


def peak_memory(model_dir: str, n_windows: int) -> dict:
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, model_dir, str(n_windows)],
                            check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_peak_memory_is_flat(benchmark, loaded):
    if loaded.source.kind != "builtin":
        pytest.skip("memory growth is measured on the built-in models")
    model_dir = loaded.name
    small = peak_memory(model_dir, 10_000 // WINDOW)
    large = benchmark.pedantic(peak_memory, args=(model_dir, 100_000 // WINDOW), rounds=1, iterations=1)
    benchmark.extra_info.update(peak_mib_10k=small["peak_mib"], peak_mib_100k=large["peak_mib"])
    print(f"\n{loaded.name}: peak RSS 10k tokens {small['peak_mib']:.0f} MiB, "
          f"100k tokens {large['peak_mib']:.0f} MiB")
    assert large["peak_mib"] < small["peak_mib"] * 1.25
