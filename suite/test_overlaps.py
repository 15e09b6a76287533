"""Overlaps between neuron types: per layer, the intersections of every pair of the dead, rarely
active, positional and token-detecting sets and of all of them. Marked ``overlap`` (and
``positional``, ``ngram``, whose statistics it reads), not ``dead``: selecting the dead cases
must not pay for positional or per-token statistics.
"""

from __future__ import annotations

import pytest

from neuronbench.detectors import type_overlaps

OVERLAP_TYPES = ("dead", "rarely_active", "positional", "token")


@pytest.mark.overlap
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
