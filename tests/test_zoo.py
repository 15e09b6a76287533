"""Tests of neuronbench.zoo: the shipped tiny-gpt2 / tiny-mamba, their recipe and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from neuronbench import models
from neuronbench.data import TokenWindows, load_corpus, token_stream, tokenize_windows
from neuronbench.errors import ConfigError, CorpusError, ModelLoadError
from neuronbench.models import load_model
from neuronbench.zoo import RECIPE_VERSION, RECIPES, builtin_dir, get_recipe, train_builtin, verify_builtin
from neuronbench.adapters.mamba import delta_from_dt
from neuronbench.activation import ACTIVATION_RULES
from neuronbench.zoo import cli, families, planted, planted_mamba, planting
from neuronbench.zoo.planted_gpt2 import POSITION_PROFILES, SIGNALS
from neuronbench.zoo import train as train_module
from neuronbench.zoo.evaluation import unigram_log_probs, unigram_perplexity, window_perplexity
from neuronbench.zoo.recipe import batch_indices, learning_rate_factor

NAMES = tuple(RECIPES)
TINY_MODELS = {
    "tiny-gpt2": dict(n_layer=1, n_embd=16, n_head=2, n_inner=32, n_positions=16),
    "tiny-mamba": dict(num_hidden_layers=1, hidden_size=16, state_size=4, time_step_rank=2,
                       use_mambapy=False),
    "tiny-opt": dict(num_hidden_layers=1, hidden_size=16, word_embed_proj_dim=16, num_attention_heads=2,
                     ffn_dim=32, max_position_embeddings=16),
}
"""Model overrides that make a recipe run in about a second (the sequential Mamba scan, so the
test needs no mambapy)."""


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A local text file: the first ~40k characters of pydocs train, split by paragraphs."""
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(load_corpus("pydocs", "train").text[:40_000], encoding="utf-8")
    return str(path)


def shortened(name: str, corpus: str, model: dict | None = None, **fields):
    """The shipped recipe of ``name`` on ``corpus`` with a tiny model, 4 steps."""
    defaults = dict(steps=4, batch_size=2, seq_len=16, vocab_size=300, corpus=corpus)
    tiny = {**TINY_MODELS[name], **(model or {})}
    return get_recipe(name).with_overrides(model=tiny, **{**defaults, **fields})


# ------------------------------------------------------------------------------------------
# the shipped models


@pytest.fixture(scope="module", params=NAMES)
def shipped(request):
    """``(name, loaded model, manifest)`` of a shipped built-in model, loaded offline."""
    name = request.param
    return name, load_model(name, device="cpu"), verify_builtin(name)


def test_shipped_model_beats_half_the_unigram_perplexity(shipped) -> None:
    name, loaded, manifest = shipped
    windows = tokenize_windows(load_corpus("pydocs", "test"), loaded.tokenizer, manifest["seq_len"])
    train = token_stream(load_corpus("pydocs", "train"), loaded.tokenizer)
    model_ppl = window_perplexity(loaded.model, windows, batch_size=32)
    unigram_ppl = unigram_perplexity(unigram_log_probs(train, len(loaded.tokenizer)), windows)
    assert model_ppl.tokens_scored == unigram_ppl.tokens_scored == manifest["test_tokens_scored"]
    assert model_ppl.perplexity <= 0.5 * unigram_ppl.perplexity
    assert model_ppl.perplexity == pytest.approx(manifest["test_perplexity"], rel=1e-3)
    assert unigram_ppl.perplexity == pytest.approx(manifest["test_unigram_perplexity"], rel=1e-9)


def test_shipped_model_loads_offline_as_recorded(shipped) -> None:
    name, loaded, manifest = shipped
    recipe = RECIPES[name]
    assert loaded.source.kind == "builtin" and Path(loaded.source.location) == builtin_dir(name)
    assert loaded.family == recipe.family
    assert loaded.num_parameters == manifest["num_parameters"]
    assert len(loaded.tokenizer) == manifest["vocab_size"] == recipe.vocab_size
    assert loaded.tokenizer.eos_token_id == loaded.model.config.eos_token_id
    assert not getattr(loaded.model.config, "use_mambapy", False)


