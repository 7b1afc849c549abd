//! What the `weauth-issuer` fuzz target `issuer_http` does with one input, shared by the
//! libFuzzer target in `fuzz/fuzz_targets/` and by the replay test
//! `issuer/tests/fuzz_regressions.rs` (which includes this file with `#[path]`), so a crash
//! file replays through exactly the same code.
//!
//! The issuer reads a few request headers with pure functions before anything else sees the
//! request: the `Cookie` headers (`find_cookie`), `Origin`/`Referer` for the cookie CSRF rule
//! (`same_origin_request`), `X-Forwarded-For` behind trusted proxies (`client_ip`, then
//! `client_key` for the rate limiter), `Authorization` (`bearer`) and the trace headers
//! (`parse_traceparent`, `parse_b3`). They are reached through `weauth_issuer::fuzzing`, the
//! re-export that exists for this harness only.
//!
//! Every oracle is derived from the function's doc comment and checked against a model written
//! here (byte-wise, not with the issuer's helpers), plus properties a model cannot get wrong the
//! same way: where a returned slice lies in the input, what re-splitting the headers or
//! formatting an accepted value back must give.

// This is test code (a fuzz harness): a broken property must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weauth_issuer::fuzzing::{
    bearer, client_ip, client_key, find_cookie, parse_b3, parse_traceparent, same_origin_request,
    CookieLookup, IpNet,
};

/// The origins cookie-authenticated POSTs may come from in every run (as
/// `allowed_origins` makes them: ASCII serialisations, sorted).
pub const ALLOWED: [&str; 5] = [
    "http://127.0.0.1:3000",
    "http://localhost:8080",
    "https://[2001:db8::1]:8443",
    "https://auth.example.com",
    "https://h5.example.com",
];

/// The peer when the input's first field is not an address: inside the default trusted nets.
pub const DEFAULT_PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

/// Cookie names looked up in every run (the issuer's own), besides the names the input sends.
pub const COOKIE_NAMES: [&str; 7] = [
    "weauth_at",
    "__Host-weauth_at",
    "weauth_rt",
    "__Host-weauth_rb",
    "weauth_oauth",
    "__Host-weauth_oauth",
    "",
];

/// At most this many names taken from the input are looked up (beyond [`COOKIE_NAMES`]).
const MAX_INPUT_NAMES: usize = 16;
/// At most this many header values go through `bearer` and `parse_traceparent` besides those
/// of their own headers.
const MAX_VALUES: usize = 256;

/// One request as the input spells it.
pub struct Request<'a> {
    pub peer: IpAddr,
    pub trusted: Vec<IpNet>,
    /// Names in ASCII lower case, values as sent (bytes).
    pub headers: Vec<(String, &'a [u8])>,
}

impl<'a> Request<'a> {
    /// Reads the input (layout on [`issuer_http`]).
    pub fn parse(data: &'a [u8]) -> Request<'a> {
        let mut fields = data.split(|&b| b == 0xff);
        let peer = fields
            .next()
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|s| s.parse::<IpAddr>().ok())
            .unwrap_or(DEFAULT_PEER);
        let trusted = fields
            .next()
            .map(|f| {
                String::from_utf8_lossy(f)
                    .split(',')
                    .filter_map(IpNet::parse)
                    .collect()
            })
            .unwrap_or_default();
        let headers = fields
            .map(|field| {
                let (name, value) = match field.iter().position(|&b| b == b':') {
                    Some(i) => (&field[..i], &field[i + 1..]),
                    None => (field, &field[field.len()..]),
                };
                (String::from_utf8_lossy(name).to_ascii_lowercase(), value)
            })
            .collect();
        Request {
            peer,
            trusted,
            headers,
        }
    }

    /// Every value of header `name`, in order (as `HeaderMap::get_all`).
    pub fn all(&self, name: &str) -> Vec<&'a [u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .collect()
    }

    /// The first value of header `name` when it is text (as `HeaderMap::get` and
    /// `HeaderValue::to_str`: a second value is not looked at).
    pub fn first_str(&self, name: &str) -> Option<&'a str> {
        let (_, value) = self.headers.iter().find(|(n, _)| n == name)?;
        std::str::from_utf8(value).ok()
    }
}

