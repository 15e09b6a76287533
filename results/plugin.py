"""The results plugin: every case's records are gathered (on the xdist controller too) and written.

A case records metrics through the ``record`` fixture. Records travel with the test report
(``user_properties``), so under pytest-xdist the controller receives every worker's records.
After each finished case ``results.json`` is rewritten atomically, so an interrupted or crashed
run leaves every finished case's results readable; at the end of the session the controller also
writes ``neurons.json``, ``stats/<model>.npz``, the figures, ``report.md``, the baselines (with
``--update-baselines``) and prints a summary table.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import pytest

from fixtures.plugin import RUN_CONFIG, runs_suite
from fixtures.workspace import ModelWorkspace, safe_name
from neuronbench.errors import NeuronbenchError
from neuronbench.storage import PACKAGE, ensure_writable_dir, remove_stale_temporaries, source_hash
from results import outputs
from results.lock import RunLock
from results.summary import sampling_notes, summary_table

RECORD_KEY = "neuronbench_record"
SCHEMA_VERSION = 1
MESSAGE_LINES = 5
"""Lines of an exception's message kept in a failure record."""
PACKAGES = ("neuronbench", "torch", "transformers", "datasets", "numpy", "pytest")


def library_versions() -> dict[str, str]:
    """The interpreter's and libraries' versions, and ``neuronbench source``: the SHA-256 of the
    package's code (:func:`neuronbench.storage.source_hash`), which names the code of a run where
    the version number does not (an edited checkout)."""
    return {"python": platform.python_version(), **{name: version(name) for name in PACKAGES},
            "neuronbench source": source_hash(PACKAGE, (".",))}


class Recorder:
    """``record(workspace, analysis=..., metrics=..., ...)`` inside a case."""

    def __init__(self, node: pytest.Item, run_dir: Path) -> None:
        self.node = node
        self.run_dir = run_dir

    def __call__(self, workspace: ModelWorkspace, *, analysis: str, method: str, metrics: dict,
                 neuron_type: str | None = None, mode: str | None = None, layer: int | None = None,
                 thresholds: dict | None = None, seed: int | None = None, neurons: dict | None = None,
                 figures: dict | None = None, arrays: dict | None = None, split: str | None = None,
                 tokens: int | None = None, baseline_key: str | None = None) -> dict:
        record = {
            "case": self.node.nodeid,
            "analysis": analysis,
            "method": method,
            "neuron_type": neuron_type,
            "mode": mode,
            "layer": layer,
            "seed": seed,
            "split": split or workspace.config.analysis_split,
            "tokens": workspace.stats.n_tokens if tokens is None else tokens,
            "thresholds": thresholds or {},
            "metrics": metrics,
            **workspace.provenance(),
            "versions": library_versions(),
        }
        if neurons is not None:
            record["neurons"] = {str(layer): sorted(int(i) for i in idx) for layer, idx in neurons.items()}
        if figures is not None:
            record["figures"] = figures
        if arrays:
            record["arrays_file"] = str(outputs.write_part(self.run_dir, workspace.name, self.node.nodeid, arrays))
        if baseline_key is not None:
            record["baseline_key"] = baseline_key
        self.node.user_properties.append((RECORD_KEY, record))
        return record


class ResultsCollector:
    """Controller-side gathering and writing of the run's outputs."""

    def __init__(self, config: pytest.Config, lock: RunLock) -> None:
        self.config = config
        self.run_config = config.stash[RUN_CONFIG]
        self.out = Path(self.run_config.out)
        self.lock = lock
        self.records: list[dict] = []
        self.failures: list[dict] = []
        self.started = datetime.now(timezone.utc).isoformat()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        fresh = []
        if report.when == "teardown":  # the teardown report carries every record of the case
            fresh = [value for key, value in report.user_properties if key == RECORD_KEY]
        self.records.extend(fresh)
        if report.failed:
            self.failures.append(failure_record(report))
        if fresh or report.failed:
            self.write_results()

    def results_payload(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "started": self.started,
            "config": self.run_config.to_record(),
            "versions": library_versions(),
            "records": self.records,
            "failures": self.failures,
        }

    def write_results(self) -> None:
        outputs.write_results(self.out, self.results_payload())

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.records and not self.failures:
            return
        self.write_results()
        outputs.write_session_outputs(self.out, self.results_payload(), self.run_config)

    def pytest_unconfigure(self) -> None:
        self.lock.release()

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.records:
            terminalreporter.section("neuronbench summary")
            terminalreporter.write_line(summary_table(self.records))
            for note in sampling_notes(self.records):
                terminalreporter.write_line(note)
            terminalreporter.write_line(f"outputs: {self.out.resolve()}")


def failure_record(report: pytest.TestReport) -> dict:
    """A failed case: its id, phase, the first :data:`MESSAGE_LINES` lines of the exception's
    message (``Type: text``) and where it was raised."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else report.longreprtext
    return {"case": report.nodeid, "when": report.when,
            "message": text.strip().splitlines()[:MESSAGE_LINES] or [""],
            "location": f"{crash.path}:{crash.lineno}" if crash is not None else None}


def open_out(out: Path) -> RunLock:
    """Before any case runs: ``--out`` must be a writable directory and not in use by another run
    (:mod:`results.lock`); temporary files that a killed run left in it are removed."""
    ensure_writable_dir(out, "--out")
    lock = RunLock(out)
    remove_stale_temporaries(out)
    return lock


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and runs_suite(config):
        try:
            lock = open_out(Path(config.stash[RUN_CONFIG].out))
        except NeuronbenchError as error:
            raise pytest.UsageError(str(error)) from error
        config.pluginmanager.register(ResultsCollector(config, lock), "neuronbench-results")


@pytest.fixture
def record(request: pytest.FixtureRequest, run_config) -> Recorder:
    return Recorder(request.node, Path(run_config.out))


__all__ = ["Recorder", "ResultsCollector", "record", "safe_name"]
