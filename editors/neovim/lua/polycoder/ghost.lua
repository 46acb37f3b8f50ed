-- Ghost text drawn by the plugin (Neovim 0.10/0.11, or native = false): debounced
-- textDocument/inlineCompletion requests, the previous one cancelled, nothing stale drawn.
local M = {}

local ns = vim.api.nvim_create_namespace("polycoder.ghost")
local buffers = {}
local enabled = true
local options = require("polycoder.config").defaults
local is_011 = vim.fn.has("nvim-0.11") == 1
local HIGHLIGHT = "PolycoderGhostText"

local function call(client, method, ...)
  if is_011 then
    return client[method](client, ...)
  end
  return client[method](...)
end

local function byte_col(line, col, encoding)
  if encoding == "utf-8" then
    return col
  end
  if is_011 then
    return vim.str_byteindex(line, encoding, col, false)
  end
  local ok, index = pcall(vim.str_byteindex, line, col, encoding == "utf-16")
  return ok and index or #line
end

local function item_text(item)
  local text = item.insertText or item.insert_text
  return type(text) == "table" and text.value or text
end

--- The part of `text` that accept word / accept line / accept all inserts.
function M.portion(text, part)
  if part == "word" then
    return text:match("^%s*[%w_]+") or text:match("^%s*[^%w_%s]") or text:match("^%s+") or text
  elseif part == "line" then
    return text:match("^\n[^\n]*") or text:match("^[^\n]+") or text
  end
  return text
end

local function clear(bufnr)
  local state = buffers[bufnr]
  if state then
    state.shown = nil
  end
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  end
end

local function cancel_request(state)
  if state.cancel then
    state.cancel()
    state.cancel = nil
  end
end

local function render(bufnr, text, item, replace_after)
  clear(bufnr)
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local lines = vim.split(text, "\n", { plain = true })
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], HIGHLIGHT } }
  end
  vim.api.nvim_buf_set_extmark(bufnr, ns, row - 1, col, {
    virt_text = { { lines[1], HIGHLIGHT } },
    virt_text_pos = "inline",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
  })
  local line = vim.api.nvim_get_current_line()
  buffers[bufnr].shown = {
    text = text, item = item, row = row, prefix = line:sub(1, col), replace_after = replace_after,
  }
end

local function on_response(bufnr, tick, cursor)
  return function(err, result)
    local state = buffers[bufnr]
    if err or not state or not enabled or vim.api.nvim_get_current_buf() ~= bufnr then
      return
    end
    if vim.api.nvim_buf_get_changedtick(bufnr) ~= tick
      or not vim.deep_equal(vim.api.nvim_win_get_cursor(0), cursor)
      or not vim.api.nvim_get_mode().mode:match("^i") then
      return -- the buffer moved on: never draw a stale suggestion
    end
    local items = result and (result.items or result) or {}
    state.items, state.index = items, 1
    if items[1] and item_text(items[1]) ~= "" then
      M.show_item(bufnr, items[1])
    end
  end
end

local function request(bufnr)
  local state = buffers[bufnr]
  local client = state and vim.lsp.get_client_by_id(state.client_id)
  if not client or not enabled or vim.api.nvim_get_current_buf() ~= bufnr then
    return
  end
  cancel_request(state)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding or "utf-16")
  params.context = { triggerKind = 2 }
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local handler = on_response(bufnr, tick, vim.api.nvim_win_get_cursor(0))
  local ok, id = call(client, "request", "textDocument/inlineCompletion", params, handler, bufnr)
  if ok and id then
    state.cancel = function()
      call(client, "cancel_request", id)
    end
  end
end

