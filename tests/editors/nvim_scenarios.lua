-- Real headless Neovim through the first-hour scenarios of polycoder.nvim; writes what a user
-- would see as JSON. Run by test_neovim.py with POLYCODER_TEST_SCENARIO set:
--   two_buffers  native inline completion, typing in a second buffer
--   ranges       plugin ghost text: accept after typing through and after a partial accept
--   first_start  setup() without settings, a fallback model: messages, status and health
local env = vim.env
vim.opt.rtp:prepend(env.POLYCODER_PLUGIN)
vim.g.loaded_python3_provider = 0
vim.o.showmode = false
vim.o.swapfile = false
vim.o.termguicolors = false
vim.cmd("filetype plugin indent on")

local scenario = env.POLYCODER_TEST_SCENARIO
local settings = nil
local native = nil -- Neovim's own inline completion
if scenario == "ranges" then
  native = false -- the plugin's ghost text
end
if scenario ~= "first_start" then
  settings = { model = env.POLYCODER_MODEL, maxNewTokens = 16 }
end
require("polycoder").setup({
  cmd = { env.POLYCODER_PYTHON, "-m", "polycoder_ls", "--stdio", "-v", "--log-file", env.POLYCODER_SERVER_LOG },
  settings = settings,
  native = native,
})

local results = { scenario = scenario, errors = {} }
local nvim = dofile(vim.fs.dirname(debug.getinfo(1, "S").source:sub(2)) .. "/nvim_session.lua")
local sleep, wait_for, type_keys = nvim.sleep, nvim.wait_for, nvim.type_keys

local function native_ghost()
  local ns = vim.api.nvim_get_namespaces()["nvim.lsp.inline_completion"]
  return ns and #vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {}) > 0
end

--- Record every request the client sends: method and document.
local function record_requests(client)
  results.requests = {}
  local request = client.request
  client.request = function(self, method, params, ...)
    if method == "textDocument/inlineCompletion" then
      table.insert(results.requests, { uri = params.textDocument.uri, buf = vim.api.nvim_get_current_buf() })
    end
    return request(self, method, params, ...)
  end
end

local scenarios = {}

function scenarios.two_buffers()
  vim.cmd.edit(env.POLYCODER_TEST_FILE)
  nvim.wait_ready()
  record_requests(require("polycoder").client(0))
  vim.api.nvim_feedkeys("GA", "n", false)
  sleep(50)
  type_keys({ "r", "e" })
  wait_for("ghost text in the first buffer", native_ghost)
  type_keys({ "<Esc>" })
  vim.cmd.edit(env.POLYCODER_TEST_FILE2)
  wait_for("the second buffer attached", function()
    return require("polycoder").client(0) ~= nil and vim.lsp.get_clients({ bufnr = 0, name = "polycoder" })[1] ~= nil
  end)
  results.requests = {}
  results.second_uri = vim.uri_from_bufnr(0)
  vim.api.nvim_feedkeys("GA", "n", false)
  sleep(50)
  type_keys({ "<CR>", "r", "e", "t" })
  wait_for("ghost text in the second buffer", native_ghost)
  results.ghost_in_second = native_ghost()
  results.complhint = vim.api.nvim_get_hl(0, { name = "ComplHint" }).link
end

function scenarios.ranges()
  local ghost = require("polycoder.ghost")
  vim.cmd.edit(env.POLYCODER_TEST_FILE)
  nvim.wait_ready()
  local bufnr = vim.api.nvim_get_current_buf()
  local function suggest(line, col, text, closers)
    vim.api.nvim_buf_set_lines(bufnr, -1, -1, true, { line })
    local row = vim.api.nvim_buf_line_count(bufnr)
    vim.cmd("startinsert")
    vim.api.nvim_win_set_cursor(0, { row, col })
    sleep(50)
    ghost.dismiss(bufnr)
    ghost.show_item(bufnr, {
      insertText = text,
      range = { start = { line = row - 1, character = col }, ["end"] = { line = row - 1, character = col + closers } },
    })
    return row
  end
  -- Type the first character through, then accept the rest: `)` replaced once.
  local row = suggest("total = compute()", #"total = compute(", "a, b)", 1)
  type_keys({ "a" })
  results.shown_after_typing = ghost.shown(bufnr)
  ghost.accept("all")
  results.after_type_through = vim.api.nvim_buf_get_lines(bufnr, row - 1, row, true)[1]
  -- Accept a word, then the rest: `])` replaced once.
  row = suggest("values = sorted([])", #"values = sorted([", "item.key for item in items])", 2)
  ghost.accept("word")
  results.shown_after_word = ghost.shown(bufnr)
  ghost.accept("all")
  results.after_partial = vim.api.nvim_buf_get_lines(bufnr, row - 1, row, true)[1]
  local extmarks = vim.api.nvim_buf_get_extmarks(bufnr, ghost.namespace, 0, -1, { details = true })
  results.highlight = vim.api.nvim_get_hl(0, { name = "PolycoderGhostText", link = false })
  results.extmarks_left = #extmarks
  vim.cmd("stopinsert")
end

function scenarios.first_start()
  vim.o.columns = 80
  vim.cmd.edit(env.POLYCODER_TEST_FILE)
  local client
  wait_for("the client", function()
    client = require("polycoder").client(0)
    return client ~= nil
  end)
  results.init_options = vim.json.encode(client.config.init_options)
  results.pulled_settings = vim.json.encode(client.config.settings.polycoder)
  nvim.wait_ready()
  wait_for("the fallback message", function()
    return vim.fn.execute("messages"):find("serving") ~= nil
  end)
  results.echospace = vim.v.echospace
  results.status_line = vim.fn.execute("PolycoderStatus")
  vim.cmd("checkhealth polycoder")
  results.health = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), "\n")
end

nvim.run(results, scenarios[scenario])