def test_shipped_manifest_records_the_current_recipe(shipped) -> None:
    name, _, manifest = shipped
    recipe = RECIPES[name]
    assert manifest["recipe_version"] == RECIPE_VERSION
    assert manifest["recipe"] == json.loads(json.dumps(recipe.as_dict()))
    assert manifest["corpus_sha256"]["train"] == load_corpus("pydocs", "train").sha256
    assert (manifest["seed"], manifest["steps"], manifest["batch_size"], manifest["seq_len"]) == (
        recipe.seed, recipe.steps, recipe.batch_size, recipe.seq_len)
    assert math.isfinite(manifest["final_train_loss"]) and manifest["training_wall_time_s"] > 0


def test_shipped_files_fit_the_size_budget() -> None:
    total = sum(p.stat().st_size for name in NAMES for p in builtin_dir(name).iterdir())
    assert total <= 20 * 10**6


# ------------------------------------------------------------------------------------------
# corrupted or missing shipped files


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "model.safetensors": _truncate,
    "tokenizer.json": Path.unlink,
    "config.json": lambda p: p.write_text(p.read_text().replace("128", "64")),
    "manifest.json": Path.unlink,
}


@pytest.mark.parametrize("file_name", sorted(CORRUPTIONS))
def test_corrupted_shipped_file_is_named_with_the_fix(copy_dir, file_name: str) -> None:
    directory = copy_dir(builtin_dir("tiny-gpt2"))
    CORRUPTIONS[file_name](directory / file_name)
    with pytest.raises(ModelLoadError, match=file_name) as error:
        verify_builtin("tiny-gpt2", directory)
    assert "python -m neuronbench zoo train tiny-gpt2" in str(error.value)


def test_missing_builtin_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist.*zoo train tiny-mamba"):
        verify_builtin("tiny-mamba", tmp_path / "nowhere")


def test_load_model_of_truncated_builtin_fails_with_the_fix(copy_dir, monkeypatch) -> None:
    root = copy_dir(builtin_dir("tiny-gpt2")).parent
    (root / "copy").rename(root / "tiny-gpt2")
    _truncate(root / "tiny-gpt2" / "model.safetensors")
    monkeypatch.setattr(models, "ZOO_DIR", root)
    with pytest.raises(ModelLoadError, match="python -m neuronbench zoo train tiny-gpt2"):
        load_model("tiny-gpt2", device="cpu")


# ------------------------------------------------------------------------------------------
# the recipe: reproducible, and it refuses impossible input before any step


@pytest.mark.parametrize("name", NAMES)
def test_shortened_recipe_reproduces_its_final_loss(tmp_path: Path, small_corpus: str, name: str) -> None:
    recipe = shortened(name, small_corpus)
    first = train_builtin(recipe, tmp_path / "a", progress=False)
    second = train_builtin(recipe, tmp_path / "b", progress=False)
    other_seed = train_builtin(recipe.with_overrides(seed=1), tmp_path / "c", progress=False)
    assert first["final_train_loss"] == second["final_train_loss"]
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert other_seed["final_train_loss"] != first["final_train_loss"]
    on_disk = json.loads((tmp_path / "a/manifest.json").read_text())
    assert on_disk["final_train_loss"] == first["final_train_loss"]
    assert on_disk["steps"] == 4
    assert on_disk["corpus_sha256"]["train"] == load_corpus(small_corpus, "train").sha256
    verify_builtin(name, tmp_path / "a")


