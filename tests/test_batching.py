"""Batch sizes: the default token budget, and the back-off that halves the batch size on
out-of-memory before anything is recorded, probing each pass with its own step (the capture's
statistics, perplexity's loss)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronbench import batching, perplexity
from neuronbench.ablation import knockout as knockout_scoring
from neuronbench.attention.knockout import parse_knockout
from neuronbench.contexts import top_contexts
from neuronbench.detectors.sensitivity import input_change_sensitivity
from neuronbench.batching import BATCH_TOKENS, MIN_BATCH_WINDOWS, fit_batch_size, windows_per_batch
from neuronbench.capture import CaptureConfig, capture_statistics
from neuronbench.capture.batch import Workspace
from neuronbench.data import TokenWindows
from neuronbench.errors import ConfigError
from neuronbench.models import load_model

GPU = torch.device("cuda")
OUT_OF_MEMORY = "CUDA out of memory. Tried to allocate 2.00 GiB"


class Step:
    """A pass's step that runs out of memory above ``capacity`` windows (and records each size)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.seen: list[int] = []

    def __call__(self, size: int) -> None:
        self.seen.append(size)
        assert torch.is_inference_mode_enabled()
        if size > self.capacity:
            raise torch.OutOfMemoryError(OUT_OF_MEMORY)


