"""``python -m neuronbench zoo``: regenerate or check the built-in models.

    python -m neuronbench zoo train tiny-gpt2 [--steps N] [--out DIR] [--batch-size B]
                                              [--seq-len T] [--seed S] [--threads N]
                                              [--eval-every K] [--corpus NAME|PATH] [--no-progress]
    python -m neuronbench zoo verify [tiny-gpt2 tiny-mamba ...]

``train`` runs the shipped recipe (options override single fields of it) and writes the model
directory, by default into the installed package (the files that ship). ``verify`` checks the
shipped files against their manifests.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from neuronbench.errors import NeuronbenchError
from neuronbench.zoo.artifacts import verify_builtin
from neuronbench.zoo.recipe import RECIPES, get_recipe
from neuronbench.zoo.train import train_builtin

INT_OVERRIDES = ("steps", "batch_size", "seq_len", "seed", "threads", "eval_every")
"""Integer recipe fields that have a command-line option (``--batch-size`` for ``batch_size``)."""

SUMMARY_KEYS = (
    "num_parameters", "steps", "final_train_loss", "validation_perplexity", "test_perplexity",
    "test_unigram_perplexity", "training_wall_time_s",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m neuronbench zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run a built-in model's recipe")
    train.add_argument("name", choices=sorted(RECIPES))
    train.add_argument("--out", help="output directory (default: the package's shipped directory)")
    for option in INT_OVERRIDES:
        train.add_argument(f"--{option.replace('_', '-')}", dest=option, type=int)
    train.add_argument("--corpus", help="corpus name or path (default: the recipe's, pydocs)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    verify = commands.add_parser("verify", help="check shipped files against their manifests")
    verify.add_argument("names", nargs="*", metavar="name", help=f"default: all ({', '.join(RECIPES)})")
    return parser


def _summary(name: str, manifest: dict[str, Any]) -> str:
    return f"{name}: " + ", ".join(f"{key}={manifest[key]}" for key in SUMMARY_KEYS)


def _train(args: argparse.Namespace) -> None:
    fields = (*INT_OVERRIDES, "corpus")
    overrides = {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
    recipe = get_recipe(args.name).with_overrides(**overrides)
    print(_summary(args.name, train_builtin(recipe, args.out, progress=not args.no_progress)))


def _verify(args: argparse.Namespace) -> None:
    for name in args.names or sorted(RECIPES):
        get_recipe(name)
        print(f"{_summary(name, verify_builtin(name))}: files OK")


COMMANDS = {"train": _train, "verify": _verify}


def main(argv: list[str]) -> int:
    """Run a ``zoo`` command; a neuronbench error is printed and gives exit code 1."""
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except NeuronbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
