"""Recognising the 12 languages and a document's indentation style."""

from __future__ import annotations

import pytest

from polycoder_ls.indentation import IndentStyle, detect_indent, reindent, style_of_lines
from polycoder_ls.languages import (
    LANGUAGES,
    PLAIN_TEXT,
    language_named,
    language_of_document,
    language_of_path,
)


def test_the_twelve_polycoder_languages():
    assert sorted(language.name for language in LANGUAGES) == [
        "C", "C#", "C++", "Go", "Java", "JavaScript", "PHP", "Python", "Ruby", "Rust",
        "Scala", "TypeScript",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("language_id", "uri", "name"),
    [
        ("python", "file:///a.txt", "Python"),
        ("typescriptreact", "file:///a.tsx", "TypeScript"),
        ("", "file:///src/lib.rs", "Rust"),
        ("plaintext", "file:///src/Main.java", "Java"),
        ("csharp", "untitled:1", "C#"),
        ("", "file:///notes.md", "Text"),
    ],
)
def test_language_of_a_document_by_id_then_extension(language_id, uri, name):
    assert language_of_document(language_id, uri).name == name


def test_language_lookups():
    assert language_named("c++") is language_of_path("x/y.hpp")
    assert language_of_path("README") is None
    assert language_of_document("markdown", "file:///x.md") is PLAIN_TEXT


def test_indent_style_of_a_document():
    assert detect_indent("def f():\n    if x:\n        y\n") == IndentStyle(tabs=False, width=4)
    assert detect_indent("a {\n  b {\n    c\n  }\n}\n") == IndentStyle(tabs=False, width=2)
    assert detect_indent("func f() {\n\tx()\n\tif y {\n\t\tz()\n\t}\n}\n") == IndentStyle(True)
    assert detect_indent("x = 1\ny = 2\n") is None
    assert detect_indent(" * a comment\n * block\n") == IndentStyle(tabs=False, width=4)


def test_suggested_lines_style_and_reindent():
    assert style_of_lines(["        a", "    b"]) == IndentStyle(tabs=False, width=4)
    assert style_of_lines(["\ta", "  b"]) is None
    spaces, tabs = IndentStyle(False, 4), IndentStyle(True)
    assert reindent("        x = 1", spaces, tabs) == "\t\tx = 1"
    assert reindent("\t\tx = 1", tabs, IndentStyle(False, 2)) == "    x = 1"
    assert reindent("      x", spaces, tabs) == "\t  x"
