"""The Hugging Face hub: what is cached, whether the hub answers, and downloads with progress.

No torch here: a model that is not on disk is found out about in milliseconds, and a hub that
does not answer within HUB_PROBE_SECONDS is reported as unreachable instead of being retried.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

HUB_PROBE_SECONDS = 3.0
# What a causal LM needs; PyTorch pickles only when a repository has no safetensors.
MODEL_FILE_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
SKIPPED_FILES = ("training_args.bin", "optimizer.bin", "scheduler.bin")

ByteProgress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all) while a model downloads."""


class HubError(RuntimeError):
    """The model could not be fetched from the hub; the message says why, in one line."""


def cached_snapshot(repo_id: str) -> str | None:
    """The local directory of `repo_id` in the hub cache, or None when it is not there."""
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, an incomplete snapshot, a name that is not a repo id
        return None


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def unreachable_reason(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """Why the hub cannot be reached (offline mode, no DNS, no route...), or None if a TCP
    connection to it opens within `timeout` seconds. Name resolution has no timeout of its
    own, so the probe runs on a daemon thread that is abandoned when it takes too long."""
    if _offline():
        return "offline mode (HF_HUB_OFFLINE is set)"
    url = urlparse(_endpoint())
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"{host}: {error.strerror or error}")

    thread = threading.Thread(target=probe, name="polycoder-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"{host}: no answer within {timeout:.0f} s"
    return outcome[0]


def _files_to_fetch(repo_files: list[str], weights: bool = True) -> list[str]:
    """Config, tokenizer and (`weights`) weight files: safetensors when there are any, else
    .bin."""
    from fnmatch import fnmatch

    weight_files = [name for name in repo_files if name.endswith(".safetensors")]
    if not weights:
        weight_files = []
    elif not weight_files:
        weight_files = [
            name
            for name in repo_files
            if name.endswith(".bin") and os.path.basename(name) not in SKIPPED_FILES
        ]
    small = [
        name
        for name in repo_files
        if any(fnmatch(name, pattern) for pattern in MODEL_FILE_PATTERNS) and "/" not in name
    ]
    return sorted({*small, *weight_files})


class _ProgressBar:
    """Stands in for tqdm inside snapshot_download: byte counts go to `report`."""

    report: ByteProgress | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.total = kwargs.get("total") or 0
        self.n = kwargs.get("initial") or 0
        self._counts_bytes = kwargs.get("unit") == "B"

    def update(self, n: float | None = 1) -> None:
        self.n += int(n or 0)
        if self._counts_bytes and type(self).report is not None:
            type(self).report(self.n, int(self.total or 0))  # type: ignore[misc]

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None  # refresh, close, set_description...


def download(repo_id: str, report: ByteProgress, weights: bool = True) -> str:
    """Download what `repo_id` needs into the hub cache (without its weights when `weights`
    is False: a remote server holds them); return its local directory."""
    from huggingface_hub import HfApi, snapshot_download

    reason = unreachable_reason()
    if reason is not None:
        raise HubError(f"hub unreachable ({reason})")
    try:
        info = HfApi().model_info(repo_id, timeout=HUB_PROBE_SECONDS * 3)
        files = _files_to_fetch([sibling.rfilename for sibling in info.siblings or []], weights)
        if not files:
            raise HubError(f"'{repo_id}' on the hub has no model files")
        progress = type("_Progress", (_ProgressBar,), {"report": staticmethod(report)})
        return str(
            snapshot_download(
                repo_id,
                allow_patterns=files,
                tqdm_class=progress,
                etag_timeout=HUB_PROBE_SECONDS * 3,
            )
        )
    except HubError:
        raise
    except Exception as error:
        raise HubError(f"cannot download '{repo_id}': {first_line(str(error))}") from error


def first_line(text: str) -> str:
    """The first line of a library's (often multi-line) message, without its final period."""
    line = text.strip().split("\n", 1)[0].strip()
    return line.removesuffix(".")
