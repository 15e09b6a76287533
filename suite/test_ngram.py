"""N-gram and token-detecting neurons (Voita et al. 2023 §4).

A neuron active at position k is triggered by the n-gram ending at k (BOS excluded). Records the
token-detecting neurons with Figures 2, 3a, 3b and 4, and the trigram detectors (1–50 trigrams;
exact tables for the candidate neurons from one extra, explicit pass).
"""

from __future__ import annotations

import pytest

from neuronbench.detectors.null import null_metrics
from neuronbench.detectors.projection import vocabulary_projection
from neuronbench.detectors.figures import new_tokens, token_detectors_per_layer, tokens_covered, unigram_count_bins

pytestmark = pytest.mark.ngram


def token_detectors(workspace, token) -> dict:
    """Per layer and token-detecting neuron: its covered tokens as strings and the rank of each among
    the tokens its output direction promotes and suppresses (Voita §4.4)."""
    loaded, out = workspace.loaded, {}
    for layer, detection in token.items():
        covered = detection.details["covered_tokens"]
        ranks = vocabulary_projection(loaded.model, loaded.adapter, workspace.stats, layer, covered)
        out[str(layer)] = {str(j): [{"token": loaded.tokenizer.decode([int(t)]), "id": int(t), **ranks[j][int(t)]}
                                    for t in covered[j]] for j in covered}
    return out


@pytest.mark.capture("token_counts")
def test_token_detecting(workspace, record):
    token, dead = workspace.detections("token"), workspace.detections("dead")
    count = sum(int(d.indices.size) for d in token.values())
    covered = tokens_covered(token)
    record(workspace, analysis="ngram", method="unigram", neuron_type="token",
           metrics={"count": count, "tokens_covered": covered["cumulative"][-1] if covered["cumulative"] else 0,
                    **null_metrics(token), "token_detectors": token_detectors(workspace, token),
                    **{f"layer{l}": int(d.indices.size) for l, d in token.items()}},
           thresholds=next(iter(token.values())).thresholds,
           neurons={layer: d.indices.tolist() for layer, d in token.items()},
           figures={"ngram": {"fig2": unigram_count_bins(token, dead, workspace.loaded.adapter.num_layers,
                                                             workspace.config.fig2_layers), "fig3a": token_detectors_per_layer(token),
                              "fig3b": covered, "fig4": new_tokens(token),
                              "num_layers": workspace.loaded.adapter.num_layers}})


@pytest.mark.capture("token_counts", "trigrams")
def test_trigram(workspace, record):
    trigram = workspace.trigram_detections
    count = sum(int(d.indices.size) for d in trigram.values())
    record(workspace, analysis="ngram", method="trigram", neuron_type="trigram",
           metrics={"count": count, **null_metrics(trigram),
                    **{f"layer{l}": int(d.indices.size) for l, d in trigram.items()}},
           thresholds=next(iter(trigram.values())).thresholds if trigram else {},
           neurons={layer: d.indices.tolist() for layer, d in trigram.items()})
