"""Attention knockout: remove the attention from chosen source positions to chosen target
positions in chosen layers (Endy et al. 2025, "Mamba Knockout"; for transformers as in Geva et
al. 2023, "Dissecting Recall of Factual Associations").

A knockout is a set ``K ⊂ {(i, j) : j < i}`` of (target, source) pairs of a length-``T``
sequence, applied to every unit of each chosen layer:

* a head: its probabilities of the knocked-out pairs are set to 0 after the softmax and not
  renormalised, ``o_i = Σ_{j : (i,j) ∉ K} p_ij v_j`` (the layer also returns these masked
  probabilities);
* a Mamba channel: the scan output is recomputed from the hidden attention without the knocked-out
  entries, ``y'_i = Σ_{j : (i,j) ∉ K} α_ij x_j``, and the neuron becomes
  ``(y'_i + D x_i) ⊙ silu(z_i)`` for every target row ``i`` that has a knocked-out pair. Every
  other row keeps the model's own value bit for bit, and an empty ``K`` changes nothing.

Patterns (:data:`TARGETS`, :data:`SOURCES`; spec ``"TARGETS<-SOURCES"``, e.g. ``last<-previous:4``):
targets ``last`` (``i = T − 1``) or ``all``; sources ``earlier`` (every ``j < i``), ``first:k``
(``j < min(k, i)``) or ``previous:k`` (``i − k ≤ j < i``). A random knockout of the same size
(:func:`random_knockout`) removes, in every target row, as many sources as the pattern does,
drawn uniformly without replacement from ``0..i−1`` with ``numpy.random.default_rng((seed, T))``.

For transformers the whole model runs eager attention while a knockout is active (it needs the
probabilities, which SDPA never forms); :data:`NO_KNOCKOUT` is the unablated model under the same
implementation. Knockouts act on the sequence length ``T`` the layer sees, so they are meant for unpadded batches
of equal-length sequences (:mod:`neuronbench.ablation.knockout` builds such windows).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.adapters.attention_impl import eager_attention
from neuronbench.attention.heads import head_count
from neuronbench.attention.hidden import DEFAULT_MEMORY_BUDGET, iter_hidden_attention
from neuronbench.errors import AnalysisUnavailableError, CaptureError, ConfigError
from neuronbench.names import SSM_B, SSM_C, SSM_DELTA, SSM_X, SSM_Z, parse_act_name

PairMask = Callable[[int], torch.Tensor]
"""``T ↦`` a bool ``[T, T]`` mask of the knocked-out (target, source) pairs, strictly below the
diagonal."""


def _last(length: int) -> torch.Tensor:
    rows = torch.zeros(length, dtype=torch.bool)
    rows[-1] = True
    return rows


TARGETS: dict[str, Callable[[int], torch.Tensor]] = {
    "last": _last,
    "all": lambda length: torch.ones(length, dtype=torch.bool),
}
"""Target rows of a length-``T`` sequence, a bool ``[T]``."""


def _earlier(length: int, _k: int) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril(-1)


def _first(length: int, k: int) -> torch.Tensor:
    mask = _earlier(length, k)
    mask[:, k:] = False
    return mask


def _previous(length: int, k: int) -> torch.Tensor:
    return _earlier(length, k) & ~torch.ones(length, length, dtype=torch.bool).tril(-k - 1)


SOURCES: dict[str, tuple[Callable[[int, int], torch.Tensor], bool]] = {
    "earlier": (_earlier, False),
    "first": (_first, True),
    "previous": (_previous, True),
}
"""Source pattern name → (``(T, k) ↦`` bool ``[T, T]`` of allowed pairs, whether it takes ``k``)."""


@dataclass(frozen=True)
class Knockout:
    """A knockout ``name`` (its spec) of the pairs ``pairs(T)`` in ``layers`` (every unit)."""

    name: str
    layers: tuple[int, ...]
    pairs: PairMask

    def mask(self, length: int) -> torch.Tensor:
        """The knocked-out pairs of a length-``length`` sequence, checked to lie below the diagonal."""
        mask = self.pairs(length)
        if mask.shape != (length, length) or mask.dtype != torch.bool or bool(mask.triu().any()):
            raise ConfigError(f"knockout {self.name!r}: the pair mask must be a bool [T, T] strictly below "
                              "the diagonal (a target can only lose earlier sources)")
        return mask


NO_KNOCKOUT = Knockout("none", (), lambda length: torch.zeros(length, length, dtype=torch.bool))
"""Nothing knocked out (the reference of every knockout)."""


def parse_knockout(spec: str, layers: Sequence[int]) -> Knockout:
    """``"TARGETS<-SOURCES"`` (module docstring) in ``layers`` → :class:`Knockout`."""
    target, arrow, source = spec.partition("<-")
    name, colon, count = source.partition(":")
    if not arrow or target not in TARGETS or name not in SOURCES:
        raise ConfigError(f"knockout {spec!r}: expected TARGETS<-SOURCES with TARGETS one of {sorted(TARGETS)} and "
                          f"SOURCES one of earlier, first:k, previous:k (e.g. last<-previous:4)")
    pattern, takes_k = SOURCES[name]
    if takes_k != bool(colon) or (takes_k and not (count.isdigit() and int(count) > 0)):
        raise ConfigError(f"knockout {spec!r}: {name!r} " + ("needs a positive count, e.g. "
                          f"{name}:4" if takes_k else "takes no count"))
    k = int(count) if takes_k else 0
    if not layers:
        raise ConfigError(f"knockout {spec!r}: no layers chosen")
    return Knockout(spec, tuple(layers), lambda length: pattern(length, k) & TARGETS[target](length)[:, None])


def random_knockout(knockout: Knockout, seed: int) -> Knockout:
    """The same number of knocked-out sources in every target row, drawn at random (module
    docstring); deterministic in ``(seed, T)``."""

    @lru_cache(maxsize=8)
    def pairs(length: int) -> torch.Tensor:
        rng = np.random.default_rng((seed, length))
        counts = knockout.mask(length).sum(-1).tolist()
        drawn = torch.zeros(length, length, dtype=torch.bool)
        for row, count in enumerate(counts):
            if count:
                drawn[row, torch.from_numpy(rng.choice(row, size=count, replace=False))] = True
        return drawn

    return Knockout(f"random({knockout.name}, seed={seed})", knockout.layers, pairs)


# -- transformers: masked probabilities ---------------------------------------------------------
KNOCKOUT_ATTENTION = "neuronbench_knockout"
"""The attention implementation registered with transformers for knocked-out layers."""

_ACTIVE: dict[nn.Module, Knockout] = {}


def _eager_of(module: nn.Module) -> Callable:
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise AnalysisUnavailableError(f"{type(module).__name__} has no eager_attention_forward to knock out "
                                       "attention probabilities in")
    return eager


def knockout_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's own eager attention, then ``p_ij := 0`` on the knocked-out pairs and
    ``o = p v`` from the masked probabilities (values repeated for grouped key/value heads)."""
    output, weights = _eager_of(module)(module, query, key, value, attention_mask, **kwargs)
    length = weights.shape[-1]
    if weights.shape[-2] != length:
        raise CaptureError("attention knockout needs the full square attention (no cache)")
    mask = _ACTIVE[module].mask(length)
    if not bool(mask.any()):
        return output, weights
    kept = weights.masked_fill(mask.to(weights.device), 0.0)
    values = value.repeat_interleave(weights.shape[1] // value.shape[1], dim=1)
    return torch.matmul(kept, values).transpose(1, 2).contiguous(), kept


AttentionInterface.register(KNOCKOUT_ATTENTION, knockout_attention)


@contextmanager
def _knocked_heads(adapter: ArchitectureAdapter, knockout: Knockout) -> Iterator[None]:
    """The whole model runs eager attention meanwhile (the probabilities and the additive causal
    mask that eager attention uses are needed), the knocked-out layers :func:`knockout_attention`."""
    modules = [adapter.attention_module(layer) for layer in knockout.layers]
    saved = [module.config for module in modules]
    with ExitStack() as stack:
        stack.enter_context(eager_attention(adapter.model))
        stack.enter_context(_swapped(modules, saved, knockout))
        yield


@contextmanager
def _swapped(modules: list[nn.Module], saved: list, knockout: Knockout) -> Iterator[None]:
    try:
        for module in modules:
            config = copy.copy(module.config)
            config._attn_implementation = KNOCKOUT_ATTENTION
            module.config = config
            _ACTIVE[module] = knockout
        yield
    finally:
        for module, config in zip(modules, saved):
            module.config = config
            _ACTIVE.pop(module, None)


# -- Mamba: the scan recomputed without the knocked-out entries ---------------------------------
SSM_KINDS = (SSM_X, SSM_DELTA, SSM_B, SSM_C, SSM_Z)


def knocked_scan(neurons: torch.Tensor, kinds: dict[str, torch.Tensor], a: torch.Tensor, d: torch.Tensor,
                 mask: torch.Tensor, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
    """One sequence's neurons ``[T, D]`` with every target row of ``mask`` recomputed as
    ``(Σ_{j ∉ K(i)} α_ij x_j + D x_i) ⊙ silu(z_i)``; ``neurons`` itself when ``mask`` is empty."""
    targets = mask.any(-1).nonzero().flatten()
    if targets.numel() == 0:
        return neurons
    x = kinds[SSM_X].float()
    mixed = torch.zeros_like(x)
    kept = (~mask).to(x.device)
    for block in iter_hidden_attention(kinds[SSM_DELTA], kinds[SSM_B], kinds[SSM_C], a,
                                       memory_budget_bytes=memory_budget_bytes, first_query=int(targets[0])):
        start, stop = block.query_start, block.query_stop
        alpha = block.alpha * kept[start:stop, :stop]
        values = x[:stop, block.channels].T.unsqueeze(-1)
        mixed[start:stop, block.channels] = torch.bmm(alpha, values).squeeze(-1).T
    rebuilt = (mixed + d * x) * F.silu(kinds[SSM_Z].float())
    out = neurons.clone()
    out[targets] = rebuilt[targets].to(neurons.dtype)
    return out


@contextmanager
def _knocked_channels(adapter: ArchitectureAdapter, knockout: Knockout,
                      memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET) -> Iterator[None]:
    with ExitStack() as stack:
        for layer in knockout.layers:
            seen: dict[str, torch.Tensor] = {}
            parameters = {name: value.detach() for name, value in adapter.ssm_parameters(layer).items()}

            def sink(name: str, tensor: torch.Tensor, seen=seen) -> None:
                seen[parse_act_name(name)[1]] = tensor

            def edit(neurons: torch.Tensor, seen=seen, parameters=parameters, layer=layer) -> torch.Tensor:
                if set(seen) != set(SSM_KINDS):
                    raise CaptureError(f"layer {layer}: the scan inputs were not captured before its neurons")
                mask = knockout.mask(neurons.shape[1])
                rows = [knocked_scan(neurons[b], {k: v[b] for k, v in seen.items()}, parameters["A"],
                                     parameters["D"], mask, memory_budget_bytes) for b in range(neurons.shape[0])]
                seen.clear()
                return torch.stack(rows)

            for handle in (*adapter.register_capture(layer, SSM_KINDS, sink), adapter.register_neuron_edit(layer, edit)):
                stack.callback(handle.remove)
        yield


@contextmanager
def knocked_out(adapter: ArchitectureAdapter, knockout: Knockout,
                memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET) -> Iterator[Knockout]:
    """Within the ``with`` block ``knockout`` acts on the model (module docstring); everything
    is restored on exit, exception or not."""
    for layer in knockout.layers:
        adapter.check_layer(layer)
    if adapter.has_ssm:
        with _knocked_channels(adapter, knockout, memory_budget_bytes):
            yield knockout
    else:
        head_count(adapter)
        with _knocked_heads(adapter, knockout):
            yield knockout
