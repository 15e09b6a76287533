"""Activation rules: the registry, the layer scale (spread sample; first batch when fed), per-family defaults
and refusals, bad input, and the dead set of every family costing nothing when mean-ablated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronbench.activation import ACTIVATION_RULES, resolve_rule
from neuronbench.adapters import ADAPTERS
from neuronbench.capture import CaptureConfig, NeuronLayout, StatisticsCollector, capture_statistics
from neuronbench.capture.scale import in_first_batch, spread_windows
from neuronbench.config import RunConfig
from neuronbench.data import TokenWindows, load_corpus, tokenize_windows
from neuronbench.detectors import detect_dead
from neuronbench.errors import CaptureError, ConfigError
from neuronbench.models import load_model
from neuronbench.names import NEURONS, act_name
from test_ablation import runner_for

T, W = 8, 6


def feed(layout: NeuronLayout, batches: list[np.ndarray], **config) -> object:
    collector = StatisticsCollector(layout, CaptureConfig(batch_size=2, **config), T, 16, torch.device("cpu"))
    for acts in batches:
        ids = torch.ones(acts.shape[:2], dtype=torch.long)
        collector.feed(ids, torch.ones_like(ids), {act_name(0, NEURONS): torch.from_numpy(acts)})
    return collector.result()


def test_rules_and_their_defaults():
    a = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    assert ACTIVATION_RULES["positive"].bind(1.0)(a, 0.0).tolist() == [0, 0, 0, 1, 1]
    assert ACTIVATION_RULES["magnitude"].bind(2.0)(a, 0.5).tolist() == [1, 0, 0, 0, 1]
    assert ACTIVATION_RULES["positive"].default_tau == 0.0 and ACTIVATION_RULES["magnitude"].default_tau == 0.5


def test_magnitude_scale_is_fixed_by_the_first_batch():
    """s_l = median neuron RMS of the first batch; a second batch ten times larger keeps that scale."""
    generator = np.random.default_rng(0)
    first = generator.standard_normal((2, T, W)).astype(np.float32)
    second = 10 * generator.standard_normal((2, T, W)).astype(np.float32)
    stats = feed(NeuronLayout(1, W), [first, second], activation="magnitude", threshold=0.5)
    rms = np.sqrt((first.reshape(-1, W).astype(np.float64) ** 2).mean(0))
    scale = float(np.sort(rms)[(W - 1) // 2])  # the lower median (torch's) of an even width
    np.testing.assert_allclose(float(stats.layer(0)["active_scale"]), scale, rtol=1e-6)
    both = np.concatenate([first, second]).reshape(-1, W)
    np.testing.assert_array_equal(stats.layer(0)["active_count"], (np.abs(both) > 0.5 * scale).sum(0))
    np.testing.assert_allclose(stats.layer(0)["abs_sum"], np.abs(both).sum(0), rtol=1e-6)
    assert stats.activation == "magnitude"


def _neurons(loaded, windows: TokenWindows) -> dict[int, torch.Tensor]:
    """Every layer's neuron tensor over all windows, in float64 (one forward pass, kept whole)."""
    store: dict[int, torch.Tensor] = {}
    handles = [h for layer in range(loaded.adapter.num_layers) for h in loaded.adapter.register_capture(
        layer, (NEURONS,), lambda name, t: store.__setitem__(int(name.split(".")[1]), t.double()))]
    with torch.inference_mode():
        loaded.model(input_ids=windows.input_ids, attention_mask=windows.attention_mask)
    for handle in handles:
        handle.remove()
    return store


