-- polycoder.nvim: ghost-text code completions from polycoder-ls.
local config = require("polycoder.config")

local M = {}

local state = { options = nil, enabled = true, group = nil, attached = {} }

local function has_native()
  return vim.lsp.inline_completion ~= nil and vim.lsp.config ~= nil
end

--- Whether the plugin draws ghost text itself (Neovim < 0.12, or native = false).
function M.uses_plugin_ghost_text()
  local native = state.options and state.options.native
  return native == false or not has_native()
end

function M.options()
  return state.options
end

--- `settings` as a JSON object even when empty (an empty Lua table is encoded as a list).
local function json_object(settings)
  if vim.tbl_isempty(settings) then
    return vim.empty_dict()
  end
  return settings
end

--- Server messages in one line that fits the command line: a longer one would stop typing
--- with a hit-enter prompt. The whole text stays in :messages history and in the log.
local function show_message(_, params, ctx)
  local levels = { vim.log.levels.ERROR, vim.log.levels.WARN, vim.log.levels.INFO, vim.log.levels.DEBUG }
  local text = params.message:gsub("%s*\n%s*", " ")
  local room = math.max(20, vim.v.echospace - 1)
  if vim.fn.strdisplaywidth(text) > room then
    text = vim.fn.strcharpart(text, 0, room - 1) .. "…"
  end
  vim.notify(text, levels[params.type] or vim.log.levels.INFO, { title = "polycoder" })
  return vim.NIL
end

local function client_config(options)
  return {
    name = "polycoder",
    cmd = options.cmd,
    filetypes = options.filetypes,
    root_markers = options.root_markers,
    init_options = json_object(options.settings),
    settings = { polycoder = json_object(options.settings) },
    handlers = { ["window/showMessage"] = show_message },
  }
end

--- Ghost text readable without truecolor: Comment's colour where it has a terminal colour,
--- else grey italics. Neovim's own inline completion draws with ComplHint: while that is
--- still Neovim's default, it shows PolycoderGhostText too.
function M.define_highlights()
  local comment = vim.api.nvim_get_hl(0, { name = "Comment", link = false })
  if comment.ctermfg then
    vim.api.nvim_set_hl(0, "PolycoderGhostText", { link = "Comment", default = true })
  else
    vim.api.nvim_set_hl(0, "PolycoderGhostText", {
      default = true, fg = comment.fg or 0x8a8a8a, ctermfg = 244, italic = true, cterm = { italic = true },
    })
  end
  local hint = vim.api.nvim_get_hl(0, { name = "ComplHint" })
  if hint.link == nil or hint.link == "NonText" then
    vim.api.nvim_set_hl(0, "ComplHint", { link = "PolycoderGhostText" })
  end
end

--- Neovim 0.12's inline completion reacts to typing in any buffer once enabled in one (and
--- then asks about a hidden buffer with the current window's cursor): keep it enabled in the
--- current buffer only.
local function sync_native_buffers()
  local current = vim.api.nvim_get_current_buf()
  for bufnr in pairs(state.attached) do
    if not vim.api.nvim_buf_is_valid(bufnr) then
      state.attached[bufnr] = nil
    elseif bufnr ~= current then
      vim.lsp.inline_completion.enable(false, { bufnr = bufnr })
    end
  end
  if state.attached[current] then
    vim.lsp.inline_completion.enable(state.enabled, { bufnr = current })
  end
end

--- The polycoder-ls client attached to a buffer, else any running one.
function M.client(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr or 0, name = "polycoder" })[1]
    or vim.lsp.get_clients({ name = "polycoder" })[1]
end

local function map(lhs, rhs, desc, opts)
  if lhs then
    vim.keymap.set("i", lhs, rhs, vim.tbl_extend("force", { desc = desc }, opts or {}))
  end
end

local function native_accept(part, key)
  return function()
    local function on_accept(item)
      require("polycoder.ghost").accept_native_part(item, part)
    end
    -- The whole item: Neovim's own accept (it applies the range and runs item.command).
    local opts = part ~= "all" and { on_accept = on_accept } or nil
    if not vim.lsp.inline_completion.get(opts) then
      return vim.keycode(key)
    end
    return ""
  end
end

