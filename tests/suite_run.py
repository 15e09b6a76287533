"""``pytest suite ARGS`` run in this test process, as a subprocess would run it but without its
interpreter start and imports (torch and transformers: about 7 s a run on 2 cores, paid by every
end-to-end test before).

The run is ``pytest.main`` with ``--import-mode=importlib`` (so ``suite/test_ablation.py`` and
``tests/test_ablation.py`` stay two modules), under the given working directory, environment
variables and ``sys.path`` entries, all restored afterwards; its terminal output is captured as
text. Everything a run computes lives in its own pytest session (the suite's state is in the
config stash), so consecutive runs share nothing but imported modules. A run that needs a
separate process (xdist workers, a killed writer) still gets one: ``-n`` starts its workers as
subprocesses.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SuiteRun:
    """What a ``subprocess.run(..., capture_output=True, text=True)`` would return."""

    returncode: int
    stdout: str
    stderr: str


def run_pytest(*args: str, cwd: Path = ROOT, env: Mapping[str, str] | None = None,
               syspath: Iterable[Path] = ()) -> SuiteRun:
    """``pytest --import-mode=importlib ARGS`` in this process (module docstring)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        for path in syspath:
            patch.syspath_prepend(str(path))
        patch.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            code = pytest.main(["--import-mode=importlib", *args])
    return SuiteRun(int(code), out.getvalue(), err.getvalue())
