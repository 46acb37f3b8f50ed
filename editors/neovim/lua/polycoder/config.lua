-- Options of the polycoder.nvim plugin, with defaults.
local M = {}

M.defaults = {
  -- Command that starts the language server.
  cmd = { "polycoder-ls", "--stdio" },
  -- The server's configuration object (keys as in the server's README: model, device, dtype,
  -- threads, contextTokens, maxNewTokens, temperature, topP, multiline, stop, cache,
  -- disabledLanguages). Sent as initializationOptions and answered to workspace/configuration.
  settings = {},
  -- Filetypes the server attaches to: PolyCoder's 12 languages (generated from the server's
  -- list, polycoder_ls/languages.py).
  filetypes = require("polycoder.languages").filetypes,
  root_markers = { ".git" },
  -- nil: Neovim's own vim.lsp.inline_completion on 0.12+, the plugin's ghost text before.
  -- false: always the plugin's ghost text.
  native = nil,
  -- Milliseconds of typing pause before a request (plugin ghost text only).
  debounce_ms = 150,
  -- Insert-mode keys; false disables one. <Tab> only accepts while a suggestion is shown.
  keymaps = {
    accept = "<Tab>",
    accept_word = "<M-Right>",
    accept_line = "<M-l>",
    dismiss = "<C-]>",
    next = "<M-]>",
    prev = "<M-[>",
  },
}

function M.merge(opts)
  local merged = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  vim.validate({
    cmd = { merged.cmd, "table" },
    settings = { merged.settings, "table" },
    filetypes = { merged.filetypes, "table" },
    debounce_ms = { merged.debounce_ms, "number" },
    keymaps = { merged.keymaps, "table" },
  })
  return merged
end

return M
