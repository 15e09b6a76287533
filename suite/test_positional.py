"""Positional neurons (Voita et al. 2023 §5) over full-length analysis windows.

``mi``: ``I(act; pos) > --positional-mi`` (nats); ``pearson``: the seed's mean Pearson
``|r(position, a)| > --positional-r``; both with their null counts, and the types (with strong/weak)
of the neurons found. The MI case records the data of Figure 7 (activation frequency against
position of the strongest positional neurons of each type) and Figure 8 (positional neurons per
layer by type), and the per-neuron MI to ``stats/<model>.npz``.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuronbench.detectors.figures import positional_per_layer, positional_type_examples
from neuronbench.detectors.null import null_metrics

pytestmark = [pytest.mark.positional, pytest.mark.capture("positional")]
METHODS = {"mi": "positional", "pearson": "positional_pearson"}
FIGURE_NEURONS = 3
"""Neurons per positional type in Figure 7."""


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
           figures={"positional": {
               "fig7": positional_type_examples(workspace.stats, found, per_type=FIGURE_NEURONS),
               "fig8": positional_per_layer(found, workspace.loaded.adapter.num_layers)}} if method == "mi" else None)
