"""The recipe of the built-in trained models ``tiny-gpt2``, ``tiny-opt`` and ``tiny-mamba``.

A :class:`Recipe` fixes everything a training run depends on: the corpus, the tokenizer's
vocabulary size, the model configuration, the window length, batch, steps, optimizer, schedule,
seed and CPU threads. :data:`RECIPES` holds the shipped recipes; :func:`validate_recipe`
rejects an impossible one before anything is computed.

Choices (``RECIPE_VERSION`` 1), made to train on 2 shared CPU cores in well under 45 minutes
on the ~100k-token ``pydocs`` train split:

* Tokenizer: byte-level BPE, 2048 entries (256 bytes, ``<|endoftext|>``, 1791 merges), trained
  on the train split (:func:`neuronbench.tokenizer.train_bpe_tokenizer`). A small vocabulary
  leaves ~100k training tokens, about 50 per vocabulary entry, so most tokens are seen often
  enough to be learned (and to be detected by token-detecting neurons).
* Data: the train split's :func:`~neuronbench.data.token_stream` cut into consecutive
  non-overlapping full windows of ``seq_len`` tokens (:func:`~neuronbench.data.tokenize_windows`
  with ``drop_last=True``), the same windowing as the analyses. Batches are drawn in the order
  of :func:`batch_indices` (a fresh seeded permutation of the windows per epoch).
* ``tiny-gpt2``: ``GPT2LMHeadModel``, 4 layers, width 128, 4 heads, MLP 512 (the neurons),
  context 128 (= ``seq_len``, so every learned position embedding is trained), dropout 0.1;
  600 steps of 16 × 128 tokens (~12 passes over the train split). The validation perplexity was
  still falling at the end (recorded every 100 steps in the manifest).
* ``tiny-mamba``: ``MambaForCausalLM``, 4 layers, width 128, ``expand`` 2 (256 neurons per
  layer), state size 8, conv 4, Δ rank 8; 200 steps of 16 × 128 tokens (~4 passes). Mamba has
  no dropout and memorizes this small split quickly: in a trial 600-step schedule the
  validation perplexity was lowest near step 200 (119) and rose after it (138 at step 300,
  train loss 2.3), so the schedule ends at 200 (the shipped run: validation 141, test 75,
  train loss 3.40; curve in the manifest). The SSM state is 8 rather than the usual 16 because
  transformers' CPU scan materializes ``[batch, 256, seq_len, state]`` tensors several times
  per layer; at 8 they stay inside the CPU cache (measured: ~10× faster per step than 16).
  Training uses the ``mambapy`` parallel scan (``use_mambapy=True``; transformers' sequential
  reference scan is 10-100× slower to train on CPU, its backward pass re-reads the whole
  ``[batch, 256, seq_len, state]`` tensor at every position); the scan is not a property of the
  weights, so the model is saved with ``use_mambapy=False`` and loads without ``mambapy``.
* ``tiny-opt``: ``OPTForCausalLM`` with ``do_layer_norm_before=True`` (pre-LayerNorm), ReLU MLP
  and learned absolute positions (the layout of OPT-125m..66B, in which Voita et al. 2023 found
  dead, token-detecting and positional neurons); 4 layers, width 128, 4 heads, MLP 512 (the
  neurons), context 128, dropout 0.1. Learning rate 1e-2: the regime where ReLU units die under
  Adam (Voita et al. attribute dead neurons to ReLU + Adam). Found with 100-step runs at 1e-3,
  3e-3, 1e-2 and 3e-2 (dead neurons per layer at τ = 0 over 50,000 pydocs train tokens:
  0/1/3/31, 0/76/180/224, 0/1/1/220, 0/120/235/238 of 512; validation perplexity 447, 455, 474,
  483 — the rate barely changes the loss at 100 steps). Then 400 steps of 16 × 128 tokens at
  1e-3, 3e-3 and 1e-2: dead 0/0/0/0, 0/0/0/2 and 0/0/73/149; positional (MI > 0.05)
  8/0/0/0 (layer 0, oscillatory), none and none; token-detecting none at any rate; test
  perplexity 121.4, 156.9 and 216.8. Only 1e-2 kills units, so it ships, at the cost of
  perplexity; the positional neurons of the short runs fade with training and no rate gave a
  token-detecting neuron (the closest have one unigram covering their few activations, but
  that token is not covered: it occurs under 5 times or the neuron misses over 5% of it). One thread (``threads=1``: with six developers
  on two cores, two OpenMP threads ran ~8× slower than one), ~12 minutes. Corpus: pydocs
  only; no package on the registries here was found quickly that ships English running text
  (a Gutenberg-named password generator ships none).
* Optimizer: AdamW (β = 0.9, 0.95; weight decay on matrices only), gradient-norm clipping at
  1.0, learning rate by :func:`learning_rate_factor` (linear warm-up, cosine decay).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from neuronbench.errors import ConfigError

RECIPE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """Everything a built-in model's training run depends on.

    ``model`` holds the keyword arguments of the family's transformers config (without the
    vocabulary size, which is the trained tokenizer's). ``warmup_fraction``: share of the steps
    spent in linear warm-up; ``min_lr_ratio``: final learning rate as a share of the peak;
    ``loss_window``: the reported final train loss is the mean batch loss of the last
    ``loss_window`` steps; ``eval_every`` > 0 records the validation perplexity every that many
    steps (0: only at the end); ``threads``: ``torch.set_num_threads`` while training.
    """

    name: str
    family: str
    model: dict[str, Any] = field(default_factory=dict)
    corpus: str = "pydocs"
    vocab_size: int = 2048
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 600
    learning_rate: float = 3e-3
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    loss_window: int = 20
    eval_every: int = 0
    eval_batch_size: int = 16

    def with_overrides(self, model: dict[str, Any] | None = None, **fields: Any) -> Recipe:
        """A copy with ``fields`` replaced and ``model`` merged into the model config."""
        return dataclasses.replace(self, model={**self.model, **(model or {})}, **fields)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPES: dict[str, Recipe] = {
    "tiny-gpt2": Recipe(
        name="tiny-gpt2",
        family="gpt2",
        model=dict(n_layer=4, n_embd=128, n_head=4, n_inner=512, n_positions=128),
        eval_every=100,
    ),
    "tiny-opt": Recipe(
        name="tiny-opt",
        family="opt",
        model=dict(num_hidden_layers=4, hidden_size=128, word_embed_proj_dim=128,
                   num_attention_heads=4, ffn_dim=512, max_position_embeddings=128,
                   do_layer_norm_before=True, activation_function="relu"),
        steps=400,
        learning_rate=1e-2,
        threads=1,
        eval_every=100,
    ),
    "tiny-mamba": Recipe(
        name="tiny-mamba",
        family="mamba",
        model=dict(num_hidden_layers=4, hidden_size=128, expand=2, state_size=8,
                   conv_kernel=4, time_step_rank=8, use_mambapy=True),
        steps=200,
        eval_every=50,
    ),
}


def get_recipe(name: str) -> Recipe:
    """The shipped recipe called ``name``; ``ConfigError`` listing the known ones otherwise."""
    if name not in RECIPES:
        raise ConfigError(f"no built-in model recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


# --------------------------------------------------------------------------------------------
# Validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_POSITIVE_INTS = ("vocab_size", "batch_size", "steps", "threads", "loss_window", "eval_batch_size")
_NON_NEGATIVE_INTS = ("seed", "eval_every")


def _check_numbers(recipe: Recipe) -> None:
    """Integer fields in range; rates and fractions finite and in range."""
    for name in _POSITIVE_INTS:
        value = getattr(recipe, name)
        if not _is_int(value) or value <= 0:
            raise ConfigError(f"recipe {recipe.name!r}: {name} must be a positive integer, got {value!r}")
    for name in _NON_NEGATIVE_INTS:
        value = getattr(recipe, name)
        if not _is_int(value) or value < 0:
            raise ConfigError(f"recipe {recipe.name!r}: {name} must be an integer ≥ 0, got {value!r}")
    if not _is_int(recipe.seq_len) or recipe.seq_len < 2:
        raise ConfigError(
            f"recipe {recipe.name!r}: seq_len must be an integer ≥ 2 (a window needs a token to "
            f"predict from and one to predict), got {recipe.seq_len!r}"
        )
    checks = {
        "learning_rate": recipe.learning_rate > 0,
        "warmup_fraction": 0 <= recipe.warmup_fraction < 1,
        "min_lr_ratio": 0 <= recipe.min_lr_ratio <= 1,
        "weight_decay": recipe.weight_decay >= 0,
        "grad_clip": recipe.grad_clip > 0,
    }
    for name, ok in checks.items():
        value = getattr(recipe, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and ok):
            raise ConfigError(f"recipe {recipe.name!r}: {name}={value!r} is out of range")


def validate_recipe(recipe: Recipe) -> None:
    """Raise ``ConfigError`` for an impossible recipe: unknown family, a count ≤ 0, a rate out
    of range, a window longer than the model's context, or a scan that is not installed."""
    from neuronbench.zoo.families import family_of

    _check_numbers(recipe)
    family_of(recipe).check(recipe)


