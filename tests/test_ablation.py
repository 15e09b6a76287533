"""Ablation: hooks change exactly the chosen units and leave the model restored; conditions,
pruning order, seeded random controls, z-scores and the runner's caching."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch
from transformers.activations import ACT2FN

from neuronbench.ablation import (AblationRunner, Condition, ablated, pruning_order, pruning_set,
                                  random_control, resolve_seeds, standard_conditions,
                                  summarize_controls, union, z_score)
from neuronbench.capture import ActivationStatistics, CaptureConfig, capture_statistics
from neuronbench.data import load_corpus, token_stream, tokenize_windows
from neuronbench.errors import ConfigError, LayerRangeError, NeuronRangeError
from neuronbench.models import load_model
from neuronbench.names import ATTN_HEADS, NEURONS, act_name
from neuronbench.perplexity import prepare_token_evaluation

WINDOW, STRIDE, EVAL_TOKENS, TRAIN_TOKENS = 32, 16, 256, 512
CAPTURE = CaptureConfig(positional=False, token_counts=False, batch_size=8)


SHARPER = {"gpt2": {"initializer_range": 0.2}, "opt": {"init_std": 0.2},
           "mamba": {"initializer_range": 0.2}}
"""Larger initial weights than the default 0.02, so that ablations visibly move perplexity."""


def load(toy_model_dir, family: str):
    return load_model(str(toy_model_dir(family, **SHARPER[family])), device="cpu", dtype="float32")


def statistics_of(loaded, split: str = "train", max_tokens: int = TRAIN_TOKENS) -> ActivationStatistics:
    windows = tokenize_windows(load_corpus("pydocs", split), loaded.tokenizer, WINDOW, max_tokens)
    return capture_statistics(loaded.model, loaded.adapter, windows, CAPTURE, progress=False)


def runner_for(loaded, stats=None, seeds=3) -> AblationRunner:
    stream = token_stream(load_corpus("pydocs", "test"), loaded.tokenizer, EVAL_TOKENS)
    evaluation = prepare_token_evaluation(loaded.model.config, stream, WINDOW, STRIDE,
                                          source={"dataset": "pydocs", "split": "test"})
    return AblationRunner(loaded.model, loaded.adapter, evaluation, stats, seeds=seeds, batch_size=8)


def logits(loaded, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.model(input_ids=ids).logits


def neuron_tensor(loaded, ids: torch.Tensor, layer: int, kind: str = NEURONS) -> torch.Tensor:
    """The tensor the output projection reads, as captured *after* any ablation hook."""
    seen = {}
    handles = loaded.adapter.register_capture(layer, [kind], lambda name, t: seen.update({name: t.clone()}))
    logits(loaded, ids)
    for handle in handles:
        handle.remove()
    return seen[act_name(layer, kind)]


IDS = torch.arange(2 * 24).remainder(300).view(2, 24)


# --------------------------------------------------------------------------------------------
# Hooks


@pytest.mark.parametrize("family", ["gpt2", "opt", "mamba"])
def test_zero_and_mean_ablation_replace_exactly_the_chosen_neurons(toy_model_dir, family):
    loaded = load(toy_model_dir, family)
    stats = statistics_of(loaded)
    clean = neuron_tensor(loaded, IDS, 1)
    chosen = [0, 3, 7]
    for mode, fill in [("zero", torch.zeros(3)), ("mean", torch.tensor(stats.mean(1)[chosen]).float())]:
        with ablated(loaded.adapter, {1: chosen}, mode, stats=stats):
            edited = neuron_tensor(loaded, IDS, 1)
        others = [j for j in range(clean.shape[-1]) if j not in chosen]
        assert torch.equal(edited[..., others], clean[..., others])
        assert torch.equal(edited[..., chosen], fill.expand_as(edited[..., chosen]))


def test_head_ablation_zeroes_the_head_output(toy_model_dir):
    loaded = load(toy_model_dir, "gpt2")
    clean = neuron_tensor(loaded, IDS, 0, ATTN_HEADS)
    with ablated(loaded.adapter, {0: [2]}, unit="head"):
        edited = neuron_tensor(loaded, IDS, 0, ATTN_HEADS)
    assert torch.equal(edited[..., 2, :], torch.zeros_like(edited[..., 2, :]))
    assert torch.equal(edited[..., [0, 1, 3], :], clean[..., [0, 1, 3], :])


def test_mamba_heads_are_its_channels(toy_model_dir):
    loaded = load(toy_model_dir, "mamba")
    with ablated(loaded.adapter, {0: [5, 9]}, unit="head"):
        as_heads = logits(loaded, IDS)
    with ablated(loaded.adapter, {0: [5, 9]}, unit="neuron"):
        as_neurons = logits(loaded, IDS)
    assert torch.equal(as_heads, as_neurons)
    assert not torch.equal(as_heads, logits(loaded, IDS))


@pytest.mark.parametrize("family,unit", [("gpt2", "neuron"), ("gpt2", "head"), ("opt", "neuron"),
                                         ("mamba", "neuron")])
def test_model_is_restored_after_ablation_even_after_an_exception(toy_model_dir, family, unit):
    loaded = load(toy_model_dir, family)
    weights = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    clean = logits(loaded, IDS)
    with ablated(loaded.adapter, {0: [0, 1], 1: [2]}, unit=unit):
        assert not torch.equal(logits(loaded, IDS), clean)
    assert torch.equal(logits(loaded, IDS), clean)
    with pytest.raises(RuntimeError, match="inside"):
        with ablated(loaded.adapter, {0: [0, 1]}, unit=unit):
            raise RuntimeError("failure inside the ablation")
    assert torch.equal(logits(loaded, IDS), clean)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in loaded.model.modules())
    assert all(torch.equal(v, weights[k]) for k, v in loaded.model.state_dict().items())


def test_bad_units_and_modes_fail_before_any_hook(toy_model_dir):
    loaded = load(toy_model_dir, "gpt2")
    with pytest.raises(NeuronRangeError, match="layer 1, which has 128 neurons"):
        with ablated(loaded.adapter, {0: [1], 1: [128]}):
            pass
    with pytest.raises(NeuronRangeError, match="4 heads"):
        with ablated(loaded.adapter, {0: [4]}, unit="head"):
            pass
    with pytest.raises(LayerRangeError):
        with ablated(loaded.adapter, {2: [0]}):
            pass
    with pytest.raises(ConfigError, match="statistics"):
        with ablated(loaded.adapter, {0: [0]}, "mean"):
            pass
    for mode, unit in [("random", "neuron"), ("zero", "layer"), ("mean", "head")]:
        with pytest.raises(ConfigError):
            with ablated(loaded.adapter, {0: [0]}, mode, unit):
                pass
    assert not any(m._forward_pre_hooks for m in loaded.model.modules())


# --------------------------------------------------------------------------------------------
# Perplexity under ablation


def test_zero_ablating_a_never_active_neuron_changes_nothing(toy_model_dir):
    """OPT (ReLU): a bias of -1e4 makes neuron 5 of layer 0 exactly 0 on every token."""
    loaded = load(toy_model_dir, "opt")
    with torch.no_grad():
        loaded.model.model.decoder.layers[0].fc1.bias[5] = -1e4
    train, test = statistics_of(loaded, "train"), statistics_of(loaded, "test", EVAL_TOKENS)
    assert train.freq(0)[5] == 0 and test.layer(0)["max"][5] == 0  # never active, exactly 0
    runner = runner_for(loaded, train)
    base = runner.baseline().ppl
    assert abs(runner.perplexity({0: [5]}).ppl - base) / base < 1e-6
    active = int(np.argmax(train.freq(0)))
    assert abs(runner.perplexity({0: [active]}).ppl - base) / base > 1e-6  # the check can fail


def test_mean_ablating_a_constant_neuron_changes_nothing(toy_model_dir):
    """GPT-2: zero c_fc weights into neuron 7 of layer 1 and bias 0.5 make it gelu(0.5) always."""
    loaded = load(toy_model_dir, "gpt2")
    mlp = loaded.model.transformer.h[1].mlp
    with torch.no_grad():
        mlp.c_fc.weight[:, 7] = 0.0
        mlp.c_fc.bias[7] = 0.5
    stats = statistics_of(loaded)
    constant = ACT2FN[loaded.model.config.activation_function](torch.tensor(0.5)).item()
    assert stats.layer(1)["min"][7] == stats.layer(1)["max"][7] == stats.mean(1)[7] == constant
    runner = runner_for(loaded, stats)
    base = runner.baseline().ppl
    assert runner.perplexity({1: [7]}, "mean").ppl == base
    assert runner.perplexity({1: [7]}, "zero").ppl != base  # gelu(0.5) != 0: zeroing matters


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablating_every_neuron_of_a_layer_changes_perplexity(toy_model_dir, mode):
    loaded = load(toy_model_dir, "gpt2")
    stats = statistics_of(loaded)
    runner = runner_for(loaded, stats)
    base = runner.baseline().ppl
    ablated_ppl = runner.perplexity({0: range(loaded.adapter.neuron_width(0))}, mode).ppl
    assert abs(ablated_ppl - base) / base > 1e-3


# --------------------------------------------------------------------------------------------
# Random controls and z-scores


def test_random_controls_are_seeded_reproducible_and_differ_between_seeds():
    condition = {0: (1, 2, 3), 1: (4,), 2: (0, 5)}
    widths = {0: 128, 1: 128, 2: 6}
    controls = [random_control(condition, widths, seed) for seed in range(5)]
    assert controls == [random_control(condition, widths, seed) for seed in range(5)]
    assert len({tuple(sorted(c.items())) for c in controls}) == 5
    for control in controls:
        assert {layer: len(idx) for layer, idx in control.items()} == {0: 3, 1: 1, 2: 2}
        assert all(len(set(idx)) == len(idx) and max(idx) < widths[layer] for layer, idx in control.items())
    rng = np.random.default_rng(3)  # the documented recipe: one Generator per seed, layers in order
    expected = {layer: tuple(sorted(rng.choice(widths[layer], size=k, replace=False).tolist()))
                for layer, k in [(0, 3), (1, 1), (2, 2)]}
    assert controls[3] == expected


def test_z_score_conventions():
    assert z_score(3.0, 1.0, 0.5) == 4.0
    assert z_score(2.0, 1.0, 0.0) == math.inf and z_score(0.5, 1.0, 0.0) == -math.inf
    assert math.isnan(z_score(1.0, 1.0, 0.0))
    summary = summarize_controls(10.0, (0, 1, 2), [1.0, 2.0, 4.0])
    assert summary.std == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    assert summary.z == pytest.approx((10.0 - 7 / 3) / statistics.stdev([1.0, 2.0, 4.0]))
    assert resolve_seeds(5) == (0, 1, 2, 3, 4) and resolve_seeds([7, 7, 9]) == (7, 9)
    assert resolve_seeds(0) == () and resolve_seeds([]) == ()
    for bad in (1, -1, [3], [-2, 4], True):
        with pytest.raises(ConfigError, match="seeds"):
            resolve_seeds(bad)


def test_runner_result_uses_its_controls(toy_model_dir):
    loaded = load(toy_model_dir, "gpt2")
    runner = runner_for(loaded, seeds=3)
    condition = Condition("chosen", {0: [1, 2, 3, 4], 1: [9]})
    result = runner.run(condition)
    widths = {0: 128, 1: 128}
    ppls = [runner.perplexity(random_control(condition.neurons, widths, s)).ppl for s in range(3)]
    base = runner.baseline().ppl
    assert result.controls.ppls == tuple(ppls)
    assert result.controls.mean == pytest.approx(statistics.mean(ppls), rel=1e-12)
    assert result.controls.std == pytest.approx(statistics.stdev(ppls), rel=1e-9)
    z = (result.ppl - statistics.mean(ppls)) / statistics.stdev(ppls)
    assert result.controls.z == pytest.approx(z, rel=1e-9)
    assert result.delta == pytest.approx(result.ppl - base)
    assert result.delta_rel == pytest.approx((result.ppl - base) / base)
    record = result.to_record()
    json.dumps(record)
    assert record["n_neurons_per_layer"] == {"0": 4, "1": 1} and record["n_neurons"] == 5
    assert (record["analysis_split"], record["eval_split"]) == ("train", "test")
    assert record["seeds"] == [0, 1, 2] and record["window"] == WINDOW and record["stride"] == STRIDE
    assert record["tokens_scored"] == runner.baseline().n_tokens
    for key in ("ppl", "baseline_ppl", "ppl_delta", "ppl_delta_rel", "control_ppl_mean",
                "control_ppl_std", "z"):
        assert isinstance(record[key], float), key


def test_runner_evaluates_each_distinct_set_once(toy_model_dir):
    loaded = load(toy_model_dir, "gpt2")
    runner = runner_for(loaded, seeds=2)
    forwards = []
    loaded.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    per_evaluation = -(-runner.evaluation.windows.n_windows // runner.batch_size)
    conditions = [Condition("a", {0: [1, 2]}), Condition("b", {0: [2, 1]}),
                  Condition("c", {0: [3, 4]}), Condition("nothing", {})]
    results = runner.run_all(conditions)
    runner.baseline()
    # baseline, {1,2}, two controls (shared by a, b, c: same counts), {3,4}; empty set = baseline
    assert runner.evaluations == 5 and len(forwards) == 5 * per_evaluation
    assert results[0].ppl == results[1].ppl and results[3].ppl == results[3].baseline_ppl
    records = [result.to_record() for result in results]
    assert [r["controls_shared_with"] for r in records] == [[], ["a"], ["a", "b"], []]
    assert [r["control_evaluations_run"] for r in records] == [2, 0, 0, 0]  # the empty set's are the baseline
    assert len({r["controls_key"] for r in records[:3]}) == 1 and records[3]["controls_key"] != records[0]["controls_key"]
    wider = runner.run(Condition("d", {0: [1, 2, 3]}))  # other counts: other controls
    assert wider.to_record()["controls_shared_with"] == [] and wider.to_record()["control_evaluations_run"] == 2


def test_no_seeds_evaluate_each_condition_alone_without_controls(toy_model_dir):
    loaded = load(toy_model_dir, "gpt2")
    runner = runner_for(loaded, seeds=0)
    with_controls = runner_for(loaded, seeds=2)
    condition = Condition("chosen", {0: [1, 2, 3]})
    record = runner.run(condition).to_record()
    assert runner.evaluations == 2  # the baseline and the condition
    assert record["ppl"] == with_controls.run(condition).ppl and with_controls.evaluations == 4
    assert record["control_ppls"] == [] and record["seeds"] == [] and record["control"] == "none"
    assert all(math.isnan(record[key]) for key in ("control_ppl_mean", "control_ppl_std", "z"))
    assert record["control_evaluations_run"] == 0


def test_neurons_ablated_alone_are_each_one_evaluation_against_the_baseline(toy_model_dir):
    loaded = load(toy_model_dir, "gpt2")
    runner = runner_for(loaded, seeds=2)
    effects = runner.alone([(0, 1), (1, 5)])
    base = runner.baseline().ppl
    assert runner.evaluations == 3  # the baseline and one pass per neuron
    for (layer, neuron), effect in effects.items():
        assert effect == runner.perplexity({layer: [neuron]}).ppl / base - 1
    assert effects[(0, 1)] != effects[(1, 5)]


# --------------------------------------------------------------------------------------------
# Conditions and pruning


def synthetic_stats(sum_sq: list[float], n_tokens: int = 4) -> ActivationStatistics:
    arrays = {"sum_sq": np.asarray(sum_sq, dtype=np.float64), "sum": np.zeros(len(sum_sq))}
    return ActivationStatistics(layers={0: arrays}, n_tokens=n_tokens, n_windows=1, window=4,
                                threshold=0.0, activation="positive", sweep=(), token_ids=None, token_occurrences=None,
                                excluded_token_ids=())


def test_pruning_order_dead_then_positional_then_lowest_rms():
    stats = synthetic_stats([9.0, 4.0, 1.0, 0.0, 16.0, 25.0, 36.0, 1.0])
    order = pruning_order(stats, 0, dead=[6, 5], positional=[4, 1])
    # dead by RMS (5: 2.5, 6: 3), positional by RMS (1: 1, 4: 2), rest by RMS, ties by index
    assert order.tolist() == [5, 6, 1, 4, 3, 2, 7, 0]
    assert pruning_set(stats, 0.5, {0: [6, 5]}, {0: [4, 1]}) == {0: (1, 4, 5, 6)}
    assert pruning_set(stats, 0.3, {0: [6, 5]}) == {0: (5, 6)}  # floor(2.4 + 0.5) = 2
    assert pruning_set(synthetic_stats([1.0] * 5), 0.5) == {0: (0, 1, 2)}  # floor(2.5 + 0.5) = 3


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, True, "0.5"])
def test_pruning_ratio_outside_open_interval_is_a_config_error(ratio):
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        pruning_set(synthetic_stats([1.0, 2.0]), ratio)


def test_standard_conditions():
    types = {"dead": {0: [1]}, "positional": {0: [2], 1: [0]}, "attention": {0: [3]}}
    conditions = standard_conditions(types, modes=("zero", "mean"), units={"attention": "head"},
                                     pruning={1: [5]})
    names = [(c.name, c.mode, c.unit) for c in conditions]
    assert names == [("dead", "zero", "neuron"), ("positional", "zero", "neuron"),
                     ("attention", "zero", "head"), ("dead+positional", "zero", "neuron"),
                     ("pruning", "zero", "neuron"), ("dead", "mean", "neuron"),
                     ("positional", "mean", "neuron"), ("dead+positional", "mean", "neuron"),
                     ("pruning", "mean", "neuron")]
    assert conditions[3].neurons == union(types["dead"], types["positional"]) == {0: (1, 2), 1: (0,)}
    assert [c.name for c in standard_conditions({"dead": {0: [1]}})] == ["dead"]


def test_standard_conditions_keep_mean_ablation_of_mamba_channels(toy_model_dir):
    mamba = load(toy_model_dir, "mamba")
    conditions = standard_conditions({"attention": {0: [3]}}, modes=("zero", "mean"),
                                     units={"attention": "head"}, adapter=mamba.adapter)
    assert [(c.mode, c.unit) for c in conditions] == [("zero", "head"), ("mean", "head")]
    stats = statistics_of(mamba, max_tokens=64)
    runner = runner_for(mamba, stats, seeds=2)
    mean_head = runner.perplexity({0: [3]}, "mean", "head")
    assert mean_head is runner.perplexity({0: [3]}, "mean", "neuron")  # one cached evaluation


def test_identical_controls_give_zero_std_and_no_spurious_z():
    from neuronbench.ablation.controls import summarize_controls

    value = 110.45475819910395  # a float whose 5-fold numpy mean is off by one ulp
    summary = summarize_controls(value, range(5), [value] * 5)
    assert summary.std == 0.0 and summary.mean == value
    assert math.isnan(summary.z)
    assert summarize_controls(value + 1, range(5), [value] * 5).z == math.inf
