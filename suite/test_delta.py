"""Δ-sensitive neurons (Mamba: spread of log Δ per channel) or, for models without Δ, input-change
sensitivity (mean normalized change of a neuron's activation over the following positions when
one input token is replaced). The record's ``method`` says which; top-k per layer, with the null
count of the selection and, for input change, how many of the top-k exceed the null's ``1 − 1/W``
quantile (``above_null``)."""

from __future__ import annotations

import numpy as np
import pytest

from neuronbench.detectors.null import null_metrics

pytestmark = [pytest.mark.delta, pytest.mark.capture("delta")]


def above_null(found) -> dict:
    """``{"above_null": n}``: the top-k neurons above the input-change null's ``1 − 1/W`` quantile,
    summed over layers (empty for Δ, whose null has no such quantile)."""
    counts = [d.details["above_null"] for d in found.values() if "above_null" in d.details]
    return {"above_null": sum(counts)} if counts else {}


def test_sensitivity(workspace, record):
    method, found = workspace.sensitivity
    for layer, detection in found.items():
        assert np.isfinite(detection.scores).all(), f"layer {layer}: non-finite {method} scores"
        assert detection.indices.size == min(workspace.config.top_k, detection.width)
    record(workspace, analysis="delta", method=method, neuron_type="sensitive",
           metrics={"count": sum(int(d.indices.size) for d in found.values()),
                    "top_score": float(max(d.scores.max() for d in found.values())), **null_metrics(found),
                    **above_null(found)},
           thresholds=next(iter(found.values())).thresholds,
           neurons={layer: d.indices.tolist() for layer, d in found.items()},
           arrays={f"layer{layer}/delta_score": d.scores for layer, d in found.items()})
