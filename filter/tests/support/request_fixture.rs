//! The allowed request's claims and a revocation set of other tokens, as the bench's edge rows
//! have them: shared by `filter/examples/request_path.rs` (which times the pure steps) and
//! `filter/tests/request_allocations.rs` (which counts their allocations), included by `#[path]`.

use weauth_filter::revocation::RevocationSet;
use weauth_token::revocation::{Entry, EntryKind, FeedResponse};
use weauth_token::{Audience, Claims};

/// The fixture's clock (unix seconds).
pub const NOW: i64 = 1_700_000_000;

/// An access token's claims from `issuer`, for audience `weauth`, valid for an hour from [`NOW`].
pub fn claims(issuer: &str) -> Claims {
    Claims {
        iss: issuer.into(),
        aud: Audience::One("weauth".into()),
        sub: "u_0123456789abcdef".into(),
        sid: "s_0123456789abcdef".into(),
        jti: "j_0123456789abcdef".into(),
        iat: NOW,
        nbf: NOW,
        exp: NOW + 3600,
        openid: "o_0123456789abcdef0123456789".into(),
        unionid: None,
        appid: "wx0123456789abcdef".into(),
        scope: None,
    }
}

/// A set of `n` revoked token ids, none of them [`claims`]'s, loaded as one full feed answer.
pub fn revocations(n: usize) -> RevocationSet {
    let mut set = RevocationSet::default();
    let entries = (0..n)
        .map(|i| Entry {
            seq: i as u64 + 1,
            kind: EntryKind::Jti,
            value: format!("revoked-{i:016x}"),
            issued_before: None,
            until: NOW + 3600,
        })
        .collect();
    let feed = FeedResponse {
        seq: n as u64,
        full: true,
        now: NOW,
        entries,
    };
    let _ = set.apply(&feed, NOW);
    set
}
