"""The editors' language lists are generated from the server's one list (languages.py):
VS Code's document selector and activation events, Neovim's default filetypes.

    python tests/editors/test_language_lists.py    # regenerate the three files
"""

from __future__ import annotations

import json
from pathlib import Path

from polycoder_ls.languages import language_of_document, lsp_language_ids, neovim_filetypes

ROOT = Path(__file__).parents[2]
PACKAGE_JSON = ROOT / "editors" / "vscode" / "package.json"
VSCODE_LANGUAGES = ROOT / "editors" / "vscode" / "src" / "languages.ts"
NEOVIM_LANGUAGES = ROOT / "editors" / "neovim" / "lua" / "polycoder" / "languages.lua"
HEADER = "Generated from polycoder_ls/languages.py by tests/editors/test_language_lists.py."


def vscode_source() -> str:
    items = "".join(f'  "{language_id}",\n' for language_id in lsp_language_ids())
    return f"// {HEADER}\nexport const LANGUAGES = [\n{items}];\n"


def neovim_source() -> str:
    items = "".join(f'    "{filetype}",\n' for filetype in neovim_filetypes())
    return f"-- {HEADER}\nreturn {{\n  filetypes = {{\n{items}  }},\n}}\n"


def activation_events() -> list[str]:
    return [f"onLanguage:{language_id}" for language_id in lsp_language_ids()]


def test_vscode_languages_are_the_servers():
    assert VSCODE_LANGUAGES.read_text() == vscode_source()
    assert json.loads(PACKAGE_JSON.read_text())["activationEvents"] == activation_events()


def test_neovim_filetypes_are_the_servers_and_the_server_knows_them():
    assert NEOVIM_LANGUAGES.read_text() == neovim_source()
    for filetype in neovim_filetypes():
        assert language_of_document(filetype, "file:///no-extension").name != "Text", filetype
    assert language_of_document("cs", "file:///no-extension").name == "C#"


if __name__ == "__main__":
    VSCODE_LANGUAGES.write_text(vscode_source())
    NEOVIM_LANGUAGES.write_text(neovim_source())
    package = json.loads(PACKAGE_JSON.read_text())
    package["activationEvents"] = activation_events()
    PACKAGE_JSON.write_text(json.dumps(package, indent=2, ensure_ascii=False) + "\n")