def test_final_loss_is_the_mean_of_the_last_steps(tmp_path: Path, small_corpus: str, monkeypatch) -> None:
    logs = []
    real = train_module.train_steps
    monkeypatch.setattr(train_module, "train_steps", lambda *a, **k: logs.append(real(*a, **k)) or logs[-1])
    manifest = train_builtin(shortened("tiny-gpt2", small_corpus, loss_window=3), tmp_path, progress=False)
    assert len(logs[0].losses) == 4
    assert manifest["final_train_loss"] == pytest.approx(sum(logs[0].losses[-3:]) / 3, rel=1e-12)


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a training step is ever reached."""

    def forbidden(*_args, **_kwargs):
        raise AssertionError("training started although the input is invalid")

    monkeypatch.setattr(train_module, "train_steps", forbidden)


IMPOSSIBLE = {
    "steps=0": ("tiny-gpt2", dict(steps=0), "steps must be a positive integer"),
    "steps<0": ("tiny-mamba", dict(steps=-3), "steps must be a positive integer"),
    "batch=0": ("tiny-gpt2", dict(batch_size=0), "batch_size must be a positive integer"),
    "seq>context": ("tiny-gpt2", dict(seq_len=17), "exceeds the model's context n_positions=16"),
    "seq=1": ("tiny-mamba", dict(seq_len=1), "seq_len must be an integer ≥ 2"),
    "lr=0": ("tiny-gpt2", dict(learning_rate=0.0), "learning_rate=0.0 is out of range"),
    "heads": ("tiny-gpt2", dict(model=dict(n_embd=18, n_head=4)), "not divisible by n_head"),
    "family": ("tiny-gpt2", dict(family="bert"), "unknown model family 'bert'"),
    "vocab": ("tiny-gpt2", dict(vocab_size=100), "vocab_size must be at least 257"),
    "batch>windows": ("tiny-gpt2", dict(batch_size=100_000), "exceeds the .* training windows"),
    "opt seq>context": ("tiny-opt", dict(seq_len=17), "exceeds the model's context max_position_embeddings=16"),
    "opt heads": ("tiny-opt", dict(model=dict(hidden_size=18, word_embed_proj_dim=18, num_attention_heads=4)), "not divisible"),
    "opt gelu": ("tiny-opt", dict(model=dict(activation_function="gelu")), "activation_function='relu'"),
    "opt post-LN": ("tiny-opt", dict(model=dict(do_layer_norm_before=False)), "do_layer_norm_before=True"),
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_impossible_configuration_stops_before_any_step(
    tmp_path: Path, small_corpus: str, no_training, case: str
) -> None:
    name, fields, message = IMPOSSIBLE[case]
    with pytest.raises(ConfigError, match=message):
        train_builtin(shortened(name, small_corpus, **fields), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_mambapy_scan_without_the_package_is_refused(
    tmp_path: Path, small_corpus: str, no_training, monkeypatch
) -> None:
    monkeypatch.setattr(families, "mambapy_available", lambda: False)
    recipe = shortened("tiny-mamba", small_corpus, model=dict(use_mambapy=True))
    with pytest.raises(ConfigError, match="pip install mambapy"):
        train_builtin(recipe, tmp_path / "out", progress=False)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "is empty"), ("   \n\n \n", "is empty")],
)
def test_empty_corpus_stops_before_any_step(tmp_path: Path, no_training, text: str, message: str) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    with pytest.raises(CorpusError, match=message):
        train_builtin(shortened("tiny-gpt2", str(corpus)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_corpus_without_one_training_window_stops_before_any_step(
    tmp_path: Path, small_corpus: str, no_training
) -> None:
    with pytest.raises(CorpusError, match="too small to hold one window of 100000 tokens"):
        recipe = shortened("tiny-mamba", small_corpus, seq_len=100_000)
        train_builtin(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------
# the pieces, against references written here


def test_batch_indices_are_seeded_permutations_per_epoch() -> None:
    order = batch_indices(n_windows=5, batch_size=2, steps=7, seed=3)
    assert order.shape == (7, 2)
    flat = order.flatten().tolist()
    for epoch in range(2):
        assert sorted(flat[5 * epoch : 5 * epoch + 5]) == list(range(5))
    assert sorted(flat[10:]) == sorted(set(flat[10:]))
    assert torch.equal(order, batch_indices(5, 2, 7, seed=3))
    assert not torch.equal(order, batch_indices(5, 2, 7, seed=4))
    with pytest.raises(ConfigError, match="exceeds the 5 training windows"):
        batch_indices(5, 6, 1, seed=0)


def test_learning_rate_schedule_warms_up_then_decays_to_the_floor() -> None:
    steps, warmup = 100, 5
    factors = [learning_rate_factor(s, steps, warmup_fraction=0.05, min_lr_ratio=0.1) for s in range(steps)]
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :]))
    expected_last = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (steps - 1 - warmup) / (steps - warmup)))
    assert factors[-1] == pytest.approx(expected_last) and factors[-1] > 0.1


@pytest.mark.parametrize("family", ["gpt2", "mamba"])
def test_window_perplexity_matches_a_per_token_brute_force(toy_model_dir, family: str) -> None:
    loaded = load_model(str(toy_model_dir(family)), device="cpu")
    windows = tokenize_windows(load_corpus("pydocs", "test"), loaded.tokenizer, window=8, max_tokens=37)
    assert windows.attention_mask[-1].sum() == 5  # a partial last window
    nll, count = 0.0, 0
    with torch.inference_mode():
        for ids, mask in zip(windows.input_ids, windows.attention_mask):
            real = ids[mask.bool()]
            for t in range(1, real.numel()):
                logits = loaded.model(input_ids=real[None, :t]).logits[0, -1]
                nll -= F.log_softmax(logits.double(), dim=-1)[real[t]].item()
                count += 1
    result = window_perplexity(loaded.model, windows, batch_size=3)
    assert result.tokens_scored == count == 37 - 5
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_unigram_perplexity_uses_add_one_smoothing_on_the_same_targets() -> None:
    log_probs = unigram_log_probs(torch.tensor([0, 0, 1, 0]), vocab_size=4)
    assert log_probs.exp().tolist() == pytest.approx([4 / 8, 2 / 8, 1 / 8, 1 / 8])
    ids = torch.tensor([[3, 0, 1, 2], [2, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    result = unigram_perplexity(log_probs, TokenWindows(ids, mask, 6))
    targets = [0, 1, 2, 3]  # the first token of each window and the padding are not scored
    nll = -sum(math.log([4 / 8, 2 / 8, 1 / 8, 1 / 8][t]) for t in targets)
    assert result.tokens_scored == 4
    assert result.perplexity == pytest.approx(math.exp(nll / 4))


# ------------------------------------------------------------------------------------------
# command line


def test_cli_trains_a_shortened_recipe(tmp_path: Path, small_corpus: str, capsys) -> None:
    argv = ["train", "tiny-gpt2", "--steps", "2", "--batch-size", "2", "--seq-len", "16",
            "--corpus", small_corpus, "--out", str(tmp_path / "out"), "--no-progress"]
    assert cli.main(argv) == 0
    manifest = verify_builtin("tiny-gpt2", tmp_path / "out")
    assert (manifest["steps"], manifest["batch_size"], manifest["seq_len"]) == (2, 2, 16)
    assert f"final_train_loss={manifest['final_train_loss']}" in capsys.readouterr().out


def test_cli_reports_an_impossible_configuration(tmp_path: Path, no_training, capsys) -> None:
    assert cli.main(["train", "tiny-mamba", "--steps", "0", "--out", str(tmp_path / "out")]) == 1
    assert "steps must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_verifies_the_shipped_files(capsys) -> None:
    assert cli.main(["verify"]) == 0
    assert capsys.readouterr().out.count("files OK") == len(NAMES)
    assert cli.main(["verify", "tiny-bert"]) == 1
    assert "no built-in model recipe 'tiny-bert'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# calibration models: planted deterministically at load time


@pytest.fixture(scope="module")
def planted_gpt2():
    return load_model("planted-gpt2", device="cpu")


def test_planted_weights_are_deterministic_and_identified(planted_gpt2) -> None:
    again = load_model("planted-gpt2", device="cpu")
    base = load_model("tiny-gpt2", device="cpu")
    assert planted_gpt2.source.kind == "planted" and Path(planted_gpt2.source.location) == builtin_dir("tiny-gpt2")
    assert planted_gpt2.weights_sha256 == again.weights_sha256 == planted.state_sha256(again.model)
    assert planted_gpt2.weights_sha256 != base.weights_sha256
    for name, tensor in planted_gpt2.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name


def _neuron_inputs(loaded, windows: TokenWindows) -> dict[int, torch.Tensor]:
    """The input of every block's ``mlp.c_proj`` (the neurons), recomputed by hooks here."""
    acts: dict[int, torch.Tensor] = {}
    hooks = [block.mlp.c_proj.register_forward_pre_hook(lambda _m, args, l=l: acts.__setitem__(l, args[0]))
             for l, block in enumerate(loaded.model.transformer.h)]
    try:
        with torch.inference_mode():
            loaded.model(input_ids=windows.input_ids)
    finally:
        for hook in hooks:
            hook.remove()
    return acts


