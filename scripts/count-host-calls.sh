#!/usr/bin/env bash
# Counts the host calls the built filter makes per request: loads the real wasm-release module
# under Node's V8 with a small counting proxy-wasm host (every `env.proxy_*` import counted; the
# few the filter needs — buffers, header maps, shared data, clock, metrics, http calls — served
# from memory), configures it like `make bench`'s weauth rows (inline JWKS, revocation feed,
# two identity headers: sub, openid), lets it fetch a one-entry revocation set through a simulated feed
# response, then sends allowed requests and prints the calls of one cache-miss and one
# cache-hit request, plus the memory callbacks (`proxy_on_memory_allocate`) the host made to
# hand data back (and the bytes of a whole-header-map read). The request carries what Envoy
# holds for a curl-like request. Development tool, not part of `make test`; needs node.
#
#   scripts/count-host-calls.sh [path/to/weauth_filter.wasm]
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
WASM="${1:-$TARGET_DIR/wasm32-wasip1/wasm-release/weauth_filter.wasm}"
[ -f "$WASM" ] || { echo "count-host-calls: no module at $WASM (make wasm)" >&2; exit 1; }
# Keys and tokens from the filter's own mint example (fixed public seed), issued at NOW.
MINT="$(cargo run -q -p weauth-filter --example mint -- https://issuer.bench weauth 1700000000)"
node --no-warnings -e '
const fs = require("node:fs");
const { WASI } = require("node:wasi");
const mint = JSON.parse(process.argv[2]);
const NOW_NS = 1700000100n * 1000000000n;
const config = JSON.stringify({
  issuer: "https://issuer.bench", audiences: ["weauth"], algorithms: ["EdDSA"],
  jwks: { inline: mint.jwks },
  revocation: { cluster: "weauth_feed", authority: "feed", path: "/v1/revocations",
    credential: "bench-feed-credential", wait_seconds: 20, stale_after_seconds: 60,
    stale_mode: "deny" },
  claim_to_headers: [{ claim: "sub", header: "x-weauth-sub" },
    { claim: "openid", header: "x-weauth-openid" }],
  cache_entries: 10000,
});
const feed = JSON.stringify({ seq: 1, full: true, now: 1700000100, entries: [
  { seq: 1, kind: "jti", value: "j-revoked-elsewhere", until: 1700009999 }] });

const enc = new TextEncoder(), dec = new TextDecoder();
let inst, counts = {}, allocs = 0, calls = 0, mapBytes = 0;
const shared = new Map(); // key -> {value: Uint8Array, cas}
let reqHeaders = new Map(), callHeaders = new Map([[":status", "200"]]), callBody = enc.encode("");
const mem = () => new DataView(inst.exports.memory.buffer);
const bytes = (p, n) => new Uint8Array(inst.exports.memory.buffer, p, n).slice();
const str = (p, n) => dec.decode(bytes(p, n));
function give(data, ptrPtr, sizePtr) {
  // As Envoy (proxy-wasm-cpp-host copyToPointerSize): nothing allocated for an empty value.
  if (data.length === 0) { mem().setUint32(ptrPtr, 0, true); mem().setUint32(sizePtr, 0, true); return; }
  const p = inst.exports.proxy_on_memory_allocate(data.length); allocs++;
  new Uint8Array(inst.exports.memory.buffer, p, data.length).set(data);
  mem().setUint32(ptrPtr, p, true); mem().setUint32(sizePtr, data.length, true);
}
const impl = {
  proxy_log: (l, p, n) => { if (process.env.DEBUG) console.error("log", l, str(p, n)); return 0; },
  proxy_get_log_level: (r) => { mem().setUint32(r, 2, true); return 0; },
  proxy_get_current_time_nanoseconds: (r) => { mem().setBigUint64(r, NOW_NS, true); return 0; },
  proxy_get_buffer_bytes: (type, start, max, rp, rs) => {
    const data = type === 7 ? enc.encode(config) : type === 4 ? callBody : null;
    if (!data) return 1;
    if (process.env.DEBUG) console.error("buffer", type, start, max, data.length);
    give(data.subarray(start >>> 0, (start >>> 0) + (max >>> 0)), rp, rs); return 0;
  },
  proxy_get_header_map_value: (type, kp, ks, rp, rs) => {
    const map = type === 0 ? reqHeaders : type === 6 ? callHeaders : new Map();
    const v = map.get(str(kp, ks));
    if (v === undefined) return 1;
    give(enc.encode(v), rp, rs); return 0;
  },
  proxy_get_header_map_pairs: (type, rp, rs) => {
    // The proxy-wasm serialization: count, (name length, value length) per pair, then each
    // name and value NUL-terminated.
    const map = type === 0 ? reqHeaders : type === 6 ? callHeaders : new Map();
    const pairs = [...map].map(([k, v]) => [enc.encode(k), enc.encode(v)]);
    const size = 4 + pairs.length * 8 + pairs.reduce((n, [k, v]) => n + k.length + v.length + 2, 0);
    const out = new Uint8Array(pairs.length ? size : 0), view = new DataView(out.buffer);
    if (pairs.length) view.setUint32(0, pairs.length, true);
    let at = 4 + pairs.length * 8;
    pairs.forEach(([k, v], i) => {
      view.setUint32(4 + i * 8, k.length, true); view.setUint32(8 + i * 8, v.length, true);
      out.set(k, at); at += k.length + 1; out.set(v, at); at += v.length + 1;
    });
    mapBytes += out.length;
    give(out, rp, rs); return 0;
  },
  proxy_get_shared_data: (kp, ks, rp, rs, rc) => {
    const e = shared.get(str(kp, ks));
    if (!e) return 1;
    give(e.value, rp, rs); mem().setUint32(rc, e.cas, true); return 0;
  },
  proxy_set_shared_data: (kp, ks, vp, vs, cas) => {
    const key = str(kp, ks), e = shared.get(key);
    if (cas !== 0 && (!e || e.cas !== cas)) return 8;
    shared.set(key, { value: bytes(vp, vs), cas: (e ? e.cas : 0) + 1 }); return 0;
  },
  proxy_define_metric: (t, np, ns, r) => { mem().setUint32(r, 1 + Object.keys(shared).length, true); return 0; },
  proxy_http_call: (...a) => { mem().setUint32(a[9], 7, true); return 0; },
  proxy_get_property: () => 1,
};
const env = {};
const module = new WebAssembly.Module(fs.readFileSync(process.argv[1]));
for (const i of WebAssembly.Module.imports(module)) {
  if (i.module !== "env") continue;
  const f = impl[i.name] || (() => 0);
  env[i.name] = (...a) => { counts[i.name] = (counts[i.name] || 0) + 1; calls++; return f(...a); };
}
const wasi = new WASI({ version: "preview1", args: [], env: {}, returnOnExit: true });
inst = new WebAssembly.Instance(module, { ...wasi.getImportObject(), env });
wasi.initialize(inst);
const x = inst.exports;
x.proxy_on_context_create(1, 0);
if (!x.proxy_on_vm_start(1, 0) || !x.proxy_on_configure(1, enc.encode(config).length))
  throw new Error("the filter refused its configuration");
