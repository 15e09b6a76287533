"""The streaming statistics equal statistics computed from the full activation tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronbench.capture import CaptureConfig, capture_statistics
from neuronbench.data import TokenWindows
from neuronbench.errors import CaptureError, LayerRangeError
from neuronbench.models import load_model
from neuronbench.names import NEURONS, SSM_DELTA, act_name

WINDOW = 16
SWEEP = (0.0, 0.05, 0.2)


def padded_windows(vocab: int, n_full: int, tail: int, seed: int = 0) -> TokenWindows:
    """``n_full`` full windows plus one window with only ``tail`` real tokens (right padding)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_full + 1, WINDOW), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, tail:] = 0
    ids[-1, tail:] = 0
    return TokenWindows(input_ids=ids, attention_mask=mask, n_tokens=int(mask.sum()))


def full_tensors(loaded, windows: TokenWindows, kinds) -> dict[str, torch.Tensor]:
    """Every requested activation for every window, kept whole (the brute-force reference)."""
    store: dict[str, list[torch.Tensor]] = {}
    layers = range(loaded.adapter.num_layers)
    handles = [h for layer in layers for h in loaded.adapter.register_capture(
        layer, kinds, lambda name, t: store.setdefault(name, []).append(t.clone()))]
    with torch.inference_mode():
        for start in range(0, windows.input_ids.shape[0], 3):
            loaded.model(input_ids=windows.input_ids[start:start + 3],
                         attention_mask=windows.attention_mask[start:start + 3])
    for handle in handles:
        handle.remove()
    return {name: torch.cat(parts).double() for name, parts in store.items()}


def naive_statistics(acts: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, tau: float,
                     excluded: set[int]) -> dict[str, np.ndarray]:
    real = mask.bool()
    flat = acts[real]
    full = acts[real.all(dim=1)]
    positions = torch.arange(WINDOW, dtype=torch.float64)
    pearson = np.zeros(acts.shape[-1])
    for window in full:
        for j in range(acts.shape[-1]):
            column = window[:, j]
            if column.std() > 0:
                pearson[j] += np.corrcoef(positions.numpy(), column.numpy())[0, 1]
    tokens = ids[real]
    token_active: dict[int, np.ndarray] = {}
    for token, row in zip(tokens.tolist(), (flat > tau).numpy()):
        if token not in excluded:
            token_active[token] = token_active.get(token, 0) + row.astype(np.int64)
    return {
        "active_count": (flat > tau).sum(0).numpy(),
        "sweep_count": np.stack([(flat > t).sum(0).numpy() for t in SWEEP]),
        "sum": flat.sum(0).numpy(), "sum_sq": (flat ** 2).sum(0).numpy(),
        "max": flat.max(0).values.numpy(), "min": flat.min(0).values.numpy(),
        "pos_active": (full > tau).sum(0).numpy(), "pos_sum": full.sum(0).numpy(),
        "pearson_sum": pearson, "token_active": token_active,
    }


