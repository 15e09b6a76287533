"""GPT-NeoX / Pythia: neurons are the post-GELU input of ``mlp.dense_4h_to_h``."""

from neuronbench.adapters.transformer import TransformerAdapter


class GPTNeoXAdapter(TransformerAdapter):
    model_types = ("gpt_neox",)
    default_threshold = 0.0
    blocks_path = "gpt_neox.layers"
    neuron_path = "mlp.dense_4h_to_h"
    attention_path = "attention"
    attention_out_path = "attention.dense"
