"""neuronbench.calibration against hand-made detections whose answers are known."""

from __future__ import annotations

import numpy as np

from neuronbench.calibration import calibrate, calibration_rows
from neuronbench.detectors.result import Detection


def detection(layer: int, indices: list[int], **details) -> Detection:
    return Detection("test", layer, np.array(indices, dtype=np.int64), np.zeros(8), "score", {}, 100, details)


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


def test_token_answers_are_the_covered_tokens_and_false_positives_may_be_allowed() -> None:
    planted = {0: {4: "a"}}
    detections = {0: detection(0, [4, 6], covered_tokens={4: np.array([97]), 6: np.array([98, 99])})}
    strict = calibrate("token", planted, detections, decode=chr)
    assert strict.found == ((0, 4),) and strict.false_positives == ((0, 6),) and not strict.passed
    assert calibrate("token", planted, detections, decode=chr, allowed_false_positives=1).passed
    assert calibrate("dead", {0: {4: None, 6: None}}, detections, decode=chr).passed


def test_report_rows_name_the_missed_and_false_neurons() -> None:
    planted = {0: {1: None, 2: None}}
    result = calibrate("dead", planted, {0: detection(0, [1, 7])}, decode=str)
    record = {"analysis": "calibration", "model": "m", "neuron_type": "dead", "metrics": result.metrics(),
              "figures": {"calibration": {"missed": result.missed, "false_positives": result.false_positives}}}
    assert calibration_rows([record, {"analysis": "dead"}]) == [
        ["m", "dead", 2, 1, 0, 1, 1, 0, False, "L0N2", "L0N7"]]
