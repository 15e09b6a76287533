"""The architecture adapter interface: where the neurons of a model family live.

An adapter knows, for one family of Hugging Face models, the number of layers, the neuron width
per layer, its default activation rule (:mod:`neuronbench.activation`, with the reason in the
adapter's docstring) and the rules that make no sense for it, how to *read* every named activation of
:mod:`neuronbench.names` with forward hooks, and how to *replace* chosen neurons (or attention
heads) in the very tensor they were found in. Adding an architecture means adding one adapter
module to :mod:`neuronbench.adapters` and registering it there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from neuronbench.activation import ActivationRule, resolve_rule
from neuronbench.errors import AnalysisUnavailableError, CaptureError, LayerRangeError
from neuronbench.names import act_name

Sink = Callable[[str, torch.Tensor], None]
"""Receives ``(activation name, tensor)`` from a capture hook."""

TensorEdit = Callable[[torch.Tensor], torch.Tensor]
"""Maps an activation tensor to its replacement (same shape)."""

Extract = Callable[[tuple, object], dict[str, torch.Tensor]]
"""Maps a hooked module's ``(positional inputs, output)`` to ``{kind: tensor}``."""


@dataclass(frozen=True)
class Tap:
    """A place to read activations: a module, and how its inputs/outputs give named kinds.

    ``pre=True`` reads at a forward *pre*-hook (inputs only, output is ``None``). ``extract``
    may return a subset of ``kinds`` (a tap that only records context returns ``{}``).
    """

    module: nn.Module
    kinds: tuple[str, ...]
    extract: Extract
    pre: bool = False


