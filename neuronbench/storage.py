"""Atomic files and the on-disk form of activation statistics.

Every write goes to a temporary file in the target directory and is moved into place with
``os.replace``, so a crashed or interrupted run never leaves a half-written file: a reader sees
the previous version or the new one. The temporary file is named
``.<name>.<pid>@<host>.<random>.tmp``; one left behind by a killed process (its pid no longer
runs on this host) is removed by :func:`remove_stale_temporaries` on the next run.

Statistics are stored as one ``.npz`` with arrays named ``layer{l}/{array}`` plus the global
arrays (``token_ids``, ``token_occurrences``), a JSON ``metadata`` entry and a JSON ``integrity``
entry: the key the file was made for and the SHA-256 of every other entry (name, dtype, shape and
bytes, in name order). :func:`load_statistics` recomputes it, so a truncated, bit-flipped or
edited file, or one made for another key, raises :class:`CacheError` naming the path; it is
never used. The key names the code as well as the inputs (:func:`source_hash`):
statistics computed by other capture code never load, whatever the version number says.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import socket
import tempfile
import zipfile
import zlib
from dataclasses import fields
from pathlib import Path

import numpy as np

from neuronbench.capture import ActivationStatistics
from neuronbench.errors import CacheError, ConfigError

PACKAGE = Path(__file__).resolve().parent
CAPTURE_SOURCES = ("capture", "adapters", "activation.py", "batching.py", "data.py", "models.py", "names.py")
"""The sources of the package (paths relative to it; a folder: its ``.py`` and ``.c`` files) that
decide what a capture computes: which model is loaded and how, which tensor is read, how the
tokens are windowed, what is counted."""


@functools.cache
def source_hash(root: Path = PACKAGE, sources: tuple[str, ...] = CAPTURE_SOURCES) -> str:
    """SHA-256 (16 hex digits) over the relative path and bytes of every file of ``sources`` under
    ``root``, in path order. Of :data:`CAPTURE_SOURCES` it is part of every disk-cache key, so an
    edit of the capture's code (a fix that changes a count, say, in a checkout whose version number
    stays) is never served the statistics of the code before it; of the whole package (``(".",)``)
    it names the code of a run in its records. A listed source that does not exist raises
    :class:`ConfigError` (the list is out of date)."""
    digest = hashlib.sha256()
    for source in sources:
        path = root / source
        if not path.exists():
            raise ConfigError(f"capture source {path} does not exist: update neuronbench.storage.CAPTURE_SOURCES")
        files = sorted(p for p in path.rglob("*") if p.suffix in (".py", ".c")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


GLOBAL_ARRAYS = ActivationStatistics.GLOBAL_ARRAYS
FORMAT = ("neuronbench-statistics", 4, tuple(f.name for f in fields(ActivationStatistics)))
"""Identifies the on-disk layout and what its arrays mean (4: the layer scale from windows spread over
the corpus, :mod:`neuronbench.capture.scale`); part of every disk-cache key, so statistics of another
layout or meaning never load."""
INTEGRITY = "integrity"
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[^.]+\.tmp$")


def write_bytes_atomic(path: str | Path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}@{_HOST}.",
                                         suffix=".tmp")
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


def _running_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files under ``directory`` (recursively) that :func:`write_bytes_atomic`
    left behind in a process that no longer runs on this host; return them. Files of live
    processes and of other hosts are left alone."""
    root = Path(directory)
    if not root.is_dir():
        return []
    removed = []
    for path in root.rglob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match and match["host"] == _HOST and not _running_here(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def ensure_writable_dir(directory: str | Path, flag: str) -> Path:
    """Create ``directory`` if needed and prove it writable by creating and deleting a file in it;
    ``ConfigError`` naming ``flag`` and the path otherwise."""
    path = Path(directory).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=f".write-probe.{os.getpid()}@{_HOST}.", suffix=".tmp")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"{flag} {str(directory)!r} is not a writable directory: {error.strerror or error}. "
                          f"Choose another {flag}") from error
    return path


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over ``arrays`` in name order: each name, dtype, shape and the C-order bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, value.dtype.str, list(value.shape)]).encode())
        digest.update(value.reshape(-1).view(np.uint8))  # the bytes, without a copy
    return digest.hexdigest()


def save_statistics(stats: ActivationStatistics, path: str | Path, key: str = "") -> Path:
    """Store ``stats`` as one ``.npz`` (atomic), with its ``integrity`` entry for ``key``."""
    arrays = {f"layer{layer}/{name}": value for layer, named in stats.layers.items() for name, value in named.items()}
    for name in GLOBAL_ARRAYS:
        if getattr(stats, name) is not None:
            arrays[name] = getattr(stats, name)
    scalars = {f.name: getattr(stats, f.name) for f in fields(stats) if f.name not in ("layers", *GLOBAL_ARRAYS)}
    arrays["metadata"] = np.array(json.dumps(scalars, default=_json_default))
    arrays[INTEGRITY] = np.array(json.dumps({"key": key, "sha256": content_sha256(arrays)}))
    return write_npz_atomic(path, arrays)


def load_statistics(path: str | Path, key: str = "") -> ActivationStatistics:
    """Read statistics written by :func:`save_statistics` for ``key``; :class:`CacheError` (naming
    the path and what is wrong) if the file cannot be read, fails its hash, or has another key."""
    try:
        contents = _read_archive(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise CacheError(f"cache file {path} is unreadable or truncated ({type(error).__name__}: {error})") from error
    _verify(path, contents, key)
    try:
        return _statistics_of(contents)
    except (ValueError, KeyError, TypeError) as error:
        raise CacheError(f"cache file {path} does not hold activation statistics ({type(error).__name__}: {error})") from error


def _read_archive(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _verify(path: str | Path, contents: dict[str, np.ndarray], key: str) -> None:
    if INTEGRITY not in contents:
        raise CacheError(f"cache file {path} has no integrity record (written by another version?)")
    recorded = json.loads(str(contents.pop(INTEGRITY)))
    actual = content_sha256(contents)
    if recorded.get("sha256") != actual:
        raise CacheError(f"cache file {path} fails its content hash (recorded {recorded.get('sha256')}, "
                         f"content {actual}): it was altered or damaged")
    if recorded.get("key") != key:
        raise CacheError(f"cache file {path} was made for key {recorded.get('key')!r}, not {key!r}")


def _statistics_of(contents: dict[str, np.ndarray]) -> ActivationStatistics:
    scalars = json.loads(str(contents.pop("metadata")))
    layers: dict[int, dict[str, np.ndarray]] = {}
    for name, value in contents.items():
        if name.startswith("layer"):
            layer, array = name.removeprefix("layer").split("/", 1)
            layers.setdefault(int(layer), {})[array] = value
    scalars["sweep"] = tuple(scalars["sweep"])
    scalars["excluded_token_ids"] = tuple(scalars["excluded_token_ids"])
    return ActivationStatistics(layers=layers, **{name: contents.get(name) for name in GLOBAL_ARRAYS}, **scalars)
