//! Profile of the filter's pure per-request work on a cache hit, step by step, in the engine
//! Envoy runs it in: `scripts/profile-request-path.sh` builds this for wasm32-wasip1 (the
//! filter's release profile) and runs it under Node's V8 with WASI; `cargo run --release -p
//! weauth-filter --example request_path` runs it natively.
//!
//! Steps timed (ns per request, best of 5 runs of 200 000): the path rule, the token's
//! extraction from the request headers, SHA-256 of the token (the cache key before this
//! profile showed its cost; the cache now keys on the token text), and the whole
//! decision on a cache hit with 0 and with 1 000 000 revocations (set loaded, generation
//! unchanged since the token was cached — the steady state `make bench` measures), plus one
//! revocation check against 1 000 000 entries (what a request pays when the generation moved).
//! What this cannot see is the host side (Envoy's header-map and metric calls); `make bench`
//! measures the whole.

use std::hint::black_box;
use std::rc::Rc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use weauth_filter::cache::TokenCache;
use weauth_filter::config::{Config, StaleMode};
use weauth_filter::path::rule_for_path;
use weauth_filter::verify::{decide, extract_token, RevocationView, Snapshot};
use weauth_token::KeySet;

#[path = "../tests/support/request_fixture.rs"]
mod fixture;
use fixture::{revocations, NOW};

const ISSUER: &str = "https://issuer.bench";
const ROUNDS: u32 = 200_000;

/// The benchmark's plugin configuration shape (bench/src/edge.rs), keys aside.
const CONFIG: &str = r#"{
  "issuer": "https://issuer.bench", "audiences": ["weauth"], "algorithms": ["EdDSA"],
  "jwks": {"inline": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k",
           "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}},
  "rules": [{"prefix": "/v1/login", "require": "none"}, {"prefix": "/", "require": "required"}]
}"#;

/// Best-of-5 nanoseconds per call of `f`.
fn time(name: &str, mut f: impl FnMut()) {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..ROUNDS {
            f();
        }
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(ROUNDS));
    }
    println!("{name:<58} {best:>8.0} ns");
}

fn main() {
    let Ok(config) = Config::parse(CONFIG.as_bytes()) else {
        eprintln!("request_path: the example's configuration does not parse");
        return;
    };
    // A realistic EdDSA access token is about 400 characters.
    let token = format!(
        "eyJ{}.{}.{}",
        "a".repeat(60),
        "b".repeat(250),
        "c".repeat(86)
    );
    let headers = vec![
        ("authorization".to_string(), format!("Bearer {token}")),
        (":path".to_string(), "/bench".to_string()),
    ];
    let keys = KeySet::default();
    // The bench's request as proxy-wasm serializes a header map (ten headers, the token's).
    let request: Vec<(String, String)> = [
        (":authority", "127.0.0.1:10000"),
        (":path", "/bench"),
        (":method", "GET"),
        (":scheme", "http"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "0d7cb2f6-0bd5-47c0-bfe5-957d32bce28b"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
    .chain(headers.iter().take(1).cloned())
    .collect();
    let mut map = (request.len() as u32).to_le_bytes().to_vec();
    for (name, value) in &request {
        map.extend((name.len() as u32).to_le_bytes());
        map.extend((value.len() as u32).to_le_bytes());
    }
    for (name, value) in &request {
        map.extend(name.as_bytes());
        map.push(0);
        map.extend(value.as_bytes());
        map.push(0);
    }

    time("nothing (loop overhead)", || {
        black_box(());
    });
    time(
        "header map read as the SDK's get_map_bytes + the glue did",
        || {
            black_box(sdk_style_map(black_box(&map)));
        },
    );
    time(
        "header map read borrowed (headers::parse_map_pairs)",
        || {
            black_box(weauth_filter::headers::parse_map_pairs(black_box(&map)));
        },
    );
    time("path rule (/bench)", || {
        black_box(rule_for_path(black_box("/bench"), |p, lax| config.rule_for_as(p, lax)).is_ok());
    });
    time("path rule (/a/./b/../bench, slow path)", || {
        black_box(
            rule_for_path(black_box("/a/./b/../bench"), |p, lax| {
                config.rule_for_as(p, lax)
            })
            .is_ok(),
        );
    });
    time("token extraction (authorization header)", || {
        black_box(extract_token(
            &config.token_sources,
            black_box(&headers),
            "/bench",
        ));
    });
    time(
        "SHA-256 of the token (the cache key before this profile)",
        || {
            black_box(Sha256::digest(black_box(token.as_bytes())));
        },
    );
    let extracted = extract_token(&config.token_sources, &headers, "/bench");
    for n in [0, 1_000_000] {
        let set = revocations(n);
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: RevocationView::Ready {
                set: &set,
                generation: 1,
                stale: false,
                mode: StaleMode::Deny,
            },
        };
        let mut cache = TokenCache::new(10_000);
        cache.insert(&token, Rc::new(fixture::claims(ISSUER)), 60, 1, 1);
        time(&format!("decide, cache hit, {n} revoked"), || {
            let outcome = decide(
                &extracted,
                config.default_require,
                &[],
                &config.validation,
                &snapshot,
                &mut cache,
                NOW,
            );
            black_box(outcome);
        });
        if n > 0 {
            let probe = fixture::claims(ISSUER);
            time(&format!("revocation check against {n} entries"), || {
                black_box(set.check(black_box(&probe)));
            });
        }
    }
}

/// What `proxy_wasm::hostcalls::get_map_bytes` (0.2.5) does with the buffer — a vector per
/// name and per value — and then the wasm glue did, text per pair: the reading
/// `headers::parse_map_pairs` replaced, for comparison.
fn sdk_style_map(bytes: &[u8]) -> Vec<(String, String)> {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|word| <[u8; 4]>::try_from(word).ok())
            .map_or(0, |word| u32::from_le_bytes(word) as usize)
    };
    let count = word(0);
    let mut map = Vec::with_capacity(count);
    let mut p = 4 + count * 8;
    for n in 0..count {
        let s = 4 + n * 8;
        let size = word(s);
        let key = bytes[p..p + size].to_vec();
        p += size + 1;
        let size = word(s + 4);
        let value = bytes[p..p + size].to_vec();
        p += size + 1;
        map.push((String::from_utf8(key).unwrap_or_default(), value));
    }
    map.into_iter()
        .map(|(name, value)| {
            let value = String::from_utf8(value)
                .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned());
            (name, value)
        })
        .collect()
}
