#!/usr/bin/env bash
# `make bench`: weauth side by side with Envoy's jwt_authn and jwt_authn + ext_authz, on this
# machine, in one run. BENCH_MODE=quick (default, under 5 minutes) or full (more, longer rounds).
# Installs Debian's wrk if missing, builds what it needs in release mode, runs the driver
# (bench/src/bin/weauth-bench.rs). Results: bench-results/results.md and bench-results/edge.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export BENCH_MODE="${BENCH_MODE:-quick}"
case "$BENCH_MODE" in quick|full) ;; *) echo "bench: BENCH_MODE must be quick or full" >&2; exit 2;; esac

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk (Debian package)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y wrk >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y wrk >/dev/null; } || { echo "bench: cannot install wrk" >&2; exit 1; }
fi
command -v taskset >/dev/null || { echo "bench: taskset (util-linux) is required" >&2; exit 1; }
if [ "$(nproc)" -lt 2 ]; then echo "bench: needs at least 2 CPUs (Envoy on core 0, wrk on core 1)" >&2; exit 1; fi

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export WEAUTH_ENVOY_BIN="${WEAUTH_ENVOY_BIN:-$ROOT/.tools/bin/envoy}"
[ -x "$WEAUTH_ENVOY_BIN" ] || { echo "bench: no Envoy at $WEAUTH_ENVOY_BIN (run make setup)" >&2; exit 1; }

echo "bench: building (release) the driver, the revocation check, the issuer, the filter and the empty filter"
cargo build --release -p weauth-bench --bins
# The issuer (release) is used for the revocation-delay and issuer sections (the mock WeChat
# runs inside the driver); the filter for the weauth rows. A part that does not build is
# reported as not measured, not as a failure of the whole run — and its artefact from an
# earlier build is removed, so that no row measures an older binary under today's name.
build_or_drop() { # ARTEFACT MESSAGE CARGO-ARGS...
  local artefact=$1 message=$2
  shift 2
  cargo build "$@" || { rm -f "$artefact"; echo "bench: $message"; }
}
build_or_drop "$TARGET_DIR/release/weauth-issuer" "the issuer did not build: its sections will say so" \
  --release -p weauth-issuer --bins
build_or_drop "$TARGET_DIR/wasm32-wasip1/wasm-release/weauth_filter.wasm" \
  "the filter did not build: its rows will say so" \
  -p weauth-filter --target wasm32-wasip1 --profile wasm-release
# The native build (an Envoy dynamic module): the "weauth native" rows.
build_or_drop "$TARGET_DIR/native/libweauth_filter.so" "the native filter did not build: its rows will say so" \
  -p weauth-filter --features envoy-native --profile native
# The local stack (debug, as `make build` makes it) for the first-token measurement below.
build_or_drop "$TARGET_DIR/debug/weauth-stack" "weauth-stack did not build: the first token will not be measured" \
  -p weauth-tests --bin weauth-stack
# The empty proxy-wasm filter (bench/empty-filter): the price of being a wasm filter at all.
build_or_drop "$TARGET_DIR/wasm32-wasip1/wasm-release/weauth_empty_filter.wasm" \
  "the empty filter did not build: its row will say so" \
  -p weauth-empty-filter --target wasm32-wasip1 --profile wasm-release
# The same crate as an Envoy dynamic module: the price of being a native module at all.
build_or_drop "$TARGET_DIR/native/libweauth_empty_filter.so" \
  "the empty native module did not build: its rows will say so" \
  -p weauth-empty-filter --profile native
# What was just built, whatever `make` exported for the debug stack (override with WEAUTH_BENCH_*).
export WEAUTH_FILTER_WASM="${WEAUTH_BENCH_FILTER_WASM:-$TARGET_DIR/wasm32-wasip1/wasm-release/weauth_filter.wasm}"
export WEAUTH_FILTER_NATIVE="${WEAUTH_BENCH_FILTER_NATIVE:-$TARGET_DIR/native/libweauth_filter.so}"
export WEAUTH_ISSUER_BIN="${WEAUTH_BENCH_ISSUER_BIN:-$TARGET_DIR/release/weauth-issuer}"
export WEAUTH_BENCH_EMPTY_WASM="${WEAUTH_BENCH_EMPTY_WASM:-$TARGET_DIR/wasm32-wasip1/wasm-release/weauth_empty_filter.wasm}"
export WEAUTH_BENCH_EMPTY_NATIVE="${WEAUTH_BENCH_EMPTY_NATIVE:-$TARGET_DIR/native/libweauth_empty_filter.so}"

mkdir -p bench-results
"$TARGET_DIR/release/weauth-bench" --mode "$BENCH_MODE" --out bench-results "$@"

# The wasm build's host calls per allowed request, for the module the weauth rows ran: counted
# under Node's V8 by scripts/count-host-calls.sh (Envoy counts no host calls itself), appended
# to results.md. The "+ weauth's host calls" row is the cost of the same calls with no logic.
if [ -f "$WEAUTH_FILTER_WASM" ] && [ -f bench-results/results.md ]; then
  if scripts/ensure-node.sh >/dev/null && calls=$(scripts/count-host-calls.sh "$WEAUTH_FILTER_WASM" 2>&1); then
    echo "$calls"
    {
      echo
      echo "## Host calls per allowed request (wasm build)"
      echo
      echo "\`scripts/count-host-calls.sh\` on the module of the weauth rows ($(wc -c < "$WEAUTH_FILTER_WASM") bytes),"
      echo "configured like them (inline JWKS, revocation feed, two identity headers), curl-like request:"
      echo
      echo '```'
      echo "$calls"
      echo '```'
    } >> bench-results/results.md
  else
    echo "bench: host calls not counted: $calls" >&2
  fi
fi

# Envoy's start → the first valid token answered 200 through the wasm filter, against the same
# Envoy with the empty filter (issue 22 §5: target ≤ 0.5 s): V8 compiles the module before the
# listeners serve. Run with the edge section (all sections, or `--only` naming edge).
case " $* " in
  *" --only "*) case " $* " in *edge*) first_token=1 ;; *) first_token=0 ;; esac ;;
  *) first_token=1 ;;
esac
if [ "$first_token" = 1 ] && [ -f bench-results/results.md ]; then
  rounds=3; [ "$BENCH_MODE" = full ] && rounds=7
  if [ -f "$WEAUTH_FILTER_WASM" ] && [ -f "$WEAUTH_BENCH_EMPTY_WASM" ] && [ -x "$TARGET_DIR/debug/weauth-stack" ] \
     && first=$(WEAUTH_STACK_BIN="$TARGET_DIR/debug/weauth-stack" python3 scripts/first-token.py "$rounds" \
                "weauth=$WEAUTH_FILTER_WASM" "empty=$WEAUTH_BENCH_EMPTY_WASM" 2>&1); then
    echo "$first"
    {
      echo
      echo "## First token after Envoy's start (wasm build)"
      echo
      echo "\`scripts/first-token.py $rounds\`: Envoy (one worker, the shipped bootstrap and plugin configuration) spawned"
      echo "→ the first valid token answered 200; the weauth module ($(wc -c < "$WEAUTH_FILTER_WASM") bytes) and the empty filter"
      echo "taking turns. Target ≤ 0.5 s (issue 22 §5)."
      echo
      echo '```'
      echo "$first"
      echo '```'
    } >> bench-results/results.md
  else
    echo "bench: first token not measured: ${first:-a module or weauth-stack is missing}" >&2
  fi
fi
