"""A burst of typing against the real server: didChange, inlineCompletion, $/cancelRequest and
polycoder/status, paced over a few seconds, all read back on a thread of their own.

A suggestion is stale when it was sent after the server had handled a later edit: the status
request sent right after that edit was answered first (the server handles messages in order,
and status answers at once), yet the suggestion is not empty. Used by the reliability test
(correctness) and bench/reliability.py (the figures)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpc import RawServer, frame, read_message

URI = "file:///work/burst.py"
TEXT = "import os\n\n\ndef read_file(path):\n    with open(path) as handle:\n        return "
TYPED = "handle.read().split()\n        values = [line for line in lines]\n        return "


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@dataclass
class BurstResult:
    requests: int
    unanswered: list[int]
    stale: list[int]
    suggestions: int
    cancelled: int
    status_ms: list[float]
    seconds: float
    rss_before: int
    rss_after: int
    final_status: dict[str, Any] | None

    @property
    def status_p95_ms(self) -> float:
        ordered = sorted(self.status_ms)
        return ordered[int(0.95 * (len(ordered) - 1))]


@dataclass
class Peer:
    """Writes under a lock; a thread reads every message and notes its arrival. Once it runs,
    `server.request` can no longer be used: this reads all the server sends."""

    server: RawServer
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrivals: dict[int, tuple[int, float, dict[str, Any]]] = field(default_factory=dict)
    next_id: int = 100_000
    ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Peer:
        threading.Thread(target=self._read_all, daemon=True).start()
        return self

    def write(self, message: dict[str, Any]) -> None:
        assert self.server.process.stdin is not None
        with self.lock:
            self.server.process.stdin.write(frame(message))
            self.server.process.stdin.flush()

    def request(self, method: str, params: Any) -> tuple[int, float]:
        self.next_id += 1
        sent = time.perf_counter()
        self.write({"id": self.next_id, "method": method, "params": params})
        return self.next_id, sent

    def notify(self, method: str, params: Any) -> None:
        self.write({"method": method, "params": params})

    def _read_all(self) -> None:
        count = 0
        try:
            while True:
                message = read_message(self.server.process.stdout)
                if "method" in message:
                    if "id" in message:  # progress/create, workspace/configuration
                        self.write({"id": message["id"], "result": None})
                    continue
                count += 1
                self.arrivals[message["id"]] = (count, time.perf_counter(), message)
        except (EOFError, ValueError, OSError):
            self.ended.set()


def _end_position(text: str) -> dict[str, int]:
    lines = text.split("\n")
    return {"line": len(lines) - 1, "character": len(lines[-1])}


def run_burst(peer: Peer, steps: int = 1000, seconds: float = 10.0) -> BurstResult:
    """The burst over `peer`'s initialized server, in a document it opens afresh."""
    server = peer.server
    text = TEXT
    document = {"uri": URI, "languageId": "python", "version": 0, "text": text}
    peer.notify("textDocument/didOpen", {"textDocument": document})
    rss_before = rss_bytes(server.process.pid)
    completions: list[tuple[int, int]] = []  # (request id, id of the status after the next edit)
    statuses: list[tuple[int, float]] = []
    cancelled: set[int] = set()
    started = time.perf_counter()
    for step in range(1, steps + 1):
        time.sleep(max(0.0, started + step * seconds / steps - time.perf_counter()))
        typed = TYPED[step % len(TYPED)]
        where = _end_position(text)
        text += typed
        change = {"range": {"start": where, "end": where}, "text": typed}
        versioned = {"uri": URI, "version": step}
        peer.notify(
            "textDocument/didChange", {"textDocument": versioned, "contentChanges": [change]}
        )
        status = peer.request("polycoder/status", {})
        statuses.append(status)
        if completions:
            completions[-1] = (completions[-1][0], status[0])
        params = {
            "textDocument": {"uri": URI},
            "position": _end_position(text),
            "context": {"triggerKind": 2},
        }
        completion, _ = peer.request("textDocument/inlineCompletion", params)
        completions.append((completion, -1))
        if step % 4 == 1:
            peer.notify("$/cancelRequest", {"id": completion})
            cancelled.add(completion)
    sent_all = time.perf_counter()
    every_id = [request for request, _ in completions] + [request for request, _ in statuses]
    deadline = time.monotonic() + 120
    while not all(request in peer.arrivals for request in every_id):
        if time.monotonic() > deadline or peer.ended.is_set():
            break
        time.sleep(0.02)
    rss_after = rss_bytes(server.process.pid)
    final, _ = peer.request("polycoder/status", {})
    while final not in peer.arrivals and time.monotonic() < deadline and not peer.ended.is_set():
        time.sleep(0.02)
    arrivals = dict(peer.arrivals)
    stale, suggestions = [], 0
    for request, next_status in completions:
        if request not in arrivals or not _items(arrivals[request][2]):
            continue
        suggestions += 1
        if next_status in arrivals and arrivals[request][0] > arrivals[next_status][0]:
            stale.append(request)
    return BurstResult(
        requests=len(every_id),
        unanswered=[request for request in every_id if request not in arrivals],
        stale=stale,
        suggestions=suggestions,
        cancelled=len(cancelled),
        status_ms=[
            (arrivals[request][1] - sent) * 1000
            for request, sent in statuses
            if request in arrivals
        ],
        seconds=sent_all - started,
        rss_before=rss_before,
        rss_after=rss_after,
        final_status=arrivals[final][2].get("result") if final in arrivals else None,
    )


def _items(response: dict[str, Any]) -> list[Any]:
    result = response.get("result")
    return (result or {}).get("items", []) if isinstance(result, dict) else []