/// What one input came to, for the replay test's expectations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Looked-up cookie names found exactly once / refused as sent several times.
    pub cookies_one: usize,
    pub cookies_several: usize,
    /// The CSRF rule's answer for the request's `Origin`/`Referer`.
    pub same_origin: bool,
    pub peer: IpAddr,
    pub client: IpAddr,
    pub bearer: Option<String>,
    pub traceparent: Option<([u8; 16], [u8; 8], bool)>,
    pub b3: Option<([u8; 16], [u8; 8], Option<bool>)>,
}

/// Target `issuer_http`. Input layout, fields separated by `0xFF`:
///
/// `peer 0xFF trusted 0xFF header 0xFF header ...`
///
/// - `peer`: the connection's address as text (anything else: [`DEFAULT_PEER`]);
/// - `trusted`: the trusted proxy networks, comma-separated, as `WEAUTH_TRUSTED_PROXIES`
///   spells them (`10.0.0.0/8,::1`; entries `IpNet::parse` refuses are left out);
/// - each header `name:value` (name compared in ASCII lower case, value the raw bytes after
///   the first `:`, not trimmed). Read as the issuer reads them: every `cookie` header as
///   bytes; the first `origin`, `referer`, `authorization`, `traceparent`, `b3` and `x-b3-*`
///   header when it is UTF-8; every `x-forwarded-for` line, lossy UTF-8, joined with `,`.
///   Every other UTF-8 value also goes through `bearer` and `parse_traceparent`.
///
/// Oracles (each function against a model of its doc comment, and properties):
/// - `find_cookie`: `One(v)` only when the name occurs exactly once among the UTF-8 pairs
///   (name trimmed of spaces and tabs only), `v` being that pair's value — the very bytes of
///   the input, between `=` and `;`/end, trimmed of spaces and tabs; `Several` only when it
///   occurs twice or more; the same answer with the headers joined into one or cut at every
///   `;`;
/// - `same_origin_request`: never without an `Origin`/`Referer`, nor for `Origin: null`, nor
///   with no allowed origin; `Referer` read only without `Origin`; for a plain
///   `scheme://host[:port]...` source exactly when its origin (lower case, default port
///   dropped) is one of [`ALLOWED`], and otherwise only for an `http(s):` source naming an
///   allowed host; every allowed origin, trimmed-around or with a path after it as a
///   `Referer`, is accepted;
/// - `client_ip`: the peer when it is not trusted or no `X-Forwarded-For` is sent, else the
///   right-most hop that is not trusted, or, when an unreadable hop comes first from the
///   right, the trusted hop right of it (the peer when there is none) — always the peer or an
///   address written as one of the hops; `client_key` keeps IPv4, maps IPv4-mapped IPv6 to
///   IPv4 and cuts other IPv6 to its /64, idempotently;
/// - `bearer`: exactly the trimmed rest of a trimmed value starting with `bearer ` (ASCII
///   case-insensitive), when not empty: a slice of the value, with no space at either end;
/// - `parse_traceparent`: exactly the W3C format the doc names (version `00` 55 characters,
///   a later version longer only with `-` after the flags, `ff` and upper case refused, ids
///   not zero), and an accepted one, formatted back, parses to the same;
/// - `parse_b3`: exactly the single `b3` header when valid, else the `X-B3-*` headers, the doc
///   describes; an accepted one formatted back (single and multi) parses to the same.
pub fn issuer_http(data: &[u8]) -> Outcome {
    let request = Request::parse(data);

    // Cookies.
    let cookie_headers = request.all("cookie");
    let mut names: Vec<String> = COOKIE_NAMES.iter().map(|n| (*n).to_owned()).collect();
    for header in &cookie_headers {
        for (name, _) in model_cookie_pairs(header) {
            if names.len() >= COOKIE_NAMES.len() + MAX_INPUT_NAMES {
                break;
            }
            let name = String::from_utf8(name.to_vec()).expect("pairs are UTF-8");
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let (mut cookies_one, mut cookies_several) = (0, 0);
    for name in &names {
        match check_find_cookie(&cookie_headers, name) {
            CookieLookup::Absent => {}
            CookieLookup::One(_) => cookies_one += 1,
            CookieLookup::Several => cookies_several += 1,
        }
    }

    // The CSRF rule.
    let allowed: Vec<String> = ALLOWED.iter().map(|a| (*a).to_owned()).collect();
    let same_origin = check_same_origin(
        request.first_str("origin"),
        request.first_str("referer"),
        &allowed,
    );

    // The client's address.
    let lines: Vec<String> = request
        .all("x-forwarded-for")
        .iter()
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect();
    let forwarded = (!lines.is_empty()).then(|| lines.join(","));
    let client = check_client_ip(request.peer, forwarded.as_deref(), &request.trusted);

    // Authorization.
    let bearer_token = check_bearer(request.first_str("authorization")).map(str::to_owned);
    assert_eq!(bearer(None), None, "a token without a header");

    // Trace headers.
    let traceparent = request.first_str("traceparent").and_then(check_traceparent);
    let b3 = check_b3(|name| request.first_str(name));

    // Every other text value through the string parsers too.
    for (_, value) in request.headers.iter().take(MAX_VALUES) {
        if let Ok(text) = std::str::from_utf8(value) {
            check_bearer(Some(text));
            check_traceparent(text);
        }
    }

    Outcome {
        cookies_one,
        cookies_several,
        same_origin,
        peer: request.peer,
        client,
        bearer: bearer_token,
        traceparent,
        b3,
    }
}

// ---------------------------------------------------------------------------------------------
// find_cookie

/// Trims spaces and tabs (what browsers trim around cookie names and values), bytes.
fn trim_cookie_space(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// The (name, value) pairs of one `Cookie` header, as the doc of `cookie_values` describes
/// them: the header cut at every `;`, a piece that is not UTF-8 skipped, a piece without `=`
/// no pair, name and value around the first `=` trimmed of spaces and tabs.
fn model_cookie_pairs(header: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut pairs = Vec::new();
    let mut start = 0;
    for end in (0..=header.len()).filter(|&i| i == header.len() || header[i] == b';') {
        let piece = &header[start..end];
        start = end + 1;
        if std::str::from_utf8(piece).is_err() {
            continue;
        }
        if let Some(eq) = piece.iter().position(|&b| b == b'=') {
            pairs.push((
                trim_cookie_space(&piece[..eq]),
                trim_cookie_space(&piece[eq + 1..]),
            ));
        }
    }
    pairs
}

/// The values of cookie `name` by the model, in order.
fn model_cookie_values<'a>(headers: &[&'a [u8]], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .flat_map(|header| model_cookie_pairs(header))
        .filter(|(n, _)| *n == name.as_bytes())
        .map(|(_, v)| v)
        .collect()
}

/// `One` and `Several` compared by value (`Several` and `Absent` as they are).
fn same_lookup(a: CookieLookup<'_>, b: CookieLookup<'_>) -> bool {
    match (a, b) {
        (CookieLookup::One(x), CookieLookup::One(y)) => x == y,
        (CookieLookup::Absent, CookieLookup::Absent)
        | (CookieLookup::Several, CookieLookup::Several) => true,
        _ => false,
    }
}

/// `find_cookie(headers, name)` checked against the model and its surroundings in the input.
pub fn check_find_cookie<'a>(headers: &[&'a [u8]], name: &str) -> CookieLookup<'a> {
    let got = find_cookie(headers.iter().copied(), name);
    let model = model_cookie_values(headers, name);
    match (got, model.as_slice()) {
        (CookieLookup::Absent, []) | (CookieLookup::Several, [_, _, ..]) => {}
        (CookieLookup::One(value), [expected]) => {
            assert_eq!(value.as_bytes(), *expected, "cookie {name:?}");
            // The very bytes of the input, not a copy (an empty value has no place to check).
            if !value.is_empty() {
                assert_eq!(
                    value.as_bytes().as_ptr(),
                    expected.as_ptr(),
                    "cookie {name:?}: {value:?} is not where the input sends it"
                );
                check_cookie_surroundings(headers, name, value);
            }
        }
        (got, model) => panic!(
            "cookie {name:?}: find_cookie says {got:?}, but the name is sent {} time(s): {:?}",
            model.len(),
            model
                .iter()
                .map(|v| String::from_utf8_lossy(v))
                .collect::<Vec<_>>()
        ),
    }
    // Every Cookie line counts alike: one header or many, cut anywhere at a `;`.
    let joined = headers.join(&b';');
    let whole = find_cookie([joined.as_slice()], name);
    assert!(
        same_lookup(got, whole),
        "cookie {name:?}: {got:?} from the lines, {whole:?} from them joined by `;`"
    );
    let pieces: Vec<&[u8]> = headers
        .iter()
        .flat_map(|h| h.split(|&b| b == b';'))
        .collect();
    let cut = find_cookie(pieces.iter().copied(), name);
    assert!(
        same_lookup(got, cut),
        "cookie {name:?}: {got:?} from the lines, {cut:?} from them cut at every `;`"
    );
    got
}

