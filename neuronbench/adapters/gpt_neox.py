"""GPT-NeoX / Pythia: neurons are the post-GELU input of ``mlp.dense_4h_to_h``.

Activation rule: ``magnitude``, for the reason given for GPT-2 (GELU writes negative values);
``positive`` stays available.
"""

from neuronbench.adapters.transformer import TransformerAdapter


class GPTNeoXAdapter(TransformerAdapter):
    model_types = ("gpt_neox",)
    activation_rule = "magnitude"
    blocks_path = "gpt_neox.layers"
    neuron_path = "mlp.dense_4h_to_h"
    attention_path = "attention"
    attention_out_path = "attention.dense"
