"""Dead and rarely active neurons (Voita et al. 2023 §3) and the overlaps between neuron types.

Dead iff ``freq ≤ ε`` over all analysed tokens under the model's activation rule at τ. Records
Figure 1a (% dead per layer), 1b (mean frequency of the alive neurons), the τ sweep, per layer the
share of activation mass ``Σ|a|`` carried by the dead neurons and each dead neuron's max |a|, and
per layer the intersections of every pair of neuron types and of all of them.
"""

from __future__ import annotations

import pytest

from neuronbench.detectors import dead_fraction_sweep, type_overlaps
from neuronbench.detectors.figures import alive_mean_frequency, dead_percent
from neuronbench.detectors.null import null_metrics

OVERLAP_TYPES = ("dead", "rarely_active", "positional", "token")


def neurons_of(detections) -> dict[int, list[int]]:
    return {layer: detection.indices.tolist() for layer, detection in detections.items()}


def counts_of(detections) -> dict[str, int]:
    return {f"layer{layer}": int(d.indices.size) for layer, d in detections.items()}


@pytest.mark.dead
@pytest.mark.capture()
def test_dead(workspace, record):
    dead = workspace.detections("dead")
    figure_1a, figure_1b = dead_percent(dead), alive_mean_frequency(dead)
    sweep = dead_fraction_sweep(workspace.stats, eps=workspace.config.dead_freq)
    assert all(0 <= p <= 100 for p in figure_1a["dead_percent"])
    total = sum(d.width for d in dead.values())
    count = sum(int(d.indices.size) for d in dead.values())
    mass = {f"layer{layer}:dead_mass_share": d.details["mass_share"] for layer, d in dead.items()}
    peaks = {str(layer): {str(j): v for j, v in d.details["max_abs"].items()} for layer, d in dead.items()}
    record(workspace, analysis="dead", method="freq<=eps", neuron_type="dead",
           metrics={"count": count, "percent": 100.0 * count / total, **counts_of(dead), **mass,
                    "dead_max_abs": peaks, **null_metrics(dead)},
           thresholds=next(iter(dead.values())).thresholds, neurons=neurons_of(dead),
           figures={"dead": {"fig1a": figure_1a, "fig1b": figure_1b, "sweep": sweep,
                             "num_layers": workspace.loaded.adapter.num_layers}})


@pytest.mark.dead
@pytest.mark.capture()
def test_rarely_active(workspace, record):
    rare = workspace.detections("rarely_active")
    count = sum(int(d.indices.size) for d in rare.values())
    record(workspace, analysis="dead", method="0<freq<rho", neuron_type="rarely_active",
           metrics={"count": count, **counts_of(rare), **null_metrics(rare)},
           thresholds=next(iter(rare.values())).thresholds,
           neurons=neurons_of(rare))


@pytest.mark.dead
@pytest.mark.positional
@pytest.mark.ngram
@pytest.mark.capture("positional", "token_counts")
def test_type_overlaps(workspace, record):
    overlaps = type_overlaps({name: workspace.detections(name) for name in OVERLAP_TYPES})
    metrics = {}
    for layer, overlap in overlaps.items():
        metrics |= {f"layer{layer}:{name}": count for name, count in overlap.counts().items()}
    record(workspace, analysis="overlap", method="intersection", metrics=metrics,
           figures={"overlap": {str(layer): overlap.record() for layer, overlap in overlaps.items()}})