x.proxy_on_tick(1); x.proxy_on_tick(1); // elected, then dispatches the feed poll
if (!counts.proxy_http_call) throw new Error("no feed call dispatched");
callBody = enc.encode(feed);
x.proxy_on_http_call_response(1, 7, 1, callBody.length, 0);
x.proxy_on_tick(1);
if (![...shared.keys()].some((k) => k.endsWith(".meta"))) throw new Error("no revocation published");

function request(id, token) {
  // What Envoy holds when the filter runs on a curl-like request (x-request-id and
  // x-forwarded-proto are added by the connection manager before any filter).
  reqHeaders = new Map([[":authority", "127.0.0.1:10000"], [":path", "/api/hello"],
    [":method", "GET"], [":scheme", "http"], ["user-agent", "curl/8.5.0"], ["accept", "*/*"],
    ["authorization", "Bearer " + token], ["x-forwarded-proto", "http"],
    ["x-request-id", "8c3b6f0e-6a57-4b52-9d59-2f0c1e0f4a11"]]);
  x.proxy_on_context_create(id, 1);
  counts = {}; allocs = 0; calls = 0; mapBytes = 0;
  const action = x.proxy_on_request_headers(id, reqHeaders.size, 1);
  const seen = { action, calls, allocs, counts, mapBytes };
  // As proxy-wasm-cpp-host does: a callback the module does not export is not called.
  if (x.proxy_on_done) x.proxy_on_done(id);
  x.proxy_on_delete(id);
  return seen;
}
const show = (label, r) => {
  if (r.action !== 0 || r.counts.proxy_send_local_response) throw new Error(label + ": not allowed");
  console.log(`${label}: ${r.calls} host calls, ${r.allocs} memory callbacks` +
    (r.mapBytes ? `, header map ${r.mapBytes} bytes` : ""));
  for (const [k, v] of Object.entries(r.counts).sort()) console.log(`  ${k} ×${v}`);
};
show("allowed, cache miss", request(2, mint.good));
show("allowed, cache hit", request(3, mint.good));
// The calls Envoy makes INTO the VM for a request (about 1 µs of its CPU each, where a host
// call costs 0.1): the per-request callbacks the module exports (scripts/wasm-link).
const perRequest = ["proxy_on_context_create", "proxy_on_request_headers", "proxy_on_request_body",
  "proxy_on_request_trailers", "proxy_on_response_headers", "proxy_on_response_body",
  "proxy_on_response_trailers", "proxy_on_log", "proxy_on_done", "proxy_on_delete"];
const into = perRequest.filter((name) => typeof x[name] === "function");
console.log(`calls into the VM per request (exported callbacks): ${into.length}: ${into.join(", ")}`);
' "$WASM" "$MINT"
