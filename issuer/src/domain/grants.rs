//! What an operator decided about a user, beyond their identity: a **ban** (no tokens while it
//! lasts) and **scopes** (carried in the `scope` claim of the user's next access token). Pure:
//! the types the store keeps, the checks of the admin API's input, and the rules applied when a
//! token is about to be issued. The admin routes and the issuing path call these; the store only
//! keeps what was decided.
//!
//! When a change takes effect:
//! - a ban: at once. Banning writes a `sub` revocation (every token issued so far is refused at
//!   the edge within the feed's delay, and the user's sessions end), and while the ban lasts
//!   no login or refresh of that user gets a token (403 `user_banned`). Lifting it (unban, or
//!   `until` passing) lets the user log in again; the sessions it ended stay ended.
//! - scopes: at the user's next token, i.e. the next refresh (at most `WEAUTH_ACCESS_TTL` later
//!   for a client that refreshes when its access token expires) or login. Tokens already issued
//!   keep the scopes they were issued with; to take a scope away at once, also revoke the user
//!   (`POST /v1/admin/revoke {"sub"}`), which ends their sessions so the next token comes from a
//!   new login.

use std::collections::BTreeSet;

/// Most scopes one user may hold.
pub const MAX_SCOPES: usize = 32;
/// Longest scope name.
pub const MAX_SCOPE_LEN: usize = 64;
/// Longest ban reason kept.
pub const MAX_REASON_LEN: usize = 500;

/// A ban as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ban {
    /// Unix seconds when the ban was set.
    pub created_at: i64,
    /// Unix seconds from which the ban no longer applies; `None`: until lifted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// The operator's note (shown to admins only, never to the user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Ban {
    /// Whether the ban applies at `now`.
    pub fn active(&self, now: i64) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// A user's grants as stored: scopes (sorted, unique) and the ban, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub scopes: Vec<String>,
    pub ban: Option<Ban>,
}

impl Grants {
    /// The ban in force at `now`, if any.
    pub fn active_ban(&self, now: i64) -> Option<&Ban> {
        self.ban.as_ref().filter(|ban| ban.active(now))
    }

    /// The `scope` claim for a token issued now: the scopes space-separated, or `None`.
    pub fn scope_claim(&self) -> Option<String> {
        (!self.scopes.is_empty()).then(|| self.scopes.join(" "))
    }
}

/// Scopes as every store keeps them: one space-separated text.
pub fn stored_scopes(scopes: &[String]) -> String {
    scopes.join(" ")
}

/// Scopes read back from [`stored_scopes`]'s text (none stored: no scopes).
pub fn scopes_from_stored(text: Option<&str>) -> Vec<String> {
    text.unwrap_or_default()
        .split_ascii_whitespace()
        .map(String::from)
        .collect()
}

/// Checks and normalises an admin's scope list: every name is an RFC 6749 §3.3 scope token
/// (printable ASCII without space, `"` or `\`), at most [`MAX_SCOPE_LEN`] bytes, at most
/// [`MAX_SCOPES`] names; duplicates are merged and the list sorted. An empty list clears.
///
/// # Errors
/// The first offending name, for the admin.
pub fn normalize_scopes(scopes: &[String]) -> Result<Vec<String>, String> {
    let mut set = BTreeSet::new();
    for scope in scopes {
        if scope.is_empty() || scope.len() > MAX_SCOPE_LEN {
            return Err(format!(
                "scope names are 1 to {MAX_SCOPE_LEN} characters; got {} characters",
                scope.len()
            ));
        }
        if !scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(format!(
                "`{}` is not a scope name: printable ASCII without space, `\"` or `\\`",
                scope.escape_default()
            ));
        }
        set.insert(scope.clone());
    }
    if set.len() > MAX_SCOPES {
        return Err(format!("at most {MAX_SCOPES} scopes per user"));
    }
    Ok(set.into_iter().collect())
}

/// Whether lifting `ban` at `now` must first wait for the ban's own `sub` revocation to be
/// recorded, given the latest `issued_before` of the user's `sub` entries: a ban is written
/// first and its revocation right after, dated once the ban is in force, so its
/// `issued_before` is after the ban's `created_at`. Lifted in between, the user could log in
/// at once, and the late revocation would then end that login and refuse its tokens. A `sub`
/// revocation written after the ban's creation by anyone else counts too: it covers every
/// token the ban's would up to then. A ban no longer in force refuses nothing, so lifting it
/// waits for nothing; nor does one set more than [`BAN_WRITE_WINDOW`] ago: its revocation
/// was written then, and the purge has removed it since (an entry lasts the access tokens'
/// lifetime and the leeway, about 16 minutes) — or the ban's call failed before writing it,
/// which a lift need not wait for either.
pub fn lift_waits_for_revocation(ban: &Ban, sub_issued_before: Option<i64>, now: i64) -> bool {
    ban.active(now)
        && now < ban.created_at.saturating_add(BAN_WRITE_WINDOW)
        && sub_issued_before.is_none_or(|before| before <= ban.created_at)
}

/// How long after a ban is set its revocation may still be on its way (seconds): the ban's
/// call writes it right after the ban, within its store calls' timeouts.
pub const BAN_WRITE_WINDOW: i64 = 60;