def test_layer_scale_comes_from_windows_spread_over_the_corpus_whatever_the_batch(toy_model_dir):
    """300 windows of 16 tokens: s_l is the median neuron RMS over the 128 windows ⌊i·300/128⌋
    (2048 tokens), whether a pass over them measures it (batches of 7 and 64) or the first batch
    holds them all (300), and so are the counts; the corpus starts with 64 windows of one repeated
    token, so the first 128 windows give another scale."""
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    ids = torch.randint(0, loaded.model.config.vocab_size, (300, 16), generator=torch.Generator().manual_seed(0))
    ids[:64] = 7
    windows = TokenWindows(ids, torch.ones_like(ids), ids.numel())
    acts = _neurons(loaded, windows)
    spread = [i * 300 // 128 for i in range(128)]
    assert spread_windows(300, 16).tolist() == spread
    for batch_size in (7, 64, 300):
        config = CaptureConfig(activation="magnitude", threshold=0.5, batch_size=batch_size, positional=False,
                               token_counts=False, trigrams=False, sweep=())
        stats = capture_statistics(loaded.model, loaded.adapter, windows, config, progress=False)
        for layer, a in acts.items():
            flat = a.flatten(0, 1)
            scale = float(flat.view(300, 16, -1)[spread].flatten(0, 1).pow(2).mean(0).sqrt().median())
            prefix = float(flat[:128 * 16].pow(2).mean(0).sqrt().median())
            assert abs(prefix / scale - 1) > 1e-3, (layer, prefix, scale)
            np.testing.assert_allclose(float(stats.layer(layer)["active_scale"]), scale, rtol=1e-6)
            np.testing.assert_array_equal(stats.layer(layer)["active_count"],
                                          (flat.float().abs() > 0.5 * float(stats.layer(layer)["active_scale"])).sum(0))


def test_the_layer_scale_pass_reads_only_real_positions(toy_model_dir):
    """Padded sample windows: the scale pass (batches of 5 of the 20 spread windows) takes the
    neuron RMS over their real positions only."""
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    ids = torch.randint(0, loaded.model.config.vocab_size, (40, 128), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1::3, 50:] = 0
    windows = TokenWindows(ids, mask, int(mask.sum()))
    acts = _neurons(loaded, windows)
    sample = spread_windows(40, 128)
    real = mask[sample].bool()
    config = CaptureConfig(activation="magnitude", batch_size=5, positional=False, token_counts=False,
                           trigrams=False, sweep=())
    stats = capture_statistics(loaded.model, loaded.adapter, windows, config, progress=False)
    for layer, a in acts.items():
        expected = float(a[sample][real].double().pow(2).mean(0).sqrt().median())
        np.testing.assert_allclose(float(stats.layer(layer)["active_scale"]), expected, rtol=1e-6)


@pytest.mark.parametrize("path", ["C loop", "float64 blocks"])
def test_column_square_sums_are_exact_on_both_paths(monkeypatch, path):
    """Σ a² per column in double, on rows that span several blocks (float32 squares are exact in double)."""
    from neuronbench.capture import native
    from neuronbench.capture.scale import column_square_sums

    if path == "float64 blocks":
        monkeypatch.setattr(native, "library", lambda: None)
    flat = torch.randn(1000, 3072, generator=torch.Generator().manual_seed(2))
    block = torch.empty(40, 3072, dtype=torch.float64)
    for got in (column_square_sums(flat), column_square_sums(flat, block)):
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), (flat.double() ** 2).sum(0).numpy(), rtol=1e-13)