@pytest.fixture
def fake_gpu(monkeypatch) -> list[int]:
    """Every device probes its batch size, as a GPU does; returns the ``empty_cache`` calls."""
    emptied: list[int] = []
    monkeypatch.setattr(batching, "probes_memory", lambda device: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    return emptied


def test_backs_off_by_halving_until_it_fits(fake_gpu):
    step = Step(capacity=3)
    assert fit_batch_size(step, 16, GPU) == 2
    assert step.seen == [16, 8, 4, 2] and len(fake_gpu) == 3


def test_other_errors_and_out_of_memory_at_one_window_are_raised(fake_gpu):
    def mismatch(size: int) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        fit_batch_size(mismatch, 4, GPU)
    step = Step(capacity=0)
    with pytest.raises(torch.OutOfMemoryError):
        fit_batch_size(step, 4, GPU)
    assert step.seen == [4, 2, 1]


def test_cpu_keeps_the_requested_size_and_bad_sizes_are_rejected():
    step = Step(capacity=0)
    assert fit_batch_size(step, 4, torch.device("cpu")) == 4 and step.seen == []
    with pytest.raises(ConfigError):
        fit_batch_size(step, 0, torch.device("cpu"))


def test_the_capture_probe_runs_a_capture_step_with_its_statistics(toy_model_dir, fake_gpu, monkeypatch):
    """The capture probes its batch size with a capture step, statistics attached, so memory that
    only the statistics allocate backs it off (here: any workspace buffer of more than 4 windows'
    rows); the capture then runs in batches of the probed size, with the statistics of that batch
    size, nothing of the probe counted. A probe by a plain forward would keep 16 and fail inside
    the capture."""
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    ids = torch.randint(0, loaded.model.config.vocab_size, (16, 8), generator=torch.Generator().manual_seed(1))
    windows = TokenWindows(ids, torch.ones_like(ids), ids.numel())
    config = CaptureConfig(activation="positive", batch_size=16)
    expected = capture_statistics(loaded.model, loaded.adapter, windows,
                                  CaptureConfig(activation="positive", batch_size=4), progress=False)
    width = loaded.adapter.neuron_width(0)
    buffer = Workspace.buffer

    def scarce(self, role, shape, device, dtype=torch.float32):
        if np.prod(shape) > 4 * 8 * width:
            raise torch.OutOfMemoryError(OUT_OF_MEMORY)
        return buffer(self, role, shape, device, dtype)

    monkeypatch.setattr(Workspace, "buffer", scarce)
    sizes: list[int] = []
    handle = loaded.model.base_model.register_forward_pre_hook(
        lambda _, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    got = capture_statistics(loaded.model, loaded.adapter, windows, config, progress=False)
    handle.remove()
    assert sizes == [16, 8, 4, 4, 4, 4, 4]
    assert got.n_tokens == expected.n_tokens == ids.numel()
    for layer in range(loaded.adapter.num_layers):
        for name in ("active_count", "sweep_count", "pos_active"):
            np.testing.assert_array_equal(got.layer(layer)[name], expected.layer(layer)[name], err_msg=name)


def test_the_perplexity_probe_scores_with_the_loss(toy_model_dir, fake_gpu, monkeypatch):
    """Perplexity probes its batch size with a scoring step (forward, float32 logits, loss): a
    batch whose loss does not fit backs it off, and the scores equal those of that batch size."""
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    stream = torch.randint(0, loaded.model.config.vocab_size, (200,), generator=torch.Generator().manual_seed(2))
    windows = perplexity.sliding_windows(stream, 16, 8)
    expected = perplexity.score_windows(loaded.model, windows, batch_size=2)
    width = windows.inputs.shape[1]
    cross_entropy = perplexity.F.cross_entropy
    rows: list[int] = []

    def scarce(logits, *args, **kwargs):
        rows.append(logits.shape[0])
        if logits.shape[0] > 2 * width:
            raise torch.OutOfMemoryError(OUT_OF_MEMORY)
        return cross_entropy(logits, *args, **kwargs)

    monkeypatch.setattr(perplexity.F, "cross_entropy", scarce)
    got = perplexity.score_windows(loaded.model, windows, batch_size=8)
    assert rows[:3] == [8 * width, 4 * width, 2 * width] and max(rows[3:]) <= 2 * width
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    fitted = perplexity.fitted_sizes()
    for _ in range(2):  # an evaluation's repeated scorings probe once
        rows.clear()
        torch.testing.assert_close(perplexity.score_windows(loaded.model, windows, 8, fitted=fitted), expected,
                                   rtol=0, atol=0)
    assert max(rows) <= 2 * width and fitted[loaded.model] == {8: 2}


def test_the_default_batch_fills_the_token_budget_and_an_explicit_size_is_kept():
    assert (BATCH_TOKENS, MIN_BATCH_WINDOWS) == (4096, 8)
    assert windows_per_batch(None, 128) == 32
    assert windows_per_batch(None, 129) == 31
    assert windows_per_batch(None, 512) == 8
    assert windows_per_batch(None, 1024) == 8
    assert windows_per_batch(None, 5000) == 8
    assert windows_per_batch(3, 128) == 3
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ConfigError, match="batch size must be a positive integer"):
            windows_per_batch(bad, 128)


def test_a_default_capture_runs_token_budget_batches_with_the_same_statistics(toy_model_dir, monkeypatch):
    """With no batch size the capture runs ⌊BATCH_TOKENS / T⌋ windows per forward pass, through the
    backbone only (the LM head never runs); the statistics of a rule without a first-batch scale
    equal those of any other batching."""
    monkeypatch.setattr(batching, "MIN_BATCH_WINDOWS", 1)
    loaded = load_model(str(toy_model_dir("opt")), device="cpu", dtype="float32")
    ids = torch.randint(0, loaded.model.config.vocab_size, (10, 16), generator=torch.Generator().manual_seed(0))
    windows = TokenWindows(ids, torch.ones_like(ids), ids.numel())
    monkeypatch.setattr(batching, "BATCH_TOKENS", 64)
    sizes: list[int] = []
    head_calls: list[int] = []
    handles = [loaded.model.base_model.register_forward_pre_hook(
                   lambda _, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True),
               loaded.model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))]
    auto = capture_statistics(loaded.model, loaded.adapter, windows, CaptureConfig(activation="positive"),
                              progress=False)
    for handle in handles:
        handle.remove()
    assert sizes == [4, 4, 2] and head_calls == []
    three = capture_statistics(loaded.model, loaded.adapter, windows,
                               CaptureConfig(activation="positive", batch_size=3), progress=False)
    for layer in range(loaded.adapter.num_layers):
        got, expected = auto.layer(layer), three.layer(layer)
        for name in ("active_count", "sweep_count", "pos_active"):
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        for name in ("sum_sq", "abs_sum", "max", "min", "pearson_sum"):
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-9, err_msg=name)


