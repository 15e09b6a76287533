"""The streamed top-k activating positions equal a brute-force top-k over the full activation
tensor (values exact; ties: any of the tied positions, see :mod:`neuronbench.capture.topk`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronbench.capture import CaptureConfig, NeuronLayout, StatisticsCollector, capture_statistics
from neuronbench.capture.topk import topk_state_bytes
from neuronbench.data import TokenWindows
from neuronbench.errors import ConfigError
from neuronbench.models import load_model
from neuronbench.names import NEURONS, act_name

WINDOW, BATCH = 16, 3


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
    reference = torch.topk(acts[real], kept, dim=0).values.numpy()
    assert values.shape == positions.shape == (k, acts.shape[1])
    np.testing.assert_array_equal(values[:kept], reference)  # exact, in descending order
    assert (values[kept:] == -np.inf).all() and (positions[kept:] == -1).all()
    for j in range(acts.shape[1]):
        where = positions[:kept, j]
        assert np.unique(where).size == kept and real[where].all()
        np.testing.assert_array_equal(acts[where, j].numpy(), values[:kept, j])


def test_ties_keep_exact_values_at_distinct_positions():
    """A neuron constant over the stream: any k distinct real positions, all with that value;
    a planted maximum is always found where it was planted."""
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
    assert (top["topk_values"][:, 0] == 0).all() and np.unique(top["topk_positions"][:, 0]).size == 4
    assert top["topk_values"][0, 1] == 7.0 and top["topk_positions"][0, 1] == 4 * 8 + 3


def test_topk_state_is_k_by_width_and_k_is_checked():
    assert topk_state_bytes(20, 3072) == 20 * 3072 * 12
    layout = NeuronLayout(num_layers=1, width=2)
    with pytest.raises(ConfigError, match="top-contexts"):
        StatisticsCollector(layout, CaptureConfig(top_activations=-1), window=4, vocab_size=5,
                            device=torch.device("cpu"))