# --------------------------------------------------------------------------------------------
# Data order and schedule


def batch_indices(n_windows: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """``[steps, batch_size]`` window indices: the concatenation of per-epoch permutations
    ``randperm(n_windows)`` drawn from ``torch.Generator().manual_seed(seed)``, cut into
    consecutive batches (a batch may span two epochs; every window is used once per epoch).
    Requires ``batch_size ≤ n_windows`` so that no batch repeats a window.
    """
    if batch_size > n_windows:
        raise ConfigError(
            f"batch_size {batch_size} exceeds the {n_windows} training windows; lower the batch "
            "size or the sequence length"
        )
    generator = torch.Generator().manual_seed(seed)
    epochs = -(-steps * batch_size // n_windows)
    order = torch.cat([torch.randperm(n_windows, generator=generator) for _ in range(epochs)])
    return order[: steps * batch_size].view(steps, batch_size)


def learning_rate_factor(step: int, steps: int, warmup_fraction: float, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate at 0-based ``step`` of ``steps``.

    With ``w = max(1, round(warmup_fraction · steps))`` warm-up steps:
    ``(step + 1) / w`` for ``step < w``, then cosine decay
    ``r + (1 − r) · ½ (1 + cos(π · p))`` with ``p = (step − w) / max(1, steps − w)`` and
    ``r = min_lr_ratio`` (so the last step runs close to ``r``).
    """
    warmup = max(1, round(warmup_fraction * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