/// A found value sits in one header as `[;|start] SP* name SP* = SP* value SP* [;|end]`, with
/// no `;` in it and no `=` in the name, in a UTF-8 pair.
fn check_cookie_surroundings(headers: &[&[u8]], name: &str, value: &str) {
    let at = value.as_ptr() as usize;
    let header = headers
        .iter()
        .find(|h| {
            let start = h.as_ptr() as usize;
            start <= at && at + value.len() <= start + h.len()
        })
        .unwrap_or_else(|| panic!("cookie {name:?}: the value is in no header"));
    let offset = at - header.as_ptr() as usize;
    let (before, after) = (&header[..offset], &header[offset + value.len()..]);
    assert!(!value.contains(';'), "cookie {name:?}: value {value:?}");
    let pair_start = before.iter().rposition(|&b| b == b';').map_or(0, |i| i + 1);
    let pair_end = after.iter().position(|&b| b == b';').unwrap_or(after.len());
    assert!(
        trim_cookie_space(&after[..pair_end]).is_empty(),
        "cookie {name:?}: {value:?} is followed by more of its pair"
    );
    let head = trim_cookie_space(&before[pair_start..]);
    let Some((&b'=', key)) = head.split_last() else {
        panic!("cookie {name:?}: {value:?} does not follow an `=`");
    };
    assert!(!key.contains(&b'='), "cookie {name:?}: not the first `=`");
    assert_eq!(trim_cookie_space(key), name.as_bytes(), "cookie {name:?}");
    let pair = &header[pair_start..offset + value.len() + pair_end];
    assert!(std::str::from_utf8(pair).is_ok(), "cookie {name:?}: pair");
    assert!(
        !value.starts_with([' ', '\t']) && !value.ends_with([' ', '\t']),
        "cookie {name:?}: {value:?} untrimmed"
    );
}

