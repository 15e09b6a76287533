"""Overlaps between neuron types, per layer (as the seed reports them).

For types ``A, B, …`` found in a layer (each a :class:`Detection`), the pairwise intersections
``A ∩ B`` for every unordered pair (keyed ``"A&B"`` in the order given) and the intersection of
all of them (``"all"``), as sorted indices and counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import reduce
from itertools import combinations

import numpy as np

from neuronbench.detectors.result import Detection
from neuronbench.errors import ConfigError


@dataclass(frozen=True)
class TypeOverlaps:
    """Intersections of neuron types in one layer: ``sets["A&B"]`` and ``sets["all"]``."""

    layer: int
    types: tuple[str, ...]
    sets: Mapping[str, np.ndarray]

    def counts(self) -> dict[str, int]:
        return {name: int(indices.size) for name, indices in self.sets.items()}

    def record(self) -> dict:
        return {"layer": self.layer, "types": list(self.types), "counts": self.counts(),
                "indices": {name: indices.tolist() for name, indices in self.sets.items()}}


def type_overlaps(detections: Mapping[str, Mapping[int, Detection]]) -> dict[int, TypeOverlaps]:
    """Per layer present in every type: pairwise and all-type intersections (module docstring)."""
    if len(detections) < 2:
        raise ConfigError(f"overlaps need at least two neuron types, got {list(detections)}")
    types = tuple(detections)
    layers = sorted(reduce(set.intersection, (set(by_layer) for by_layer in detections.values())))
    if not layers:
        raise ConfigError(f"the neuron types {list(types)} share no analysed layer")
    out = {}
    for layer in layers:
        found = {name: detections[name][layer].indices for name in types}
        sets = {f"{a}&{b}": np.intersect1d(found[a], found[b]) for a, b in combinations(types, 2)}
        sets["all"] = reduce(np.intersect1d, found.values())
        out[layer] = TypeOverlaps(layer, types, sets)
    return out
