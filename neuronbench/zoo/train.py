"""Running a :class:`~neuronbench.zoo.recipe.Recipe`: tokenizer, training loop, evaluation and
the shipped files with their manifest.

Order of work (every check that can fail does so before the first optimizer step):
validate the recipe → load the train / validation / test splits → train the tokenizer on
train → cut train into full windows and draw the batch order → build the model
(``torch.manual_seed(seed)`` first) → train → score validation and test, and the unigram
baseline → write the directory (:func:`~neuronbench.zoo.artifacts.write_model_dir`).
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from neuronbench.data import SPLITS, Corpus, TokenWindows, load_corpus, token_stream, tokenize_windows
from neuronbench.errors import ConfigError
from neuronbench.tokenizer import train_bpe_tokenizer
from neuronbench.zoo.artifacts import builtin_dir, write_model_dir
from neuronbench.zoo.evaluation import unigram_log_probs, unigram_perplexity, window_perplexity
from neuronbench.zoo.families import family_of
from neuronbench.zoo.recipe import (
    RECIPE_VERSION,
    Recipe,
    batch_indices,
    learning_rate_factor,
    validate_recipe,
)

EVAL_SPLITS = ("validation", "test")


@dataclass
class TrainLog:
    """Per-step batch losses, the loop's wall time, and ``(step, validation perplexity)``."""

    losses: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    validation_curve: list[tuple[int, float]] = field(default_factory=list)

    def final_loss(self, window: int) -> float:
        """Mean batch loss of the last ``window`` steps."""
        tail = self.losses[-window:]
        return sum(tail) / len(tail)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the duration of the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW (β = 0.9, 0.95); weight decay on parameters with ≥ 2 dimensions only."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.learning_rate, betas=(0.9, 0.95))


def _train_step(model: nn.Module, batch: torch.Tensor, optimizer, recipe: Recipe, step: int) -> float:
    """One optimizer step on ``batch``; returns its loss (``ConfigError`` if not finite)."""
    loss = model(input_ids=batch, labels=batch).loss
    value = loss.item()
    if not math.isfinite(value):
        raise ConfigError(
            f"training {recipe.name!r} diverged at step {step}: loss {value}; lower the learning "
            f"rate (now {recipe.learning_rate})"
        )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return value


def train_steps(
    model: nn.Module,
    order: torch.Tensor,
    windows: torch.Tensor,
    recipe: Recipe,
    validate: Callable[[], float],
    progress: bool = True,
) -> TrainLog:
    """Train ``model`` on ``windows[order[step]]`` for each step (``order`` from
    :func:`~neuronbench.zoo.recipe.batch_indices`), with the recipe's AdamW and schedule.

    The progress bar shows the mean loss of the last ``loss_window`` steps and tokens/s; every
    ``eval_every`` steps (if > 0) ``validate()`` is recorded in ``validation_curve``.
    """
    optimizer = make_optimizer(model, recipe)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: learning_rate_factor(s, recipe.steps, recipe.warmup_fraction, recipe.min_lr_ratio),
    )
    log = TrainLog()
    tokens_per_step = order.shape[1] * windows.shape[1]
    model.train()
    start = time.perf_counter()
    with tqdm(total=len(order), desc=f"train {recipe.name}", unit="step", disable=not progress) as bar:
        for step, indices in enumerate(order):
            log.losses.append(_train_step(model, windows[indices], optimizer, recipe, step))
            schedule.step()
            if recipe.eval_every and (step + 1) % recipe.eval_every == 0:
                log.validation_curve.append((step + 1, validate()))
                bar.write(f"step {step + 1}: validation perplexity {log.validation_curve[-1][1]:.2f}")
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{log.final_loss(recipe.loss_window):.4f}",
                tok_s=f"{tokens_per_step * (step + 1) / elapsed:.0f}",
            )
            bar.update()
    log.wall_time_s = time.perf_counter() - start
    return log


def _versions(recipe: Recipe) -> dict[str, str]:
    """Versions of Python and of the packages the run depended on."""
    packages = ["neuronbench", "torch", "transformers", "tokenizers"]
    if recipe.model.get("use_mambapy"):
        packages.append("mambapy")
    return {"python": platform.python_version(), **{name: version(name) for name in packages}}


@dataclass(frozen=True)
class PreparedData:
    """The corpus splits, the trained tokenizer, the training windows and batch order, and the
    evaluation windows, all made before the model exists."""

    splits: dict[str, Corpus]
    tokenizer: Any
    train_windows: TokenWindows
    order: torch.Tensor
    eval_windows: dict[str, TokenWindows]


