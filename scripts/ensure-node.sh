#!/usr/bin/env bash
# Makes sure Node.js (18 or newer; CI has 20) and npm are on PATH for the mini-program client
# (client/miniprogram). When either is missing, installs Debian's `nodejs` / `npm` packages
# with apt-get (through `sudo -n` when not root); nothing is installed when both are there.
set -euo pipefail

need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if ((${#need[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "client: ${need[*]} missing and no apt-get here: install Node.js >= 18 with npm" >&2
    exit 1
  fi
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo -n); fi
  echo "client: installing ${need[*]} with apt-get"
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}"
fi

major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  echo "client: Node.js $(node --version) is too old: 18 or newer is needed" >&2
  exit 1
fi
echo "client: node $(node --version), npm $(npm --version)"
