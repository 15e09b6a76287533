"""The declarative suite end to end, each run a whole pytest session (in this process,
:mod:`suite_run`): disk cache, xdist aggregation, baseline regression, seed-compatible entry
points, and bad input (unknown model, failing model, interrupt)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.workspace import safe_name
from neuronbench import cli
from neuronbench.__main__ import main as neuronbench_main
from suite_run import SuiteRun, run_pytest
from neuronbench.capture import ActivationStatistics

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--max-tokens", "1024", "--dead-null-freq", "0.005", "--eval-max-tokens", "600", "--analysis-window", "32", "--max-length", "64",
         "--seeds", "2", "-p", "no:cacheprovider", "--benchmark-disable", "-q"]
VOLATILE = {"started", "cache_hit", "cache_note", "case_duration"}


def run_suite(*args: str, cwd: Path = ROOT, syspath: tuple[Path, ...] = ()) -> SuiteRun:
    """The suite on a small sample, in this process (:mod:`suite_run`)."""
    return run_pytest(str(ROOT / "suite"), *SMALL, *args, cwd=cwd, syspath=syspath,
                      env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"})


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def stable(records: list[dict]) -> list[dict]:
    """Records without run-specific fields, in case order."""
    cleaned = []
    for record in records:
        record = {k: v for k, v in record.items() if k not in VOLATILE and k != "arrays_file"}
        record["metrics"] = {k: v for k, v in record["metrics"].items() if k not in VOLATILE}
        cleaned.append(record)
    return sorted(cleaned, key=lambda r: (r["case"], r["model"], r.get("layer") or -1))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from neuronbench.toy import build_toy_model

    root = tmp_path_factory.mktemp("suite_models")
    return {family: str(build_toy_model(family, root / f"toy-{family}", initializer_range=0.2))
            for family in ("gpt2", "mamba")}


def test_second_run_uses_the_disk_cache_and_gives_identical_results(toy, tmp_path):
    common = ["--model", toy["gpt2"], "-m", "statistics", "--cache-dir", str(tmp_path / "cache")]
    first = run_suite(*common, "--out", str(tmp_path / "a"))
    second = run_suite(*common, "--out", str(tmp_path / "b"))
    assert first.returncode == 0 and second.returncode == 0, first.stdout + second.stdout
    (a,), (b,) = results(tmp_path / "a")["records"], results(tmp_path / "b")["records"]
    assert a["metrics"]["cache_hit"] is False and b["metrics"]["cache_hit"] is True
    assert stable([a]) == stable([b])
    scales = a["thresholds"]["layer_scales"]  # GPT-2's magnitude rule: each layer's s_l, also from the cache
    assert set(scales) == {"0", "1"} and all(s > 0 for s in scales.values()) and b["thresholds"]["layer_scales"] == scales
    name = f"{safe_name(toy['gpt2'])}.npz"
    with np.load(tmp_path / "a" / "stats" / name) as x, np.load(tmp_path / "b" / "stats" / name) as y:
        assert x.files == y.files and all(np.array_equal(x[f], y[f]) for f in x.files)


def test_xdist_aggregation_equals_single_process(toy, tmp_path):
    common = ["--model", toy["gpt2"], "--model", toy["mamba"], "--no-cache", "-m", "statistics or perplexity"]
    single = run_suite(*common, "--out", str(tmp_path / "single"))
    parallel = run_suite(*common, "--out", str(tmp_path / "parallel"), "-n", "2", "--dist", "loadgroup")
    assert single.returncode == 0, single.stdout
    assert parallel.returncode == 0, parallel.stdout
    one, two = results(tmp_path / "single"), results(tmp_path / "parallel")
    assert len(one["records"]) == 6
    assert stable(one["records"]) == stable(two["records"])
    assert (tmp_path / "parallel" / "report.md").is_file()


def test_unknown_model_fails_at_collection_listing_aliases(tmp_path):
    result = run_suite("--model", "gtp2", "--out", str(tmp_path))
    assert result.returncode == 4
    assert "unknown model 'gtp2'" in result.stderr and "mamba-130m" in result.stderr and "tiny-gpt2" in result.stderr


def test_a_failing_model_fails_its_own_cases_and_the_others_run(toy, tmp_path, copy_dir):
    broken = copy_dir(Path(toy["gpt2"]), "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = run_suite("--model", str(broken), "--model", toy["mamba"], "--no-cache", "-m", "statistics",
                       "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    payload = results(tmp_path / "out")
    assert [r["model"] for r in payload["records"]] == [toy["mamba"]]
    assert len(payload["failures"]) == 1 and "broken" in payload["failures"][0]["case"]
    assert "model.safetensors" in " ".join(payload["failures"][0]["message"]) or "broken" in result.stdout


def test_interrupted_run_keeps_finished_results(toy, tmp_path):
    plugin = tmp_path / "interrupt_plugin.py"
    plugin.write_text("def pytest_runtest_setup(item):\n"
                      "    if 'test_perplexity' in item.nodeid:\n"
                      "        raise KeyboardInterrupt\n")
    result = run_suite("--model", toy["gpt2"], "--no-cache", "-m", "statistics or perplexity",
                       "-p", "interrupt_plugin", "--out", str(tmp_path / "out"), syspath=(tmp_path,))
    assert result.returncode == 2
    records = results(tmp_path / "out")["records"]
    assert [r["analysis"] for r in records] == ["statistics"]


SEED_COMMANDS = {
    "main": ["-m", "statistics"],
    "ablation": ["-k", "sliding or (pruning and zero)"],
    "ngram": ["-k", "statistics or token"],
}


@pytest.mark.parametrize("command", sorted(SEED_COMMANDS))
def test_seed_entry_points_run_their_selection(toy, tmp_path, command, monkeypatch):
    """``python -m neuronbench COMMAND``: its ``python -m pytest`` command line, run in this
    process (:mod:`suite_run`) instead of the subprocess the command starts."""
    launched = []

    def in_process(command_line: list[str], cwd: Path) -> int:
        assert command_line[:3] == [sys.executable, "-m", "pytest"]
        launched.append(run_pytest(*command_line[3:], cwd=cwd, env={"MPLBACKEND": "Agg"}))
        return launched[-1].returncode

    monkeypatch.setattr(cli.subprocess, "call", in_process)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = neuronbench_main([command, "--models", toy["gpt2"], "--layer", "0", "--top_k", "3", "--text_limit", "20",
                             "--save_results", "--out", str(out), "--seeds", "2",
                             "--", *SEED_COMMANDS[command], "--no-cache", "-p", "no:cacheprovider", "--max-length", "64",
                             "--dead-null-freq", "0.005", "--eval-max-tokens", "600"])
    (result,) = launched
    assert code == result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = results(out)["records"]
    statistics = [r for r in records if r["analysis"] == "statistics"]
    analyses = {r["analysis"] for r in records}
    assert analyses == {"main": {"statistics"}, "ablation": {"perplexity", "ablation"},
                        "ngram": {"statistics", "ngram"}}[command]
    for record in statistics:
        assert record["metrics"]["n_tokens"] == 20 * 128 and record["metrics"]["n_layers"] == 1
    assert (out / "report.md").is_file() and (out / "neurons.json").is_file()


def test_baseline_regression_fails_with_both_numbers(toy, tmp_path):
    common = ["--model", toy["gpt2"], "--cache-dir", str(tmp_path / "cache"), "-m", "ablation", "-k", "pruning and zero",
              "--seeds", "0", "--baseline-dir", str(tmp_path / "baselines")]  # the later runs read the first's statistics
    made = run_suite(*common, "--update-baselines", "--out", str(tmp_path / "made"))
    assert made.returncode == 0, made.stdout
    (path,) = (tmp_path / "baselines").iterdir()
    payload = json.loads(path.read_text())
    stored = payload["conditions"]["pruning-zero"]["ppl_delta_rel"]
    assert run_suite(*common, "--baseline", "--out", str(tmp_path / "same")).returncode == 0
    payload["conditions"]["pruning-zero"]["ppl_delta_rel"] = stored + 0.5
    path.write_text(json.dumps(payload))
    failed = run_suite(*common, "--baseline", "--out", str(tmp_path / "perturbed"))
    assert failed.returncode == 1
    assert f"baseline {stored + 0.5:.6g}, now {stored:.6g}" in failed.stdout


def test_builtin_models_hold_their_committed_baselines(tmp_path):
    """The CI regression: the default suite's ablation deltas against results/baselines/. A baseline
    holds each condition's own Δppl, which does not depend on its random controls, so this runs
    none (``--seeds 0``): one evaluation per distinct condition and the baseline."""
    result = run_pytest(str(ROOT / "suite"), "-m", "ablation", "--baseline", "--seeds", "0", "--no-cache",
                        "--out", str(tmp_path), "-p", "no:cacheprovider", "--benchmark-disable", "-q",
                        env={"MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stdout[-5000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.splitlines()[-1]


MOMENTS = {"active_count", "sum", "sum_sq", "abs_sum", "max", "min"}


def cached_arrays(cache: Path, model: str) -> tuple[set[str], set[str]]:
    """``(per-layer array names, global statistics arrays)`` of the one statistics file of ``model``."""
    (path,) = cache.glob(f"{safe_name(model)}-*.npz")
    with np.load(path) as arrays:
        names = set(arrays.files)
    return ({n.split("/", 1)[1] for n in names if n.startswith("layer")},
            names & set(ActivationStatistics.GLOBAL_ARRAYS))


def test_k_dead_computes_the_moments_only(toy):
    """``-k "dead and not sweep"`` selects the dead and rarely-active cases and the dead ablations,
    which read the moments only (the τ sweep, the overlaps and the dead ∪ positional ablation are
    ``test_dead_sweep``, ``test_type_overlaps`` and ``union``); a selection that reads the sweep and
    positions computes them."""
    listed = run_suite("--model", toy["mamba"], "-k", "dead and not sweep", "--collect-only")
    assert listed.returncode == 0, listed.stdout
    assert f"neuronbench capture parts for {toy['mamba']}: moments\n" in listed.stdout
    assert "test_ablation[" in listed.stdout and "union" not in listed.stdout
    wider = run_suite("--model", toy["mamba"], "-k", "dead or union or overlaps", "--collect-only")
    assert f"neuronbench capture parts for {toy['mamba']}: moments, positional, sweep, token_counts\n" in wider.stdout


def test_dead_cases_compute_only_the_moments_and_a_wider_selection_recomputes(toy, tmp_path):
    cache = ["--model", toy["mamba"], "--cache-dir", str(tmp_path / "cache")]
    moments = run_suite(*cache, "-m", "dead and not positional", "-k", "not sweep", "--out", str(tmp_path / "a"))
    assert moments.returncode == 0, moments.stdout
    cases = {r["case"].split("::")[1].split("[")[0] for r in results(tmp_path / "a")["records"]}
    assert cases == {"test_dead", "test_rarely_active"}
    per_layer, shared = cached_arrays(tmp_path / "cache", toy["mamba"])
    assert MOMENTS <= per_layer and shared == set()
    optional = {n for n in per_layer if n.startswith(("sweep_", "pos_", "pearson", "token_", "trigram", "log_delta"))}
    assert optional == set()  # no τ sweep, positions, per-token, trigram or Δ statistics
    wider = run_suite(*cache, "-m", "statistics or positional", "-k", "not overlaps", "--out", str(tmp_path / "b"))
    assert wider.returncode == 0, wider.stdout
    (statistics,) = [r for r in results(tmp_path / "b")["records"] if r["analysis"] == "statistics"]
    assert statistics["metrics"]["cache_hit"] is False  # the moments-only cache does not serve it
    files = sorted((tmp_path / "cache").glob(f"{safe_name(toy['mamba'])}-*.npz"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2
    with np.load(files[-1]) as arrays:
        assert "layer0/pos_active" in arrays.files and "layer0/token_active_tier0" not in arrays.files
