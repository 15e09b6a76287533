"""Llama-style gated MLPs: neurons are ``act(gate_proj x) ⊙ up_proj x``, the input of
``down_proj``.

Activation rule: ``magnitude``; ``positive`` is invalid: ``up_proj x`` is linear and signed, so
the neuron is as often strongly negative as strongly positive.
"""

from neuronbench.adapters.transformer import TransformerAdapter


class LlamaAdapter(TransformerAdapter):
    model_types = ("llama", "mistral", "qwen2")
    activation_rule = "magnitude"
    invalid_rules = {"positive": "its neurons act(gate_proj x)⊙up_proj x are signed (up_proj x is linear), so "
                                 "a > τ calls half of their firing inactive"}
    blocks_path = "model.layers"
    neuron_path = "mlp.down_proj"
    attention_path = "self_attn"
    attention_out_path = "self_attn.o_proj"