def test_the_knockout_probe_scores_under_the_condition(toy_model_dir, fake_gpu, monkeypatch):
    """The attention knockout probes its batch size once, by scoring under the condition's own
    knockout (the first it scores): a batch that does not fit backs it off for the condition, its
    controls and the baseline, and every score equals that of the backed-off batch size."""
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    sequences = torch.randint(0, loaded.model.config.vocab_size, (8, 9), generator=torch.Generator().manual_seed(3))
    condition = parse_knockout("last<-previous:2", [0])
    expected = knockout_scoring.KnockoutRunner(loaded.model, loaded.adapter, sequences, seeds=2,
                                               batch_size=2).run(condition).to_record()
    token_nll = knockout_scoring.token_nll
    batch_rows: list[int] = []

    def scarce(logits, targets):
        batch_rows.append(logits.shape[0])
        if logits.shape[0] > 2:
            raise torch.OutOfMemoryError(OUT_OF_MEMORY)
        return token_nll(logits, targets)

    monkeypatch.setattr(knockout_scoring, "token_nll", scarce)
    runner = knockout_scoring.KnockoutRunner(loaded.model, loaded.adapter, sequences, seeds=2, batch_size=8)
    got = runner.run(condition).to_record()
    assert batch_rows[:3] == [8, 4, 2] and max(batch_rows[3:]) == 2
    # the probe's three tries, then 4 batches each for the condition, its 2 controls and the baseline
    assert len(batch_rows) == 3 + 4 * (8 // 2)
    assert got == expected


def scarce_forward(module: torch.nn.Module, capacity: int) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """A pre-hook that makes ``module``'s forward run out of memory above ``capacity`` rows; returns
    the rows of each call and the hook's handle."""
    rows: list[int] = []

    def hook(_, args, kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        if rows[-1] > capacity:
            raise torch.OutOfMemoryError(OUT_OF_MEMORY)

    return rows, module.register_forward_pre_hook(hook, with_kwargs=True)


def test_the_sensitivity_probe_runs_an_original_and_perturbed_pass(toy_model_dir, fake_gpu):
    """The input-change pass probes its samples per batch with its own pass (two windows a
    sample); nothing of the probe is summed: the detection equals that of the backed-off size."""
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    ids = torch.randint(0, loaded.model.config.vocab_size, (6, 12), generator=torch.Generator().manual_seed(4))
    windows = TokenWindows(ids, torch.ones_like(ids), ids.numel())
    options = dict(n_samples=8, horizon=3, top_k=2)
    expected = input_change_sensitivity(loaded.model, loaded.adapter, windows, batch_size=2, **options)
    rows, handle = scarce_forward(loaded.model.base_model, capacity=2 * 2)
    head = loaded.model.get_output_embeddings().register_forward_hook(lambda *_: rows.append(-1))
    got = input_change_sensitivity(loaded.model, loaded.adapter, windows, batch_size=8, **options)
    handle.remove()
    head.remove()
    assert rows == [16, 8, 4] + [4] * 4  # the backbone only: the LM head never ran
    for layer, detection in expected.items():
        np.testing.assert_array_equal(got[layer].scores, detection.scores)
        np.testing.assert_array_equal(got[layer].indices, detection.indices)


def test_the_context_pass_probes_the_backbone(toy_model_dir, fake_gpu):
    """The neuron pages' context pass probes its windows per batch on the backbone; the contexts
    equal those of the backed-off size."""
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    ids = torch.randint(0, loaded.model.config.vocab_size, (8, 8), generator=torch.Generator().manual_seed(5))
    windows = TokenWindows(ids, torch.ones_like(ids), ids.numel())
    stats = capture_statistics(loaded.model, loaded.adapter, windows,
                               CaptureConfig(top_activations=8, batch_size=8), progress=False)
    neurons = {0: [0, 1, 2]}
    expected = top_contexts(loaded.model, loaded.adapter, windows, stats, neurons, batch_size=2)
    rows, handle = scarce_forward(loaded.model.base_model, capacity=3)
    got = top_contexts(loaded.model, loaded.adapter, windows, stats, neurons, batch_size=8)
    handle.remove()
    probe = [rows[0]]  # the windows that hold a top-k position, all in the first try
    while probe[-1] > 3:
        probe.append(probe[-1] // 2)
    assert len(probe) > 1 and rows[:len(probe)] == probe
    assert max(rows[len(probe):]) <= 3 and sum(rows[len(probe):]) == rows[0]
    assert got == expected
