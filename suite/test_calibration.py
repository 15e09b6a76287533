"""Calibration: the suite checks its own detectors on every run.

Each calibration model of :data:`neuronbench.zoo.planted.PLANTED` (``planted-gpt2``: tiny-gpt2
with documented dead, token-detecting and positional neurons; ``planted-mamba``: tiny-mamba with
dead, token-detecting, positional and Δ-sensitive channels, all planted into its weights) is
analysed by the same detectors, with the same thresholds and activation rule, as every other
case, on a fixed sample (:data:`SAMPLE`: 20,000 tokens of pydocs train in windows of 128, the
planted position profiles' length, all layers), whatever the run's data options; so that the
answer is known however the run is configured. The Δ detector reports its top ``top_k = 1``
channel per layer: planted-mamba plants one Δ-sensitive channel per layer, which must be it.

A case fails unless every planted neuron of its type is found with the planted answer (covered
token, positional type) and the detector finds at most ``⌈null_count + 2 · null_std⌉`` neurons
outside the planted set, its own null count over all layers plus two standard deviations
(:mod:`neuronbench.calibration`). Each case captures only the statistics its detector reads
(``@pytest.mark.capture``, :mod:`fixtures.selection`).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fixtures.workspace import ModelWorkspace, safe_name
from neuronbench.calibration import calibrate
from neuronbench.zoo.planted import PLANTED, WINDOW

pytestmark = pytest.mark.calibration
SAMPLE = dict(dataset="pydocs", analysis_split="train", layers="all", analysis_window=WINDOW, max_tokens=20_000,
              top_k=1)
CAPTURE = {"dead": (), "token": ("token_counts",), "positional": ("positional",), "delta": ("delta",)}
"""The capture parts each planted type's detector reads (the moments are always computed)."""


@pytest.fixture(scope="session")
def calibration_workspaces(run_config, capture_parts) -> dict[str, ModelWorkspace]:
    config = replace(run_config, **SAMPLE)
    return {name: ModelWorkspace(name, config, capture_parts.get(name, frozenset())) for name in PLANTED}


CASES = [pytest.param(name, kind, id=f"{kind}-{name}",
                      marks=[pytest.mark.xdist_group(safe_name(name)), pytest.mark.capture(*CAPTURE[kind])])
         for name, spec in PLANTED.items() for kind in spec.kinds]


@pytest.mark.parametrize(("planted_name", "neuron_type"), CASES)
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
