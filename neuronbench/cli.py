"""Seed-compatible entry points: ``python -m neuronbench main|ablation|ngram [flags]``.

Each maps the seed's flags onto the suite's pytest options and runs the matching selection of
``suite/`` in a ``python -m pytest`` subprocess (the library itself imports no pytest):

=================  =====================================  =====================================
seed flag          pytest option                          note
=================  =====================================  =====================================
``--models A B``   ``--model A --model B``                default: the command's models
``--layer L``      ``--layers L``                         ``all``, ``0,3,5``, ``0-11``
``--top_k K``      ``--top-k K``
``--text_limit N`` ``--max-tokens N·window``              one text = one analysis window
``--pruning_ratio``  ``--pruning-ratio``
``--save_results`` ``--out DIR`` (default analysis_outputs) without it outputs go to a temporary
                                                          directory that is removed afterwards
``--device``, ``--dtype``, ``--dataset``, ``--seeds``     passed through
=================  =====================================  =====================================

Arguments after ``--`` go to pytest unchanged (e.g. ``-- -x -q``). ``--out`` and the paths given
to ``--models``/``--dataset`` are resolved against the current directory (pytest itself runs in
the checkout). A bad flag value is a usage error printed without a traceback.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from neuronbench.config import DEFAULT_MODELS, SEED_MODELS, RunConfig, integer
from neuronbench.errors import ConfigError

SUITE_DIR = Path(__file__).resolve().parents[1] / "suite"


@dataclass(frozen=True)
class SeedCommand:
    selection: str | None
    """pytest ``-m`` marker expression (``None``: the whole suite)."""
    models: tuple[str, ...]


SEED_COMMANDS = {
    "main": SeedCommand(None, DEFAULT_MODELS),
    "ablation": SeedCommand("ablation or perplexity", DEFAULT_MODELS),
    "ngram": SeedCommand("ngram or statistics", SEED_MODELS),
}


def parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m neuronbench {command}")
    p.add_argument("--models", nargs="+", default=list(SEED_COMMANDS[command].models))
    p.add_argument("--layer", default="all")
    p.add_argument("--top_k", type=int)
    p.add_argument("--text_limit", type=int, help="number of analysis windows (texts) to analyse")
    p.add_argument("--pruning_ratio", type=float)
    p.add_argument("--save_results", action="store_true")
    p.add_argument("--out", default="analysis_outputs")
    for flag in ("--device", "--dtype", "--dataset"):
        p.add_argument(flag)
    p.add_argument("--seeds", type=int)
    return p


def from_here(value: str) -> str:
    """A path relative to the current directory made absolute (pytest runs in the checkout); a name
    that is no existing path (an alias, a hub id, ``wikitext-2``) is left as it is."""
    return str(Path(value).resolve()) if Path(value).expanduser().exists() else value


def pytest_arguments(command: str, args: argparse.Namespace, out: str) -> list[str]:
    """The ``python -m pytest`` argument list equivalent to the seed flags; ``--out`` and model or
    dataset paths are resolved against the current directory."""
    arguments = [str(SUITE_DIR), "--layers", args.layer, "--out", str(Path(out).expanduser().resolve())]
    for model in args.models:
        arguments += ["--model", from_here(model)]
    if args.text_limit is not None:
        integer(1)("--text_limit", args.text_limit)
        arguments += ["--max-tokens", str(args.text_limit * RunConfig().analysis_window)]
    for flag, value in (("--top-k", args.top_k), ("--pruning-ratio", args.pruning_ratio), ("--device", args.device),
                        ("--dtype", args.dtype), ("--dataset", args.dataset and from_here(args.dataset)),
                        ("--seeds", args.seeds)):
        if value is not None:
            arguments += [flag, str(value)]
    selection = SEED_COMMANDS[command].selection
    return arguments + (["-m", selection] if selection else [])


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """``[own flags] -- [pytest arguments]``."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def run(command: str, argv: list[str]) -> int:
    own, passthrough = split_passthrough(argv)
    args = parser(command).parse_args(own)
    if not SUITE_DIR.is_dir():
        raise ConfigError(f"the suite directory {SUITE_DIR} is missing: run from a source checkout of neuronbench")
    with tempfile.TemporaryDirectory(prefix="neuronbench-") as scratch:
        out = args.out if args.save_results else scratch
        command_line = [sys.executable, "-m", "pytest", *pytest_arguments(command, args, out), *passthrough]
        print("running:", " ".join(command_line), flush=True)
        return subprocess.call(command_line, cwd=SUITE_DIR.parent)


def main_command(argv: list[str]) -> int:
    return run("main", argv)


def ablation_command(argv: list[str]) -> int:
    return run("ablation", argv)


def ngram_command(argv: list[str]) -> int:
    return run("ngram", argv)
