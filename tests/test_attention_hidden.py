"""Mamba's hidden attention on raw tensors: equal to the formula written as a naive loop, to the
sequential scan, stable where the decay underflows, chunked within a memory budget, and strict
about bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from neuronbench.attention.hidden import (ChunkPlan, block_bytes, hidden_attention, iter_hidden_attention, mix,
                                          plan_chunks)
from neuronbench.errors import ConfigError, NeuronRangeError



def random_ssm(length: int, width: int, state: int, seed: int = 0, delta_scale: float = 0.5):
    """Random ``Δ > 0 [T, D]``, ``B, C [T, N]``, ``A < 0 [D, N]``, ``x [T, D]``."""
    g = torch.Generator().manual_seed(seed)
    delta = torch.rand(length, width, generator=g) * delta_scale + 1e-3
    b = torch.randn(length, state, generator=g)
    c = torch.randn(length, state, generator=g)
    a = -torch.exp(torch.randn(width, state, generator=g))
    x = torch.randn(length, width, generator=g)
    return delta, b, c, a, x


def naive_alpha(delta, b, c, a) -> torch.Tensor:
    """``α_{i,j}[d] = Σ_n C_i[n] exp(A[d,n] Σ_{k=j+1..i} Δ_k[d]) Δ_j[d] B_j[n]`` by loops (float64)."""
    delta, b, c, a = delta.double(), b.double(), c.double(), a.double()
    length, width = delta.shape
    alpha = torch.zeros(width, length, length, dtype=torch.float64)
    for d in range(width):
        for i in range(length):
            for j in range(i + 1):
                decay_sum = delta[j + 1 : i + 1, d].sum()
                alpha[d, i, j] = sum(c[i, n] * torch.exp(a[d, n] * decay_sum) * delta[j, d] * b[j, n]
                                     for n in range(a.shape[1]))
    return alpha


def scan(delta, b, c, a, x) -> torch.Tensor:
    """The selective scan ``h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t x_t``, ``y_t = C_t · h_t`` (float64)."""
    delta, b, c, a, x = delta.double(), b.double(), c.double(), a.double(), x.double()
    h = torch.zeros(a.shape, dtype=torch.float64)
    ys = []
    for t in range(delta.shape[0]):
        h = torch.exp(delta[t, :, None] * a) * h + delta[t, :, None] * b[t] * x[t, :, None]
        ys.append(h @ c[t])
    return torch.stack(ys)


@pytest.mark.parametrize("blocks", [{}, {"channel_block": 2, "query_block": 3}, {"channel_block": 1, "query_block": 1},
                                    {"channel_block": 5, "query_block": 7}])
def test_equals_naive_loop_over_i_j_n(blocks):
    delta, b, c, a, _ = random_ssm(length=9, width=5, state=3)
    expected = naive_alpha(delta, b, c, a)
    got = torch.zeros_like(expected)
    for block in iter_hidden_attention(delta, b, c, a, **blocks):
        got[block.channels, block.query_start : block.query_stop, : block.query_stop] += block.alpha.double()
    assert (got - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()
    assert torch.equal(hidden_attention(delta, b, c, a).double().triu(1), torch.zeros_like(expected))


def test_selected_channels_in_the_order_asked():
    delta, b, c, a, _ = random_ssm(length=6, width=5, state=2, seed=1)
    everything = hidden_attention(delta, b, c, a)
    assert torch.equal(hidden_attention(delta, b, c, a, [4, 0, 2]), everything[[4, 0, 2]])


def test_blocks_cover_every_channel_and_query_exactly_once():
    delta, b, c, a, _ = random_ssm(length=11, width=7, state=2)
    seen = torch.zeros(7, 11, dtype=torch.long)
    for block in iter_hidden_attention(delta, b, c, a, channel_block=3, query_block=4):
        assert block.alpha.shape == (block.channels.numel(), block.query_stop - block.query_start, block.query_stop)
        seen[block.channels, block.query_start : block.query_stop] += 1
    assert torch.equal(seen, torch.ones_like(seen))


@pytest.mark.parametrize("seed", [0, 1])
def test_mixing_reconstructs_the_scan_output(seed):
    delta, b, c, a, x = random_ssm(length=64, width=6, state=4, seed=seed)
    expected = scan(delta, b, c, a, x)
    got = torch.zeros_like(expected)
    for block in iter_hidden_attention(delta, b, c, a, channel_block=4, query_block=10):
        got[block.query_start : block.query_stop, block.channels] = mix(block, x).T.double()
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-5


def test_stable_when_the_cumulative_decay_reaches_minus_1e4():
    delta, b, c, a, _ = random_ssm(length=40, width=3, state=4, seed=2, delta_scale=1.0)
    a = a.clamp(max=-0.5)
    delta = delta * (1e4 / (delta.cumsum(0) * a.abs().min(1).values).min(0).values.min())
    assert (delta.double().cumsum(0)[:, :, None] * a.double()).min().item() <= -1e4
    alpha = hidden_attention(delta, b, c, a)
    expected = naive_alpha(delta, b, c, a)
    assert torch.isfinite(alpha).all()
    cum = delta.double().cumsum(0).T
    exponent = a.double()[:, None, None, :] * (cum[:, :, None] - cum[:, None, :])[..., None]
    underflow = (exponent.amax(-1) < -110.0) & torch.ones(40, 40, dtype=torch.bool).tril()
    assert underflow.sum() > 0.9 * 40 * 39 / 2 * 3
    assert torch.equal(alpha[underflow], torch.zeros(int(underflow.sum())))
    assert torch.allclose(alpha.double(), expected, rtol=1e-4, atol=1e-37)
    diagonal = torch.diagonal(alpha, dim1=1, dim2=2)
    assert torch.allclose(diagonal.double(), torch.diagonal(expected, dim1=1, dim2=2), rtol=1e-5, atol=0.0)
    assert (diagonal != 0).all()


def test_long_sequences_keep_float32_precision_near_the_diagonal():
    """After 2048 tokens the cumulative Δ is in the thousands; entries a few tokens below the
    diagonal must still be exact to float32 precision (a float32 running sum would lose ~1e-4)."""
    delta, b, c, a, _ = random_ssm(length=2048, width=2, state=2, seed=3, delta_scale=1.0)
    delta, a = delta + 1.0, a.clamp(-1.5, -0.3)
    queries = range(2038, 2048)
    got = hidden_attention(delta, b, c, a)[:, 2038:]
    d64, b64, c64, a64 = delta.double(), b.double(), c.double(), a.double()
    for d in range(2):
        for row, i in enumerate(queries):
            for j in range(i - 12, i + 1):
                decay = torch.exp(a64[d] * d64[j + 1 : i + 1, d].sum())
                terms = c64[i] * decay * d64[j, d] * b64[j]
                assert abs(got[d, row, j].item() - terms.sum().item()) <= 2e-6 * terms.abs().sum().item(), (d, i, j)


def test_automatic_plan_for_a_mamba_130m_layer_fits_2_gib_and_chunks():
    budget = 2 * 1024**3
    plan = plan_chunks(1024, 1536, 16, budget)
    assert plan.peak_bytes == block_bytes(plan.channel_block, plan.query_block, 1024, 16) <= budget
    assert plan.channel_block < 1536 and plan.peak_bytes >= budget // 2
    assert plan_chunks(1024, 1536, 16, block_bytes(1, 5, 1024, 16)) == ChunkPlan(1, 5, block_bytes(1, 5, 1024, 16))


def test_explicit_request_that_does_not_fit_raises():
    with pytest.raises(ConfigError, match="memory budget"):
        plan_chunks(1024, 1536, 16, 2 * 1024**3, channel_block=1536, query_block=1024)
    with pytest.raises(ConfigError, match="cannot hold one query row"):
        plan_chunks(1024, 4, 16, memory_budget_bytes=1000)
    delta, b, c, a, _ = random_ssm(length=1024, width=1536, state=1)
    with pytest.raises(ConfigError, match="iter_hidden_attention"):
        hidden_attention(delta, b, c, a)


def test_streamed_blocks_stay_within_the_memory_budget():
    """Peak resident memory of a fresh process while streaming a 64-channel, 384-token layer
    (the whole α is 36 MiB) under an 8 MiB budget."""
    code = textwrap.dedent("""
        import json, re, torch
        torch.set_num_threads(1)
        from neuronbench.attention.hidden import iter_hidden_attention, mix
        def rss(field):
            return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
        g = torch.Generator().manual_seed(0)
        delta = torch.rand(384, 64, generator=g) * 0.1
        b, c = torch.randn(384, 4, generator=g), torch.randn(384, 4, generator=g)
        a, x = -torch.rand(64, 4, generator=g) - 0.1, torch.randn(384, 64, generator=g)
        for block in iter_hidden_attention(delta[:8], b[:8], c[:8], a, memory_budget_bytes=2**20):
            mix(block, x)
        open("/proc/self/clear_refs", "w").write("5")
        before = rss("VmRSS")
        for block in iter_hidden_attention(delta, b, c, a, memory_budget_bytes=8 * 2**20):
            mix(block, x)
        print(json.dumps({"rise": rss("VmHWM") - before}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rise = json.loads(done.stdout.strip().splitlines()[-1])["rise"]
    assert rise <= 8 * 2**20


@pytest.mark.parametrize("change, error, match", [
    (lambda t: {**t, "delta": t["delta"][None]}, ConfigError, "one sequence"),
    (lambda t: {**t, "b": t["b"][:, :2]}, ConfigError, "inconsistent shapes"),
    (lambda t: {**t, "a": t["a"][:3]}, ConfigError, "inconsistent shapes"),
    (lambda t: {**t, "delta": t["delta"].index_fill(0, torch.tensor([2]), float("nan"))}, ConfigError, "NaN"),
    (lambda t: {**t, "delta": -t["delta"]}, ConfigError, "non-negative"),
    (lambda t: {**t, "a": -t["a"]}, ConfigError, "non-positive"),
    (lambda t: {**t, "channels": [0, 5]}, NeuronRangeError, r"\[5\]"),
    (lambda t: {**t, "channels": []}, ConfigError, "no channels"),
    (lambda t: {**t, "channel_block": 0}, ConfigError, "channel_block"),
    (lambda t: {**t, "query_block": 2.5}, ConfigError, "query_block"),
    (lambda t: {key: value[:0] if key in ("delta", "b", "c") else value for key, value in t.items()},
     ConfigError, "empty sequence"),
])
def test_bad_input_raises(change, error, match):
    delta, b, c, a, _ = random_ssm(length=6, width=5, state=3)
    arguments = change({"delta": delta, "b": b, "c": c, "a": a})
    with pytest.raises(error, match=match):
        iter_hidden_attention(**arguments)


def test_first_query_streams_only_the_later_rows():
    delta, b, c, a, _x = random_ssm(10, 3, 4, seed=5)
    full = hidden_attention(delta, b, c, a)
    blocks = list(iter_hidden_attention(delta, b, c, a, first_query=7, query_block=2))
    assert [(blk.query_start, blk.query_stop) for blk in blocks] == [(7, 9), (9, 10)]
    for blk in blocks:
        assert torch.allclose(blk.alpha, full[:, blk.query_start : blk.query_stop, : blk.query_stop], rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="first_query"):
        iter_hidden_attention(delta, b, c, a, first_query=10)
