"""``planted-gpt2``: ``tiny-gpt2`` (the shipped weights, verified against their manifest) edited
deterministically at load time by :func:`plant_gpt2`; nothing extra ships. The edit gives a known
answer to every planted neuron type, so the suite can check its own detectors on every run
(``suite/test_calibration.py``).

**Signal dimensions.** ``len(SIGNALS) + 1`` residual dimensions are taken out of the model's own
computation: the ones whose token-embedding columns have the smallest L2 norm (ties by index),
in that order the reference dimension and then one dimension per signal of :data:`SIGNALS`.
Nothing the model computes reads or writes them any more: their rows of every attention and
MLP input matrix (``c_attn``, ``c_fc``) are zero, their columns of every block's output matrices
(``attn.c_proj``, ``mlp.c_proj``) are zero, and the final LayerNorm has gain and bias 0 there
(so the tied LM head ignores them). Their residual value is then constant through the network
and set only by the embeddings:

* reference dimension: 0 for every token and position;
* token signal ``t``: ``wte[v] = +A`` if ``v`` is the token ``t`` names, else ``−A``; ``wpe = 0``;
* positional signal ``s``: ``wpe[k] = +A`` where the signal's profile is on at position ``k``,
  else ``−A``; ``wte = 0``.

with ``A = AMPLITUDE``. A planted neuron ``j`` of layer ``l`` reads ``sign · (x_signal −
x_reference)`` after ``ln_2``, whose gain is set to 1 and bias to 0 on both dimensions, so its
pre-activation is exactly ``GAIN · sign · x_signal / σ`` (LayerNorm's mean cancels in the
difference; ``σ`` > 0 is the position's residual scale): it is active (> 0) exactly when the
signal is ``sign`` and at most ``−GAIN · A / σ`` otherwise, where GELU is ``−0`` or within
``1e-6`` of it. A planted dead neuron has a zero input column and bias ``DEAD_BIAS``
(``gelu_new(−100) = −0``). Every planted neuron's row of ``mlp.c_proj`` is zero, so planting
changes what the model computes only by removing those neurons and the signal dimensions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from neuronbench.zoo.planting import WINDOW, PlantedNeuron, signal_dimensions, token_id

AMPLITUDE = 0.05
"""``A``: about the per-dimension scale of tiny-gpt2's embeddings (RMS 0.07)."""
GAIN = 1000.0
"""Input weight of a planted neuron on its signal: pre-activations ±GAIN·A/σ, |·| ≥ 8 for σ ≤ 6."""
DEAD_BIAS = -100.0

POSITION_PROFILES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "oscillatory": lambda k: (k // 16) % 2 == 0,
    "start": lambda k: k < 16,
    "both_ends": lambda k: (k < 16) | (k >= WINDOW - 16),
}
"""On/off pattern of each positional signal over positions ``k = 0..127`` (:data:`WINDOW`)."""

SIGNALS: tuple[tuple[str, str], ...] = (
    ("token", " the"), ("token", "("), ("token", " function"),
    ("position", "oscillatory"), ("position", "start"), ("position", "both_ends"),
)
"""The signal dimensions after the reference: token signals name a single token of the model's
tokenizer, positional signals a profile of :data:`POSITION_PROFILES`."""


PLANTED_GPT2: tuple[PlantedNeuron, ...] = (
    PlantedNeuron("dead", 0, 11), PlantedNeuron("dead", 0, 250), PlantedNeuron("dead", 1, 37),
    PlantedNeuron("dead", 2, 402), PlantedNeuron("dead", 3, 5), PlantedNeuron("dead", 3, 300),
    PlantedNeuron("token", 0, 40, 0, 1, " the"), PlantedNeuron("token", 0, 333, 1, 1, "("),
    PlantedNeuron("token", 2, 77, 2, 1, " function"), PlantedNeuron("token", 3, 460, 0, 1, " the"),
    PlantedNeuron("positional", 1, 100, 3, 1, "oscillatory"),
    PlantedNeuron("positional", 1, 480, 4, 1, "one extreme"),
    PlantedNeuron("positional", 2, 200, 5, 1, "both extremes"),
    PlantedNeuron("positional", 3, 150, 4, -1, "one extreme"),
    PlantedNeuron("positional", 3, 399, 3, -1, "oscillatory"),
)
"""The planted neurons of ``planted-gpt2``: 6 dead, 4 token-detecting and 5 positional neurons; a
token or positional neuron reads signal ``signal`` (an index into :data:`SIGNALS`) with ``sign``."""


def _signal_embeddings(model: nn.Module, tokenizer, dims: list[int]) -> None:
    """Write the reference and signal columns of ``wte`` and ``wpe`` (module docstring)."""
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    positions = np.arange(wpe.shape[0])
    wte[:, dims] = 0.0
    wpe[:, dims] = 0.0
    for dim, (kind, name) in zip(dims[1:], SIGNALS):
        if kind == "token":
            wte[:, dim] = -AMPLITUDE
            wte[token_id(tokenizer, name), dim] = AMPLITUDE
        else:
            on = torch.from_numpy(POSITION_PROFILES[name](positions))
            wpe[:, dim] = torch.where(on, AMPLITUDE, -AMPLITUDE).to(wpe.dtype)


def _isolate(model: nn.Module, dims: list[int]) -> None:
    """Nothing reads or writes the signal dimensions (GPT-2 ``Conv1D`` weights are ``[in, out]``)."""
    for block in model.transformer.h:
        block.attn.c_attn.weight[dims, :] = 0.0
        block.mlp.c_fc.weight[dims, :] = 0.0
        for projection in (block.attn.c_proj, block.mlp.c_proj):
            projection.weight[:, dims] = 0.0
            projection.bias[dims] = 0.0
    model.transformer.ln_f.weight[dims] = 0.0
    model.transformer.ln_f.bias[dims] = 0.0


def _plant_neuron(model: nn.Module, neuron: PlantedNeuron, dims: list[int]) -> None:
    block = model.transformer.h[neuron.layer]
    c_fc, c_proj = block.mlp.c_fc, block.mlp.c_proj
    c_fc.weight[:, neuron.index] = 0.0
    c_fc.bias[neuron.index] = DEAD_BIAS if neuron.kind == "dead" else 0.0
    c_proj.weight[neuron.index, :] = 0.0
    if neuron.kind != "dead":
        reference, signal = dims[0], dims[1 + neuron.signal]
        c_fc.weight[signal, neuron.index] = GAIN * neuron.sign
        c_fc.weight[reference, neuron.index] = -GAIN * neuron.sign
        for dim in (reference, signal):
            block.ln_2.weight[dim] = 1.0
            block.ln_2.bias[dim] = 0.0


@torch.no_grad()
def plant_gpt2(model: nn.Module, tokenizer, neurons: Sequence[PlantedNeuron]) -> None:
    """Plant ``neurons`` into ``model`` (a loaded tiny-gpt2) in place (module docstring)."""
    dims = signal_dimensions(model.transformer.wte.weight, len(SIGNALS) + 1)
    _isolate(model, dims)
    _signal_embeddings(model, tokenizer, dims)
    for neuron in neurons:
        _plant_neuron(model, neuron, dims)
