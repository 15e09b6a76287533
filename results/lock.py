"""One run per ``--out`` at a time.

Two runs writing the same ``--out`` would each rewrite ``results.json``, ``neurons.json`` and
``report.md`` from their own records, so one run's outputs would silently replace the other's.
Instead the run takes an exclusive lock on ``<out>/.neuronbench.lock`` (``fcntl.flock``) before
any case runs and holds it until the session ends; a second run that finds it taken refuses at
start with a usage error naming the first run (pid, host, start time, command line, read from the
lock file). The kernel drops the lock when the holder exits, even by SIGKILL, so a crashed run
never blocks the next one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

from neuronbench.errors import ConfigError

LOCK_NAME = ".neuronbench.lock"


class RunLock:
    """The held lock of one ``--out`` directory; :meth:`release` lets the next run in."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self.stream = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.stream.seek(0)
            holder = self.stream.read().strip() or "an unknown run"
            self.stream.close()
            raise ConfigError(f"--out {str(out)!r} is in use by another neuronbench run ({holder}); two runs "
                              "sharing --out would overwrite each other's results. Wait for it to finish or "
                              "choose another --out") from None
        self.stream.seek(0)
        self.stream.truncate()
        self.stream.write(describe_this_run() + "\n")
        self.stream.flush()

    def release(self) -> None:
        if not self.stream.closed:
            fcntl.flock(self.stream, fcntl.LOCK_UN)
            self.stream.close()


def describe_this_run() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "command": " ".join(sys.argv)})
