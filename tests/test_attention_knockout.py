"""Attention knockout against references: nothing knocked out is the unablated model bit for bit;
every earlier source of a Mamba layer knocked out is a hand-computed scan with only its diagonal;
knocked-out heads equal masking the ``output_attentions`` probabilities in a reference loop."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from neuronbench.ablation.knockout import KnockoutRunner
from neuronbench.adapters.attention_impl import eager_attention
from neuronbench.attention.knockout import Knockout, knocked_out, parse_knockout, random_knockout
from neuronbench.attention import capture_ssm
from neuronbench.errors import ConfigError
from test_attention_models import gpt2_values, load, random_ids


def nothing(layers) -> Knockout:
    return Knockout("nothing", tuple(layers), lambda length: torch.zeros(length, length, dtype=torch.bool))


def logits(loaded, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(input_ids=ids, use_cache=False, **kwargs).logits


@pytest.mark.parametrize("family", ["mamba", "gpt2", "llama"])
def test_knocking_out_nothing_is_the_unablated_model_exactly(toy_model_dir, family):
    loaded = load(toy_model_dir(family))
    ids = random_ids(2, 12, seed=1)
    same_attention = (lambda: nullcontext()) if family == "mamba" else (lambda: eager_attention(loaded.model))
    with same_attention():  # a knockout of heads runs eager attention (it needs the probabilities)
        plain = logits(loaded, ids)
    with knocked_out(loaded.adapter, nothing(range(loaded.adapter.num_layers))):
        assert torch.equal(logits(loaded, ids), plain)
    with knocked_out(loaded.adapter, parse_knockout("last<-earlier", [1])):
        changed = logits(loaded, ids)
    assert torch.equal(changed[:, :-1], plain[:, :-1]) and not torch.allclose(changed[:, -1], plain[:, -1])
    with same_attention():
        assert torch.equal(logits(loaded, ids), plain)  # restored on exit


def test_every_earlier_source_of_a_mamba_layer_is_the_diagonal_scan(toy_model_dir):
    loaded = load(toy_model_dir("mamba", residual_in_fp32=False), double=True)
    ids, layer = random_ids(1, 10, seed=2), 1
    s = capture_ssm(loaded.model, loaded.adapter, ids, [layer])[layer]
    delta, b, c, x = s.delta[0].double(), s.b[0].double(), s.c[0].double(), s.x[0].double()
    diagonal = (c * b).sum(-1, keepdim=True) * delta * x  # α_ii x_i = (C_i · B_i) Δ_i x_i
    by_hand = (diagonal + s.d.double() * x) * F.silu(s.z[0].double())
    handle = loaded.adapter.register_neuron_edit(layer, lambda neurons: by_hand.to(neurons.dtype)[None])
    expected = logits(loaded, ids)
    handle.remove()
    with knocked_out(loaded.adapter, parse_knockout("all<-earlier", [layer])):
        got = logits(loaded, ids)
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-5
    assert not torch.allclose(got, logits(loaded, ids), atol=1e-4)


def test_knocked_out_heads_equal_masked_output_attentions_in_a_reference_loop(toy_model_dir):
    loaded = load(toy_model_dir("gpt2"))
    ids, layer, length = random_ids(1, 9, seed=3), 1, 9
    knockout = parse_knockout("all<-first:3", [layer])
    mask = knockout.mask(length)
    with torch.no_grad(), eager_attention(loaded.model):
        probs = loaded.model(input_ids=ids, output_attentions=True).attentions[layer][0].double()
    values = gpt2_values(loaded, layer, ids)
    heads = torch.zeros(length, probs.shape[0], values.shape[-1], dtype=torch.float64)
    for h in range(probs.shape[0]):
        for i in range(length):
            for j in range(i + 1):
                if not mask[i, j]:
                    heads[i, h] += probs[h, i, j] * values[h, j]
    handle = loaded.adapter.register_head_edit(layer, lambda t: heads.to(t.dtype)[None])
    with eager_attention(loaded.model):
        expected = logits(loaded, ids)
    handle.remove()
    with knocked_out(loaded.adapter, knockout):
        got = loaded.model(input_ids=ids, output_attentions=True)
    assert torch.allclose(got.logits, expected, rtol=1e-5, atol=1e-5)
    masked = probs.masked_fill(mask, 0.0)
    assert torch.allclose(got.attentions[layer][0].double(), masked, atol=1e-7)


def test_grouped_query_heads_see_the_masked_probabilities(toy_model_dir):
    loaded = load(toy_model_dir("llama"))  # 4 heads, 2 key/value heads
    ids = random_ids(1, 8, seed=4)
    with torch.no_grad(), eager_attention(loaded.model):
        plain = loaded.model(input_ids=ids, output_attentions=True).attentions[0][0]
    knockout = parse_knockout("last<-previous:2", [0])
    with knocked_out(loaded.adapter, knockout), torch.no_grad():
        knocked = loaded.model(input_ids=ids, output_attentions=True).attentions[0][0]
    assert torch.equal(knocked, plain.masked_fill(knockout.mask(8), 0.0))


def test_patterns_and_random_knockouts_of_the_same_size():
    assert parse_knockout("last<-previous:2", [0]).mask(5).int().tolist()[-1] == [0, 0, 1, 1, 0]
    first = parse_knockout("all<-first:2", [0]).mask(4).int().tolist()
    assert first == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert parse_knockout("all<-earlier", [0]).mask(3).sum() == 3
    pattern = parse_knockout("all<-first:3", [0, 1])
    for seed in (0, 1):
        drawn = random_knockout(pattern, seed).mask(12)
        assert drawn.sum(-1).tolist() == pattern.mask(12).sum(-1).tolist()
        assert torch.equal(drawn, random_knockout(pattern, seed).mask(12))
    assert not torch.equal(random_knockout(pattern, 0).mask(12), random_knockout(pattern, 1).mask(12))


@pytest.mark.parametrize("spec", ["last", "first<-earlier", "all<-first", "all<-first:0", "all<-earlier:2",
                                  "last<-nearby:3"])
def test_bad_specs_raise(spec):
    with pytest.raises(ConfigError, match="knockout"):
        parse_knockout(spec, [0])


def test_bad_masks_and_models_raise(toy_model_dir):
    upper = Knockout("upper", (0,), lambda length: torch.ones(length, length, dtype=torch.bool))
    with pytest.raises(ConfigError, match="below"):
        upper.mask(3)
    loaded = load(toy_model_dir("gpt2"))
    with pytest.raises(Exception, match="out of range"):
        with knocked_out(loaded.adapter, parse_knockout("last<-earlier", [7])):
            pass


# -- the knockout condition: perplexity and next-token probability against random knockouts -------
def test_knockout_runner_against_hand_computed_metrics(toy_model_dir):
    loaded = load(toy_model_dir("gpt2"))
    sequences = random_ids(3, 9, seed=6)
    runner = KnockoutRunner(loaded.model, loaded.adapter, sequences, seeds=3, batch_size=2)
    knockout = parse_knockout("last<-previous:3", [0, 1])
    result = runner.run(knockout)

    def hand(active) -> tuple[float, float]:
        with knocked_out(loaded.adapter, active) if active else nullcontext():
            logp = torch.log_softmax(logits(loaded, sequences[:, :-1]).double(), -1)
        nll = -logp.gather(-1, sequences[:, 1:, None])[..., 0]
        return math.exp(nll.mean().item()), torch.exp(-nll[:, -1]).mean().item()

    ppl, prob = hand(knockout)
    base_ppl, base_prob = hand(None)
    controls = [hand(random_knockout(knockout, seed)) for seed in range(3)]
    record = result.to_record()
    assert record["ppl"] == pytest.approx(ppl, rel=1e-6) and record["target_prob"] == pytest.approx(prob, rel=1e-6)
    assert record["baseline_ppl"] == pytest.approx(base_ppl, rel=1e-6)
    assert record["baseline_target_prob"] == pytest.approx(base_prob, rel=1e-6)
    assert record["control_ppls"] == pytest.approx([c[0] for c in controls], rel=1e-6)
    assert record["control_target_probs"] == pytest.approx([c[1] for c in controls], rel=1e-6)
    assert record["pairs_per_window"] == 3 and record["n_targets"] == 3 and record["tokens_scored"] == 24
    assert record["target_prob"] != record["baseline_target_prob"]


def test_a_knockout_whose_random_controls_are_itself_has_no_spread(toy_model_dir):
    loaded = load(toy_model_dir("mamba"))
    runner = KnockoutRunner(loaded.model, loaded.adapter, random_ids(2, 7, seed=7), seeds=2)
    record = runner.run(parse_knockout("last<-earlier", [0])).to_record()
    assert record["control_ppl_std"] == 0.0 and record["control_ppl_mean"] == record["ppl"]
    assert math.isnan(record["z"]) and math.isnan(record["z_target_prob"])
    with pytest.raises(ConfigError, match="removes nothing"):
        runner.run(Knockout("none", (0,), lambda length: torch.zeros(length, length, dtype=torch.bool)))
    with pytest.raises(ConfigError, match="knockout windows"):
        KnockoutRunner(loaded.model, loaded.adapter, torch.zeros(0, 5, dtype=torch.long))
