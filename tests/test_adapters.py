"""Adapters read the right tensors: each captured activation equals a manual recomputation from
the weights, hooks leave logits bit-identical, ablation hooks equal weight edits."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from neuronbench.adapters import adapter_for
from neuronbench.adapters.attention_impl import attention_implementation, eager_attention
from neuronbench.errors import AnalysisUnavailableError, LayerRangeError, UnsupportedArchitectureError
from neuronbench.models import load_model
from neuronbench.names import ATTN_HEADS, ATTN_PATTERN, NEURONS, SSM_B, SSM_C, SSM_DELTA, SSM_X, SSM_Z, act_name

FAMILIES = ("gpt2", "opt", "llama", "gpt_neox", "mamba")


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def gelu_exact(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def mlp_neurons_by_hand(family: str, block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The MLP's hidden activation recomputed from its weights and its input ``x``."""
    if family == "gpt2":
        return gelu_new(x @ block.mlp.c_fc.weight + block.mlp.c_fc.bias)
    if family == "opt":
        return torch.relu(x @ block.fc1.weight.T + block.fc1.bias)
    if family == "llama":
        return F.silu(x @ block.mlp.gate_proj.weight.T) * (x @ block.mlp.up_proj.weight.T)
    if family == "gpt_neox":
        return gelu_exact(x @ block.mlp.dense_h_to_4h.weight.T + block.mlp.dense_h_to_4h.bias)
    raise AssertionError(family)


def mlp_input_module(family: str, block: torch.nn.Module) -> torch.nn.Module:
    return {"gpt2": lambda: block.mlp, "opt": lambda: block.fc1, "llama": lambda: block.mlp,
            "gpt_neox": lambda: block.mlp}[family]()