def test_a_layer_scale_sample_without_real_tokens_is_an_error_not_a_zero_scale(toy_model_dir):
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    ids = torch.randint(0, loaded.model.config.vocab_size, (300, 16), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[spread_windows(300, 16)] = 0
    windows = TokenWindows(ids, mask, int(mask.sum()))
    with pytest.raises(CaptureError, match=r"layer-scale sample .* has no real tokens"):
        capture_statistics(loaded.model, loaded.adapter, windows, CaptureConfig(activation="magnitude", batch_size=64),
                           progress=False)


def test_the_sample_is_read_from_the_first_batch_when_it_holds_every_sample_window():
    assert spread_windows(8, 512).tolist() == [0, 2, 4, 6] and spread_windows(2, 512).tolist() == [0, 1]
    assert spread_windows(390, 128).tolist() == [i * 390 // 16 for i in range(16)]
    assert in_first_batch(spread_windows(8, 512), 8) and in_first_batch(spread_windows(8, 512), 7)
    assert not in_first_batch(spread_windows(8, 512), 6) and not in_first_batch(spread_windows(390, 128), 32)


def test_one_batch_capture_measures_the_scale_on_its_sample_windows_without_another_pass(toy_model_dir):
    """64 windows of 64 tokens in one default batch (4096 tokens): s_l over the 32 even windows
    (2048 tokens), and the backbone runs once."""
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    ids = torch.randint(0, loaded.model.config.vocab_size, (64, 64), generator=torch.Generator().manual_seed(1))
    ids[::2, ::3] = 5  # the sample windows differ from the others
    windows = TokenWindows(ids, torch.ones_like(ids), ids.numel())
    acts = _neurons(loaded, windows)
    calls = []
    handle = loaded.model.base_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        stats = capture_statistics(loaded.model, loaded.adapter, windows, CaptureConfig(activation="magnitude"),
                                   progress=False)
    finally:
        handle.remove()
    assert len(calls) == 1
    for layer, a in acts.items():
        scale = float(a[::2].flatten(0, 1).pow(2).mean(0).sqrt().median())
        assert abs(float(a.flatten(0, 1).pow(2).mean(0).sqrt().median()) / scale - 1) > 1e-3
        np.testing.assert_allclose(float(stats.layer(layer)["active_scale"]), scale, rtol=1e-6)


def test_adapters_declare_a_rule_and_refuse_the_senseless_one():
    assert {name: ADAPTERS[name].activation_rule for name in ("opt", "gpt2", "gpt_neox", "llama", "mamba")} == {
        "opt": "positive", "gpt2": "magnitude", "gpt_neox": "magnitude", "llama": "magnitude", "mamba": "magnitude"}
    for family in ("mamba", "llama"):
        adapter = ADAPTERS[family]
        with pytest.raises(ConfigError, match=r"makes no sense for .* signed.*valid for .*\['magnitude'\]"):
            resolve_rule("positive", adapter.activation_rule, adapter.invalid_rules, family)
    for family in ("opt", "gpt2"):
        assert resolve_rule("magnitude", "positive", ADAPTERS[family].invalid_rules, family).name == "magnitude"


@pytest.mark.parametrize("config, message", [
    ({"activation": "sparse"}, r"'sparse' is not an activation rule; valid for synthetic: \['positive', 'magnitude'\]"),
    ({"activation": "magnitude", "threshold": -0.1}, "must be ≥ 0 for the 'magnitude' rule"),
    ({"threshold": float("nan")}, "must be a finite number"),
])
def test_bad_rule_or_tau_is_a_usage_error(config, message):
    with pytest.raises(ConfigError, match=message):
        StatisticsCollector(NeuronLayout(1, W), CaptureConfig(**config), T, 16, torch.device("cpu"))


def test_negative_tau_is_allowed_for_positive():
    stats = feed(NeuronLayout(1, W), [np.full((2, T, W), -0.05, dtype=np.float32)], threshold=-0.1)
    assert (stats.layer(0)["active_count"] == 2 * T).all()


def test_run_config_rejects_an_unknown_rule_and_a_nan_tau():
    with pytest.raises(ConfigError, match="--active 'relu' is not valid: choose one of positive, magnitude"):
        RunConfig(active="relu")
    with pytest.raises(ConfigError, match="finite"):
        RunConfig(threshold=float("inf"))
    assert "active" in RunConfig().analysis_key()


SILENCE = {
    "gpt2": lambda m, j: (m.transformer.h[0].mlp.c_fc.weight[:, j].zero_(), m.transformer.h[0].mlp.c_fc.bias[j].fill_(-100)),
    "opt": lambda m, j: (m.model.decoder.layers[0].fc1.weight[j].zero_(), m.model.decoder.layers[0].fc1.bias[j].fill_(-1e4)),
    "gpt_neox": lambda m, j: (m.gpt_neox.layers[0].mlp.dense_h_to_4h.weight[j].zero_(),
                              m.gpt_neox.layers[0].mlp.dense_h_to_4h.bias[j].fill_(-100)),
    "llama": lambda m, j: m.model.layers[0].mlp.gate_proj.weight[j].zero_(),
    "mamba": lambda m, j: m.backbone.layers[0].mixer.in_proj.weight[m.config.intermediate_size + j].zero_(),
}
"""Make neuron ``j`` of layer 0 exactly 0 on every token (GELU(−100) = ReLU(−1e4) = silu(0)·u = 0)."""


@pytest.mark.parametrize("family", sorted(SILENCE))
def test_dead_set_of_every_family_costs_nothing_when_mean_ablated(toy_model_dir, family):
    """Planted inert neurons are found dead under the family's default rule, carry no activation
    mass, and mean-ablating the whole dead set leaves perplexity unchanged."""
    loaded = load_model(str(toy_model_dir(family)), device="cpu", dtype="float32")
    planted = [1, 4, 9]
    with torch.no_grad():
        for j in planted:
            SILENCE[family](loaded.model, j)
    windows = tokenize_windows(load_corpus("pydocs", "train"), loaded.tokenizer, 32, 1024)
    stats = capture_statistics(loaded.model, loaded.adapter, windows, CaptureConfig(batch_size=8), progress=False)
    assert stats.activation == loaded.adapter.activation_rule
    dead = detect_dead(stats, null_freq=5e-3)  # 1024 tokens ≥ the 919 this null needs
    assert set(planted) <= set(dead[0].indices.tolist())
    assert all(value == 0 for j, value in dead[0].details["max_abs"].items() if j in planted)
    runner = runner_for(loaded, stats)
    base = runner.baseline().ppl
    dead_set = {layer: d.indices.tolist() for layer, d in dead.items() if d.indices.size}
    assert abs(runner.perplexity(dead_set, "mean").ppl - base) / base < 1e-4
    alive = {0: [j for j in range(stats.layer(0)["active_count"].size) if j not in dead_set[0]][:3]}
    assert abs(runner.perplexity(alive, "mean").ppl - base) / base > 1e-6  # the check can fail