/// Checks an admin's ban request at `now` and builds the ban.
///
/// # Errors
/// `until` not in the future, or a reason that is too long or has control characters.
pub fn new_ban(until: Option<i64>, reason: Option<String>, now: i64) -> Result<Ban, String> {
    if until.is_some_and(|until| until <= now) {
        return Err(
            "`until` must be in the future (unix seconds); leave it out for a ban without end"
                .into(),
        );
    }
    let reason = reason.filter(|r| !r.trim().is_empty());
    if let Some(reason) = &reason {
        if reason.chars().count() > MAX_REASON_LEN {
            return Err(format!(
                "`reason` is limited to {MAX_REASON_LEN} characters"
            ));
        }
        if reason.chars().any(char::is_control) {
            return Err("`reason` must not contain control characters".into());
        }
    }
    Ok(Ban {
        created_at: now,
        until,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ban_without_until_active_forever() {
        let ban = new_ban(None, None, 100).unwrap();
        assert!(ban.active(100));
        assert!(ban.active(i64::MAX));
    }

    #[test]
    fn ban_with_until_lapses_at_until() {
        let ban = new_ban(Some(200), Some("spam".into()), 100).unwrap();
        assert!(ban.active(199));
        assert!(!ban.active(200));
        let grants = Grants {
            scopes: vec![],
            ban: Some(ban),
        };
        assert!(grants.active_ban(150).is_some());
        assert!(grants.active_ban(250).is_none());
    }

    #[test]
    fn lift_waits_for_the_revocation_of_a_ban_in_force() {
        let ban = new_ban(Some(200), None, 100).unwrap();
        // No `sub` entry yet, or only older ones: the ban's own is still to come.
        assert!(lift_waits_for_revocation(&ban, None, 100));
        assert!(lift_waits_for_revocation(&ban, Some(50), 100));
        assert!(lift_waits_for_revocation(&ban, Some(100), 100));
        // Its revocation (dated once the ban was in force, so after it) is recorded.
        assert!(!lift_waits_for_revocation(&ban, Some(101), 100));
        // Lapsed: nothing to wait for — inside the write window too.
        let short = new_ban(Some(120), None, 100).unwrap();
        assert!(lift_waits_for_revocation(&short, None, 119));
        assert!(!lift_waits_for_revocation(&short, None, 120));
        // Set long ago, its revocation purged since (no `sub` entry left): lifted at once, not
        // refused as if the ban were still being written.
        let open = new_ban(None, None, 100).unwrap();
        assert!(lift_waits_for_revocation(
            &open,
            None,
            100 + BAN_WRITE_WINDOW - 1
        ));
        assert!(!lift_waits_for_revocation(
            &open,
            None,
            100 + BAN_WRITE_WINDOW
        ));
        assert!(!lift_waits_for_revocation(&open, None, 100 + 3600));
    }

    #[test]
    fn ban_until_in_the_past_refused() {
        assert!(new_ban(Some(100), None, 100).is_err());
        assert!(new_ban(Some(5), None, 100).is_err());
    }

    #[test]
    fn ban_reason_checked_and_blank_dropped() {
        assert!(new_ban(None, Some("x".repeat(MAX_REASON_LEN + 1)), 1).is_err());
        assert!(new_ban(None, Some("line\nbreak".into()), 1).is_err());
        assert_eq!(new_ban(None, Some("  ".into()), 1).unwrap().reason, None);
    }

    #[test]
    fn scopes_sorted_deduplicated() {
        assert_eq!(
            normalize_scopes(&names(&["write", "admin", "write"])).unwrap(),
            names(&["admin", "write"])
        );
        assert_eq!(normalize_scopes(&[]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn scopes_bad_names_refused() {
        for bad in ["", "two words", "quo\"te", "back\\slash", "tab\t", "é"] {
            assert!(normalize_scopes(&names(&[bad])).is_err(), "{bad:?}");
        }
        assert!(normalize_scopes(&[("a".repeat(MAX_SCOPE_LEN + 1))]).is_err());
        let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect();
        assert!(normalize_scopes(&many).is_err());
        assert!(normalize_scopes(&names(&["api:read", "orders.write", "a-b_c~!"])).is_ok());
    }

    /// The scope limits are inclusive: a name of exactly `MAX_SCOPE_LEN` bytes and exactly
    /// `MAX_SCOPES` names are accepted.
    #[test]
    fn scopes_at_the_limits_accepted() {
        let longest = "a".repeat(MAX_SCOPE_LEN);
        assert_eq!(
            normalize_scopes(std::slice::from_ref(&longest)),
            Ok(vec![longest])
        );
        let most: Vec<String> = (0..MAX_SCOPES).map(|i| format!("s{i:02}")).collect();
        assert_eq!(normalize_scopes(&most), Ok(most.clone()));
    }

    /// A reason of exactly `MAX_REASON_LEN` characters (multi-byte ones too) is kept.
    #[test]
    fn ban_reason_of_the_longest_length_kept() {
        let reason = "é".repeat(MAX_REASON_LEN);
        assert_eq!(
            new_ban(None, Some(reason.clone()), 1).map(|ban| ban.reason),
            Ok(Some(reason))
        );
    }

    #[test]
    fn scope_claim_space_separated_or_none() {
        let grants = Grants {
            scopes: names(&["admin", "write"]),
            ban: None,
        };
        assert_eq!(grants.scope_claim().as_deref(), Some("admin write"));
        assert_eq!(Grants::default().scope_claim(), None);
    }
}