// ---------------------------------------------------------------------------------------------
// same_origin_request

/// What the model knows of a source's origin.
#[derive(Debug, PartialEq, Eq)]
enum ModelOrigin {
    /// A plain `scheme://host[:port]` URL with this origin.
    Origin(String),
    /// Certainly no origin any allowed one equals (opaque, or not a URL).
    NotAllowed,
    /// Outside the plain form the model reads.
    Unknown,
}

/// The default port of a scheme whose URLs have a (scheme, host, port) origin.
fn default_port(scheme: &str) -> Option<Option<u16>> {
    match scheme {
        "http" | "ws" => Some(Some(80)),
        "https" | "wss" => Some(Some(443)),
        "ftp" => Some(Some(21)),
        _ => None,
    }
}

/// The origin of a plain absolute URL: visible ASCII, `scheme://host[:port]` then end, `/`,
/// `?` or `#`, the host a DNS name of letters, digits, `.` and `-` (not numeric, not
/// punycode) or a dotted-quad IPv4 address. Anything else is [`ModelOrigin::Unknown`].
fn model_origin(source: &str) -> ModelOrigin {
    let text = source.trim();
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return ModelOrigin::Unknown;
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return ModelOrigin::Unknown;
    };
    let scheme_ok = scheme.bytes().enumerate().all(|(i, b)| {
        b.is_ascii_alphabetic() || (i > 0 && (b.is_ascii_digit() || b"+-.".contains(&b)))
    });
    if scheme.is_empty() || !scheme_ok {
        return ModelOrigin::Unknown;
    }
    let scheme = scheme.to_ascii_lowercase();
    let Some(default) = default_port(&scheme) else {
        // Opaque origins; `blob:` takes its inner URL's, which `blob://` cannot be, but the
        // model does not go there.
        return if matches!(scheme.as_str(), "blob") {
            ModelOrigin::Unknown
        } else {
            ModelOrigin::NotAllowed
        };
    };
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let host = host.to_ascii_lowercase();
    if host.is_empty()
        || host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return ModelOrigin::Unknown;
    }
    let labels: Vec<&str> = host.split('.').collect();
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // Only a plain dotted quad; other numeric forms are the URL parser's business.
        let quad = labels.len() == 4
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 3
                    && (l.len() == 1 || !l.starts_with('0'))
                    && l.parse::<u16>().is_ok_and(|n| n <= 255)
            });
        if !quad {
            return ModelOrigin::Unknown;
        }
    } else {
        let odd_label = |l: &&str| {
            l.is_empty()
                || l.len() > 63
                || l.starts_with('-')
                || l.ends_with('-')
                || l.get(2..4) == Some("--")
                || l.bytes().all(|b| b.is_ascii_digit())
                || l.starts_with("0x")
        };
        if labels.iter().any(odd_label) {
            return ModelOrigin::Unknown;
        }
    }
    let port = match port {
        None | Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 10 => {
            match p.parse::<u64>() {
                Ok(n) if n <= 65_535 => Some(n as u16),
                _ => return ModelOrigin::NotAllowed, // not a URL
            }
        }
        Some(_) => return ModelOrigin::Unknown,
    };
    let port = if port == default { None } else { port };
    ModelOrigin::Origin(match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

/// The scheme and host of an allowed origin.
fn allowed_parts(origin: &str) -> (&str, &str) {
    let (scheme, rest) = origin.split_once("://").expect("allowed origins are URLs");
    let host = if rest.starts_with('[') {
        &rest[..=rest.find(']').expect("bracketed host")]
    } else {
        rest.split(':').next().unwrap_or(rest)
    };
    (scheme, host)
}

/// Whether an accepted source outside the model's plain form names an allowed origin's
/// scheme and (when it can be read off the text: ASCII, no `%`, a DNS name) its host.
fn plausibly_allowed(source: &str, allowed: &[String]) -> bool {
    let stripped = source.trim_matches(|c: char| c <= ' ' || c.is_whitespace());
    let normal: String = stripped
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect::<String>()
        .to_ascii_lowercase();
    let normal = normal.strip_prefix("blob:").unwrap_or(&normal);
    allowed.iter().any(|origin| {
        let (scheme, host) = allowed_parts(origin);
        let dns_name = host.bytes().any(|b| b.is_ascii_alphabetic()) && !host.starts_with('[');
        normal.starts_with(&format!("{scheme}:"))
            && (!dns_name || !normal.is_ascii() || normal.contains('%') || normal.contains(host))
    })
}

/// `same_origin_request(origin, referer, allowed)` checked; returns it.
pub fn check_same_origin(origin: Option<&str>, referer: Option<&str>, allowed: &[String]) -> bool {
    let got = same_origin_request(origin, referer, allowed);
    let source = match origin {
        Some(origin) => Some(origin),
        None => referer,
    };
    if origin.is_some() {
        // The Referer is read only without an Origin.
        for other in [
            None,
            Some(allowed[0].as_str()),
            Some("https://evil.example/"),
        ] {
            assert_eq!(
                same_origin_request(origin, other, allowed),
                got,
                "Origin {origin:?}: the Referer changed the answer"
            );
        }
    }
    assert!(
        !same_origin_request(origin, referer, &[]),
        "accepted with no allowed origin"
    );
    match source {
        None => assert!(!got, "accepted without Origin or Referer"),
        Some(source) => {
            if source.trim() == "null" {
                assert!(!got, "accepted `null` as {source:?}");
            }
            match model_origin(source) {
                ModelOrigin::Origin(o) => assert_eq!(
                    got,
                    allowed.contains(&o),
                    "source {source:?} has origin {o:?}; allowed {allowed:?}"
                ),
                ModelOrigin::NotAllowed => assert!(!got, "accepted {source:?}"),
                ModelOrigin::Unknown => assert!(
                    !got || plausibly_allowed(source, allowed),
                    "accepted {source:?}, which names no allowed scheme and host"
                ),
            }
        }
    }
    // Every allowed origin is accepted as an Origin with spaces around, and as a Referer with
    // whatever path, query or fragment the input's Referer has.
    let tail = referer
        .filter(|r| r.starts_with(['/', '?', '#']))
        .unwrap_or("/after-login?x=1#top");
    for origin in allowed {
        let spaced = format!(" \t{origin} ");
        assert!(
            same_origin_request(Some(&spaced), None, allowed),
            "allowed {spaced:?} refused"
        );
        let page = format!("{origin}{tail}");
        assert!(
            same_origin_request(None, Some(&page), allowed),
            "Referer {page:?} refused"
        );
    }
    got
}

// ---------------------------------------------------------------------------------------------
// client_ip, client_key

/// The address as IPv4 when it is IPv4-mapped IPv6 (`::ffff:a.b.c.d`), read off its bytes.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let o = v6.octets();
            if o[..10].iter().all(|&b| b == 0) && o[10] == 0xff && o[11] == 0xff {
                IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            } else {
                ip
            }
        }
        v4 => v4,
    }
}

