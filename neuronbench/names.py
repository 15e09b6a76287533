"""Stable names of every activation neuronbench reads (in the spirit of TransformerLens).

A captured activation is addressed as ``blocks.{layer}.{kind}``. The kinds:

=================  ==================  ==========================================================
kind               shape               what it is
=================  ==================  ==========================================================
``neurons``        ``[B, T, W]``       the neuron tensor of SPEC §4: the input of the block's
                                       output projection (GPT-2 ``mlp.c_proj``, OPT ``fc2``,
                                       Llama ``down_proj``, GPT-NeoX ``dense_4h_to_h``, Mamba
                                       ``mixer.out_proj``, i.e. ``(y + D⊙x) ⊙ silu(z)``)
``ssm.x``          ``[B, T, D]``       Mamba: the post-convolution, post-SiLU scan input ``x``
``ssm.delta``      ``[B, T, D]``       Mamba: ``Δ = softplus(dt · W_dtᵀ + b_dt)`` (float32)
``ssm.B``          ``[B, T, N]``       Mamba: the input-dependent ``B``
``ssm.C``          ``[B, T, N]``       Mamba: the input-dependent ``C``
``ssm.z``          ``[B, T, D]``       Mamba: the gate ``z`` (before SiLU)
``attn.pattern``   ``[B, H, T, T]``    transformers: attention probabilities per head
``attn.heads``     ``[B, T, H, d_h]``  transformers: per-head attention output, the input of the
                                       attention output projection split by head
=================  ==================  ==========================================================
"""

NEURONS = "neurons"
SSM_X = "ssm.x"
SSM_DELTA = "ssm.delta"
SSM_B = "ssm.B"
SSM_C = "ssm.C"
SSM_Z = "ssm.z"
ATTN_PATTERN = "attn.pattern"
ATTN_HEADS = "attn.heads"


def act_name(layer: int, kind: str) -> str:
    """The stable name of activation ``kind`` at ``layer``: ``blocks.{layer}.{kind}``."""
    return f"blocks.{layer}.{kind}"


def parse_act_name(name: str) -> tuple[int, str]:
    """Inverse of :func:`act_name`: ``"blocks.3.ssm.delta"`` -> ``(3, "ssm.delta")``."""
    prefix, layer, kind = name.split(".", 2)
    if prefix != "blocks":
        raise ValueError(f"not an activation name: {name!r}")
    return int(layer), kind


def safe_name(name: str) -> str:
    """A file-name-safe form of a model name (``org/model`` → ``org--model``)."""
    return name.strip("/").replace("/", "--").replace("\\", "--").replace(":", "-")
