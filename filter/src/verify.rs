//! The per-request decision: find the token, verify it, check revocation and scopes.
//!
//! Pure: it takes the request's headers and path, the path's requirement, the current keys and
//! revocation snapshot, the per-VM cache and `now`, and returns a [`Decision`] — allow with the
//! claims, pass anonymously, or deny with an HTTP status, an OAuth error code (RFC 6750 §3.1)
//! and a description safe to show a client. It never imports `proxy_wasm`.
//!
//! Order: token found (else 401 / anonymous per the rule) → keys loaded (else 503) →
//! [`weauth_token::verify`] (algorithm allow-list, signature, `exp`/`nbf`/`iat` with skew,
//! `iss`, `aud`, `typ`) or a cache hit → revocation freshness (503 when stale in `deny` mode) →
//! revocation by `jti`, `sid`, `sub`/`issued_before` → scopes (403).

use std::rc::Rc;

use weauth_token::{Claims, KeySet, Validation, VerifyError};

use crate::cache::TokenCache;
use crate::config::{Require, StaleMode, TokenSource};
use crate::headers::Field;
use crate::revocation::RevocationSet;

/// The token found in a request, if any, borrowed from the request's headers (or its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted<'h> {
    /// No source carried a token.
    Missing,
    /// The token, and the index of the source (in the configured order) it came from.
    Found { token: &'h str, source: usize },
    /// The source was sent more than once — a header, a cookie, a query parameter (RFC 6750
    /// §2: one method, one token).
    Ambiguous,
}

/// Looks for the token in the configured sources, in order; the first source that carries one
/// wins. A header whose value does not start with the prefix (say `Basic ...` where `Bearer `
/// is expected) does not count as carrying one.
pub fn extract_token<'h>(
    sources: &[TokenSource],
    headers: &'h [impl Field],
    path: &'h str,
) -> Extracted<'h> {
    for (index, source) in sources.iter().enumerate() {
        let found = match source {
            TokenSource::Header { name, prefix } => {
                let mut values = headers
                    .iter()
                    .filter(|header| header.name().eq_ignore_ascii_case(name))
                    .map(Field::value);
                let first = values.next();
                // Envoy joins a repeated header with commas; a JWS never contains one. The
                // `memchr` crate's search (SIMD natively): 9 ns against `str::contains`'s 37 on
                // a 590-byte token.
                let joined = |value: &str| memchr::memchr(b',', value.as_bytes()).is_some();
                if values.next().is_some() || first.is_some_and(joined) {
                    return Extracted::Ambiguous;
                }
                first.and_then(|value| strip_prefix_ignore_case(value.trim(), prefix))
            }
            // Twice: a cookie planted from a sibling host (`Domain=` the parent, a longer
            // `Path`, so browsers send it first) beside the user's own — taking either would
            // let a planted token act for the user. Refused as a repeated header is.
            TokenSource::Cookie(name) => {
                let mut values = headers
                    .iter()
                    .filter(|header| header.name().eq_ignore_ascii_case("cookie"))
                    .flat_map(|header| header.value().split(';'))
                    // Spaces and tabs only, as browsers trim a name: a name ours only once a
                    // Unicode space is trimmed is another cookie, which any host may set
                    // (to a browser it does not begin with `__Host-`).
                    .filter_map(|pair| pair.split_once('='))
                    .filter(|(key, _)| key.trim_matches([' ', '\t']) == name)
                    .map(|(_, value)| value.trim_matches([' ', '\t']).trim_matches('"'));
                let first = values.next();
                if values.next().is_some() {
                    return Extracted::Ambiguous;
                }
                first
            }
            // Twice: as for a cookie.
            TokenSource::Query(name) => {
                let query = path
                    .split_once('?')
                    .map(|(_, query)| query.split_once('#').map_or(query, |(q, _)| q));
                let mut values = query
                    .into_iter()
                    .flat_map(|query| query.split('&'))
                    .filter_map(|pair| pair.split_once('='))
                    .filter(|(key, _)| key == name)
                    .map(|(_, value)| value);
                let first = values.next();
                if values.next().is_some() {
                    return Extracted::Ambiguous;
                }
                first
            }
        };
        if let Some(token) = found {
            return Extracted::Found {
                token: token.trim(),
                source: index,
            };
        }
    }
    Extracted::Missing
}

