//! The deterministic key fixture every JOSE-facing fuzz target verifies against: three keys
//! (EdDSA, ES256, HS256) from fixed seeds, a validation that allows all three, and one valid
//! token per key. Shared by `token_harness.rs` and `filter_harness.rs`, and included with
//! `#[path]` by the replay tests (so it uses only `weauth-token` and `serde_json`).
//!
//! ES256 signing is deterministic (RFC 6979), so the issued tokens are the same on every run.

// This is test code (a fuzz fixture): a fixture that cannot be built must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use weauth_token::{
    sign, verify, Algorithm, Audience, Claims, Jwks, KeySet, SigningKey, Validation,
};

/// The verifier's clock for every target.
pub const NOW: i64 = 1_700_000_000;
/// The `iss` the fixture's validation requires.
pub const ISSUER: &str = "https://issuer.fuzz.example";
/// The audience the fixture's validation accepts.
pub const AUDIENCE: &str = "weauth";
/// The validation's leeway (seconds), the production default.
pub const LEEWAY: i64 = 60;

/// Fixed key seeds, one per algorithm (the P-256 one is a valid scalar).
const SEEDS: [(Algorithm, [u8; 32]); 3] = [
    (Algorithm::EdDSA, [0x11; 32]),
    (Algorithm::ES256, [0x22; 32]),
    (Algorithm::HS256, [0x33; 32]),
];

/// Keys, validation and one valid token per algorithm.
pub struct Fixture {
    /// The signing keys, in [`SEEDS`] order (EdDSA, ES256, HS256).
    pub signing: Vec<SigningKey>,
    /// The verifier's key set: the three keys by their RFC 7638 `kid`.
    pub keys: KeySet,
    /// Issuer [`ISSUER`], audience [`AUDIENCE`], all three algorithms allowed.
    pub validation: Validation,
    /// One token per key, each valid at [`NOW`].
    pub tokens: Vec<String>,
}

/// The claims of the fixture's tokens (valid from `NOW - 10` to `NOW + 900`).
pub fn claims(alg: Algorithm) -> Claims {
    Claims {
        iss: ISSUER.into(),
        aud: Audience::One(AUDIENCE.into()),
        sub: "u_fuzz".into(),
        sid: "s_fuzz".into(),
        jti: format!("j_{alg}"),
        iat: NOW - 10,
        nbf: NOW - 10,
        exp: NOW + 900,
        openid: "o_fuzz".into(),
        unionid: Some("un_fuzz".into()),
        appid: "wx0123456789abcdef".into(),
        scope: Some("read write".into()),
    }
}

impl Fixture {
    /// Builds the fixture and checks that each of its tokens verifies (otherwise every
    /// "must not verify" oracle below would pass vacuously).
    pub fn new() -> Fixture {
        let signing: Vec<SigningKey> = SEEDS
            .iter()
            .map(|(alg, seed)| SigningKey::from_seed(*alg, seed).expect("fixed seed is a key"))
            .collect();
        let mut keys = KeySet::default();
        for key in &signing {
            keys.insert(key.kid(), key.verifying_key());
        }
        let mut validation = Validation::new(ISSUER, vec![AUDIENCE.into()]);
        validation.algorithms = vec![Algorithm::EdDSA, Algorithm::ES256, Algorithm::HS256];
        validation.leeway = LEEWAY;
        let tokens: Vec<String> = signing
            .iter()
            .map(|key| sign(&claims(key.algorithm()), key).expect("claims serialize"))
            .collect();
        for (token, key) in tokens.iter().zip(&signing) {
            assert_eq!(
                verify(token, &keys, &validation, NOW).ok(),
                Some(claims(key.algorithm())),
                "the fixture's own {} token must verify",
                key.algorithm()
            );
        }
        Fixture {
            signing,
            keys,
            validation,
            tokens,
        }
    }

    /// The fixture's key set as JWKS JSON (HS256 included, as an inline verifier config has it).
    pub fn jwks_json(&self) -> Vec<u8> {
        let jwks = Jwks {
            keys: self.signing.iter().map(SigningKey::jwk).collect(),
        };
        serde_json::to_vec(&jwks).expect("a JWKS serializes")
    }

    /// The header the issuer writes for key `index`.
    pub fn header_json(&self, index: usize) -> String {
        let key = &self.signing[index];
        format!(
            r#"{{"alg":"{}","typ":"at+jwt","kid":"{}"}}"#,
            key.algorithm(),
            key.kid()
        )
    }
}

impl Default for Fixture {
    fn default() -> Fixture {
        Fixture::new()
    }
}
