-- Generated from polycoder_ls/languages.py by tests/editors/test_language_lists.py.
return {
  filetypes = {
    "c",
    "cs",
    "cpp",
    "cuda",
    "go",
    "java",
    "javascript",
    "javascriptreact",
    "php",
    "python",
    "ruby",
    "rust",
    "scala",
    "typescript",
    "typescriptreact",
  },
}