local function set_keymaps(options)
  local keys = options.keymaps
  if M.uses_plugin_ghost_text() then
    local ghost = require("polycoder.ghost")
    map(keys.accept, ghost.accept_or_fallback("all", keys.accept), "PolyCoder: accept", { expr = true })
    map(keys.accept_word, ghost.accept_or_fallback("word", keys.accept_word), "PolyCoder: accept word", { expr = true })
    map(keys.accept_line, ghost.accept_or_fallback("line", keys.accept_line), "PolyCoder: accept line", { expr = true })
    map(keys.dismiss, function() ghost.dismiss() end, "PolyCoder: dismiss")
    map(keys.next, function() ghost.cycle(1) end, "PolyCoder: next suggestion")
    map(keys.prev, function() ghost.cycle(-1) end, "PolyCoder: previous suggestion")
    return
  end
  map(keys.accept, native_accept("all", keys.accept), "PolyCoder: accept", { expr = true })
  map(keys.accept_word, native_accept("word", keys.accept_word), "PolyCoder: accept word", { expr = true })
  map(keys.accept_line, native_accept("line", keys.accept_line), "PolyCoder: accept line", { expr = true })
  map(keys.dismiss, function()
    vim.lsp.inline_completion.get({ on_accept = function() end })
  end, "PolyCoder: dismiss")
  map(keys.next, function() vim.lsp.inline_completion.select({ count = 1 }) end, "PolyCoder: next")
  map(keys.prev, function() vim.lsp.inline_completion.select({ count = -1 }) end, "PolyCoder: previous")
end

local function start_legacy(options)
  vim.api.nvim_create_autocmd("FileType", {
    group = state.group,
    pattern = options.filetypes,
    callback = function(args)
      local cfg = client_config(options)
      cfg.root_dir = vim.fs.root(args.buf, options.root_markers) or vim.fn.getcwd()
      cfg.filetypes = nil
      cfg.root_markers = nil
      vim.lsp.start(cfg, { bufnr = args.buf })
    end,
  })
end

--- Configure and start the plugin. Calling it again replaces the options.
function M.setup(opts)
  state.options = config.merge(opts)
  state.group = vim.api.nvim_create_augroup("polycoder", { clear = true })
  if vim.lsp.config ~= nil then
    vim.lsp.config("polycoder", client_config(state.options))
    vim.lsp.enable("polycoder")
  else
    start_legacy(state.options)
  end
  vim.api.nvim_create_autocmd("LspAttach", {
    group = state.group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if not client or client.name ~= "polycoder" then
        return
      end
      if M.uses_plugin_ghost_text() then
        require("polycoder.ghost").attach(args.buf, client.id, state.options)
      else
        state.attached[args.buf] = true
        sync_native_buffers()
      end
    end,
  })
  if not M.uses_plugin_ghost_text() then
    vim.api.nvim_create_autocmd("BufEnter", { group = state.group, callback = sync_native_buffers })
    vim.api.nvim_create_autocmd("LspDetach", {
      group = state.group,
      callback = function(args)
        local client = vim.lsp.get_client_by_id(args.data.client_id)
        if client and client.name == "polycoder" then
          state.attached[args.buf] = nil
        end
      end,
    })
  end
  M.define_highlights()
  vim.api.nvim_create_autocmd("ColorScheme", { group = state.group, callback = M.define_highlights })
  set_keymaps(state.options)
end

--- Set up with defaults unless the user already called setup().
function M.ensure_setup()
  if state.options == nil then
    M.setup({})
  end
end

--- Turn suggestions on or off in every buffer.
function M.toggle()
  state.enabled = not state.enabled
  if M.uses_plugin_ghost_text() then
    require("polycoder.ghost").set_enabled(state.enabled)
  else
    sync_native_buffers()
  end
  vim.notify("PolyCoder suggestions " .. (state.enabled and "on" or "off"))
  return state.enabled
end

--- polycoder/status of the server attached to the current buffer (synchronous).
function M.status(bufnr)
  local client = M.client(bufnr)
  if not client then
    return nil, "polycoder-ls is not running"
  end
  local call = require("polycoder.ghost").call
  local response = call(client, "request_sync", "polycoder/status", {}, 2000, bufnr or 0)
  if not response or response.err then
    return nil, response and vim.inspect(response.err) or "no answer from polycoder-ls"
  end
  return response.result
end

function M.show_status()
  local status, err = M.status(0)
  if not status then
    vim.notify("PolyCoder: " .. err, vim.log.levels.WARN)
    return
  end
  local last, totals = status.last, status.totals
  vim.notify(string.format(
    "PolyCoder: %s | %s on %s (%s) | last: %d prompt tokens (%d reused), %d new, %.0f ms%s | shown %d, accepted %d",
    status.state, status.label or status.model, status.device, status.dtype, last.promptTokens,
    last.reusedTokens, last.generatedTokens, last.latencyMs, last.cacheHit and ", cache hit" or "",
    totals.shown or 0, totals.accepted or 0))
end

return M