def test_planted_neurons_are_exactly_as_documented(planted_gpt2) -> None:
    windows = tokenize_windows(load_corpus("pydocs", "train"), planted_gpt2.tokenizer, planted.WINDOW,
                               max_tokens=8 * planted.WINDOW, drop_last=True)
    acts, ids = _neuron_inputs(planted_gpt2, windows), windows.input_ids
    positions = torch.arange(planted.WINDOW).expand_as(ids).numpy()
    for neuron in planted.PLANTED["planted-gpt2"].neurons:
        active = acts[neuron.layer][..., neuron.index] > 0
        if neuron.kind == "dead":
            expected = torch.zeros_like(active)
        elif neuron.kind == "token":
            expected = ids == planted_gpt2.tokenizer.encode(neuron.expect)[0]
        else:
            _, profile = SIGNALS[neuron.signal]
            expected = torch.from_numpy(POSITION_PROFILES[profile](positions) == (neuron.sign > 0))
        assert torch.equal(active, expected), neuron
        assert acts[neuron.layer][..., neuron.index][~active].abs().max() <= 1e-6, neuron
        assert not planted_gpt2.model.transformer.h[neuron.layer].mlp.c_proj.weight[neuron.index].any()


def test_planted_model_keeps_most_of_its_base_model(planted_gpt2) -> None:
    windows = tokenize_windows(load_corpus("pydocs", "test"), planted_gpt2.tokenizer, planted.WINDOW)
    ppl = window_perplexity(planted_gpt2.model, windows, batch_size=32).perplexity
    assert ppl <= 1.1 * verify_builtin("tiny-gpt2")["test_perplexity"]


