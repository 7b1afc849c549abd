//! Smoke-test helper: prints an inline JWKS and a few tokens signed with a fixed Ed25519 seed,
//! as JSON, for a hand-written Envoy config. Development only (the seed is public).
//!
//! `cargo run -p weauth-filter --example mint -- [issuer] [audience] [now]`

use weauth_token::{Algorithm, Audience, Claims, Jwks, SigningKey};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let issuer = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let audience = args.next().unwrap_or_else(|| "weauth".into());
    let now: i64 = match args.next() {
        Some(now) => now.parse()?,
        None => i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs(),
        )?,
    };
    let key = SigningKey::from_seed(Algorithm::EdDSA, &[42u8; 32])?;
    let claims =
        |jti: &str, sid: &str, sub: &str, iat: i64, exp: i64, scope: Option<&str>| Claims {
            iss: issuer.clone(),
            aud: Audience::One(audience.clone()),
            sub: sub.into(),
            sid: sid.into(),
            jti: jti.into(),
            iat,
            nbf: iat,
            exp,
            openid: "oSmokeOpenid123456".into(),
            unionid: None,
            appid: "wx0123456789abcdef".into(),
            scope: scope.map(Into::into),
        };
    let good = weauth_token::sign(
        &claims("j-good", "s-good", "u-1", now, now + 900, Some("read")),
        &key,
    )?;
    let other = weauth_token::sign(
        &claims("j-other", "s-other", "u-2", now, now + 900, None),
        &key,
    )?;
    let expired = weauth_token::sign(
        &claims("j-old", "s-old", "u-1", now - 2000, now - 1000, None),
        &key,
    )?;
    let stranger = SigningKey::from_seed(Algorithm::EdDSA, &[1u8; 32])?;
    let unknown_kid = weauth_token::sign(
        &claims("j-x", "s-x", "u-1", now, now + 900, None),
        &stranger,
    )?;
    let jwks = Jwks {
        keys: vec![key.jwk()],
    };
    println!(
        "{}",
        serde_json::json!({
            "jwks": jwks,
            "good": good,
            "other": other,
            "expired": expired,
            "unknown_kid": unknown_kid,
            "rotated_jwks": Jwks { keys: vec![key.jwk(), stranger.jwk()] },
        })
    );
    Ok(())
}
