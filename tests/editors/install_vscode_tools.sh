#!/usr/bin/env bash
# Installs what the VS Code test needs: Debian's Chromium, and code-server 4.100.x (VS Code
# 1.100, the last release for Node 20) with what its install scripts need here: root allowed
# (npm_config_unsafe_perm), libkrb5-dev for the kerberos module, @vscode/ripgrep's download
# replaced by Debian's rg, and npx allowed to fetch node-gyp (npm_config_yes). Idempotent.
#   tests/editors/install_vscode_tools.sh TOOLS_DIR
set -euo pipefail
tools=$(realpath -m "${1:-.editor-tools}")
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v rg >/dev/null || missing+=(ripgrep)
dpkg -s libkrb5-dev >/dev/null 2>&1 || missing+=(libkrb5-dev)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi
if [ ! -x "$tools/code-server/node_modules/.bin/code-server" ]; then
  mkdir -p "$tools/code-server"
  export TMPDIR
  TMPDIR=$(mktemp -d)
  # @vscode/ripgrep downloads rg from GitHub: seed its cache with Debian's rg instead.
  mkdir -p "$TMPDIR/vscode-ripgrep-cache-1.15.11"
  tar czf "$TMPDIR/vscode-ripgrep-cache-1.15.11/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" -C /usr/bin rg
  (cd "$tools/code-server" && npm_config_unsafe_perm=true npm_config_yes=true \
    npm install --no-audit --no-fund --loglevel=error code-server@4.100.3)
fi
echo "$tools/code-server/node_modules/.bin/code-server"