def test_planted_token_must_be_one_token(planted_gpt2) -> None:
    with pytest.raises(ValueError, match="must be one"):
        planting.token_id(planted_gpt2.tokenizer, " functionality of")


@pytest.fixture(scope="module")
def planted_mamba_model():
    return load_model("planted-mamba", device="cpu")


def test_planted_mamba_is_deterministic_and_identified(planted_mamba_model) -> None:
    again = load_model("planted-mamba", device="cpu")
    assert planted_mamba_model.source.kind == "planted"
    assert Path(planted_mamba_model.source.location) == builtin_dir("tiny-mamba")
    assert planted_mamba_model.weights_sha256 == again.weights_sha256 == planted.state_sha256(again.model)
    assert planted_mamba_model.weights_sha256 != load_model("tiny-mamba", device="cpu").weights_sha256
    for name, tensor in planted_mamba_model.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name


def _mamba_internals(loaded, windows: TokenWindows) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """``({layer: neurons}, {layer: log Δ})``, each ``[windows, T, channels]``, recomputed by hooks here."""
    acts: dict[int, torch.Tensor] = {}
    log_delta: dict[int, torch.Tensor] = {}
    hooks = []
    for l, layer in enumerate(loaded.model.backbone.layers):
        mixer = layer.mixer
        hooks.append(mixer.out_proj.register_forward_pre_hook(lambda _m, args, l=l: acts.__setitem__(l, args[0])))
        hooks.append(mixer.x_proj.register_forward_hook(
            lambda _m, _args, out, l=l, mixer=mixer: log_delta.__setitem__(
                l, delta_from_dt(mixer, out[..., :mixer.time_step_rank]).log())))
    try:
        with torch.inference_mode():
            loaded.model(input_ids=windows.input_ids)
    finally:
        for hook in hooks:
            hook.remove()
    return acts, log_delta


