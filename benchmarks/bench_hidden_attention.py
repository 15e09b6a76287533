"""Hidden attention of one mamba-130m-shaped layer (issue 4): time and peak memory, chunked vs
unchunked.

One window of L = 1024 tokens of a layer with D = 1536 channels and N = 16 states, from random
tensors of the right shapes (Δ = softplus(·) around 0.02, A = −(1..16) as Mamba's S4D-real
initialisation, B, C, x standard normal). Each block is consumed as the analysis consumes it:
its attention-mixed output ``Σ_j α_ij x_j`` is computed, then it is dropped.

* ``D=1536``: chunked under the default 2 GiB budget. Unchunked is not run: the whole
  ``α`` is D × L × L × 4 B = 6.4 GB, about 25 GB with the working set, more than this machine has.
* ``D=96``: the same layer cut to 96 channels, where unchunked fits: unchunked (one block: all
  channels, all 1024 queries) is the baseline; chunked under a 256 MiB budget the candidate.

Peak memory is the rise of the resident set (VmHWM after the run − VmRSS before, with the
high-water mark reset through ``/proc/self/clear_refs``). Torch runs on one thread: the machine's
two cores are shared, and two threads then stall on each other.

Run: ``python -m pytest benchmarks/bench_hidden_attention.py --benchmark-only``.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from neuronbench.attention.hidden import iter_hidden_attention, mix, plan_chunks

LENGTH, STATE = 1024, 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def layer_inputs(width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "delta": F.softplus(torch.randn(LENGTH, width, generator=g) * 0.5 - 4.0),
        "b": torch.randn(LENGTH, STATE, generator=g),
        "c": torch.randn(LENGTH, STATE, generator=g),
        "a": -torch.arange(1, STATE + 1, dtype=torch.float32).repeat(width, 1),
        "x": torch.randn(LENGTH, width, generator=g),
    }


def memory_field(name: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(name + r":\s+(\d+)", status.read()).group(1)) * 1024


def mixed_output(inputs: dict[str, torch.Tensor], **chunking) -> torch.Tensor:
    """Stream the layer's hidden attention and return ``y = Σ_j α_ij x_j`` ``[L, D]``."""
    y = torch.empty_like(inputs["x"])
    for block in iter_hidden_attention(inputs["delta"], inputs["b"], inputs["c"], inputs["a"], **chunking):
        y[block.query_start : block.query_stop, block.channels] = mix(block, inputs["x"]).T
    return y


def run_measured(benchmark, inputs: dict[str, torch.Tensor], rounds: int, **chunking) -> None:
    peaks: list[int] = []

    def target() -> None:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        before = memory_field("VmRSS")
        mixed_output(inputs, **chunking)
        peaks.append(memory_field("VmHWM") - before)

    benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=0)
    width = inputs["x"].shape[1]
    budget = chunking.get("memory_budget_bytes", 2 * 1024**3)
    plan = plan_chunks(LENGTH, width, STATE, budget, chunking.get("channel_block"), chunking.get("query_block"))
    benchmark.extra_info.update(peak_mib=max(peaks) / 2**20, accounted_mib=plan.peak_bytes / 2**20,
                                channel_block=plan.channel_block, query_block=plan.query_block)
    print(f"\nD={width}: blocks of {plan.channel_block} channels × {plan.query_block} queries; "
          f"peak RSS rise {max(peaks) / 2**20:.0f} MiB (accounted {plan.peak_bytes / 2**20:.0f} MiB); "
          f"time {benchmark.stats.stats.mean:.2f} s")


def test_mamba_130m_layer_chunked(benchmark):
    benchmark.group = "hidden-attention-D1536"
    run_measured(benchmark, layer_inputs(1536), rounds=2)


def test_d96_unchunked(benchmark):
    benchmark.group, benchmark.extra_info["role"] = "hidden-attention-D96", "baseline"
    run_measured(benchmark, layer_inputs(96), rounds=3, channel_block=96, query_block=LENGTH,
                 memory_budget_bytes=8 * 1024**3)


def test_d96_chunked(benchmark):
    benchmark.group, benchmark.extra_info["role"] = "hidden-attention-D96", "candidate"
    run_measured(benchmark, layer_inputs(96), rounds=3, memory_budget_bytes=256 * 2**20)
