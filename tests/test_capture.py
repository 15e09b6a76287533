"""The streaming statistics equal statistics computed from the full activation tensor."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from neuronbench.capture import CaptureConfig, NeuronLayout, StatisticsCollector, capture_statistics
from neuronbench.data import TokenWindows
from neuronbench.errors import CaptureError, ConfigError, LayerRangeError, NeuronRangeError
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
                     excluded: set[int], active=lambda a, tau: a > tau) -> dict[str, np.ndarray]:
    """``active(a, τ)`` is the activation rule with its layer scale bound."""
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
    for token, row in zip(tokens.tolist(), active(flat, tau).numpy()):
        if token not in excluded:
            token_active[token] = token_active.get(token, 0) + row.astype(np.int64)
    return {
        "active_count": active(flat, tau).sum(0).numpy(),
        "sweep_count": np.stack([active(flat, t).sum(0).numpy() for t in SWEEP]),
        "sum": flat.sum(0).numpy(), "sum_sq": (flat ** 2).sum(0).numpy(), "abs_sum": flat.abs().sum(0).numpy(),
        "max": flat.max(0).values.numpy(), "min": flat.min(0).values.numpy(),
        "pos_active": active(full, tau).sum(0).numpy(), "pos_sum": full.sum(0).numpy(),
        "pos_abs_sum": full.abs().sum(0).numpy(),
        "pearson_sum": pearson, "token_active": token_active,
    }


def naive_scale(acts: torch.Tensor, mask: torch.Tensor, sample: list[int]) -> float:
    """The layer scale of the ``sample`` windows: median neuron RMS over their real tokens."""
    return float(acts[sample][mask[sample].bool()].pow(2).mean(0).sqrt().median())


def naive_rule(rule: str, acts: torch.Tensor, mask: torch.Tensor, sample: list[int]):
    """The rule's mask with the layer scale of the ``sample`` windows."""
    if rule == "positive":
        return lambda a, tau: a > tau
    scale = naive_scale(acts, mask, sample)
    return lambda a, tau: a.abs() > tau * scale


@pytest.fixture(params=["C loop", "GPU code path"])
def code_path(request) -> str:
    """The capture's CPU path (the C loops), or on the CPU the code a GPU runs (the
    ``gpu_code_path`` fixture)."""
    if request.param == "GPU code path":
        request.getfixturevalue("gpu_code_path")
    return request.param


@pytest.mark.parametrize("family, rule", [("gpt2", "magnitude"), ("gpt2", "positive"), ("mamba", "magnitude"),
                                          ("opt", "positive")])
def test_streaming_statistics_equal_full_tensor_statistics(toy_model_dir, family, rule, code_path):
    loaded = load_model(str(toy_model_dir(family)), device="cpu", dtype="float32")
    windows = padded_windows(loaded.model.config.vocab_size, n_full=7, tail=5)
    excluded = {int(windows.input_ids[0, 0])}
    config = CaptureConfig(activation=rule, threshold=0.01, sweep=SWEEP, exclude_token_ids=frozenset(excluded),
                           batch_size=3)
    stats = capture_statistics(loaded.model, loaded.adapter, windows, config, progress=False)
    assert stats.activation == rule
    kinds = [NEURONS, SSM_DELTA] if family == "mamba" else [NEURONS]
    reference = full_tensors(loaded, windows, kinds)
    assert stats.n_tokens == windows.n_tokens == 7 * WINDOW + 5
    assert stats.n_windows == 7
    for layer in range(loaded.adapter.num_layers):
        got = stats.layer(layer)
        acts = reference[act_name(layer, NEURONS)]
        active = naive_rule(rule, acts, windows.attention_mask, sample=list(range(8)))  # 8 × 16 ≤ 4096 tokens
        expected = naive_statistics(acts, windows.input_ids, windows.attention_mask, 0.01, excluded, active)
        for name in ("active_count", "sweep_count", "pos_active"):
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        for name in ("sum_sq", "abs_sum", "max", "min"):
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-9, err_msg=name)
        # Σ a and Σ a(pos) can cancel (float32 activations, reduced in float32 per batch): their error
        # is bounded relative to Σ |a|, as float32 rounding is, not to the (possibly tiny) sum itself.
        for name, magnitude in (("sum", "abs_sum"), ("pos_sum", "pos_abs_sum")):
            np.testing.assert_array_less(np.abs(got[name] - expected[name]), 1e-6 * expected[magnitude] + 1e-12,
                                         err_msg=name)
        # A sum of 7 correlations in [-1, 1] can cancel to ~1e-3, so its error is bounded in absolute
        # terms: each window's correlation within 1e-7 of the float64 reference.
        np.testing.assert_allclose(got["pearson_sum"], expected["pearson_sum"], rtol=1e-5, atol=7e-7,
                                   err_msg="pearson_sum")
        np.testing.assert_array_equal(got["pos_tokens"], np.full(WINDOW, 7))
        rows = {int(t): i for i, t in enumerate(stats.token_ids)}
        assert set(rows) == set(expected["token_active"])
        token_active = stats.token_active(layer)
        for token, counts in expected["token_active"].items():
            np.testing.assert_array_equal(token_active[rows[token]], counts)
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


