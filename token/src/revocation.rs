//! The revocation feed's wire types (`GET /v1/revocations`, see `docs/INTERFACES.md`).

use serde::{Deserialize, Serialize};

/// What an entry revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// One access token, by `jti`.
    Jti,
    /// Every token of one login session, by `sid` (logout, refresh-token reuse).
    Sid,
    /// Every token of one user issued before `issued_before`, by `sub` (ban, log out everywhere).
    Sub,
}

impl EntryKind {
    /// The kind's name as the feed spells it (`"jti"`, `"sid"`, `"sub"`): the same text as its
    /// serde form, for metric labels, logs and the stores' columns.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Jti => "jti",
            EntryKind::Sid => "sid",
            EntryKind::Sub => "sub",
        }
    }

    /// The kind named `name` (as [`EntryKind::name`] spells it); `None` for any other text.
    pub fn from_name(name: &str) -> Option<EntryKind> {
        [EntryKind::Jti, EntryKind::Sid, EntryKind::Sub]
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The issuer's sequence number for this entry (strictly increasing, never reused).
    pub seq: u64,
    pub kind: EntryKind,
    /// The `jti`, `sid` or `sub` revoked.
    pub value: String,
    /// For [`EntryKind::Sub`]: tokens with `iat` strictly below this are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<i64>,
    /// Unix seconds: the latest `exp` this entry can still matter for. Drop it after.
    pub until: i64,
}

impl Entry {
    /// Whether this entry still matters at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.until >= now
    }
}

/// A feed response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedResponse {
    /// The issuer's current sequence number: pass it as `since` next time.
    pub seq: u64,
    /// `true`: `entries` is the complete live set, replacing what the caller holds.
    /// `false`: `entries` are the additions after the caller's `since`.
    pub full: bool,
    /// The issuer's clock, unix seconds (lets a consumer notice clock skew).
    pub now: i64,
    pub entries: Vec<Entry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_response_roundtrip() {
        let text = r#"{"seq":42,"full":false,"now":100,"entries":[
            {"seq":41,"kind":"sid","value":"s","until":900},
            {"seq":42,"kind":"sub","value":"u","issued_before":99,"until":900}]}"#;
        let feed: FeedResponse = serde_json::from_str(text).unwrap();
        assert_eq!(feed.entries[1].kind, EntryKind::Sub);
        assert_eq!(feed.entries[1].issued_before, Some(99));
        let again: FeedResponse =
            serde_json::from_str(&serde_json::to_string(&feed).unwrap()).unwrap();
        assert_eq!(again, feed);
    }

    #[test]
    fn entry_kind_name_is_its_wire_form() {
        for kind in [EntryKind::Jti, EntryKind::Sid, EntryKind::Sub] {
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.name())
            );
            assert_eq!(EntryKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(EntryKind::from_name("ip"), None);
        assert_eq!(EntryKind::from_name("JTI"), None);
    }

    #[test]
    fn feed_response_unknown_kind_refused() {
        let text = r#"{"seq":1,"full":true,"now":1,"entries":[{"seq":1,"kind":"ip","value":"x","until":9}]}"#;
        assert!(serde_json::from_str::<FeedResponse>(text).is_err());
    }

    #[test]
    fn entry_is_live_until_inclusive() {
        let entry = Entry {
            seq: 1,
            kind: EntryKind::Jti,
            value: "j".into(),
            issued_before: None,
            until: 10,
        };
        assert!(entry.is_live(10));
        assert!(!entry.is_live(11));
    }
}
