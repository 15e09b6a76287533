"""Tiny randomly initialised models of every supported family, saved to a directory and loaded
back through the real ``from_pretrained`` path. Used by the tests and the benchmarks, never as a
stand-in for a trained model in results.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
)

from neuronbench.tokenizer import train_bpe_tokenizer

TOY_VOCAB = 320
TOY_CONTEXT = 256


def _gpt2(vocab: int, **overrides) -> GPT2LMHeadModel:
    config = dict(vocab_size=vocab, n_positions=TOY_CONTEXT, n_embd=32, n_layer=2, n_head=4)
    return GPT2LMHeadModel(GPT2Config(**{**config, **overrides}))


def _opt(vocab: int, **overrides) -> OPTForCausalLM:
    config = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  ffn_dim=64, max_position_embeddings=TOY_CONTEXT, word_embed_proj_dim=32)
    return OPTForCausalLM(OPTConfig(**{**config, **overrides}))


def _llama(vocab: int, **overrides) -> LlamaForCausalLM:
    config = dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=TOY_CONTEXT)
    return LlamaForCausalLM(LlamaConfig(**{**config, **overrides}))


def _gpt_neox(vocab: int, **overrides) -> GPTNeoXForCausalLM:
    config = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=TOY_CONTEXT)
    return GPTNeoXForCausalLM(GPTNeoXConfig(**{**config, **overrides}))


def _mamba(vocab: int, **overrides) -> MambaForCausalLM:
    config = dict(vocab_size=vocab, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                  conv_kernel=4, time_step_rank=4)
    return MambaForCausalLM(MambaConfig(**{**config, **overrides}))


TOY_BUILDERS = {"gpt2": _gpt2, "opt": _opt, "llama": _llama, "gpt_neox": _gpt_neox, "mamba": _mamba}


def toy_texts() -> list[str]:
    """Training text for the toy tokenizer: the built-in ``pydocs`` train split."""
    from neuronbench.data import load_corpus

    return list(load_corpus("pydocs", "train").documents)


def build_toy_model(family: str, directory: str | Path, seed: int = 0, **overrides) -> Path:
    """Save a random tiny ``family`` model with a byte-level BPE tokenizer to ``directory``.

    The tokenizer's ``<|endoftext|>`` is id 0; the model's BOS/EOS/pad ids point at it.
    """
    directory = Path(directory)
    torch.manual_seed(seed)
    special = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    model = TOY_BUILDERS[family](overrides.pop("vocab_size", TOY_VOCAB), **{**special, **overrides})
    model.save_pretrained(directory)
    train_bpe_tokenizer(toy_texts(), model.config.vocab_size).save_pretrained(directory)
    return directory