def recorded_batches(loaded, windows: TokenWindows, batch: int) -> list[dict[str, torch.Tensor]]:
    """Each batch's hooked tensors ``{act name: tensor}``, as the capture's hooks receive them."""
    parts: list[dict[str, torch.Tensor]] = []
    kinds = (NEURONS, SSM_DELTA) if loaded.adapter.has_ssm else (NEURONS,)
    handles = [h for layer in range(loaded.adapter.num_layers) for h in loaded.adapter.register_capture(
        layer, kinds, lambda name, t: parts[-1].__setitem__(name, t.clone()))]
    with torch.inference_mode():
        for start in range(0, windows.input_ids.shape[0], batch):
            parts.append({})
            loaded.model(input_ids=windows.input_ids[start:start + batch],
                         attention_mask=windows.attention_mask[start:start + batch], use_cache=False)
    for handle in handles:
        handle.remove()
    return parts


@pytest.mark.parametrize("family, rule", [("gpt2", "positive"), ("gpt2", "magnitude"), ("mamba", "magnitude")])
def test_the_hooks_read_no_value_back_on_the_gpu_code_path(toy_model_dir, family, rule, gpu_code_path):
    """On the meta device every read of a value raises (``Tensor.item() cannot be called on meta
    tensors``), so a capture whose hooks run there would wait for a GPU nowhere: every default
    statistic, top-k and exact trigram tables, over full windows and a padded last one, with a
    relative rule's scales given. A host tensor mixed into their work raises there too (``Tensor
    on device cpu is not on the expected device meta``), as it would on CUDA.
    ``benchmarks/gpu_check.py``'s ``syncs`` counts the synchronisations on CUDA. The one exception
    documented, a relative rule's scale measured in the first batch, is caught here too."""
    loaded = load_model(str(toy_model_dir(family)), device="cpu", dtype="float32")
    windows = padded_windows(loaded.model.config.vocab_size, n_full=7, tail=5)
    scales = {layer: 1.0 for layer in range(loaded.adapter.num_layers)} if rule == "magnitude" else None
    config = CaptureConfig(activation=rule, scales=scales, sweep=SWEEP, top_activations=5,
                           trigram_neurons={1: range(0, 64, 3)}, batch_size=3)

    def hooks_on_meta(collector: StatisticsCollector) -> None:
        for start, batch in zip(range(0, 8, 3), recorded_batches(loaded, windows, 3)):
            collector.start_batch(windows.input_ids[start:start + 3], windows.attention_mask[start:start + 3])
            for name, tensor in batch.items():
                collector.receive(name, tensor.to("meta"))

    meta = torch.device("meta")
    hooks_on_meta(StatisticsCollector(loaded.adapter, config, WINDOW, loaded.model.config.vocab_size, meta))
    if rule == "magnitude":
        measuring = StatisticsCollector(loaded.adapter, CaptureConfig(activation=rule, batch_size=3), WINDOW,
                                        loaded.model.config.vocab_size, meta)
        measuring.set_scale_windows(torch.arange(3))
        with pytest.raises(RuntimeError, match="meta tensors"):
            hooks_on_meta(measuring)


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
        np.testing.assert_array_equal(with_padding.layer(layer)["active_count"], last_only.layer(layer)["active_count"])
        np.testing.assert_array_equal(with_padding.token_active(layer), last_only.token_active(layer))
        for name in ("sum", "max", "min"):
            np.testing.assert_allclose(with_padding.layer(layer)[name], last_only.layer(layer)[name],
                                       rtol=1e-5, atol=1e-7)


