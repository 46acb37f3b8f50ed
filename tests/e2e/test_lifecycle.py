"""Start-up, exit paths, transports and the `complete` command, on the real process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rpc import RawServer, frame, read_message

from polycoder_ls import __version__
from polycoder_ls.config import Settings

URI = "file:///work/project/start.py"
TEXT = (
    "import os\n\n\ndef read_file(path):\n    with open(path) as handle:\n        return handle.re"
)
END = {"line": 5, "character": len("        return handle.re")}


def wait_exit(process: subprocess.Popen, seconds: float = 20) -> int | None:
    try:
        return process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        return None


def inline_params(position: dict) -> dict:
    return {"textDocument": {"uri": URI}, "position": position, "context": {"triggerKind": 2}}


def open_params(text: str = TEXT) -> dict:
    return {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": text}}


def test_shutdown_then_exit_ends_with_code_0(tiny_model):
    server = RawServer()
    server.initialize({"model": str(tiny_model)})
    assert server.response(server.send("shutdown"))["result"] is None
    server.send("exit", None, request=False)
    assert wait_exit(server.process) == 0


def test_exit_without_shutdown_ends_with_code_1(tiny_model):
    server = RawServer()
    server.initialize({"model": str(tiny_model)})
    server.send("exit", None, request=False)
    assert wait_exit(server.process) == 1


def test_closing_stdin_ends_the_server_even_while_generating(tiny_model):
    server = RawServer()
    server.initialize({"model": str(tiny_model), "maxNewTokens": 500, "multiline": "always"})
    server.send("textDocument/didOpen", open_params(), request=False)
    server.send("textDocument/inlineCompletion", inline_params(END))
    assert server.process.stdin is not None
    server.process.stdin.close()
    assert wait_exit(server.process) is not None


def test_server_exits_when_the_editor_process_dies(tiny_model):
    editor_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    server = RawServer()
    server.initialize({"model": str(tiny_model)}, process_id=editor_process.pid)
    editor_process.kill()
    editor_process.wait()
    assert wait_exit(server.process) is not None


def test_request_sent_while_the_model_loads_waits_for_it(tiny_model, reference):
    server = RawServer()
    server.initialize({"model": str(tiny_model)})
    server.send("textDocument/didOpen", open_params(), request=False)
    status = server.response(server.send("polycoder/status", {}))["result"]
    answer = server.response(server.send("textDocument/inlineCompletion", inline_params(END)))
    expected = reference.suggestion(TEXT, len(TEXT), Settings(model=str(tiny_model)))
    server.send("exit", None, request=False)
    wait_exit(server.process)
    assert status["state"] == "loading"
    assert expected is not None
    assert [item["insertText"] for item in answer["result"]["items"]] == [expected.text]


def test_logs_go_to_the_log_file_and_never_to_stdout(tiny_model, tmp_path):
    log_file = tmp_path / "server.log"
    server = RawServer("-vv", "--log-file", str(log_file))
    server.initialize({"model": str(tiny_model)})
    server.send("textDocument/didOpen", open_params(), request=False)
    server.response(server.send("textDocument/inlineCompletion", inline_params(END)))
    server.send("shutdown")
    server.send("exit", None, request=False)
    assert wait_exit(server.process) == 0
    assert "model ready" in log_file.read_text()


@contextlib.contextmanager
def tcp_server() -> Iterator[int]:
    """A `polycoder-ls --tcp` on a free port; yields the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "polycoder_ls", "--tcp", "--port", str(port)],
        stdin=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        process.kill()
        process.wait()


def test_tcp_transport(tiny_model):
    with tcp_server() as port:
        connection = _connect(port)
        connection.sendall(
            frame(
                {
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "processId": None,
                        "capabilities": {},
                        "initializationOptions": {"model": str(tiny_model)},
                    },
                }
            )
        )
        reply = read_message(connection.makefile("rb"))
        assert reply["result"]["serverInfo"] == {"name": "polycoder-ls", "version": __version__}
        assert "inlineCompletionProvider" in reply["result"]["capabilities"]
        connection.close()


def _connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 30
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_version_flag():
    result = subprocess.run(
        [sys.executable, "-m", "polycoder_ls", "--version"], capture_output=True, text=True
    )
    assert result.stdout.strip() == f"polycoder-ls {__version__}"


