#!/usr/bin/env bash
# Profiles the filter's pure per-request work in V8, the engine Envoy runs the filter in:
# builds filter/examples/request_path.rs for wasm32-wasip1 with the filter's release profile
# and runs it under Node's WebAssembly (V8) with WASI. Prints ns per step. Needs node (Debian's
# nodejs package); not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q -p weauth-filter --example request_path --target wasm32-wasip1 --profile wasm-release
WASM="$TARGET_DIR/wasm32-wasip1/wasm-release/examples/request_path.wasm"
node --no-warnings -e '
const fs = require("node:fs");
const { WASI } = require("node:wasi");
const wasi = new WASI({ version: "preview1", args: [], env: {}, returnOnExit: true });
const module = new WebAssembly.Module(fs.readFileSync(process.argv[1]));
// The filter library links the proxy-wasm glue (env.proxy_*); the example never calls it.
const env = {};
for (const i of WebAssembly.Module.imports(module)) if (i.module === "env") env[i.name] = () => 0;
const instance = new WebAssembly.Instance(module, { ...wasi.getImportObject(), env });
// Hide the glue'"'"'s _initialize export: WASI.start wants a command module.
const code = wasi.start({ exports: {
  memory: instance.exports.memory, _start: instance.exports._start } });
// Leave at once: Node 20 can crash tearing down a large wasm memory.
process.reallyExit(code);
' "$WASM"
