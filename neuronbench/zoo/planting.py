"""What the calibration models share: the planted-neuron record, the choice of the residual
dimensions that carry planted signals, and the identity of edited weights.

The family-specific edits are in :mod:`neuronbench.zoo.planted_gpt2` and
:mod:`neuronbench.zoo.planted_mamba`; the registry of calibration models in
:mod:`neuronbench.zoo.planted`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

WINDOW = 128
"""Length of the calibration sample's windows (both base models' context): the planted position
profiles are defined over positions ``0..WINDOW − 1``."""


@dataclass(frozen=True)
class PlantedNeuron:
    """Neuron ``index`` of ``layer`` planted as ``kind`` (``dead``, ``token``, ``positional``,
    ``delta``). ``signal`` and ``sign`` say what a ``token``/``positional`` neuron reads (their meaning
    is the family module's); ``expect`` is the answer a detector must give (the covered token, or
    the positional type of :func:`neuronbench.detectors.positional.positional_type`)."""

    kind: str
    layer: int
    index: int
    signal: int | None = None
    sign: int = 1
    expect: str | None = None


def signal_dimensions(embedding: torch.Tensor, count: int) -> list[int]:
    """The ``count`` residual dimensions with the smallest embedding-column L2 norm, ties by index."""
    norms = embedding.detach().double().norm(dim=0).numpy()
    return [int(d) for d in np.lexsort((np.arange(norms.size), norms))[:count]]


def token_id(tokenizer, text: str) -> int:
    """The id of ``text``, which must be a single token of ``tokenizer`` (``ValueError`` otherwise)."""
    ids = tokenizer.encode(text)
    if len(ids) != 1:
        raise ValueError(f"planted token {text!r} is {len(ids)} tokens in this tokenizer ({ids}); it must be one")
    return int(ids[0])


def state_sha256(model: nn.Module) -> str:
    """SHA-256 over the model's ``state_dict`` (names and tensor bytes, sorted by name)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
