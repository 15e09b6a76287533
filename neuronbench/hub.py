"""Is the Hugging Face hub usable right now? One place for the offline decision.

The hub counts as offline when ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE`` or
``TRANSFORMERS_OFFLINE`` is on, or when a TCP connection to it (or to the HTTPS proxy) does not
open within a couple of seconds. Loaders then use the local cache only and fail at once with a
message that says how to fix it; nothing is retried.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

HUB_PROBE_TIMEOUT_S = 2.0


def _hub_proxy_or_host() -> tuple[str, int]:
    """The first network hop to the hub: the HTTPS proxy if one is set, else ``HF_ENDPOINT``."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    default_port = 443 if url.scheme == "https" else 80
    return url.hostname or "huggingface.co", url.port or default_port


def hub_offline_by_env() -> bool:
    """True when ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is on."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(n, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for n in names)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the hub (or the HTTPS proxy) opens within ``timeout`` s.

    The probe, name lookup included, runs in a daemon thread so it never blocks longer.
    """
    host, port = _hub_proxy_or_host()
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


@contextmanager
def datasets_offline(offline: bool) -> Iterator[None]:
    """Within the block, make ``datasets`` and ``huggingface_hub`` use the local cache only."""
    if not offline:
        yield
        return
    import datasets.config as dconfig
    import huggingface_hub.constants as hconst

    saved = (dconfig.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE)
    dconfig.HF_HUB_OFFLINE = hconst.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dconfig.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE = saved


def hub_offline() -> bool:
    """True when the environment says offline or the hub cannot be reached."""
    return hub_offline_by_env() or not hub_reachable()
