"""The streamed top-k activating positions equal a brute-force sort of the full activation tensor
by (value descending, position ascending): values and positions exact, ties included, whatever
the batching (:mod:`neuronbench.capture.topk`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronbench.capture import CaptureConfig, NeuronLayout, StatisticsCollector, capture_statistics, native
from neuronbench.capture import topk
from neuronbench.capture.topk import topk_state_bytes
from neuronbench.data import TokenWindows
from neuronbench.errors import CaptureError, ConfigError
from neuronbench.models import load_model
from neuronbench.names import NEURONS, act_name

WINDOW, BATCH = 16, 3


@pytest.fixture(autouse=True, params=["C pass", "CPU without C", "GPU code path"])
def merge_path(request, monkeypatch):
    """Every test runs on every merge: the C pass (``native.merge_top_rows``); on a CPU without a
    compiler, the sparse merge; the dense merge, which a GPU runs (the ``gpu_code_path`` fixture)."""
    if request.param == "CPU without C":
        monkeypatch.setattr(native, "library", lambda: None)
    elif request.param == "GPU code path":
        request.getfixturevalue("gpu_code_path")
    elif native.library() is None:
        pytest.skip(f"the C library is not available here: {native.UNAVAILABLE}")
    return request.param


def windows_with_padding(vocab: int, n_full: int = 7, tail: int = 5) -> TokenWindows:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (n_full + 1, WINDOW), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, tail:] = 0
    return TokenWindows(input_ids=ids, attention_mask=mask, n_tokens=int(mask.sum()))


def full_neurons(loaded, windows: TokenWindows, layer: int) -> torch.Tensor:
    """``[N, T, W]`` neuron activations of every window, in the capture's batches."""
    parts: list[torch.Tensor] = []
    (handle,) = loaded.adapter.register_capture(layer, [NEURONS], lambda name, t: parts.append(t.float().clone()))
    with torch.inference_mode():
        for start in range(0, windows.input_ids.shape[0], BATCH):
            loaded.model(input_ids=windows.input_ids[start:start + BATCH],
                         attention_mask=windows.attention_mask[start:start + BATCH], use_cache=False)
    handle.remove()
    return torch.cat(parts)


@pytest.mark.parametrize("family", ["gpt2", "mamba"])
@pytest.mark.parametrize("k", [5, 200])
def test_streamed_topk_equals_brute_force(toy_model_dir, family, k):
    loaded = load_model(str(toy_model_dir(family)), device="cpu", dtype="float32")
    windows = windows_with_padding(loaded.model.config.vocab_size)
    config = CaptureConfig(layers=(1,), positional=False, token_counts=False, trigrams=False,
                           batch_size=BATCH, top_activations=k)
    stats = capture_statistics(loaded.model, loaded.adapter, windows, config, progress=False)
    values, positions = stats.layer(1)["topk_values"], stats.layer(1)["topk_positions"]
    acts = full_neurons(loaded, windows, 1).flatten(0, 1)  # [N·T, W], row = window·T + t
    real = windows.attention_mask.flatten().bool()
    kept = min(k, int(real.sum()))
    reference_values, reference_positions = brute_force_top(acts.numpy(), real.numpy(), kept)
    assert values.shape == positions.shape == (k, acts.shape[1])
    np.testing.assert_array_equal(values[:kept], reference_values)  # exact, in descending order
    np.testing.assert_array_equal(positions[:kept], reference_positions)
    assert (values[kept:] == -np.inf).all() and (positions[kept:] == -1).all()


def brute_force_top(acts: np.ndarray, real: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``[k, W]`` values and positions: each column's real positions sorted by (value descending,
    position ascending), the first k."""
    positions = np.flatnonzero(real)
    values, where = np.empty((k, acts.shape[1]), np.float32), np.empty((k, acts.shape[1]), np.int64)
    for j in range(acts.shape[1]):
        order = np.lexsort((positions, -acts[positions, j]))[:k]
        values[:, j], where[:, j] = acts[positions[order], j], positions[order]
    return values, where


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8])
def test_ties_are_broken_by_lowest_position_whatever_the_batching(batch):
    """Small integer activations (most values tied, the k-th too): the kept positions are the
    brute-force sort's for every batch size."""
    n_windows, window, width, k = 8, 6, 5, 7
    acts = torch.randint(0, 3, (n_windows, window, width), generator=torch.Generator().manual_seed(3)).float()
    acts[:, :, 4] = 0.0  # a constant neuron: the first k positions
    mask = torch.ones(n_windows, window, dtype=torch.long)
    mask[-1, 4:] = 0
    layout = NeuronLayout(num_layers=1, width=width)
    collector = StatisticsCollector(layout, CaptureConfig(positional=False, token_counts=False, trigrams=False,
                                                          top_activations=k), window=window, vocab_size=10,
                                    device=torch.device("cpu"))
    ids = torch.zeros(n_windows, window, dtype=torch.long)
    for start in range(0, n_windows, batch):
        part = slice(start, start + batch)
        collector.feed(ids[part], mask[part], {act_name(0, NEURONS): acts[part]})
    top = collector.result().layer(0)
    values, positions = brute_force_top(acts.flatten(0, 1).numpy(), mask.flatten().bool().numpy(), k)
    np.testing.assert_array_equal(top["topk_values"], values)
    np.testing.assert_array_equal(top["topk_positions"], positions)
    np.testing.assert_array_equal(top["topk_positions"][:, 4], np.arange(k))


