"""The first start with a hub model that is not on disk: the fallback serves at once, the
model downloads (with byte progress) and loads in the background, then replaces it; a hub that
cannot be reached is said once, in one line."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fake_hub import FakeHub
from reference import ReferenceModel
from rpc import RawServer

from polycoder_ls.config import Settings

URI = "file:///work/first.py"
TEXT = "import os\n\n\ndef read_file(path):\n    with open(path) as handle:\n        return handle."
CURSOR = {"line": 5, "character": len(TEXT.split("\n")[5])}
CAPABILITIES = {"window": {"workDoneProgress": True}, "textDocument": {"inlineCompletion": {}}}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def hub_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    return {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def start(server: RawServer, options: dict[str, Any]) -> None:
    server.initialize(options, capabilities=CAPABILITIES)
    server.send(
        "textDocument/didOpen",
        {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": TEXT}},
        request=False,
    )


def complete(server: RawServer) -> list[dict[str, Any]]:
    params = {"textDocument": {"uri": URI}, "position": CURSOR, "context": {"triggerKind": 2}}
    return list(server.request("textDocument/inlineCompletion", params)["items"])


def wait_for_status(
    server: RawServer, condition: Callable[[dict[str, Any]], bool], timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not condition(status := server.request("polycoder/status", {})):
        assert time.monotonic() < deadline, f"still {status}"
        time.sleep(0.05)
    return status


@pytest.fixture
def stopped() -> Any:
    servers: list[RawServer] = []
    yield servers.append
    for server in servers:
        server.process.kill()
        server.process.wait()


def test_offline_the_fallback_answers_and_the_hub_is_named_once(tmp_path, stopped):
    log_file = tmp_path / "server.log"
    env = hub_env(tmp_path, f"http://127.0.0.1:{closed_port()}")
    server = RawServer("--log-file", str(log_file), "-v", env=env)
    stopped(server)
    start(server, {})  # the defaults: PolyCoder-160M, not on disk, fallback nano

    assert complete(server), "the fallback model gives a suggestion"
    status = wait_for_status(server, lambda status: status.get("error") is not None)
    assert status["state"] == "ready"
    assert status["fallbackFrom"] == Settings().model
    assert status["label"].startswith("nano (fallback for PolyCoder-160M: hub unreachable")
    assert "127.0.0.1" in status["label"]

    warnings = [
        message["message"]
        for message in server.messages("window/showMessage")
        if message["type"] <= 2
    ]
    assert len(warnings) == 1, warnings
    assert "\n" not in warnings[0] and ".." not in warnings[0]
    assert "PolyCoder-160M" in warnings[0] and "nano" in warnings[0]
    lines = [line.split(" ", 2)[-1] for line in log_file.read_text().splitlines()]
    hub_lines = [line for line in lines if "hub" in line and "WARNING" in line]
    assert hub_lines and len(hub_lines) == len(set(hub_lines)), hub_lines


def test_a_hub_model_downloads_while_the_fallback_serves_then_replaces_it(
    tmp_path, stopped, tiny_model
):
    with FakeHub("polycoder-tests/tiny-coder", tiny_model) as hub:
        server = RawServer(env=hub_env(tmp_path, hub.url))
        stopped(server)
        start(server, {"model": "polycoder-tests/tiny-coder", "maxNewTokens": 16})

        downloading = wait_for_status(
            server, lambda status: "downloading" in str(status.get("fallbackReason"))
        )
        assert downloading["model"].endswith("nano")
        assert downloading["fallbackFrom"] == "polycoder-tests/tiny-coder"
        complete(server)  # answered by the fallback while the weights are still held back
        during = server.request("polycoder/status", {})
        assert during["totals"]["completed"] == 1 and during["model"].endswith("nano")
        assert not hub.release.is_set()

        hub.release.set()
        ready = wait_for_status(server, lambda status: "fallbackFrom" not in status)
        assert ready["state"] == "ready" and ready["model"] == "polycoder-tests/tiny-coder"
        assert ready["label"] == "tiny-coder"
        items = complete(server)

    offset = len(TEXT)
    expected = ReferenceModel(tiny_model).suggestion(
        TEXT, offset, Settings(model=str(tiny_model), max_new_tokens=16)
    )
    assert expected is not None
    assert [item["insertText"] for item in items] == [expected.text]
    progress = [message["value"] for message in server.messages("$/progress")]
    titles = [value.get("title", "") for value in progress if value["kind"] == "begin"]
    assert "Downloading polycoder-tests/tiny-coder" in titles
    reports = [value for value in progress if value["kind"] == "report"]
    assert any(re.fullmatch(r"[\d.]+ of [\d.]+ MB", value["message"]) for value in reports)
