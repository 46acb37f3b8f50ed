"""Executing generated programs: each in its own process, away from the user's environment.

The process is a fresh `python -I -S` (no site packages, no PYTHON* variables) in an empty
temporary directory, with an empty environment, and it limits itself before the program runs
(sandbox_child.py: memory, CPU time, file size, no network, no new processes, no writes outside
its directory). The wall-clock limit is kept here: past it, its whole process group is killed.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("sandbox_child.py")
STDERR_TAIL_CHARS = 300


@dataclass(frozen=True)
class Limits:
    seconds: float = 5.0
    """Wall clock, and (rounded up, plus one) CPU time."""
    memory_bytes: int = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    passed: bool
    result: str
    """"passed", "timed out", or "failed: " and the end of what the program wrote to stderr."""


def run_untrusted(source: str, limits: Limits = Limits()) -> Outcome:
    """Run the Python program `source`; it passes when it runs to its end."""
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="polycoder-sandbox-") as root:
        command = [
            sys.executable,
            "-I",
            "-S",
            str(CHILD),
            str(math.ceil(limits.seconds) + 1),
            str(limits.memory_bytes),
        ]
        stderr_path = Path(root, "stderr")
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=root,
                env={"HOME": root, "TMPDIR": root, "LANG": "C.UTF-8"},
                start_new_session=True,
            )
            try:
                stdin = f"{token}\n{source}".encode("utf-8", "surrogatepass")
                reported, _ = process.communicate(stdin, limits.seconds)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return Outcome(False, "timed out")
        if process.returncode == 0 and reported == token.encode():
            return Outcome(True, "passed")
        if process.returncode == -signal.SIGXCPU:
            return Outcome(False, "timed out")
        return Outcome(False, "failed: " + _last_line(stderr_path, process.returncode))


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _last_line(stderr_path: Path, returncode: int) -> str:
    text = stderr_path.read_bytes()[-4096:].decode("utf-8", "replace").strip()
    last = text.rsplit("\n", 1)[-1] if text else ""
    if returncode < 0:
        last = last or f"killed by signal {signal.Signals(-returncode).name}"
    return last[-STDERR_TAIL_CHARS:] or f"exit status {returncode}, before the program's end"
