"""Positional neurons (Voita et al. 2023 §5) over full-length analysis windows.

``mi``: ``I(act; pos) > --positional-mi`` (nats); ``pearson``: the seed's mean Pearson
``|r(position, a)| > --positional-r``. Records Figure 8 data (activation against position for the
strongest positional neurons) and the per-neuron MI to ``stats/<model>.npz``.
"""

from __future__ import annotations

import numpy as np
import pytest

from dataclasses import replace

from neuronbench.detectors.figures import position_profiles
from neuronbench.detectors.null import null_metrics
from neuronbench.detectors.result import highest

pytestmark = [pytest.mark.positional, pytest.mark.capture("positional")]
METHODS = {"mi": "positional", "pearson": "positional_pearson"}
FIGURE_NEURONS = 4


def strongest(found: dict, count: int = FIGURE_NEURONS) -> dict:
    """Figure 8 shows the ``count`` highest-MI neurons of each layer, whether or not they pass the
    threshold (the record's ``positional`` neurons say which do)."""
    return {layer: replace(d, indices=highest(d.scores, count)) for layer, d in found.items()}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_positional(workspace, record, method):
    found = workspace.detections(METHODS[method])
    for layer, detection in found.items():
        assert np.isfinite(detection.scores).all(), f"layer {layer}: non-finite positional scores"
    count = sum(int(d.indices.size) for d in found.values())
    types = [f"{d.details['strength'][j]} {t}" for d in found.values() for j, t in d.details["types"].items()]
    record(workspace, analysis="positional", method=method, neuron_type="positional",
           metrics={"count": count, **{f"layer{l}": int(d.indices.size) for l, d in found.items()}, **null_metrics(found),
                    **{f"type:{t}": types.count(t) for t in sorted(set(types))}},
           thresholds=next(iter(found.values())).thresholds,
           neurons={layer: d.indices.tolist() for layer, d in found.items()},
           arrays={f"layer{layer}/positional_{'mi' if method == 'mi' else 'r'}": d.scores for layer, d in found.items()},
           figures={"positional": position_profiles(workspace.stats, strongest(found), top=FIGURE_NEURONS)}
           if method == "mi" else None)
