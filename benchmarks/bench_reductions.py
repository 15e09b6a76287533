"""One layer's per-batch reductions: the C loop (:mod:`neuronbench.capture.native`, the CPU
default) against the tensor blocks (:mod:`neuronbench.capture.blocks`, the GPU path and the
fallback without a C compiler), on the same activations in the same run.

Groups ``reductions-<plan>`` (candidate: the C loop; baseline: the blocks), one GPT-2-small MLP
layer of one batch: 8 windows × 512 tokens × 3,072 GELU activations, the magnitude rule:

* ``frequency``: counts at τ, sums, extremes (what ``-k dead`` needs);
* ``sweep``: the same and the counts at the 7 τ of ``DEFAULT_SWEEP``;
* ``full``: the sweep, the bool table (per-token and trigram counts) and the window and
  per-position statistics.

Run: ``python -m pytest benchmarks/bench_reductions.py --benchmark-only`` (one thread).
"""

from __future__ import annotations

import pytest
import torch

from neuronbench.activation import Mask
from neuronbench.capture import blocks, native
from neuronbench.capture.batch import BatchContext, Workspace
from neuronbench.capture.blocks import Plan
from neuronbench.capture.config import DEFAULT_SWEEP

WINDOWS, LENGTH, WIDTH = 8, 512, 3072
PLANS = {
    "frequency": Plan(0.5),
    "sweep": Plan(0.5, DEFAULT_SWEEP),
    "full": Plan(0.5, DEFAULT_SWEEP, windowed=True, active=True),
}
IMPLEMENTATIONS = {"blocks": (blocks.reduce_layer, "baseline"), "C loop": (native.reduce_layer, "candidate")}


@pytest.fixture(scope="module")
def layer() -> tuple[torch.Tensor, BatchContext]:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    flat = torch.nn.functional.gelu(torch.randn(WINDOWS * LENGTH, WIDTH, generator=generator))
    return flat, BatchContext.of(torch.ones(WINDOWS, LENGTH, dtype=torch.bool))


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("plan", sorted(PLANS))
def test_reductions(benchmark, layer, plan, implementation):
    if implementation == "C loop" and native.library() is None:
        pytest.skip(f"no C loop on this machine ({native.UNAVAILABLE})")
    reduce, role = IMPLEMENTATIONS[implementation]
    flat, batch = layer
    mask, workspace = Mask(relative=True, scale=0.3), Workspace()
    benchmark.group = f"reductions-{plan}"
    benchmark.extra_info["role"] = role
    reduced = benchmark.pedantic(reduce, args=(flat, batch, mask, PLANS[plan], workspace), rounds=7,
                                 warmup_rounds=1)
    assert int(reduced.counts.sum()) == int((flat.abs() > 0.5 * 0.3).sum())
