"""neuronbench.calibration against hand-made detections whose answers are known, and the calibration
cases' capture."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuronbench.calibration import calibrate, calibration_rows
from neuronbench.detectors.null import NullCalibration, calibrate as null_calibrate
from neuronbench.detectors.result import Detection
from test_suite import run_suite


def detection(layer: int, indices: list[int], null: NullCalibration | None = None, **details) -> Detection:
    return Detection("test", layer, np.array(indices, dtype=np.int64), np.zeros(8), "score", {}, 100, details, null)


def test_every_outcome_is_counted() -> None:
    planted = {0: {1: "one extreme", 2: "oscillatory"}, 1: {3: "both extremes"}, 2: {0: "one extreme"}}
    detections = {0: detection(0, [1, 2, 5], types={1: "one extreme", 2: "other", 5: "oscillatory"}),
                  1: detection(1, [3], types={3: "both extremes"})}
    result = calibrate("positional", planted, detections, decode=str)
    assert result.found == ((0, 1), (1, 3))
    assert result.wrong == ((0, 2, "other", "oscillatory"),)
    assert result.missed == ((2, 0),)
    assert result.false_positives == ((0, 5),)
    assert not result.passed
    assert "L0N2 answered 'other', planted 'oscillatory'" in result.describe()
    assert "L2N0 missed" in result.describe() and "L0N5" in result.describe()


def test_token_answers_are_the_covered_tokens_and_no_null_allows_no_false_positive() -> None:
    planted = {0: {4: "a"}}
    detections = {0: detection(0, [4, 6], covered_tokens={4: np.array([97]), 6: np.array([98, 99])})}
    strict = calibrate("token", planted, detections, decode=chr)
    assert strict.found == ((0, 4),) and strict.false_positives == ((0, 6),) and not strict.passed
    assert strict.allowed_false_positives == 0 and strict.metrics()["null_count"] is None
    assert calibrate("dead", {0: {4: None, 6: None}}, detections, decode=chr).passed


def test_false_positives_are_allowed_up_to_the_null_count_plus_two_std() -> None:
    """Two layers with null p = 0.05 on 8 neurons each: null 0.8 ± 0.87, allowed ⌊2.54⌋ = 2; with
    p = 1e-6 (a null of about 0) none is allowed."""
    def layer(index: int, found: list[int], p: float = 0.05) -> Detection:
        return detection(index, found, null_calibrate("test", np.full(8, p), len(found)))

    planted = {0: {1: None}}
    two = calibrate("dead", planted, {0: layer(0, [1, 5]), 1: layer(1, [2])}, decode=str)
    assert two.metrics()["null_count"] == pytest.approx(0.8)
    assert two.metrics()["null_std"] == pytest.approx(math.sqrt(16 * 0.05 * 0.95))
    assert two.allowed_false_positives == 2 and two.passed
    three = calibrate("dead", planted, {0: layer(0, [1, 5, 6]), 1: layer(1, [2])}, decode=str)
    assert len(three.false_positives) == 3 and not three.passed
    assert "3 false positives (allowed 2)" in three.describe()
    tiny = calibrate("dead", planted, {0: layer(0, [1, 5], 1e-6)}, decode=str)
    assert tiny.allowed_false_positives == 0 and not tiny.passed


def test_report_rows_name_the_missed_and_false_neurons() -> None:
    planted = {0: {1: None, 2: None}}
    result = calibrate("dead", planted, {0: detection(0, [1, 7])}, decode=str)
    record = {"analysis": "calibration", "model": "m", "neuron_type": "dead", "metrics": result.metrics(),
              "figures": {"calibration": {"missed": result.missed, "false_positives": result.false_positives}}}
    assert calibration_rows([record, {"analysis": "dead"}]) == [
        ["m", "dead", 2, 1, 0, 1, 1, "—", 0, False, "L0N2", "L0N7"]]
    nulled = calibrate("dead", planted, {0: detection(0, [1, 7], null_calibrate("t", np.full(8, 0.1), 2))},
                       decode=str)
    record["metrics"] = nulled.metrics()
    assert calibration_rows([record])[0][7:9] == ["0.8 ± 0.849", 2]


def test_calibration_cases_compute_only_what_their_detectors_read():
    """The calibration models' capture (``@pytest.mark.capture`` per planted type): no trigram index;
    Δ only for the SSM."""
    listed = run_suite("-m", "calibration", "--collect-only")
    assert listed.returncode == 0, listed.stdout
    assert "neuronbench capture parts for planted-gpt2: moments, positional, token_counts\n" in listed.stdout
    assert "neuronbench capture parts for planted-mamba: moments, delta, positional, token_counts\n" in listed.stdout
