"""Calibration: the suite checks its own detectors on every run.

Each calibration model of :data:`neuronbench.zoo.planted.PLANTED` (``planted-gpt2``: tiny-gpt2
with documented dead, token-detecting and positional neurons planted into its weights) is
analysed by the same detectors, with the same thresholds, as every other case, on a fixed
sample (:data:`SAMPLE`: the suite's default 50,000 tokens of pydocs train in windows of 128, the
planted position profiles' length, all layers), whatever the run's data options; so that the
answer is known however the run is configured. The case fails unless every planted
neuron is found with the planted answer (covered token, positional type) and the detector finds
no neuron outside the planted set (:mod:`neuronbench.calibration`).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fixtures.workspace import ModelWorkspace, safe_name
from neuronbench.calibration import calibrate
from neuronbench.zoo.planted import PLANTED, WINDOW

pytestmark = pytest.mark.calibration
PLANTED_TYPES = ("dead", "token", "positional")
SAMPLE = dict(dataset="pydocs", analysis_split="train", layers="all", analysis_window=WINDOW, max_tokens=50_000)


@pytest.fixture(scope="session")
def calibration_workspaces(run_config) -> dict[str, ModelWorkspace]:
    config = replace(run_config, **SAMPLE)
    return {name: ModelWorkspace(name, config) for name in PLANTED}


@pytest.mark.parametrize("planted_name", [pytest.param(name, marks=pytest.mark.xdist_group(safe_name(name)))
                                          for name in PLANTED])
@pytest.mark.parametrize("neuron_type", PLANTED_TYPES)
def test_calibration(calibration_workspaces, record, planted_name, neuron_type):
    workspace = calibration_workspaces[planted_name]
    detections = workspace.detections(neuron_type)
    tokenizer = workspace.loaded.tokenizer
    result = calibrate(neuron_type, PLANTED[planted_name].expected(neuron_type), detections,
                       decode=lambda token: tokenizer.decode([token]))
    record(workspace, analysis="calibration", method="planted", neuron_type=neuron_type,
           metrics=result.metrics(), thresholds=next(iter(detections.values())).thresholds,
           neurons={layer: [i for l, i in result.found if l == layer] for layer in detections},
           figures={"calibration": {"planted": result.planted, "found": result.found, "wrong": result.wrong,
                                    "missed": result.missed, "false_positives": result.false_positives}})
    assert result.passed, result.describe()
