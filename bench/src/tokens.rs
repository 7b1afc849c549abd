//! Keys and tokens for the edge rows: fresh EdDSA and ES256 keys, tokens minted with
//! `weauth_token::sign` (never a hand-rolled JWT), their inline JWKS, and a tampered copy that
//! every authenticating configuration must refuse before it is measured.

use rand::RngCore;
use weauth_token::{sign, Algorithm, Audience, Claims, Jwks, SigningKey};

/// The `iss` of the benchmark's tokens and the verifiers' configured issuer.
pub const ISSUER: &str = "https://issuer.bench.weauth.invalid";
/// The audience of the benchmark's tokens.
pub const AUDIENCE: &str = "weauth";

/// A signing key with its inline JWKS and three tokens: one to measure with, one whose `jti`
/// the revocation sets contain, and the first one with a tampered signature.
pub struct TokenSet {
    pub jwks_json: String,
    pub valid: String,
    pub revoked: String,
    pub revoked_jti: String,
    pub tampered: String,
}

/// Why keys or tokens could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("could not make a {0} key: {1}")]
    Key(Algorithm, weauth_token::jws::KeyError),
    #[error("could not sign a token: {0}")]
    Sign(weauth_token::SignError),
    #[error("could not write the JWKS: {0}")]
    Jwks(serde_json::Error),
}

fn random_id() -> String {
    use base64::Engine;
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Claims like the issuer's, valid from `now` for `ttl` seconds.
pub fn claims(now: i64, ttl: i64) -> Claims {
    Claims {
        iss: ISSUER.to_string(),
        aud: Audience::One(AUDIENCE.to_string()),
        sub: format!("u-{}", random_id()),
        sid: random_id(),
        jti: random_id(),
        iat: now,
        nbf: now,
        exp: now + ttl,
        openid: "o-bench-openid".to_string(),
        unionid: None,
        appid: "wx0123456789abcdef".to_string(),
        scope: None,
    }
}

/// A new key of `alg` and its tokens, valid from `now` for `ttl` seconds.
pub fn token_set(alg: Algorithm, now: i64, ttl: i64) -> Result<TokenSet, TokenError> {
    let mut seed = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    let key = SigningKey::from_seed(alg, &seed).map_err(|e| TokenError::Key(alg, e))?;
    let jwks = Jwks {
        keys: vec![key.jwk()],
    };
    let valid = sign(&claims(now, ttl), &key).map_err(TokenError::Sign)?;
    let revoked_claims = claims(now, ttl);
    let revoked_jti = revoked_claims.jti.clone();
    let revoked = sign(&revoked_claims, &key).map_err(TokenError::Sign)?;
    Ok(TokenSet {
        jwks_json: serde_json::to_string(&jwks).map_err(TokenError::Jwks)?,
        tampered: tamper(&valid),
        valid,
        revoked,
        revoked_jti,
    })
}

/// The token with one character in the middle of its signature changed (still well-formed
/// base64url, so only the signature check can catch it).
pub fn tamper(token: &str) -> String {
    let Some(dot) = token.rfind('.') else {
        return format!("{token}x");
    };
    let mut bytes = token.as_bytes().to_vec();
    let at = dot + 1 + (bytes.len() - dot - 1) / 2;
    if let Some(b) = bytes.get_mut(at) {
        *b = if *b == b'A' { b'B' } else { b'A' };
    }
    String::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weauth_token::{verify, KeySet, Validation};

    #[test]
    fn token_set_valid_verifies_tampered_does_not() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256] {
            let set = token_set(alg, 1_700_000_000, 3600).unwrap();
            let jwks: Jwks = serde_json::from_str(&set.jwks_json).unwrap();
            let (keys, _) = KeySet::from_jwks(&jwks);
            let mut validation = Validation::new(ISSUER, vec![AUDIENCE.to_string()]);
            validation.algorithms = vec![alg];
            let now = 1_700_000_100;
            assert!(verify(&set.valid, &keys, &validation, now).is_ok());
            assert!(verify(&set.revoked, &keys, &validation, now).is_ok());
            assert!(verify(&set.tampered, &keys, &validation, now).is_err());
            assert_ne!(set.tampered, set.valid);
        }
    }
}
