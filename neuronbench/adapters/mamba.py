"""Mamba (``state-spaces/mamba-*-hf``): neurons are the input of ``mixer.out_proj``,

    a = (y + D ⊙ x) ⊙ silu(z),        ``intermediate_size`` wide (1536 in mamba-130m),

where ``y`` is the selective-scan output, ``x`` the post-convolution input and ``z`` the gate.
The SSM internals are read at ``mixer.x_proj``, which is called as a module on every path:

    [dt | B | C] = x_proj(x),        Δ = softplus(dt · W_dtᵀ + b_dt)      (float32)

``dt_proj`` itself is *not* called as a module by transformers' reference path, so Δ is
recomputed here from ``dt`` and ``dt_proj``'s weights, exactly as the scan does. Channel ``d``
of Δ, x, z is neuron ``d`` of the same layer.

Activation rule: ``magnitude``; ``positive`` is invalid: ``y + D⊙x`` is signed, so the neuron
fires in both signs (``a > 0`` holds on about half of the tokens of every neuron).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from neuronbench.adapters.base import ArchitectureAdapter, Tap, TensorEdit
from neuronbench.names import NEURONS, SSM_B, SSM_C, SSM_DELTA, SSM_X, SSM_Z


class MambaAdapter(ArchitectureAdapter):
    model_types = ("mamba",)
    activation_rule = "magnitude"
    invalid_rules = {"positive": "its neurons (y + D⊙x)⊙silu(z) are signed (y + D⊙x is), so a > τ holds on "
                                 "about half of the tokens of every neuron and calls half of its firing inactive"}
    has_ssm = True

    def blocks(self) -> Sequence[nn.Module]:
        return self.model.backbone.layers

    def mixer(self, layer: int) -> nn.Module:
        return self.blocks()[self.check_layer(layer)].mixer

    def neuron_module(self, layer: int) -> nn.Module:
        return self.mixer(layer).out_proj

    def taps(self, layer: int) -> list[Tap]:
        mixer = self.mixer(layer)
        return [
            Tap(mixer.out_proj, (NEURONS,), lambda inputs, _out: {NEURONS: inputs[0]}, pre=True),
            Tap(mixer.x_proj, (SSM_X, SSM_DELTA, SSM_B, SSM_C), self._ssm_extract(mixer)),
            Tap(mixer.in_proj, (SSM_Z,), self._gate_extract(mixer)),
        ]

    @staticmethod
    def _ssm_extract(mixer: nn.Module):
        rank, state = mixer.time_step_rank, mixer.ssm_state_size

        def extract(inputs: tuple, output: torch.Tensor) -> dict[str, torch.Tensor]:
            dt, b, c = torch.split(output, [rank, state, state], dim=-1)
            return {SSM_X: inputs[0], SSM_DELTA: delta_from_dt(mixer, dt), SSM_B: b, SSM_C: c}

        return extract

    @staticmethod
    def _gate_extract(mixer: nn.Module):
        width = mixer.intermediate_size

        def extract(_inputs: tuple, output: torch.Tensor) -> dict[str, torch.Tensor]:
            return {SSM_Z: output[..., width:]}

        return extract

    def ssm_parameters(self, layer: int) -> dict[str, torch.Tensor]:
        """``A = -exp(A_log)`` ``[D, N]`` and the skip ``D`` ``[D]`` of ``layer``, float32."""
        mixer = self.mixer(layer)
        return {"A": -torch.exp(mixer.A_log.float()), "D": mixer.D.float()}

    def register_head_edit(self, layer: int, edit: TensorEdit) -> RemovableHandle:
        """Mamba's attention units are its channels, i.e. the neurons of the same index."""
        return self.register_neuron_edit(layer, edit)


def delta_from_dt(mixer: nn.Module, dt: torch.Tensor) -> torch.Tensor:
    """``Δ = softplus(dt · W_dtᵀ + b_dt)`` in float32, ``[..., intermediate_size]``."""
    proj = mixer.dt_proj
    bias = proj.bias.float() if proj.bias is not None else None
    return F.softplus(F.linear(dt.float(), proj.weight.float(), bias))
