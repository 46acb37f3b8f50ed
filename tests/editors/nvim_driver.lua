-- Drives real Neovim (headless) through a typing session with polycoder.nvim and writes what a
-- user would see as JSON. Run by test_neovim.py:
--   nvim --headless --clean -u nvim_driver.lua   (settings in POLYCODER_TEST_* variables)
local env = vim.env
vim.opt.rtp:prepend(env.POLYCODER_PLUGIN)
vim.g.loaded_python3_provider = 0
vim.o.showmode = false
vim.o.swapfile = false
vim.cmd("filetype plugin indent on")
-- Ghost text in grey italics, as a colorscheme would show it (for the screenshot).
vim.api.nvim_set_hl(0, "ComplHint", { fg = "#8a8a8a", italic = true })
vim.api.nvim_set_hl(0, "Comment", { fg = "#8a8a8a", italic = true })

local plugin_mode = env.POLYCODER_TEST_MODE == "plugin"
local native = nil -- Neovim's own inline completion
if plugin_mode then
  native = false -- the plugin's ghost text, as on Neovim 0.10/0.11
end
require("polycoder").setup({
  cmd = { env.POLYCODER_PYTHON, "-m", "polycoder_ls", "--stdio", "-v", "--log-file", env.POLYCODER_SERVER_LOG },
  settings = { model = env.POLYCODER_MODEL, maxNewTokens = 16 },
  native = native,
})

local results = { mode = plugin_mode and "plugin" or "native" }

local nvim = dofile(vim.fs.dirname(debug.getinfo(1, "S").source:sub(2)) .. "/nvim_session.lua")
local sleep, wait_for, type_keys = nvim.sleep, nvim.wait_for, nvim.type_keys

local function ghost_namespace()
  if plugin_mode then
    return require("polycoder.ghost").namespace
  end
  return vim.api.nvim_get_namespaces()["nvim.lsp.inline_completion"]
end

--- The ghost text on screen: first line inline, the others as virtual lines.
local function ghost_text()
  local ns = ghost_namespace()
  if not ns then
    return nil
  end
  local marks = vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
  if #marks == 0 then
    return nil
  end
  local details = marks[1][4]
  local lines = { table.concat(vim.tbl_map(function(chunk) return chunk[1] end, details.virt_text or {})) }
  for _, virt_line in ipairs(details.virt_lines or {}) do
    lines[#lines + 1] = table.concat(vim.tbl_map(function(chunk) return chunk[1] end, virt_line))
  end
  return table.concat(lines, "\n")
end

local function buffer_text()
  return table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, true), "\n")
end

local function status()
  return assert(require("polycoder").status(0))
end

local function session()
  vim.cmd.edit(env.POLYCODER_TEST_FILE)
  nvim.wait_ready()

  -- Real insert-mode typing at the end of the file.
  vim.api.nvim_feedkeys("GA", "n", false)
  sleep(50)
  type_keys({ "r", "e" })
  wait_for("ghost text", function() return ghost_text() ~= nil end)
  results.before_accept = buffer_text()
  results.cursor = vim.api.nvim_win_get_cursor(0)
  results.ghost = ghost_text()
  if env.POLYCODER_TEST_HTML then -- what the screen shows, ghost text included, as HTML
    vim.fn.writefile(require("tohtml").tohtml(0, { title = "polycoder.nvim" }), env.POLYCODER_TEST_HTML)
  end
  type_keys({ "<Tab>" })
  wait_for("the accepted text", function() return buffer_text() ~= results.before_accept end)
  sleep(100)
  results.after_accept = buffer_text()

  -- Dismiss: a new suggestion on a new line, then the dismiss key.
  type_keys({ "<CR>", "x", " ", "=" })
  wait_for("a second ghost text", function() return ghost_text() ~= nil end)
  type_keys({ "<C-]>" })
  sleep(100)
  results.after_dismiss = ghost_text()
  results.buffer_after_dismiss = buffer_text()

  -- Typing through a suggestion keeps the rest visible, answered without a model run.
  type_keys({ " " })
  wait_for("a third ghost text", function()
    local text = ghost_text()
    return text ~= nil and #text >= 2
  end)
  local suggestion = ghost_text()
  local before = status().totals
  local typed = suggestion:sub(1, 1)
  type_keys({ typed == " " and "<Space>" or typed })
  results.type_through_immediately = ghost_text()
  sleep(600)
  results.type_through = {
    suggestion = suggestion,
    typed = typed,
    shown_after = ghost_text(),
    model_runs_before = before.completed - before.cacheHits,
    model_runs_after = status().totals.completed - status().totals.cacheHits,
    accepted = status().totals.accepted,
  }

  -- Accept word: the next word of the suggestion goes in, the rest stays on screen.
  local rest = ghost_text()
  local line_before = vim.api.nvim_get_current_line()
  type_keys({ "<M-Right>" })
  wait_for("the accepted word", function() return vim.api.nvim_get_current_line() ~= line_before end)
  sleep(100)
  results.accept_word = {
    rest = rest,
    line_before = line_before,
    line_after = vim.api.nvim_get_current_line(),
    partially_accepted = status().totals.partiallyAccepted,
  }

  vim.cmd("stopinsert")
  vim.cmd("checkhealth polycoder")
  results.health = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), "\n")
end

nvim.run(results, session)
