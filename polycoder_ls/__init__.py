"""polycoder-ls: a language server for local PolyCoder code completions."""

__version__ = "0.1.0"
