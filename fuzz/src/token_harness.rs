//! What the `weauth-token` fuzz targets do with one input, shared by the libFuzzer targets in
//! `fuzz/fuzz_targets/` and by the replay test `token/tests/fuzz_regressions.rs` (which
//! includes this file and `fixture.rs` with `#[path]`), so a crash file replays through exactly
//! the same code.
//!
//! Every function calls the public function production uses (`weauth_token::verify`,
//! `KeySet::from_jwks_json`, `serde_json::from_slice::<FeedResponse>`) and then checks an
//! oracle with `assert!`: a panic in the library and a broken property both stop the fuzzer.
//! The key fixture is `fixture.rs` (included beside this file).

// This is test code (a fuzz harness): a broken property must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use ed25519_dalek::Signer as _;
use hmac::Mac as _;
use weauth_token::revocation::FeedResponse;
use weauth_token::{b64, verify, Jwk, Jwks, KeySet, SigningKey};

pub use super::fixture::{claims, Fixture, AUDIENCE, ISSUER, LEEWAY, NOW};

/// Signs `header` and `payload` bytes (any bytes, not necessarily JSON) with key `index`.
pub fn sign_raw(fx: &Fixture, index: usize, header: &[u8], payload: &[u8]) -> String {
    let mut token = b64::encode(header);
    token.push('.');
    token.push_str(&b64::encode(payload));
    let input = token.as_bytes();
    let signature: Vec<u8> = match &fx.signing[index] {
        SigningKey::Ed25519(key) => key.sign(input).to_bytes().to_vec(),
        SigningKey::P256(key) => {
            // Low-S, as weauth signs and as `verify` requires (a high-S signature is refused
            // before any claim is read: half the ES256 inputs never reached the claims).
            let sig: p256::ecdsa::Signature = key.sign(input);
            sig.normalize_s().unwrap_or(sig).to_bytes().to_vec()
        }
        SigningKey::Hmac(secret) => {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)
                .expect("HMAC takes any key length");
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
    };
    token.push('.');
    token.push_str(&b64::encode(signature));
    token
}

/// Calls what production logs about a refusal, so its formatting is fuzzed too.
fn touch_error(err: &weauth_token::VerifyError) {
    let _ = err.reason();
    let _ = err.to_string();
}

/// Target `jws_verify`: the input (lossily UTF-8) as a bearer token.
///
/// Oracle: only a token the fixture issued verifies. Returns whether it verified.
pub fn jws_verify(fx: &Fixture, data: &[u8]) -> bool {
    let token = String::from_utf8_lossy(data);
    match verify(&token, &fx.keys, &fx.validation, NOW) {
        Ok(claims) => {
            let issued = fx.tokens.iter().position(|t| *t == token);
            assert!(
                issued.is_some(),
                "a token the fixture never issued verified"
            );
            assert_eq!(
                claims,
                self::claims(fx.signing[issued.unwrap_or(0)].algorithm())
            );
            true
        }
        Err(err) => {
            touch_error(&err);
            false
        }
    }
}

/// The edits [`jws_verify_mutated`] applies, decoded from the input.
const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Applies the edit script `script` to `token`: each 3-byte step `[op|pos_hi, pos_lo, byte]`
/// replaces (op 0), inserts (op 1), deletes (op 2) a byte at `pos % (len + 1)`, or writes the
/// base64url character `byte % 64` there (op 3), so most edits keep every segment decodable.
/// At most 16 steps are applied.
pub fn mutate(token: &str, script: &[u8]) -> Vec<u8> {
    let mut bytes = token.as_bytes().to_vec();
    for step in script.chunks_exact(3).take(16) {
        let op = step[0] >> 6;
        let pos = ((usize::from(step[0] & 0x3f) << 8) | usize::from(step[1])) % (bytes.len() + 1);
        let byte = step[2];
        match op {
            0 if pos < bytes.len() => bytes[pos] = byte,
            1 => bytes.insert(pos, byte),
            2 if pos < bytes.len() => {
                bytes.remove(pos);
            }
            3 if pos < bytes.len() => bytes[pos] = BASE64URL[usize::from(byte % 64)],
            _ => {}
        }
    }
    bytes
}

/// Target `jws_verify_mutated`: byte 0 picks one of the fixture's valid tokens, the rest is an
/// edit script for [`mutate`]; the edited token is verified.
///
/// Oracle: every byte of a token is covered by its signature (and base64url is decoded
/// strictly, one spelling per value), so an edited token verifies only if the edits cancelled
/// out. Returns whether it verified.
pub fn jws_verify_mutated(fx: &Fixture, data: &[u8]) -> bool {
    let Some((&pick, script)) = data.split_first() else {
        return false;
    };
    let original = &fx.tokens[usize::from(pick) % fx.tokens.len()];
    let edited = mutate(original, script);
    let token = String::from_utf8_lossy(&edited);
    match verify(&token, &fx.keys, &fx.validation, NOW) {
        Ok(_) => {
            assert_eq!(
                &*token, original,
                "an edited token verified (edits did not cancel out)"
            );
            true
        }
        Err(err) => {
            touch_error(&err);
            false
        }
    }
}

