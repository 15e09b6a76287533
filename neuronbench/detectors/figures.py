"""Figure data (plain dicts of lists, no plotting) for Voita et al. 2023 Figures 1–4, 7 and 8.

Every function takes detector results (``{layer: Detection}``) and returns ``{"layers": [...], ...}``
with one entry per layer, in layer order. "Previous"/"earlier" layers mean the previous/earlier
*analysed* layers.

* Fig 1a :func:`dead_percent` — ``dead_percent[l] = 100 · #dead / W``.
* Fig 1b :func:`alive_mean_frequency` — ``mean_freq_alive[l]`` = mean ``freq`` of the non-dead
  neurons (``None`` for a layer whose neurons are all dead).
* τ sweep: :func:`neuronbench.detectors.dead.dead_fraction_sweep`.
* Fig 2 :func:`unigram_count_bins` — alive neurons per layer by unigram count, bins
  :data:`UNIGRAM_BINS` (inclusive ranges; ``0`` = active only on excluded tokens); as in the paper
  only the first half of the network (layers ``l < ⌈L/2⌉`` of an ``L``-layer model), or all layers.
* Fig 3a :func:`token_detectors_per_layer`; Fig 3b :func:`tokens_covered` — distinct tokens
  covered by the layer's token-detecting neurons, and by those of all layers up to it.
* Fig 4 :func:`new_tokens` — covered tokens of a layer not covered by any earlier layer, and not
  covered by the previous layer.
* Fig 7 :func:`positional_type_examples` — for each positional type, the ``per_type`` strongest
  positional neurons of the model (by score, over all layers) with their activation frequency
  ``fr(pos)`` and strength; :func:`position_profiles` gives the same profiles per layer.
* Fig 8 :func:`positional_per_layer` — positional neurons per layer, split by type and strength.

Figures that overlay models (1, 3a, 3b, 4) carry ``num_layers`` (``L`` of the model), so they can
be drawn against the relative depth ``layer / (L − 1)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from neuronbench.capture import ActivationStatistics
from neuronbench.detectors.dead import dead_fraction_sweep
from neuronbench.detectors.positional import POSITIONAL_STRENGTHS, POSITIONAL_TYPES, position_frequencies
from neuronbench.detectors.result import Detection, check_count, highest
from neuronbench.errors import ConfigError

UNIGRAM_BINS: tuple[tuple[int, float], ...] = (
    (0, 0), (1, 1), (2, 5), (6, 10), (11, 50), (51, 100), (101, 500), (501, float("inf")),
)
"""Inclusive unigram-count ranges of Figure 2."""

Detections = Mapping[int, Detection]


def _layers(*results: Detections) -> list[int]:
    layers = sorted(results[0])
    for other in results[1:]:
        if sorted(other) != layers:
            raise ConfigError(f"figure inputs cover different layers: {layers} and {sorted(other)}")
    return layers


def dead_percent(dead: Detections) -> dict:
    """Fig 1a."""
    layers = _layers(dead)
    return {"layers": layers, "dead_percent": [100.0 * dead[l].indices.size / dead[l].width for l in layers],
            "n_neurons": [dead[l].width for l in layers]}


def alive_mean_frequency(dead: Detections) -> dict:
    """Fig 1b (``dead`` scores are the frequencies)."""
    layers = _layers(dead)
    means = []
    for layer in layers:
        alive = np.ones(dead[layer].width, dtype=bool)
        alive[dead[layer].indices] = False
        means.append(float(dead[layer].scores[alive].mean()) if alive.any() else None)
    return {"layers": layers, "mean_freq_alive": means}


tau_sweep = dead_fraction_sweep
"""τ sweep: dead percent per layer at every τ of the capture's sweep."""


def _bin_label(low: int, high: float) -> str:
    return str(low) if low == high else f">{low - 1}" if high == float("inf") else f"{low}-{int(high)}"


FIG2_LAYERS = ("first_half", "all")
"""Layer selections of Figure 2: the paper's first half of the network, or every analysed layer."""


