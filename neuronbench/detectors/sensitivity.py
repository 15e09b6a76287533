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

**Null (neurons permuted within each replacement; no extra pass).** Every neuron after the
replaced position can move, so "no signal" is not "no change": what a top-k must show is that its
neurons are more input-sensitive than the layer's other neurons by more than the sampling error of
``S = n_samples`` replacements. In the neuron's own unit ``u_j = h · (mean_{s,t∈H_s} |a_j(t)| + eps)``,
each sample gives a change ``c_{s,j} = Σ_{t∈H_s} |a'_j(t) − a_j(t)| / u_j`` and a magnitude
``m_{s,j} = Σ_{t∈H_s} |a_j(t)| / u_j``, and ``score_j = Σ_s c_{s,j} / S``. The null is a layer whose
neurons differ only by chance: a null neuron takes, at each sample ``s`` independently, the pair
``(c, m)_{s,π_s(j)}`` of a uniformly random neuron of the layer, and scores
``Σ_s c_{s,π_s(j)} / Σ_s m_{s,π_s(j)}`` (so the sampling error of the normaliser is in the null too;
the ``eps`` guard is left out, it only matters for a neuron that is 0 on every horizon, whose score is
0). This is exact when the neurons are exchangeable and independent given the samples; neurons that
truly differ (by their weights) are real differences, not chance, and truly sensitive neurons in
the layer only make the null more generous. :data:`NULL_ROUNDS` independent rounds of ``W`` null
neurons (seeded) give the null distribution ``F₀`` of the score:

* the null count of the selection: ``W · p`` with ``p = P_{F₀}(score ≥ c)`` at the top-k cutoff ``c``
  (the k-th highest score), with Monte Carlo error ``W · sqrt(p (1 − p) / (rounds · W))``;
* per neuron ``null_p = (1 + #{null scores ≥ score_j}) / (1 + rounds · W)``;
* ``null_threshold``: the ``1 − 1/W`` quantile of ``F₀`` (a null layer has about one neuron above it)
  and ``above_null``: how many of the top-k exceed it.

It reads the per-sample sums of the passes already made (``[S, W]`` per layer). Rejected
alternatives: replacing a token by itself gives a change of exactly 0 in a deterministic forward
pass (a null of float noise, not of chance); the Δ detector's Normal fit to the layer's scores
misses the right skew of a mean of absolute changes and the normaliser's error (on a layer of
exchangeable neurons it predicted 10–19 of a top-20 that were all chance, this null 18–24); a
second set of replacements would double the forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.adapters.base import parse_layers
from neuronbench.batching import fit_batch_size, windows_per_batch
from neuronbench.data import TokenWindows
from neuronbench.detectors.delta import TOP_K, require_delta
from neuronbench.detectors.null import WARN_FRACTION, NullCalibration, calibrate
from neuronbench.detectors.result import Detection, check_count, check_range, highest
from neuronbench.errors import CaptureError, ConfigError, CorpusError
from neuronbench.names import NEURONS, parse_act_name

N_SAMPLES = 64
"""Replacements drawn."""
HORIZON = 8
"""Positions measured from the replaced one on."""
NORMALIZER_EPS = 1e-6
"""Added to the mean absolute activation in the denominator."""
NULL_ROUNDS = 20
"""Rounds of ``W`` simulated null neurons of the input-change null."""
NULL_SEED = 0
"""Seed of the input-change null (the null is deterministic)."""
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
                  sums: dict[int, list[list[torch.Tensor]]]) -> None:
    """One batch: append each sample's ``Σ|a' − a|`` and ``Σ|a|`` over its horizon (``[batch, W]``) to
    ``sums``, from one forward pass of the model's backbone (``model.base_model``: no logits are
    read) over the originals and the perturbed windows."""
    seen: dict[int, torch.Tensor] = {}
    batch = originals.shape[0]

    def sink(name: str, tensor: torch.Tensor) -> None:
        seen[parse_act_name(name)[0]] = tensor.reshape(2 * batch, originals.shape[1], -1)

    handles = [h for layer in layers for h in adapter.register_capture(layer, (NEURONS,), sink)]
    try:
        ids = torch.cat([originals, perturbed])
        model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
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
        sums[layer][0].append((after - before).abs().sum(dim=1).cpu())
        sums[layer][1].append(before.abs().sum(dim=1).cpu())


