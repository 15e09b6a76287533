"""Command-line entry point: ``python -m neuronbench <command> ...``.

Commands are registered in ``COMMANDS`` (name -> ``"module:function"``); each function takes the
remaining arguments and returns an exit code. A :class:`~neuronbench.errors.NeuronbenchError`
is printed as one message without a traceback (exit code 2, like an argparse usage error).
"""

from __future__ import annotations

import importlib
import sys

from neuronbench.errors import NeuronbenchError

COMMANDS: dict[str, str] = {
    "main": "neuronbench.cli:main_command",
    "ablation": "neuronbench.cli:ablation_command",
    "ngram": "neuronbench.cli:ngram_command",
    "zoo": "neuronbench.zoo.cli:main",
    "report": "neuronbench.replay:report_command",
    "compare": "neuronbench.replay:compare_command",
    "screenshots": "neuronbench.browser:screenshots_command",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m neuronbench {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    module, function = COMMANDS[argv[0]].split(":")
    try:
        return getattr(importlib.import_module(module), function)(argv[1:])
    except NeuronbenchError as error:  # a usage error: its message, no traceback
        print(f"python -m neuronbench {argv[0]}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