def unigram_count_bins(token: Detections, dead: Detections, num_layers: int | None = None,
                       layers: str = "first_half") -> dict:
    """Fig 2: ``counts[l][b]`` = alive neurons of layer ``l`` whose unigram count is in bin ``b``, over the
    first half of an ``num_layers``-layer network (``layers="first_half"``, the paper's) or all layers."""
    if layers not in FIG2_LAYERS:
        raise ConfigError(f"Figure 2 layers must be one of {list(FIG2_LAYERS)}, got {layers!r}")
    part, chosen = layers, _layers(token, dead)
    if layers == "first_half":
        if num_layers is None:
            raise ConfigError("Figure 2 over the first half of the network needs num_layers (the model's depth)")
        chosen = [layer for layer in chosen if layer < -(-num_layers // 2)]
    layers = chosen
    counts = []
    for layer in layers:
        alive = np.ones(dead[layer].width, dtype=bool)
        alive[dead[layer].indices] = False
        unigrams = token[layer].scores[alive]
        counts.append([int(((unigrams >= low) & (unigrams <= high)).sum()) for low, high in UNIGRAM_BINS])
    return {"layers": layers, "bins": [_bin_label(*b) for b in UNIGRAM_BINS],
            "edges": [[low, high] for low, high in UNIGRAM_BINS], "counts": counts, "num_layers": num_layers,
            "part": part}


def token_detectors_per_layer(token: Detections) -> dict:
    """Fig 3a."""
    layers = _layers(token)
    return {"layers": layers, "token_detecting": [int(token[l].indices.size) for l in layers]}


def _covered_sets(token: Detections, layers: list[int]) -> list[set[int]]:
    return [set().union(*(set(t.tolist()) for t in token[l].details["covered_tokens"].values())) for l in layers]


def tokens_covered(token: Detections) -> dict:
    """Fig 3b: covered tokens per layer and cumulatively over layers."""
    layers = _layers(token)
    sets = _covered_sets(token, layers)
    cumulative, seen = [], set()
    for covered in sets:
        seen |= covered
        cumulative.append(len(seen))
    return {"layers": layers, "covered": [len(s) for s in sets], "cumulative": cumulative}


def new_tokens(token: Detections) -> dict:
    """Fig 4: tokens new against all earlier layers and against the previous layer."""
    layers = _layers(token)
    sets = _covered_sets(token, layers)
    earlier: set[int] = set()
    vs_all, vs_previous = [], []
    for i, covered in enumerate(sets):
        vs_all.append(len(covered - earlier))
        vs_previous.append(len(covered - (sets[i - 1] if i else set())))
        earlier |= covered
    return {"layers": layers, "new_vs_all_earlier": vs_all, "new_vs_previous": vs_previous}


def positional_per_layer(positional: Detections, num_layers: int | None = None) -> dict:
    """Fig 8: ``counts[l][type]`` and ``strong[l][type]``: positional neurons of layer ``l`` by type,
    and how many of them are strong."""
    layers = _layers(positional)
    counts, strong = [], []
    for layer in layers:
        details = positional[layer].details
        types, strengths = details["types"], details["strength"]
        counts.append([sum(1 for t in types.values() if t == kind) for kind in POSITIONAL_TYPES])
        strong.append([sum(1 for j, t in types.items() if t == kind and strengths[j] == "strong")
                       for kind in POSITIONAL_TYPES])
    return {"layers": layers, "types": list(POSITIONAL_TYPES), "counts": counts, "strong": strong,
            "num_layers": num_layers}


def positional_type_examples(stats: ActivationStatistics, positional: Detections, per_type: int = 3) -> dict:
    """Fig 7: for each type of :data:`POSITIONAL_TYPES`, the ``per_type`` detected neurons with the
    highest score over all layers (ties: lower layer, then lower index) and their ``fr(pos)``."""
    per_type = check_count("neurons per type in Figure 7", per_type)
    layers = _layers(positional)
    positions = int(positional[layers[0]].thresholds.get("positions", stats.window)) if layers else stats.window
    found = [(float(positional[l].scores[j]), l, int(j)) for l in layers for j in positional[l].indices]
    examples: dict[str, list[dict]] = {kind: [] for kind in POSITIONAL_TYPES}
    for score, layer, neuron in sorted(found, key=lambda f: (-f[0], f[1], f[2])):
        details = positional[layer].details
        kind = details["types"][neuron]
        if len(examples[kind]) < per_type:
            examples[kind].append({"layer": layer, "neuron": neuron, "score": score,
                                   "strength": details["strength"][neuron],
                                   "frequency": position_frequencies(stats, layer, positions)[:, neuron].tolist()})
    return {"positions": list(range(positions)), "score": positional[layers[0]].score if layers else None,
            "strengths": list(POSITIONAL_STRENGTHS), "types": examples}


def position_profiles(stats: ActivationStatistics, positional: Detections, top: int = 4) -> dict:
    """Fig 8: profiles of the ``top`` detected positional neurons per layer, highest score first."""
    top = check_count("neurons per layer in Figure 8", top)
    layers = _layers(positional)
    positions = int(positional[layers[0]].thresholds.get("positions", stats.window)) if layers else stats.window
    out: dict[int, dict] = {}
    for layer in layers:
        result = positional[layer]
        chosen = result.indices[highest(result.scores[result.indices], top)]
        chosen = chosen[np.argsort(-result.scores[chosen], kind="stable")]
        arrays = stats.layer(layer)
        mean = arrays["pos_sum"][:positions, chosen] / arrays["pos_tokens"][:positions, None]
        freq = position_frequencies(stats, layer, positions)[:, chosen]
        out[layer] = {"neurons": chosen.tolist(), "score": result.score, "scores": result.scores[chosen].tolist(),
                      "types": [result.details.get("types", {}).get(int(j)) for j in chosen],
                      "mean_activation": mean.T.tolist(), "active_frequency": freq.T.tolist()}
    return {"positions": list(range(positions)), "layers": out}
