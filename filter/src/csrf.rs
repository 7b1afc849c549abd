//! The edge's CSRF rule, and the origin syntax its configuration uses. Pure.
//!
//! A browser attaches the `weauth_at` cookie to requests other sites make it send (a form
//! post, `fetch` with credentials); `SameSite=Lax` keeps it off cross-site POSTs but not off
//! requests from a sibling subdomain or another port of the same site. So a request that a
//! cookie token source authenticated and whose method is unsafe (anything but `GET`, `HEAD`,
//! `OPTIONS`) or that asks for a protocol `Upgrade` (a WebSocket handshake) passes only when the browser says it came from the same origin
//! (`Sec-Fetch-Site: same-origin`), from the user (`Sec-Fetch-Site: none`: typed URL,
//! bookmark), or from an origin the configuration lists (`csrf_allowed_origins`, compared with
//! `Origin`). Anything else — `cross-site`, `same-site`, `Origin: null`, neither header — is
//! refused with 403 `access_denied` (reason `csrf`, counter `weauth.denied.csrf`).
//!
//! A token in the `Authorization` header (or another header, or the query) is not affected:
//! no browser attaches it on its own. Only a browser that sends neither `Sec-Fetch-Site`
//! (Chromium 76+, Firefox 90+, Safari 16.4+; none sends it over plain http to a host other
//! than localhost) nor an allowed `Origin` is refused wrongly; list the site's own origin in
//! `csrf_allowed_origins` for those.

use crate::config::TokenSource;
use crate::verify::{Denial, Extracted};

/// Whether a method changes nothing (RFC 9110 §9.2.1, as far as CSRF goes): `GET`, `HEAD`,
/// `OPTIONS`. Methods are case-sensitive: `get` is not `GET`, so it is unsafe.
pub fn is_safe_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// Whether the CSRF rule applies: the rule has it on, the token came from a cookie source, and
/// the method is unsafe (a missing `:method` counts as unsafe) or the request asks for a
/// protocol `upgrade` (asked only then): a WebSocket handshake is a `GET` that opens a
/// two-way channel, sent with the cookie from a sibling subdomain's page, and no CORS rule
/// stands between that page and what the socket answers.
pub fn applies(
    rule_csrf: bool,
    sources: &[TokenSource],
    extracted: &Extracted<'_>,
    method: Option<&str>,
    upgrade: impl FnOnce() -> bool,
) -> bool {
    rule_csrf
        && matches!(extracted, Extracted::Found { source, .. }
            if matches!(sources.get(*source), Some(TokenSource::Cookie(_))))
        && (!method.is_some_and(is_safe_method) || upgrade())
}

/// The CSRF rule on a request it applies to ([`applies`]): `Ok` when `Sec-Fetch-Site` is
/// `same-origin` or `none` or `Origin` is one of `allowed` (lower-cased origins, as
/// [`parse_origin`] gives them), else the 403 to answer.
///
/// # Errors
/// The [`Denial`] (403 `access_denied`, reason `csrf`) naming what the request said.
pub fn check(
    sec_fetch_site: Option<&str>,
    origin: Option<&str>,
    allowed: &[String],
) -> Result<(), Denial> {
    if matches!(sec_fetch_site.map(str::trim), Some("same-origin" | "none")) {
        return Ok(());
    }
    let origin = origin.map(str::trim);
    if let Some(origin) = origin {
        if allowed
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        {
            return Ok(());
        }
    }
    // What the request said, shortened and printable (it is shown to the client and logged).
    let said = |value: Option<&str>| -> String {
        value.map_or_else(
            || "absent".to_string(),
            |value| {
                value
                    .chars()
                    .take(80)
                    .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
                    .collect()
            },
        )
    };
    Err(Denial {
        status: 403,
        error: "access_denied",
        description: format!(
            "cross-site request refused: a request authenticated by a cookie that can change \
             state (an unsafe method, or an Upgrade) must come from the same origin or an \
             allowed one (Sec-Fetch-Site: {}, \
             Origin: {}); send the token in the Authorization header instead",
            said(sec_fetch_site),
            said(origin)
        ),
        reason: "csrf",
        scope: None,
    })
}

