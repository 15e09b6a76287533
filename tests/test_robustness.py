"""Bad input, NaN, corrupt caches, concurrent runs and interrupted writes (issue 11).

One test per row of the issue's table. End-to-end behaviour runs in as few suite runs as
possible (one for the broken models, in this process; in subprocesses, one for a locked ``--out``, which also shows a
usage error exiting with code 4 before any case, and one for the seed CLI); the rest calls the very
functions the plugins call before any case runs (``configured_run``, ``open_out``,
``ensure_writable_dir``) or the workspace itself.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.plugin import configured_run
from neuronbench.adapters import ADAPTERS
from fixtures.workspace import ModelWorkspace
from neuronbench.capture import CaptureConfig, NeuronLayout, StatisticsCollector
from neuronbench.cli import parser, pytest_arguments
from neuronbench.config import run_config_from
from neuronbench.errors import (
    CacheError,
    CaptureError,
    ConfigError,
    CorpusError,
    LayerRangeError,
    NeuronbenchError,
    NonFiniteActivationError,
    UnsupportedArchitectureError,
)
from neuronbench.models import check_tokenizer
from neuronbench.storage import (
    CAPTURE_SOURCES,
    PACKAGE,
    source_hash,
    content_sha256,
    ensure_writable_dir,
    load_statistics,
    remove_stale_temporaries,
    save_statistics,
)
from results.lock import RunLock
from results.plugin import library_versions, open_out
from suite_run import SuiteRun, run_pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--max-tokens", "1024", "--analysis-window", "32", "-p", "no:cacheprovider", "--benchmark-disable", "-q"]


def environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg",
            "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run_suite(*args: str) -> subprocess.CompletedProcess:
    """The suite in a subprocess: a run that must be another process (the lock holder is this one)."""
    return subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "suite"), *SMALL, *args], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=600)


def nothing_claims_success(out: Path) -> None:
    """No results, neurons or report were written (an out directory may exist, holding the lock)."""
    assert not any((out / name).exists() for name in ("results.json", "neurons.json", "report.md"))


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory) -> dict[str, Path]:
    """A toy GPT-2 (``good``), a copy without tokenizer files and a copy with a NaN in layer 1."""
    from safetensors.torch import load_file, save_file

    from neuronbench.toy import build_toy_model

    root = tmp_path_factory.mktemp("broken")
    good = build_toy_model("gpt2", root / "good")
    no_tokenizer = root / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(good / name, no_tokenizer / name)
    nan = Path(shutil.copytree(good, root / "nan-weights"))
    weights = load_file(nan / "model.safetensors")
    weights["transformer.h.1.mlp.c_fc.weight"][0, 3] = float("nan")
    save_file(weights, nan / "model.safetensors", metadata={"format": "pt"})
    t5 = root / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}))
    return {"good": good, "no-tokenizer": no_tokenizer, "nan-weights": nan, "t5": t5}


@pytest.fixture(scope="module")
def broken_run(broken_models, tmp_path_factory) -> tuple[SuiteRun, Path, Path]:
    """One suite run (in this process, :mod:`suite_run`) over the model without tokenizer files and
    the model with a NaN weight: the capture cases and the perplexity cases."""
    root = tmp_path_factory.mktemp("broken_run")
    result = run_pytest(str(ROOT / "suite"), *SMALL, "--model", str(broken_models["no-tokenizer"]),
                        "--model", str(broken_models["nan-weights"]), "-m", "statistics or dead or perplexity",
                        "--eval-max-tokens", "200", "--max-length", "64", "--cache-dir", str(root / "cache"),
                        "--out", str(root / "out"), env={"MPLBACKEND": "Agg"})
    return result, root / "out", root / "cache"


def failures_of(out: Path, model: str) -> list[dict]:
    return [f for f in json.loads((out / "results.json").read_text())["failures"]
            if f"[{model}]" in f["case"] or f"[{model}-" in f["case"]]


# -- rows: no tokenizer files, NaN weights, failure records keep the message ----------------------


def test_model_without_tokenizer_files_fails_naming_them(broken_run):
    result, out, cache = broken_run
    assert result.returncode == 1, result.stdout[-3000:]
    failures = failures_of(out, "no-tokenizer")
    assert len(failures) == 6  # statistics, dead, dead_sweep, rarely_active, 2 perplexity: every case of it
    message = " ".join(failures[0]["message"])
    assert "ModelLoadError" in message and "no tokens" in message and "tokenizer.json" in message
    records = json.loads((out / "results.json").read_text())["records"]
    assert records == []  # nothing claims success ...
    assert not list(cache.glob("*.npz"))  # ... and no cache was written


def test_nan_weights_fail_the_capture_naming_model_layer_tensor_batch(broken_run):
    result, out, cache = broken_run
    failures = [f for f in failures_of(out, "nan-weights") if "test_perplexity" not in f["case"]]
    assert {f["case"].split("::")[1].split("[")[0] for f in failures} == {
        "test_statistics", "test_dead", "test_dead_sweep", "test_rarely_active"}
    message = " ".join(failures[0]["message"])
    assert "NonFiniteActivationError" in message and "nan-weights" in message
    assert "layer 1" in message and "'blocks.1.neurons'" in message and "batch 0" in message
    assert "dead" not in json.loads((out / "neurons.json").read_text())


def test_nan_weights_fail_perplexity_naming_the_window(broken_run):
    _, out, _ = broken_run
    failures = {f["case"].split("-")[-1]: f["message"][0] for f in failures_of(out, "nan-weights")
                if "test_perplexity" in f["case"]}
    assert failures["rolling]"].startswith("neuronbench.errors.NonFiniteLossError: non-finite negative "
                                           "log-likelihood (nan) in window 0 (document 0")
    # the sliding case's runner computes no statistics (only mean-ablation reads them): it fails on the loss
    assert failures["sliding]"].startswith("neuronbench.errors.NonFiniteLossError: non-finite negative ")


def test_failure_records_and_report_keep_the_exception_message(broken_run):
    _, out, _ = broken_run
    failure = failures_of(out, "nan-weights")[0]
    assert failure["location"].endswith(".py:" + failure["location"].rsplit(":", 1)[1])
    assert "non-finite activations in layer 1" in failure["message"][0]
    assert "non-finite activations in layer 1" in (out / "report.md").read_text()


@pytest.mark.parametrize("path", ["C reductions", "GPU code path"])
def test_finite_values_beyond_float32_sums_are_exact_in_c_and_an_error_on_the_gpu_code_path(path, request):
    """Finite activations whose float32 sums overflow (3e38: Σ a and Σ a² of a batch): the C
    reductions sum in double and keep the moments exact; the GPU code path's float32 partial sums
    would make them inf, and the capture says so instead, naming the tensor and its largest |a|."""
    from neuronbench.capture import native

    if path == "GPU code path":
        request.getfixturevalue("gpu_code_path")
    elif native.library() is None:
        pytest.skip(f"the C library is not available here: {native.UNAVAILABLE}")
    collector = StatisticsCollector(NeuronLayout(num_layers=1, width=4), CaptureConfig(
        positional=False, token_counts=False, trigrams=False), 3, 10, torch.device("cpu"))
    ids, mask = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    huge = torch.full((2, 3, 4), 1e19)
    huge[1, 2, 1] = 3e38
    if path == "GPU code path":
        with pytest.raises(CaptureError, match=r"batch 0, 'blocks.0.neurons' \(largest \|a\| 3e\+38\) hold only "
                                               r"finite values, but their float32 sums of a or a² overflow"):
            collector.feed(ids, mask, {"blocks.0.neurons": huge})
        return
    collector.feed(ids, mask, {"blocks.0.neurons": huge})
    got = collector.result().layer(0)
    exact = huge.double().flatten(0, 1)
    np.testing.assert_allclose(got["sum"], exact.sum(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(got["sum_sq"], (exact ** 2).sum(0).numpy(), rtol=1e-12)


def test_finite_check_costs_one_reduction_and_names_the_batch():
    layout = NeuronLayout(num_layers=1, width=4)
    config = CaptureConfig(positional=False, token_counts=False, trigrams=False)
    collector = StatisticsCollector(layout, config, 3, 10, torch.device("cpu"))
    ids, mask = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    collector.feed(ids, mask, {"blocks.0.neurons": torch.ones(2, 3, 4)})
    bad = torch.zeros(2, 3, 4)
    bad[1, 2, 3] = float("-inf")
    with pytest.raises(NonFiniteActivationError, match=r"layer 0, tensor 'blocks.0.neurons'.*batch 1.*\(1, 2, 3\)"):
        collector.feed(ids, mask, {"blocks.0.neurons": bad})
    ssm = StatisticsCollector(NeuronLayout(num_layers=2, width=4, has_ssm=True), config, 3, 10, torch.device("cpu"))
    delta = torch.ones(2, 3, 4)
    delta[0, 1, 2] = float("nan")
    with pytest.raises(NonFiniteActivationError, match=r"layer 1, tensor 'blocks.1.ssm.delta' \(ssm.delta\), batch 0"):
        ssm.feed(ids, mask, {"blocks.0.neurons": bad[:1].expand(2, 3, 4) * 0, "blocks.1.ssm.delta": delta})


def test_a_nan_weight_is_located_by_one_more_forward_pass(broken_models):
    """A capture reads the batch's checksums once, after the forward pass; a non-finite one runs
    the batch's forward once more, scanning only the failed tensors, and names the first NaN."""
    from neuronbench.capture import capture_statistics
    from neuronbench.data import TokenWindows
    from neuronbench.models import load_model

    loaded = load_model(str(broken_models["nan-weights"]), device="cpu", dtype="float32")
    ids = torch.randint(0, loaded.model.config.vocab_size, (4, 6), generator=torch.Generator().manual_seed(0))
    forwards: list[int] = []
    handle = loaded.model.base_model.register_forward_pre_hook(lambda *_: forwards.append(1))
    with pytest.raises(NonFiniteActivationError,
                       match=r"layer 1, tensor 'blocks.1.neurons' \(neurons\), batch 0: 12 of 1536 values are NaN "
                             r"or inf, the first at index \(0, 0, 3\)"):
        capture_statistics(loaded.model, loaded.adapter, TokenWindows(ids, torch.ones_like(ids), ids.numel()),
                           CaptureConfig(batch_size=2, activation="positive"), progress=False)
    handle.remove()
    assert len(forwards) == 2  # an absolute rule: no layer-scale pass


