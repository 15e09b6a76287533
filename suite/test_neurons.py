"""Neuron pages: for the neurons any detector reports (Mamba's attention channels included) and
the strongest of each score, up to ``--page-neurons`` per detector and model: their scores, frequency, covered tokens, positional
profile and top ``--top-contexts`` activating contexts (streamed top-k positions from the capture
pass, contexts from one targeted forward pass over just the windows that hold them); with
``--page-ablation``, each page's neuron zero-ablated by itself on the eval split.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuronbench.attention.ablation import unit_set
from neuronbench.capture.topk import topk_state_bytes
from neuronbench.contexts import top_contexts
from neuronbench.neuron_choice import Source, choose_neurons, page_data, source_of

pytestmark = pytest.mark.neurons

SOURCES = {
    "dead": lambda w: source_of(w.detections("dead"), descending=False, fill=False),
    "rarely_active": lambda w: source_of(w.detections("rarely_active"), descending=False, fill=False),
    "positional": lambda w: source_of(w.detections("positional")),
    "token": lambda w: source_of(w.detections("token"), descending=False, fill=False),
    "trigram": lambda w: source_of(w.trigram_detections, descending=False, fill=False),
    "sensitive": lambda w: source_of(w.sensitivity[1]),
}
"""Page sources: detector name → its :class:`~neuronbench.neuron_choice.Source` for a workspace."""


def attention_source(workspace) -> Source:
    """Mamba's attention units are its channels, i.e. its neurons: the top-k channels per layer
    by ``attention_weighted`` (the attention case's choice) as a page source."""
    scores, config = workspace.attention_scores, workspace.config
    top = unit_set(scores.top_k("attention_weighted", config.top_k, config.attention_scope))
    return Source("attention_weighted", scores.measure("attention_weighted"), top)


def sources_of(workspace) -> dict[str, Source]:
    """Every page source of the workspace's model (the attention channels for an SSM)."""
    sources = {name: make(workspace) for name, make in SOURCES.items()}
    if workspace.loaded.adapter.has_ssm:
        sources["attention"] = attention_source(workspace)
    return sources


def test_neuron_pages(workspace, record):
    stats, config = workspace.stats, workspace.config
    sources = sources_of(workspace)
    chosen = choose_neurons(sources, config.page_neurons)
    neurons: dict[int, list[int]] = {}
    for layer, neuron in chosen:
        neurons.setdefault(layer, []).append(neuron)
    contexts = top_contexts(workspace.loaded.model, workspace.loaded.adapter, workspace.analysis_windows, stats,
                            neurons, batch_size=config.batch_size)
    for (layer, neuron), found in contexts.items():
        assert found and found[0].value == stats.layer(layer)["topk_values"][0, neuron]
    tokenizer = workspace.loaded.tokenizer
    alone = workspace.ablation_runner.alone(chosen) if config.page_ablation else None
    pages = page_data(stats, sources, chosen, contexts, lambda t: tokenizer.decode([t]), alone)
    state = sum(stats.layer(l)[name].nbytes for l in stats.layers for name in ("topk_values", "topk_positions"))
    assert state == sum(topk_state_bytes(config.top_contexts, stats.layer(l)["max"].size) for l in stats.layers)
    record(workspace, analysis="neurons", method="top-k contexts",
           metrics={"pages": len(pages), "top_contexts": config.top_contexts, "topk_state_bytes": state,
                    "context_windows": int(np.unique([c["position"] // stats.window for p in pages
                                                      for c in p["contexts"]]).size)},
           thresholds={"page_neurons": config.page_neurons, "top_contexts": config.top_contexts,
                       "page_ablation": config.page_ablation},
           neurons=neurons, figures={"neuron_pages": {"window": stats.window, "pages": pages}})