/// Whether a header source's value carries a token (one [`extract_token`] would read, empty
/// included): its prefix, in any case.
pub fn carries_token(value: &str, prefix: &str) -> bool {
    strip_prefix_ignore_case(value.trim(), prefix).is_some()
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    if value
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    {
        value.get(prefix.len()..)
    } else if prefix.ends_with(' ') && value.eq_ignore_ascii_case(prefix.trim_end()) {
        // `Authorization: Bearer` with nothing after it: a token source that is present but empty.
        Some("")
    } else {
        None
    }
}

/// What the revocation side looks like to this request.
#[derive(Debug, Clone, Copy)]
pub enum RevocationView<'a> {
    /// No feed configured: no revocation checks.
    Disabled,
    /// Configured but never loaded.
    NotLoaded { mode: StaleMode },
    /// Loaded; `stale` when the feed has not been reached within the staleness limit.
    Ready {
        set: &'a RevocationSet,
        generation: u64,
        stale: bool,
        mode: StaleMode,
    },
}

/// The state a request is judged against.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// `None` until the first JWKS is loaded.
    pub keys: Option<&'a KeySet>,
    /// Changes whenever the key set does (invalidates cached verifications).
    pub keys_generation: u64,
    pub revocation: RevocationView<'a>,
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// 400, 401, 403 or 503.
    pub status: u16,
    /// OAuth error code for the JSON body: `invalid_request`, `invalid_token`,
    /// `insufficient_scope`, `temporarily_unavailable`.
    pub error: &'static str,
    /// Client-safe text (never token content).
    pub description: String,
    /// Stable reason for metrics and logs (`missing`, `expired`, `revoked_sid`, ...).
    pub reason: &'static str,
    /// For 403: the scopes the resource needs.
    pub scope: Option<String>,
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A valid, unrevoked token with the needed scopes.
    Allow {
        /// Shared with the cache entry (no copy of the claims per request).
        claims: Rc<Claims>,
    },
    /// No check needed (rule `none`, or `optional` with no token): forward without identity.
    Anonymous,
    Deny(Denial),
}

/// Whether the cache answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    NotUsed,
    Hit,
    Miss,
}

/// The verdict on one request: a decision plus what the glue should count or do. (Not
/// `refresh::CallOutcome`, the result of one fetch call.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub cache: CacheUse,
    /// The revocation set was stale (or not loaded) and `stale_mode` is `allow`: counted.
    pub stale_allowed: bool,
    /// The token's `kid` is unknown: the JWKS may be worth refetching.
    pub unknown_key: bool,
}

impl Denial {
    fn new(
        status: u16,
        error: &'static str,
        reason: &'static str,
        description: impl Into<String>,
    ) -> Denial {
        Denial {
            status,
            error,
            description: description.into(),
            reason,
            scope: None,
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3): plain `Bearer` when no token was sent,
    /// `Bearer error="...", error_description="..."` otherwise; none for 503 nor for a CSRF
    /// refusal (the token is not at fault: the request's origin is).
    pub fn www_authenticate(&self) -> Option<String> {
        match self.status {
            _ if self.reason == "csrf" => None,
            401 if self.reason == "missing" => Some("Bearer".into()),
            400 | 401 | 403 => {
                let mut value = format!(
                    "Bearer error=\"{}\", error_description=\"{}\"",
                    self.error,
                    quoted_safe(&self.description)
                );
                if let Some(scope) = &self.scope {
                    value.push_str(&format!(", scope=\"{}\"", quoted_safe(scope)));
                }
                Some(value)
            }
            _ => None,
        }
    }

    /// The JSON body `{"error": ..., "error_description": ...}`.
    pub fn body(&self) -> String {
        serde_json::json!({"error": self.error, "error_description": self.description}).to_string()
    }
}

/// RFC 6750 limits error_description to %x20-21 / %x23-5B / %x5D-7E: no `"` or `\`.
fn quoted_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if (' '..='~').contains(&c) => c,
            _ => ' ',
        })
        .collect()
}