/// Target `jws_signed`: hostile header and claims behind a valid signature, as a compromised
/// or buggy issuer (or an HS256 secret holder) could produce. Byte 0 picks the signing key;
/// the rest is `header 0xFF payload`, or, without an `0xFF`, the payload under the issuer's
/// usual header.
///
/// Oracle: whatever verifies satisfies the validation (allow-listed `alg` matching the key,
/// the signing key's own `kid`, no member given twice, `typ` at+jwt, no forbidden members, time
/// claims within leeway, issuer and audience).
/// Returns whether it verified.
pub fn jws_signed(fx: &Fixture, data: &[u8]) -> bool {
    let Some((&pick, rest)) = data.split_first() else {
        return false;
    };
    let index = usize::from(pick) % fx.signing.len();
    let default_header = fx.header_json(index);
    let (header, payload) = match rest.iter().position(|&b| b == 0xff) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (default_header.as_bytes(), rest),
    };
    let token = sign_raw(fx, index, header, payload);
    match verify(&token, &fx.keys, &fx.validation, NOW) {
        Ok(claims) => {
            let value: serde_json::Value =
                serde_json::from_slice(header).expect("an accepted header is JSON");
            assert_eq!(
                value["alg"].as_str(),
                Some(fx.signing[index].algorithm().as_str()),
                "accepted alg is the key's own"
            );
            assert_eq!(
                value["kid"].as_str(),
                Some(fx.signing[index].kid().as_str()),
                "accepted under another key's kid"
            );
            let members = member_names(header);
            let mut unique = members.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                unique.len(),
                members.len(),
                "accepted a header with a repeated member: {members:?}"
            );
            let typ = value["typ"].as_str().unwrap_or("").to_ascii_lowercase();
            assert!(typ == "at+jwt" || typ == "application/at+jwt", "typ {typ}");
            for member in ["crit", "jku", "x5u", "x5c", "jwk"] {
                assert!(value.get(member).is_none(), "accepted header with {member}");
            }
            assert!(claims.exp.saturating_add(LEEWAY) > NOW, "expired accepted");
            assert!(
                claims.nbf.saturating_sub(LEEWAY) <= NOW,
                "not-yet-valid accepted"
            );
            assert!(
                claims.iat.saturating_sub(LEEWAY) <= NOW,
                "future iat accepted"
            );
            assert_eq!(claims.iss, ISSUER);
            assert!(
                claims.aud.contains_any(&[AUDIENCE]),
                "wrong audience accepted"
            );
            // What the filter does next with accepted claims.
            for name in [
                "sub", "openid", "unionid", "appid", "sid", "scope", "aud", "exp",
            ] {
                let _ = claims.get(name);
            }
            let _ = claims.has_scopes(&["read"]);
            true
        }
        Err(err) => {
            touch_error(&err);
            false
        }
    }
}

/// The names of a JSON object's members in the order written, repeats kept (`serde_json::Value`
/// keeps only the last of a repeated member, so it cannot show one).
pub fn member_names(json: &[u8]) -> Vec<String> {
    struct Names(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Names {
        fn deserialize<D: serde::Deserializer<'de>>(input: D) -> Result<Names, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Names;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Names, A::Error> {
                    let mut names = Vec::new();
                    while let Some(name) = map.next_key::<String>()? {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        names.push(name);
                    }
                    Ok(Names(names))
                }
            }
            input.deserialize_map(Visitor)
        }
    }
    serde_json::from_slice::<Names>(json)
        .map(|names| names.0)
        .unwrap_or_default()
}

/// Target `jwks_parse`: the input as a JWKS document (`KeySet::from_jwks_json`, as the filter
/// parses the issuer's `/.well-known/jwks.json` and inline config). The parsed set is then
/// used to verify the fixture's tokens.
///
/// Oracle: a fixture token verifies against the parsed set only if the set holds that very
/// key under the token's `kid`. Returns the number of usable keys (`None`: not a JWKS).
pub fn jwks_parse(fx: &Fixture, data: &[u8]) -> Option<usize> {
    if let Ok(jwks) = serde_json::from_slice::<Jwks>(data) {
        for jwk in &jwks.keys {
            let _ = jwk.thumbprint();
            let _ = jwk.to_verifying_key().map(|key| key.to_jwk());
        }
    }
    let (keys, skipped) = KeySet::from_jwks_json(data).ok()?;
    for (_, err) in &skipped {
        let _ = err.to_string();
    }
    for kid in keys.kids() {
        assert!(keys.get(kid).is_some(), "a listed kid has no key");
    }
    for (token, key) in fx.tokens.iter().zip(&fx.signing) {
        if verify(token, &keys, &fx.validation, NOW).is_ok() {
            let held: Option<Jwk> = keys.get(&key.kid()).map(|k| k.to_jwk());
            assert_eq!(
                held,
                Some(key.verifying_key().to_jwk()),
                "a fixture token verified against a key set without its key"
            );
        }
    }
    Some(keys.len())
}

/// Target `feed_decode`: the input as a revocation-feed response body, decoded as the filter
/// decodes it (`serde_json::from_slice::<FeedResponse>`).
///
/// Oracle: a decoded feed re-encodes and decodes to itself. Returns whether it decoded.
pub fn feed_decode(data: &[u8]) -> bool {
    let Ok(feed) = serde_json::from_slice::<FeedResponse>(data) else {
        return false;
    };
    let text = serde_json::to_vec(&feed).expect("a decoded feed re-encodes");
    let again: FeedResponse =
        serde_json::from_slice(&text).expect("a re-encoded feed decodes again");
    assert_eq!(again, feed, "feed round trip changed it");
    for entry in &feed.entries {
        let _ = entry.is_live(NOW);
        let _ = entry.is_live(feed.now);
    }
    true
}
