"""Input-change sensitivity, for every architecture: how much a neuron's activation moves when
one input token is replaced.

``n_samples`` triples ``(window w, position p, replacement r)`` are drawn with a seeded generator:
``w`` uniformly among the full-length windows, ``p`` uniformly in ``0 .. T − h`` and ``r``
uniformly among the vocabulary without the original token and the excluded tokens. ``x'`` is
window ``w`` with ``x_p := r``. Over the ``h`` positions ``H = p .. p + h − 1`` (the replaced one
and the following ones; ``h`` = ``horizon``)::

    score_j = mean_{s, t∈H_s} |a'_j(t) − a_j(t)|  /  ( mean_{s, t∈H_s} |a_j(t)| + eps )

i.e. the mean absolute change, normalised by the neuron's mean absolute activation on the same
original positions (a scale-free score; ``eps`` only guards a neuron that is exactly 0 there).
The ``top_k`` neurons by score are reported (method ``input_change``). This needs forward passes
(two windows per sample, batched); it is a separate analysis, not a reading of the one-pass
statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.adapters.base import parse_layers
from neuronbench.data import TokenWindows
from neuronbench.detectors.delta import TOP_K, require_delta
from neuronbench.detectors.result import Detection, check_count, check_range, highest
from neuronbench.errors import CaptureError, ConfigError, CorpusError
from neuronbench.names import NEURONS, parse_act_name

N_SAMPLES = 64
"""Replacements drawn."""
HORIZON = 8
"""Positions measured from the replaced one on."""
NORMALIZER_EPS = 1e-6
"""Added to the mean absolute activation in the denominator."""
SENSITIVITY_METHODS = ("delta", "input_change")


def sensitivity_method(adapter: ArchitectureAdapter, method: str | None = None) -> str:
    """The sensitivity method to use: ``delta`` for SSMs and ``input_change`` otherwise by default;
    an explicit ``delta`` for a model without Δ raises, naming the alternative."""
    if method is None:
        return "delta" if adapter.has_ssm else "input_change"
    if method not in SENSITIVITY_METHODS:
        raise ConfigError(f"unknown sensitivity method {method!r}; choose one of {list(SENSITIVITY_METHODS)}")
    if method == "delta":
        require_delta(adapter)
    return method


def draw_replacements(windows: TokenWindows, vocab_size: int, n_samples: int, horizon: int, seed: int,
                      exclude_token_ids: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded ``(window index, position, replacement token)`` for each sample (module docstring)."""
    full = torch.nonzero(windows.attention_mask.bool().all(dim=1)).flatten()
    length = windows.input_ids.shape[1]
    if full.numel() == 0 or length < horizon:
        raise CorpusError(f"input-change sensitivity needs full windows of at least {horizon} tokens; got "
                          f"{full.numel()} full windows of {length} tokens")
    allowed = torch.tensor(sorted(set(range(vocab_size)) - set(exclude_token_ids)), dtype=torch.long)
    if allowed.numel() < 2:
        raise ConfigError("input-change sensitivity needs at least two replaceable tokens in the vocabulary")
    generator = torch.Generator().manual_seed(seed)
    window = full[torch.randint(full.numel(), (n_samples,), generator=generator)]
    position = torch.randint(length - horizon + 1, (n_samples,), generator=generator)
    original = windows.input_ids[window, position]
    at = torch.searchsorted(allowed, original)
    present = (at < allowed.numel()) & (allowed[at.clamp_max(allowed.numel() - 1)] == original)
    choices = allowed.numel() - present.long()
    draw = (torch.rand(n_samples, generator=generator, dtype=torch.float64) * choices).long()
    draw = draw + (present & (draw >= at)).long()
    return window, position, allowed[draw]


def _capture_sums(model: torch.nn.Module, adapter: ArchitectureAdapter, layers: tuple[int, ...],
                  originals: torch.Tensor, perturbed: torch.Tensor, position: torch.Tensor, horizon: int,
                  sums: dict[int, list[torch.Tensor]]) -> None:
    """One batch: add ``Σ|a' − a|`` and ``Σ|a|`` over each sample's horizon to ``sums``."""
    seen: dict[int, torch.Tensor] = {}
    batch = originals.shape[0]

    def sink(name: str, tensor: torch.Tensor) -> None:
        seen[parse_act_name(name)[0]] = tensor.reshape(2 * batch, originals.shape[1], -1)

    handles = [h for layer in layers for h in adapter.register_capture(layer, (NEURONS,), sink)]
    try:
        ids = torch.cat([originals, perturbed])
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    missing = set(layers) - set(seen)
    if missing:
        raise CaptureError(f"neuron hooks did not fire for layers {sorted(missing)} during the sensitivity pass")
    index = (position[:, None] + torch.arange(horizon))[:, :, None].to(ids.device)
    for layer, acts in seen.items():
        acts = acts.double()
        before = acts[:batch].take_along_dim(index, dim=1)
        after = acts[batch:].take_along_dim(index, dim=1)
        sums[layer][0] += (after - before).abs().sum(dim=(0, 1)).cpu()
        sums[layer][1] += before.abs().sum(dim=(0, 1)).cpu()


def input_change_sensitivity(model: torch.nn.Module, adapter: ArchitectureAdapter, windows: TokenWindows, *,
                             layers: Sequence[int] | str | None = None, n_samples: int = N_SAMPLES,
                             horizon: int = HORIZON, top_k: int = TOP_K, eps: float = NORMALIZER_EPS,
                             seed: int = 0, exclude_token_ids: Sequence[int] = (), batch_size: int = 8,
                             progress: bool = False) -> dict[int, Detection]:
    """Input-change sensitivity of every neuron of ``layers`` (module docstring); the ``top_k`` per layer.

    ``details``: ``mean_change`` and ``mean_abs_activation`` per neuron.
    """
    n_samples = check_count("input-change samples", n_samples)
    horizon = check_count("input-change horizon", horizon)
    k = check_count("top-k", top_k)
    batch_size = check_count("batch size", batch_size)
    eps = check_range("input-change normaliser eps", eps, 0.0, 1.0, low_open=True)
    chosen = parse_layers(layers, adapter.num_layers)
    window, position, replacement = draw_replacements(windows, model.config.vocab_size, n_samples, horizon, seed,
                                                      exclude_token_ids)
    sums = {layer: [torch.zeros(adapter.neuron_width(layer), dtype=torch.float64) for _ in range(2)]
            for layer in chosen}
    device = next(model.parameters()).device
    starts = range(0, n_samples, batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="input change", disable=not progress):
            part = slice(start, start + batch_size)
            originals = windows.input_ids[window[part]].to(device)
            perturbed = originals.clone()
            rows = torch.arange(perturbed.shape[0], device=device)
            perturbed[rows, position[part].to(device)] = replacement[part].to(device)
            _capture_sums(model, adapter, chosen, originals, perturbed, position[part], horizon, sums)
    measured = n_samples * horizon
    out = {}
    for layer, (change, magnitude) in sums.items():
        mean_change, mean_abs = (change / measured).numpy(), (magnitude / measured).numpy()
        scores = mean_change / (mean_abs + eps)
        out[layer] = Detection("input_change", layer, highest(scores, k), scores, "input_change",
                               {"top_k": k, "n_samples": n_samples, "horizon": horizon, "eps": eps, "seed": seed},
                               measured, {"mean_change": mean_change, "mean_abs_activation": mean_abs})
    return out

