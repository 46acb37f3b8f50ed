-- :checkhealth polycoder
local M = {}

function M.check()
  local health = vim.health
  local polycoder = require("polycoder")
  local options = polycoder.options() or require("polycoder.config").defaults
  health.start("polycoder-ls server")
  local exe = options.cmd[1]
  if vim.fn.executable(exe) == 1 then
    health.ok("found " .. vim.fn.exepath(exe))
    local result = vim.system({ exe, "--version" }, { text = true }):wait(10000)
    if result.code == 0 then
      health.ok("version: " .. vim.trim(result.stdout))
    else
      health.error("`" .. exe .. " --version` failed: " .. (result.stderr or ""))
    end
  else
    health.error("`" .. exe .. "` not found", {
      "install the server from a checkout of polycoder-ls: `make venv` (or `pip install .`)",
      "or set cmd in setup() to the server's full path",
    })
  end

  health.start("ghost text")
  if polycoder.uses_plugin_ghost_text() then
    health.ok("the plugin's ghost text (Neovim " .. tostring(vim.version()) .. ")")
  else
    health.ok("Neovim's vim.lsp.inline_completion")
  end

  health.start("model")
  local status, err = polycoder.status(0)
  if not status then
    health.info(err .. " (open a file of a supported language to start it)")
  elseif status.state == "ready" then
    local line = string.format("%s ready on %s (%s)", status.label or status.model, status.device, status.dtype)
    if status.fallbackFrom then
      health.warn(line)
    else
      health.ok(line)
    end
  elseif status.state == "loading" then
    health.info("loading " .. status.model)
  else
    health.error("model failed to load: " .. (status.error or "unknown error"))
  end

  health.start("GPU")
  if vim.fn.executable("nvidia-smi") == 1 then
    local gpus = vim.system({ "nvidia-smi", "-L" }, { text = true }):wait(5000)
    health.ok("CUDA visible: " .. vim.trim(gpus.stdout or ""))
  else
    health.info("no CUDA GPU visible (nvidia-smi not found): the model runs on the CPU")
  end
end

return M