def prepare_data(recipe: Recipe) -> PreparedData:
    """Load the splits, train the tokenizer, cut windows; ``CorpusError`` for an empty corpus
    or one without a full training window, ``ConfigError`` for a batch larger than it."""
    splits = {split: load_corpus(recipe.corpus, split) for split in SPLITS}
    tokenizer = train_bpe_tokenizer(splits["train"].documents, recipe.vocab_size)
    train_windows = tokenize_windows(splits["train"], tokenizer, recipe.seq_len, drop_last=True)
    order = batch_indices(train_windows.input_ids.shape[0], recipe.batch_size, recipe.steps, recipe.seed)
    eval_windows = {s: tokenize_windows(splits[s], tokenizer, recipe.seq_len) for s in EVAL_SPLITS}
    return PreparedData(splits, tokenizer, train_windows, order, eval_windows)


def evaluate(model: nn.Module, data: PreparedData, recipe: Recipe) -> dict[str, Any]:
    """Model and unigram perplexity on validation and test (same targets, see
    :mod:`neuronbench.zoo.evaluation`); the unigram model is estimated on train."""
    log_probs = unigram_log_probs(token_stream(data.splits["train"], data.tokenizer), len(data.tokenizer))
    result: dict[str, Any] = {}
    for split, windows in data.eval_windows.items():
        model_ppl = window_perplexity(model, windows, recipe.eval_batch_size)
        result[f"{split}_perplexity"] = model_ppl.perplexity
        result[f"{split}_unigram_perplexity"] = unigram_perplexity(log_probs, windows).perplexity
        result[f"{split}_tokens_scored"] = model_ppl.tokens_scored
    return result


def _manifest(
    recipe: Recipe, data: PreparedData, model: nn.Module, log: TrainLog, metrics: dict[str, Any]
) -> dict[str, Any]:
    tokens = recipe.steps * recipe.batch_size * recipe.seq_len
    return {
        "name": recipe.name,
        "recipe_version": RECIPE_VERSION,
        "family": recipe.family,
        "corpus": recipe.corpus,
        "corpus_source": data.splits["train"].source,
        "corpus_sha256": {split: corpus.sha256 for split, corpus in data.splits.items()},
        "seed": recipe.seed,
        "steps": recipe.steps,
        "batch_size": recipe.batch_size,
        "seq_len": recipe.seq_len,
        "vocab_size": len(data.tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": data.train_windows.n_tokens,
        "train_windows": data.train_windows.input_ids.shape[0],
        "tokens_seen": tokens,
        "final_train_loss": log.final_loss(recipe.loss_window),
        "final_train_loss_steps": min(recipe.loss_window, recipe.steps),
        **metrics,
        "validation_curve": log.validation_curve,
        "training_wall_time_s": round(log.wall_time_s, 1),
        "tokens_per_second": round(tokens / log.wall_time_s, 1),
        "threads": recipe.threads,
        "versions": _versions(recipe),
        "recipe": recipe.as_dict(),
    }


def train_builtin(recipe: Recipe, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ``recipe`` and write the model directory to ``out`` (default: the package directory
    of the built-in model ``recipe.name``); return the manifest as written.

    Sets the global torch seed (``torch.manual_seed(recipe.seed)``) before building the model,
    so that initialisation and dropout are reproducible; uses ``recipe.threads`` threads.
    """
    validate_recipe(recipe)
    family = family_of(recipe)
    started = time.perf_counter()
    data = prepare_data(recipe)
    with torch_threads(recipe.threads):
        torch.manual_seed(recipe.seed)
        model = family.build(recipe.model, len(data.tokenizer), data.tokenizer.eos_token_id)
        validation = data.eval_windows["validation"]
        log = train_steps(
            model,
            data.order,
            data.train_windows.input_ids,
            recipe,
            lambda: window_perplexity(model, validation, recipe.eval_batch_size).perplexity,
            progress,
        )
        metrics = evaluate(model, data, recipe)
    family.prepare_for_save(model)
    manifest = _manifest(recipe, data, model, log, metrics)
    manifest["total_wall_time_s"] = round(time.perf_counter() - started, 1)
    directory = Path(out) if out is not None else builtin_dir(recipe.name)
    return write_model_dir(directory, model, data.tokenizer, manifest)