def test_planted_mamba_channels_are_exactly_as_documented(planted_mamba_model) -> None:
    """On 24 windows of pydocs train (every planted token occurs), under the family's rule
    (|a| > 0.5 · s_l, s_l of the first 4 windows): dead channels are 0,
    token channels active exactly on their token, positional channels exactly on the first m positions
    (or from m on), inactive values within 1e-6 of 0; each Δ channel's spread of log Δ is more than
    5 times the largest of its layer's other channels."""
    loaded = planted_mamba_model
    windows = tokenize_windows(load_corpus("pydocs", "train"), loaded.tokenizer, planting.WINDOW,
                               max_tokens=24 * planting.WINDOW, drop_last=True)
    acts, log_delta = _mamba_internals(loaded, windows)
    ids, rule = windows.input_ids, ACTIVATION_RULES["magnitude"]
    positions = torch.arange(planting.WINDOW).expand_as(ids)
    spec = planted.PLANTED["planted-mamba"]
    assert {layer: len(v) for layer, v in spec.expected("delta").items()} == dict.fromkeys(range(4), 1)
    for neuron in spec.neurons:
        a = acts[neuron.layer]
        if neuron.kind == "delta":
            spread = log_delta[neuron.layer].flatten(0, 1).double().std(dim=0, unbiased=False)
            others = torch.cat([spread[:neuron.index], spread[neuron.index + 1:]])
            assert spread[neuron.index] > 5 * others.max(), neuron
            continue
        value = a[..., neuron.index]
        active = value.abs() > rule.default_tau * rule.layer_scale(a[:4].flatten(0, 1))
        if neuron.kind == "dead":
            expected = torch.zeros_like(active)
            assert not value.any(), neuron
        elif neuron.kind == "token":
            expected = ids == loaded.tokenizer.encode(neuron.expect)[0]
            assert expected.any(), neuron
        else:
            expected = (positions < neuron.signal) == (neuron.sign > 0)
        assert torch.equal(active, expected), neuron
        assert value[~active].abs().max() <= 1e-6, neuron
        assert not loaded.model.backbone.layers[neuron.layer].mixer.out_proj.weight[:, neuron.index].any()


def test_planted_mamba_keeps_most_of_its_base_model(planted_mamba_model) -> None:
    windows = tokenize_windows(load_corpus("pydocs", "test"), planted_mamba_model.tokenizer, planting.WINDOW)
    ppl = window_perplexity(planted_mamba_model.model, windows, batch_size=32).perplexity
    assert ppl <= 1.1 * verify_builtin("tiny-mamba")["test_perplexity"]


def test_planted_mamba_positional_channel_must_fit_the_conv(planted_mamba_model) -> None:
    mixer = planted_mamba_model.model.backbone.layers[0].mixer
    with pytest.raises(ValueError, match="positions back"):
        planted_mamba._plant_positional(mixer, planting.PlantedNeuron("positional", 0, 5, 4, 1), 0)