def permutation_null(change: np.ndarray, magnitude: np.ndarray, scores: np.ndarray, chosen: np.ndarray,
                     warn_fraction: float, rounds: int = NULL_ROUNDS, seed: int = NULL_SEED
                     ) -> tuple[dict, NullCalibration]:
    """``(details, calibration)`` of the null of the module docstring from each sample's change and
    magnitude in the neuron's own unit (``c [S, W]``, ``m [S, W]``)."""
    samples, width = change.shape
    rng = np.random.default_rng(seed)
    rows = np.arange(samples)[:, None]
    drawn_scores = []
    for _ in range(rounds):
        pick = rng.integers(width, size=(samples, width))
        total = magnitude[rows, pick].sum(axis=0)
        drawn_scores.append(np.divide(change[rows, pick].sum(axis=0), total, out=np.zeros(width), where=total > 0))
    null = np.sort(np.concatenate(drawn_scores))

    def exceeding(values: np.ndarray) -> np.ndarray:
        return null.size - np.searchsorted(null, values, side="left")

    p = float(exceeding(np.array([scores[chosen].min()]))[0]) / null.size
    threshold = float(np.quantile(null, 1 - 1 / width))
    details = {"null_p": (1 + exceeding(scores)) / (1 + null.size), "null_threshold": threshold,
               "above_null": int((scores[chosen] > threshold).sum())}
    calibration = calibrate("neurons permuted within each replacement (simulated)", np.full(width, p), chosen.size,
                            warn_fraction, width * math.sqrt(p * (1 - p) / null.size))
    return details, calibration


def input_change_sensitivity(model: torch.nn.Module, adapter: ArchitectureAdapter, windows: TokenWindows, *,
                             layers: Sequence[int] | str | None = None, n_samples: int = N_SAMPLES,
                             horizon: int = HORIZON, top_k: int = TOP_K, eps: float = NORMALIZER_EPS,
                             seed: int = 0, exclude_token_ids: Sequence[int] = (), batch_size: int | None = None,
                             warn_fraction: float = WARN_FRACTION, progress: bool = False) -> dict[int, Detection]:
    """Input-change sensitivity of every neuron of ``layers`` (module docstring); the ``top_k`` per layer,
    with the chance-spread null.

    ``details``: ``mean_change``, ``mean_abs_activation`` and ``robust_z`` per neuron. ``batch_size``:
    samples per forward pass, each an original and a perturbed window (``None``: as many as fill
    :data:`neuronbench.batching.BATCH_TOKENS` with both); on a GPU probed with the first samples'
    pass (its sums discarded) and halved on out-of-memory (:func:`neuronbench.batching.fit_batch_size`).
    """
    n_samples = check_count("input-change samples", n_samples)
    horizon = check_count("input-change horizon", horizon)
    k = check_count("top-k", top_k)
    batch_size = windows_per_batch(batch_size, 2 * windows.input_ids.shape[1])
    eps = check_range("input-change normaliser eps", eps, 0.0, 1.0, low_open=True)
    chosen = parse_layers(layers, adapter.num_layers)
    window, position, replacement = draw_replacements(windows, model.config.vocab_size, n_samples, horizon, seed,
                                                      exclude_token_ids)
    device = next(model.parameters()).device

    def run(part: slice, sums: dict[int, list[list[torch.Tensor]]]) -> None:
        originals = windows.input_ids[window[part]].to(device)
        perturbed = originals.clone()
        rows = torch.arange(perturbed.shape[0], device=device)
        perturbed[rows, position[part].to(device)] = replacement[part].to(device)
        _capture_sums(model, adapter, chosen, originals, perturbed, position[part], horizon, sums)

    def no_sums() -> dict[int, list[list[torch.Tensor]]]:
        return {layer: [[], []] for layer in chosen}

    batch_size = fit_batch_size(lambda size: run(slice(0, size), no_sums()), min(batch_size, n_samples), device)
    sums = no_sums()
    with torch.inference_mode():
        for start in tqdm(range(0, n_samples, batch_size), desc="input change", disable=not progress):
            run(slice(start, start + batch_size), sums)
    measured = n_samples * horizon
    out = {}
    for layer, parts in sums.items():
        change, magnitude = (torch.cat(part).numpy() for part in parts)
        mean_change, mean_abs = change.sum(axis=0) / measured, magnitude.sum(axis=0) / measured
        scores = mean_change / (mean_abs + eps)
        chosen = highest(scores, k)
        unit = horizon * (mean_abs + eps)
        details, null = permutation_null(change / unit, magnitude / unit, scores, chosen, warn_fraction)
        out[layer] = Detection("input_change", layer, chosen, scores, "input_change",
                               {"top_k": k, "n_samples": n_samples, "horizon": horizon, "eps": eps, "seed": seed,
                                "warn_fraction": warn_fraction},
                               measured, {"mean_change": mean_change, "mean_abs_activation": mean_abs, **details},
                               null)
    return out

