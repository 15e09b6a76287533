"""OPT: neurons are the post-ReLU input of ``fc2`` (Voita et al. 2023 analyse these).

Activation rule: ``positive`` (``a > 0``), the paper's: after a ReLU, "active" is exactly
"non-zero", and a neuron that is never positive writes nothing.

OPT's decoder layer flattens the MLP input to ``[B·T, H]``; the adapter records each block's
``[B, T]`` on entry and restores ``[B, T, W]`` for the captured neuron tensor. Neuron edits see
the flattened ``[B·T, W]`` tensor (neurons stay in the last dimension).
"""

import torch

from neuronbench.adapters.base import Tap
from neuronbench.adapters.transformer import TransformerAdapter
from neuronbench.names import NEURONS


class OPTAdapter(TransformerAdapter):
    model_types = ("opt",)
    activation_rule = "positive"
    blocks_path = "model.decoder.layers"
    neuron_path = "fc2"
    attention_path = "self_attn"
    attention_out_path = "self_attn.out_proj"

    def taps(self, layer: int) -> list[Tap]:
        batch_shape: list[torch.Size] = []

        def record(inputs: tuple, _output: object) -> dict[str, torch.Tensor]:
            batch_shape[:] = [inputs[0].shape[:-1]]
            return {}

        def unflatten(inputs: tuple, _output: object) -> dict[str, torch.Tensor]:
            return {NEURONS: inputs[0].reshape(*batch_shape[0], inputs[0].shape[-1])}

        neuron_tap, *others = super().taps(layer)
        record_tap = Tap(self.blocks()[self.check_layer(layer)], (NEURONS,), record, pre=True)
        return [record_tap, Tap(neuron_tap.module, (NEURONS,), unflatten, pre=True), *others]
