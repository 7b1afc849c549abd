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

/// Metric ids by full name, each defined with the host once per VM (the wasm build): Envoy's
/// wasm host hands out a new id at every definition and keeps its entry for the VM's life, and
/// every configuration (each LDS update) defines all of its stats — redefined each time, a
/// long-lived gateway's VMs grew by one entry per stat per update.
#[derive(Debug, Default)]
pub struct DefinedIds(std::collections::HashMap<String, u32>);

impl DefinedIds {
    /// The id of `name`, defined with `define` the first time (`None`: the host refused it,
    /// and it is asked again next time).
    pub fn get_or_define(
        &mut self,
        name: &str,
        define: impl FnOnce() -> Option<u32>,
    ) -> Option<u32> {
        if let Some(id) = self.0.get(name) {
            return Some(*id);
        }
        let id = define()?;
        self.0.insert(name.to_string(), id);
        Some(id)
    }
}

#[cfg(test)]
mod defined_ids_tests {
    use super::DefinedIds;

    #[test]
    fn each_name_defined_once_a_refusal_asked_again() {
        let mut ids = DefinedIds::default();
        let calls = std::cell::Cell::new(0);
        let define = |id: Option<u32>| {
            let calls = &calls;
            move || {
                calls.set(calls.get() + 1);
                id
            }
        };
        assert_eq!(
            ids.get_or_define("weauth.allowed", define(Some(7))),
            Some(7)
        );
        assert_eq!(
            ids.get_or_define("weauth.allowed", define(Some(9))),
            Some(7)
        );
        assert_eq!(calls.get(), 1, "defined once");
        assert_eq!(ids.get_or_define("weauth.jwks_keys", define(None)), None);
        assert_eq!(
            ids.get_or_define("weauth.jwks_keys", define(Some(8))),
            Some(8)
        );
        assert_eq!(
            ids.get_or_define("weauth.jwks_keys", define(Some(10))),
            Some(8)
        );
        assert_eq!(calls.get(), 3, "a refusal is asked again, once");
    }
}
