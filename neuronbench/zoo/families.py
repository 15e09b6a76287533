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
from transformers import GPT2Config, GPT2LMHeadModel, MambaConfig, MambaForCausalLM

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


def _check_gpt2(recipe: Recipe) -> None:
    """The window must fit the context (``n_positions``); heads must divide the width."""
    config = _construct(recipe.model, lambda: GPT2Config(**recipe.model))
    if recipe.seq_len > config.n_positions:
        raise ConfigError(
            f"recipe {recipe.name!r}: seq_len {recipe.seq_len} exceeds the model's context "
            f"n_positions={config.n_positions}"
        )
    if config.n_embd % config.n_head:
        raise ConfigError(
            f"recipe {recipe.name!r}: n_embd={config.n_embd} is not divisible by n_head={config.n_head}"
        )


def _build_gpt2(model: dict[str, Any], vocab_size: int, eos_id: int) -> nn.Module:
    return _construct(
        model, lambda: GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, **_special_ids(eos_id), **model))
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
