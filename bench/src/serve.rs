//! HTTP serving for the benchmark's own endpoints (the driver's revocation feed and the ext_authz
//! revocation check): the test crate's hyper glue (`weauth_tests::serve`), plus a query helper.

pub use weauth_tests::serve::{respond, Request, Response, ServerHandle as Server};

/// The value of query parameter `name` in `query` (no percent-decoding: the benchmark's
/// parameters are plain numbers).
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_param_exact_name_only() {
        let q = Some("since=42&wait=20&sincex=1");
        assert_eq!(query_param(q, "since"), Some("42"));
        assert_eq!(query_param(q, "wait"), Some("20"));
        assert_eq!(query_param(q, "nope"), None);
        assert_eq!(query_param(None, "since"), None);
    }
}
