"""Top-activating contexts of chosen neurons: the streamed top-k positions
(:mod:`neuronbench.capture.topk`) plus one targeted forward pass over only the windows that hold
them.

For neuron ``(layer, j)`` and each of its top positions ``p = w·T + t`` the context is the tokens
``t − before … t + after`` of window ``w`` (clipped to the window's real tokens) with the neuron's
activation on each, recomputed by a forward pass over the distinct windows ``{w}`` (hooks on the
chosen layers only, keeping only the chosen neurons). The recomputed activation at ``p`` must
match the streamed top-k value (float32 rounding may differ with the batch composition:
``rtol = 1e-4``, ``atol = 1e-5``); otherwise the windows are not the captured ones and a
:class:`~neuronbench.errors.CaptureError` says so. Cost: one forward pass over at most
``k × neurons`` windows, independent of the number of analysed tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from neuronbench.batching import fit_batch_size, windows_per_batch
from neuronbench.capture import ActivationStatistics
from neuronbench.data import TokenWindows
from neuronbench.errors import CaptureError
from neuronbench.names import NEURONS, parse_act_name

BEFORE, AFTER = 10, 4
RTOL, ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class NeuronContext:
    """One top-activating position of a neuron and its context window."""

    value: float
    position: int
    token_ids: tuple[int, ...]
    activations: tuple[float, ...]
    marked: int

    def record(self, decode) -> dict:
        return {"value": self.value, "position": self.position, "token_ids": list(self.token_ids),
                "tokens": [decode(t) for t in self.token_ids], "activations": list(self.activations),
                "marked": self.marked}


def _window_activations(model: torch.nn.Module, adapter, windows: TokenWindows, needed: np.ndarray,
                        chosen: Mapping[int, np.ndarray], batch_size: int | None) -> dict[int, torch.Tensor]:
    """``{layer: [len(needed), T, len(chosen[layer])]}`` activations of the chosen neurons, from
    forward passes of the backbone (no logits read) in batches of ``batch_size`` windows; on a GPU
    probed by the backbone's forward on the first windows (the kept columns are small beside it)
    and halved on out-of-memory (:func:`neuronbench.batching.fit_batch_size`)."""
    device = next(model.parameters()).device

    def forward(rows: torch.Tensor) -> None:
        model.base_model(input_ids=windows.input_ids[rows].to(device),
                         attention_mask=windows.attention_mask[rows].to(device), use_cache=False)

    batch_size = min(windows_per_batch(batch_size, windows.input_ids.shape[1]), needed.size)
    batch_size = fit_batch_size(lambda size: forward(torch.as_tensor(needed[:size])), batch_size, device)
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in chosen}
    columns = {layer: torch.as_tensor(idx, dtype=torch.long) for layer, idx in chosen.items()}

    def sink(name: str, tensor: torch.Tensor) -> None:
        layer, _ = parse_act_name(name)
        parts[layer].append(tensor[..., columns[layer].to(tensor.device)].float().cpu())

    handles = [h for layer in chosen for h in adapter.register_capture(layer, [NEURONS], sink)]
    try:
        with torch.inference_mode():
            for start in range(0, needed.size, batch_size):
                forward(torch.as_tensor(needed[start:start + batch_size]))
    finally:
        for handle in handles:
            handle.remove()
    return {layer: torch.cat(p) for layer, p in parts.items()}


def top_contexts(model: torch.nn.Module, adapter, windows: TokenWindows, stats: ActivationStatistics,
                 neurons: Mapping[int, Sequence[int]], before: int = BEFORE, after: int = AFTER,
                 batch_size: int | None = None) -> dict[tuple[int, int], list[NeuronContext]]:
    """``{(layer, neuron): contexts}`` in descending activation, for the chosen ``neurons``."""
    chosen = {layer: np.unique(np.asarray(idx, dtype=np.int64)) for layer, idx in neurons.items() if len(idx)}
    for layer in chosen:
        if "topk_positions" not in stats.layer(layer):
            raise CaptureError("top-k activations were not captured: use CaptureConfig(top_activations=k)")
    window = windows.input_ids.shape[1]
    tops = {layer: stats.layer(layer)["topk_positions"][:, idx] for layer, idx in chosen.items()}
    needed = np.unique(np.concatenate([p[p >= 0] // window for p in tops.values()] or [np.zeros(0, np.int64)]))
    if needed.size and needed[-1] >= windows.input_ids.shape[0]:
        raise CaptureError(f"top-k position in window {needed[-1]}, but only {windows.input_ids.shape[0]} "
                           "windows were given: pass the windows the statistics were captured on")
    acts = _window_activations(model, adapter, windows, needed, chosen, batch_size) if needed.size else {}
    row_of = {int(w): i for i, w in enumerate(needed)}
    result: dict[tuple[int, int], list[NeuronContext]] = {}
    for layer, idx in chosen.items():
        values = stats.layer(layer)["topk_values"][:, idx]
        for column, neuron in enumerate(idx):
            result[(layer, int(neuron))] = [
                _context(acts[layer][row_of[int(p // window)], :, column], windows, int(p), float(v), window,
                         before, after, (layer, int(neuron)))
                for p, v in zip(tops[layer][:, column], values[:, column]) if p >= 0]
    return result


def _context(acts: torch.Tensor, windows: TokenWindows, position: int, value: float, window: int,
             before: int, after: int, neuron: tuple[int, int]) -> NeuronContext:
    w, t = divmod(position, window)
    real = int(windows.attention_mask[w].sum())
    recomputed = float(acts[t])
    if not np.isclose(recomputed, value, rtol=RTOL, atol=ATOL):
        raise CaptureError(f"neuron {neuron}: the streamed top activation {value} at window {w}, position {t} "
                           f"recomputes as {recomputed}: the windows are not the ones the statistics were captured on")
    start, stop = max(0, t - before), min(real, t + after + 1)
    return NeuronContext(value=value, position=position,
                         token_ids=tuple(int(i) for i in windows.input_ids[w, start:stop]),
                         activations=tuple(float(a) for a in acts[start:stop]), marked=t - start)
