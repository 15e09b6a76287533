"""Positional neurons (Voita et al. 2023 §5) over full-length analysis windows.

``mi``: ``I(act; pos) > --positional-mi`` (nats); ``pearson``: the seed's mean Pearson
``|r(position, a)| > --positional-r``. Records Figure 8 data (activation against position for the
strongest positional neurons) and the per-neuron MI to ``stats/<model>.npz``.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuronbench.detectors.figures import position_profiles

pytestmark = pytest.mark.positional
METHODS = {"mi": "positional", "pearson": "positional_pearson"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_positional(workspace, record, method):
    found = workspace.detections(METHODS[method])
    for layer, detection in found.items():
        assert np.isfinite(detection.scores).all(), f"layer {layer}: non-finite positional scores"
    count = sum(int(d.indices.size) for d in found.values())
    types = [t for d in found.values() for t in d.details.get("types", {}).values()]
    record(workspace, analysis="positional", method=method, neuron_type="positional",
           metrics={"count": count, **{f"layer{l}": int(d.indices.size) for l, d in found.items()},
                    **{f"type:{t}": types.count(t) for t in sorted(set(types))}},
           thresholds=next(iter(found.values())).thresholds,
           neurons={layer: d.indices.tolist() for layer, d in found.items()},
           arrays={f"layer{layer}/positional_{'mi' if method == 'mi' else 'r'}": d.scores for layer, d in found.items()},
           figures={"positional": position_profiles(workspace.stats, found)} if method == "mi" else None)
