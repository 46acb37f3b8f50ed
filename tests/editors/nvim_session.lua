-- What both headless Neovim drivers share: a session run as a coroutine from VimEnter, waits
-- on conditions (never fixed delays alone), typing, and the JSON result for the test.
local M = {}

local co

--- Give Neovim's event loop `ms` milliseconds, then go on.
function M.sleep(ms)
  vim.defer_fn(function() assert(coroutine.resume(co)) end, ms)
  coroutine.yield()
end

function M.wait_for(what, condition, timeout_ms)
  local waited = 0
  while not condition() do
    if waited > (timeout_ms or 30000) then
      error(string.format("timed out waiting for %s (mode %s, line %q)", what,
        vim.api.nvim_get_mode().mode, vim.api.nvim_get_current_line()))
    end
    M.sleep(25)
    waited = waited + 25
  end
end

--- Keys as a user types them, with a short pause after each.
function M.type_keys(keys)
  for _, key in ipairs(keys) do
    vim.api.nvim_feedkeys(vim.keycode(key), "t", false)
    M.sleep(40)
  end
end

function M.wait_ready()
  M.wait_for("the server", function()
    local ok, status = pcall(require("polycoder").status, 0)
    return ok and status and status.state == "ready"
  end, 60000)
end

local function finish(results, ok, message)
  results.ok, results.message = ok, message
  results.messages = vim.fn.execute("messages")
  results.errmsg = vim.v.errmsg
  local file = assert(io.open(vim.env.POLYCODER_TEST_OUT, "w"))
  file:write(vim.json.encode(results))
  file:close()
  vim.cmd(ok and "qall!" or "cquit! 1")
end

--- Run `session()` once Neovim has started; write `results` (ok, message, messages) and quit.
function M.run(results, session)
  vim.api.nvim_create_autocmd("VimEnter", {
    once = true,
    nested = true, -- so that :edit fires FileType, which starts the server
    callback = function()
      co = coroutine.create(function()
        local ok, err = pcall(session)
        finish(results, ok, ok and "done" or tostring(err))
      end)
      assert(coroutine.resume(co))
    end,
  })
end

return M
