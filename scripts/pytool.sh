#!/usr/bin/env bash
# Installs the PyPI tool NAME==VERSION into .tools/py-NAME and a wrapper .tools/bin/NAME that
# runs MODULE:FUNCTION with it (idempotent: nothing happens when that version is there).
# Its dependencies are held to scripts/pins/NAME.txt (pip constraints): pinning NAME alone would
# let a new release of one of them change, or break, what the tests run with.
# Usage: scripts/pytool.sh NAME VERSION MODULE FUNCTION
set -euo pipefail
name=$1 version=$2 module=$3 func=$4
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.tools/py-$name"
bin="$root/.tools/bin/$name"
pins="$root/scripts/pins/$name.txt"
# The version and the pins' checksum: a changed pin installs again.
installed="$version $(sha256sum < "$pins" | cut -c1-16)"
if [ -x "$bin" ] && [ "$(cat "$dir/.weauth-version" 2>/dev/null)" = "$installed" ]; then
  echo "tools: $name $version already in .tools/"
  exit 0
fi
echo "tools: installing $name $version from PyPI into .tools/py-$name"
rm -rf "$dir"
mkdir -p "$root/.tools/bin"
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --root-user-action=ignore --target "$dir" --constraint "$pins" "$name==$version"
echo "$installed" > "$dir/.weauth-version"
cat > "$bin" <<EOF
#!/bin/sh
# $name $version, installed by scripts/pytool.sh (make api-tools)
PYTHONPATH="$dir\${PYTHONPATH:+:\$PYTHONPATH}" exec python3 -c 'import sys; from $module import $func as main; sys.argv[0] = "$name"; sys.exit(main())' "\$@"
EOF
chmod +x "$bin"
"$bin" --version