def test_the_next_batch_is_prepared_while_the_current_one_runs(toy_model_dir, monkeypatch):
    """The host prepares batch i + 1 after batch i's forward pass is queued and before its
    ``end_batch`` waits for it (on a GPU: while the device computes); batch i + 1 begins after."""
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    windows = padded_windows(loaded.model.config.vocab_size, n_full=5, tail=3)
    calls: list[str] = []

    def logged(name: str):
        original = getattr(StatisticsCollector, name)
        return lambda self, *args, **kwargs: calls.append(name) or original(self, *args, **kwargs)

    for name in ("prepare_batch", "begin_batch", "end_batch"):
        monkeypatch.setattr(StatisticsCollector, name, logged(name))
    loaded.model.base_model.register_forward_pre_hook(lambda module, args: calls.append("forward"))
    # (the layer scales' sample pass of GPT-2's relative rule runs before the first batch is prepared)
    stats = capture_statistics(loaded.model, loaded.adapter, windows, CaptureConfig(batch_size=2), progress=False)
    assert calls[calls.index("prepare_batch"):] == ["prepare_batch", "begin_batch", "forward", "prepare_batch", "end_batch",
                     "begin_batch", "forward", "prepare_batch", "end_batch",
                     "begin_batch", "forward", "end_batch"]
    assert stats.n_tokens == windows.n_tokens


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


# -- model-free feeding: count tiers and trigram statistics ------------------------------------
def feed_layout(ids: torch.Tensor, mask: torch.Tensor, acts: torch.Tensor, batch: int, **config):
    """Feed ``acts [N, T, W]`` for one layer through the capture statistics, without a model."""
    layout = NeuronLayout(num_layers=1, width=acts.shape[-1])
    collector = StatisticsCollector(layout, CaptureConfig(**config), ids.shape[1], int(ids.max()) + 1,
                                    torch.device("cpu"))
    for start in range(0, ids.shape[0], batch):
        part = slice(start, start + batch)
        collector.feed(ids[part], mask[part], {act_name(0, NEURONS): acts[part]})
    return collector.result()


@pytest.mark.parametrize("adder", ["C loop", "tensor ops"])
@pytest.mark.parametrize("width", [3, 8])
def test_count_tiers_promote_rows_and_keep_counts_exact(width, adder, monkeypatch):
    """Token 7 (≈ 40,000 occurrences) jumps straight to the int16 tier and is promoted to int32
    past 32,767; token 3 (300) is promoted from uint8 to int16 mid-stream; neuron 0 is always
    active, so its counts must reach the occurrence counts without overflow. Rows are added by
    the C loop (the CPU default; :func:`~neuronbench.capture.native.add_token_rows`) or by the
    tensor ops of a GPU (width 8: in packed int64 lanes, :func:`~neuronbench.capture.tokens.packed`)."""
    from neuronbench.capture import native

    if adder == "tensor ops":
        monkeypatch.setattr(native, "add_token_rows", lambda *args: False)
    elif native.library() is None and os.environ.get("CI") != "true":
        pytest.skip(f"no C loop on this machine ({native.UNAVAILABLE})")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 60, (500, 100), generator=generator)
    ids[torch.rand(ids.shape, generator=generator) < 0.8] = 7
    ids.view(-1)[torch.randperm(ids.numel(), generator=generator)[:300]] = 3
    mask = torch.ones_like(ids)
    acts = torch.randn(500, 100, width, generator=generator)
    acts[..., 0] = 1.0
    stats = feed_layout(ids, mask, acts, batch=20, positional=False)
    rows = {int(t): i for i, t in enumerate(stats.token_ids)}
    assert stats.token_tier[rows[7]] == 2 and stats.token_tier[rows[3]] == 1
    assert stats.token_tier[rows[int(ids[ids != 7][ids[ids != 7] != 3][0])]] == 0
    assert stats.layer(0)["token_active_tier0"].dtype == np.uint8
    expected = np.zeros((60, width), dtype=np.int64)
    np.add.at(expected, ids.flatten().numpy(), (acts > 0).reshape(-1, width).numpy().astype(np.int64))
    np.testing.assert_array_equal(stats.token_active(0), expected[stats.token_ids])
    assert stats.token_active(0, [0])[rows[7], 0] == int((ids == 7).sum()) > 32_767
    np.testing.assert_array_equal(stats.token_occurrences[stats.token_ids], expected[stats.token_ids, 0])