def test_a_replay_that_hands_nothing_over_is_an_error():
    """A non-finite checksum is never let through because the tensors were not handed over again."""
    config = CaptureConfig(token_counts=False, trigrams=False)
    collector = StatisticsCollector(NeuronLayout(num_layers=1, width=4), config, 3, 10, torch.device("cpu"))
    ids = torch.zeros(2, 3, dtype=torch.long)
    collector.start_batch(ids, torch.ones_like(ids))
    collector.receive("blocks.0.neurons", torch.full((2, 3, 4), float("nan")))
    with pytest.raises(CaptureError, match=r"\['blocks.0.neurons'\] had a non-finite checksum in batch 0, but"):
        collector.end_batch(replay=lambda: None)


def test_a_delta_that_underflowed_to_zero_fails_instead_of_a_nan_spread():
    config = CaptureConfig(positional=False, token_counts=False, trigrams=False)
    ssm = StatisticsCollector(NeuronLayout(num_layers=1, width=4, has_ssm=True), config, 3, 10, torch.device("cpu"))
    ids, mask = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    delta = torch.full((2, 3, 4), 0.5)
    delta[1, 0, 3] = 0.0  # softplus of a very negative argument in float32
    with pytest.raises(NonFiniteActivationError, match=r"ssm.delta.*≤ 0 \(log Δ undefined\).*\(1, 0, 3\)"):
        ssm.feed(ids, mask, {"blocks.0.neurons": torch.ones(2, 3, 4), "blocks.0.ssm.delta": delta})


