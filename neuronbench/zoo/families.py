"""Model families a :class:`~neuronbench.zoo.recipe.Recipe` can train (a registry).

Each family knows how to check a recipe against its configuration (before any computation),
how to build a freshly initialised model for a vocabulary, and what to reset before saving.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    MambaConfig,
    MambaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
)

from neuronbench.errors import ConfigError
from neuronbench.zoo.recipe import Recipe


@dataclass(frozen=True)
class Family:
    """``check(recipe)`` raises ``ConfigError``; ``build(model_kwargs, vocab_size, eos_id)``
    returns the initialised model; ``prepare_for_save(model)`` resets training-only options."""

    name: str
    check: Callable[[Recipe], None]
    build: Callable[[dict[str, Any], int, int], nn.Module]
    prepare_for_save: Callable[[nn.Module], None]


T = TypeVar("T")


def _special_ids(eos_id: int) -> dict[str, int]:
    return {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}


def _construct(recipe_model: dict[str, Any], make: Callable[[], T]) -> T:
    """``make()``, with a configuration transformers rejects reported as ``ConfigError``."""
    try:
        return make()
    except (ValueError, TypeError) as error:
        raise ConfigError(f"invalid model configuration {recipe_model}: {error}") from error


def _check_transformer(recipe: Recipe, config: Any, context: str, width: str, heads: str) -> None:
    """The window must fit the context (``config.<context>``); heads must divide the width."""
    if recipe.seq_len > getattr(config, context):
        raise ConfigError(
            f"recipe {recipe.name!r}: seq_len {recipe.seq_len} exceeds the model's context "
            f"{context}={getattr(config, context)}"
        )
    if getattr(config, width) % getattr(config, heads):
        raise ConfigError(
            f"recipe {recipe.name!r}: {width}={getattr(config, width)} is not divisible by "
            f"{heads}={getattr(config, heads)}"
        )


def _check_gpt2(recipe: Recipe) -> None:
    """:func:`_check_transformer` with GPT-2's names."""
    config = _construct(recipe.model, lambda: GPT2Config(**recipe.model))
    _check_transformer(recipe, config, "n_positions", "n_embd", "n_head")


def _build_gpt2(model: dict[str, Any], vocab_size: int, eos_id: int) -> nn.Module:
    return _construct(
        model, lambda: GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, **_special_ids(eos_id), **model))
    )


def _check_opt(recipe: Recipe) -> None:
    """:func:`_check_transformer` with OPT's names; the block must be pre-LayerNorm with a ReLU
    MLP (the OPT-125m..66B layout in which Voita et al. found dead, token and positional neurons)."""
    config = _construct(recipe.model, lambda: OPTConfig(**recipe.model))
    _check_transformer(recipe, config, "max_position_embeddings", "hidden_size", "num_attention_heads")
    if not config.do_layer_norm_before or config.activation_function != "relu":
        raise ConfigError(
            f"recipe {recipe.name!r}: an OPT recipe needs do_layer_norm_before=True and "
            f"activation_function='relu', got {config.do_layer_norm_before} and "
            f"{config.activation_function!r}"
        )


def _build_opt(model: dict[str, Any], vocab_size: int, eos_id: int) -> nn.Module:
    return _construct(
        model, lambda: OPTForCausalLM(OPTConfig(vocab_size=vocab_size, **_special_ids(eos_id), **model))
    )


def mambapy_available() -> bool:
    """Whether the ``mambapy`` package (the parallel scan) is installed."""
    return importlib.util.find_spec("mambapy") is not None


def _check_mamba(recipe: Recipe) -> None:
    """``use_mambapy=True`` needs the ``mambapy`` package (transformers would silently fall back
    to the much slower sequential scan)."""
    if recipe.model.get("use_mambapy") and not mambapy_available():
        raise ConfigError(
            f"recipe {recipe.name!r} trains with the mambapy parallel scan (use_mambapy=True), but "
            "the package 'mambapy' is not installed. Fix: `pip install mambapy`, or train with "
            "the (much slower) sequential scan by overriding use_mambapy=False"
        )


def _build_mamba(model: dict[str, Any], vocab_size: int, eos_id: int) -> nn.Module:
    return _construct(
        model, lambda: MambaForCausalLM(MambaConfig(vocab_size=vocab_size, **_special_ids(eos_id), **model))
    )


def _mamba_prepare_for_save(model: nn.Module) -> None:
    """The scan used in training is not part of the weights: loaders need no ``mambapy``."""
    model.config.use_mambapy = False


def _nothing(_model: nn.Module) -> None:
    return None


FAMILIES: dict[str, Family] = {
    "gpt2": Family("gpt2", _check_gpt2, _build_gpt2, _nothing),
    "opt": Family("opt", _check_opt, _build_opt, _nothing),
    "mamba": Family("mamba", _check_mamba, _build_mamba, _mamba_prepare_for_save),
}


def family_of(recipe: Recipe) -> Family:
    """The :class:`Family` of ``recipe``; ``ConfigError`` for an unknown family."""
    if recipe.family not in FAMILIES:
        raise ConfigError(
            f"recipe {recipe.name!r}: unknown model family {recipe.family!r}; choose one of "
            f"{', '.join(FAMILIES)}"
        )
    return FAMILIES[recipe.family]
