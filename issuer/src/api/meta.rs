//! What the issuer publishes about itself: the JWKS, the discovery document, the OpenAPI
//! description, the health and readiness probes, and the metrics.

use std::sync::Arc;

use axum::extract::State;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::StatusCode;
use serde_json::json as value;

use super::{json, Resp, OPENAPI};
use crate::app::App;
use crate::error::{json_response, ApiError};

pub async fn jwks(State(app): State<Arc<App>>) -> Result<Resp, ApiError> {
    let ring = app.keys();
    let mut response = json(StatusCode::OK, &ring.jwks)?;
    // Cache for at most half the publish delay, so a rotated key is fetched before it signs.
    let max_age = (app.config.key_publish_delay.as_secs() / 2).min(300);
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        response.headers_mut().insert(CACHE_CONTROL, value);
    }
    Ok(response)
}

pub async fn discovery(State(app): State<Arc<App>>) -> Resp {
    let base = &app.config.issuer;
    let algs: Vec<&str> = {
        let ring = app.keys();
        let mut algs: Vec<&str> = ring
            .verify
            .kids()
            .filter_map(|kid| ring.verify.get(kid))
            .map(|key| key.algorithm().as_str())
            .collect();
        algs.sort_unstable();
        algs.dedup();
        algs
    };
    json_response(
        StatusCode::OK,
        &value!({
            "issuer": base,
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "token_endpoint": format!("{base}/v1/token/refresh"),
            "userinfo_endpoint": format!("{base}/v1/me"),
            "weauth_login_endpoint": format!("{base}/v1/login"),
            "weauth_logout_endpoint": format!("{base}/v1/logout"),
            "weauth_web_authorize_endpoint": format!("{base}/v1/web/authorize"),
            "weauth_revocation_feed_endpoint": format!("{base}/v1/revocations"),
            "grant_types_supported": ["refresh_token"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "token_endpoint_auth_methods_supported": ["none"],
            "access_token_signing_alg_values_supported": algs,
            "claims_supported": ["iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "openid", "unionid", "appid", "scope"],
        }),
    )
}

pub async fn openapi() -> Resp {
    let mut response = Resp::new(OPENAPI.into());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub async fn healthz() -> Resp {
    json_response(StatusCode::OK, &value!({"status": "ok"}))
}

pub async fn readyz(State(app): State<Arc<App>>) -> Result<Resp, ApiError> {
    match app.store.ping().await {
        Ok(()) => Ok(json_response(StatusCode::OK, &value!({"status": "ready"}))),
        // A read: nothing to confirm.
        Err(err) => Err(ApiError::StoreUnavailable {
            cause: err.to_string(),
            unconfirmed: false,
        }),
    }
}

pub async fn metrics(State(app): State<Arc<App>>) -> Resp {
    let ring = app.keys();
    let gauges = [
        (
            "weauth_revocation_seq",
            "Highest revocation seq seen.",
            app.known_seq() as f64,
        ),
        (
            "weauth_signing_keys_published",
            "Keys in the JWKS (next, signing, retiring).",
            ring.verify.len() as f64,
        ),
        (
            "weauth_feed_waiters",
            "Revocation-feed long polls currently waiting.",
            app.feed_waiters() as f64,
        ),
    ];
    let mut response = Resp::new(app.metrics.render(&gauges).into());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
