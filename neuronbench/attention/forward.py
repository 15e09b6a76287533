"""One forward and backward pass exposing the attention units of chosen layers.

The *unit tensor* of a layer is the tensor the adapter's ``register_head_edit`` hands to an edit:
transformers ``[B, T, H, d_h]`` (each head's attention-mixed output, the input of the attention
output projection), Mamba ``[B, T, D]`` (the neurons ``(y + D⊙x) ⊙ silu(z)``, whose channel ``d``
is attention unit ``d``). The pass records it, the requested named activations (detached), and
the gradient of the language-model loss with respect to it:

    L = Σ_windows Σ_{t : m_t = m_{t+1} = 1} −log softmax(logits_t)[token_{t+1}]

(the *summed* next-token cross-entropy over real positions, so that a window's gradients do not
depend on which other windows share its batch). Gradients come from ``torch.autograd.grad``:
parameters' ``.grad`` are never touched. Autograd must be available, so this cannot run inside
``torch.inference_mode()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.errors import CaptureError, ConfigError
from neuronbench.names import act_name, parse_act_name
from neuronbench.perplexity import token_nll


@dataclass
class UnitPass:
    """What :func:`unit_pass` saw: ``captured[layer][kind]``, ``outputs[layer]`` (the unit tensor),
    ``grads[layer]`` (``∂L/∂outputs[layer]``), all detached; ``loss`` is ``L``."""

    captured: dict[int, dict[str, torch.Tensor]]
    outputs: dict[int, torch.Tensor]
    grads: dict[int, torch.Tensor]
    loss: float


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
    """The summed next-token cross-entropy ``L`` of the module docstring (at least float32)."""
    scored = (attention_mask[:, :-1] * attention_mask[:, 1:]).bool()
    return token_nll(logits[:, :-1], input_ids[:, 1:])[scored].sum()


def _require_grad(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """Make the embedding output a graph root when the model's parameters are frozen."""
    return output if output.requires_grad else output.detach().requires_grad_(True)


def unit_pass(model: nn.Module, adapter: ArchitectureAdapter, layers: Sequence[int],
              kinds: Iterable[str], input_ids: torch.Tensor,
              attention_mask: torch.Tensor) -> UnitPass:
    """Run ``model`` once forward and once backward on a batch; see the module docstring."""
    if torch.is_inference_mode_enabled():
        raise ConfigError("attention-unit scores need gradients of the LM loss: call them outside "
                          "torch.inference_mode()")
    kinds = tuple(kinds)
    captured: dict[int, dict[str, torch.Tensor]] = {layer: {} for layer in layers}
    outputs: dict[int, torch.Tensor] = {}

    def sink(name: str, tensor: torch.Tensor) -> None:
        layer, kind = parse_act_name(name)
        captured[layer][kind] = tensor.detach()

    def keeper(layer: int):
        def edit(tensor: torch.Tensor) -> torch.Tensor:
            outputs[layer] = tensor
            return tensor

        return edit

    with ExitStack() as stack:
        handles = [model.get_input_embeddings().register_forward_hook(_require_grad)]
        for layer in layers:
            handles += adapter.register_capture(layer, kinds, sink)
            handles.append(adapter.register_head_edit(layer, keeper(layer)))
        for handle in handles:
            stack.callback(handle.remove)
        with torch.enable_grad():
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                           **adapter.forward_kwargs(kinds)).logits
            _check_seen(layers, kinds, captured, outputs)
            loss = next_token_loss(logits, input_ids, attention_mask)
            grads = torch.autograd.grad(loss, [outputs[layer] for layer in layers], allow_unused=True)
    unused = [layer for layer, grad in zip(layers, grads) if grad is None]
    if unused:
        raise CaptureError(f"the LM loss does not depend on the attention units of layers {unused}: "
                           "the head edit's tensor is not on the model's forward path")
    return UnitPass(
        captured=captured,
        outputs={layer: outputs[layer].detach() for layer in layers},
        grads={layer: grad.detach() for layer, grad in zip(layers, grads)},
        loss=loss.item(),
    )


def _check_seen(layers: Sequence[int], kinds: tuple[str, ...], captured: dict[int, dict[str, torch.Tensor]],
                outputs: dict[int, torch.Tensor] | None) -> None:
    missing = [act_name(layer, kind) for layer in layers for kind in kinds if kind not in captured[layer]]
    if outputs is not None:
        missing += [f"layer {layer} head edit" for layer in layers if layer not in outputs]
    if missing:
        raise CaptureError(f"hooks did not fire for {missing}: the model's forward pass did not call "
                           "the hooked modules (is the adapter right for this model?)")


def capture_activations(model: nn.Module, adapter: ArchitectureAdapter, layers: Sequence[int],
                        kinds: Iterable[str], input_ids: torch.Tensor,
                        attention_mask: torch.Tensor | None = None) -> dict[int, dict[str, torch.Tensor]]:
    """``{layer: {kind: tensor}}`` from one forward pass without gradients (``[B, T, ...]``)."""
    kinds = tuple(kinds)
    captured: dict[int, dict[str, torch.Tensor]] = {layer: {} for layer in layers}

    def sink(name: str, tensor: torch.Tensor) -> None:
        layer, kind = parse_act_name(name)
        captured[layer][kind] = tensor.detach().clone()

    with ExitStack() as stack:
        for layer in layers:
            for handle in adapter.register_capture(layer, kinds, sink):
                stack.callback(handle.remove)
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                  **adapter.forward_kwargs(kinds))
    _check_seen(layers, kinds, captured, None)
    return captured