@pytest.mark.parametrize("family", ["gpt2", "mamba", "opt"])
def test_streaming_statistics_equal_full_tensor_statistics(toy_model_dir, family):
    loaded = load_model(str(toy_model_dir(family)), device="cpu", dtype="float32")
    windows = padded_windows(loaded.model.config.vocab_size, n_full=7, tail=5)
    excluded = {int(windows.input_ids[0, 0])}
    config = CaptureConfig(threshold=0.01, sweep=SWEEP, exclude_token_ids=frozenset(excluded), batch_size=3)
    stats = capture_statistics(loaded.model, loaded.adapter, windows, config, progress=False)
    kinds = [NEURONS, SSM_DELTA] if family == "mamba" else [NEURONS]
    reference = full_tensors(loaded, windows, kinds)
    assert stats.n_tokens == windows.n_tokens == 7 * WINDOW + 5
    assert stats.n_windows == 7
    for layer in range(loaded.adapter.num_layers):
        got = stats.layer(layer)
        expected = naive_statistics(reference[act_name(layer, NEURONS)], windows.input_ids,
                                    windows.attention_mask, 0.01, excluded)
        for name in ("active_count", "sweep_count", "pos_active"):
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        for name in ("sum", "sum_sq", "max", "min", "pos_sum", "pearson_sum"):
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-9, err_msg=name)
        np.testing.assert_array_equal(got["pos_tokens"], np.full(WINDOW, 7))
        rows = {int(t): i for i, t in enumerate(stats.token_ids)}
        assert set(rows) == set(expected["token_active"])
        for token, counts in expected["token_active"].items():
            np.testing.assert_array_equal(got["token_active"][rows[token]], counts)
        np.testing.assert_allclose(stats.freq(layer), expected["active_count"] / stats.n_tokens)
        if family == "mamba":
            log_delta = reference[act_name(layer, SSM_DELTA)][windows.attention_mask.bool()].log()
            np.testing.assert_allclose(got["log_delta_sum"], log_delta.sum(0).numpy(), rtol=1e-5)
            np.testing.assert_allclose(got["log_delta_sum_sq"], (log_delta ** 2).sum(0).numpy(), rtol=1e-5)
            np.testing.assert_allclose(got["log_delta_max"], log_delta.max(0).values.numpy(), rtol=1e-6)
            np.testing.assert_allclose(got["log_delta_min"], log_delta.min(0).values.numpy(), rtol=1e-6)
    real_tokens = windows.input_ids[windows.attention_mask.bool()]
    occurrences = np.bincount(real_tokens.numpy(), minlength=loaded.model.config.vocab_size)
    occurrences[list(excluded)] = 0
    np.testing.assert_array_equal(stats.token_occurrences, occurrences)


def test_padding_never_counts(toy_model_dir):
    """Statistics of a padded batch equal those of the same real tokens without padding."""
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    padded = padded_windows(loaded.model.config.vocab_size, n_full=2, tail=6)
    unpadded = TokenWindows(input_ids=padded.input_ids[-1:, :6], attention_mask=padded.attention_mask[-1:, :6],
                            n_tokens=6)
    config = CaptureConfig(positional=False, batch_size=4)
    last_only = capture_statistics(loaded.model, loaded.adapter, unpadded, config, progress=False)
    alone = TokenWindows(input_ids=padded.input_ids[-1:], attention_mask=padded.attention_mask[-1:], n_tokens=6)
    with_padding = capture_statistics(loaded.model, loaded.adapter, alone, config, progress=False)
    for layer in (0, 1):
        for name in ("active_count", "token_active"):
            np.testing.assert_array_equal(with_padding.layer(layer)[name], last_only.layer(layer)[name])
        for name in ("sum", "max", "min"):
            np.testing.assert_allclose(with_padding.layer(layer)[name], last_only.layer(layer)[name],
                                       rtol=1e-5, atol=1e-7)


def test_selected_layers_only_and_range_error(toy_model_dir):
    loaded = load_model(str(toy_model_dir("mamba")), device="cpu", dtype="float32")
    windows = padded_windows(loaded.model.config.vocab_size, n_full=2, tail=3)
    stats = capture_statistics(loaded.model, loaded.adapter, windows, CaptureConfig(layers="1"), progress=False)
    assert sorted(stats.layers) == [1]
    with pytest.raises(CaptureError, match="layer 0 was not captured"):
        stats.layer(0)
    with pytest.raises(LayerRangeError, match=r"0\.\.1"):
        capture_statistics(loaded.model, loaded.adapter, windows, CaptureConfig(layers="0-2"), progress=False)


def test_hook_that_never_fires_is_an_error(toy_model_dir):
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    windows = padded_windows(loaded.model.config.vocab_size, n_full=1, tail=3)
    loaded.adapter.neuron_module = lambda layer: torch.nn.Linear(64, 64)  # a module the model never calls
    with pytest.raises(CaptureError, match="did not fire"):
        capture_statistics(loaded.model, loaded.adapter, windows, CaptureConfig(), progress=False)
