"""Hidden attention and attention-unit scores on real (tiny, random) models: the attention
reproduces the model's own forward pass, the scores equal brute-force recomputations and finite
differences, ablation acts on the right tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from neuronbench.adapters.attention_impl import eager_attention
from neuronbench.attention import (AttentionConfig, AttentionUnit, attention_figure_data, attention_unit_scores,
                                   capture_ssm, head_attention, iter_hidden_attention, layer_hidden_attention,
                                   mix, relevant_tokens, rollout)
from neuronbench.attention.ablation import ablated_attention_units
from neuronbench.attention.forward import unit_pass
from neuronbench.attention.scores import row_normalized
from neuronbench.attention.heads import TransformerHeads
from neuronbench.attention.hidden import block_bytes, plan_chunks
from neuronbench.data import TokenWindows
from neuronbench.errors import AnalysisUnavailableError, CaptureError, ConfigError
from neuronbench.models import load_model, resolve_model
from neuronbench.names import ATTN_HEADS, act_name
from test_attention_hidden import naive_alpha, scan



def float64_rms_norm(norm: torch.nn.Module):
    def forward(hidden: torch.Tensor) -> torch.Tensor:
        return norm.weight * hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)

    return forward


def load(directory, double: bool = False):
    """A toy model; with ``double`` entirely float64 (Mamba's RMSNorm rounds to float32 by design,
    which would drown the finite differences: it is replaced by the same formula in float64)."""
    loaded = load_model(str(directory), device="cpu", dtype="float32")
    if double:
        loaded.model.double()
        for module in loaded.model.modules():
            if type(module).__name__ == "MambaRMSNorm":
                module.forward = float64_rms_norm(module)
    return loaded


def random_ids(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 300, (n, length), generator=torch.Generator().manual_seed(seed))


def windows_of(ids: torch.Tensor, lengths: list[int] | None = None) -> TokenWindows:
    mask = torch.ones_like(ids)
    for row, length in enumerate(lengths or []):
        mask[row, length:] = 0
    return TokenWindows(ids, mask, int(mask.sum()))


def scan_output(ssm, row: int = 0) -> torch.Tensor:
    """``y`` by the sequential selective scan, straight from the captured ``Δ, B, C, x``."""
    return scan(ssm.delta[row], ssm.b[row], ssm.c[row], ssm.a, ssm.x[row])


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


# -- reconstruction -----------------------------------------------------------------------------
@pytest.mark.parametrize("length, overrides", [(1024, {}), (48, {"state_size": 16, "seed": 3})])
def test_hidden_attention_reproduces_the_models_own_neurons(toy_model_dir, length, overrides):
    """``(Σ_j α_ij x_j + D x_i) ⊙ silu(z_i)`` equals the neurons captured from the model's forward."""
    loaded = load(toy_model_dir("mamba", **overrides))
    layers = list(range(loaded.adapter.num_layers))
    ssm = capture_ssm(loaded.model, loaded.adapter, random_ids(1, length), layers)
    for layer in layers:
        s = ssm[layer]
        y = torch.zeros(length, s.x.shape[-1])
        for block in iter_hidden_attention(s.delta[0], s.b[0], s.c[0], s.a, memory_budget_bytes=64 * 2**20):
            y[block.query_start : block.query_stop, block.channels] = mix(block, s.x[0]).T
        rebuilt = (y + s.d * s.x[0]) * F.silu(s.z[0])
        assert relative_error(rebuilt, s.neurons[0]) <= 1e-4, layer


def test_builtin_tiny_mamba_reconstruction():
    location = Path(resolve_model("tiny-mamba").location)
    if not (location / "config.json").is_file():
        pytest.skip(f"the built-in tiny-mamba is not shipped yet ({location} has no config.json)")
    loaded = load(location)
    ids = random_ids(1, 64)
    for layer, s in capture_ssm(loaded.model, loaded.adapter, ids, range(loaded.adapter.num_layers)).items():
        rebuilt = (torch.einsum("dij,jd->id", s.hidden_attention(0), s.x[0]) + s.d * s.x[0]) * F.silu(s.z[0])
        assert relative_error(rebuilt, s.neurons[0]) <= 1e-4, layer


