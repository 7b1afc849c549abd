//! The request's headers as the filter reads them (one read of the whole map per request), and
//! what it changes in them before forwarding. Pure.
//!
//! - [`Field`]: one header as a (name, value) pair of anything that reads as text — the native
//!   build's views into Envoy's own header map (`Cow::Borrowed`, no copy), the wasm build's
//!   owned copies, the tests' `(String, String)`.
//! - [`first`]: one header's first value.
//! - [`identity_to_remove`]: the filter owns its header namespace (`identity_header_prefix`,
//!   `x-weauth-` by default): every client header under it is removed from every forwarded
//!   request, configured in `claim_to_headers` or not, and so is a configured claim header
//!   outside the prefix. A header the filter then sets replaces the client's copies, so it is
//!   left out of the removals. Only headers the client actually sent are named, so a request
//!   without any costs no host call.
//! - [`cookie_without`]: the `Cookie` header without the token's pair (`forward_authorization`
//!   false with a cookie token source).

use std::borrow::Cow;

use crate::config::ClaimHeader;

/// The bytes of a header name or value as text: borrowed when they are UTF-8, a lossy copy
/// when not (a value that is not UTF-8 can then only fail verification). `from_utf8` first:
/// its ASCII fast path is several times quicker than `from_utf8_lossy`'s chunked walk (1 % of
/// Envoy's CPU on an allowed request when every header went through the latter).
pub fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// A header map as proxy-wasm's `proxy_get_header_map_pairs` serializes it — a `u32` count,
/// then a `u32` name length and a `u32` value length per pair, then each name and each value
/// followed by a NUL, all little endian — as headers borrowed from the buffer: text where the
/// bytes are UTF-8 (nearly always), a lossy copy where not. `None` when the buffer is not such
/// a map (truncated, lengths past its end).
///
/// Hand-written because the SDK's reader (`hostcalls::get_map_bytes`) copies every name and
/// value into a vector of its own — two allocations a header on every request — and aborts
/// the VM on a name that is not UTF-8.
pub fn parse_map_pairs(bytes: &[u8]) -> Option<Vec<Header<'_>>> {
    fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
        let word = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(word.try_into().ok()?) as usize)
    }
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = u32_at(bytes, 0)?;
    // Each pair takes 8 bytes of sizes and 2 of NULs at least: a count past that is a lie.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut headers = Vec::with_capacity(count);
    let mut at = count.checked_mul(8)?.checked_add(4)?;
    for pair in 0..count {
        let sizes = 4 + pair * 8;
        let (name_len, value_len) = (u32_at(bytes, sizes)?, u32_at(bytes, sizes + 4)?);
        let name = bytes.get(at..at.checked_add(name_len)?)?;
        at = at.checked_add(name_len)?.checked_add(1)?;
        let value = bytes.get(at..at.checked_add(value_len)?)?;
        at = at.checked_add(value_len)?.checked_add(1)?;
        headers.push((text(name), text(value)));
    }
    Some(headers)
}

/// One request header as the pure code reads it.
pub trait Field {
    fn name(&self) -> &str;
    fn value(&self) -> &str;
}

impl<N: AsRef<str>, V: AsRef<str>> Field for (N, V) {
    fn name(&self) -> &str {
        self.0.as_ref()
    }
    fn value(&self) -> &str {
        self.1.as_ref()
    }
}

/// A header as a host hands it over: borrowed from the host's own memory where it can be (the
/// native build), owned where it was copied out (the wasm build).
pub type Header<'h> = (Cow<'h, str>, Cow<'h, str>);

/// The first value of header `name` (lower case, as Envoy hands header names over).
pub fn first<'h>(headers: &'h [impl Field], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|header| header.name() == name)
        .map(Field::value)
}

/// Whether the client sent header `name` (lower case).
pub fn has(headers: &[impl Field], name: &str) -> bool {
    headers.iter().any(|header| header.name() == name)
}

