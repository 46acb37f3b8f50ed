-- polycoder.nvim: commands only; the plugin itself loads on the first matching filetype.
if vim.g.loaded_polycoder then
  return
end
vim.g.loaded_polycoder = true

vim.api.nvim_create_user_command("PolycoderStatus", function()
  require("polycoder").show_status()
end, { desc = "Show polycoder-ls status (model, device, last latency)" })

vim.api.nvim_create_user_command("PolycoderToggle", function()
  require("polycoder").toggle()
end, { desc = "Turn PolyCoder suggestions on or off" })

-- Works without setup(): start with defaults when a file of a PolyCoder language opens.
vim.api.nvim_create_autocmd("FileType", {
  group = vim.api.nvim_create_augroup("polycoder.autostart", { clear = true }),
  once = true,
  callback = function(args)
    if vim.g.polycoder_no_autostart then
      return
    end
    local polycoder = require("polycoder")
    local first_setup = polycoder.options() == nil
    polycoder.ensure_setup()
    if first_setup then
      -- The FileType event that loaded us has passed: re-run it for this buffer.
      vim.api.nvim_exec_autocmds("FileType", { buffer = args.buf, modeline = false })
    end
  end,
})
