// Generated from polycoder_ls/languages.py by tests/editors/test_language_lists.py.
export const LANGUAGES = [
  "c",
  "csharp",
  "cpp",
  "cuda-cpp",
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
];
