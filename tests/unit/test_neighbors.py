"""Context from other files: which snippets are chosen, from which documents, and how they sit
in the prompt."""

from __future__ import annotations

from polycoder_ls.documents import Document, Snippet
from polycoder_ls.languages import language_of_document
from polycoder_ls.neighbors import Neighbors, fit_snippets, render

HELPERS = "\n".join(
    ["def unrelated():", "    return 0", ""] * 10
    + ["def parse_config(path, defaults):", "    text = read_file(path)", "    return merge(text)"]
)
CURRENT = "import helpers\n\nsettings = parse_config(path, defaults)\nvalue = read_file(path)\n\n"


def _document(uri: str, text: str, language: str = "python") -> Document:
    return Document(uri, language, 1, text)


def _snippets(others, folders=("file:///work",), disabled=()):
    current = _document("file:///work/app.py", CURRENT + "x = \n")
    return Neighbors().snippets(current, 5, [current, *others], folders, disabled)


def test_the_most_similar_window_of_another_open_document_is_chosen():
    snippets = _snippets([_document("file:///work/lib/helpers.py", HELPERS)])
    assert snippets and snippets[0].path == "lib/helpers.py"
    assert "def parse_config(path, defaults):" in snippets[0].text


def test_other_workspaces_and_disabled_languages_never_go_into_a_prompt():
    elsewhere = _document("file:///other/helpers.py", HELPERS)
    assert _snippets([elsewhere], folders=("file:///work", "file:///other")) == ()
    disabled = _document("file:///work/helpers.py", HELPERS, "python-secret")
    assert _snippets([disabled], disabled=("python-secret",)) == ()


def test_the_choice_does_not_change_while_typing_on_the_cursor_line():
    neighbors = Neighbors()
    helpers = _document("file:///work/helpers.py", HELPERS)
    chosen = set()
    for typed in ("x = ", "x = parse", "x = parse_config(unrelated"):
        current = _document("file:///work/app.py", CURRENT + typed + "\n")
        chosen.add(neighbors.snippets(current, 5, [helpers], ("file:///work",), ()))
    assert len(chosen) == 1


def test_snippets_are_comments_within_their_token_budget():
    python = language_of_document("python", "file:///a.py")
    snippet = Snippet("lib/helpers.py", "def f():\n    return 1")
    assert render(snippet, python) == "# lib/helpers.py\n# def f():\n#     return 1\n"

    def tokenize(text: str) -> tuple[list[int], list[int]]:
        return [ord(c) for c in text], list(range(len(text)))

    two = (snippet, Snippet("b.py", "y = 2"))
    assert fit_snippets(two, python, tokenize, 1000) == render(two[1], python) + render(
        snippet, python
    )  # the most similar nearest the cursor
    fitted = fit_snippets(two, python, tokenize, 30)
    assert len(fitted) <= 30 and fitted.startswith("# lib/helpers.py\n")


def test_an_edit_of_the_other_document_is_seen_by_the_next_choice():
    neighbors = Neighbors()
    current = _document("file:///work/app.py", CURRENT + "x = \n")
    helpers = _document("file:///work/helpers.py", "def unrelated():\n    return 0\n")
    assert neighbors.snippets(current, 5, [helpers], ("file:///work",), ()) == ()
    helpers.replace(0, 0, "def parse_config(path, defaults):\n    return read_file(path)\n")
    helpers.version = 2
    chosen = neighbors.snippets(current, 5, [helpers], ("file:///work",), ())
    assert chosen and "parse_config" in chosen[0].text
