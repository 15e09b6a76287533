"""The layer scale ``s_l`` of a relative activation rule, measured on windows spread over the corpus.

``s_l = median_j sqrt(Σ_t a_{t,j}² / n)`` over the ``n`` real tokens of the sample windows
``⌊i · N / S⌋`` (``i < S``) of the ``N`` analysed windows of ``T`` tokens, with
``S = min(N, ⌈SCALE_TOKENS / T⌉)`` (:func:`spread_windows`; :mod:`neuronbench.activation` says why
a layer's median RMS). Spread, not the first windows: a corpus is not shuffled, and its start need
not look like the rest. Measured on tiny-gpt2 and tiny-mamba over pydocs (50k tokens, 390
windows), the 32 first windows' scale is up to 9.7% from the scale over all 390, and 32 spread
windows' within 4.4% (8 offsets of the sample; README, "Activation rules").
:data:`SCALE_TOKENS` is the default batch (:data:`neuronbench.batching.BATCH_TOKENS`), so that a
corpus that fits one default batch needs no extra pass. The sample does not depend on the batch
size, so neither do the counts made with it.

:func:`sample_scales` runs the sample through the model's backbone (``model.base_model``: the
logits are not needed) with hooks that only sum squares, before the capture, which then applies
the same mask to every batch. When the capture's first batch is the whole corpus (``N ≤ S`` and
at least ``N`` windows per batch) that batch is the sample, and no extra pass is run
(:func:`needs_sample_pass`).
"""

from __future__ import annotations

import torch

from neuronbench.activation import ActivationRule, square_sums
from neuronbench.adapters import ArchitectureAdapter
from neuronbench.batching import BATCH_TOKENS, batches
from neuronbench.capture import native
from neuronbench.data import TokenWindows
from neuronbench.errors import CaptureError
from neuronbench.names import NEURONS, act_name, parse_act_name

SCALE_TOKENS = BATCH_TOKENS
"""Tokens of the windows that a relative rule's layer scale is measured on (:func:`spread_windows`)."""


def spread_windows(n_windows: int, window: int, tokens: int = SCALE_TOKENS) -> torch.Tensor:
    """Indices ``⌊i · N / S⌋`` (``i < S``, ``S = min(N, ⌈tokens / window⌉)``): ``S`` windows spread
    evenly over ``N``, the first one included."""
    count = min(n_windows, -(-tokens // window))
    return torch.arange(count) * n_windows // count


def needs_sample_pass(n_windows: int, window: int, batch_size: int) -> bool:
    """Whether the sample differs from the capture's first batch (then :func:`sample_scales` runs)."""
    return n_windows > len(spread_windows(n_windows, window)) or batch_size < n_windows


def column_square_sums(flat: torch.Tensor, block: torch.Tensor | None = None) -> torch.Tensor:
    """float64 ``Σ_t a_{t,j}²`` of ``flat [n, W]`` (float32, contiguous): the C loop on a CPU
    (:func:`.native.square_sums`), else float64 blocks (:func:`neuronbench.activation.square_sums`)."""
    squares = native.square_sums(flat)
    return square_sums(flat, block) if squares is None else squares


def sample_scales(model: torch.nn.Module, adapter: ArchitectureAdapter, windows: TokenWindows,
                  layers: tuple[int, ...], rule: ActivationRule, batch_size: int) -> dict[int, float]:
    """``{layer: s_l}`` over the real tokens of :func:`spread_windows` of ``windows``, from forward
    passes of ``batch_size`` windows through the model's backbone."""
    picked = spread_windows(*windows.input_ids.shape)
    sample = TokenWindows(windows.input_ids[picked], windows.attention_mask[picked],
                          int(windows.attention_mask[picked].sum()))
    device = next(model.parameters()).device
    totals: dict[int, torch.Tensor] = {}
    real = torch.zeros(0, dtype=torch.bool)

    def receive(name: str, tensor: torch.Tensor) -> None:
        layer, _ = parse_act_name(name)
        squares = column_square_sums(tensor[real].float())
        totals[layer] = squares if layer not in totals else totals[layer] + squares.to(totals[layer].device)

    handles = [handle for layer in layers for handle in adapter.register_capture(layer, (NEURONS,), receive)]
    try:
        with torch.inference_mode():
            for input_ids, attention_mask in batches(sample, batch_size):
                real = attention_mask.bool().to(device)
                model.base_model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                 use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    missing = [act_name(layer, NEURONS) for layer in layers if layer not in totals]
    if missing:
        raise CaptureError(f"hooks did not fire for {missing} in the layer-scale pass through "
                           f"{type(model.base_model).__name__}: is the adapter right for this model?")
    if sample.n_tokens == 0:
        return dict.fromkeys(layers, 0.0)
    return {layer: rule.scale_from_squares(totals[layer], sample.n_tokens) for layer in layers}