def test_probe_text_must_give_tokens(broken_models):
    from transformers import AutoTokenizer

    check_tokenizer(AutoTokenizer.from_pretrained(broken_models["good"]), str(broken_models["good"]))
    with pytest.raises(NeuronbenchError, match="missing from .*tokenizer.json, tokenizer_config.json"):
        check_tokenizer(AutoTokenizer.from_pretrained(broken_models["no-tokenizer"]),
                        str(broken_models["no-tokenizer"]))


# -- rows: option values, devices, T5, layers ---------------------------------------------------


USAGE_ERRORS = {
    "threshold nan": ({"threshold": float("nan")}, ConfigError, ["--threshold nan", "finite"]),
    "dead-freq inf": ({"dead_freq": float("inf")}, ConfigError, ["--dead-freq inf", "[0, 1]"]),
    "pruning 1": ({"pruning_ratio": 1.0}, ConfigError, ["--pruning-ratio 1.0", "(0, 1)"]),
    "layers 3-1": ({"layers": "3-1"}, LayerRangeError, ["'3-1'", "reversed", "1-3"]),
    "seeds 1": ({"seeds": 1}, ConfigError, ["--seeds 1", "0 (no random controls) or integers ≥ 2"]),
    "batch-size 0": ({"batch_size": 0}, ConfigError, ["--batch-size 0", "integers ≥ 1"]),
    "top-k 0": ({"top_k": 0}, ConfigError, ["--top-k 0", "integers ≥ 1"]),
    "device tpu7": ({"device": "tpu7"}, ConfigError, ["--device 'tpu7'", "devices on this machine: auto, cpu"]),
    "max-tokens 10": ({"max_tokens": 10}, ConfigError, ["--max-tokens 10", "--min-tokens 1000"]),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_bad_option_values_are_usage_errors_naming_option_value_and_range(case, tmp_path):
    values, error, parts = USAGE_ERRORS[case]
    with pytest.raises(error) as raised:
        configured_run({**values, "out": str(tmp_path / "out")})
    assert all(part in str(raised.value) for part in parts), str(raised.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_lists_the_devices_here():
    with pytest.raises(ConfigError, match=r"--device 'cuda' does not exist on this machine; devices on this "
                                          r"machine: auto, cpu"):
        run_config_from({"device": "cuda"})


def test_unsupported_model_type_lists_supported_ones_in_one_line(broken_models):
    with pytest.raises(UnsupportedArchitectureError) as raised:
        configured_run({"models": [str(broken_models["t5"])]})
    message = str(raised.value)
    assert "'t5'" in message and "\n" not in message
    assert f"supported model types: {', '.join(sorted(ADAPTERS))}." in message


# -- rows: corpus too small ---------------------------------------------------------------------


def test_a_ten_token_corpus_is_an_error_naming_the_minimum(broken_models, tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("one two three four five six seven eight nine ten\n")
    config = run_config_from({"dataset": str(corpus), "max_tokens": 0, "no_cache": True, "device": "cpu"})
    workspace = ModelWorkspace(str(broken_models["good"]), config)
    with pytest.raises(CorpusError, match=r"gives \d+ analysis tokens, fewer than the minimum of 1000 "
                                          r"\(--min-tokens\)"):
        workspace.stats


# -- rows: corrupt caches, stray temporary files ------------------------------------------------


def _cached_workspace(model: Path, cache: Path) -> ModelWorkspace:
    config = run_config_from({"max_tokens": 1024, "analysis_window": 32, "cache_dir": str(cache), "device": "cpu"})
    return ModelWorkspace(str(model), config)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_bit(path: Path) -> None:
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 3] ^= 0x10
    path.write_bytes(bytes(payload))


def _edit_active_count(path: Path) -> None:
    """A still valid npz whose layer 0 ``active_count`` exceeds the token count."""
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["layer0/active_count"] = arrays["layer0/active_count"] + 10**6
    np.savez_compressed(path, **arrays)


CORRUPTIONS = {"truncated": (_truncate, "unreadable or truncated"), "bit-flipped": (_flip_a_bit, "cache file"),
               "edited": (_edit_active_count, "fails its content hash")}


def test_corrupt_caches_are_reported_with_their_path_and_recomputed(broken_models, tmp_path):
    first = _cached_workspace(broken_models["good"], tmp_path / "cache")
    reference = first.stats
    path = first.stats_path
    assert first.cache_hit is False and path.is_file()
    for name, (corrupt, reason) in CORRUPTIONS.items():
        corrupt(path)
        with pytest.raises(CacheError, match=reason):
            load_statistics(path, key=first.cache_key())
        again = _cached_workspace(broken_models["good"], tmp_path / "cache")
        with pytest.warns(UserWarning, match=str(path)):
            stats = again.stats
        assert again.cache_hit is False and str(path) in again.cache_note and "recomputed" in again.cache_note, name
        assert all(np.array_equal(stats.layers[0][k], reference.layers[0][k]) for k in reference.layers[0])
        assert load_statistics(path, key=first.cache_key()).n_tokens == reference.n_tokens  # rewritten, valid
    with pytest.raises(CacheError, match="made for key"):
        load_statistics(path, key="another key")
    hit = _cached_workspace(broken_models["good"], tmp_path / "cache")
    hit.stats
    assert hit.cache_hit is True


def test_the_cache_key_names_the_capture_code(tmp_path, monkeypatch):
    """Statistics made by other capture code are not served, whatever the version says: an edit of
    a capture source changes its hash, and the hash is part of the key."""
    (tmp_path / "capture").mkdir()
    (tmp_path / "capture" / "rows.c").write_text("int x;")
    (tmp_path / "capture" / "notes.txt").write_text("not code")
    (tmp_path / "names.py").write_text("A = 1")
    sources = ("capture", "names.py")
    before = source_hash(tmp_path, sources)
    (tmp_path / "capture" / "notes.txt").write_text("still not code")
    assert source_hash.__wrapped__(tmp_path, sources) == before
    (tmp_path / "capture" / "rows.c").write_text("int y;")
    assert source_hash.__wrapped__(tmp_path, sources) != before
    with pytest.raises(ConfigError, match="gone.py does not exist"):
        source_hash(tmp_path, ("gone.py",))
    assert len(source_hash(PACKAGE, CAPTURE_SOURCES)) == 16  # every listed source exists
    assert library_versions()["neuronbench source"] == source_hash(PACKAGE, (".",)) != source_hash()

    workspace = ModelWorkspace("tiny-gpt2", run_config_from({"cache_dir": str(tmp_path), "device": "cpu"}))
    monkeypatch.setattr(ModelWorkspace, "capture_config", CaptureConfig())
    monkeypatch.setattr("fixtures.workspace.source_hash", lambda: "code A")
    first = workspace.cache_key()
    monkeypatch.setattr("fixtures.workspace.source_hash", lambda: "code B")
    assert workspace.cache_key() != first


def test_stray_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    from neuronbench.storage import _HOST

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "sub" / f".model.npz.{int(dead.stdout)}@{_HOST}.k2j3h4.tmp"
    live = tmp_path / f".model.npz.{os.getpid()}@{_HOST}.a8d7f6.tmp"
    elsewhere = tmp_path / f".model.npz.{int(dead.stdout)}@another-host.a8d7f6.tmp"
    for path in (stale, live, elsewhere):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and elsewhere.exists()


# -- rows: concurrent runs, non-writable --out or cache dir -------------------------------------


def test_second_run_on_the_same_out_refuses_at_start_naming_the_first(tmp_path):
    out = tmp_path / "out"
    holder = open_out(out)
    try:
        result = run_suite("--out", str(out), "--no-cache")
    finally:
        holder.release()
    assert result.returncode == 4
    assert "is in use by another neuronbench run" in result.stderr and f'"pid": {os.getpid()}' in result.stderr
    assert "Traceback" not in result.stderr
    nothing_claims_success(out)
    RunLock(out).release()  # released: the next run gets it


@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
def test_non_writable_directories_are_usage_errors(flag, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"{flag} '.*a-file/sub' is not a writable directory"):
        ensure_writable_dir(blocker / "sub", flag)
    with pytest.raises(ConfigError, match="--out .* is not a writable directory"):
        open_out(blocker / "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only directories")
def test_read_only_out_is_a_usage_error(tmp_path):
    out = tmp_path / "read-only"
    out.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="is not a writable directory"):
        open_out(out)


# -- rows: the seed-compatible CLI ----------------------------------------------------------------


def test_seed_cli_prints_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "neuronbench", "main", "--text_limit", "0", "--save_results",
                             "--out", "rel_out"], cwd=tmp_path, env=environment(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("python -m neuronbench main: error: --text_limit 0 is not valid: valid values "
                                     "are integers ≥ 1")
    assert not (tmp_path / "rel_out").exists()


def test_seed_cli_resolves_relative_paths_against_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "corpus.txt").write_text("text")
    monkeypatch.chdir(tmp_path)
    args = parser("main").parse_args(["--out", "rel_out", "--dataset", "corpus.txt", "--models", "tiny-gpt2"])
    arguments = pytest_arguments("main", args, args.out)
    assert arguments[arguments.index("--out") + 1] == str(tmp_path / "rel_out")
    assert arguments[arguments.index("--dataset") + 1] == str(tmp_path / "corpus.txt")
    assert arguments[arguments.index("--model") + 1] == "tiny-gpt2"


