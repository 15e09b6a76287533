"""Which neurons get a page, and what the page shows (JSON-ready, so the report and its replay
need only ``results.json``).

Each *source* is one detector's per-neuron score with the neurons it reports. A source
contributes up to ``per_source`` neurons per model: its reported neurons, strongest first, and,
for a source whose score is a strength (:attr:`Source.fill`), the highest-scoring unreported
neurons up to the same number (marked "not reported", so a reader sees what lies just below the
threshold). A neuron's page lists every source that chose it and its score under every source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from neuronbench.capture import ActivationStatistics
from neuronbench.contexts import NeuronContext
from neuronbench.detectors.positional import position_frequencies
from neuronbench.detectors.result import Detection


@dataclass(frozen=True)
class Source:
    """One detector's scores (``{layer: [W]}``) and reported neurons (``{layer: indices}``).

    ``descending``: higher score = stronger (else lower, e.g. a unigram count); ``fill``: also
    show the strongest unreported neurons."""

    score: str
    scores: Mapping[int, np.ndarray]
    reported: Mapping[int, Sequence[int]]
    descending: bool = True
    fill: bool = True
    details: Mapping[int, Mapping[str, object]] = field(default_factory=dict)


def source_of(detections: Mapping[int, Detection], descending: bool = True, fill: bool = True) -> Source:
    """A :class:`Source` from one detector's ``{layer: Detection}``."""
    first = next(iter(detections.values()))
    return Source(first.score, {l: d.scores for l, d in detections.items()},
                  {l: d.indices.tolist() for l, d in detections.items()}, descending, fill,
                  {l: d.details for l, d in detections.items()})


def _ranked(source: Source, candidates: list[tuple[int, int]]) -> list[tuple[int, int]]:
    sign = -1.0 if source.descending else 1.0
    return sorted(candidates, key=lambda n: (sign * float(source.scores[n[0]][n[1]]), n))


def choose_neurons(sources: Mapping[str, Source], per_source: int) -> dict[tuple[int, int], list[dict]]:
    """``{(layer, neuron): [reason]}``; a reason names the source, its score and whether the
    source reports the neuron."""
    chosen: dict[tuple[int, int], list[dict]] = {}
    for name, source in sources.items():
        reported = [(l, int(j)) for l, idx in source.reported.items() for j in idx]
        picks = [(n, True) for n in _ranked(source, reported)[:per_source]]
        if source.fill and len(picks) < per_source:
            known = set(reported)
            rest = [(l, j) for l, s in source.scores.items() for j in range(s.size)
                    if (l, j) not in known and np.isfinite(s[j])]
            picks += [(n, False) for n in _ranked(source, rest)[:per_source - len(picks)]]
        for (layer, neuron), is_reported in picks:
            chosen.setdefault((layer, neuron), []).append(
                {"source": name, "score": source.score, "value": float(source.scores[layer][neuron]),
                 "reported": is_reported})
    return dict(sorted(chosen.items()))


def _covered(source: Source, layer: int, neuron: int, decode: Callable[[int], str]) -> list[str]:
    details = source.details.get(layer, {})
    tokens = details.get("covered_tokens", {}).get(neuron)
    if tokens is not None:
        return [decode(int(t)) for t in np.ravel(tokens)]
    trigrams = details.get("covered_trigrams", {}).get(neuron)
    return [] if trigrams is None else ["".join(decode(int(t)) for t in row) for row in np.asarray(trigrams)]


def page_data(stats: ActivationStatistics, sources: Mapping[str, Source],
              chosen: Mapping[tuple[int, int], list[dict]],
              contexts: Mapping[tuple[int, int], list[NeuronContext]], decode: Callable[[int], str],
              alone: Mapping[tuple[int, int], float] | None = None) -> list[dict]:
    """One JSON-ready page per chosen neuron: reasons, every source's score, frequency, mean, max,
    covered tokens / trigrams (as strings), the positional frequency profile ``fr(pos)``, the
    top contexts and, when ``alone`` gives it, the Δppl of zero-ablating the neuron by itself
    (:meth:`~neuronbench.ablation.engine.AblationRunner.alone`)."""
    pages = []
    for (layer, neuron), reasons in chosen.items():
        arrays = stats.layer(layer)
        profile = position_frequencies(stats, layer)[:, neuron] if stats.n_windows else np.zeros(0)
        pages.append({
            "layer": layer, "neuron": neuron, "reasons": reasons,
            "scores": {name: {"score": s.score, "value": float(s.scores[layer][neuron])}
                       for name, s in sources.items() if layer in s.scores},
            "freq": float(stats.freq(layer)[neuron]), "mean": float(stats.mean(layer)[neuron]),
            "max": float(arrays["max"][neuron]),
            "covered": {name: _covered(s, layer, neuron, decode) for name, s in sources.items()
                        if _covered(s, layer, neuron, decode)},
            "profile": profile.tolist(),
            "contexts": [c.record(decode) for c in contexts.get((layer, neuron), [])],
            **({} if alone is None else {"ablated_alone": {"mode": "zero", "ppl_delta_rel": alone[(layer, neuron)]}}),
        })
    return pages
