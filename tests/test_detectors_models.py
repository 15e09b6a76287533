"""Detectors on real tiny models: planted neurons found through the full pipeline, scores equal to
brute force from the full activation tensor (≥ 20,000 tokens), and the sensitivity analyses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronbench.capture import CaptureConfig, capture_statistics
from neuronbench.data import TokenWindows, load_corpus, tokenize_windows
from neuronbench.detectors import (
    DETECTORS,
    capture_trigram_statistics,
    detect_dead,
    detect_delta_sensitive,
    detect_token_detecting,
    detect_trigram,
    input_change_sensitivity,
    sensitivity_method,
)
from neuronbench.detectors.sensitivity import draw_replacements
from neuronbench.errors import AnalysisUnavailableError
from neuronbench.models import load_model
from neuronbench.names import NEURONS, SSM_DELTA, act_name
from test_detectors_reference import (
    naive_freq,
    naive_log_delta_std,
    naive_mean_pearson,
    naive_mutual_information,
    naive_ngram_detection,
    naive_ngram_tables,
)


def excluded_ids(tokenizer) -> frozenset[int]:
    """The BOS/EOS separator of the token stream: excluded from per-token counts."""
    return frozenset({tokenizer.eos_token_id}) if tokenizer.eos_token_id is not None else frozenset()


def pydocs_windows(tokenizer, window: int, max_tokens: int) -> TokenWindows:
    return tokenize_windows(load_corpus("pydocs", "train"), tokenizer, window, max_tokens=max_tokens)


def capture_with_full_tensors(loaded, windows: TokenWindows, config: CaptureConfig, kinds=(NEURONS,)):
    """One capture pass; an extra hook keeps the full tensors of the same forward passes (the last
    ``N`` windows it sees: a relative rule's layer-scale pass over a sample runs first)."""
    store: dict[str, list[torch.Tensor]] = {}
    handles = [h for layer in range(loaded.adapter.num_layers) for h in loaded.adapter.register_capture(
        layer, kinds, lambda name, t: store.setdefault(name, []).append(t.detach().float().clone()))]
    try:
        stats = capture_statistics(loaded.model, loaded.adapter, windows, config, progress=False)
    finally:
        for handle in handles:
            handle.remove()
    n_windows = windows.input_ids.shape[0]
    return stats, {name: torch.cat(parts)[-n_windows:].numpy() for name, parts in store.items()}


# -- planted neurons in real models -------------------------------------------------------------
def plant_token_and_dead_neuron(model, target: int, token_neuron: int, dead_neuron: int, scale: float = 10.0) -> float:
    """1-layer GPT-2 with no position embeddings and a silenced attention: the MLP input is
    ``ln_2(wte[x])``, a function of the current token only. ``token_neuron`` gets weights along
    the target token's direction and a bias halfway between the target's pre-activation and the
    best other token's, so it is positive only on ``target``; ``dead_neuron`` gets a large negative
    bias and no weights. Returns the margin (the planted rule holds iff it is positive)."""
    block = model.transformer.h[0]
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()
        block.attn.c_proj.weight.zero_()
        block.attn.c_proj.bias.zero_()
        directions = block.ln_2(model.transformer.wte.weight)
        scores = directions @ directions[target]
        best_other = torch.cat([scores[:target], scores[target + 1:]]).max()
        block.mlp.c_fc.weight[:, token_neuron] = scale * directions[target]
        block.mlp.c_fc.bias[token_neuron] = -scale * (scores[target] + best_other) / 2
        block.mlp.c_fc.weight[:, dead_neuron] = 0.0
        block.mlp.c_fc.bias[dead_neuron] = -100.0
    return float(scores[target] - best_other)


def test_planted_token_detector_and_dead_neuron_in_gpt2(toy_model_dir):
    loaded = load_model(str(toy_model_dir("gpt2", n_layer=1)), device="cpu", dtype="float32")
    windows = pydocs_windows(loaded.tokenizer, 64, 8192)
    excluded = excluded_ids(loaded.tokenizer)
    real = windows.input_ids[windows.attention_mask.bool()]
    counts = torch.bincount(real, minlength=loaded.model.config.vocab_size)
    counts[list(excluded)] = 0
    target = int(counts.argmax())
    assert plant_token_and_dead_neuron(loaded.model, target, token_neuron=17, dead_neuron=42) > 0
    stats = capture_statistics(loaded.model, loaded.adapter, windows,
                               CaptureConfig(exclude_token_ids=excluded, batch_size=32), progress=False)
    token = detect_token_detecting(stats)[0]
    assert token.indices.tolist() == [17]
    assert token.details["covered_tokens"][17].tolist() == [target]
    assert token.scores[17] == 1
    assert detect_dead(stats)[0].indices.tolist() == [42]
    sensitivity = input_change_sensitivity(loaded.model, loaded.adapter, windows, n_samples=16, horizon=4,
                                           exclude_token_ids=excluded)
    assert sensitivity[0].scores[42] == 0  # a constant neuron does not move


def test_planted_dead_channel_in_mamba(toy_model_dir):
    loaded = load_model(str(toy_model_dir("mamba", num_hidden_layers=1)), device="cpu", dtype="float32")
    mixer = loaded.adapter.mixer(0)
    channel = 5
    with torch.no_grad():  # z_d = 0 -> silu(z_d) = 0 -> a_d = (y + D x)·0 = 0, never > τ = 0
        mixer.in_proj.weight[mixer.intermediate_size + channel] = 0.0
    windows = pydocs_windows(loaded.tokenizer, 32, 2048)
    stats = capture_statistics(loaded.model, loaded.adapter, windows,
                               CaptureConfig(exclude_token_ids=excluded_ids(loaded.tokenizer), batch_size=64),
                               progress=False)
    assert detect_dead(stats, null_freq=5e-3)[0].indices.tolist() == [channel]  # 2048 tokens ≥ 919 needed


# -- brute force ---------------------------------------------------------------------------------
def rule_input(stats, layer: int, acts: np.ndarray) -> np.ndarray:
    """What the brute-force references compare with τ: ``a`` for ``positive``, ``|a| / s_l`` for
    ``magnitude`` (``|a| > τ·s_l`` iff ``|a|/s_l > τ`` for ``s_l > 0``)."""
    if stats.activation == "positive":
        return acts
    scale = float(stats.layer(layer)["active_scale"])
    assert scale > 0
    return np.abs(acts) / scale


def check_brute_force(stats, tensors, windows: TokenWindows, excluded: set[int]) -> None:
    ids, mask = windows.input_ids.numpy(), windows.attention_mask.numpy()
    tau = stats.threshold
    found = {name: detector(stats) for name, detector in DETECTORS.items() if name != "delta"}
    for layer in stats.layers:
        raw = tensors[act_name(layer, NEURONS)]
        acts = rule_input(stats, layer, raw)
        np.testing.assert_array_equal(stats.layer(layer)["active_count"], (acts[mask.astype(bool)] > tau).sum(0))
        np.testing.assert_allclose(found["dead"][layer].scores, naive_freq(acts, mask, tau), rtol=1e-12)
        np.testing.assert_allclose(found["positional"][layer].scores, naive_mutual_information(acts, mask, tau),
                                   rtol=1e-6, atol=1e-12)
        # A mean of per-window correlations in [-1, 1] can cancel: each window's r is within 1e-7
        # of the float64 reference (float32 sums of centred values), so the mean is too.
        np.testing.assert_allclose(found["positional_pearson"][layer].scores, naive_mean_pearson(raw, mask),
                                   rtol=1e-6, atol=1e-7)
        for n, name, max_count in ((1, "token", 5), (3, "trigram", 50)):
            tables, occurrences = naive_ngram_tables(acts, ids, mask, tau, excluded, n)
            counts, detected = naive_ngram_detection(tables, occurrences, max_count=max_count)
            np.testing.assert_array_equal(found[name][layer].scores, counts, err_msg=name)
            assert sorted(detected) == found[name][layer].indices.tolist()
        assert {int(j): {tuple(np.atleast_1d(g).tolist()) for g in grams}
                for j, grams in found["trigram"][layer].details["covered_trigrams"].items()} == detected


@pytest.fixture(scope="module")
def gpt2_brute_force(toy_model_dir):
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    windows = pydocs_windows(loaded.tokenizer, 64, 20_000)  # 312 full windows + one of 32 tokens
    excluded = excluded_ids(loaded.tokenizer)
    config = CaptureConfig(exclude_token_ids=excluded, batch_size=64, trigram_neurons="all")
    stats, tensors = capture_with_full_tensors(loaded, windows, config)
    return loaded, windows, excluded, stats, tensors


def test_gpt2_scores_equal_brute_force_over_20k_tokens(gpt2_brute_force):
    loaded, windows, excluded, stats, tensors = gpt2_brute_force
    assert stats.n_tokens == windows.n_tokens == 20_000
    check_brute_force(stats, tensors, windows, set(excluded))


def test_two_step_trigram_pass_agrees_with_one_pass_tables(gpt2_brute_force):
    loaded, windows, excluded, all_tables, _ = gpt2_brute_force
    first = capture_statistics(loaded.model, loaded.adapter, windows,
                               CaptureConfig(exclude_token_ids=excluded, batch_size=64), progress=False)
    second = capture_trigram_statistics(loaded.model, loaded.adapter, windows, first, batch_size=64, progress=False)
    one_pass, two_step = detect_trigram(all_tables), detect_trigram(first, trigram_stats=second)
    for layer in first.layers:
        np.testing.assert_array_equal(two_step[layer].indices, one_pass[layer].indices)
        exact = np.isfinite(two_step[layer].scores)
        np.testing.assert_array_equal(two_step[layer].scores[exact], one_pass[layer].scores[exact])
        assert np.all(one_pass[layer].scores[~exact] > 50)
        assert exact.sum() < exact.size  # the bounds spared some neurons their tables


def test_mamba_scores_and_delta_spread_equal_brute_force_over_20k_tokens(toy_model_dir):
    loaded = load_model(str(toy_model_dir("mamba", num_hidden_layers=1)), device="cpu", dtype="float32")
    windows = pydocs_windows(loaded.tokenizer, 32, 20_000)
    excluded = excluded_ids(loaded.tokenizer)
    config = CaptureConfig(exclude_token_ids=excluded, batch_size=160, trigram_neurons="all")
    stats, tensors = capture_with_full_tensors(loaded, windows, config, kinds=(NEURONS, SSM_DELTA))
    assert stats.n_tokens == 20_000
    check_brute_force(stats, tensors, windows, set(excluded))
    delta = detect_delta_sensitive(stats, top_k=7)[0]
    expected = naive_log_delta_std(tensors[act_name(0, SSM_DELTA)], windows.attention_mask.numpy())
    np.testing.assert_allclose(delta.scores, expected, rtol=1e-6)
    assert delta.indices.tolist() == sorted(np.argsort(-expected, kind="stable")[:7].tolist())
    assert sensitivity_method(loaded.adapter) == "delta"


# -- sensitivity ---------------------------------------------------------------------------------
def test_delta_of_a_transformer_names_the_alternative(gpt2_brute_force):
    loaded, _, _, stats, _ = gpt2_brute_force
    with pytest.raises(AnalysisUnavailableError, match="input-change sensitivity"):
        sensitivity_method(loaded.adapter, "delta")
    with pytest.raises(AnalysisUnavailableError, match="input-change sensitivity"):
        detect_delta_sensitive(stats)
    assert sensitivity_method(loaded.adapter) == "input_change"


def naive_input_change(model, windows, window, position, replacement, horizon, layers, eps):
    """Unbatched: one original and one edited window per sample, hooks on ``mlp.c_proj``."""
    change = {layer: 0.0 for layer in layers}
    magnitude = {layer: 0.0 for layer in layers}
    for w, p, r in zip(window.tolist(), position.tolist(), replacement.tolist()):
        original = windows.input_ids[w:w + 1]
        edited = original.clone()
        edited[0, p] = r
        seen = {}
        for name, ids in (("a", original), ("b", edited)):
            handles = [model.transformer.h[layer].mlp.c_proj.register_forward_pre_hook(
                lambda _m, inputs, layer=layer, name=name: seen.__setitem__((name, layer), inputs[0][0]))
                for layer in layers]
            with torch.no_grad():
                model(input_ids=ids)
            for handle in handles:
                handle.remove()
        for layer in layers:
            a, b = seen[("a", layer)][p:p + horizon].double(), seen[("b", layer)][p:p + horizon].double()
            change[layer] = change[layer] + (b - a).abs().sum(0)
            magnitude[layer] = magnitude[layer] + a.abs().sum(0)
    measured = len(window) * horizon
    return {layer: ((change[layer] / measured) / (magnitude[layer] / measured + eps)).numpy() for layer in layers}


def test_input_change_sensitivity_equals_unbatched_brute_force(toy_model_dir):
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    loaded.model.double()
    windows = pydocs_windows(loaded.tokenizer, 24, 24 * 12)
    excluded = excluded_ids(loaded.tokenizer)
    result = input_change_sensitivity(loaded.model, loaded.adapter, windows, n_samples=10, horizon=5, top_k=3,
                                      seed=3, exclude_token_ids=excluded, batch_size=4)
    window, position, replacement = draw_replacements(windows, loaded.model.config.vocab_size, 10, 5, 3, excluded)
    expected = naive_input_change(loaded.model, windows, window, position, replacement, 5, [0, 1], 1e-6)
    for layer in (0, 1):
        np.testing.assert_allclose(result[layer].scores, expected[layer], rtol=1e-6)
        assert result[layer].method == "input_change"
        assert result[layer].indices.tolist() == sorted(np.argsort(-expected[layer], kind="stable")[:3].tolist())
        assert result[layer].n_tokens == 50


def test_replacements_are_seeded_valid_and_differ_from_the_original():
    ids = torch.arange(40).reshape(4, 10) % 7
    windows = TokenWindows(ids, torch.ones_like(ids), 40)
    first = draw_replacements(windows, 7, 200, 3, seed=1, exclude_token_ids=(0,))
    again = draw_replacements(windows, 7, 200, 3, seed=1, exclude_token_ids=(0,))
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    window, position, replacement = first
    assert int(position.max()) <= 10 - 3
    assert torch.all(replacement != ids[window, position]) and torch.all(replacement != 0)
    assert set(replacement.tolist()) == set(range(1, 7))