/// The client headers to remove before forwarding: those under `prefix` and the configured
/// claim headers, except the ones in `set` (which the filter sets); each name once, in the
/// order received. A `_` in a name reads as `-`: Envoy passes names with underscores by
/// default (`headers_with_underscores_action: ALLOW`), and a CGI-style upstream (Rack, WSGI,
/// uWSGI) reads `x_weauth_sub` as `x-weauth-sub` — the client's copy would stand in for the
/// header the filter leaves out (a claim the token lacks, a request with no token).
pub fn identity_to_remove<'h>(
    headers: &'h [impl Field],
    prefix: &str,
    configured: &[ClaimHeader],
    set: &[&str],
) -> Vec<&'h str> {
    let mut out: Vec<&'h str> = Vec::new();
    // Usually every configured header is under the prefix (the default mappings are): then a
    // header outside it is none of them, and each header costs one prefix comparison.
    let any_outside = configured
        .iter()
        .any(|m| !starts_with_folded(&m.header, prefix));
    for header in headers {
        let name = header.name();
        let ours = starts_with_folded(name, prefix)
            || (any_outside
                && configured
                    .iter()
                    .any(|m| m.header.len() == name.len() && starts_with_folded(name, &m.header)));
        if ours && !set.contains(&name) && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// `name.starts_with(prefix)`, with `_` and `-` read alike (see [`identity_to_remove`]).
pub(crate) fn starts_with_folded(name: &str, prefix: &str) -> bool {
    let fold = |b: u8| if b == b'_' { b'-' } else { b };
    name.len() >= prefix.len()
        && name
            .bytes()
            .zip(prefix.bytes())
            .all(|(a, b)| fold(a) == fold(b))
}

/// What to do with the `Cookie` header so that the cookie `name` does not reach the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieEdit {
    /// The cookie is not there: leave the header alone.
    Unchanged,
    /// Replace every `Cookie` header with this one (the other cookies, `; `-joined).
    Set(String),
    /// No other cookie is left: remove the header.
    Remove,
}

