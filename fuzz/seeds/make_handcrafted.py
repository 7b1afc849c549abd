#!/usr/bin/env python3
"""Writes the handcrafted hostile seeds in fuzz/seeds/<target>/ (Python standard library only).

The seeds that need the fixture's keys (valid tokens, signed claims sets, the fixture's JWKS,
an HS256-with-public-key token) are written by the Rust test
`cargo test -p weauth-token --test fuzz_regressions -- --ignored write_generated_seeds`.
Re-running this script rewrites the same files byte for byte.
"""

import base64
import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SEP = b"\xff"  # argument separator of the wxdata harness


def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


def token(header, payload, sig=b"sig"):
    return b".".join([b64u(header), b64u(payload), b64u(sig)])


CLAIMS = json.dumps({
    "iss": "https://issuer.fuzz.example", "aud": "weauth", "sub": "u_fuzz", "sid": "s_fuzz",
    "jti": "j", "iat": 1699999990, "nbf": 1699999990, "exp": 1700000900, "openid": "o_fuzz",
    "appid": "wx0123456789abcdef"}, separators=(",", ":"))

# --- jws_verify: arbitrary bearer tokens ------------------------------------------------------
T = "jws_verify"
for alg in ["none", "None", "NONE", "nOnE"]:
    write(T, f"hostile-alg-{alg}", token(f'{{"alg":"{alg}","typ":"at+jwt"}}', CLAIMS, b""))
write(T, "hostile-alg-RS256", token('{"alg":"RS256","typ":"at+jwt"}', CLAIMS))
write(T, "hostile-alg-escaped", token('{"alg":"Ed\\u0044SA","typ":"at+jwt"}', CLAIMS))
write(T, "hostile-alg-duplicate", token('{"alg":"EdDSA","alg":"none","typ":"at+jwt"}', CLAIMS))
for member, value in [("crit", '["exp"]'), ("jku", '"https://evil.example/jwks"'),
                      ("x5u", '"https://evil.example/cert"'), ("x5c", '["MIIB"]'),
                      ("jwk", '{"kty":"oct","k":"AAAA"}')]:
    write(T, f"hostile-header-{member}",
          token(f'{{"alg":"EdDSA","typ":"at+jwt","{member}":{value}}}', CLAIMS))
write(T, "hostile-typ-jwt", token('{"alg":"EdDSA","typ":"JWT"}', CLAIMS))
write(T, "hostile-kid-traversal", token('{"alg":"EdDSA","typ":"at+jwt","kid":"../../etc/passwd"}', CLAIMS))
write(T, "hostile-kid-huge", token('{"alg":"EdDSA","typ":"at+jwt","kid":"' + "k" * 4000 + '"}', CLAIMS))
write(T, "hostile-header-array", token("[]", CLAIMS))
write(T, "hostile-header-null", token("null", CLAIMS))
write(T, "hostile-header-deep-nesting", token("[" * 4000, CLAIMS))
write(T, "hostile-header-deep-object", token('{"alg":' * 1000, CLAIMS))
write(T, "hostile-header-nul", token('{"alg":"EdDSA\\u0000","typ":"at+jwt"}', CLAIMS))
write(T, "hostile-header-lone-surrogate", token('{"alg":"\\ud800","typ":"at+jwt"}', CLAIMS))
write(T, "hostile-header-invalid-utf8", token(b'{"alg":"\xc0\x80","typ":"at+jwt"}', CLAIMS))
write(T, "hostile-payload-duplicates", token('{"alg":"EdDSA","typ":"at+jwt"}', '{"sub":"a","sub":"b"}'))
write(T, "hostile-huge-segment", b"eyJhbGciOiJFZERTQSJ9." + b"A" * 9000 + b".AAAA")
write(T, "hostile-just-under-limit", b"eyJhbGciOiJFZERTQSJ9." + b"A" * 8100 + b".AAAA")
write(T, "hostile-padded", token('{"alg":"EdDSA","typ":"at+jwt"}', CLAIMS).replace(b".", b"=.", 1))
write(T, "hostile-standard-alphabet", b"eyJ+/.eyJ+/.AA+/")
write(T, "hostile-four-segments", b"a.b.c.d")
write(T, "hostile-two-segments", b"a.b")
write(T, "hostile-dots", b"..")
write(T, "hostile-whitespace", b" eyJhbGciOiJFZERTQSJ9 . e30 . AA ")
write(T, "hostile-invalid-utf8", b"\xc0\x80.\xed\xa0\x80.\xf8\x88\x80\x80\x80")
write(T, "hostile-empty", b"")

# --- jws_signed: byte 0 picks the key, then header 0xFF payload (both signed) -----------------
T = "jws_signed"
H = '{"alg":"%s","typ":"at+jwt"}'
for i, alg in enumerate(["EdDSA", "ES256", "HS256"]):
    # no kid: three keys, so no sole key -> UnknownKey
    write(T, f"no-kid-{alg}", bytes([i]) + (H % alg).encode() + SEP + CLAIMS.encode())
