//! Tokens minted by the hand-written JWS code, before signing and verification moved onto
//! `jsonwebtoken` (issue 12 §1), still verify after it: a rollout that upgrades the issuer and
//! the filters in any order keeps every session alive. The fixtures and how they were made:
//! `tests/fixtures/pre-jsonwebtoken/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/src/fixture.rs"]
mod fixture;

use weauth_token::{b64, verify, Algorithm, VerifyError};

fn old_token(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/pre-jsonwebtoken/{name}.jwt",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_string()
}

const OLD: [(&str, Algorithm); 3] = [
    ("valid-eddsa", Algorithm::EdDSA),
    ("valid-es256", Algorithm::ES256),
    ("valid-hs256", Algorithm::HS256),
];

#[test]
fn pre_jsonwebtoken_tokens_each_algorithm_verify_with_their_claims() {
    let fx = fixture::Fixture::new();
    for (name, alg) in OLD {
        let token = old_token(name);
        let claims = verify(&token, &fx.keys, &fx.validation, fixture::NOW)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(claims, fixture::claims(alg), "{name}");
    }
}

#[test]
fn pre_jsonwebtoken_tokens_old_header_spelling_differs_from_new() {
    // The fixtures are a real record of the old format, not copies of what the new code mints.
    let fx = fixture::Fixture::new();
    for (index, (name, _)) in OLD.iter().enumerate() {
        let old = old_token(name);
        assert_ne!(old, fx.tokens[index], "{name}");
        let header = b64::decode(old.split('.').next().unwrap()).unwrap();
        assert!(
            header.starts_with(br#"{"alg":"#),
            "{name}: {}",
            String::from_utf8_lossy(&header)
        );
    }
}

#[test]
fn pre_jsonwebtoken_tokens_edited_payload_refused() {
    let fx = fixture::Fixture::new();
    for (name, alg) in OLD {
        let token = old_token(name);
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = fixture::claims(alg);
        claims.sub = "admin".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64::encode(serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert_eq!(
            verify(&forged, &fx.keys, &fx.validation, fixture::NOW),
            Err(VerifyError::BadSignature),
            "{name}"
        );
    }
}

#[test]
fn pre_jsonwebtoken_tokens_after_expiry_refused() {
    let fx = fixture::Fixture::new();
    let later = fixture::NOW + 900 + fixture::LEEWAY;
    for (name, _) in OLD {
        assert_eq!(
            verify(&old_token(name), &fx.keys, &fx.validation, later),
            Err(VerifyError::Expired),
            "{name}"
        );
    }
}