/// Parses an allowed origin as a browser serializes it (RFC 6454 §6.2): `http` or `https`,
/// `://`, a host, an optional port other than the scheme's default, nothing else. Returns it
/// lower-cased (browsers send scheme and host in lower case).
///
/// # Errors
/// Why the text is not such an origin (for the configuration error).
pub fn parse_origin(text: &str) -> Result<String, String> {
    let lower = text.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://").ok_or_else(|| {
        format!("`{text}` is not an origin: expected scheme://host[:port], e.g. https://app.example.com")
    })?;
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => {
            return Err(format!(
                "`{text}`: the scheme must be http or https (`null` and other opaque origins \
                 cannot be allowed)"
            ))
        }
    };
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "`{text}` is not an origin: it has a path, query or fragment (an origin is \
             scheme://host[:port], with no trailing `/`)"
        ));
    }
    if rest.contains('@') {
        return Err(format!(
            "`{text}` is not an origin: it has user information"
        ));
    }
    // `[v6]:port` or `host:port`.
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (v6, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("`{text}`: unclosed `[` in the host"))?;
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(format!("`{text}`: `[{v6}]` is not an IPv6 address"));
        }
        match after {
            "" => (v6, None),
            after => (
                v6,
                Some(after.strip_prefix(':').ok_or_else(|| {
                    format!("`{text}` is not an origin: unexpected text after the host")
                })?),
            ),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && (rest.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !host_ok || host.starts_with('.') || host.ends_with('.') {
        return Err(format!("`{text}`: `{host}` is not a host name"));
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|n| n > 0);
        if !valid {
            return Err(format!("`{text}`: `{port}` is not a port"));
        }
        if port == default_port || port.trim_start_matches('0') == default_port {
            return Err(format!(
                "`{text}`: browsers leave the default port out of Origin; write {scheme}://{}",
                if rest.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host.to_string()
                }
            ));
        }
        if port.starts_with('0') {
            return Err(format!("`{text}`: write the port without leading zeros"));
        }
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<TokenSource> {
        vec![
            TokenSource::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            },
            TokenSource::Cookie("weauth_at".into()),
        ]
    }

    fn found(source: usize) -> Extracted<'static> {
        Extracted::Found { token: "t", source }
    }

    #[test]
    fn applies_cookie_post_yes() {
        assert!(applies(true, &sources(), &found(1), Some("POST"), || false));
        assert!(applies(true, &sources(), &found(1), Some("DELETE"), || {
            false
        }));
        assert!(applies(true, &sources(), &found(1), Some("PUT"), || false));
        assert!(applies(true, &sources(), &found(1), Some("PATCH"), || {
            false
        }));
        assert!(applies(true, &sources(), &found(1), Some("get"), || false));
        assert!(applies(true, &sources(), &found(1), None, || false));
    }

    #[test]
    fn applies_safe_methods_no() {
        for method in ["GET", "HEAD", "OPTIONS"] {
            assert!(
                !applies(true, &sources(), &found(1), Some(method), || false),
                "{method}"
            );
        }
    }

    #[test]
    fn applies_header_token_no() {
        assert!(!applies(true, &sources(), &found(0), Some("POST"), || {
            false
        }));
    }

    #[test]
    fn applies_no_token_no() {
        assert!(!applies(
            true,
            &sources(),
            &Extracted::Missing,
            Some("POST"),
            || false
        ));
        assert!(!applies(
            true,
            &sources(),
            &Extracted::Ambiguous,
            Some("POST"),
            || false
        ));
    }

    #[test]
    fn applies_safe_method_asking_for_an_upgrade_yes() {
        assert!(applies(true, &sources(), &found(1), Some("GET"), || true));
        assert!(!applies(true, &sources(), &found(0), Some("GET"), || true));
        assert!(!applies(false, &sources(), &found(1), Some("GET"), || true));
    }

    #[test]
    fn applies_rule_off_no() {
        assert!(!applies(false, &sources(), &found(1), Some("POST"), || {
            false
        }));
    }

    #[test]
    fn check_same_origin_and_none_pass() {
        assert!(check(Some("same-origin"), None, &[]).is_ok());
        assert!(check(Some("none"), Some("null"), &[]).is_ok());
    }

    #[test]
    fn check_cross_and_same_site_refused() {
        for site in ["cross-site", "same-site"] {
            let denial = check(Some(site), Some("https://evil.example"), &[]).unwrap_err();
            assert_eq!(denial.status, 403);
            assert_eq!(denial.reason, "csrf");
            assert_eq!(denial.error, "access_denied");
            assert!(denial.description.contains(site), "{}", denial.description);
            assert!(denial.description.contains("https://evil.example"));
        }
    }

    #[test]
    fn check_origin_null_refused() {
        assert!(check(None, Some("null"), &["https://app.example".into()]).is_err());
    }

    #[test]
    fn check_no_headers_refused() {
        let denial = check(None, None, &[]).unwrap_err();
        assert!(denial.description.contains("Origin: absent"));
    }

    #[test]
    fn check_allowed_origin_passes_whatever_the_site() {
        let allowed = vec!["https://app.example.com".to_string()];
        assert!(check(
            Some("cross-site"),
            Some("https://app.example.com"),
            &allowed
        )
        .is_ok());
        assert!(check(None, Some("HTTPS://APP.example.com"), &allowed).is_ok());
        assert!(check(
            Some("same-site"),
            Some("https://app.example.com:8443"),
            &allowed
        )
        .is_err());
    }

    #[test]
    fn check_description_is_printable() {
        let denial = check(Some("x\u{1}y"), Some(&"o".repeat(500)), &[]).unwrap_err();
        assert!(denial.description.chars().all(|c| (' '..='~').contains(&c)));
        assert!(denial.description.len() < 400);
    }

    #[test]
    fn parse_origin_accepts_origins() {
        for (text, want) in [
            ("https://app.example.com", "https://app.example.com"),
            ("HTTPS://App.Example.com", "https://app.example.com"),
            ("http://127.0.0.1:10000", "http://127.0.0.1:10000"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("https://[::1]", "https://[::1]"),
            ("http://localhost", "http://localhost"),
        ] {
            assert_eq!(parse_origin(text).as_deref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn parse_origin_refuses_what_is_not_an_origin() {
        for text in [
            "",
            "null",
            "*",
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://app.example.com?q",
            "https://user@app.example.com",
            "ftp://app.example.com",
            "https://",
            "https://app.example.com:",
            "https://app.example.com:0",
            "https://app.example.com:65536",
            "https://app.example.com:443",
            "http://app.example.com:80",
            "https://app.example.com:08443",
            "https://app_example.com",
            "https://.example.com",
            "https://[zz]",
            "https://[::1",
        ] {
            assert!(parse_origin(text).is_err(), "{text}");
        }
    }
}
