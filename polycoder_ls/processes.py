"""Other processes as the server sees them: whether the editor still runs (a zombie does not),
and ending the server's own children (a compiler) when it ends. Linux reads /proc; elsewhere
what the platform offers."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc (R, S, Z...), or None where there is no /proc entry."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[0]


def process_alive(pid: int) -> bool:
    """Whether `pid` runs: a process that exited but was not reaped (a zombie) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return process_state(pid) != "Z"


def child_pids() -> list[int]:
    """The running children of this process (Linux; elsewhere none are known)."""
    pids: list[int] = []
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += [int(pid) for pid in children.read_text().split()]
    return pids


def end_children() -> None:
    """Kill each child and, where it leads a process group of its own (a compiler started so),
    the whole group: the compiler's own children go too."""
    own_group = os.getpgid(0)
    for pid in child_pids():
        with contextlib.suppress(OSError):
            group = os.getpgid(pid)
            if group != own_group:
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