--- Keep the rest of a shown suggestion visible when the user types its next characters.
local function type_through(bufnr)
  local shown = buffers[bufnr].shown
  if not shown then
    return false
  end
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local before = vim.api.nvim_get_current_line():sub(1, col)
  if row ~= shown.row or before:sub(1, #shown.prefix) ~= shown.prefix then
    return false
  end
  local typed = before:sub(#shown.prefix + 1)
  if typed == "" then
    return true
  end
  if shown.text:sub(1, #typed) ~= typed or #typed >= #shown.text then
    return false
  end
  render(bufnr, shown.text:sub(#typed + 1), shown.item, shown.replace_after)
  return true
end

local function on_change(bufnr)
  local state = buffers[bufnr]
  if not state or not enabled then
    return
  end
  cancel_request(state)
  if not type_through(bufnr) then
    clear(bufnr)
  end
  if state.timer then
    state.timer:stop()
  end
  state.timer = state.timer or vim.uv.new_timer()
  state.timer:start(options.debounce_ms, 0, vim.schedule_wrap(function()
    request(bufnr)
  end))
end

function M.attach(bufnr, client_id, opts)
  options = opts or options
  if buffers[bufnr] then
    buffers[bufnr].client_id = client_id
    return
  end
  buffers[bufnr] = { client_id = client_id }
  local group = vim.api.nvim_create_augroup("polycoder.ghost." .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "TextChangedI", "CursorMovedI", "InsertEnter" }, {
    group = group, buffer = bufnr, callback = function() on_change(bufnr) end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group, buffer = bufnr, callback = function() M.dismiss(bufnr) end,
  })
  vim.api.nvim_create_autocmd({ "BufWipeout", "LspDetach" }, {
    group = group, buffer = bufnr,
    callback = function()
      clear(bufnr)
      buffers[bufnr] = nil
      pcall(vim.api.nvim_del_augroup_by_id, group)
    end,
  })
end

local function report(client_id, length, accepted)
  local client = vim.lsp.get_client_by_id(client_id)
  if client then
    call(client, "notify", "polycoder/didAccept", { length = length, acceptedLength = accepted })
  end
end

--- Insert `text` at the cursor (replacing `end_col` bytes after it on the line) and move the
--- cursor behind it.
local function insert(bufnr, text, end_col)
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local lines = vim.split(text, "\n", { plain = true })
  vim.api.nvim_buf_set_text(bufnr, row - 1, col, row - 1, end_col or col, lines)
  local last_col = (#lines == 1 and col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row + #lines - 1, last_col })
end

--- Bytes after the cursor that `item`'s range replaces (closers the editor typed), measured
--- when the item arrives: typing through it or a partial accept leave them after the cursor.
local function replaced_after_cursor(state, item)
  local range = item.range
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  if not range or range["end"].line ~= range.start.line or range["end"].line ~= row - 1 then
    return 0
  end
  local client = vim.lsp.get_client_by_id(state.client_id)
  local line = vim.api.nvim_get_current_line()
  local end_col = byte_col(line, range["end"].character, client and client.offset_encoding or "utf-16")
  return math.max(0, end_col - col)
end

--- Show `item` as the suggestion at the cursor (as when it arrives from the server).
function M.show_item(bufnr, item)
  local state = buffers[bufnr]
  render(bufnr, item_text(item), item, replaced_after_cursor(state, item))
end

function M.accept(part)
  local bufnr = vim.api.nvim_get_current_buf()
  local state = buffers[bufnr]
  local shown = state and state.shown
  if not shown then
    return false
  end
  local portion = M.portion(shown.text, part)
  local whole = portion == shown.text
  clear(bufnr)
  local col = vim.api.nvim_win_get_cursor(0)[2]
  insert(bufnr, portion, whole and col + (shown.replace_after or 0) or nil)
  local full = item_text(shown.item)
  report(state.client_id, vim.fn.strchars(full),
    vim.fn.strchars(full) - vim.fn.strchars(shown.text) + vim.fn.strchars(portion))
  if not whole then
    render(bufnr, shown.text:sub(#portion + 1), shown.item, shown.replace_after)
  end
  return true
end

--- An <expr> mapping: accept `part` while a suggestion is shown, else the key itself.
function M.accept_or_fallback(part, key)
  return function()
    local state = buffers[vim.api.nvim_get_current_buf()]
    if not (state and state.shown) then
      return vim.keycode(key)
    end
    vim.schedule(function() M.accept(part) end)
    return ""
  end
end

--- Accept part of a native (0.12) inline completion item and report it.
function M.accept_native_part(item, part)
  local text = item_text(item)
  local portion = M.portion(text, part)
  insert(vim.api.nvim_get_current_buf(), portion, nil)
  report(item.client_id, vim.fn.strchars(text), vim.fn.strchars(portion))
end

--- Hide the suggestion and stop any request or pending debounce for it.
function M.dismiss(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local state = buffers[bufnr]
  if state then
    cancel_request(state)
    if state.timer then state.timer:stop() end
  end
  clear(bufnr)
end

function M.cycle(delta)
  local bufnr = vim.api.nvim_get_current_buf()
  local state = buffers[bufnr]
  if not (state and state.shown and state.items and #state.items > 1) then
    return
  end
  state.index = (state.index - 1 + delta) % #state.items + 1
  M.show_item(bufnr, state.items[state.index])
end

function M.set_enabled(flag)
  enabled = flag
  for bufnr in pairs(buffers) do
    clear(bufnr)
  end
end

--- Whether a suggestion is shown in `bufnr`, and its text (for tests and statuslines).
function M.shown(bufnr)
  local state = buffers[bufnr or vim.api.nvim_get_current_buf()]
  return state and state.shown and state.shown.text or nil
end

M.namespace = ns
M.call = call

return M
