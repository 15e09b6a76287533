"""Registers neuronbench's pytest plugins and its command-line options (one table:
:data:`neuronbench.config.OPTIONS`)."""

from __future__ import annotations

import pytest

from neuronbench.config import OPTIONS

pytest_plugins = ["fixtures.plugin", "results.plugin"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("neuronbench")
    for option in OPTIONS:
        if option.flag_only:
            group.addoption(option.flag, dest=option.field, action="store_true", default=None, help=option.help)
        elif option.repeat:
            group.addoption(option.flag, dest=option.field, action="append", type=option.type, default=None,
                            help=option.help)
        else:
            group.addoption(option.flag, dest=option.field, type=option.type, default=None, help=option.help)