def weight_in_features(module: nn.Module) -> int:
    """Input width of a projection: ``nn.Linear`` (weight ``[out, in]``) or GPT-2 ``Conv1D``
    (weight ``[in, out]``)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0]
    raise CaptureError(f"cannot tell the input width of {type(module).__name__}")


def weight_by_input(module: nn.Module) -> torch.Tensor:
    """A projection's weight as ``[in, out]``: row ``i`` is what input coordinate ``i`` writes
    (``nn.Linear`` stores ``[out, in]``, GPT-2 ``Conv1D`` ``[in, out]``)."""
    if isinstance(module, nn.Linear):
        return module.weight.T
    if type(module).__name__ == "Conv1D":
        return module.weight
    raise CaptureError(f"cannot read the input-major weight of {type(module).__name__}")


class ArchitectureAdapter(ABC):
    """One model family's view of neurons, activations and ablation hooks."""

    model_types: ClassVar[tuple[str, ...]] = ()
    """``config.model_type`` values this adapter serves."""

    activation_rule: ClassVar[str] = "positive"
    """Default activation rule (:data:`neuronbench.activation.ACTIVATION_RULES`)."""

    invalid_rules: ClassVar[Mapping[str, str]] = {}
    """Rules that make no sense for this family, with the reason (asking for one is a usage error)."""

    has_ssm: ClassVar[bool] = False
    """True for state-space models that expose Δ, B, C, x (hidden attention, Δ-sensitivity)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config

    # -- structure -----------------------------------------------------------------------------
    @abstractmethod
    def blocks(self) -> Sequence[nn.Module]:
        """The residual blocks, in order."""

    @abstractmethod
    def neuron_module(self, layer: int) -> nn.Module:
        """The module whose first positional input is the neuron tensor of ``layer``."""

    @abstractmethod
    def taps(self, layer: int) -> list[Tap]:
        """Every place to read activations of ``layer``."""

    @property
    def num_layers(self) -> int:
        return len(self.blocks())

    @property
    def family(self) -> str:
        return self.model_types[0]

    @property
    def num_heads(self) -> int:
        """Attention heads per layer; :class:`AnalysisUnavailableError` for models without heads."""
        raise AnalysisUnavailableError(f"{self.family} models have no attention heads")

    def activation(self, name: str | None = None) -> ActivationRule:
        """The activation rule ``name`` (``None``: the family's default), checked for this family."""
        return resolve_rule(name, self.activation_rule, self.invalid_rules, self.family)

    def check_layer(self, layer: int) -> int:
        """Return ``layer`` if valid, else raise :class:`LayerRangeError` naming the range."""
        if not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise LayerRangeError(
                f"layer {layer!r} is out of range for this {self.family} model: "
                f"valid layers are 0..{self.num_layers - 1}"
            )
        return layer

    def neuron_width(self, layer: int) -> int:
        """Number of neurons in ``layer`` (input width of its output projection)."""
        return weight_in_features(self.neuron_module(self.check_layer(layer)))

    def available_kinds(self, layer: int) -> tuple[str, ...]:
        """The activation kinds this adapter can capture at ``layer``."""
        kinds = (kind for tap in self.taps(self.check_layer(layer)) for kind in tap.kinds)
        return tuple(dict.fromkeys(kinds))

    # -- hooks ---------------------------------------------------------------------------------
    def register_capture(self, layer: int, kinds: Iterable[str], sink: Sink) -> list[RemovableHandle]:
        """Register hooks that send ``blocks.{layer}.{kind}`` tensors to ``sink`` on every
        forward pass. Raises :class:`AnalysisUnavailableError` for a kind this model lacks."""
        wanted = set(kinds)
        taps = self.taps(self.check_layer(layer))
        available = tuple(dict.fromkeys(kind for tap in taps for kind in tap.kinds))
        missing = wanted - set(available)
        if missing:
            raise AnalysisUnavailableError(
                f"{self.family} models do not provide {sorted(missing)} "
                f"(available at layer {layer}: {list(available)})"
            )
        handles = []
        for tap in taps:
            chosen = wanted.intersection(tap.kinds)
            if chosen:
                handles.append(self._register_tap(layer, tap, chosen, sink))
        return handles

    @staticmethod
    def _register_tap(layer: int, tap: Tap, chosen: set[str], sink: Sink) -> RemovableHandle:
        def emit(inputs: tuple, output: object) -> None:
            produced = tap.extract(inputs, output)
            for kind in chosen.intersection(produced):
                sink(act_name(layer, kind), produced[kind])

        if tap.pre:
            return tap.module.register_forward_pre_hook(lambda _m, inputs: emit(inputs, None))
        return tap.module.register_forward_hook(lambda _m, inputs, output: emit(inputs, output))

    def register_neuron_edit(self, layer: int, edit: TensorEdit) -> RemovableHandle:
        """Replace the neuron tensor of ``layer`` by ``edit(neurons)`` before the output
        projection reads it. ``edit`` sees neurons in the last dimension (leading dimensions may
        be flattened, as in OPT). Weights are untouched; remove the handle to restore the model."""
        module = self.neuron_module(self.check_layer(layer))

        def pre_hook(_module: nn.Module, inputs: tuple) -> tuple:
            return (edit(inputs[0]), *inputs[1:])

        return module.register_forward_pre_hook(pre_hook)

    def register_head_edit(self, layer: int, edit: TensorEdit) -> RemovableHandle:
        """Replace the per-head attention output ``[B, T, H, d_h]`` of ``layer`` by
        ``edit(heads)``. For models whose attention units are neurons (Mamba channels) this is
        :meth:`register_neuron_edit`."""
        raise AnalysisUnavailableError(f"{self.family} models have no attention heads to edit")

    # -- model calls ---------------------------------------------------------------------------
    def forward_kwargs(self, kinds: Iterable[str]) -> dict:
        """Extra keyword arguments the forward pass needs to produce ``kinds``."""
        return {}


def layer_ranges(spec: str) -> list[tuple[int, int]]:
    """The ``(first, last)`` ranges of a layer selection string (``"0,3,5"``, ``"0-11"``); ``all``
    gives ``[]``. Raises :class:`LayerRangeError` for garbage and for a reversed range (``3-1``)."""
    if spec == "all":
        return []
    ranges = []
    for part in str(spec).split(","):
        first, _, last = part.strip().partition("-")
        try:
            bounds = (int(first), int(last or first))
        except ValueError:
            raise LayerRangeError(
                f"cannot parse layer selection {spec!r}: use 'all', '0,3,5' or '0-11'") from None
        if bounds[0] > bounds[1]:
            raise LayerRangeError(
                f"layer range {part.strip()!r} in --layers {spec!r} is reversed: write the lower layer first "
                f"({bounds[1]}-{bounds[0]})")
        ranges.append(bounds)
    return ranges


def parse_layers(spec: str | Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    """Parse a layer selection: ``"all"``/``None``, ``"0,3,5"``, ``"0-11"``, or a list of ints.

    Raises :class:`LayerRangeError` naming the valid range for any index outside it, and for a
    reversed range (:func:`layer_ranges`).
    """
    if spec is None or spec == "all":
        return tuple(range(num_layers))
    if isinstance(spec, str):
        try:
            ranges = layer_ranges(spec)
        except LayerRangeError as error:
            raise LayerRangeError(f"{error} (valid layers are 0..{num_layers - 1})") from None
        layers = [layer for first, last in ranges for layer in range(first, last + 1)]
    else:
        layers = list(spec)
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad or not layers:
        raise LayerRangeError(
            f"layers {bad or spec!r} are out of range: valid layers are 0..{num_layers - 1}"
        )
    return tuple(sorted(set(layers)))
