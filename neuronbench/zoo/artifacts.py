"""The shipped files of a built-in model: writing them atomically, and verifying them.

A built-in model directory holds what ``save_pretrained`` writes for the model and its
tokenizer (``config.json``, ``generation_config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``) and ``manifest.json``, whose ``files`` entry maps
each of those file names to its SHA-256. :func:`verify_builtin` checks them against it, so a
missing, truncated or edited file is reported by name with the command that regenerates it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from neuronbench.errors import ModelLoadError

ZOO_ROOT = Path(__file__).parent
"""Where the built-in models ship (package data): ``ZOO_ROOT / <name>`` (``models.ZOO_DIR``)."""

MANIFEST = "manifest.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
FILE_MODE = 0o644


def builtin_dir(name: str) -> Path:
    """The package directory of built-in model ``name``."""
    return ZOO_ROOT / name


def regenerate_hint(name: str) -> str:
    return f"Regenerate it with `python -m neuronbench zoo train {name}`."


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _previous_files(out: Path) -> set[str]:
    """File names listed by the manifest already in ``out`` (none if it has no readable one)."""
    try:
        return set(json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def write_model_dir(out: Path, model: nn.Module, tokenizer: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Save ``model`` and ``tokenizer`` with ``manifest`` (plus the ``files`` hashes) into ``out``.

    Everything is written to a temporary sibling directory first and then moved into ``out``
    file by file with ``os.replace``, the manifest last; files that the previous manifest listed
    and the new one does not are removed. Returns the manifest as written.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        files = {p.name: file_sha256(p) for p in sorted(stage.iterdir()) if p.is_file()}
        written = {**manifest, "files": files}
        (stage / MANIFEST).write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
        stale = _previous_files(out) - set(files)
        out.mkdir(parents=True, exist_ok=True)
        for name in [*files, MANIFEST]:
            os.chmod(stage / name, FILE_MODE)
            os.replace(stage / name, out / name)
        for name in stale:
            (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return written


def read_manifest(name: str, directory: Path) -> dict[str, Any]:
    """The manifest of built-in model ``name`` in ``directory``; ``ModelLoadError`` naming the
    file when it is missing or unreadable."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ModelLoadError(
            f"built-in model {name!r} is missing: directory {directory} does not exist. "
            f"{regenerate_hint(name)}"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError as error:
        raise ModelLoadError(
            f"built-in model {name!r}: file {path} is missing. {regenerate_hint(name)}"
        ) from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(
            f"built-in model {name!r}: file {path} is corrupted ({error}). {regenerate_hint(name)}"
        ) from error
    if not isinstance(files, dict) or not set(REQUIRED_FILES) <= set(files):
        raise ModelLoadError(
            f"built-in model {name!r}: file {path} does not list the required files "
            f"{', '.join(REQUIRED_FILES)}. {regenerate_hint(name)}"
        )
    return manifest


def verify_builtin(name: str, directory: str | Path | None = None) -> dict[str, Any]:
    """Check every shipped file of built-in model ``name`` against its manifest's SHA-256.

    ``directory`` defaults to :func:`builtin_dir`. Raises ``ModelLoadError`` naming the first
    missing or corrupted file (truncated, edited) and how to regenerate it; returns the manifest.
    """
    directory = builtin_dir(name) if directory is None else Path(directory)
    manifest = read_manifest(name, directory)
    for file_name, expected in manifest["files"].items():
        path = directory / file_name
        if not path.is_file():
            raise ModelLoadError(f"built-in model {name!r}: file {path} is missing. {regenerate_hint(name)}")
        actual = file_sha256(path)
        if actual != expected:
            raise ModelLoadError(
                f"built-in model {name!r}: file {path} is corrupted ({path.stat().st_size} bytes; "
                f"SHA-256 {actual[:16]}… differs from {expected[:16]}… recorded in {MANIFEST}). "
                f"{regenerate_hint(name)}"
            )
    return manifest
