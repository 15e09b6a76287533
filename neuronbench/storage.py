"""Atomic files and the on-disk form of activation statistics.

Every write goes to a temporary file in the target directory and is moved into place with
``os.replace``, so a crashed or interrupted run never leaves a half-written file: a reader sees
the previous version or the new one.

Statistics are stored as one ``.npz`` with arrays named ``layer{l}/{array}`` plus the global
arrays (``token_ids``, ``token_occurrences``) and a JSON ``metadata`` entry.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np

from neuronbench.capture import ActivationStatistics
from neuronbench.errors import NeuronbenchError

GLOBAL_ARRAYS = ActivationStatistics.GLOBAL_ARRAYS
FORMAT = ("neuronbench-statistics", 2, tuple(f.name for f in fields(ActivationStatistics)))
"""Identifies the on-disk layout; part of every disk-cache key, so a changed layout never loads."""


def write_bytes_atomic(path: str | Path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload: object) -> Path:
    """Strict JSON: non-finite floats (a z-score against zero-spread controls) are written as the
    strings ``"inf"``, ``"-inf"``, ``"nan"``, never as invalid bare ``Infinity``/``NaN``."""
    text = json.dumps(finite_json(payload), indent=2, allow_nan=False, default=_json_default)
    return write_text_atomic(path, text + "\n")


def finite_json(value: object) -> object:
    """``value`` with every non-finite float replaced by its string name."""
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return str(float(value))
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def write_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes_atomic(path, buffer.getvalue())


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def save_statistics(stats: ActivationStatistics, path: str | Path) -> Path:
    """Store ``stats`` as one ``.npz`` (atomic)."""
    arrays = {f"layer{layer}/{name}": value for layer, named in stats.layers.items() for name, value in named.items()}
    for name in GLOBAL_ARRAYS:
        if getattr(stats, name) is not None:
            arrays[name] = getattr(stats, name)
    scalars = {f.name: getattr(stats, f.name) for f in fields(stats) if f.name not in ("layers", *GLOBAL_ARRAYS)}
    arrays["metadata"] = np.array(json.dumps(scalars, default=_json_default))
    return write_npz_atomic(path, arrays)


def load_statistics(path: str | Path) -> ActivationStatistics:
    """Read statistics written by :func:`save_statistics`."""
    try:
        return _read_statistics(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise NeuronbenchError(f"cannot read activation statistics {path}: {error}; delete it to recompute") from error


def _read_statistics(path: str | Path) -> ActivationStatistics:
    with np.load(path, allow_pickle=False) as archive:
        contents = {name: archive[name] for name in archive.files}
    scalars = json.loads(str(contents.pop("metadata")))
    layers: dict[int, dict[str, np.ndarray]] = {}
    for name, value in contents.items():
        if name.startswith("layer"):
            layer, array = name.removeprefix("layer").split("/", 1)
            layers.setdefault(int(layer), {})[array] = value
    scalars["sweep"] = tuple(scalars["sweep"])
    scalars["excluded_token_ids"] = tuple(scalars["excluded_token_ids"])
    return ActivationStatistics(layers=layers, **{name: contents.get(name) for name in GLOBAL_ARRAYS}, **scalars)
