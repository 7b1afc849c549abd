//! The filter's stat names, one list for both builds: each is `weauth.<name>` (counters and
//! gauges) or `weauth.denied.<reason>` in Envoy's stats, whichever build defines them.

/// Counters besides the deny reasons.
pub const COUNTERS: &[&str] = &[
    "allowed",
    "anonymous",
    "cache_hit",
    "cache_miss",
    "jwks_fetch_ok",
    "jwks_fetch_fail",
    "feed_fetch_ok",
    "feed_fetch_fail",
    "feed_poll_floored",
    "revocation_stale_allowed",
];

/// Gauges.
pub const GAUGES: &[&str] = &["revocation_entries", "revocation_age_seconds", "jwks_keys"];

/// Every reason a request can be denied for (one counter each).
pub const DENY_REASONS: &[&str] = &[
    "missing",
    "ambiguous",
    "too_large",
    "malformed",
    "alg_not_allowed",
    "forbidden_header",
    "unknown_kid",
    "key_alg_mismatch",
    "bad_signature",
    "wrong_type",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "wrong_issuer",
    "wrong_audience",
    "revoked_jti",
    "revoked_sid",
    "revoked_sub",
    "insufficient_scope",
    "jwks_unavailable",
    "revocation_unavailable",
    "revocation_stale",
    "bad_path",
    "csrf",
    "internal",
];