def test_layer_hidden_attention_equals_the_scan(toy_model_dir):
    loaded = load(toy_model_dir("mamba"))
    ids = random_ids(1, 20)
    alpha = layer_hidden_attention(loaded.model, loaded.adapter, ids[0], 1, channels=[3, 7])
    ssm = capture_ssm(loaded.model, loaded.adapter, ids, [1])[1]
    y = torch.einsum("dij,jd->id", alpha, ssm.x[0][:, [3, 7]])
    assert relative_error(y, scan_output(ssm)[:, [3, 7]]) <= 1e-5


def test_no_hidden_attention_without_ssm_layers(toy_model_dir):
    loaded = load(toy_model_dir("gpt2"))
    with pytest.raises(AnalysisUnavailableError, match="SSM"):
        layer_hidden_attention(loaded.model, loaded.adapter, random_ids(1, 8)[0], 0)
    with pytest.raises(AnalysisUnavailableError, match="SSM"):
        capture_ssm(loaded.model, loaded.adapter, random_ids(1, 8), [0])
    mamba = load(toy_model_dir("mamba"))
    with pytest.raises(AnalysisUnavailableError, match="heads"):
        head_attention(mamba.model, mamba.adapter, random_ids(1, 8), 0)


# -- transformer heads ---------------------------------------------------------------------------
def test_gpt2_head_attention_is_the_models_output_attentions(toy_model_dir):
    loaded = load(toy_model_dir("gpt2"))
    ids = random_ids(2, 12)
    windows = windows_of(ids, [12, 9])
    with torch.no_grad(), eager_attention(loaded.model):
        reference = loaded.model(input_ids=ids, attention_mask=windows.attention_mask,
                                 output_attentions=True).attentions
    seen = unit_pass(loaded.model, loaded.adapter, [0, 1], TransformerHeads.kinds, ids, windows.attention_mask)
    for layer in (0, 1):
        assert torch.equal(head_attention(loaded.model, loaded.adapter, ids, layer, windows.attention_mask),
                           reference[layer])
        for row, length in enumerate((12, 9)):
            window = TransformerHeads().window(loaded.adapter, layer, seen, row, length, 2**20)
            (block,) = list(window.blocks)
            assert torch.equal(block.alpha, reference[layer][row, :, :length, :length])


def residual_writes(loaded, ids: torch.Tensor, modules: dict) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer: (output, ∂L/∂output)}`` of the module whose output the layer adds to the residual
    stream (so ``∂L/∂output = ∂L/∂r``), ``L`` the summed next-token loss, by plain autograd."""
    seen = {}

    def keep(layer):
        def hook(_module, _inputs, output):
            output.retain_grad()
            seen[layer] = output
        return hook

    handles = [module.register_forward_hook(keep(layer)) for layer, module in modules.items()]
    handles.append(loaded.model.get_input_embeddings().register_forward_hook(
        lambda _m, _i, out: out.detach().requires_grad_(True)))
    with torch.enable_grad():
        logits = loaded.model(input_ids=ids, use_cache=False).logits
        F.cross_entropy(logits[0, :-1].double(), ids[0, 1:], reduction="sum").backward()
    for handle in handles:
        handle.remove()
    return {layer: (out.detach()[0], out.grad[0]) for layer, out in seen.items()}


def relevant_naive(relevance: list[float], mass: float) -> list[int]:
    order = sorted(range(len(relevance)), key=lambda j: (-relevance[j], j))
    chosen, total = [], 0.0
    for j in order:
        chosen.append(j)
        total += relevance[j]
        if total >= mass * sum(relevance) - 1e-12:
            break
    return chosen


def abnar_zuidema_rollout(layer_attentions: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema (2020) as written: ``A_l = 0.5·W_att + 0.5·I``, ``Ã_l = A_l · Ã_{l−1}``."""
    length = layer_attentions[0].shape[0]
    joint = torch.eye(length, dtype=torch.float64)
    for attention in layer_attentions:
        joint = (0.5 * attention + 0.5 * torch.eye(length, dtype=torch.float64)) @ joint
    return joint


