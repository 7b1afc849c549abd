//! What the `weauth-filter` fuzz targets do with one input, shared by the libFuzzer targets in
//! `fuzz/fuzz_targets/` and by the replay test `filter/tests/fuzz_regressions.rs` (which
//! includes this file, and `fixture.rs` for the keys, with `#[path]`).
//!
//! The filter runs inside Envoy, where a panic kills the VM serving every request, so each
//! target feeds hostile bytes to the pure functions the glue calls: the plugin-config parser
//! (`Config::parse`), the revocation set (feed `apply`, `FeedPage::parse` and `parse_chunks`,
//! `check`, the shared-data shard and meta codecs, `Replica::sync`) and the per-request path
//! (`extract_token`, `rule_for_path`, `decide`).

// This is test code (a fuzz harness): a broken property must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use weauth_filter::cache::TokenCache;
use weauth_filter::config::Require;
use weauth_filter::config::{Config, StaleMode};
use weauth_filter::path::{normalize, rule_for_path, without_query};
use weauth_filter::revocation::{
    decode_shard, FeedPage, Meta, Replica, RevocationSet, MAX_VALUE_BYTES, SHARDS,
};
use weauth_filter::verify::{decide, extract_token, Decision, Extracted, RevocationView, Snapshot};
use weauth_token::revocation::{EntryKind, FeedResponse};
use weauth_token::{Audience, Claims};

use super::fixture::{Fixture, NOW};

