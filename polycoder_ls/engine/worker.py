"""The single inference worker thread: it alone touches the model.

Jobs run in submission order. A model load is a job too, so completion requests that arrive
while the model loads simply wait behind it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)


class InferenceWorker:
    """One daemon thread that runs submitted callables one at a time."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="polycoder-inference", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((job, future))
        return future

    def stop(self, wait: bool = False) -> None:
        """Stop after the queued jobs; `wait` joins the thread."""
        self._jobs.put(None)
        if wait:
            self._thread.join()

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as error:  # handed to whoever awaits the future
                log.error("inference job failed", exc_info=True)
                future.set_exception(error)