def test_trigram_statistics_equal_naive_counts(code_path):
    """Trigram occurrences, ``trigram_active_count`` and the exact tables equal naive counts, on
    the CPU's path and the GPU's (tables read at each batch's end)."""
    from test_detectors_reference import naive_ngram_tables

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 6, (30, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, 5:] = 0
    acts = torch.randn(30, 9, 4, generator=generator)
    stats = feed_layout(ids, mask, acts, batch=7, exclude_token_ids=frozenset({0}), trigram_neurons={0: [3, 1]})
    tables, occurrences = naive_ngram_tables(acts.numpy(), ids.numpy(), mask.numpy(), 0.0, {0}, 3)
    assert dict(zip(map(tuple, stats.trigram_tokens.tolist()), stats.trigram_occurrences.tolist())) == occurrences
    arrays = stats.layer(0)
    np.testing.assert_array_equal(arrays["trigram_active_count"], [sum(t.values()) for t in tables])
    assert arrays["trigram_neurons"].tolist() == [1, 3]
    got: dict[int, dict] = {1: {}, 3: {}}
    for neuron, trigram, count in zip(arrays["trigram_pair_neuron"], arrays["trigram_pair_trigram"],
                                      arrays["trigram_pair_count"]):
        got[int(neuron)][tuple(stats.trigram_tokens[trigram].tolist())] = int(count)
    assert got == {1: dict(tables[1]), 3: dict(tables[3])}


@pytest.mark.parametrize("config, error, message", [
    (dict(trigram_neurons={1: [0]}), ConfigError, "not captured"),
    (dict(trigram_neurons={0: [4]}), NeuronRangeError, r"0\.\.3"),
    (dict(trigram_neurons="some"), ConfigError, "'all'"),
    (dict(trigram_neurons="all", trigrams=False), ConfigError, "trigrams=True"),
])
def test_bad_trigram_neuron_selection_is_rejected(config, error, message):
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(error, match=message):
        feed_layout(ids, torch.ones_like(ids), torch.zeros(2, 4, 4), batch=2, **config)


# -- the compiled update (CaptureConfig.compile): its functions and its eager fallback ----------
def test_compiled_update_functions_give_the_eager_statistics(monkeypatch):
    """The compiled path's functions (run eagerly here: compiling takes a minute on a CPU; the
    benchmark's ``--compile`` runs them compiled) give the eager capture's statistics."""
    from neuronbench.capture import compiled

    for name in ("moments", "windows"):
        monkeypatch.setattr(getattr(compiled, name), "compiled", getattr(compiled, name).fn)
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 9, (7, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, 7:] = 0
    acts = torch.randn(7, 12, 5, generator=generator) + 2.0
    for rule in ("positive", "magnitude"):
        eager, fused = (feed_layout(ids, mask, acts, batch=3, activation=rule, sweep=SWEEP, compile=c)
                        for c in (False, True))
        for name, value in eager.layer(0).items():
            if value.dtype.kind in "iu":
                np.testing.assert_array_equal(fused.layer(0)[name], value, err_msg=name)
            else:
                np.testing.assert_allclose(fused.layer(0)[name], value, rtol=1e-6, atol=1e-6, err_msg=name)


