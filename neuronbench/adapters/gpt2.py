"""GPT-2: neurons are the post-GELU input of ``mlp.c_proj`` (3072 wide in gpt2)."""

from neuronbench.adapters.transformer import TransformerAdapter


class GPT2Adapter(TransformerAdapter):
    model_types = ("gpt2",)
    default_threshold = 0.0
    blocks_path = "transformer.h"
    neuron_path = "mlp.c_proj"
    attention_path = "attn"
    attention_out_path = "attn.c_proj"