def test_random_ties_padding_and_batchings_equal_brute_force():
    """Many shapes at once: k above and below a batch's real rows (a state filled over several
    batches, or by one), padding anywhere, values from {-2, …, 2}: every merge keeps the brute-force
    sort's first k."""
    generator = torch.Generator().manual_seed(7)
    for _ in range(60):
        n_windows, window, batch = (int(torch.randint(low, high, (), generator=generator))
                                    for low, high in ((1, 7), (1, 5), (1, 4)))
        real = torch.rand(n_windows, window, generator=generator) > 0.25
        real[0, 0] = True
        k = int(torch.randint(1, int(real.sum()) + 1, (), generator=generator))
        acts = torch.randint(-2, 3, (n_windows, window, 3), generator=generator).float()
        collector = StatisticsCollector(NeuronLayout(num_layers=1, width=3),
                                        CaptureConfig(positional=False, token_counts=False, trigrams=False,
                                                      top_activations=k), window=window, vocab_size=10,
                                        device=torch.device("cpu"))
        ids = torch.zeros(n_windows, window, dtype=torch.long)
        for start in range(0, n_windows, batch):
            part = slice(start, start + batch)
            collector.feed(ids[part], real[part].long(), {act_name(0, NEURONS): acts[part]})
        top = collector.result().layer(0)
        values, positions = brute_force_top(acts.flatten(0, 1).numpy(), real.flatten().numpy(), k)
        np.testing.assert_array_equal(top["topk_values"], values)
        np.testing.assert_array_equal(top["topk_positions"], positions)


def test_ties_keep_exact_values_at_distinct_positions():
    """A neuron constant over the stream: its first k positions, all with that value; a planted
    maximum is always found where it was planted."""
    layout = NeuronLayout(num_layers=1, width=2)
    collector = StatisticsCollector(layout, CaptureConfig(positional=False, token_counts=False, trigrams=False,
                                                          top_activations=4), window=8, vocab_size=10,
                                    device=torch.device("cpu"))
    acts = torch.zeros(6, 8, 2)
    acts[4, 3, 1] = 7.0
    ids, mask = torch.zeros(6, 8, dtype=torch.long), torch.ones(6, 8, dtype=torch.long)
    for start in (0, 2, 4):
        collector.feed(ids[start:start + 2], mask[start:start + 2], {act_name(0, NEURONS): acts[start:start + 2]})
    top = collector.result().layer(0)
    assert (top["topk_values"][:, 0] == 0).all()
    np.testing.assert_array_equal(top["topk_positions"][:, 0], np.arange(4))
    assert top["topk_values"][0, 1] == 7.0 and top["topk_positions"][0, 1] == 4 * 8 + 3


def test_topk_state_is_k_by_width_and_k_is_checked():
    assert topk_state_bytes(20, 3072) == 20 * 3072 * 12
    layout = NeuronLayout(num_layers=1, width=2)
    with pytest.raises(ConfigError, match="top-contexts"):
        StatisticsCollector(layout, CaptureConfig(top_activations=-1), window=4, vocab_size=5,
                            device=torch.device("cpu"))


def test_sort_keys_order_values_then_positions_and_unpack_exactly():
    """The dense merge's int64 keys: descending keys are (value descending, position ascending),
    ``-0.0`` equal to ``0.0``, over signs, subnormals, the float32 extremes and positions up to
    ``2³² − 1``; unpacking gives the values and positions back."""
    values = torch.tensor([1.5, -0.0, 0.0, -2.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.5, -2.0, 0.0, 7.0])
    positions = torch.tensor([9, 3, 2, 0, 5, 6, 1, 8, 4, 2**32 - 1, 2**32 - 2, 2**32 - 1])
    keys = topk._sort_keys(values[:, None], positions[:, None])
    order = torch.argsort(keys[:, 0], descending=True).tolist()
    expected = sorted(range(len(values)), key=lambda i: (-float(values[i]), int(positions[i])))
    assert order == expected
    unpacked, where = topk._unpack_keys(keys)
    np.testing.assert_array_equal(unpacked[:, 0].numpy(), (values + 0.0).numpy())
    np.testing.assert_array_equal(where[:, 0].numpy(), positions.numpy())


def test_the_dense_merge_names_the_position_limit(monkeypatch, gpu_code_path):
    """Positions past the sort keys' limit are an error, not a wrapped key (the limit lowered to
    40: the third batch of 2 × 8 positions reaches 48)."""
    monkeypatch.setattr(topk, "POSITION_LIMIT", 40)
    layout = NeuronLayout(num_layers=1, width=2)
    collector = StatisticsCollector(layout, CaptureConfig(positional=False, token_counts=False, trigrams=False,
                                                          top_activations=2), window=8, vocab_size=10,
                                    device=torch.device("cpu"))
    ids, mask = torch.zeros(6, 8, dtype=torch.long), torch.ones(6, 8, dtype=torch.long)

    def feed(start: int) -> None:
        collector.feed(ids[start:start + 2], mask[start:start + 2], {act_name(0, NEURONS): torch.zeros(2, 8, 2)})

    feed(0)
    feed(2)
    with pytest.raises(CaptureError, match="reach 48, but the dense merge's sort keys hold positions below 2"):
        feed(4)
