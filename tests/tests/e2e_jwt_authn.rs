//! weauth access tokens verified by Envoy's OWN jwt_authn filter, pointed at the issuer's JWKS.
//!
//! The stack is the usual one (real issuer process, mock WeChat, demo upstream) but Envoy runs
//! `envoy/jwt-authn.yaml`: no wasm, jwt_authn with `remote_jwks` on the issuer's
//! `/.well-known/jwks.json`. This shows the tokens are standard JWTs (RFC 7519/9068) with a
//! standard JWKS, for EdDSA (the default) and ES256 — and that jwt_authn, unlike the weauth
//! filter, still accepts a token after logout (the gap the filter closes).
//!
//! Run: `make build && cargo test --target x86_64-unknown-linux-musl -p weauth-tests --test suites -- e2e_jwt_authn::`.

use weauth_tests::harness::{peek_claims, peek_header, Edge, Stack};

async fn jwt_authn_stack(alg: &str) -> Stack {
    match Stack::builder()
        .edge(Edge::JwtAuthn)
        .issuer_env("WEAUTH_SIGNING_ALG", alg)
        .start()
        .await
    {
        Ok(stack) => stack,
        Err(e) => panic!("cannot start the jwt_authn stack: {e}"),
    }
}

/// Logs in through Envoy, checks jwt_authn accepts the token and forwards its claims, and
/// refuses a missing and a tampered token. Returns the access token.
async fn assert_jwt_authn_accepts(stack: &Stack, user: &str, alg: &str) -> String {
    let tokens = stack.login(user).await.unwrap();
    let header = peek_header(&tokens.access_token).unwrap();
    assert_eq!(header.alg, alg);
    let claims = peek_claims(&tokens.access_token).unwrap();

    let (status, echo) = stack
        .get_json("/api/hello", Some(&tokens.access_token))
        .await
        .unwrap();
    assert_eq!(
        status, 200,
        "jwt_authn refused a {alg} weauth token: {echo}"
    );
    assert_eq!(echo["headers"]["x-weauth-sub"], claims.sub.as_str());
    assert_eq!(echo["headers"]["x-weauth-openid"], claims.openid.as_str());

    let resp = stack.get("/api/hello", None).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "no token");

    let (input, signature) = tokens.access_token.rsplit_once('.').unwrap();
    let first = if signature.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{input}.{first}{}", &signature[1..]);
    let resp = stack.get("/api/hello", Some(&tampered)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "tampered {alg} signature");
    tokens.access_token
}

#[tokio::test]
async fn jwt_authn_eddsa_token_accepted_tampered_refused() {
    let stack = jwt_authn_stack("EdDSA").await;
    let requests_before = stack.upstream.requests();
    assert_jwt_authn_accepts(&stack, "jwt-authn-ed", "EdDSA").await;
    // Only the one good request reached the upstream.
    assert_eq!(stack.upstream.requests(), requests_before + 1);
}

#[tokio::test]
async fn jwt_authn_es256_token_accepted_tampered_refused() {
    let stack = jwt_authn_stack("ES256").await;
    assert_jwt_authn_accepts(&stack, "jwt-authn-es", "ES256").await;
}

#[tokio::test]
async fn jwt_authn_still_accepts_token_after_logout() {
    // The documented gap: jwt_authn has no revocation. The weauth filter refuses the same
    // token after logout (tests/tests/e2e_login.rs and e2e_filter.rs).
    let stack = jwt_authn_stack("EdDSA").await;
    let token = assert_jwt_authn_accepts(&stack, "jwt-authn-logout", "EdDSA").await;
    let resp = stack
        .client()
        .post(format!("{}/v1/logout", stack.issuer_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "logout");
    // The issuer itself now refuses the token on its own protected routes...
    let me = stack
        .client()
        .get(format!("{}/v1/me", stack.issuer_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status().as_u16(), 401);
    // ...but jwt_authn at the edge cannot know.
    let resp = stack.get("/api/hello", Some(&token)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}