/// Whether `ip` lies in `net` (`IpNet::contains`'s doc: an IPv4-mapped IPv6 address counts
/// as IPv4), by comparing the first `prefix` bits.
fn model_contains(net: &IpNet, ip: IpAddr) -> bool {
    fn same_prefix(a: u128, b: u128, bits: u32, prefix: u8) -> bool {
        let prefix = u32::from(prefix).min(bits);
        prefix == 0 || (a ^ b) >> (bits - prefix) == 0
    }
    match (net.addr, unmapped(ip)) {
        (IpAddr::V4(n), IpAddr::V4(i)) => same_prefix(
            u128::from(u32::from(n)),
            u128::from(u32::from(i)),
            32,
            net.prefix,
        ),
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            same_prefix(u128::from(n), u128::from(i), 128, net.prefix)
        }
        _ => false,
    }
}

/// `client_ip(peer, forwarded, trusted)` checked against the doc; returns it.
/// A hop's address as `client_ip`'s doc says: an address, bare, with a port, or an IPv6 one
/// in brackets.
fn model_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            let inner = hop.strip_prefix('[')?.strip_suffix(']')?;
            inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
        })
}

pub fn check_client_ip(peer: IpAddr, forwarded: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let got = client_ip(peer, forwarded, trusted);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| model_contains(net, ip));
    let hops: Vec<Option<IpAddr>> = forwarded
        .map(|f| f.split(',').map(|h| model_hop(h.trim())).collect())
        .unwrap_or_default();
    let expected = match forwarded {
        _ if !is_trusted(peer) => peer,
        None => peer,
        Some(_) => {
            // The right-most hop that is unreadable or not trusted; everything right of it is
            // a trusted proxy.
            let stop = (0..hops.len())
                .rev()
                .find(|&i| hops[i].is_none_or(|ip| !is_trusted(ip)));
            match stop {
                Some(i) => match hops[i] {
                    Some(ip) => ip,
                    None => hops.get(i + 1).map_or(peer, |ip| ip.expect("trusted")),
                },
                None => hops[0].expect("trusted"),
            }
        }
    };
    assert_eq!(
        got, expected,
        "client_ip(peer {peer}, X-Forwarded-For {forwarded:?}, trusted {trusted:?})"
    );
    // Properties the model restates: the peer or an address the header literally holds, the
    // peer whenever the peer is not a trusted proxy.
    assert!(
        got == peer || hops.contains(&Some(got)),
        "{got} from nowhere"
    );
    if !is_trusted(peer) {
        assert_eq!(got, peer, "an untrusted peer's header was read");
    }
    check_client_key(got);
    check_client_key(peer);
    for ip in hops.iter().flatten().take(MAX_VALUES) {
        check_client_key(*ip);
    }
    got
}