def claims_with(**kw):
    c = json.loads(CLAIMS)
    c.update(kw)
    return json.dumps(c, separators=(",", ":")).encode()
write(T, "claims-exp-max", b"\x00" + claims_with(exp=2**63 - 1))
write(T, "claims-exp-min", b"\x00" + claims_with(exp=-2**63))
write(T, "claims-nbf-min", b"\x01" + claims_with(nbf=-2**63, iat=-2**63))
write(T, "claims-nbf-max", b"\x01" + claims_with(nbf=2**63 - 1))
write(T, "claims-exp-overflow", b"\x02" + claims_with(exp=2**64))
write(T, "claims-exp-float", b"\x02" + CLAIMS.replace('"exp":1700000900', '"exp":1.7e9').encode())
write(T, "claims-aud-empty-array", b"\x00" + claims_with(aud=[]))
write(T, "claims-aud-many", b"\x00" + claims_with(aud=["x"] * 500 + ["weauth"]))
write(T, "claims-aud-nested", b"\x00" + claims_with(aud=[["weauth"]]))
write(T, "claims-duplicate-sub", b"\x00" + CLAIMS.replace('"sub":"u_fuzz"', '"sub":"a","sub":"b"').encode())
write(T, "claims-deep-extra", b"\x01" + CLAIMS[:-1].encode() + b',"x":' + b"[" * 5000 + b"}")
write(T, "claims-not-object", b"\x02[]")
write(T, "claims-invalid-utf8", b"\x00" + CLAIMS.replace("u_fuzz", "\udc80", 1).encode("utf-8", "surrogatepass"))
write(T, "claims-scope-huge", b"\x00" + claims_with(scope=" ".join(["s"] * 2000)))
write(T, "header-alg-mismatch", b"\x00" + (H % "HS256").encode() + SEP + CLAIMS.encode())
write(T, "header-crit", b"\x01" + b'{"alg":"ES256","typ":"at+jwt","crit":[]}' + SEP + CLAIMS.encode())
write(T, "header-not-json", b"\x02not json" + SEP + CLAIMS.encode())

# --- jws_verify_mutated: byte 0 picks the token, then 3-byte edit steps -----------------------
T = "jws_verify_mutated"
write(T, "delete-first-dot", bytes([0, 0x80, 30, 0] * 1)[:4])  # op 2 (delete) near the first dot
write(T, "insert-dot", bytes([1, 0x40, 10, ord(".")]))
write(T, "replace-with-high-bytes", bytes([2, 0x00, 3, 0xff, 0x00, 4, 0xc0]))
write(T, "many-edits", bytes([0]) + bytes([0xc0, 1, 1, 0x40, 2, 2, 0x80, 3, 3]) * 6)
write(T, "far-positions", bytes([1, 0x3f, 0xff, ord("A"), 0xff, 0xff, ord("_")]))

# --- jwks_parse -------------------------------------------------------------------------------
T = "jwks_parse"
zeros = b64u(bytes(32)).decode()
ones = b64u(bytes([1]) + bytes(31)).decode()
def jwks(*keys):
    return json.dumps({"keys": list(keys)}, separators=(",", ":"))