def test_complete_command_prints_the_server_suggestion(tiny_model, reference, tmp_path):
    source = tmp_path / "example.py"
    source.write_text(TEXT + "\n\nprint(read_file('x'))\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "polycoder_ls",
            "complete",
            f"{source}:6:25",
            "--model",
            str(tiny_model),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    expected = reference.suggestion(source.read_text(), len(TEXT), Settings(model=str(tiny_model)))
    assert result.returncode == 0, result.stderr
    assert expected is not None
    assert result.stdout == expected.text + "\n"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing.py:1:1", "No such file"),
        ("example.py:0:1", "1-based"),
        ("example.py", "FILE:LINE:COL"),
    ],
)
def test_complete_command_rejects_bad_targets(tmp_path, target, message):
    (tmp_path / "example.py").write_text("x = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "polycoder_ls", "complete", target],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_complete_command_reports_a_model_that_cannot_load_and_falls_back(tmp_path):
    (tmp_path / "example.py").write_text("x = 1\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "polycoder_ls",
            "complete",
            "example.py:1:5",
            "--model",
            str(tmp_path / "nope"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "model directory not found" in result.stderr
    assert "using the fallback model" in result.stderr


def test_completion_provider_only_for_clients_without_inline_completion(tiny_model):
    capabilities_by_kind = {
        "inline": {"textDocument": {"inlineCompletion": {}}},
        "plain": {"textDocument": {"completion": {}}},
    }
    providers = {}
    for kind, capabilities in capabilities_by_kind.items():
        server = RawServer()
        msg_id = server.send(
            "initialize", {"processId": None, "rootUri": None, "capabilities": capabilities}
        )
        assert msg_id is not None
        result = server.response(msg_id)["result"]["capabilities"]
        providers[kind] = ("inlineCompletionProvider" in result, "completionProvider" in result)
        server.send("exit", None, request=False)
        wait_exit(server.process)
    assert providers == {"inline": (True, False), "plain": (True, True)}


def test_tcp_a_second_editor_is_refused_and_the_first_keeps_its_replies(tiny_model):
    with tcp_server() as port:
        first = _connect(port)
        first.settimeout(120)
        first_stream = first.makefile("rb")
        initialize = {
            "id": 1,
            "method": "initialize",
            "params": {"processId": None, "capabilities": {}, "initializationOptions": {}},
        }
        first.sendall(frame(initialize))
        assert read_message(first_stream)["id"] == 1
        second = _connect(port)
        second.settimeout(60)
        second.sendall(frame(initialize))
        try:
            answered = second.recv(1)
        except ConnectionResetError:  # closed with the request unread: a reset
            answered = b""
        assert answered == b"", "a second connection must be closed, not served"
        first.sendall(frame({"id": 2, "method": "polycoder/status", "params": {}}))
        while (reply := read_message(first_stream)).get("id") != 2 or "method" in reply:
            pass
        assert reply["result"]["state"] in ("loading", "ready", "error")
        first.close()


def test_an_editor_that_died_unreaped_counts_as_dead(tiny_model):
    editor_process = subprocess.Popen([sys.executable, "-c", "pass"])
    while not _is_zombie(editor_process.pid):  # exited; not waited for: a zombie
        time.sleep(0.05)
    server = RawServer()
    server.initialize({"model": str(tiny_model)}, process_id=editor_process.pid)
    assert wait_exit(server.process) is not None
    editor_process.wait()


def _is_zombie(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _alive(pid: int) -> bool:
    try:
        return not _is_zombie(pid)
    except FileNotFoundError:
        return False


SLOW_COMPILER = """#!/bin/sh
sleep 120 &
echo $! > "{pid_file}"
wait
exec cc "$@"
"""


def test_sigterm_during_the_kernel_build_ends_the_compiler_and_leaves_no_files(
    tiny_model, tmp_path
):
    cache, pid_file, compiler = tmp_path / "cache", tmp_path / "compiler.pid", tmp_path / "cc"
    compiler.write_text(SLOW_COMPILER.format(pid_file=pid_file))
    compiler.chmod(0o755)
    leftover = cache / "polycoder-ls" / "kernels" / "build-999999999-x"  # a dead server's
    leftover.mkdir(parents=True)
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "CC": str(compiler)}
    server = RawServer(env=env)
    server.initialize({"model": str(tiny_model)})
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the kernel build never started"
        time.sleep(0.05)
    compiler_child = int(pid_file.read_text())  # what the compiler runs: a grandchild
    assert not leftover.exists(), "an unfinished build of a dead server is removed"
    server.process.terminate()
    assert wait_exit(server.process) is not None
    deadline = time.monotonic() + 20
    while _alive(compiler_child):
        assert time.monotonic() < deadline, "the compiler's work outlived the server"
        time.sleep(0.05)
    assert list((cache / "polycoder-ls" / "kernels").iterdir()) == []
