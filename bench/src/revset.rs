//! The in-memory revocation set of `weauth-revocation-check`, the ext_authz service of the
//! comparison row: it follows the issuer's feed (`weauth_token::revocation::FeedResponse`) as
//! the filter does and answers each check from memory, which is the cheapest honest version of
//! "jwt_authn + an ext_authz call per request to a revocation service".
//!
//! The token was already verified by jwt_authn in front of it; the check only reads the claims
//! that revocation needs (`jti`, `sid`, `sub`, `iat`) from the payload jwt_authn forwards
//! (`forward_payload_header`, base64url JSON) or, failing that, from the bearer token's middle
//! segment.

use std::collections::HashMap;

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::Deserialize;
use weauth_token::revocation::{EntryKind, FeedResponse};

/// base64url that accepts padding or none (jwt_authn's forwarded payload is unpadded, but an
/// operator's proxy might pad it).
const B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The claims a revocation check needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RevocationClaims {
    #[serde(default)]
    pub jti: String,
    #[serde(default)]
    pub sid: String,
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub iat: i64,
}

impl RevocationClaims {
    /// Reads the claims from a base64url JSON payload (a JWT's middle segment).
    pub fn from_b64_payload(payload: &str) -> Option<RevocationClaims> {
        let json = B64.decode(payload.trim()).ok()?;
        serde_json::from_slice(&json).ok()
    }

    /// Reads the claims from `Bearer <jws>` without verifying the signature (jwt_authn did).
    pub fn from_bearer(authorization: &str) -> Option<RevocationClaims> {
        let token = authorization.strip_prefix("Bearer ")?;
        let mut parts = token.split('.');
        let _header = parts.next()?;
        RevocationClaims::from_b64_payload(parts.next()?)
    }
}

/// One live entry's expiry and, for `sub`, its cut-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Live {
    until: i64,
    issued_before: i64,
}

/// The set of live revocations, keyed by kind and value.
#[derive(Debug, Default, Clone)]
pub struct RevocationSet {
    seq: u64,
    entries: HashMap<(EntryKind, String), Live>,
}

impl RevocationSet {
    /// The feed sequence to pass as `since` next.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies one feed response: a full set replaces everything, otherwise entries are added.
    /// Entries already past `until` at `now` are not kept.
    pub fn apply(&mut self, feed: FeedResponse, now: i64) {
        if feed.full {
            self.entries.clear();
        }
        for entry in feed.entries {
            if !entry.is_live(now) {
                continue;
            }
            let live = Live {
                until: entry.until,
                issued_before: entry.issued_before.unwrap_or(i64::MAX),
            };
            self.entries.insert((entry.kind, entry.value), live);
        }
        self.seq = feed.seq;
    }

    /// Drops entries whose `until` is before `now`.
    pub fn purge(&mut self, now: i64) {
        self.entries.retain(|_, live| live.until >= now);
    }

    /// Whether a token with these claims is revoked.
    pub fn is_revoked(&self, claims: &RevocationClaims) -> bool {
        let hit = |kind: EntryKind, value: &str| self.entries.get(&(kind, value.to_string()));
        if !claims.jti.is_empty() && hit(EntryKind::Jti, &claims.jti).is_some() {
            return true;
        }
        if !claims.sid.is_empty() && hit(EntryKind::Sid, &claims.sid).is_some() {
            return true;
        }
        matches!(hit(EntryKind::Sub, &claims.sub), Some(live) if claims.iat < live.issued_before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weauth_token::revocation::Entry;

    fn entry(seq: u64, kind: EntryKind, value: &str, until: i64) -> Entry {
        Entry {
            seq,
            kind,
            value: value.into(),
            issued_before: (kind == EntryKind::Sub).then_some(100),
            until,
        }
    }

    fn claims(jti: &str, sid: &str, sub: &str, iat: i64) -> RevocationClaims {
        RevocationClaims {
            jti: jti.into(),
            sid: sid.into(),
            sub: sub.into(),
            iat,
        }
    }

    fn feed(seq: u64, full: bool, entries: Vec<Entry>) -> FeedResponse {
        FeedResponse {
            seq,
            full,
            now: 0,
            entries,
        }
    }

    #[test]
    fn revocation_set_jti_and_sid_revoke() {
        let mut set = RevocationSet::default();
        set.apply(
            feed(
                2,
                true,
                vec![
                    entry(1, EntryKind::Jti, "j1", 1000),
                    entry(2, EntryKind::Sid, "s1", 1000),
                ],
            ),
            10,
        );
        assert!(set.is_revoked(&claims("j1", "other", "u", 5)));
        assert!(set.is_revoked(&claims("j2", "s1", "u", 5)));
        assert!(!set.is_revoked(&claims("j2", "s2", "u", 5)));
        assert_eq!(set.seq(), 2);
    }

    #[test]
    fn revocation_set_sub_only_before_cutoff() {
        let mut set = RevocationSet::default();
        set.apply(feed(1, true, vec![entry(1, EntryKind::Sub, "u", 1000)]), 10);
        assert!(set.is_revoked(&claims("j", "s", "u", 99)));
        assert!(!set.is_revoked(&claims("j", "s", "u", 100)));
    }

    #[test]
    fn revocation_set_full_replaces_delta_adds() {
        let mut set = RevocationSet::default();
        set.apply(feed(1, true, vec![entry(1, EntryKind::Jti, "a", 1000)]), 10);
        set.apply(
            feed(2, false, vec![entry(2, EntryKind::Jti, "b", 1000)]),
            10,
        );
        assert_eq!(set.len(), 2);
        set.apply(feed(3, true, vec![entry(3, EntryKind::Jti, "c", 1000)]), 10);
        assert_eq!(set.len(), 1);
        assert!(!set.is_revoked(&claims("a", "", "", 0)));
    }

    #[test]
    fn revocation_set_expired_entries_dropped() {
        let mut set = RevocationSet::default();
        set.apply(
            feed(
                2,
                true,
                vec![
                    entry(1, EntryKind::Jti, "old", 5),
                    entry(2, EntryKind::Jti, "new", 50),
                ],
            ),
            10,
        );
        assert_eq!(set.len(), 1);
        set.purge(51);
        assert!(set.is_empty());
    }

    #[test]
    fn claims_from_bearer_reads_middle_segment() {
        let payload = B64.encode(br#"{"jti":"j","sid":"s","sub":"u","iat":7,"exp":9}"#);
        let header = format!("Bearer e30.{payload}.sig");
        assert_eq!(
            RevocationClaims::from_bearer(&header),
            Some(claims("j", "s", "u", 7))
        );
        assert_eq!(RevocationClaims::from_bearer("Basic abc"), None);
    }

    #[test]
    fn claims_from_padded_payload_accepted() {
        let payload = base64::engine::general_purpose::URL_SAFE.encode(br#"{"jti":"j"}"#);
        assert!(payload.ends_with('='));
        assert_eq!(
            RevocationClaims::from_b64_payload(&payload).map(|c| c.jti),
            Some("j".to_string())
        );
    }
}