/// `client_key`: IPv4 kept, IPv4-mapped IPv6 as IPv4, other IPv6 cut to its /64.
pub fn check_client_key(ip: IpAddr) -> IpAddr {
    let key = client_key(ip);
    let expected = match unmapped(ip) {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(Ipv6Addr::from(o))
        }
    };
    assert_eq!(key, expected, "client_key({ip})");
    assert_eq!(client_key(key), key, "client_key is not idempotent at {ip}");
    key
}

// ---------------------------------------------------------------------------------------------
// bearer

/// `bearer(header)` checked; returns it.
pub fn check_bearer(header: Option<&str>) -> Option<&str> {
    let got = bearer(header);
    let Some(header) = header else {
        assert_eq!(got, None);
        return None;
    };
    let value = header.trim();
    let bytes = value.as_bytes();
    let expected =
        if bytes.len() >= 7 && bytes[..6].eq_ignore_ascii_case(b"bearer") && bytes[6] == b' ' {
            Some(value[7..].trim()).filter(|t| !t.is_empty())
        } else {
            None
        };
    assert_eq!(got, expected, "bearer({header:?})");
    if let Some(token) = got {
        assert!(!token.is_empty());
        assert_eq!(token, token.trim(), "untrimmed token");
        let (start, at) = (header.as_ptr() as usize, token.as_ptr() as usize);
        assert!(
            start + 7 <= at && at + token.len() <= start + header.len(),
            "bearer({header:?}) = {token:?}, not a slice of the header after its scheme"
        );
    }
    got
}

