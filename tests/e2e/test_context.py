"""Over real stdio: the FIM format in polycoder/status, mid-line suggestions from a FIM model,
and snippets of other open documents of the same workspace in the prompt."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from model_factory import build_model

from polycoder_ls.fim import STARCODER

WORK, OTHER = "file:///work/project", "file:///work/elsewhere"
HELPERS = (
    "def parse_config(path, defaults):\n"
    "    text = read_file(path)\n"
    "    return merge(text, defaults)\n"
)
APP = "import helpers\n\nsettings = parse_config(path, defaults)\nvalue = read_file(path)\n\nx = \n"


@pytest.fixture(scope="module")
def fim_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("fim-model"), fim=STARCODER)


async def test_a_fim_model_is_shown_in_status_and_suggests_mid_line(editor, fim_model):
    await editor.start({"model": str(fim_model), "maxNewTokens": 8})
    status = await editor.status()
    assert status["fim"] == "starcoder" and status["fimOrder"] == "spm"
    text = "def area(width, height):\n    return width * height\n"
    editor.open(f"{WORK}/area.py", text)
    shown = [await editor.texts(f"{WORK}/area.py", 1, column) for column in (11, 17, 18)]
    assert any(shown)  # code after the cursor: a left-to-right model shows nothing here


async def test_a_left_to_right_model_has_no_fim(editor, tiny_model):
    await editor.start({"model": str(tiny_model)})
    assert (await editor.status())["fim"] is None


async def _prompt_tokens(editor, uri: str) -> int:
    await editor.inline(uri, 5, 4)
    return (await editor.status())["last"]["promptTokens"]


async def test_other_files_of_the_same_workspace_go_into_the_prompt(editor, tiny_model):
    await editor.start({"model": str(tiny_model), "cache": {"size": 0}}, folders=[WORK, OTHER])
    app = f"{WORK}/app.py"
    editor.open(app, APP)
    alone = await _prompt_tokens(editor, app)
    editor.open(f"{OTHER}/helpers.py", HELPERS)  # another workspace folder: never
    assert await _prompt_tokens(editor, app) == alone
    editor.open(f"{WORK}/lib/helpers.py", HELPERS)
    with_snippet = await _prompt_tokens(editor, app)
    assert with_snippet > alone
    editor.configure({"context": {"otherFilesTokens": 0}})
    deadline = asyncio.get_running_loop().time() + 60
    while (tokens := await _prompt_tokens(editor, app)) != alone:  # once the setting applies
        assert tokens == with_snippet and asyncio.get_running_loop().time() < deadline
