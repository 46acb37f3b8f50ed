"""The 12 PolyCoder languages: how to recognise them and where their blocks start and end."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    """What post-processing and evaluation need to know about a programming language."""

    name: str
    extensions: tuple[str, ...]
    language_ids: tuple[str, ...]
    line_comment: str
    braces: bool
    """Blocks are delimited by brackets, so bracket balance tells where a block ends."""
    opens_block: re.Pattern[str]
    """Matches a line (right-stripped) after which the next lines form a block."""
    top_level: re.Pattern[str]
    """Matches a line at column 0 that starts a new top-level definition."""
    quotes: str = "\"'`"
    block_closer: str = ""
    """A keyword that closes a block on its own line (Ruby's `end`)."""
    pygments_lexer: str = ""


_BRACE_OPENER = re.compile(r"[{(\[]$")
_C_TOP = r"#|typedef\b|struct\b|enum\b|union\b|static\b|extern\b|[A-Za-z_][\w \t*]*\("
_JS_TOP = r"function\b|class\b|const\b|let\b|var\b|export\b|import\b|async\s+function\b"


def _top(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"^(?:{pattern})")


LANGUAGES: tuple[Language, ...] = (
    Language("C", (".c", ".h"), ("c",), "//", True, _BRACE_OPENER, _top(_C_TOP), "\"'", "", "c"),
    Language(
        "C#",
        (".cs",),
        ("csharp",),
        "//",
        True,
        _BRACE_OPENER,
        _top(r"namespace\b|using\b|public\b|internal\b|class\b|interface\b|\["),
        "\"'",
        "",
        "csharp",
    ),
    Language(
        "C++",
        (".cpp", ".cc", ".cxx", ".hpp", ".hh", ".hxx", ".h++", ".c++"),
        ("cpp", "cuda-cpp"),
        "//",
        True,
        _BRACE_OPENER,
        _top(_C_TOP + r"|class\b|namespace\b|template\b|using\b"),
        "\"'",
        "",
        "cpp",
    ),
    Language(
        "Go",
        (".go",),
        ("go",),
        "//",
        True,
        _BRACE_OPENER,
        _top(r"func\b|type\b|var\b|const\b|import\b|package\b"),
        "\"'`",
        "",
        "go",
    ),
    Language(
        "Java",
        (".java",),
        ("java",),
        "//",
        True,
        _BRACE_OPENER,
        _top(r"public\b|private\b|protected\b|class\b|interface\b|enum\b|import\b|package\b|@"),
        "\"'",
        "",
        "java",
    ),
    Language(
        "JavaScript",
        (".js", ".mjs", ".cjs", ".jsx"),
        ("javascript", "javascriptreact"),
        "//",
        True,
        re.compile(r"(?:[{(\[]|=>)$"),
        _top(_JS_TOP),
        "\"'`",
        "",
        "javascript",
    ),
    Language(
        "PHP",
        (".php",),
        ("php",),
        "//",
        True,
        _BRACE_OPENER,
        _top(r"function\b|class\b|interface\b|trait\b|namespace\b|use\b|abstract\b|final\b"),
        "\"'",
        "",
        "php",
    ),
    Language(
        "Python",
        (".py", ".pyi"),
        ("python",),
        "#",
        False,
        re.compile(r"[:({\[]$"),
        _top(r"def\b|class\b|async\s+def\b|@|if __name__\b"),
        "\"'",
        "",
        "python",
    ),
    Language(
        "Ruby",
        (".rb", ".rake", ".gemspec"),
        ("ruby",),
        "#",
        False,
        re.compile(
            r"(?:\bdo(?:\s*\|[^|]*\|)?|[{(\[|]|\bthen"
            r"|^\s*(?:def|class|module|if|unless|while|until|case|begin|for)\b.*)$"
        ),
        _top(r"def\b|class\b|module\b|require\b"),
        "\"'`",
        "end",
        "ruby",
    ),
    Language(
        "Rust",
        (".rs",),
        ("rust",),
        "//",
        True,
        re.compile(r"(?:[{(\[]|=>)$"),
        _top(r"fn\b|pub\b|impl\b|struct\b|enum\b|trait\b|mod\b|use\b|#\[|const\b|static\b|type\b"),
        '"',
        "",
        "rust",
    ),
    Language(
        "Scala",
        (".scala", ".sc"),
        ("scala",),
        "//",
        True,
        re.compile(r"(?:[{(\[=]|=>)$"),
        _top(r"def\b|class\b|object\b|trait\b|case\s+class\b|sealed\b|import\b|package\b"),
        "\"'",
        "",
        "scala",
    ),
    Language(
        "TypeScript",
        (".ts", ".tsx", ".mts", ".cts"),
        ("typescript", "typescriptreact"),
        "//",
        True,
        re.compile(r"(?:[{(\[]|=>)$"),
        _top(_JS_TOP + r"|interface\b|type\b|enum\b|declare\b|namespace\b"),
        "\"'`",
        "",
        "typescript",
    ),
)

PLAIN_TEXT = Language(
    "Text", (), ("plaintext",), "", False, re.compile(r"[:{(\[]$"), re.compile(r"(?!)"), ""
)
"""Unknown languages: indentation rules only."""

# Neovim's filetype where it is not the LSP language id (Neovim sends its filetype as the id).
NEOVIM_FILETYPE = {"csharp": "cs", "cuda-cpp": "cuda"}


def lsp_language_ids() -> list[str]:
    """The language ids editors with LSP ids (VS Code) send for the 12 languages: the one
    list the extension's document selector and activation events are generated from."""
    return [language_id for lang in LANGUAGES for language_id in lang.language_ids]


def neovim_filetypes() -> list[str]:
    """The Neovim filetypes of the 12 languages: the Neovim plugin's default `filetypes`."""
    return [NEOVIM_FILETYPE.get(language_id, language_id) for language_id in lsp_language_ids()]


_BY_ID = {
    alias: lang
    for lang in LANGUAGES
    for language_id in lang.language_ids
    for alias in {language_id, NEOVIM_FILETYPE.get(language_id, language_id)}
}
_BY_EXTENSION = {extension: lang for lang in LANGUAGES for extension in lang.extensions}
_BY_NAME = {lang.name.lower(): lang for lang in LANGUAGES}


def language_named(name: str) -> Language | None:
    """A language by its name ("C#", "python"), or None."""
    return _BY_NAME.get(name.lower())


def language_of_path(path: str) -> Language | None:
    """The language of a file name by its extension, or None."""
    return _BY_EXTENSION.get(os.path.splitext(path)[1].lower())


def language_of_document(language_id: str, uri: str) -> Language:
    """The language of an open document: its LSP languageId, else its extension."""
    return _BY_ID.get(language_id) or language_of_path(uri) or PLAIN_TEXT
