"""Vocabulary projection of a neuron's output weights (Voita et al. 2023 §4.4): does a
token-detecting neuron suppress the tokens it detects?

When neuron ``j`` of layer ``l`` fires with activation ``a``, it adds ``a · w_j`` to the residual
stream, ``w_j`` the ``j``-th input column of the layer's output projection (the very matrix that
reads the neurons). Its direct effect on the next-token logits is ``a · W_U w_j`` (``W_U`` the
unembedding, ``[V, d]``; the final normalisation is left out, as in the paper's projection). The
direction is ``w_j`` for the ``positive`` rule (the neuron fires with ``a > 0``) and
``sign(mean a_j) · w_j`` for ``magnitude`` (a signed neuron writes in the direction of its mean).

For each trigger token ``t`` the report gives, among all ``V`` tokens ordered by ``s = W_U w_j``:
``promoted_rank`` (1 = the token the update raises most) and ``suppressed_rank`` (1 = the token it
lowers most; ``suppressed_rank = V + 1 − promoted_rank``, ties broken by token id); the paper's
finding is small suppressed ranks (the neuron removes its own trigger from the residual stream).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.capture import ActivationStatistics
from neuronbench.errors import AnalysisUnavailableError


def output_directions(adapter: ArchitectureAdapter, layer: int, neurons: np.ndarray) -> torch.Tensor:
    """``[len(neurons), d]``: the output-projection columns ``w_j`` of ``neurons`` (float32)."""
    module = adapter.neuron_module(layer)
    weight = module.weight.detach().float()
    columns = weight if type(module).__name__ == "Conv1D" else weight.T  # Conv1D: [in, out]; Linear: [out, in]
    return columns[torch.as_tensor(neurons, dtype=torch.long, device=columns.device)]


def unembedding(model: nn.Module) -> torch.Tensor:
    """``W_U`` as ``[V, d]`` float32."""
    head = model.get_output_embeddings()
    if head is None:
        raise AnalysisUnavailableError(f"{type(model).__name__} has no output embeddings to project onto")
    return head.weight.detach().float()


def vocabulary_projection(model: nn.Module, adapter: ArchitectureAdapter, stats: ActivationStatistics, layer: int,
                          triggers: Mapping[int, Iterable[int]]) -> dict[int, dict[int, dict[str, int]]]:
    """``{neuron: {token: {"promoted_rank", "suppressed_rank"}}}`` for each neuron's trigger tokens."""
    neurons = np.array(sorted(triggers), dtype=np.int64)
    if neurons.size == 0:
        return {}
    directions = output_directions(adapter, layer, neurons)
    if stats.activation != "positive":
        signs = np.sign(stats.mean(layer)[neurons])
        directions = directions * torch.as_tensor(np.where(signs == 0, 1.0, signs), dtype=torch.float32,
                                                  device=directions.device)[:, None]
    scores = (unembedding(model) @ directions.T).T.cpu().numpy()  # [neurons, V]
    out = {}
    for row, neuron in enumerate(neurons.tolist()):
        order = np.argsort(-scores[row], kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(1, order.size + 1)
        out[neuron] = {int(t): {"promoted_rank": int(rank[t]), "suppressed_rank": int(order.size + 1 - rank[t])}
                       for t in triggers[neuron]}
    return out
