"""The packaged VSIX in real VS Code (code-server 4.100) driven in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polycoder_ls.config import Settings

ROOT = Path(__file__).parents[2]
EXTENSION = ROOT / "editors" / "vscode"
VSIX = EXTENSION / "polycoder.vsix"
CODE_SERVER = ROOT / ".editor-tools" / "code-server" / "node_modules" / ".bin" / "code-server"
ARTIFACTS = ROOT / "test-artifacts"
SOURCE = (
    "import os\n\n\ndef read_file(path):\n    with open(path) as handle:\n        return handle."
)
USER_SETTINGS = {
    "files.hotExit": "off",
    "security.workspace.trust.enabled": False,
    "workbench.startupEditor": "none",
    "editor.inlineSuggest.enabled": True,
    "editor.quickSuggestions": {"other": False, "comments": False, "strings": False},
    "editor.suggestOnTriggerCharacters": False,
    "editor.wordBasedSuggestions": "off",
    "files.insertFinalNewline": False,
    "files.trimTrailingWhitespace": False,
}


def require_tools() -> None:
    missing = [str(p) for p in (CODE_SERVER, VSIX, Path("/usr/bin/chromium")) if not p.exists()]
    if missing or shutil.which("node") is None:
        pytest.fail(
            f"VS Code test tools missing ({missing}): run `make editor-tools` (make test does)"
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_code_server(
    tmp_path: Path, workspace: Path, settings: dict
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    user_data, extensions = tmp_path / "user-data", tmp_path / "extensions"
    (user_data / "User").mkdir(parents=True)
    (user_data / "User" / "settings.json").write_text(json.dumps({**USER_SETTINGS, **settings}))
    config = tmp_path / "code-server.yaml"
    config.write_text(f"bind-addr: 127.0.0.1:{port}\nauth: none\ncert: false\n")
    env = {
        **os.environ,
        **{
            f"XDG_{k}_HOME": str(tmp_path / k.lower()) for k in ("CONFIG", "DATA", "STATE", "CACHE")
        },
    }
    common = ["--user-data-dir", str(user_data), "--extensions-dir", str(extensions)]
    subprocess.run(
        [str(CODE_SERVER), *common, "--install-extension", str(VSIX)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = subprocess.Popen(
        [
            str(CODE_SERVER),
            "--config",
            str(config),
            *common,
            "--disable-telemetry",
            "--disable-update-check",
            "--disable-workspace-trust",
            str(workspace),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "code-server.log", "w"),  # noqa: SIM115 (lives as long as the server)
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            time.sleep(0.3)
    os.killpg(server.pid, signal.SIGKILL)
    pytest.fail("code-server did not start")


def server_processes(marker: Path) -> list[int]:
    """polycoder-ls processes started by this test's code-server (found by its XDG dirs)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().split(") ", 1)[1][:1]
        except (OSError, IndexError):
            continue
        if b"polycoder_ls" in cmdline and str(marker).encode() in environ and state != "Z":
            found.append(int(proc.name))
    return found


def test_vsix_shows_ghost_text_and_tab_accepts_it(tiny_model, tmp_path):
    from reference import ReferenceModel

    require_tools()
    workspace = tmp_path / "workspace"
    (workspace / ".vscode").mkdir(parents=True)
    source = workspace / "example.py"
    source.write_text(SOURCE)
    # A repository's own settings must never choose what the extension runs.
    ran = tmp_path / "workspace-command-ran"
    hostile = tmp_path / "hostile.sh"
    hostile.write_text(f'#!/bin/sh\ntouch {ran}\nexec {sys.executable} "$@"\n')
    hostile.chmod(0o755)
    (workspace / ".vscode" / "settings.json").write_text(
        json.dumps(
            {"polycoderLs.pythonPath": str(hostile), "polycoderLs.serverCommand": [str(hostile)]}
        )
    )
    # The configured model cannot load: the status bar must say that a fallback serves.
    settings = {
        "polycoder.model": str(tmp_path / "missing-model"),
        "polycoder.fallbackModel": str(tiny_model),
        "polycoder.maxNewTokens": 16,
        "polycoderLs.pythonPath": sys.executable,
    }
    server, port = start_code_server(tmp_path, workspace, settings)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "vscode-ghost-text.png"
    try:
        driver = subprocess.run(
            [
                "node",
                str(Path(__file__).parent / "vscode_driver.js"),
                f"http://127.0.0.1:{port}/?folder={workspace}",
                "example.py",
                str(screenshot),
                str(source),
            ],
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        # The browser tab is closed: its server goes too, though code-server lives on.
        deadline = time.monotonic() + 120
        while server_processes(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = server_processes(tmp_path)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
    assert not left, f"polycoder-ls outlived its window: {left}"
    seen = json.loads(driver.stdout)
    typed = SOURCE + "re"
    expected = ReferenceModel(tiny_model).suggestion(
        typed, len(typed), Settings(model=str(tiny_model), max_new_tokens=16)
    )
    assert expected is not None
    assert seen["ghost"].replace("\u00a0", " ") == expected.text
    assert source.read_text() == typed + expected.text
    fallback = f"PolyCoder: ready {tiny_model.name} (fallback for missing-model: model directory"
    assert seen["statusAfter"].startswith(fallback), seen["statusAfter"]
    assert not ran.exists(), "a workspace setting chose the server command"
    labels = seen["settings"]["titles"] + seen["settings"]["toc"]
    assert not [label for label in labels if "Polycoder" in label], labels
    assert any("PolyCoder server" in label for label in labels), labels
    assert screenshot.stat().st_size > 10_000
