"""A minimal JSON-RPC-over-stdio peer for tests that need the raw process (exit codes, EOF)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

SERVER = [sys.executable, "-m", "polycoder_ls", "--stdio"]


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps({"jsonrpc": "2.0", **message}).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def read_message(stream: Any) -> dict[str, Any]:
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if not length:
        raise EOFError("server closed its stdout")
    return json.loads(stream.read(length))


class RawServer:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*SERVER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self.next_id = 0
        self.notifications: list[dict[str, Any]] = []
        """Everything the server sent that was not a response, in order."""

    def send(self, method: str, params: Any = None, request: bool = True) -> int | None:
        message: dict[str, Any] = {"method": method, "params": params}
        msg_id = None
        if request:
            self.next_id += 1
            msg_id = message["id"] = self.next_id
        assert self.process.stdin is not None
        self.process.stdin.write(frame(message))
        self.process.stdin.flush()
        return msg_id

    def response(self, msg_id: int) -> dict[str, Any]:
        while (message := read_message(self.process.stdout)).get(
            "id"
        ) != msg_id or "method" in message:
            if "method" in message:
                self.notifications.append(message)
            if "method" in message and "id" in message:  # a request from the server
                self.reply(message["id"], None)
        return message

    def request(self, method: str, params: Any) -> Any:
        msg_id = self.send(method, params)
        assert msg_id is not None
        answer = self.response(msg_id)
        assert "error" not in answer, answer
        return answer["result"]

    def messages(self, method: str) -> list[dict[str, Any]]:
        return [message["params"] for message in self.notifications if message["method"] == method]

    def reply(self, msg_id: int, result: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(frame({"id": msg_id, "result": result}))
        self.process.stdin.flush()

    def initialize(
        self,
        options: dict[str, Any],
        process_id: int | None = None,
        capabilities: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        msg_id = self.send(
            "initialize",
            {
                "processId": process_id,
                "rootUri": None,
                "capabilities": capabilities or {},
                "initializationOptions": options,
            },
        )
        assert msg_id is not None
        result = self.response(msg_id)
        self.send("initialized", {}, request=False)
        return result