write(T, "empty", jwks())
write(T, "not-an-object", "[]")
write(T, "keys-not-array", '{"keys":{}}')
write(T, "rsa-skipped", jwks({"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "r"}))
write(T, "okp-short-x", jwks({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}))
write(T, "okp-weak-identity", jwks({"kty": "OKP", "crv": "Ed25519", "x": ones, "kid": "weak"}))
write(T, "okp-zero", jwks({"kty": "OKP", "crv": "Ed25519", "x": zeros}))
write(T, "okp-x25519", jwks({"kty": "OKP", "crv": "X25519", "x": zeros}))
write(T, "ec-not-on-curve", jwks({"kty": "EC", "crv": "P-256", "x": zeros, "y": zeros}))
write(T, "ec-missing-y", jwks({"kty": "EC", "crv": "P-256", "x": zeros}))
write(T, "ec-p384", jwks({"kty": "EC", "crv": "P-384", "x": zeros, "y": zeros}))
write(T, "oct-short", jwks({"kty": "oct", "k": "AAAA"}))
write(T, "oct-alg-mismatch", jwks({"kty": "oct", "k": zeros, "alg": "EdDSA"}))
write(T, "oct-use-enc", jwks({"kty": "oct", "k": zeros, "use": "enc"}))
write(T, "oct-padded-k", jwks({"kty": "oct", "k": zeros + "="}))
write(T, "duplicate-kids", jwks({"kty": "oct", "k": zeros, "kid": "a"}, {"kty": "oct", "k": zeros, "kid": "a"}))
write(T, "missing-kty", jwks({"k": zeros}))
write(T, "deep-nesting", '{"keys":' + "[" * 5000)
write(T, "duplicate-keys-member", '{"keys":[],"keys":[]}')
write(T, "kid-huge", jwks({"kty": "oct", "k": zeros, "kid": "k" * 6000}))

# --- feed_decode ------------------------------------------------------------------------------
T = "feed_decode"
write(T, "interfaces-example", json.dumps({"seq": 42, "full": False, "now": 1700000000, "entries": [
    {"seq": 41, "kind": "sid", "value": "s", "until": 1700000900},
    {"seq": 42, "kind": "sub", "value": "u", "issued_before": 1699999999, "until": 1700000900},
    {"seq": 40, "kind": "jti", "value": "j", "until": 1700000900}]}))
write(T, "full-empty", '{"seq":0,"full":true,"now":0,"entries":[]}')
write(T, "unknown-kind", '{"seq":1,"full":true,"now":1,"entries":[{"seq":1,"kind":"ip","value":"x","until":9}]}')
write(T, "unknown-field", '{"seq":1,"full":true,"now":1,"entries":[],"extra":1}')
write(T, "seq-negative", '{"seq":-1,"full":true,"now":1,"entries":[]}')
write(T, "seq-overflow", '{"seq":18446744073709551616,"full":true,"now":1,"entries":[]}')
write(T, "extremes", '{"seq":18446744073709551615,"full":false,"now":-9223372036854775808,"entries":[{"seq":18446744073709551615,"kind":"sub","value":"","issued_before":9223372036854775807,"until":-9223372036854775808}]}')
write(T, "until-float", '{"seq":1,"full":true,"now":1,"entries":[{"seq":1,"kind":"jti","value":"x","until":1e400}]}')
write(T, "issued-before-null", '{"seq":1,"full":true,"now":1,"entries":[{"seq":1,"kind":"sub","value":"x","issued_before":null,"until":9}]}')
write(T, "duplicate-seq", '{"seq":1,"seq":2,"full":true,"now":1,"entries":[]}')
write(T, "value-nul-and-surrogate", '{"seq":1,"full":true,"now":1,"entries":[{"seq":1,"kind":"jti","value":"a\\u0000\\ud800","until":9}]}')
write(T, "value-escaped-pair", '{"seq":1,"full":true,"now":1,"entries":[{"seq":1,"kind":"jti","value":"\\ud83d\\ude00","until":9}]}')
write(T, "deep-nesting", '{"seq":1,"full":true,"now":1,"entries":' + "[" * 5000)
write(T, "many-entries", '{"seq":1,"full":true,"now":1,"entries":[' + ",".join(
    '{"seq":%d,"kind":"jti","value":"v","until":9}' % i for i in range(150)) + "]}")
write(T, "invalid-utf8", b'{"seq":1,"full":true,"now":1,"entries":[{"seq":1,"kind":"jti","value":"\xc0\x80","until":9}]}')
write(T, "trailing-garbage", '{"seq":1,"full":true,"now":1,"entries":[]} x')

# --- wxdata_decrypt: byte 0 = mode; fields mode: encryptedData 0xFF iv 0xFF session_key 0xFF appid
T = "wxdata_decrypt"
with open(os.path.join(HERE, "..", "..", "wxdata", "tests", "vectors", "aes_cbc.json")) as f:
    cases = json.load(f)["cases"]
for case in cases:
    mode = 0 if case["max_age"] is None else (2 | (min(case["max_age"] // 60, 63) << 2))
    data = bytes([mode]) + SEP.join(case[k].encode() for k in ["encrypted_data", "iv", "session_key", "appid"])
    write(T, "vector-" + case["name"], data)
ok = cases[0]
write(T, "fields-key-15-bytes", b"\x00" + SEP.join([ok["encrypted_data"].encode(), ok["iv"].encode(), base64.b64encode(bytes(15))]))
write(T, "fields-iv-17-bytes", b"\x00" + SEP.join([ok["encrypted_data"].encode(), base64.b64encode(bytes(17))]))
write(T, "fields-unpadded", b"\x00" + ok["encrypted_data"].rstrip("=").encode())
write(T, "fields-urlsafe", b"\x00" + ok["encrypted_data"].replace("+", "-").replace("/", "_").encode())
write(T, "fields-empty", b"\x00")
WM = '"watermark":{"appid":"wx0123456789abcdef","timestamp":%s}'
write(T, "plain-ok", b"\x01" + ('{"openId":"o",' + WM % "1700000000" + "}").encode())
write(T, "plain-ok-max-age-0", b"\x03" + ('{' + WM % "1700000000" + "}").encode())
write(T, "plain-stale", b"\x07" + ('{' + WM % "1699990000" + "}").encode())
write(T, "plain-timestamp-min", b"\x07" + ('{' + WM % "-9223372036854775808" + "}").encode())
write(T, "plain-timestamp-max", b"\xff" + ('{' + WM % "9223372036854775807" + "}").encode())
write(T, "plain-timestamp-u64", b"\x03" + ('{' + WM % "18446744073709551615" + "}").encode())
write(T, "plain-timestamp-float", b"\x03" + ('{' + WM % "1.7e9" + "}").encode())
write(T, "plain-timestamp-string", b"\x03" + ('{' + WM % '"1700000000"' + "}").encode())
write(T, "plain-appid-number", b"\x01" + b'{"watermark":{"appid":1}}')
write(T, "plain-watermark-array", b"\x01" + b'{"watermark":[]}')
write(T, "plain-array", b"\x01[]")
write(T, "plain-not-json", b"\x01this is not JSON")
write(T, "plain-invalid-utf8", b"\x01" + b'{"watermark":"\xc0\x80"}')
write(T, "plain-empty", b"\x01")
write(T, "plain-deep-nesting", b"\x01" + b'{"watermark":' * 3000)
write(T, "plain-duplicate-watermark", b"\x01" + ('{' + WM % "1" + ',"watermark":{"appid":"other"}}').encode())

# --- wxdata_signature: raw_data 0xFF session_key 0xFF signature_hex ---------------------------
T = "wxdata_signature"
raw = '{"nickName":"Band","gender":1}'
key = "HyVFkGl5F5OQWJZZaNzBBg=="
sig = hashlib.sha1((raw + key).encode()).hexdigest()
write(T, "valid", SEP.join([raw.encode(), key.encode(), sig.encode()]))
write(T, "valid-uppercase", SEP.join([raw.encode(), key.encode(), sig.upper().encode()]))
write(T, "short", SEP.join([raw.encode(), key.encode(), sig[:-1].encode()]))
write(T, "long", SEP.join([raw.encode(), key.encode(), (sig + "0").encode()]))
write(T, "non-hex", SEP.join([raw.encode(), key.encode(), ("g" * 40).encode()]))
write(T, "multibyte-40-bytes", SEP.join([raw.encode(), key.encode(), ("é" * 20).encode()]))
write(T, "sign-prefixed", SEP.join([raw.encode(), key.encode(), ("+" + sig[1:]).encode()]))
write(T, "empty-fields", SEP + SEP)
write(T, "raw-only", raw.encode())
write(T, "invalid-utf8", b"\xc0\x80" + SEP + b"\xed\xa0\x80" + SEP + b"\xf8" * 40)

# --- filter_config: the plugin configuration --------------------------------------------------
T = "filter_config"
ZERO_KEY = {"kty": "oct", "k": b64u(bytes(32)).decode()}
BASE = {"issuer": "http://127.0.0.1:8080", "audiences": ["weauth"],
        "jwks": {"inline": {"keys": [ZERO_KEY]}}}
def cfg(**kw):
    c = dict(BASE)
    c.update(kw)
    return json.dumps(c)
write(T, "minimal-inline", cfg())
write(T, "interfaces-remote", json.dumps({
    "issuer": "http://127.0.0.1:8080", "audiences": ["weauth"], "algorithms": ["EdDSA"],
    "jwks": {"cluster": "weauth_issuer", "authority": "issuer", "path": "/.well-known/jwks.json",
             "refresh_seconds": 300, "min_refetch_seconds": 5, "timeout_ms": 2000},
    "revocation": {"cluster": "weauth_issuer", "authority": "issuer", "path": "/v1/revocations",
                   "credential": "feed-secret", "wait_seconds": 20, "stale_after_seconds": 60,
                   "stale_mode": "deny"},
    "token_sources": [{"header": "authorization", "prefix": "Bearer "}, {"cookie": "weauth_at"},
                      {"query": "access_token"}],
    "claim_to_headers": [{"claim": "sub", "header": "x-weauth-sub"},
                         {"claim": "openid", "header": "x-weauth-openid"}],
    "forward_authorization": True,
    "rules": [{"prefix": "/api/", "require": "required", "scopes": []},
              {"exact": "/v1/login", "require": "none"}],
    "default_require": "required", "clock_skew_seconds": 60, "max_token_bytes": 8192,
    "cache_entries": 10000, "cors_preflight": True}))
write(T, "unknown-field", cfg(colour="blue"))
write(T, "alg-none", cfg(algorithms=["none"]))
write(T, "algorithms-empty", cfg(algorithms=[]))
write(T, "skew-negative", cfg(clock_skew_seconds=-1))
write(T, "skew-max", cfg(clock_skew_seconds=2**63 - 1))
write(T, "max-token-bytes-zero", cfg(max_token_bytes=0))
write(T, "max-token-bytes-overflow", cfg(max_token_bytes=2**64))
write(T, "cache-entries-float", cfg(cache_entries=1e3))
write(T, "rule-prefix-and-exact", cfg(rules=[{"prefix": "/a", "exact": "/a", "require": "none"}]))
write(T, "rule-empty-prefix", cfg(rules=[{"prefix": "", "require": "optional", "scopes": ["x"]}]))
write(T, "rule-require-bogus", cfg(rules=[{"prefix": "/", "require": "sometimes"}]))
write(T, "token-sources-empty", cfg(token_sources=[]))
write(T, "token-source-two-kinds", cfg(token_sources=[{"header": "x", "cookie": "y"}]))
write(T, "token-source-empty-header", cfg(token_sources=[{"header": "", "prefix": ""}]))
write(T, "claim-header-uppercase", cfg(claim_to_headers=[{"claim": "sub", "header": "X-Sub"}]))
write(T, "claim-header-bad-name", cfg(claim_to_headers=[{"claim": "sub", "header": "a b\r\n"}]))
write(T, "revocation-wait-61", cfg(revocation={"cluster": "c", "credential": "s", "wait_seconds": 61}))
write(T, "revocation-stale-below-wait", cfg(revocation={"cluster": "c", "credential": "s",
                                                         "wait_seconds": 30, "stale_after_seconds": 10}))
write(T, "jwks-both-forms", cfg(jwks={"inline": {"keys": [ZERO_KEY]}, "cluster": "c"}))
write(T, "jwks-inline-empty", cfg(jwks={"inline": {"keys": []}}))
write(T, "jwks-inline-bad-key", cfg(jwks={"inline": {"keys": [{"kty": "oct", "k": "AAAA"}]}}))
write(T, "issuer-empty", cfg(issuer=""))
write(T, "audiences-empty-string", cfg(audiences=[""]))
write(T, "duplicate-issuer", '{"issuer":"a","issuer":"b","audiences":["w"],"jwks":{"inline":{"keys":[%s]}}}'
      % json.dumps(ZERO_KEY))
write(T, "deep-nesting", '{"rules":' + "[" * 5000)
write(T, "null", "null")
write(T, "array", "[]")
write(T, "whitespace", " \n\t ")
write(T, "invalid-utf8", b'{"issuer":"\xc0\x80","audiences":["w"],"jwks":{"inline":{"keys":[]}}}')

# --- filter_revocation: feeds separated by 0xFF, or a shared-data blob ------------------------
import struct
T = "filter_revocation"
def feed(seq, full, entries, now=1700000000):
    return json.dumps({"seq": seq, "full": full, "now": now, "entries": entries}).encode()
def entry(seq, kind, value, until=1700000900, issued_before=None):
    e = {"seq": seq, "kind": kind, "value": value, "until": until}
    if issued_before is not None:
        e["issued_before"] = issued_before
    return e
write(T, "full-then-delta", feed(2, True, [entry(1, "jti", "j1"), entry(2, "sid", "s1")]) + SEP +
      feed(3, False, [entry(3, "sub", "u1", issued_before=1700000000)]))
write(T, "delta-goes-back", feed(5, True, []) + SEP + feed(4, False, [entry(4, "jti", "j")]))
write(T, "sub-without-issued-before", feed(1, True, [entry(1, "sub", "u")]))
write(T, "sub-issued-before-min", feed(1, True, [entry(1, "sub", "u", issued_before=-2**63)]))
write(T, "value-too-long", feed(1, True, [entry(1, "jti", "v" * 600)]))
write(T, "value-at-limit", feed(1, True, [entry(1, "jti", "v" * 512)]))
write(T, "value-empty", feed(1, True, [entry(1, "sid", "")]))
write(T, "expired", feed(1, True, [entry(1, "jti", "old", until=1)]))
write(T, "until-extremes", feed(1, True, [entry(1, "jti", "a", until=2**63 - 1),
                                          entry(2, "sid", "b", until=-2**63)]))
write(T, "duplicates-merge", feed(2, True, [entry(1, "sub", "u", 1700000100, 5),
                                            entry(2, "sub", "u", 1700000050, 9)]))
write(T, "multibyte-values", feed(1, True, [entry(1, "jti", "é" * 256), entry(2, "sid", "\u0000")]))
write(T, "four-feeds", SEP.join([feed(i, i == 1, [entry(i, "jti", "j%d" % i)]) for i in range(1, 5)]))
def shard(generation, index, jti=(), sid=(), sub=(), counts=None):
    """A WRS2 blob: jti/sid records (hash, until), sub records (hash, until, issued_before)."""
    n = counts if counts is not None else (len(jti), len(sid), len(sub))
    out = b"WRS2" + struct.pack("<QHIII", generation, index, *n)
    for h, until in list(jti) + list(sid):
        out += struct.pack("<QI", h, until)
    for h, until, issued_before in sub:
        out += struct.pack("<QIq", h, until, issued_before)
    return out
# Hashes of shard 3 are 3 mod 32.
write(T, "shard-valid", shard(7, 3, jti=[(3, 1700000900), (35, 1700000900)], sid=[(67, 1700000900)],
                              sub=[(99, 1700000900, 1699999999)]))
write(T, "shard-empty", shard(0, 0))
write(T, "shard-duplicate-hashes", shard(1, 1, jti=[(33, 5), (33, 9)]))
write(T, "shard-unsorted", shard(1, 1, sid=[(65, 5), (33, 9)]))
write(T, "shard-foreign-hash", shard(1, 1, jti=[(2, 5)]))
write(T, "shard-index-32", shard(1, 32))
write(T, "shard-count-huge", shard(1, 0, jti=[(0, 5)], counts=(0xFFFFFFFF, 0, 0)))
write(T, "shard-counts-overflow", shard(1, 0, counts=(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)))
write(T, "shard-trailing", shard(1, 0) + b"x")
write(T, "shard-truncated", shard(1, 0, jti=[(0, 5)])[:-2])
write(T, "shard-until-and-cutoff-extremes", shard(1, 0, sub=[(0, 0xFFFFFFFF, -2**63), (32, 0, 2**63 - 1)]))
write(T, "shard-old-format", b"WRS1" + struct.pack("<QHI", 1, 0, 0))
def meta(gens, generation=1, seq=1, last_ok=0, entries=0):
    return b"WRM1" + struct.pack("<QQQIH", generation, seq, last_ok, entries, len(gens)) + b"".join(
        struct.pack("<Q", g) for g in gens)
write(T, "meta-valid", meta([1] * 32))
write(T, "meta-31-shards", meta([1] * 31))
write(T, "meta-trailing", meta([0] * 32) + b"\x00")
write(T, "meta-truncated", meta([2] * 32)[:-1])
write(T, "magic-only", b"WRS2")

# --- filter_request: path 0xFF header 0xFF header ..., each header name:value -----------------
T = "filter_request"
def request(path, *headers):
    return SEP.join([path.encode()] + [h if isinstance(h, bytes) else h.encode() for h in headers])
write(T, "missing-token", request("/api/x"))
write(T, "login-no-check", request("/v1/login", "authorization:Bearer junk"))
write(T, "optional-missing", request("/opt/x"))
write(T, "optional-invalid", request("/opt/x", "authorization:Bearer a.b.c"))
write(T, "two-authorization", request("/api/x", "authorization:Bearer a", "Authorization:Bearer b"))
write(T, "comma-joined", request("/api/x", "authorization:Bearer a, Bearer b"))
write(T, "bearer-alone", request("/api/x", "authorization:Bearer"))
write(T, "bearer-lowercase", request("/api/x", "authorization:bearer a.b.c"))
write(T, "prefix-multibyte", request("/api/x", "authorization:Bearé a.b.c"))
write(T, "basic-auth", request("/api/x", "authorization:Basic dXNlcjpwYXNz"))
write(T, "cookie", request("/api/x", 'cookie:a=b; weauth_at="x.y.z"; c'))
write(T, "cookie-no-equals", request("/api/x", "cookie:weauth_at"))
write(T, "query", request("/api/x?access_token=x.y.z&b=c#frag"))
write(T, "query-empty", request("/api/x?access_token=&access_token=2"))
write(T, "path-traversal", request("/api/../admin/x"))
write(T, "path-no-slash", request("*"))
write(T, "huge-header", request("/api/x", "authorization:Bearer " + "A" * 70000))
write(T, "invalid-utf8", request("/api/\xff", b"authorization:Bearer \xc0\x80"))

# --- filter_cache: byte 0 = capacity % 4, then operations (see filter_harness::filter_cache) --
T = "filter_cache"
write(T, "request-each", bytes([4, 0, 1, 2, 3, 0, 1, 2, 3]))
write(T, "revoke-after-cached", bytes([4, 0, 0x40, 0]))
write(T, "expire-while-cached", bytes([4, 0, 0xBF, 0xBF, 0]))
write(T, "key-set-switch", bytes([4, 0, 0xC0, 0, 0xC0, 0]))
write(T, "unrevoke", bytes([4, 1, 0x41, 1, 0x63, 1]))
write(T, "no-cache", bytes([0, 0, 0x40, 0]))
write(T, "capacity-one-churn", bytes([1, 0, 1, 0, 1, 2, 0x42, 2, 0, 1]))

# --- issuer_http: peer 0xFF trusted 0xFF header 0xFF header ..., each header name:value --------
T = "issuer_http"
def req(peer, trusted, *headers):
    parts = [peer, trusted] + list(headers)
    return SEP.join(p if isinstance(p, bytes) else p.encode() for p in parts)
TRUST = "10.0.0.0/8,fd00::/8,::1"
AT = "eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ1XzEifQ.c2ln"
# Cookie headers.
write(T, "cookie-several-names", req("203.0.113.9", "", "cookie:_ga=GA1.2.3.4; __Host-weauth_at=" + AT
                                     + "; weauth_rt=rt_AbCdEf0123456789; __Host-weauth_rb=5f1d; lang=zh-CN"))
write(T, "cookie-quoted-values", req("203.0.113.9", "", 'cookie:weauth_at="quoted.value.x"; theme="dark blue"; q=""'))
write(T, "cookie-twice-across-lines", req("203.0.113.9", "", "cookie:weauth_at=A; x=1", "Cookie:b=2; weauth_at=B"))
write(T, "cookie-twice-in-one-line", req("203.0.113.9", "", "cookie:weauth_rt=R1;weauth_rt=R2"))
write(T, "cookie-non-ascii-neighbours", req("203.0.113.9", "", "cookie:city=北京; weauth_at=T; lang=中文".encode()
                                            + b"; name=Jos\xe9"))
write(T, "cookie-unicode-space-name", req("203.0.113.9", "", "cookie:\u2000__Host-weauth_oauth=planted; "
                                          "__Host-weauth_oauth\u3000=planted2; __Host-weauth_oauth=real"))
write(T, "cookie-tabs-and-empties", req("203.0.113.9", "", "cookie:\tweauth_at = T \t;weauth_rt=;=noname; novalue; ;;",
                                        "cookie:", "cookie:weauth_oauth==b=c"))
write(T, "cookie-value-with-equals", req("203.0.113.9", "", "cookie:__Host-weauth_oauth=abc==; weauth_at=a=b"))
# Origin and Referer (allowed: fuzz/src/issuer_harness.rs ALLOWED).
write(T, "origin-allowed", req("203.0.113.9", "", "origin:https://h5.example.com"))
write(T, "origin-null-referer-allowed", req("203.0.113.9", "", "origin:null", "referer:https://h5.example.com/x"))
write(T, "referer-only-allowed", req("203.0.113.9", "", "referer:https://auth.example.com/v1/web/callback?code=x&state=y"))
write(T, "origin-other-port", req("203.0.113.9", "", "origin:https://h5.example.com:8443"))
write(T, "origin-userinfo", req("203.0.113.9", "", "origin:https://auth.example.com@evil.example"))
write(T, "origin-uppercase-default-port", req("203.0.113.9", "", "origin:HTTPS://AUTH.EXAMPLE.COM:443"))
write(T, "origin-ipv6", req("203.0.113.9", "", "origin:https://[2001:db8::1]:8443"))
write(T, "origin-loopback-port", req("203.0.113.9", "", "origin:http://127.0.0.1:3000"))
write(T, "origin-suffix-host", req("203.0.113.9", "", "origin:https://h5.example.com.evil.example"))
write(T, "referer-evil-path", req("203.0.113.9", "", "referer:https://evil.example/https://h5.example.com"))
write(T, "origin-backslashes", req("203.0.113.9", "", "origin:https:\\\\auth.example.com\\x"))
write(T, "origin-invalid-referer-allowed", req("203.0.113.9", "", "origin:not a url", "referer:https://h5.example.com/"))
write(T, "origin-twice", req("203.0.113.9", "", "origin:https://evil.example", "origin:https://h5.example.com"))
# X-Forwarded-For behind trusted proxies.
write(T, "xff-trusted-chain", req("10.0.0.1", TRUST, "x-forwarded-for:6.6.6.6, 203.0.113.7, 10.1.2.3"))
write(T, "xff-untrusted-peer", req("198.51.100.1", TRUST, "x-forwarded-for:1.2.3.4"))
write(T, "xff-ipv6-brackets-and-ports", req("10.0.0.1", TRUST, "x-forwarded-for:[2001:db8::7]:443, 2001:db8::8"))
write(T, "xff-ipv6-port-rightmost", req("10.0.0.1", TRUST, "x-forwarded-for:2001:db8::9, 10.0.0.3, [2001:db8::7]:443"))
write(T, "xff-ipv4-port", req("fd00::1", TRUST, "x-forwarded-for:203.0.113.4:51234"))
write(T, "xff-two-lines", req("10.0.0.1", TRUST, "x-forwarded-for:1.2.3.4", "X-Forwarded-For:10.0.0.2"))
write(T, "xff-v4-mapped", req("::ffff:10.0.0.1", TRUST, "x-forwarded-for:::ffff:203.0.113.5, ::ffff:10.9.9.9"))
write(T, "xff-all-trusted", req("10.0.0.1", TRUST, "x-forwarded-for:10.0.0.2, 10.0.0.3"))
write(T, "xff-garbage-hops", req("10.0.0.1", TRUST, "x-forwarded-for:unknown, , 203.0.113.1 ,10.0.0.4"))
write(T, "xff-empty", req("10.0.0.1", TRUST, "x-forwarded-for:"))
write(T, "xff-ipv6-client", req("::1", TRUST, "x-forwarded-for:2001:db8:1:2:3:4:5:6"))
write(T, "xff-no-trusted-nets", req("10.0.0.1", "", "x-forwarded-for:1.2.3.4"))
write(T, "xff-odd-nets", req("10.0.0.1", "0.0.0.0/0, 10.0.0.0/33,::/0,garbage,::ffff:10.0.0.0/104", "x-forwarded-for:1.2.3.4, 2001:db8::1"))
write(T, "xff-invalid-utf8", req("10.0.0.1", TRUST, b"x-forwarded-for:1.2.3.4\xff\xfe, 203.0.113.8"))
# Authorization.
write(T, "bearer-ok", req("203.0.113.9", "", "authorization:Bearer " + AT))
write(T, "bearer-lowercase-spaces", req("203.0.113.9", "", "authorization:  bearer    tok_123  "))
write(T, "bearer-basic", req("203.0.113.9", "", "authorization:Basic dXNlcjpwYXNz"))
write(T, "bearer-empty", req("203.0.113.9", "", "authorization:Bearer "))
write(T, "bearer-tab", req("203.0.113.9", "", "authorization:Bearer\ttok"))
write(T, "bearer-inner-space", req("203.0.113.9", "", "authorization:Bearer a b"))
write(T, "bearer-scheme-only", req("203.0.113.9", "", "authorization:Bearer"))
write(T, "bearer-multibyte-scheme", req("203.0.113.9", "", "authorization:Bearé tok"))
# traceparent (W3C Trace Context examples).
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
write(T, "traceparent-spec", req("203.0.113.9", "", "traceparent:" + TP))
write(T, "traceparent-unsampled", req("203.0.113.9", "", "traceparent:00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"))
write(T, "traceparent-future-version", req("203.0.113.9", "", "traceparent:cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like"))
write(T, "traceparent-future-no-dash", req("203.0.113.9", "", "traceparent:cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"))
write(T, "traceparent-version-ff", req("203.0.113.9", "", "traceparent:ff" + TP[2:]))
write(T, "traceparent-uppercase", req("203.0.113.9", "", "traceparent:" + TP.upper()))
write(T, "traceparent-zero-trace", req("203.0.113.9", "", "traceparent:00-00000000000000000000000000000000-00f067aa0ba902b7-01"))
write(T, "traceparent-zero-parent", req("203.0.113.9", "", "traceparent:00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"))
write(T, "traceparent-00-with-suffix", req("203.0.113.9", "", "traceparent:" + TP + "-extra"))
write(T, "traceparent-short", req("203.0.113.9", "", "traceparent:" + TP[:-1]))
write(T, "traceparent-spaces-flags-ff", req("203.0.113.9", "", "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff "))
write(T, "traceparent-multibyte", req("203.0.113.9", "", "traceparent:00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01"))
# B3 (openzipkin/b3-propagation examples).
B3T, B3S, B3P = "80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", "05e3ac9a4f6e3b90"
write(T, "b3-single-full", req("203.0.113.9", "", f"b3:{B3T}-{B3S}-1-{B3P}"))
write(T, "b3-single-debug", req("203.0.113.9", "", f"b3:{B3T}-{B3S}-d"))
write(T, "b3-single-unsampled", req("203.0.113.9", "", f"b3:{B3T}-{B3S}-0"))
write(T, "b3-single-64bit", req("203.0.113.9", "", f"b3:64fe8b2a57d3eff7-{B3S}"))
write(T, "b3-deny-only", req("203.0.113.9", "", "b3:0"))
write(T, "b3-single-bad-sampling", req("203.0.113.9", "", f"b3:{B3T}-{B3S}-true"))
write(T, "b3-single-too-many", req("203.0.113.9", "", f"b3:{B3T}-{B3S}-1-{B3P}-x"))
write(T, "b3-multi", req("203.0.113.9", "", f"X-B3-TraceId:{B3T}", f"X-B3-SpanId:{B3S}",
                          f"X-B3-ParentSpanId:{B3P}", "X-B3-Sampled:1"))
write(T, "b3-multi-flags-debug", req("203.0.113.9", "", f"x-b3-traceid:{B3T}", f"x-b3-spanid:{B3S}",
                                      "x-b3-sampled:0", "x-b3-flags:1"))
write(T, "b3-multi-legacy-true", req("203.0.113.9", "", "x-b3-traceid:64fe8b2a57d3eff7", f"x-b3-spanid:{B3S}",
                                      "x-b3-sampled:true"))
write(T, "b3-multi-uppercase", req("203.0.113.9", "", f"x-b3-traceid:{B3T.upper()}", f"x-b3-spanid:{B3S}"))
write(T, "b3-deny-beats-multi", req("203.0.113.9", "", "b3:0", f"x-b3-traceid:{B3T}", f"x-b3-spanid:{B3S}"))
write(T, "b3-single-bad-falls-back-to-multi", req("203.0.113.9", "", f"b3:{B3T}-{B3S}-true",
                                                   f"x-b3-traceid:{B3T}", f"x-b3-spanid:{B3S}", "x-b3-sampled:1"))
write(T, "traceparent-and-b3", req("203.0.113.9", "", "traceparent:" + TP, f"b3:{B3T}-{B3S}-1"))
# A whole browser request behind Envoy.
write(T, "browser-post-behind-envoy", req(
    "10.0.0.1", TRUST,
    "host:auth.example.com", "origin:https://h5.example.com", "referer:https://h5.example.com/after-login",
    "cookie:_ga=GA1.2.3.4; __Host-weauth_at=" + AT + "; __Host-weauth_rb=5f1d",
    "cookie:weauth_rt=rt_AbCdEf0123456789",
    "x-forwarded-for:2001:db8:1:2::99, 10.0.0.7",
    "traceparent:" + TP, "x-b3-traceid:" + B3T, "x-b3-spanid:" + B3S,
    "authorization:Bearer " + AT))
write(T, "empty-fields", req("", ""))
write(T, "not-an-address", req("localhost", "10.0.0.0/8", "x-forwarded-for:1.2.3.4"))