fn unauthorized(error: &VerifyError) -> Denial {
    Denial::new(401, "invalid_token", error.reason(), error.to_string())
}

/// Judges one request. `scopes` are the scopes the matched rule requires.
pub fn decide(
    extracted: &Extracted<'_>,
    require: Require,
    scopes: &[String],
    validation: &Validation,
    snapshot: &Snapshot<'_>,
    cache: &mut TokenCache,
    now: i64,
) -> Verdict {
    let mut outcome = Verdict {
        decision: Decision::Anonymous,
        cache: CacheUse::NotUsed,
        stale_allowed: false,
        unknown_key: false,
    };
    let deny = |mut outcome: Verdict, denial: Denial| {
        outcome.decision = Decision::Deny(denial);
        outcome
    };
    let token = match (require, extracted) {
        (Require::None, _) => return outcome,
        (_, Extracted::Ambiguous) => {
            return deny(
                outcome,
                Denial::new(
                    400,
                    "invalid_request",
                    "ambiguous",
                    "the request carries more than one access token",
                ),
            )
        }
        (Require::Optional, Extracted::Missing) => return outcome,
        (Require::Required, Extracted::Missing) => {
            return deny(
                outcome,
                Denial::new(
                    401,
                    "invalid_token",
                    "missing",
                    "an access token is required",
                ),
            )
        }
        (_, Extracted::Found { token, .. }) => token,
    };
    let Some(keys) = snapshot.keys else {
        return deny(
            outcome,
            Denial::new(
                503,
                "temporarily_unavailable",
                "jwks_unavailable",
                "the token signing keys have not been loaded yet; retry shortly",
            ),
        );
    };
    // Refuse an oversized token before looking it up in the cache.
    if token.len() > validation.max_token_bytes {
        return deny(
            outcome,
            unauthorized(&VerifyError::TooLarge(validation.max_token_bytes)),
        );
    }
    let key = *token;
    let (claims, checked_generation) = match cache.get(key, now, snapshot.keys_generation) {
        Some(hit) => {
            outcome.cache = CacheUse::Hit;
            (hit.claims, Some(hit.revocation_generation))
        }
        None => {
            outcome.cache = CacheUse::Miss;
            match weauth_token::verify(token, keys, validation, now) {
                Ok(claims) => (Rc::new(claims), None),
                Err(err) => {
                    outcome.unknown_key = err == VerifyError::UnknownKey;
                    return deny(outcome, unauthorized(&err));
                }
            }
        }
    };
    let revocation_generation = match snapshot.revocation {
        RevocationView::Disabled => 0,
        RevocationView::NotLoaded {
            mode: StaleMode::Deny,
        } => {
            return deny(
                outcome,
                Denial::new(
                    503,
                    "temporarily_unavailable",
                    "revocation_unavailable",
                    "the revocation list has not been loaded yet; retry shortly",
                ),
            )
        }
        RevocationView::NotLoaded {
            mode: StaleMode::Allow,
        } => {
            outcome.stale_allowed = true;
            0
        }
        RevocationView::Ready {
            stale: true,
            mode: StaleMode::Deny,
            ..
        } => {
            return deny(
                outcome,
                Denial::new(
                    503,
                    "temporarily_unavailable",
                    "revocation_stale",
                    "the revocation list is out of date; retry shortly",
                ),
            )
        }
        RevocationView::Ready {
            set,
            generation,
            stale,
            ..
        } => {
            outcome.stale_allowed = stale;
            if checked_generation != Some(generation) {
                if let Some(revoked) = set.check(&claims) {
                    cache.remove(key);
                    return deny(
                        outcome,
                        Denial::new(
                            401,
                            "invalid_token",
                            revoked.reason(),
                            "the token has been revoked",
                        ),
                    );
                }
            }
            generation
        }
    };
    match checked_generation {
        // A hit checked at this generation already: no second lookup.
        Some(checked) if checked == revocation_generation => {}
        Some(_) => cache.mark_checked(key, revocation_generation),
        None => cache.insert(
            key,
            Rc::clone(&claims),
            validation.leeway,
            snapshot.keys_generation,
            revocation_generation,
        ),
    }
    if !claims.has_scopes(scopes) {
        let mut denial = Denial::new(
            403,
            "insufficient_scope",
            "insufficient_scope",
            "the token lacks a scope this resource requires",
        );
        denial.scope = Some(scopes.join(" "));
        return deny(outcome, denial);
    }
    outcome.decision = Decision::Allow { claims };
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use weauth_token::revocation::{Entry, EntryKind, FeedResponse};
    use weauth_token::{Algorithm, Audience, Jwks, SigningKey};

    const NOW: i64 = 1_700_000_000;

    fn signing_key() -> SigningKey {
        SigningKey::from_seed(Algorithm::EdDSA, &[9u8; 32]).unwrap()
    }

    fn keys() -> KeySet {
        KeySet::from_jwks(&Jwks {
            keys: vec![signing_key().jwk()],
        })
        .0
    }

    fn validation() -> Validation {
        Validation::new("https://issuer", vec!["weauth".into()])
    }

    fn claims() -> Claims {
        Claims {
            iss: "https://issuer".into(),
            aud: Audience::One("weauth".into()),
            sub: "u1".into(),
            sid: "s1".into(),
            jti: "j1".into(),
            iat: NOW,
            nbf: NOW,
            exp: NOW + 900,
            openid: "o1".into(),
            unionid: None,
            appid: "wx".into(),
            scope: Some("read".into()),
        }
    }

    fn token_for(claims: &Claims) -> String {
        weauth_token::sign(claims, &signing_key()).unwrap()
    }

    fn found(token: &str) -> Extracted<'_> {
        Extracted::Found { token, source: 0 }
    }

    fn revoked_set(kind: EntryKind, value: &str) -> RevocationSet {
        let mut set = RevocationSet::default();
        set.apply(
            &FeedResponse {
                seq: 1,
                full: true,
                now: NOW,
                entries: vec![Entry {
                    seq: 1,
                    kind,
                    value: value.into(),
                    issued_before: (kind == EntryKind::Sub).then_some(NOW + 1),
                    until: NOW + 900,
                }],
            },
            NOW,
        )
        .unwrap();
        set
    }

    fn run(
        extracted: Extracted,
        require: Require,
        scopes: &[String],
        snapshot: Snapshot<'_>,
    ) -> Verdict {
        let mut cache = TokenCache::new(10);
        decide(
            &extracted,
            require,
            scopes,
            &validation(),
            &snapshot,
            &mut cache,
            NOW,
        )
    }

    fn denial(outcome: &Verdict) -> &Denial {
        match &outcome.decision {
            Decision::Deny(denial) => denial,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    fn ready(set: &RevocationSet, stale: bool, mode: StaleMode) -> RevocationView<'_> {
        RevocationView::Ready {
            set,
            generation: 1,
            stale,
            mode,
        }
    }

    #[test]
    fn decide_valid_token_allowed() {
        let keys = keys();
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: RevocationView::Disabled,
        };
        let outcome = run(
            found(&token_for(&claims())),
            Require::Required,
            &[],
            snapshot,
        );
        assert!(matches!(outcome.decision, Decision::Allow { ref claims } if claims.sub == "u1"));
        assert_eq!(outcome.cache, CacheUse::Miss);
    }

    #[test]
    fn decide_missing_required_plain_challenge() {
        let keys = keys();
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: RevocationView::Disabled,
        };
        let outcome = run(Extracted::Missing, Require::Required, &[], snapshot);
        let denial = denial(&outcome);
        assert_eq!(denial.status, 401);
        assert_eq!(denial.www_authenticate().as_deref(), Some("Bearer"));
    }

    #[test]
    fn decide_missing_optional_anonymous() {
        let snapshot = Snapshot {
            keys: None,
            keys_generation: 0,
            revocation: RevocationView::Disabled,
        };
        assert_eq!(
            run(Extracted::Missing, Require::Optional, &[], snapshot).decision,
            Decision::Anonymous
        );
    }

    #[test]
    fn decide_invalid_optional_denied() {
        let keys = keys();
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: RevocationView::Disabled,
        };
        let outcome = run(found("garbage"), Require::Optional, &[], snapshot);
        assert_eq!(denial(&outcome).status, 401);
    }

    #[test]
    fn decide_none_skips_even_garbage() {
        let snapshot = Snapshot {
            keys: None,
            keys_generation: 0,
            revocation: RevocationView::Disabled,
        };
        assert_eq!(
            run(found("garbage"), Require::None, &[], snapshot).decision,
            Decision::Anonymous
        );
    }

    #[test]
    fn decide_expired_invalid_token_challenge() {
        let keys = keys();
        let mut old = claims();
        old.iat = NOW - 2000;
        old.nbf = NOW - 2000;
        old.exp = NOW - 1000;
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: RevocationView::Disabled,
        };
        let outcome = run(found(&token_for(&old)), Require::Required, &[], snapshot);
        let denial = denial(&outcome);
        assert_eq!(denial.reason, "expired");
        assert_eq!(
            denial.www_authenticate().unwrap(),
            "Bearer error=\"invalid_token\", error_description=\"the token has expired\""
        );
        let body: serde_json::Value = serde_json::from_str(&denial.body()).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["error_description"], "the token has expired");
    }

    #[test]
    fn decide_keys_not_loaded_503() {
        let snapshot = Snapshot {
            keys: None,
            keys_generation: 0,
            revocation: RevocationView::Disabled,
        };
        let outcome = run(
            found(&token_for(&claims())),
            Require::Required,
            &[],
            snapshot,
        );
        let denial = denial(&outcome);
        assert_eq!(denial.status, 503);
        assert_eq!(denial.www_authenticate(), None);
    }

    #[test]
    fn decide_unknown_kid_flagged() {
        let other = KeySet::from_jwks(&Jwks {
            keys: vec![SigningKey::from_seed(Algorithm::EdDSA, &[1u8; 32])
                .unwrap()
                .jwk()],
        })
        .0;
        let snapshot = Snapshot {
            keys: Some(&other),
            keys_generation: 1,
            revocation: RevocationView::Disabled,
        };
        let outcome = run(
            found(&token_for(&claims())),
            Require::Required,
            &[],
            snapshot,
        );
        assert!(outcome.unknown_key);
        assert_eq!(denial(&outcome).reason, "unknown_kid");
    }

    #[test]
    fn decide_revoked_sid_denied() {
        let keys = keys();
        let set = revoked_set(EntryKind::Sid, "s1");
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: ready(&set, false, StaleMode::Deny),
        };
        let outcome = run(
            found(&token_for(&claims())),
            Require::Required,
            &[],
            snapshot,
        );
        assert_eq!(denial(&outcome).reason, "revoked_sid");
        assert_eq!(denial(&outcome).status, 401);
    }

    #[test]
    fn decide_revoked_sub_denied() {
        let keys = keys();
        let set = revoked_set(EntryKind::Sub, "u1");
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: ready(&set, false, StaleMode::Deny),
        };
        let outcome = run(
            found(&token_for(&claims())),
            Require::Required,
            &[],
            snapshot,
        );
        assert_eq!(denial(&outcome).reason, "revoked_sub");
    }

    #[test]
    fn decide_stale_deny_503() {
        let keys = keys();
        let set = RevocationSet::default();
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: ready(&set, true, StaleMode::Deny),
        };
        let outcome = run(
            found(&token_for(&claims())),
            Require::Required,
            &[],
            snapshot,
        );
        assert_eq!(denial(&outcome).status, 503);
        assert_eq!(denial(&outcome).reason, "revocation_stale");
    }

    #[test]
    fn decide_stale_allow_passes_counted() {
        let keys = keys();
        let set = RevocationSet::default();
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: ready(&set, true, StaleMode::Allow),
        };
        let outcome = run(
            found(&token_for(&claims())),
            Require::Required,
            &[],
            snapshot,
        );
        assert!(matches!(outcome.decision, Decision::Allow { .. }));
        assert!(outcome.stale_allowed);
    }

    #[test]
    fn decide_stale_allow_still_checks_known_revocations() {
        let keys = keys();
        let set = revoked_set(EntryKind::Jti, "j1");
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: ready(&set, true, StaleMode::Allow),
        };
        let outcome = run(
            found(&token_for(&claims())),
            Require::Required,
            &[],
            snapshot,
        );
        assert_eq!(denial(&outcome).reason, "revoked_jti");
    }

    #[test]
    fn decide_not_loaded_deny_503() {
        let keys = keys();
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: RevocationView::NotLoaded {
                mode: StaleMode::Deny,
            },
        };
        let outcome = run(
            found(&token_for(&claims())),
            Require::Required,
            &[],
            snapshot,
        );
        assert_eq!(denial(&outcome).status, 503);
        assert_eq!(denial(&outcome).reason, "revocation_unavailable");
    }

    #[test]
    fn decide_bad_token_with_stale_set_401_not_503() {
        let keys = keys();
        let set = RevocationSet::default();
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: ready(&set, true, StaleMode::Deny),
        };
        let outcome = run(found("a.b.c"), Require::Required, &[], snapshot);
        assert_eq!(denial(&outcome).status, 401);
    }

    #[test]
    fn decide_oversized_token_refused_before_cache() {
        let keys = keys();
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: RevocationView::Disabled,
        };
        let outcome = run(found(&"a".repeat(9000)), Require::Required, &[], snapshot);
        assert_eq!(denial(&outcome).reason, "too_large");
        assert_eq!(outcome.cache, CacheUse::NotUsed);
    }

    #[test]
    fn decide_missing_scope_403() {
        let keys = keys();
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: RevocationView::Disabled,
        };
        let outcome = run(
            found(&token_for(&claims())),
            Require::Required,
            &["admin".into()],
            snapshot,
        );
        let denial = denial(&outcome);
        assert_eq!(denial.status, 403);
        assert_eq!(denial.error, "insufficient_scope");
        assert!(denial
            .www_authenticate()
            .unwrap()
            .ends_with("scope=\"admin\""));
    }

    #[test]
    fn decide_ambiguous_400() {
        let snapshot = Snapshot {
            keys: None,
            keys_generation: 0,
            revocation: RevocationView::Disabled,
        };
        assert_eq!(
            denial(&run(Extracted::Ambiguous, Require::Required, &[], snapshot)).status,
            400
        );
    }

    #[test]
    fn decide_second_request_hits_cache() {
        let keys = keys();
        let set = RevocationSet::default();
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: ready(&set, false, StaleMode::Deny),
        };
        let mut cache = TokenCache::new(10);
        let token = token_for(&claims());
        decide(
            &found(&token),
            Require::Required,
            &[],
            &validation(),
            &snapshot,
            &mut cache,
            NOW,
        );
        let second = decide(
            &found(&token),
            Require::Required,
            &[],
            &validation(),
            &snapshot,
            &mut cache,
            NOW,
        );
        assert_eq!(second.cache, CacheUse::Hit);
        assert!(matches!(second.decision, Decision::Allow { .. }));
    }

    #[test]
    fn decide_cached_token_revoked_after_new_generation() {
        let keys = keys();
        let empty = RevocationSet::default();
        let mut cache = TokenCache::new(10);
        let token = token_for(&claims());
        let before = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: ready(&empty, false, StaleMode::Deny),
        };
        decide(
            &found(&token),
            Require::Required,
            &[],
            &validation(),
            &before,
            &mut cache,
            NOW,
        );
        let set = revoked_set(EntryKind::Sid, "s1");
        let after = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: RevocationView::Ready {
                set: &set,
                generation: 2,
                stale: false,
                mode: StaleMode::Deny,
            },
        };
        let outcome = decide(
            &found(&token),
            Require::Required,
            &[],
            &validation(),
            &after,
            &mut cache,
            NOW,
        );
        assert_eq!(outcome.cache, CacheUse::Hit);
        assert_eq!(denial(&outcome).reason, "revoked_sid");
        assert!(cache.is_empty());
    }

    #[test]
    fn decide_cached_token_expires() {
        let keys = keys();
        let snapshot = Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: RevocationView::Disabled,
        };
        let mut cache = TokenCache::new(10);
        let token = token_for(&claims());
        decide(
            &found(&token),
            Require::Required,
            &[],
            &validation(),
            &snapshot,
            &mut cache,
            NOW,
        );
        let later = decide(
            &found(&token),
            Require::Required,
            &[],
            &validation(),
            &snapshot,
            &mut cache,
            NOW + 900 + 60,
        );
        assert_eq!(denial(&later).reason, "expired");
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sources() -> Vec<TokenSource> {
        vec![
            TokenSource::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            },
            TokenSource::Cookie("weauth_at".into()),
            TokenSource::Query("access_token".into()),
        ]
    }

    #[test]
    fn extract_header_prefix_case_insensitive() {
        let h = headers(&[("authorization", "bearer abc")]);
        let got = extract_token(&sources(), &h, "/");
        assert_eq!(
            got,
            Extracted::Found {
                token: "abc",
                source: 0
            }
        );
    }

    #[test]
    fn extract_header_other_scheme_ignored() {
        let h = headers(&[("authorization", "Basic abc")]);
        let got = extract_token(&sources(), &h, "/");
        assert_eq!(got, Extracted::Missing);
    }

    #[test]
    fn extract_header_twice_ambiguous() {
        let h = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        let got = extract_token(&sources(), &h, "/");
        assert_eq!(got, Extracted::Ambiguous);
    }

    #[test]
    fn extract_header_comma_joined_ambiguous() {
        let h = headers(&[("authorization", "Bearer a,Bearer b")]);
        let got = extract_token(&sources(), &h, "/");
        assert_eq!(got, Extracted::Ambiguous);
    }

    #[test]
    fn extract_cookie_found() {
        let h = headers(&[("cookie", "a=1; weauth_at=tok; b=2")]);
        let got = extract_token(&sources(), &h, "/");
        assert_eq!(
            got,
            Extracted::Found {
                token: "tok",
                source: 1
            }
        );
    }

    /// A cookie whose name is the token's only once a Unicode space is trimmed is not the
    /// token (a sibling host can set `\u{2000}__Host-weauth_at`: to a browser it lacks the
    /// prefix); spaces and tabs around the name are trimmed, as browsers do.
    #[test]
    fn extract_cookie_name_trimmed_of_spaces_and_tabs_only() {
        for planted in [
            "\u{2000}weauth_at=tok",
            "a=1;\u{a0}weauth_at=tok",
            "weauth_at\u{3000}=tok",
        ] {
            let h = headers(&[("cookie", planted)]);
            assert_eq!(
                extract_token(&sources(), &h, "/"),
                Extracted::Missing,
                "{planted:?}"
            );
        }
        let h = headers(&[("cookie", "a=1;\t weauth_at = \"tok\" ; b=2")]);
        assert_eq!(
            extract_token(&sources(), &h, "/"),
            Extracted::Found {
                token: "tok",
                source: 1
            }
        );
    }

    #[test]
    fn extract_cookie_twice_ambiguous() {
        // A token planted from a sibling host (sent first) beside the user's own; in one
        // header or in two (HTTP/2 may split the cookie header).
        for h in [
            headers(&[("cookie", "weauth_at=planted; a=1; weauth_at=own")]),
            headers(&[("cookie", "weauth_at=planted"), ("cookie", "weauth_at=own")]),
        ] {
            assert_eq!(extract_token(&sources(), &h, "/"), Extracted::Ambiguous);
        }
        // Another cookie whose name merely contains it is not a second one.
        let h = headers(&[("cookie", "xweauth_at=other; weauth_at=own")]);
        assert_eq!(
            extract_token(&sources(), &h, "/"),
            Extracted::Found {
                token: "own",
                source: 1
            }
        );
    }

    #[test]
    fn extract_query_twice_ambiguous() {
        let h = headers(&[]);
        let got = extract_token(&sources(), &h, "/api/x?access_token=a&access_token=b");
        assert_eq!(got, Extracted::Ambiguous);
    }

    #[test]
    fn extract_query_found() {
        let h = headers(&[]);
        let got = extract_token(&sources(), &h, "/api/x?foo=1&access_token=tok#frag");
        assert_eq!(
            got,
            Extracted::Found {
                token: "tok",
                source: 2
            }
        );
    }

    #[test]
    fn extract_header_wins_over_cookie() {
        let h = headers(&[("cookie", "weauth_at=c"), ("authorization", "Bearer h")]);
        let got = extract_token(&sources(), &h, "/");
        assert_eq!(
            got,
            Extracted::Found {
                token: "h",
                source: 0
            }
        );
    }

    #[test]
    fn extract_bare_bearer_is_empty_token() {
        let h = headers(&[("authorization", "Bearer")]);
        let got = extract_token(&sources(), &h, "/");
        assert_eq!(
            got,
            Extracted::Found {
                token: "",
                source: 0
            }
        );
    }

    /// A token of exactly `max_token_bytes` is verified; one byte over the limit is too large.
    #[test]
    fn decide_token_of_exactly_the_size_limit_verified() {
        let keys = keys();
        let token = token_for(&claims());
        let snapshot = || Snapshot {
            keys: Some(&keys),
            keys_generation: 1,
            revocation: RevocationView::Disabled,
        };
        let mut validation = validation();
        validation.max_token_bytes = token.len();
        let mut cache = TokenCache::new(10);
        let at_limit = decide(
            &found(&token),
            Require::Required,
            &[],
            &validation,
            &snapshot(),
            &mut cache,
            NOW,
        );
        assert!(
            matches!(at_limit.decision, Decision::Allow { .. }),
            "{at_limit:?}"
        );
        validation.max_token_bytes = token.len() - 1;
        let over = decide(
            &found(&token),
            Require::Required,
            &[],
            &validation,
            &snapshot(),
            &mut TokenCache::new(10),
            NOW,
        );
        assert_eq!(denial(&over).reason, "too_large");
    }

    /// A CSRF refusal is no token's fault: no `Bearer` challenge; and a challenge carries
    /// printable ASCII only (RFC 6750), whatever the text it quotes.
    #[test]
    fn www_authenticate_none_for_csrf_and_printable_ascii_only() {
        let csrf = crate::csrf::check(Some("cross-site"), None, &[]).unwrap_err();
        assert_eq!(csrf.status, 403);
        assert_eq!(csrf.www_authenticate(), None);
        assert_eq!(quoted_safe("a\u{1}é\"\\~"), "a  ''~");
    }

    #[test]
    fn www_authenticate_description_quotes_replaced() {
        let denial = Denial::new(401, "invalid_token", "x", "a \"quoted\" \\ text");
        assert!(denial
            .www_authenticate()
            .unwrap()
            .contains("a 'quoted' ' text"));
    }
}