# -- fault injection: SIGKILL while writing results and cache -----------------------------------


CASES = 6


def _case_statistics(reference, case: int):
    """Deterministic per-case statistics (the reference capture, scaled by the case number)."""
    from dataclasses import replace

    layers = {layer: {name: value * (case + 1) for name, value in arrays.items()}
              for layer, arrays in reference.layers.items()}
    return replace(reference, layers=layers)


def _writer(out: Path, cache: Path, reference) -> None:
    """What a run does per case, with the real functions: use the verified cache or compute and save
    it, then rewrite ``results.json`` with every finished case."""
    from results import outputs

    remove_stale_temporaries(out)
    remove_stale_temporaries(cache)
    records = []
    for case in range(CASES):
        path, key = cache / f"case{case}.npz", f"key{case}"
        try:
            stats = load_statistics(path, key=key)
        except CacheError:
            stats = _case_statistics(reference, case)
            save_statistics(stats, path, key=key)
        digest = content_sha256({f"{layer}/{name}": value for layer, arrays in stats.layers.items()
                                 for name, value in arrays.items()})
        records.append({"case": f"case{case}", "n_tokens": stats.n_tokens, "stats_sha256": digest})
        outputs.write_results(out, {"schema_version": 1, "records": records, "failures": []})


def _stalled_writer(out: Path, cache: Path, reference) -> None:
    """The writer stuck inside an atomic write, after its temporary file is written and before it
    is moved into place (where a kill leaves an orphan)."""
    os.replace = lambda *args: time.sleep(3600)
    _writer(out, cache, reference)