def test_a_compile_failure_warns_and_runs_eagerly(monkeypatch):
    from neuronbench.capture import compiled

    def broken(*args):
        raise RuntimeError("no C++ compiler")

    wrapped = compiled.Compiled(compiled.moment_reductions)
    monkeypatch.setattr(wrapped, "compiled", broken)
    monkeypatch.setattr(compiled, "FALLBACK", {})
    flat, cuts = torch.tensor([[1.0, -2.0], [3.0, 0.5]]), torch.tensor([0.0, 1.0])
    with pytest.warns(RuntimeWarning, match="moment_reductions failed .*no C\\+\\+ compiler.*eager"):
        counts = wrapped(flat, cuts, False)[0]
    assert counts.tolist() == [[2, 1], [1, 0]]
    assert "no C++ compiler" in compiled.FALLBACK["moment_reductions"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eager from now on, without a new warning
        assert wrapped(flat, cuts, False)[0].tolist() == [[2, 1], [1, 0]]


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("layout, block_bytes, group_bytes", [
    ("blocks of 3 rows: 3, 3, 2 per window", 4 * 6 * 3, 4 * 6 * 8),
    ("whole windows, two to a block", 4 * 6 * 8, 4 * 6 * 16),
    ("no sizes (a GPU): consecutive full windows in one block", None, None),
])
def test_blocked_reductions_equal_brute_force_across_blocks_windows_and_count_moves(monkeypatch, relative, layout,
                                                                                    block_bytes, group_bytes):
    """Windows of 8 rows cut into blocks in each ``layout``, a float32 count moved to int64 every
    few rows, a padded window and an empty one: every reduction equals its float64 brute force
    (counts and the bool mask exactly; ties at the cuts included)."""
    from neuronbench.activation import Mask
    from neuronbench.capture import blocks
    from neuronbench.capture.batch import BatchContext, Workspace

    for sizes, value in ((blocks.BLOCK_BYTES, block_bytes), (blocks.GROUP_BYTES, group_bytes)):
        if value is None:
            monkeypatch.delitem(sizes, "cpu")
        else:
            monkeypatch.setitem(sizes, "cpu", value)
    monkeypatch.setattr(blocks, "EXACT_ROWS", 20)
    generator = torch.Generator().manual_seed(5)
    real = torch.ones(5, 8, dtype=torch.bool)
    real[2, 5:] = False
    real[4] = False
    acts = (torch.randn(5, 8, 6, generator=generator) * 2 + 1).round(decimals=1)
    flat = acts[real].contiguous()
    mask = Mask(relative=relative, scale=0.5)
    plan = blocks.Plan(0.5, sweep=(0.0, 0.5, 1.0, -1.0), windowed=True, active=True)
    batch = BatchContext.of(real)
    shapes = {(b.windows, b.t1 - b.t0) for b in blocks.plan_blocks(batch.segments, 6, True, flat.device)}
    assert shapes == {"blocks of 3 rows: 3, 3, 2 per window": {(1, 3), (1, 2)},
                      "whole windows, two to a block": {(2, 8), (1, 5), (1, 8)},
                      "no sizes (a GPU): consecutive full windows in one block": {(2, 8), (1, 5), (1, 8)}}[layout]
    got = blocks.reduce_layer(flat, batch, mask, plan, Workspace())
    assert_reductions_are_brute_force(got, acts, real, relative, plan)


def assert_reductions_are_brute_force(got, acts: torch.Tensor, real: torch.Tensor, relative: bool, plan,
                                      close: dict | None = None) -> None:
    """Every reduction of ``got`` equals its float64 brute force over ``acts [B, T, W]`` at the real
    positions (mask scale 0.5): counts and the bool mask exactly, floats within ``close``."""
    flat = acts[real]
    close = close or dict(rtol=1e-6, atol=1e-6)  # float32 activations centred in float32
    level = flat.abs() if relative else flat
    cut = (lambda tau: tau * 0.5) if relative else (lambda tau: tau)
    assert torch.equal(got.counts, (level > cut(0.5)).sum(0))
    assert torch.equal(got.sweep, torch.stack([(level > cut(tau)).sum(0) for tau in plan.sweep]))
    assert torch.equal(got.active, level > cut(0.5))
    wide = flat.double()
    for name, expected in (("abs_sum", wide.abs().sum(0)), ("total", wide.sum(0)), ("total_sq", wide.square().sum(0)),
                           ("max", wide.amax(0)), ("min", wide.amin(0))):
        torch.testing.assert_close(getattr(got, name).double(), expected, rtol=1e-6, atol=1e-9, msg=name)
    full = acts[real.all(dim=1)].double()
    positions = torch.arange(acts.shape[1], dtype=torch.float64) - (acts.shape[1] - 1) / 2
    torch.testing.assert_close(got.windows.total, full.sum(1), **close)
    torch.testing.assert_close(got.windows.moment, (full * positions[:, None]).sum(1), **close)
    torch.testing.assert_close(got.windows.centred_sq, (full - full.mean(1, keepdim=True)).square().sum(1), **close)
    assert torch.equal(got.windows.max.double(), full.amax(1)) and torch.equal(got.windows.min.double(), full.amin(1))
    centred = full - full.mean(1, keepdim=True)
    spread = (positions.square().sum() * centred.square().sum(1)).sqrt()
    r = torch.where(full.amax(1) > full.amin(1), (positions[:, None] * centred).sum(1) / spread, 0.0)
    torch.testing.assert_close(got.windows.pearson_total(), r.sum(0), **close)
    full_level = full.abs() if relative else full
    assert torch.equal(got.position_active, (full_level > cut(0.5)).sum(0).float())
    torch.testing.assert_close(got.position_sum.double(), full.sum(0), rtol=1e-6, atol=1e-6)  # float32 sums




@pytest.mark.parametrize("relative", [False, True])
def test_native_reductions_equal_brute_force_and_the_blocks(relative):
    """The C loop (the CPU default): the same padded and empty windows as the blocks' test, every
    reduction its float64 brute force (sums in double: within 1e-12), and on a GPT-2-shaped random
    layer the same counts, mask and extremes as the blocks, the sums within their float32 rounding;
    then 37 windows (more than one group of full windows, padded ones between them)."""
    from neuronbench.activation import Mask
    from neuronbench.capture import blocks, native
    from neuronbench.capture.batch import BatchContext, Workspace

    if native.library() is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the C reduction is required under CI=true: {native.UNAVAILABLE}")
        pytest.skip(f"no C reduction on this machine ({native.UNAVAILABLE}); CI installs a compiler")
    generator = torch.Generator().manual_seed(5)
    real = torch.ones(5, 8, dtype=torch.bool)
    real[2, 5:] = False
    real[4] = False
    acts = (torch.randn(5, 8, 6, generator=generator) * 2 + 1).round(decimals=1)
    acts[0, :, 0] = 1.5  # constant within a full window: r := 0
    mask = Mask(relative=relative, scale=0.5)
    plan = blocks.Plan(0.5, sweep=(0.0, 0.5, 1.0, -1.0), windowed=True, active=True)
    got = native.reduce_layer(acts[real].contiguous(), BatchContext.of(real), mask, plan, Workspace())
    assert_reductions_are_brute_force(got, acts, real, relative, plan, dict(rtol=1e-12, atol=1e-12))

    big = torch.nn.functional.gelu(torch.randn(3, 64, 200, generator=generator) * 3)
    real = torch.ones(3, 64, dtype=torch.bool)
    real[1, 40:] = False
    batch, flat = BatchContext.of(real), big[real].contiguous()
    ours, theirs = (impl.reduce_layer(flat, batch, mask, plan, Workspace()) for impl in (native, blocks))
    for name in ("counts", "sweep", "active", "max", "min", "position_active"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    for name in ("abs_sum", "total", "total_sq", "position_sum"):
        torch.testing.assert_close(getattr(ours, name).double(), getattr(theirs, name).double(), rtol=1e-5, atol=1e-4)
    assert_reductions_are_brute_force(ours, big, real, relative, plan, dict(rtol=1e-12, atol=1e-9))

    many = torch.randn(37, 16, 70, generator=generator)  # more full windows than one group of the C loop
    real = torch.ones(37, 16, dtype=torch.bool)
    real[3, 9:], real[20, 1:], real[36, 15:] = False, False, False
    got = native.reduce_layer(many[real].contiguous(), BatchContext.of(real), mask, plan, Workspace())
    assert_reductions_are_brute_force(got, many, real, relative, plan, dict(rtol=1e-12, atol=1e-9))


def test_native_transposed_copy_and_log_delta_moments_equal_torch(monkeypatch):
    """The C loop's tiled copy of a transposed batch (Mamba's scan output, sliced too) is torch's
    copy, bit for bit; the Δ moments it reduces in double are the float64 brute force's, and the
    float32 tensor reductions (off the CPU) agree with both within float32 rounding."""
    from neuronbench.capture import native
    from neuronbench.capture.batch import BatchContext, Workspace
    from neuronbench.capture.ssm import DeltaMoments

    if native.library() is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the C reduction is required under CI=true: {native.UNAVAILABLE}")
        pytest.skip(f"no C reduction on this machine ({native.UNAVAILABLE}); CI installs a compiler")
    generator = torch.Generator().manual_seed(11)
    for scan in (torch.randn(3, 70, 33, generator=generator), torch.randn(2, 40, 90, generator=generator)[:, :, 5:71]):
        acts = scan.transpose(1, 2)
        assert torch.equal(native.copy_rows(acts, torch.empty(acts.shape)), acts.contiguous())

    delta = torch.nn.functional.softplus(torch.randn(3, 50, 70, generator=generator) * 3)
    real = torch.ones(3, 50, dtype=torch.bool)
    real[1, 30:] = False
    log_delta = delta[real].log().double()  # log Δ in float32, as the capture takes it

    def fold() -> dict[str, np.ndarray]:
        moments = DeltaMoments(70, torch.device("cpu"))
        for batch in (slice(0, 2), slice(2, 3)):
            moments.update(delta[batch], BatchContext.of(real[batch]), Workspace())
        return moments.arrays()

    expected = {"log_delta_sum": log_delta.sum(0), "log_delta_sum_sq": (log_delta ** 2).sum(0),
                "log_delta_max": log_delta.amax(0), "log_delta_min": log_delta.amin(0)}
    def nan_checksum() -> torch.Tensor:  # a NaN in Δ reaches the checksum that the finite check reads
        broken = delta[:1].clone()
        broken[0, 3, 5] = float("nan")
        moments = DeltaMoments(70, torch.device("cpu"))
        moments.update(delta[:1], BatchContext.of(real[:1]), Workspace())
        return moments.update(broken, BatchContext.of(real[:1]), Workspace())

    ours, ours_nan = fold(), nan_checksum()
    monkeypatch.setattr(native, "shifted_moments", lambda *args: None)
    tensors, tensors_nan = fold(), nan_checksum()
    for name, value in expected.items():
        np.testing.assert_allclose(ours[name], value.numpy(), rtol=1e-12, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(tensors[name], value.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
    for checksum in (ours_nan, tensors_nan):
        assert torch.isnan(checksum[5]) and torch.isfinite(checksum[:5]).all()


def test_without_a_c_compiler_the_capture_warns_once_and_runs_the_blocks(monkeypatch, tmp_path):
    """A compiler that fails: one warning naming it, then :mod:`.blocks` (the same reductions)."""
    from neuronbench.activation import Mask
    from neuronbench.capture import blocks, native
    from neuronbench.capture.batch import BatchContext, Workspace

    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_LIBRARY", [])
    monkeypatch.setattr(native, "UNAVAILABLE", {})
    acts = torch.randn(2, 4, 3)
    real = torch.ones(2, 4, dtype=torch.bool)
    args = (acts.flatten(0, 1), BatchContext.of(real), Mask(True, 0.5), blocks.Plan(0.5), Workspace())
    with pytest.warns(RuntimeWarning, match="C reduction could not be built.*no-such-cc"):
        got = native.reduce_layer(*args)
    assert "no-such-cc" in native.UNAVAILABLE["reduce_rows"]
    assert torch.equal(got.counts, blocks.reduce_layer(*args).counts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.square_sums(acts.flatten(0, 1)) is None


def test_a_capture_without_the_sweep_keeps_no_sweep_count_and_the_same_moments(monkeypatch):
    """``sweep=()`` (the suite's capture without the part ``sweep``): no ``sweep_count``, every other
    array as with the sweep (eager and the compiled path's functions, run eagerly), and the
    dead-fraction sweep is an error naming the missing part."""
    from neuronbench.capture import compiled
    from neuronbench.detectors import dead_fraction_sweep

    for name in ("moments", "windows"):
        monkeypatch.setattr(getattr(compiled, name), "compiled", getattr(compiled, name).fn)

    generator = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 9, (5, 12), generator=generator)
    mask = torch.ones_like(ids)
    acts = torch.randn(5, 12, 6, generator=generator)
    for compile in (False, True):
        swept, bare = (feed_layout(ids, mask, acts, batch=2, sweep=sweep, compile=compile) for sweep in (SWEEP, ()))
        assert "sweep_count" in swept.layer(0) and set(bare.layer(0)) == set(swept.layer(0)) - {"sweep_count"}
        for name, value in bare.layer(0).items():
            np.testing.assert_array_equal(value, swept.layer(0)[name], err_msg=name)
        assert bare.sweep == () and dead_fraction_sweep(swept)["tau"] == list(SWEEP)
        with pytest.raises(CaptureError, match="τ sweep was not captured.*'sweep'"):
            dead_fraction_sweep(bare)


def test_positional_counts_moved_to_int64_before_float32_could_round_stay_exact(monkeypatch):
    """With the float32 total's limit at 3 windows, counts move into the int64 total every few
    batches; the per-position counts equal those of one float32 total."""
    from neuronbench.capture import positions

    generator = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 9, (7, 12), generator=generator)
    mask = torch.ones_like(ids)
    acts = torch.randn(7, 12, 5, generator=generator)
    whole = feed_layout(ids, mask, acts, batch=2, sweep=())
    monkeypatch.setattr(positions, "EXACT_ROWS", 3)
    moved = feed_layout(ids, mask, acts, batch=2, sweep=())
    np.testing.assert_array_equal(moved.layer(0)["pos_active"], whole.layer(0)["pos_active"])
    assert moved.layer(0)["pos_active"].dtype == np.int64 and moved.layer(0)["pos_tokens"].tolist() == [7] * 12


def test_float_statistics_are_within_a_millionth_of_float64_at_a_real_batch_size():
    """8 windows of 512 tokens in one batch (4,096 rows per reduction): the moments' float totals
    are within 1e-6 relative of float64 brute force (``Σ a`` relative to ``Σ |a|``, as it may cancel)."""
    generator = torch.Generator().manual_seed(8)
    ids = torch.randint(0, 50, (8, 512), generator=generator)
    acts = torch.nn.functional.gelu(torch.randn(8, 512, 16, generator=generator) * 2 + torch.linspace(-1, 3, 16))
    for positional in (True, False):
        got = feed_layout(ids, torch.ones_like(ids), acts, batch=8, sweep=(), positional=positional,
                          token_counts=False, trigrams=False).layer(0)
        flat = acts.double().flatten(0, 1)
        magnitude = flat.abs().sum(0).numpy()
        for name, expected in (("sum_sq", flat.square().sum(0)), ("abs_sum", flat.abs().sum(0))):
            np.testing.assert_allclose(got[name], expected.numpy(), rtol=1e-6, atol=0, err_msg=name)
        np.testing.assert_array_less(np.abs(got["sum"] - flat.sum(0).numpy()), 1e-6 * magnitude)


def _kept_storages(value: object, seen: set[int] | None = None) -> set[int]:
    """The storages of every tensor reachable from ``value`` through neuronbench objects, dicts and
    sequences, leaving out :class:`~neuronbench.capture.batch.Workspace` buffers (reused, made once)."""
    from neuronbench.capture.batch import Workspace

    seen = set() if seen is None else seen
    if id(value) in seen or isinstance(value, Workspace):
        return set()
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return {value.untyped_storage().data_ptr()}
    if isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, (list, tuple)):
        children = list(value)
    elif type(value).__module__.startswith("neuronbench") and hasattr(value, "__dict__"):
        children = list(vars(value).values())
    else:
        return set()
    return set().union(*(_kept_storages(child, seen) for child in children))


def test_a_batch_keeps_no_tensor_made_while_the_model_runs():
    """Every total, Δ's included, exists before the first forward pass, and nothing the hooks make
    outlives them: a tensor kept past a hook would be carved out of the heap space that the model's
    freed temporaries left, and split it (mamba-130m: a full pass's heap grew from 1.2 to 4 GiB)."""
    layout = NeuronLayout(num_layers=2, width=6, has_ssm=True)
    config = CaptureConfig(batch_size=3, sweep=(0.0, 0.5))
    collector = StatisticsCollector(layout, config, 5, 30, torch.device("cpu"))
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        ids = torch.randint(0, 30, (3, 5), generator=generator)
        collector.start_batch(ids, torch.ones_like(ids))
        before = _kept_storages(collector.stats)
        for layer in range(2):
            collector.receive(act_name(layer, NEURONS), torch.randn(3, 5, 6, generator=generator))
            collector.receive(act_name(layer, SSM_DELTA), torch.rand(3, 5, 6, generator=generator) + 0.1)
        assert _kept_storages(collector.stats) == before
        collector.end_batch(replay=lambda: None)  # every checksum finite: nothing is replayed
    result = collector.result()
    assert result.n_tokens == 30
    assert (result.layers[1]["pos_tokens"] == 6).all() and "log_delta_sum" in result.layers[1]


def test_a_delta_narrower_than_the_neurons_is_an_error():
    """SPEC: channel d of Δ is neuron d of the same layer; a Δ of another width names both widths."""
    collector = StatisticsCollector(NeuronLayout(num_layers=1, width=6, has_ssm=True), CaptureConfig(), 5, 30,
                                    torch.device("cpu"))
    ids = torch.zeros(2, 5, dtype=torch.long)
    collector.start_batch(ids, torch.ones_like(ids))
    with pytest.raises(CaptureError, match="Δ has 4 channels, its layer 6 neurons"):
        collector.receive(act_name(0, SSM_DELTA), torch.ones(2, 5, 4))
