"""How different the attention neurons chosen by the three methods are.

For the top-``k`` units of each method of :data:`~neuronbench.attention.scores.SCORE_METHODS`
(per layer by default, or globally on per-layer normalised scores: ``scope`` of
:meth:`~neuronbench.attention.scores.AttentionUnitScores.top_k`):

* ``per_layer``: units per layer, ``n_layers``: distinct layers among them;
* ``mean_distance`` / ``mean_entropy``: mean attention distance and entropy of the top-k units
  (``all_units`` holds the same means over every unit, for reference);
* ``overlap["a|b"]``: Jaccard index ``|A ∩ B| / |A ∪ B|`` of the top-k sets of methods a and b;
* ``rank_correlation["a|b"]``: Spearman ρ between the two methods' scores over all units
  (Pearson correlation of average ranks); ``None`` when either score is constant (undefined).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from neuronbench.attention.scores import SCORE_METHODS, AttentionUnitScores


def _spearman(a: pd.Series, b: pd.Series) -> float | None:
    ranks_a, ranks_b = a.rank(method="average"), b.rank(method="average")
    if ranks_a.nunique() < 2 or ranks_b.nunique() < 2:
        return None
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def _nanmean(values: pd.Series) -> float | None:
    finite = values.dropna()
    return float(finite.mean()) if len(finite) else None


def diversity_summary(scores: AttentionUnitScores, k: int, scope: str = "layer") -> dict:
    """The diversity summary of the module docstring, as plain JSON-ready data."""
    frame = scores.to_frame().set_index(["layer", "unit"])
    tops = {method: [(unit.layer, unit.index) for unit in scores.top_k(method, k, scope)]
            for method in SCORE_METHODS}
    methods = {}
    for method, units in tops.items():
        chosen = frame.loc[units]
        per_layer = chosen.index.get_level_values("layer").value_counts().sort_index()
        methods[method] = {
            "units": [list(unit) for unit in units],
            "per_layer": {int(layer): int(count) for layer, count in per_layer.items()},
            "n_layers": int(per_layer.size),
            "mean_distance": _nanmean(chosen["distance"]),
            "mean_entropy": _nanmean(chosen["entropy"]),
        }
    pairs = list(combinations(SCORE_METHODS, 2))
    overlap = {f"{a}|{b}": len(set(tops[a]) & set(tops[b])) / len(set(tops[a]) | set(tops[b])) for a, b in pairs}
    correlation = {f"{a}|{b}": _spearman(frame[a], frame[b]) for a, b in pairs}
    return {
        "k": k,
        "scope": scope,
        "methods": methods,
        "all_units": {"n_units": len(frame), "mean_distance": _nanmean(frame["distance"]),
                      "mean_entropy": _nanmean(frame["entropy"])},
        "overlap": overlap,
        "rank_correlation": correlation,
    }
