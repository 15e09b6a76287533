"""Dead and rarely active neurons (Voita et al. 2023 §3).

Dead iff ``freq ≤ ε`` over all analysed tokens under the model's activation rule at τ. Records
Figure 1a (% dead per layer), 1b (mean frequency of the alive neurons), per layer the share of
activation mass ``Σ|a|`` carried by the dead neurons and each dead neuron's max |a|; and, as its
own case, the τ sweep (dead % per layer at every τ of the sweep). These cases read the moments
(and the sweep's per-τ counts, capture part ``sweep``) only, so ``-k dead`` computes no positional,
per-token, trigram or Δ statistics, and ``-k "dead and not sweep"`` no sweep either (the overlaps
between types are ``suite/test_overlaps.py``).
"""

from __future__ import annotations

import pytest

from neuronbench.detectors import dead_fraction_sweep
from neuronbench.detectors.figures import alive_mean_frequency, dead_percent
from neuronbench.detectors.null import null_metrics

def neurons_of(detections) -> dict[int, list[int]]:
    return {layer: detection.indices.tolist() for layer, detection in detections.items()}


def counts_of(detections) -> dict[str, int]:
    return {f"layer{layer}": int(d.indices.size) for layer, d in detections.items()}


@pytest.mark.dead
@pytest.mark.capture()
def test_dead(workspace, record):
    dead = workspace.detections("dead")
    figure_1a, figure_1b = dead_percent(dead), alive_mean_frequency(dead)
    assert all(0 <= p <= 100 for p in figure_1a["dead_percent"])
    total = sum(d.width for d in dead.values())
    count = sum(int(d.indices.size) for d in dead.values())
    mass = {f"layer{layer}:dead_mass_share": d.details["mass_share"] for layer, d in dead.items()}
    peaks = {str(layer): {str(j): v for j, v in d.details["max_abs"].items()} for layer, d in dead.items()}
    record(workspace, analysis="dead", method="freq<=eps", neuron_type="dead",
           metrics={"count": count, "percent": 100.0 * count / total, **counts_of(dead), **mass,
                    "dead_max_abs": peaks, **null_metrics(dead)},
           thresholds=next(iter(dead.values())).thresholds, neurons=neurons_of(dead),
           figures={"dead": {"fig1a": figure_1a, "fig1b": figure_1b,
                             "num_layers": workspace.loaded.adapter.num_layers}})


@pytest.mark.dead
@pytest.mark.capture("sweep")
def test_dead_sweep(workspace, record):
    """Dead % per layer at every τ_s of the sweep: ``#{j : sweep_count_j(τ_s)/n ≤ ε} / W``, with the
    dead detector's null count, which is the same at every τ_s (it depends on ``n``, ε and ρ₀ only:
    :func:`~neuronbench.detectors.dead.detect_dead`)."""
    sweep = dead_fraction_sweep(workspace.stats, eps=workspace.config.dead_freq)
    assert all(0 <= p <= 100 for row in sweep["dead_percent"] for p in row)
    null = {k: v for k, v in null_metrics(workspace.detections("dead")).items() if k.endswith(("null_count", "null_std"))}
    record(workspace, analysis="dead_sweep", method="freq<=eps at each tau", metrics=null,
           thresholds={"eps": sweep["eps"], "sweep": sweep["tau"]}, figures={"dead_sweep": sweep})


@pytest.mark.dead
@pytest.mark.capture()
def test_rarely_active(workspace, record):
    rare = workspace.detections("rarely_active")
    count = sum(int(d.indices.size) for d in rare.values())
    record(workspace, analysis="dead", method="0<freq<rho", neuron_type="rarely_active",
           metrics={"count": count, **counts_of(rare), **null_metrics(rare)},
           thresholds=next(iter(rare.values())).thresholds,
           neurons=neurons_of(rare))
