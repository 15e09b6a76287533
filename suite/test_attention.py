"""Attention neurons: Mamba channels through their exact hidden attention, transformer heads
through their attention probabilities (SPEC §4).

``test_attention_units``: per method (``attention_weighted``, ``gradient_guided``, ``rollout``)
the top-k units, with the scores behind them, and which analysis windows were read.
``test_attention_summary``: the diversity summary and the data of the six-panel attention figure
(score histogram, top units, activation against importance, a heatmap, diversity, summary).
``test_attention_knockout``: each ``--knockout`` pattern in the analysed layers, its effect on
perplexity and on the next-token probability against random knockouts of the same size.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuronbench.adapters.base import parse_layers
from neuronbench.attention.diversity import diversity_summary
from neuronbench.attention.figures import attention_heatmaps
from neuronbench.attention.kinds import attention_units
from neuronbench.attention.knockout import parse_knockout
from neuronbench.attention.scores import SCORE_METHODS

pytestmark = pytest.mark.attention
HEATMAP_TOKENS = 64


@pytest.mark.parametrize("method", SCORE_METHODS)
def test_attention_units(workspace, record, method):
    scores = workspace.attention_scores
    by_layer = scores.measure(method)
    for layer, values in by_layer.items():
        assert np.isfinite(values).all(), f"layer {layer}: non-finite {method} scores"
    top = scores.top_k(method, workspace.config.top_k, workspace.config.attention_scope)
    chosen: dict[int, list[int]] = {}
    for unit in top:
        chosen.setdefault(unit.layer, []).append(unit.index)
    record(workspace, analysis="attention", method=method, neuron_type=scores.unit,
           metrics={"n_units": sum(v.size for v in by_layer.values()), "top_score": max(unit.score for unit in top),
                    "mean_score": float(np.mean(np.concatenate(list(by_layer.values())))),
                    "n_tokens": scores.n_tokens, **scores.sample.to_record()},
           thresholds={"top_k": workspace.config.top_k, "scope": workspace.config.attention_scope,
                       "rollout_mass": scores.rollout_mass},
           neurons=chosen, tokens=scores.n_tokens,
           arrays={f"layer{layer}/attention_{method}": values for layer, values in by_layer.items()})


def test_attention_summary(workspace, record):
    scores = workspace.attention_scores
    summary = diversity_summary(scores, workspace.config.top_k, workspace.config.attention_scope)
    best = scores.top_k("attention_weighted", 1, "global")[0]
    input_ids = workspace.analysis_windows.input_ids[scores.sample.scored[0], :HEATMAP_TOKENS]
    heatmap = attention_heatmaps(workspace.loaded.model, workspace.loaded.adapter, input_ids,
                                 {best.layer: [best.index]})[(best.layer, best.index)]
    assert np.isfinite(heatmap).all()
    frame = scores.to_frame()
    record(workspace, analysis="attention", method="summary", neuron_type=scores.unit,
           metrics={"n_units": summary["all_units"]["n_units"],
                    "mean_distance": summary["all_units"]["mean_distance"],
                    "mean_entropy": summary["all_units"]["mean_entropy"],
                    **{f"overlap[{pair}]": value for pair, value in summary["overlap"].items()}},
           tokens=scores.n_tokens,
           figures={"attention": {"unit": scores.unit, "frame": frame.to_dict(orient="list"),
                                  "heatmap": {"layer": best.layer, "unit": best.index,
                                              "values": np.asarray(heatmap).tolist()},
                                  "diversity": summary}})


def test_attention_knockout(workspace, record):
    layers = parse_layers(workspace.config.layers, workspace.loaded.adapter.num_layers)
    for spec in workspace.config.knockouts:
        result = workspace.knockout_runner.run(parse_knockout(spec, layers))
        metrics = result.to_record()
        controlled = ("control_ppl_mean",) if workspace.config.seeds else ()  # --seeds 0: no random controls
        for key in ("ppl", "baseline_ppl", "target_prob", "baseline_target_prob", *controlled):
            assert np.isfinite(metrics[key]), f"{spec}: {key} is not finite: {metrics[key]}"
        record(workspace, analysis="knockout", method=spec, neuron_type=attention_units(workspace.loaded.adapter).name,
               metrics=metrics, split=workspace.config.eval_split, tokens=metrics["tokens_scored"], seed=None,
               thresholds={"seeds": workspace.config.seeds, "knockout_windows": workspace.config.knockout_windows})
