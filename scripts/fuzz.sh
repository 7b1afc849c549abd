#!/usr/bin/env bash
# Coverage-guided fuzzing of weauth's parsers (`make fuzz`): builds every cargo-fuzz target in
# fuzz/ and runs each for a bounded time. Inputs that crash a target are copied into
# fuzz/regressions/<target>/ (committed; `cargo test --workspace` replays them) and the script
# exits non-zero naming them.
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_TARGETS    space-separated subset of targets (default: all, from `cargo fuzz list`)
#   FUZZ_SANITIZER  address (default) or none
#   CARGO_TARGET_DIR  build dir (default: fuzz/target, git-ignored)
#
# Works on the stable toolchain: cargo-fuzz needs `-Zsanitizer` and `--cfg fuzzing` support,
# which stable rustc grants with RUSTC_BOOTSTRAP=1 (set here, for the fuzz build only).
# Corpora grow in fuzz/corpus/<target>/ and libFuzzer's artefacts land in
# fuzz/artifacts/<target>/ (both git-ignored); the committed seeds in fuzz/seeds/<target>/ and
# the regressions are read as extra corpora.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FUZZ_DIR="$ROOT/fuzz"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
SANITIZER="${FUZZ_SANITIZER:-address}"
CARGO_FUZZ_VERSION="0.13.2"
export RUSTC_BOOTSTRAP=1
# Cargo caches rustc's answers per target dir without keying them on RUSTC_BOOTSTRAP, so one
# earlier `cargo fuzz build` without it would leave a cached "-Z needs nightly" failure.
export CARGO_CACHE_RUSTC_INFO=0

if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
  echo "fuzz: FUZZ_SECONDS must be a positive whole number of seconds, not '$SECONDS_PER_TARGET'" >&2
  exit 2
fi

# 1. cargo-fuzz, installed once from crates.io into ~/.cargo/bin.
if cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: $(cargo fuzz --version) already installed"
else
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io (cargo install --locked)"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

cd "$ROOT"
if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo fuzz list)
fi
if [ "${#targets[@]}" -eq 0 ]; then
  echo "fuzz: no fuzz targets found in $FUZZ_DIR" >&2
  exit 2
fi

# 2. One build of every target (cargo fuzz run would otherwise build them one by one).
echo "fuzz: building ${#targets[@]} targets (sanitizer: $SANITIZER)"
cargo fuzz build --sanitizer "$SANITIZER"

# Longest input per target: tokens may reach max_token_bytes (8192) and beyond; the rest need
# room for a few kilobytes of JSON.
max_len_for() {
  case "$1" in
    jws_*) echo 16384 ;;
    *) echo 8192 ;;
  esac
}
dict_for() {
  case "$1" in
    jws_* | jwks_*) echo "$FUZZ_DIR/dicts/jose.dict" ;;
    feed_*) echo "$FUZZ_DIR/dicts/feed.dict" ;;
    wxdata_*) echo "$FUZZ_DIR/dicts/wxdata.dict" ;;
    filter_glue) echo "$FUZZ_DIR/dicts/glue.dict" ;;
    issuer_*) echo "$FUZZ_DIR/dicts/issuer.dict" ;;
    *) echo "" ;;
  esac
}

# 3. Run each target for a bounded time; collect crashes.
failed=()
summary=()
for target in "${targets[@]}"; do
  corpus="$FUZZ_DIR/corpus/$target"
  seeds="$FUZZ_DIR/seeds/$target"
  regressions="$FUZZ_DIR/regressions/$target"
  artifacts="$FUZZ_DIR/artifacts/$target/$(date -u +%Y%m%dT%H%M%SZ)"
  log="$FUZZ_DIR/artifacts/$target/last-run.log"
  mkdir -p "$corpus" "$artifacts"
  extra=()
  [ -d "$seeds" ] && extra+=("$seeds")
  [ -d "$regressions" ] && extra+=("$regressions")
  args=(
    "-max_total_time=$SECONDS_PER_TARGET"
    "-max_len=$(max_len_for "$target")"
    "-timeout=10"
    "-rss_limit_mb=2048"
    "-print_final_stats=1"
    "-artifact_prefix=$artifacts/"
  )
  dict="$(dict_for "$target")"
  [ -n "$dict" ] && [ -f "$dict" ] && args+=("-dict=$dict")

  echo "fuzz: running $target for ${SECONDS_PER_TARGET}s (corpus fuzz/corpus/$target)"
  status=0
  cargo fuzz run --sanitizer "$SANITIZER" "$target" "$corpus" "${extra[@]}" -- "${args[@]}" \
    >"$log" 2>&1 || status=$?

  done_line="$(grep -E '^#[0-9]+ +DONE' "$log" | tail -n 1 || true)"
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  cov="$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -n 1 || true)"
  found=()
  for file in "$artifacts"/crash-* "$artifacts"/leak-* "$artifacts"/timeout-* \
    "$artifacts"/oom-* "$artifacts"/slow-unit-*; do
    [ -e "$file" ] && found+=("$file")
  done
  if [ "${#found[@]}" -gt 0 ] || [ "$status" -ne 0 ]; then
    mkdir -p "$regressions"
    for file in "${found[@]}"; do
      cp "$file" "$regressions/"
      echo "fuzz: $target: kept $(basename "$file") in fuzz/regressions/$target/" >&2
    done
    echo "fuzz: $target FAILED (exit $status); libFuzzer's output is in ${log#"$ROOT"/}:" >&2
    grep -E 'panicked at|ERROR: |SUMMARY: ' "$log" | head -n 10 >&2 || true
    failed+=("$target")
    summary+=("$(printf '%-20s FAILED  %s' "$target" "${found[*]##*/}")")
  else
    rmdir "$artifacts" 2>/dev/null || true
    summary+=("$(printf '%-20s ok      %s execs, %s exec/s, %s' "$target" "${execs:-?}" "${rate:-?}" "${cov:-${done_line:-?}}")")
  fi
done

echo "fuzz: summary (${SECONDS_PER_TARGET}s per target, sanitizer $SANITIZER)"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}; inputs copied to fuzz/regressions/<target>/ (commit them," \
    "fix the bug, and \`cargo test --workspace\` replays them)" >&2
  exit 1
fi
echo "fuzz: no crashes"