def ali_rollout(layer_attentions: list[torch.Tensor]) -> torch.Tensor:
    """Ali, Zimerman & Wolf's ``compute_rollout_attention`` (released code, start_layer 0)."""
    eye = torch.eye(layer_attentions[0].shape[0], dtype=torch.float64)
    augmented = [attention + eye for attention in layer_attentions]
    normalised = [matrix / matrix.sum(dim=-1, keepdim=True) for matrix in augmented]
    joint = normalised[0]
    for matrix in normalised[1:]:
        joint = matrix @ joint
    return joint


def gpt2_values(loaded, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """``v [H, T, d_h]`` of a GPT-2 layer from its ``c_attn`` projection (the weights)."""
    attn = loaded.adapter.blocks()[layer].attn
    seen = {}
    handle = attn.c_attn.register_forward_hook(lambda _m, _i, out: seen.__setitem__("qkv", out.detach()))
    with torch.no_grad():
        loaded.model(input_ids=ids, use_cache=False)
    handle.remove()
    value = seen["qkv"][0].split(attn.embed_dim, dim=-1)[2]
    return value.unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(0, 1).double()


def test_head_scores_equal_brute_force(toy_model_dir):
    """Every head measure from ``output_attentions``, ``c_attn``'s values and ``W_O``, by loops."""
    loaded = load(toy_model_dir("gpt2"))
    n_layers, heads, mass = loaded.adapter.num_layers, loaded.adapter.num_heads, 0.5
    windows = [random_ids(1, length, seed=4 + length) for length in (10, 7)]
    scores = attention_unit_scores(loaded.model, loaded.adapter, TokenWindows(
        torch.cat([windows[0], F.pad(windows[1], (0, 3))]), torch.tensor([[1] * 10, [1] * 7 + [0] * 3]), 17),
        AttentionConfig(batch_size=2, rollout_mass=mass), progress=False)
    sums = {name: torch.zeros(n_layers, heads, dtype=torch.float64) for name in SCORE_NAMES}
    for ids in windows:
        length = ids.shape[1]
        with torch.no_grad(), eager_attention(loaded.model):
            probs = [p[0].double() for p in loaded.model(input_ids=ids, output_attentions=True).attentions]
        writes = residual_writes(loaded, ids, {l: loaded.adapter.attention_out_module(l) for l in range(n_layers)})
        final = abnar_zuidema_rollout([p.mean(0) for p in probs])[-1]
        relevant = relevant_naive(final.tolist(), mass)
        for layer in range(n_layers):
            values = gpt2_values(loaded, layer, ids)
            w_o = loaded.adapter.attention_out_module(layer).weight.double()  # Conv1D [in, out]
            width = w_o.shape[0] // heads
            grad = writes[layer][1].double()
            for h in range(heads):
                p = probs[layer][h]
                out = p @ values[h]  # o_i = Σ_j p_ij v_j
                contribution = out @ w_o[h * width:(h + 1) * width]
                sums["attention_weighted"][layer, h] += contribution.norm(dim=-1).sum()
                sums["gradient_guided"][layer, h] += (contribution * grad).sum(-1).abs().sum()
                sums["distance"][layer, h] += sum(p[i, j] * (i - j) for i in range(length) for j in range(i + 1))
                sums["entropy"][layer, h] += -torch.xlogy(p, p).sum()
                sums["rollout"][layer, h] += p[-1, relevant].sum()
    assert scores.unit == "head" and scores.n_tokens == 17 and scores.n_windows == 2
    check_scores(scores, sums, n_tokens=17, n_windows=2)


SCORE_NAMES = ("attention_weighted", "gradient_guided", "distance", "entropy", "rollout")


def check_scores(scores, sums: dict[str, torch.Tensor], n_tokens: int, n_windows: int) -> None:
    for name, total in sums.items():
        expected = total / (n_windows if name == "rollout" else n_tokens)
        for layer in range(expected.shape[0]):
            got = torch.from_numpy(scores.layers[layer][name])
            assert relative_error(got, expected[layer]) <= 1e-5, (name, layer)


def test_mamba_scores_equal_brute_force(toy_model_dir):
    """Every channel measure from the full α (naive loop over i, j, n), ``x``, ``D``, ``z`` and
    ``out_proj``, and the gradient of the loss at the residual stream by plain autograd."""
    loaded = load(toy_model_dir("mamba", residual_in_fp32=False), double=True)
    n_layers, mass, length = loaded.adapter.num_layers, 0.5, 9
    ids = random_ids(1, length, seed=11)
    scores = attention_unit_scores(loaded.model, loaded.adapter, windows_of(ids),
                                   AttentionConfig(rollout_mass=mass), progress=False)
    ssm = capture_ssm(loaded.model, loaded.adapter, ids, list(range(n_layers)))
    writes = residual_writes(loaded, ids, {l: loaded.adapter.neuron_module(l) for l in range(n_layers)})
    width = loaded.adapter.neuron_width(0)
    sums = {name: torch.zeros(n_layers, width, dtype=torch.float64) for name in SCORE_NAMES}
    alphas = []
    for layer in range(n_layers):
        s = ssm[layer]
        alpha = naive_alpha(s.delta[0].double(), s.b[0].double(), s.c[0].double(), s.a.double())  # [D, T, T]
        alphas.append(alpha)
        x, gate = s.x[0].double(), F.silu(s.z[0].double())
        unit = (torch.einsum("dij,jd->id", alpha, x) + s.d.double() * x) * gate  # [T, D]
        w_out = loaded.adapter.neuron_module(layer).weight.double()  # [d_model, D]
        grad = writes[layer][1].double()  # [T, d_model]
        for d in range(width):
            contribution = unit[:, d, None] * w_out[:, d]  # [T, d_model]
            sums["attention_weighted"][layer, d] = contribution.norm(dim=-1).sum()
            sums["gradient_guided"][layer, d] = (contribution * grad).sum(-1).abs().sum()
            p = alpha[d].abs() / alpha[d].abs().sum(-1, keepdim=True)
            sums["distance"][layer, d] = sum(p[i, j] * (i - j) for i in range(length) for j in range(i + 1))
            sums["entropy"][layer, d] = -torch.xlogy(p, p).sum()
    final = ali_rollout([alpha.mean(0) for alpha in alphas])[-1].clamp(min=0)
    relevant = relevant_naive(final.tolist(), mass)
    for layer, alpha in enumerate(alphas):
        last = alpha[:, -1].abs()
        sums["rollout"][layer] = last[:, relevant].sum(-1) / last.sum(-1)
    check_scores(scores, sums, n_tokens=length, n_windows=1)


# -- gradient-guided scores vs finite differences ---------------------------------------------------
def summed_loss(model, ids: torch.Tensor) -> float:
    """Summed next-token cross-entropy in the model's own precision (HF casts logits to float32,
    so the logits are recomputed here from the LM head's input)."""
    head = model.get_output_embeddings()
    seen = {}
    handle = head.register_forward_pre_hook(lambda _m, inputs: seen.__setitem__("h", inputs[0]))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
        logits = head(seen["h"])
    handle.remove()
    return F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()


def finite_difference(loaded, ids: torch.Tensor, layer: int, unit: int, token: int, direction: torch.Tensor,
                      step: float = 1e-6) -> float:
    """Central difference of the loss along ``direction`` in the unit's slot at ``token`` of the
    tensor ``register_head_edit`` hands over (Mamba: neurons; GPT-2: heads), i.e. ``direction · ∂L/∂slot``."""
    norm = direction.double().norm().item()
    if norm == 0.0:
        return 0.0
    values = []
    for sign in (1.0, -1.0):
        def edit(tensor, sign=sign):
            bumped = tensor.clone()
            bumped[0, token, unit] = bumped[0, token, unit] + sign * step / norm * direction.to(tensor.dtype)
            return bumped

        handle = loaded.adapter.register_head_edit(layer, edit)
        values.append(summed_loss(loaded.model, ids))
        handle.remove()
    return (values[0] - values[1]) / (2 * step) * norm


def test_mamba_gradient_guided_equals_finite_differences(toy_model_dir):
    loaded = load(toy_model_dir("mamba", residual_in_fp32=False), double=True)
    ids, layer, units = random_ids(1, 8, seed=5), 1, (0, 5)
    scores = attention_unit_scores(loaded.model, loaded.adapter, windows_of(ids), progress=False)
    neurons = capture_ssm(loaded.model, loaded.adapter, ids, [layer])[layer].neurons[0]
    for unit in units:
        # scaling the unit's contribution u·W_u by (1 + ε) moves the neuron u by ε·u
        derivative = torch.tensor([finite_difference(loaded, ids, layer, unit, t, neurons[t, unit])
                                   for t in range(8)])
        assert scores.layers[layer]["gradient_guided"][unit] == pytest.approx(derivative.abs().mean().item(), rel=1e-4)
        assert derivative.abs().max() > 0


def test_gpt2_gradient_guided_equals_finite_differences(toy_model_dir):
    loaded = load(toy_model_dir("gpt2"), double=True)
    ids, layer = random_ids(1, 8, seed=6), 0
    scores = attention_unit_scores(loaded.model, loaded.adapter, windows_of(ids), progress=False)
    heads: dict[str, torch.Tensor] = {}
    handles = loaded.adapter.register_capture(layer, [ATTN_HEADS], lambda name, t: heads.__setitem__(name, t.clone()))
    summed_loss(loaded.model, ids)
    handles[0].remove()
    out = heads[act_name(layer, ATTN_HEADS)][0]
    for head in (1, 3):
        derivative = torch.tensor([finite_difference(loaded, ids, layer, head, t, out[t, head]) for t in range(8)])
        assert scores.layers[layer]["gradient_guided"][head] == pytest.approx(derivative.abs().mean().item(), rel=1e-4)


# -- chunking, rollout rule, bad input -----------------------------------------------------------
def test_mamba_scores_do_not_depend_on_the_chunking(toy_model_dir):
    loaded = load(toy_model_dir("mamba"))
    windows = windows_of(random_ids(2, 200, seed=7), [200, 150])
    whole = attention_unit_scores(loaded.model, loaded.adapter, windows, progress=False)
    budget = block_bytes(8, 128, 200, 8)  # 8 channels × 128 queries per block: 8 × 2 blocks per window
    chunked = attention_unit_scores(loaded.model, loaded.adapter, windows,
                                    AttentionConfig(memory_budget_bytes=budget, batch_size=2), progress=False)
    for layer, arrays in whole.layers.items():
        for name, values in arrays.items():
            assert torch.allclose(torch.from_numpy(chunked.layers[layer][name]), torch.from_numpy(values),
                                  rtol=1e-5, atol=1e-9), (layer, name)
    assert (plan_chunks(200, 64, 8, budget).channel_block, plan_chunks(200, 64, 8, budget).query_block) == (8, 128)
    assert whole.layers[0]["unit_mean"].shape == (loaded.adapter.neuron_width(0),)


def test_rollout_equals_each_sources_formula():
    g = torch.Generator().manual_seed(12)
    signed = [(torch.randn(6, 6, generator=g, dtype=torch.float64) * 0.3).tril() for _ in range(3)]
    assert torch.allclose(rollout(signed), ali_rollout(signed), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(rollout(signed), ali_rollout([m.abs() for m in signed]), atol=1e-3)
    stochastic = [torch.rand(6, 6, generator=g, dtype=torch.float64).tril() for _ in range(3)]
    stochastic = [m / m.sum(-1, keepdim=True) for m in stochastic]
    assert torch.allclose(rollout(stochastic), abnar_zuidema_rollout(stochastic), rtol=1e-12, atol=1e-12)
    with pytest.raises(CaptureError, match="sums to 0"):
        rollout([torch.tensor([[-1.0, 0.0], [0.5, 0.5]])])
    with pytest.raises(CaptureError, match="positive"):
        relevant_tokens(torch.zeros(3, dtype=torch.float64), 0.5)


def test_rollout_and_relevant_tokens_known_answers():
    to_first = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(rollout([to_first]), torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64))
    assert torch.allclose(rollout([to_first, to_first]), torch.tensor([[1.0, 0.0], [0.75, 0.25]], dtype=torch.float64))
    assert relevant_tokens(torch.tensor([0.5, 0.5]), 0.5).tolist() == [True, False]
    assert relevant_tokens(torch.tensor([0.1, 0.6, 0.3]), 0.7).tolist() == [False, True, True]
    assert relevant_tokens(torch.tensor([0.1, 0.6, 0.3]), 1.0).tolist() == [True, True, True]


def test_bad_input_raises(toy_model_dir):
    loaded = load(toy_model_dir("gpt2"))
    ids = random_ids(1, 6)
    left_padded = TokenWindows(ids, torch.tensor([[0, 1, 1, 1, 1, 1]]), 5)
    with pytest.raises(ConfigError, match="right-padded"):
        attention_unit_scores(loaded.model, loaded.adapter, left_padded, progress=False)
    with pytest.raises(ConfigError, match="rollout_mass"):
        attention_unit_scores(loaded.model, loaded.adapter, windows_of(ids), AttentionConfig(rollout_mass=0.0),
                              progress=False)
    with torch.inference_mode(), pytest.raises(ConfigError, match="inference_mode"):
        attention_unit_scores(loaded.model, loaded.adapter, windows_of(ids), progress=False)


# -- ablation and figure data --------------------------------------------------------------------
def test_ablating_attention_units_edits_the_right_tensor(toy_model_dir):
    ids = random_ids(1, 10, seed=8)
    for family, layer, unit in (("mamba", 1, 3), ("gpt2", 1, 2)):
        loaded = load(toy_model_dir(family))
        with torch.no_grad(), ablated_attention_units(loaded.adapter, [AttentionUnit(layer, unit, 1.0)]):
            ablated = loaded.model(input_ids=ids).logits
        if family == "mamba":
            weight, columns = loaded.adapter.neuron_module(layer).weight, (slice(None), unit)
        else:
            width = loaded.model.config.n_embd // loaded.adapter.num_heads
            weight, columns = loaded.adapter.blocks()[layer].attn.c_proj.weight, slice(unit * width, (unit + 1) * width)
        with torch.no_grad():
            saved = weight.clone()
            weight[columns] = 0.0
            edited = loaded.model(input_ids=ids).logits
            weight.copy_(saved)
            plain = loaded.model(input_ids=ids).logits
        assert torch.allclose(ablated, edited, atol=1e-6), family
        assert not torch.allclose(ablated, plain, atol=1e-6), family


@pytest.mark.parametrize("family", ["mamba", "gpt2"])
def test_figure_data(toy_model_dir, family):
    loaded = load(toy_model_dir(family))
    ids = random_ids(1, 12, seed=9)
    scores = attention_unit_scores(loaded.model, loaded.adapter, windows_of(ids), progress=False)
    data = attention_figure_data(loaded.model, loaded.adapter, scores, ids[0], n_layers=2, n_units=2)
    top = {layer: sorted(range(len(values)), key=lambda u: (-values[u], u))[:2]
           for layer, values in scores.measure("attention_weighted").items()}
    assert sorted(data.heatmaps) == sorted((layer, unit) for layer, units in top.items() for unit in units)
    for (layer, unit), heatmap in data.heatmaps.items():
        if family == "mamba":
            raw = layer_hidden_attention(loaded.model, loaded.adapter, ids[0], layer, [unit])[0]
        else:
            raw = head_attention(loaded.model, loaded.adapter, ids, layer)[0, unit]
        assert torch.allclose(torch.from_numpy(heatmap), row_normalized(raw)[0], atol=1e-6)
        assert torch.allclose(torch.from_numpy(heatmap).sum(-1), torch.ones(12, dtype=torch.float32), atol=1e-5)
    assert set(data.scores.columns) >= {"layer", "unit", "attention_weighted", "gradient_guided", "rollout",
                                        "distance", "entropy"}
    assert len(data.scores) == sum(len(values) for values in scores.measure("rollout").values())
