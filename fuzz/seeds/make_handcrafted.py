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
