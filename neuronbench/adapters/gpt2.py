"""GPT-2: neurons are the post-GELU input of ``mlp.c_proj`` (3072 wide in gpt2).

Activation rule: ``magnitude`` (``|a| > τ·s_l``). GELU is not ReLU: a neuron that never exceeds 0
still writes values down to GELU's minimum (≈ −0.17 at the pre-activation ≈ −0.75) into the
residual stream, so ``a > 0`` would call a writing neuron "dead". ``positive`` stays available
(``--active positive``: the paper's rule on GELU's ReLU-like branch).
"""

from neuronbench.adapters.transformer import TransformerAdapter


class GPT2Adapter(TransformerAdapter):
    model_types = ("gpt2",)
    activation_rule = "magnitude"
    blocks_path = "transformer.h"
    neuron_path = "mlp.c_proj"
    attention_path = "attn"
    attention_out_path = "attn.c_proj"
