"""Llama-style gated MLPs: neurons are ``act(gate_proj x) ⊙ up_proj x``, the input of
``down_proj``."""

from neuronbench.adapters.transformer import TransformerAdapter


class LlamaAdapter(TransformerAdapter):
    model_types = ("llama", "mistral", "qwen2")
    default_threshold = 0.0
    blocks_path = "model.layers"
    neuron_path = "mlp.down_proj"
    attention_path = "self_attn"
    attention_out_path = "self_attn.o_proj"
