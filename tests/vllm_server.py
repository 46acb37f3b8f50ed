"""A real vLLM server (OpenAI-compatible API, on the CPU) for the remote-engine tests.

It runs from its own virtual environment (`make vllm-venv`: it pins its own torch and
transformers), on 127.0.0.1, as its own process group, logging to a file.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = Path(os.environ.get("POLYCODER_VLLM_PYTHON", ROOT / ".vllm-venv" / "bin" / "python"))
SERVED_NAME = "polycoder-test"
API_KEY = "team-secret"
START_SECONDS = 900.0
RECEIVED = re.compile(r"Received request (\S+): params: SamplingParams\(.*?max_tokens=(\d+)")
METRIC_LINE = re.compile(r"^([a-zA-Z_:]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class VllmServer:
    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        api_key: str | None = None,
        kv_cache_bytes: int = 256 * 1024 * 1024,
        batched_tokens: int = 256,
    ) -> None:
        """`batched_tokens`: a prefill step's tokens (the tests keep them few, so an abort
        lands between steps within a fraction of a second)."""
        self.model_dir = model_dir
        self.log_path = log_path
        self.api_key = api_key
        self.kv_cache_bytes = kv_cache_bytes
        self.batched_tokens = batched_tokens
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """What `remote.url` is set to."""
        return f"{self.base}/v1"

    def command(self) -> list[str]:
        command = [
            str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--served-model-name", SERVED_NAME,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "float32", "--max-model-len", "2048",
            "--enable-prefix-caching", "--enforce-eager",
            "--kv-cache-memory-bytes", str(self.kv_cache_bytes),
            "--max-num-batched-tokens", str(self.batched_tokens),
            "--enable-log-requests", "--enable-prompt-tokens-details",
            "--distributed-executor-backend", "uni",
        ]  # fmt: skip
        if self.api_key is not None:
            command += ["--api-key", self.api_key]
        return command

    def start(self) -> None:
        env = os.environ | {
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited ({self.process.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM not ready after {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.5)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/health", timeout=5) as answer:
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def kill(self) -> None:
        """Gone at once, the way a crashed or rebooted box goes."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def metric(self, name: str) -> float:
        """The sum of a /metrics sample's values over its labels."""
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        values = [
            float(found.group(3))
            for line in text.splitlines()
            if (found := METRIC_LINE.match(line)) and found.group(1) == name
        ]
        assert values, f"no metric {name}"
        return sum(values)

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def streams_received(self, since: int) -> list[str]:
        """The ids of the requests for more than one token that the server received after
        `since` bytes of its log, in order."""
        with open(self.log_path, "rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        return [found.group(1) for found in RECEIVED.finditer(text) if int(found.group(2)) > 1]

    def aborted(self, request_id: str) -> bool:
        """Whether the server aborted request `request_id` (its client closed the stream
        before it ended), from its log."""
        return f"Request {request_id} aborted." in self.log_path.read_text(errors="replace")

    def aborted_requests(self) -> int:
        """Requests the server aborted (a client closed the stream), from its log."""
        return self.log_path.read_text(errors="replace").count("Aborted request")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