// ---------------------------------------------------------------------------------------------
// parse_traceparent, parse_b3

fn is_lower_hex(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => unreachable!("checked hex"),
    }
}

/// Lower-case hex digits into `out`, right-aligned (`None` unless they fit and are hex).
fn decode_hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if !text.len().is_multiple_of(2) || text.len() / 2 > out.len() || !is_lower_hex(text) {
        return None;
    }
    let skip = out.len() - text.len() / 2;
    for (i, pair) in text.chunks(2).enumerate() {
        out[skip + i] = hex_value(pair[0]) << 4 | hex_value(pair[1]);
    }
    Some(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The W3C `traceparent` as `parse_traceparent`'s doc states it.
fn model_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let v = value.trim().as_bytes();
    if v.len() < 55 {
        return None;
    }
    let version = &v[..2];
    if !is_lower_hex(version) || version == b"ff" {
        return None;
    }
    if version == b"00" && v.len() != 55 {
        return None;
    }
    if v.len() > 55 && v[55] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace = [0u8; 16];
    let mut parent = [0u8; 8];
    let mut flags = [0u8; 1];
    decode_hex_into(&v[3..35], &mut trace)?;
    decode_hex_into(&v[36..52], &mut parent)?;
    decode_hex_into(&v[53..55], &mut flags)?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags[0] & 1 == 1))
}

/// `parse_traceparent(value)` checked; returns it.
pub fn check_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let got = parse_traceparent(value);
    assert_eq!(
        got,
        model_traceparent(value),
        "parse_traceparent({value:?})"
    );
    if let Some((trace, parent, sampled)) = got {
        let v = value.trim();
        assert_eq!(&v[3..35], hex(&trace), "trace id of {value:?}");
        assert_eq!(&v[36..52], hex(&parent), "parent id of {value:?}");
        let flags = if sampled { "01" } else { "00" };
        for again in [
            format!("00-{}-{}-{flags}", hex(&trace), hex(&parent)),
            format!("cc-{}-{}-{flags}-future", hex(&trace), hex(&parent)),
        ] {
            assert_eq!(parse_traceparent(&again), got, "{value:?} as {again:?}");
        }
        let upper = format!("00-{}-{}-{flags}", hex(&trace), hex(&parent)).to_uppercase();
        if upper.bytes().any(|b| b.is_ascii_uppercase()) {
            assert_eq!(parse_traceparent(&upper), None, "upper case {upper:?}");
        }
        // The same ids continue the trace as B3 does.
        let single = format!("{}-{}-{}", hex(&trace), hex(&parent), u8::from(sampled));
        let b3 = parse_b3(|name| (name == "b3").then_some(single.as_str()));
        assert_eq!(b3, Some((trace, parent, Some(sampled))), "b3 {single:?}");
    }
    got
}