/// A plugin configuration that looks for tokens everywhere and has one rule of each kind.
pub const CONFIG: &str = r#"{
  "issuer": "https://issuer.fuzz.example",
  "audiences": ["weauth"],
  "algorithms": ["EdDSA", "ES256", "HS256"],
  "jwks": {"inline": {"keys": [{"kty": "oct", "k": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}},
  "token_sources": [{"header": "authorization", "prefix": "Bearer "},
                    {"cookie": "weauth_at"}, {"query": "access_token"}],
  "rules": [{"prefix": "/admin/", "require": "required", "scopes": ["admin"]},
            {"prefix": "/api/", "require": "required", "scopes": ["read"]},
            {"prefix": "/opt/", "require": "optional"},
            {"exact": "/v1/login", "require": "none"}],
  "default_require": "required"
}"#;

/// The `jti` the request target's revocation set revokes (the fixture's ES256 token).
pub const REVOKED_JTI: &str = "j_ES256";

/// Target `filter_config`: the input as the plugin configuration.
///
/// Oracle: an accepted configuration is within its documented limits. Returns whether it was
/// accepted.
pub fn filter_config(data: &[u8]) -> bool {
    match Config::parse(data) {
        Ok(config) => {
            let v = &config.validation;
            assert!(!v.issuer.is_empty(), "accepted an empty issuer");
            assert!(!v.audiences.is_empty(), "accepted no audiences");
            assert!(!v.algorithms.is_empty(), "accepted no algorithms");
            assert!((0..=600).contains(&v.leeway), "leeway {}", v.leeway);
            assert!(
                (64..=65_536).contains(&v.max_token_bytes),
                "max_token_bytes"
            );
            assert!(!config.token_sources.is_empty(), "no token source");
            let headers = vec![
                ("authorization".to_owned(), "Bearer abc".to_owned()),
                ("cookie".to_owned(), "a=b; weauth_at=\"tok\"".to_owned()),
            ];
            for path in [
                "/",
                "/api/x?access_token=t#f",
                "/v1/login",
                "",
                "?",
                "/é/%2e",
            ] {
                let _ = rule_for_path(path, |p, lax| config.rule_for_as(p, lax));
                let _ = extract_token(&config.token_sources, &headers, path);
            }
            true
        }
        Err(err) => {
            let _ = err.to_string();
            false
        }
    }
}

/// Claims that carry `value` in the field an entry of `kind` revokes, issued at the dawn of
/// time (so any `sub` cut-off above `i64::MIN` applies).
fn claims_for(kind: EntryKind, value: &str) -> Claims {
    let mut claims = Claims {
        iss: String::new(),
        aud: Audience::Many(Vec::new()),
        sub: String::new(),
        sid: String::new(),
        jti: String::new(),
        iat: i64::MIN,
        nbf: 0,
        exp: 0,
        openid: String::new(),
        unionid: None,
        appid: String::new(),
        scope: None,
    };
    match kind {
        EntryKind::Jti => claims.jti = value.to_owned(),
        EntryKind::Sid => claims.sid = value.to_owned(),
        EntryKind::Sub => claims.sub = value.to_owned(),
    }
    claims
}

/// Writes `set` out as the fetcher does (every shard at generation 1, then the meta) and reads
/// it back as another worker's [`Replica`] does; the copy must equal the original.
fn check_shared_data_round_trip(set: &RevocationSet) {
    let blobs: Vec<Vec<u8>> = (0..SHARDS).map(|i| set.encode_shard(i, 1)).collect();
    let meta = Meta {
        generation: 1,
        seq: set.seq,
        last_ok_ms: 0,
        shard_generations: vec![1; SHARDS],
        entries: u32::try_from(set.len()).unwrap_or(u32::MAX),
    };
    let meta = Meta::decode(&meta.encode()).expect("an encoded meta decodes");
    let mut replica = Replica::default();
    replica
        .sync(meta, |i| blobs.get(i).cloned())
        .expect("a complete publication syncs");
    assert_eq!(&replica.set, set, "shared-data round trip changed the set");
}

/// Target `filter_revocation`. An input starting with `WRS2` or `WRM1` is a shared-data blob
/// (shard or meta) as another VM, or another plugin version, may have left it: it is decoded,
/// and whatever decodes must re-encode to the same thing. Any other input is up to four feed
/// responses separated by `0xFF`, applied in order to one set at [`NOW`].
///
/// Oracles: after a feed is applied, each of its live, well-formed entries revokes a token
/// carrying its value; the set survives the shared-data round trip. Returns the number of
/// feeds applied (or 1 for a decoded blob).
pub fn filter_revocation(data: &[u8]) -> usize {
    if data.starts_with(b"WRS2") {
        let Ok(blob) = decode_shard(data) else {
            return 0;
        };
        let mut set = RevocationSet::default();
        set.install_shard(blob.index, blob.shard.clone());
        let again = decode_shard(&set.encode_shard(blob.index, blob.generation))
            .expect("a re-encoded shard decodes");
        assert_eq!(again, blob, "shard round trip changed it");
        let _ = set.check(&claims_for(EntryKind::Jti, "x"));
        return 1;
    }
    if data.starts_with(b"WRM1") {
        let Ok(meta) = Meta::decode(data) else {
            return 0;
        };
        assert_eq!(meta.encode(), data, "meta encoding is not canonical");
        let _ = Replica::default().stale_shards(&meta);
        return 1;
    }
    let mut set = RevocationSet::default();
    // The same answers read as the fetchers read them (`FeedPage::parse`), applied alike.
    let mut paged = RevocationSet::default();
    let mut applied = 0;
    for chunk in data.split(|&b| b == 0xff).take(4) {
        let page = FeedPage::parse(chunk);
        // The same answer as the fetcher reads a callout's body: in pieces (Envoy's buffer
        // chunks), cut where the answer's first byte says, and one byte a piece.
        let cut = usize::from(chunk.first().copied().unwrap_or(0)) * chunk.len() / 256;
        let bytes: Vec<&[u8]> = chunk.chunks(1).collect();
        for pieces in [
            FeedPage::parse_chunks(&[&chunk[..cut], &chunk[cut..]]),
            FeedPage::parse_chunks(&bytes),
        ] {
            assert_eq!(
                pieces.as_ref().ok(),
                page.as_ref().ok(),
                "FeedPage::parse_chunks read the answer otherwise"
            );
        }
        let Ok(feed) = serde_json::from_slice::<FeedResponse>(chunk) else {
            assert!(
                page.is_err(),
                "FeedPage took an answer FeedResponse refuses"
            );
            continue;
        };
        let page = page.expect("FeedPage refused an answer FeedResponse takes");
        assert_eq!(
            page,
            FeedPage::of(&feed),
            "FeedPage read the answer otherwise"
        );
        let paged_result = paged.apply_page(page, NOW);
        match set.apply(&feed, NOW) {
            Ok(_) => {
                assert!(paged_result.is_ok());
                assert_eq!(paged, set, "the page applied otherwise");
                applied += 1;
                assert_eq!(set.seq, feed.seq);
                for entry in &feed.entries {
                    let well_formed = entry.is_live(NOW)
                        && !entry.value.is_empty()
                        && entry.value.len() <= MAX_VALUE_BYTES
                        && match entry.kind {
                            EntryKind::Sub => entry.issued_before.is_some_and(|b| b > i64::MIN),
                            _ => true,
                        };
                    if well_formed {
                        assert!(
                            set.check(&claims_for(entry.kind, &entry.value)).is_some(),
                            "a live {:?} entry does not revoke",
                            entry.kind
                        );
                    }
                }
                check_shared_data_round_trip(&set);
            }
            Err(err) => {
                assert_eq!(paged_result, Err(err.clone()));
                let _ = err.to_string();
            }
        }
        let _ = set.prune(NOW);
        let _ = paged.prune(NOW);
    }
    applied
}

/// Every reading of `path` (query cut, step 1 passed) that `weauth_filter::path` promises to
/// cover, written independently of it: the path as written; and, for the path as written and
/// with every escape decoded, with `;` parameters cut before resolving or not, the dot segments
/// removed with repeated slashes merged first or kept as empty segments, then merged — with
/// the parameters cut afterwards or not.
fn upstream_views(path: &str) -> Vec<String> {
    let mut views = vec![path.to_owned()];
    for text in [path.to_owned(), decode_every_escape(path)] {
        for text in [cut_parameters(&text), text] {
            for merge_first in [true, false] {
                let resolved = merge_slashes(&remove_dot_segments(&text, merge_first));
                views.push(cut_parameters(&resolved));
                views.push(resolved);
            }
        }
    }
    views.sort();
    views.dedup();
    views
}

/// `%XX` escapes decoded (invalid UTF-8 replaced), a malformed one left as written.
fn decode_every_escape(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .filter(|_| bytes[i] == b'%')
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escape {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Each segment cut at its first `;`.
fn cut_parameters(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/")
}

/// Runs of `/` as one.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// RFC 3986 §5.2.4 on a path starting with `/`, with a stack of segments: `.` dropped, `..`
/// pops one (never above the root), a last `.` or `..` leaves a trailing `/`; empty segments
/// (from `//`) dropped first when `merge_first`, else kept like any other.
fn remove_dot_segments(path: &str, merge_first: bool) -> String {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "" if merge_first && !last => {}
            "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
        if last && (*segment == "." || *segment == "..") {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

/// Target `filter_request`: the input is `path 0xFF header 0xFF header ...`, each header
/// `name:value`. The request goes through what the HTTP context does: `extract_token` with the
/// [`CONFIG`]'s sources, `rule_for_path`, then `decide` against the fixture's keys and a revocation
/// set that revokes [`REVOKED_JTI`], twice (the second answer comes from the cache).
///
/// Oracles: only a token the fixture issued is allowed, never the revoked one; the cached
/// decision equals the first. Returns whether the request was allowed with claims.
pub fn filter_request(fx: &Fixture, config: &Config, data: &[u8]) -> bool {
    let mut parts = data.split(|&b| b == 0xff);
    let path = String::from_utf8_lossy(parts.next().unwrap_or(&[])).into_owned();
    let headers: Vec<(String, String)> = parts
        .take(16)
        .map(|part| {
            let text = String::from_utf8_lossy(part);
            match text.split_once(':') {
                Some((name, value)) => (name.to_owned(), value.to_owned()),
                None => (text.into_owned(), String::new()),
            }
        })
        .collect();
    let extracted = extract_token(&config.token_sources, &headers, &path);
    // The path rule: a refused path (400) ends the request here. An accepted one is never
    // laxer than the rule of its normalized form (what a normalizing upstream serves).
    let Ok((require, scopes)) = rule_for_path(&path, |p, lax| config.rule_for_as(p, lax)) else {
        return false;
    };
    let rank = |r: Require| match r {
        Require::None => 0,
        Require::Optional => 1,
        Require::Required => 2,
    };
    let (normal_require, normal_scopes) = config.rule_for(&normalize(without_query(&path)));
    assert!(
        rank(require) >= rank(normal_require) && normal_scopes.iter().all(|s| scopes.contains(s)),
        "path {path:?} got a laxer rule than its normalized form"
    );
    // And never laxer than the rule of any reading the module docs promise to cover, modelled
    // here on its own (not with the filter's `readings`), each compared as written and as a
    // lax upstream compares it.
    for view in upstream_views(without_query(&path)) {
        for lax in [false, true] {
            let (view_require, view_scopes) = config.rule_for_as(&view, lax);
            assert!(
                rank(require) >= rank(view_require)
                    && view_scopes.iter().all(|s| scopes.contains(s)),
                "path {path:?} got a laxer rule than its reading {view:?} (lax {lax})"
            );
        }
    }
    let mut revoked = RevocationSet::default();
    let feed = format!(
        r#"{{"seq":1,"full":true,"now":{NOW},"entries":[{{"seq":1,"kind":"jti","value":"{REVOKED_JTI}","until":{}}}]}}"#,
        NOW + 3600
    );
    revoked
        .apply(&serde_json::from_str(&feed).expect("fixture feed"), NOW)
        .expect("fixture feed applies");
    let snapshot = Snapshot {
        keys: Some(&fx.keys),
        keys_generation: 1,
        revocation: RevocationView::Ready {
            set: &revoked,
            generation: 1,
            stale: false,
            mode: StaleMode::Deny,
        },
    };
    let mut cache = TokenCache::new(4);
    let first = decide(
        &extracted,
        require,
        &scopes,
        &fx.validation,
        &snapshot,
        &mut cache,
        NOW,
    );
    let second = decide(
        &extracted,
        require,
        &scopes,
        &fx.validation,
        &snapshot,
        &mut cache,
        NOW,
    );
    assert_eq!(
        first.decision, second.decision,
        "the cached decision differs"
    );
    match &first.decision {
        Decision::Allow { claims } => {
            let Extracted::Found { token, .. } = &extracted else {
                panic!("allowed without a token");
            };
            assert!(
                fx.tokens.iter().any(|issued| issued == token),
                "allowed a token never issued"
            );
            assert_ne!(claims.jti, REVOKED_JTI, "allowed a revoked token");
            true
        }
        Decision::Deny(denial) => {
            let _ = denial.www_authenticate();
            let _ = denial.body();
            false
        }
        Decision::Anonymous => false,
    }
}

/// Target `filter_cache`: a sequence of requests and state changes through `decide` with one
/// long-lived token cache, checked against `decide` without a cache. Byte 0 is the cache
/// capacity (`% 4`; 0 disables it); each further byte (at most 24) is an operation:
///
/// - `00xx_xxxx`: a request carrying token `b & 3` (the fixture's three, or a forged one);
/// - `01cx_xxxx`: revoke the `jti` of token `b & 3` (`c` set: clear all revocations first);
///   the revocation generation moves on, as when the glue installs a new set;
/// - `10xx_xxxx`: the clock advances by `(b & 0x3f) * 30` seconds;
/// - `11xx_xxxx`: switch between the full key set and one without the EdDSA key; the keys
///   generation moves on, as when the glue installs a new JWKS.
///
/// Oracle: every cached decision equals the uncached one (a cache must never let a revoked,
/// expired or unknown-key token through, nor refuse a good one). Returns how many requests
/// were allowed.
pub fn filter_cache(fx: &Fixture, data: &[u8]) -> usize {
    let Some((&capacity, ops)) = data.split_first() else {
        return 0;
    };
    let mut cache = TokenCache::new(usize::from(capacity % 4));
    let mut without_eddsa = weauth_token::KeySet::default();
    for key in &fx.signing[1..] {
        without_eddsa.insert(key.kid(), key.verifying_key());
    }
    let forged = format!("{}x", &fx.tokens[0][..fx.tokens[0].len() - 1]);
    let mut revoked: Vec<String> = Vec::new();
    let mut set = RevocationSet::default();
    let mut revocation_generation = 1;
    let mut full_keys = true;
    let mut keys_generation = 1;
    let mut now = NOW;
    let mut allowed = 0;
    for &op in ops.iter().take(24) {
        let index = usize::from(op & 3);
        match op >> 6 {
            0 => {
                let token = fx.tokens.get(index).unwrap_or(&forged).clone();
                let keys = if full_keys { &fx.keys } else { &without_eddsa };
                let snapshot = Snapshot {
                    keys: Some(keys),
                    keys_generation,
                    revocation: RevocationView::Ready {
                        set: &set,
                        generation: revocation_generation,
                        stale: false,
                        mode: StaleMode::Deny,
                    },
                };
                let found = || Extracted::Found {
                    token: &token,
                    source: 0,
                };
                let ask = |cache: &mut TokenCache| {
                    decide(
                        &found(),
                        weauth_filter::config::Require::Required,
                        &[],
                        &fx.validation,
                        &snapshot,
                        cache,
                        now,
                    )
                };
                let cached = ask(&mut cache);
                let uncached = ask(&mut TokenCache::new(0));
                assert_eq!(
                    cached.decision, uncached.decision,
                    "the cache changed a decision"
                );
                if matches!(cached.decision, Decision::Allow { .. }) {
                    allowed += 1;
                }
            }
            1 => {
                if op & 0x20 != 0 {
                    revoked.clear();
                }
                if let Some(claims) = fx
                    .tokens
                    .get(index)
                    .map(|_| super::fixture::claims(fx.signing[index].algorithm()))
                {
                    revoked.push(claims.jti);
                }
                let entries: Vec<String> = revoked
                    .iter()
                    .enumerate()
                    .map(|(i, jti)| {
                        format!(
                            r#"{{"seq":{},"kind":"jti","value":"{jti}","until":{}}}"#,
                            i + 1,
                            NOW + 1_000_000
                        )
                    })
                    .collect();
                let feed = format!(
                    r#"{{"seq":{},"full":true,"now":{now},"entries":[{}]}}"#,
                    revocation_generation + 1,
                    entries.join(",")
                );
                set = RevocationSet::default();
                set.apply(&serde_json::from_str(&feed).expect("harness feed"), now)
                    .expect("a full feed applies");
                revocation_generation += 1;
            }
            2 => now += i64::from(op & 0x3f) * 30,
            _ => {
                full_keys = !full_keys;
                keys_generation += 1;
            }
        }
    }
    allowed
}
