"""The capture parts of a selection (:mod:`fixtures.selection`), without running the suite: only
the τ-sweep case requests the sweep, so ``-k "dead and not sweep"`` captures no per-τ counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fixtures.selection import ALL_PARTS, case_parts, selected_parts
from fixtures.workspace import capture_config_of
from neuronbench.capture import CaptureConfig
from neuronbench.capture.config import DEFAULT_SWEEP
from suite import test_dead


class Case:
    """A collected case's stand-in: the function's markers and its model parameter."""

    def __init__(self, function, model: str = "m") -> None:
        self.function = function
        self.nodeid = function.__name__
        self.callspec = SimpleNamespace(params={"model_name": model})

    def iter_markers(self, name: str):
        return (mark for mark in getattr(self.function, "pytestmark", []) if mark.name == name)


def test_only_the_sweep_case_requests_the_sweep():
    cases = [Case(test_dead.test_dead), Case(test_dead.test_rarely_active)]
    assert selected_parts(cases) == {"m": frozenset()}
    assert selected_parts([*cases, Case(test_dead.test_dead_sweep)]) == {"m": frozenset({"sweep"})}


@pytest.mark.parametrize(("parts", "sweep"), [(frozenset(), ()), (frozenset({"positional"}), ()),
                                              (frozenset({"sweep"}), DEFAULT_SWEEP), (ALL_PARTS, DEFAULT_SWEEP)])
def test_the_sweep_is_captured_only_when_selected(parts, sweep):
    config = capture_config_of(parts, CaptureConfig(sweep=(0.3,)))
    assert config.sweep == sweep
    assert capture_config_of(ALL_PARTS, config).sweep == DEFAULT_SWEEP  # the full capture (cache) has it


def test_the_top_k_contexts_are_captured_only_when_selected():
    config = CaptureConfig(top_activations=20)
    assert capture_config_of(frozenset({"positional", "sweep"}), config).top_activations == 0
    assert capture_config_of(frozenset({"contexts"}), config).top_activations == 20
    assert capture_config_of(ALL_PARTS, config).top_activations == 20


def test_an_unmarked_case_reads_every_part_including_the_sweep():
    def test_unmarked():
        """A case without ``@pytest.mark.capture``."""

    assert case_parts(Case(test_unmarked)) == ALL_PARTS and "sweep" in ALL_PARTS