/// B3 as `parse_b3`'s doc states it: the single header when it holds valid ids, else the
/// multi headers — but for a lone `b3: 0`.
fn model_b3<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
) -> Option<([u8; 16], [u8; 8], Option<bool>)> {
    if header("b3").map(str::trim) == Some("0") {
        return None;
    }
    let single = header("b3").and_then(|single| {
        let fields: Vec<&str> = single.trim().split('-').collect();
        if !(2..=4).contains(&fields.len()) {
            return None;
        }
        let sampled = match fields.get(2) {
            None => None,
            Some(&"1") | Some(&"d") => Some(true),
            Some(&"0") => Some(false),
            Some(_) => return None,
        };
        if let Some(parent) = fields.get(3) {
            if parent.len() != 16 || !is_lower_hex(parent.as_bytes()) {
                return None;
            }
        }
        model_b3_ids(fields[0], fields[1], sampled)
    });
    single.or_else(|| {
        let sampled = if header("x-b3-flags") == Some("1") {
            Some(true)
        } else {
            match header("x-b3-sampled") {
                Some("1" | "true") => Some(true),
                Some("0" | "false") => Some(false),
                _ => None,
            }
        };
        model_b3_ids(header("x-b3-traceid")?, header("x-b3-spanid")?, sampled)
    })
}

fn model_b3_ids(
    trace: &str,
    span: &str,
    sampled: Option<bool>,
) -> Option<([u8; 16], [u8; 8], Option<bool>)> {
    if trace.len() != 16 && trace.len() != 32 {
        return None;
    }
    let mut trace_id = [0u8; 16];
    decode_hex_into(trace.as_bytes(), &mut trace_id)?;
    let mut span_id = [0u8; 8];
    if span.len() != 16 {
        return None;
    }
    decode_hex_into(span.as_bytes(), &mut span_id)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, sampled))
}

/// `parse_b3(header)` checked; returns it.
pub fn check_b3<'a>(
    header: impl Fn(&str) -> Option<&'a str> + Copy,
) -> Option<([u8; 16], [u8; 8], Option<bool>)> {
    let got = parse_b3(header);
    assert_eq!(
        got,
        model_b3(header),
        "parse_b3(b3 {:?}, x-b3-traceid {:?}, x-b3-spanid {:?}, x-b3-sampled {:?}, x-b3-flags {:?})",
        header("b3"),
        header("x-b3-traceid"),
        header("x-b3-spanid"),
        header("x-b3-sampled"),
        header("x-b3-flags"),
    );
    if let Some((trace, span, sampled)) = got {
        let (trace_hex, span_hex) = (hex(&trace), hex(&span));
        let suffix = match sampled {
            None => "",
            Some(true) => "-1",
            Some(false) => "-0",
        };
        let mut singles = vec![format!("{trace_hex}-{span_hex}{suffix}")];
        if trace[..8] == [0; 8] {
            // A 64-bit trace id is the low half of a 128-bit one.
            singles.push(format!("{}-{span_hex}{suffix}", &trace_hex[16..]));
        }
        for single in &singles {
            let again = parse_b3(|name| (name == "b3").then_some(single.as_str()));
            assert_eq!(again, got, "b3 {single:?}");
        }
        let flag = sampled.map(|s| if s { "1" } else { "0" });
        let multi = parse_b3(|name| match name {
            "x-b3-traceid" => Some(trace_hex.as_str()),
            "x-b3-spanid" => Some(span_hex.as_str()),
            "x-b3-sampled" => flag,
            _ => None,
        });
        assert_eq!(
            multi, got,
            "multi-header B3 {trace_hex} {span_hex} {flag:?}"
        );
    }
    got
}