/// Removes every `name=value` pair of the cookies `is_token` names from the request's `Cookie`
/// headers (all copies; HTTP/2 may send one per cookie).
pub fn cookie_without(headers: &[impl Field], is_token: impl Fn(&str) -> bool) -> CookieEdit {
    let pairs = || {
        headers
            .iter()
            .filter(|header| header.name() == "cookie")
            .flat_map(|header| header.value().split(';'))
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
    };
    fn key(pair: &str) -> &str {
        pair.split_once('=').map_or(pair, |(key, _)| key).trim()
    }
    // Most requests carry no token cookie to take out: looked for first, without allocating.
    if !pairs().any(|pair| is_token(key(pair))) {
        return CookieEdit::Unchanged;
    }
    let kept: Vec<&str> = pairs().filter(|pair| !is_token(key(pair))).collect();
    if kept.is_empty() {
        CookieEdit::Remove
    } else {
        CookieEdit::Set(kept.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn mapping(claim: &str, header: &str) -> ClaimHeader {
        ClaimHeader {
            claim: claim.into(),
            header: header.into(),
        }
    }

    #[test]
    fn first_returns_first_copy() {
        let h = headers(&[("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(first(&h, "a"), Some("1"));
        assert_eq!(first(&h, "c"), None);
    }

    #[test]
    fn identity_to_remove_unconfigured_prefixed_header_removed() {
        let h = headers(&[
            (":path", "/api/x"),
            ("x-weauth-sub", "spoof"),
            ("x-weauth-scope", "admin"),
            ("x-weauth-sid", "spoof"),
            ("x-weauth-scope", "again"),
            ("x-weauthentic", "not ours"),
            ("accept", "*/*"),
        ]);
        let configured = [mapping("sub", "x-weauth-sub")];
        assert_eq!(
            identity_to_remove(&h, "x-weauth-", &configured, &["x-weauth-sub"]),
            ["x-weauth-scope", "x-weauth-sid"]
        );
    }

    #[test]
    fn identity_to_remove_configured_header_outside_prefix_removed_unless_set() {
        let h = headers(&[("x-user", "spoof"), ("x-weauth-sub", "spoof")]);
        let configured = [mapping("sub", "x-user")];
        assert_eq!(
            identity_to_remove(&h, "x-weauth-", &configured, &[]),
            ["x-user", "x-weauth-sub"]
        );
        assert_eq!(
            identity_to_remove(&h, "x-weauth-", &configured, &["x-user"]),
            ["x-weauth-sub"]
        );
    }

    #[test]
    fn identity_to_remove_every_configured_header_under_the_prefix() {
        let h = headers(&[
            ("x-user", "not configured"),
            ("x-weauth-sub", "spoof"),
            ("x-weauth-other", "spoof"),
            ("accept", "*/*"),
        ]);
        let configured = [
            mapping("sub", "x-weauth-sub"),
            mapping("sid", "x-weauth-sid"),
        ];
        assert_eq!(
            identity_to_remove(&h, "x-weauth-", &configured, &[]),
            ["x-weauth-sub", "x-weauth-other"]
        );
        assert_eq!(
            identity_to_remove(&h, "x-weauth-", &configured, &["x-weauth-sub"]),
            ["x-weauth-other"]
        );
        // One mapping outside the prefix: that header is looked for too.
        let configured = [mapping("sub", "x-weauth-sub"), mapping("openid", "x-user")];
        assert_eq!(
            identity_to_remove(&h, "x-weauth-", &configured, &[]),
            ["x-user", "x-weauth-sub", "x-weauth-other"]
        );
    }

    #[test]
    fn identity_to_remove_underscore_spellings_removed_too() {
        let h = headers(&[
            ("x_weauth_sub", "spoof"),
            ("x-weauth_unionid", "spoof"),
            ("x_user", "spoof"),
            ("x-weauth-sub", "spoof"),
            ("x_weauthx", "kept"),
        ]);
        let configured = [mapping("sub", "x-weauth-sub"), mapping("openid", "x-user")];
        assert_eq!(
            identity_to_remove(&h, "x-weauth-", &configured, &["x-weauth-sub"]),
            ["x_weauth_sub", "x-weauth_unionid", "x_user"]
        );
    }

    #[test]
    fn identity_to_remove_clean_request_nothing() {
        let h = headers(&[(":path", "/"), ("authorization", "Bearer t")]);
        assert!(identity_to_remove(&h, "x-weauth-", &[], &[]).is_empty());
    }

    #[test]
    fn cookie_without_removes_every_copy() {
        let h = headers(&[
            ("cookie", "a=1; weauth_at=t1"),
            ("cookie", "weauth_at=t2;b=2"),
        ]);
        assert_eq!(
            cookie_without(&h, |name| name == "weauth_at"),
            CookieEdit::Set("a=1; b=2".into())
        );
    }

    #[test]
    fn cookie_without_only_cookie_removes_header() {
        let h = headers(&[("cookie", "weauth_at=t")]);
        assert_eq!(
            cookie_without(&h, |name| name == "weauth_at"),
            CookieEdit::Remove
        );
    }

    #[test]
    fn cookie_without_absent_unchanged() {
        let h = headers(&[("cookie", "weauth_atx=1; other=weauth_at")]);
        assert_eq!(
            cookie_without(&h, |name| name == "weauth_at"),
            CookieEdit::Unchanged
        );
        assert_eq!(
            cookie_without(&headers(&[]), |name| name == "weauth_at"),
            CookieEdit::Unchanged
        );
    }

    /// `pairs` as `proxy_get_header_map_pairs` writes them.
    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (name, value) in pairs {
            out.extend((name.len() as u32).to_le_bytes());
            out.extend((value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            out.extend(*name);
            out.push(0);
            out.extend(*value);
            out.push(0);
        }
        out
    }

    #[test]
    fn map_pairs_read_borrowed_and_lossy_where_not_utf8() {
        let bytes = serialize(&[
            (b":path", b"/api/me"),
            (b"authorization", b"Bearer abc"),
            (b"x-\xff", b"caf\xc3\xa9"),
            (b"empty", b""),
        ]);
        let headers = parse_map_pairs(&bytes).unwrap();
        assert_eq!(headers.len(), 4);
        assert_eq!(first(&headers, "authorization"), Some("Bearer abc"));
        assert!(matches!(headers[0].0, Cow::Borrowed(":path")));
        assert_eq!(
            headers[2].0, "x-\u{fffd}",
            "a name that is not UTF-8 does not abort"
        );
        assert_eq!(headers[2].1, "café");
        assert_eq!(headers[3].1, "");
        assert_eq!(parse_map_pairs(&[]).unwrap().len(), 0);
    }

    #[test]
    fn map_pairs_malformed_refused_without_panic() {
        let bytes = serialize(&[(b"authorization", b"Bearer abc"), (b"host", b"h")]);
        for cut in 0..bytes.len() {
            let _ = parse_map_pairs(&bytes[..cut]);
        }
        assert!(parse_map_pairs(&bytes[..bytes.len() - 3]).is_none());
        let mut lying = bytes.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_map_pairs(&lying).is_none());
        let mut long = bytes;
        long[4..8].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(parse_map_pairs(&long).is_none());
    }
}