def mamba_by_hand(mixer: torch.nn.Module, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mamba mixer internals from its weights: conv, x_proj, Δ, the sequential scan, the gate."""
    width, rank, state = mixer.intermediate_size, mixer.time_step_rank, mixer.ssm_state_size
    projected = hidden @ mixer.in_proj.weight.T
    x_pre, z = projected[..., :width], projected[..., width:]
    kernel = mixer.conv1d.weight.shape[-1]
    conv = F.conv1d(F.pad(x_pre.transpose(1, 2), (kernel - 1, 0)), mixer.conv1d.weight, mixer.conv1d.bias,
                    groups=width)
    x = F.silu(conv).transpose(1, 2)
    dt, b, c = torch.split(x @ mixer.x_proj.weight.T, [rank, state, state], dim=-1)
    delta = F.softplus(dt @ mixer.dt_proj.weight.T + mixer.dt_proj.bias)
    a_matrix = -torch.exp(mixer.A_log)
    h = torch.zeros(x.shape[0], width, state)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(delta[:, t, :, None] * a_matrix) * h + delta[:, t, :, None] * b[:, t, None, :] * x[:, t, :, None]
        ys.append((h * c[:, t, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    neurons = (y + mixer.D * x) * F.silu(z)
    return {SSM_X: x, SSM_DELTA: delta, SSM_B: b, SSM_C: c, SSM_Z: z, NEURONS: neurons}


def capture(loaded, layer: int, kinds, input_ids) -> dict[str, torch.Tensor]:
    store: dict[str, torch.Tensor] = {}
    handles = loaded.adapter.register_capture(layer, kinds, lambda name, t: store.__setitem__(name, t.clone()))
    with torch.no_grad():
        loaded.model(input_ids=input_ids, **loaded.adapter.forward_kwargs(kinds))
    for handle in handles:
        handle.remove()
    return store


def input_to(module: torch.nn.Module, model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    seen = {}
    handle = module.register_forward_pre_hook(lambda _m, args, kwargs=None: seen.setdefault("x", args[0] if args else None))
    with torch.no_grad():
        model(input_ids=input_ids)
    handle.remove()
    return seen["x"]


@pytest.fixture(params=FAMILIES)
def loaded(request, toy_model_dir):
    return load_model(str(toy_model_dir(request.param)), device="cpu", dtype="float32")


@pytest.fixture
def input_ids(loaded) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(1, loaded.model.config.vocab_size, (2, 24), generator=generator)


def test_neurons_equal_manual_recomputation(loaded, input_ids):
    for layer in range(loaded.adapter.num_layers):
        got = capture(loaded, layer, [NEURONS], input_ids)[act_name(layer, NEURONS)]
        block = loaded.adapter.blocks()[layer]
        if loaded.family == "mamba":
            hidden = input_to(block.mixer, loaded.model, input_ids)
            expected = mamba_by_hand(block.mixer, hidden)[NEURONS]
        else:
            x = input_to(mlp_input_module(loaded.family, block), loaded.model, input_ids)
            expected = mlp_neurons_by_hand(loaded.family, block, x).reshape(got.shape)
        assert got.shape == (*input_ids.shape, loaded.adapter.neuron_width(layer))
        assert (got - expected).abs().max().item() <= 1e-5


def test_mamba_ssm_internals_equal_manual_recomputation(toy_model_dir):
    loaded = load_model(str(toy_model_dir("mamba")), device="cpu", dtype="float32")
    input_ids = torch.randint(1, 300, (2, 20), generator=torch.Generator().manual_seed(2))
    kinds = [SSM_X, SSM_DELTA, SSM_B, SSM_C, SSM_Z]
    for layer in range(loaded.adapter.num_layers):
        got = capture(loaded, layer, kinds, input_ids)
        mixer = loaded.adapter.mixer(layer)
        expected = mamba_by_hand(mixer, input_to(mixer, loaded.model, input_ids))
        for kind in kinds:
            assert (got[act_name(layer, kind)] - expected[kind]).abs().max().item() <= 1e-5, kind
        assert (got[act_name(layer, SSM_DELTA)] > 0).all()


def test_capture_hooks_leave_logits_bit_identical(loaded, input_ids):
    kinds = loaded.adapter.available_kinds(0)
    reads_pattern = ATTN_PATTERN in kinds  # then the hooks run eager attention: compare with eager
    with torch.no_grad(), eager_attention(loaded.model) if reads_pattern else nullcontext():
        plain = loaded.model(input_ids=input_ids).logits
    handles = [h for layer in range(loaded.adapter.num_layers)
               for h in loaded.adapter.register_capture(layer, kinds, lambda name, t: None)]
    with torch.no_grad():
        hooked = loaded.model(input_ids=input_ids, **loaded.adapter.forward_kwargs(kinds)).logits
    for handle in handles:
        handle.remove()
    assert torch.equal(plain, hooked)


def test_zero_ablation_hook_equals_zeroing_the_weight_column(loaded, input_ids):
    layer, neuron = loaded.adapter.num_layers - 1, 3
    handle = loaded.adapter.register_neuron_edit(layer, lambda a: a.index_fill(-1, torch.tensor([neuron]), 0.0))
    with torch.no_grad():
        ablated = loaded.model(input_ids=input_ids).logits
    handle.remove()
    projection = loaded.adapter.neuron_module(layer)
    with torch.no_grad():
        original = projection.weight.clone()
        if type(projection).__name__ == "Conv1D":
            projection.weight[neuron, :] = 0.0
        else:
            projection.weight[:, neuron] = 0.0
        edited = loaded.model(input_ids=input_ids).logits
        projection.weight.copy_(original)
        restored = loaded.model(input_ids=input_ids).logits
        plain_again = loaded.model(input_ids=input_ids).logits
    assert (ablated - edited).abs().max().item() <= 1e-5
    assert (ablated - restored).abs().max().item() > 1e-6
    assert torch.equal(restored, plain_again)


@pytest.mark.parametrize("family", ["gpt2", "opt", "llama", "gpt_neox"])
def test_attention_pattern_equals_output_attentions(toy_model_dir, family):
    loaded = load_model(str(toy_model_dir(family)), device="cpu", dtype="float32")
    input_ids = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), eager_attention(loaded.model):
        reference = loaded.model(input_ids=input_ids, output_attentions=True).attentions
    for layer in range(loaded.adapter.num_layers):
        got = capture(loaded, layer, [ATTN_PATTERN, ATTN_HEADS], input_ids)
        pattern = got[act_name(layer, ATTN_PATTERN)]
        assert torch.equal(pattern, reference[layer])
        assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5)
        heads = got[act_name(layer, ATTN_HEADS)]
        assert heads.shape[2] == loaded.adapter.num_heads


@pytest.mark.parametrize("family", ["gpt2", "opt", "llama", "gpt_neox"])
def test_default_attention_agrees_with_eager_which_only_pattern_reads_switch_on(toy_model_dir, family):
    loaded = load_model(str(toy_model_dir(family)), device="cpu", dtype="float32")
    model, default = loaded.model, attention_implementation(loaded.model)
    assert default != "eager"  # the library's default (sdpa), not the materialised attention
    input_ids = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(input_ids)
    mask[1, 11:] = 0
    with torch.no_grad():
        fast = model(input_ids=input_ids, attention_mask=mask).logits
        with eager_attention(model):
            assert attention_implementation(model) == "eager"
            eager = model(input_ids=input_ids, attention_mask=mask).logits
    assert attention_implementation(model) == default
    real = mask.bool()
    assert (fast[real] - eager[real]).abs().max().item() <= 1e-5
    neurons_only = loaded.adapter.register_capture(0, [NEURONS], lambda n, t: None)
    assert attention_implementation(model) == default
    pattern = [h for layer in (0, 1) for h in loaded.adapter.register_capture(layer, [ATTN_PATTERN], lambda n, t: None)]
    assert attention_implementation(model) == "eager"
    pattern[0].remove()
    pattern[0].remove()  # removing twice releases once
    assert attention_implementation(model) == "eager"  # layer 1 still reads probabilities
    for handle in [*pattern, *neurons_only]:
        handle.remove()
    assert attention_implementation(model) == default


def test_head_edit_zeroes_one_head(toy_model_dir):
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    input_ids = torch.randint(1, 300, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain = loaded.model(input_ids=input_ids).logits
    handle = loaded.adapter.register_head_edit(0, lambda h: h.index_fill(2, torch.tensor([1]), 0.0))
    seen = capture(loaded, 0, [ATTN_HEADS], input_ids)
    with torch.no_grad():
        ablated = loaded.model(input_ids=input_ids).logits
    handle.remove()
    assert not torch.allclose(plain, ablated)
    assert seen[act_name(0, ATTN_HEADS)].shape[2] == 4


def test_layer_out_of_range_names_valid_range(toy_model_dir):
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    with pytest.raises(LayerRangeError, match=r"0\.\.1"):
        loaded.adapter.register_capture(2, [NEURONS], lambda n, t: None)
    with pytest.raises(LayerRangeError, match=r"0\.\.1"):
        loaded.adapter.neuron_width(-1)


def test_delta_of_a_transformer_is_unavailable(toy_model_dir):
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    with pytest.raises(AnalysisUnavailableError, match="ssm.delta"):
        loaded.adapter.register_capture(0, [SSM_DELTA], lambda n, t: None)


def test_unsupported_model_type_lists_supported(toy_model_dir):
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    loaded.model.config.model_type = "bert"
    with pytest.raises(UnsupportedArchitectureError, match="gpt2.*mamba"):
        adapter_for(loaded.model)