def _finished_cases(out: Path) -> int:
    try:
        return len(json.loads((out / "results.json").read_text())["records"])
    except (OSError, ValueError):
        return 0


def _run_writer(out: Path, cache: Path, reference, kill: tuple[int, float] | None, stall: bool = False) -> bool:
    """Run the writer in a forked process; with ``kill = (cases, seconds)`` SIGKILL it that long
    after it has finished that many cases (the same random point however loaded the machine is),
    with ``stall`` once it is stuck mid-write. Returns whether the kill interrupted it."""
    target = _stalled_writer if stall else _writer
    process = multiprocessing.get_context("fork").Process(target=target, args=(out, cache, reference))
    process.start()
    deadline = time.monotonic() + 60
    if stall:
        while not list(out.rglob("*.tmp")) + list(cache.rglob("*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.005)
    elif kill is not None:
        while _finished_cases(out) < kill[0] and process.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(kill[1])
    if stall or kill is not None:
        os.kill(process.pid, signal.SIGKILL)
    process.join(60)
    assert process.exitcode in (0, -signal.SIGKILL)
    return process.exitcode == -signal.SIGKILL


def _check_readable(out: Path, cache: Path) -> int:
    """Every written file is whole: results.json parses, every cache file verifies. Returns the
    number of temporary files the killed writer left."""
    if (out / "results.json").exists():
        records = json.loads((out / "results.json").read_text())["records"]
        assert [r["case"] for r in records] == [f"case{i}" for i in range(len(records))]
    for path in cache.glob("case*.npz"):
        load_statistics(path, key=path.stem.replace("case", "key"))
    return len(list(out.rglob("*.tmp"))) + len(list(cache.rglob("*.tmp")))


def test_sigkill_while_writing_leaves_everything_readable_and_the_rerun_equal(broken_models, tmp_path):
    workspace = _cached_workspace(broken_models["good"], tmp_path / "capture")
    reference = workspace.stats
    clean_out, clean_cache = tmp_path / "clean" / "out", tmp_path / "clean" / "cache"
    start = time.monotonic()
    _run_writer(clean_out, clean_cache, reference, None)
    duration = time.monotonic() - start
    out, cache = tmp_path / "killed" / "out", tmp_path / "killed" / "cache"
    rng = random.Random(0)
    interrupted = orphans = 0
    for attempt in range(20):
        for stale in cache.glob("case*.npz"):  # some cases need recomputing on every try
            if rng.random() < 0.3:
                stale.unlink()
        kill = (rng.randrange(CASES), rng.uniform(0.0, duration / CASES))
        interrupted += _run_writer(out, cache, reference, kill, stall=attempt % 5 == 4)
        orphans += _check_readable(out, cache) > 0
    assert interrupted >= 12 and orphans >= 4  # kills landed mid-run, and mid-write
    _run_writer(out, cache, reference, None)
    assert not list(out.rglob("*.tmp")) and not list(cache.rglob("*.tmp"))
    assert (out / "results.json").read_bytes() == (clean_out / "results.json").read_bytes()
    with zipfile.ZipFile(cache / "case0.npz") as archive:
        assert "integrity" in {Path(name).stem for name in archive.namelist()}
