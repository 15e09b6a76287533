"""Calibration models: a trained built-in model with documented neurons planted into its weights.

Each is its base model (the shipped weights, verified against their manifest) edited
deterministically at load time by its family's planter; nothing extra ships. The edit gives a
known answer to every planted neuron type, so the suite checks its own detectors on every run
(``suite/test_calibration.py``). ``planted-gpt2`` (:mod:`neuronbench.zoo.planted_gpt2`): dead,
token-detecting and positional neurons; ``planted-mamba`` (:mod:`neuronbench.zoo.planted_mamba`):
dead, token-detecting, positional and Δ-sensitive channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from neuronbench.zoo.planted_gpt2 import PLANTED_GPT2, plant_gpt2
from neuronbench.zoo.planted_mamba import PLANTED_MAMBA, plant_mamba
from neuronbench.zoo.planting import WINDOW, PlantedNeuron, state_sha256

__all__ = ["PLANTED", "PlantedModel", "PlantedNeuron", "WINDOW", "plant", "state_sha256"]

Planter = Callable[[nn.Module, object, Sequence[PlantedNeuron]], None]


@dataclass(frozen=True)
class PlantedModel:
    """A calibration model: the built-in ``base`` with ``neurons`` planted by ``planter``."""

    name: str
    base: str
    neurons: tuple[PlantedNeuron, ...]
    planter: Planter

    @property
    def kinds(self) -> tuple[str, ...]:
        """The planted neuron types, in the order they first appear."""
        return tuple(dict.fromkeys(neuron.kind for neuron in self.neurons))

    def expected(self, kind: str) -> dict[int, dict[int, str | None]]:
        """``{layer: {index: expect}}`` of the planted neurons of ``kind``."""
        out: dict[int, dict[int, str | None]] = {}
        for neuron in self.neurons:
            if neuron.kind == kind:
                out.setdefault(neuron.layer, {})[neuron.index] = neuron.expect
        return out


PLANTED: dict[str, PlantedModel] = {
    "planted-gpt2": PlantedModel("planted-gpt2", "tiny-gpt2", PLANTED_GPT2, plant_gpt2),
    "planted-mamba": PlantedModel("planted-mamba", "tiny-mamba", PLANTED_MAMBA, plant_mamba),
}


@torch.no_grad()
def plant(name: str, model: nn.Module, tokenizer) -> str:
    """Plant the neurons of calibration model ``name`` into ``model`` (a loaded ``PLANTED[name].base``)
    in place; returns :func:`~neuronbench.zoo.planting.state_sha256` of the edited weights."""
    spec = PLANTED[name]
    spec.planter(model, tokenizer, spec.neurons)
    return state_sha256(model)
