"""The layer scale ``s_l`` of a relative activation rule, measured on windows spread over the corpus.

``s_l = median_j sqrt(Σ_t a_{t,j}² / n)`` over the ``n`` real tokens of the sample windows
``⌊i · N / S⌋`` (``i < S``) of the ``N`` analysed windows of ``T`` tokens, with
``S = min(N, ⌈SCALE_TOKENS / T⌉)`` (:func:`spread_windows`; :mod:`neuronbench.activation` says why
a layer's median RMS). Spread, not the first windows: a corpus is not shuffled, and its start need
not look like the rest. Measured on tiny-gpt2 and tiny-mamba over pydocs (50k tokens, 390
windows), the first 32 windows' scale is up to 9.7% from the scale over all 390, and 16 spread
windows' within 5.0% (8 offsets of the sample; README, "Activation rules"). The sample does not
depend on the batch size, so neither do the counts made with it.

The scale must be fixed before anything is counted. When every sample window is in the capture's
first batch (a corpus of one batch; the issue's one-batch benchmark shapes), that batch's sample
rows measure it (:class:`~neuronbench.capture.layer.LayerStatistics`). Otherwise
:func:`sample_scales` runs the sample through the model's backbone first (``model.base_model``: no
logits), with hooks that only sum squares: a forward over :data:`SCALE_TOKENS` tokens.
"""

from __future__ import annotations

import torch

from neuronbench.activation import ActivationRule, square_sums
from neuronbench.adapters import ArchitectureAdapter
from neuronbench.batching import batches
from neuronbench.capture import native
from neuronbench.capture.batch import BatchContext
from neuronbench.data import TokenWindows
from neuronbench.errors import CaptureError
from neuronbench.names import NEURONS, act_name, parse_act_name

SCALE_TOKENS = 2048
"""Tokens of the windows that a relative rule's layer scale is measured on (:func:`spread_windows`):
16 windows of 128, whose pass added 0.02–0.05 of a plain forward to the built-in models' capture
of 50k tokens (``benchmarks/RESULTS.md``, third stop of 2026-12-07)."""


def spread_windows(n_windows: int, window: int, tokens: int = SCALE_TOKENS) -> torch.Tensor:
    """Indices ``⌊i · N / S⌋`` (``i < S``, ``S = min(N, ⌈tokens / window⌉)``): ``S`` windows spread
    evenly over ``N``, the first one included, in increasing order."""
    count = min(n_windows, -(-tokens // window))
    return torch.arange(count) * n_windows // count


def in_first_batch(sample: torch.Tensor, batch_size: int) -> bool:
    """Whether every sample window is in the first batch of ``batch_size`` windows (then that batch
    measures the scale, and :func:`sample_scales` does not run)."""
    return int(sample[-1]) < batch_size


def column_square_sums(flat: torch.Tensor, block: torch.Tensor | None = None) -> torch.Tensor:
    """float64 ``Σ_t a_{t,j}²`` of ``flat [n, W]`` (float32, contiguous): the C loop on a CPU
    (:func:`.native.square_sums`), else float64 blocks (:func:`neuronbench.activation.square_sums`)."""
    squares = native.square_sums(flat)
    return square_sums(flat, block) if squares is None else squares


def sample_scales(model: torch.nn.Module, adapter: ArchitectureAdapter, windows: TokenWindows,
                  sample: torch.Tensor, layers: tuple[int, ...], rule: ActivationRule,
                  batch_size: int) -> dict[int, float]:
    """``{layer: s_l}`` over the real tokens of the ``sample`` windows, from forward passes of
    ``batch_size`` windows through the model's backbone."""
    picked = TokenWindows(windows.input_ids[sample], windows.attention_mask[sample],
                          int(windows.attention_mask[sample].sum()))
    if picked.n_tokens == 0:
        raise CaptureError(f"the layer-scale sample (windows {sample.tolist()}) has no real tokens: "
                           "drop padding-only windows from the corpus")
    device = next(model.parameters()).device
    totals: dict[int, torch.Tensor] = {}
    batch: BatchContext | None = None

    def receive(name: str, tensor: torch.Tensor) -> None:
        layer, _ = parse_act_name(name)
        squares = column_square_sums(batch.flat(tensor).float().contiguous())
        totals[layer] = squares if layer not in totals else totals[layer] + squares.to(totals[layer].device)

    handles = [handle for layer in layers for handle in adapter.register_capture(layer, (NEURONS,), receive)]
    try:
        with torch.inference_mode():
            for input_ids, attention_mask in batches(picked, batch_size):
                batch = BatchContext.of(attention_mask.bool(), device)  # real rows gathered without a host read
                model.base_model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                 use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    missing = [act_name(layer, NEURONS) for layer in layers if layer not in totals]
    if missing:
        raise CaptureError(f"hooks did not fire for {missing} in the layer-scale pass through "
                           f"{type(model.base_model).__name__}: is the adapter right for this model?")
    return {layer: rule.scale_from_squares(totals[layer], picked.n_tokens) for layer in layers}
