"""Figures 7 and 8 and the relative-depth axis, rendered from hand-made figure data."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from neuronbench.detectors.positional import POSITIONAL_TYPES
from neuronbench.figures import FIGURES, Note, depth_axis, relative_depth


def positional_record(model: str, found: bool) -> dict:
    step = [1.0] * 8 + [0.0] * 24
    types = {kind: [] for kind in POSITIONAL_TYPES}
    if found:
        types["one extreme"] = [{"layer": 1, "neuron": 5, "score": 0.4, "strength": "strong", "frequency": step}]
    counts = [[0] * 5, [0, 0, int(found), 0, 0], [0] * 5]
    return {"model": model, "figures": {"positional": {
        "fig7": {"positions": list(range(32)), "score": "mutual_information", "strengths": ["strong", "weak"],
                 "types": types},
        "fig8": {"layers": [0, 1, 2], "types": list(POSITIONAL_TYPES), "counts": counts, "strong": counts,
                 "num_layers": 3}}}}


def test_figures_7_and_8_are_drawn_for_models_with_positional_neurons_and_a_sentence_for_the_others(tmp_path):
    outputs = FIGURES["positional"]([positional_record("a", True), positional_record("b", False)], tmp_path)
    paths = sorted(p.name for p in outputs if not isinstance(p, Note))
    assert paths == ["fig7_positional_types.png", "fig8_positional_per_layer.png"]
    (note,) = [o for o in outputs if isinstance(o, Note)]
    assert "No positional neurons in b" in note.text
    (only,) = FIGURES["positional"]([positional_record("b", False)], tmp_path / "empty")
    assert isinstance(only, Note) and not (tmp_path / "empty").exists()


def test_relative_depth_axis_with_integer_layer_ticks_on_top():
    np.testing.assert_allclose(relative_depth([0, 2, 4], 5), [0, 0.5, 1])
    np.testing.assert_allclose(relative_depth([0, 1], None), [0, 1])
    fig, ax = plt.subplots()
    ax.plot(relative_depth([0, 1, 2, 3], 4), [1, 2, 3, 4])
    depth_axis(ax, [{"figures": {"dead": {"num_layers": 4}}}], "dead")
    fig.canvas.draw()
    top = next(child for child in ax.child_axes)
    ticks = [t for t in top.get_xticks() if 0 <= t <= 3]
    plt.close(fig)
    assert ax.get_xlabel() == "relative depth layer/(L−1)" and ticks and all(float(t).is_integer() for t in ticks)
