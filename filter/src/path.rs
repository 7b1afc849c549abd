//! The path a rule is chosen for: what the upstream will see, not only what the client wrote.
//!
//! The filter runs before the router and may sit behind an Envoy that does not normalize
//! (`normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action` off, which is Envoy's
//! default) in front of an upstream that does. A request for `/public/../private` must then not
//! get the `public` rule. So the rule is chosen as follows (pure; see [`rule_for_path`]):
//!
//! 1. **Refused with 400** ([`PathError`]), because upstreams disagree on what they mean: a NUL
//!    or other control character (raw or `%00`–`%1F`, `%7F`), a raw `\`, an encoded `/` or `\`
//!    (`%2F`, `%5C`; Envoy's own `path_with_escaped_slashes_action: REJECT_REQUEST` does the
//!    same), an encoded `?` or `#` (`%3F`, `%23`: an upstream that decodes the path and splits
//!    it again serves `/api/stats%3F` as `/api/stats`, which no reading here would see), a
//!    double-encoded escape (`%25` followed by two hex digits, each written as itself or
//!    encoded — `%25%32e` is `%2e` once decoded — so an upstream that decodes twice cannot be
//!    walked either), a raw `#`, a malformed `%` escape, and a path that does not start with
//!    `/`.
//! 2. **Normalized** ([`normalize`]): percent-encoded unreserved characters (RFC 3986 §2.3:
//!    `A-Z a-z 0-9 - . _ ~`, so `%2E` too) are decoded, repeated slashes are merged, and dot
//!    segments are removed (RFC 3986 §5.2.4) — what Envoy's `normalize_path` +
//!    `merge_slashes` produce, but for a `..` after a `//`, which Envoy (removing dots
//!    first) and RFC 3986 read as climbing out of the empty segment: step 3 reads it that
//!    way too.
//! 3. **Ambiguous paths never get a laxer rule.** When the raw path could be read more than one
//!    way — it has dot segments, repeated slashes, `%` escapes or `;` — the rule is looked up
//!    for every reading an upstream may take: the raw path as written, the normalized path, the
//!    same with the empty segments of a `//` kept while removing dots, the normalized path with
//!    `;` parameters cut from each segment (Tomcat, Spring, Jetty) after removing the dots and
//!    before (Tomcat cuts first: `/public/.;/../admin` is `/admin` to it), and all of these
//!    after decoding every escape ([`readings`]). The strictest of those rules applies (a rule is at
//!    least as strict as another when its requirement is at least as strict and its scopes
//!    include the other's); when no single rule is the strictest (say, two different scope
//!    sets), the request is refused with 400.
//!
//! 4. **Lax upstreams.** Many frameworks route without regard to ASCII case (ASP.NET, Express
//!    by default) or to a trailing `/` (Express, Spring). So each reading's rule is looked up
//!    twice: with the rules' paths compared as written, and compared as such an upstream
//!    would (case-folded, the trailing `/` cut or added: the first rule any of those
//!    matches); the stricter applies — or, when neither is (two different scope sets), both at
//!    once: the higher requirement and the scopes of both (a path an upstream may serve either
//!    way needs what either rule asks). `/api/Admin/x` gets the `/api/admin/` rule's scopes,
//!    `/api/admin/stats/` the exact `/api/admin/stats` rule's; `/Public/x` keeps the default a
//!    case-sensitive upstream would serve it under.
//!
//! The `:path` forwarded upstream is not rewritten. A path without any of the characters of
//! step 3 takes a fast path: its rule lookups on the raw path, no allocation.
//!
//! With Envoy's normalization on (every config this project ships sets it) steps 2 and 3 find
//! nothing to do.

use std::borrow::Cow;

use crate::config::{EdgeRule, PathMatch, Require};

/// How a path is compared with a rule's path: ignoring ASCII case or not, with a `/` added
/// at its end or not ([`PathMatch::matches_lax`]; step 4 of the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Reading {
    fold_case: bool,
    add_slash: bool,
}

impl PathMatch {
    /// Whether `path` matches, compared as written.
    pub fn matches(&self, path: &str) -> bool {
        self.matches_as(path, Reading::default())
    }

    /// Whether `path` matches as an upstream lax about it reads it: ignoring ASCII case
    /// (ASP.NET, Express by default), and with its trailing `/` cut or one added (Express,
    /// Spring: `/a` and `/a/` are one route). No allocation. A match ignoring case includes
    /// the match in the same case, so each reading is compared once, folded.
    pub fn matches_lax(&self, path: &str) -> bool {
        let folded = |add_slash| Reading {
            fold_case: true,
            add_slash,
        };
        self.matches_as(path, folded(false))
            || match path.strip_suffix('/').filter(|head| !head.is_empty()) {
                Some(head) => self.matches_as(head, folded(false)),
                None => self.matches_as(path, folded(true)),
            }
    }

    /// Whether `path` (read as `how` says) matches.
    fn matches_as(&self, path: &str, how: Reading) -> bool {
        let same = |a: &[u8], b: &[u8]| {
            if how.fold_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        let path = path.as_bytes();
        // `path` + "/" equals `full`: `full` is one longer and ends with the added slash.
        let with_slash = |full: &[u8]| {
            full.len() == path.len() + 1
                && full.last() == Some(&b'/')
                && full.get(..path.len()).is_some_and(|head| same(path, head))
        };
        match self {
            PathMatch::Prefix(prefix) => {
                let prefix = prefix.as_bytes();
                path.get(..prefix.len())
                    .is_some_and(|head| same(head, prefix))
                    || (how.add_slash && with_slash(prefix))
            }
            PathMatch::Exact(exact) => {
                let exact = exact.as_bytes();
                if how.add_slash {
                    with_slash(exact)
                } else {
                    same(path, exact)
                }
            }
        }
    }
}

/// Why a request's path is refused (400 `invalid_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request has no path")]
    Missing,
    #[error("the request path does not start with '/'")]
    NotAbsolute,
    #[error("the request path contains a control character")]
    ControlCharacter,
    #[error("the request path contains a backslash")]
    Backslash,
    #[error("the request path contains an encoded '/' or '\\'")]
    EncodedSlash,
    #[error("the request path contains an encoded '?' or '#'")]
    EncodedDelimiter,
    #[error("the request path contains a malformed percent-escape")]
    BadEscape,
    #[error("the request path contains a fragment")]
    Fragment,
    #[error("the request path contains a double-encoded escape")]
    DoubleEncoded,
    #[error("the request path matches rules that cannot be ordered; send it normalized")]
    Ambiguous,
}

/// The path without its query string.
pub fn without_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(head, _)| head)
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Where the path goes on after a hex digit written at `at`, as itself (`e`) or as an escape
/// (`%65`); `None` when no hex digit is written there.
fn hex_digit_at(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at).copied()? {
        b'%' => {
            let high = hex(bytes.get(at + 1).copied()?)?;
            let low = hex(bytes.get(at + 2).copied()?)?;
            hex(high * 16 + low).map(|_| at + 3)
        }
        byte => hex(byte).map(|_| at + 1),
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Checks the characters of a path (query already removed) against step 1.
///
/// # Errors
/// The [`PathError`] of the first refused character.
pub fn check(path: &str) -> Result<(), PathError> {
    scan(path).map(|_| ())
}

/// [`check`], and in the same walk over the path whether it is plain — whether it cannot read
/// differently to an upstream that normalizes: no `//`, `/.`, `%` or `;`.
fn scan(path: &str) -> Result<bool, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut plain = true;
    let mut previous = 0u8;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'\\' => return Err(PathError::Backslash),
            b'#' => return Err(PathError::Fragment),
            b'%' => {
                let decoded = match (bytes.get(i + 1).copied(), bytes.get(i + 2).copied()) {
                    (Some(high), Some(low)) => match (hex(high), hex(low)) {
                        (Some(high), Some(low)) => high * 16 + low,
                        _ => return Err(PathError::BadEscape),
                    },
                    _ => return Err(PathError::BadEscape),
                };
                // Two hex digits after it once decoded, each raw or itself an escape: the
                // digits of `%25%32e` decode to those of `%2e` as surely as those of `%252e`.
                let double = hex_digit_at(bytes, i + 3)
                    .and_then(|next| hex_digit_at(bytes, next))
                    .is_some();
                match decoded {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    b'?' | b'#' => return Err(PathError::EncodedDelimiter),
                    b'%' if double => return Err(PathError::DoubleEncoded),
                    byte if byte.is_ascii_control() => return Err(PathError::ControlCharacter),
                    _ => {}
                }
                // Not plain: whatever follows the escape, `previous` no longer matters.
                plain = false;
                i += 3;
                continue;
            }
            b';' => plain = false,
            b'/' | b'.' if previous == b'/' => plain = false,
            byte if byte.is_ascii_control() => return Err(PathError::ControlCharacter),
            _ => {}
        }
        previous = byte;
        i += 1;
    }
    Ok(plain)
}

/// Decodes `%XX` escapes: only unreserved characters when `all` is false, every escape when
/// true (the path passed [`check`], so no escape decodes to `/`, `\` or a control character,
/// and invalid UTF-8 from a decoded escape is replaced, never trusted).
fn decode(path: &str, all: bool) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            if let (Some(high), Some(low)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                let decoded = high * 16 + low;
                if all || is_unreserved(decoded) {
                    out.push(decoded);
                    i += 3;
                    continue;
                }
                // Keep a reserved escape, upper-cased as RFC 3986 §6.2.2.1 says.
                out.push(b'%');
                out.extend(
                    [bytes.get(i + 1), bytes.get(i + 2)]
                        .into_iter()
                        .flatten()
                        .map(u8::to_ascii_uppercase),
                );
                i += 3;
                continue;
            }
        }
        out.push(byte);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Merges repeated slashes and removes dot segments (RFC 3986 §5.2.4; `..` never climbs
/// above the root). The input starts with `/`; so does the output.
fn merge_and_remove_dots(path: &str) -> String {
    remove_dots(path, true)
}

/// Removes dot segments (RFC 3986 §5.2.4; `..` never climbs above the root), with repeated
/// slashes merged first, or kept as empty segments that a `..` removes like any other (RFC
/// 3986, a WHATWG URL parser, and Envoy, whose `merge_slashes` comes after `normalize_path`):
/// `/p/../q//../r` is `/r` the first way, `/q/r` the second. The input starts with `/`; so
/// does the output.
fn remove_dots(path: &str, merge_slashes: bool) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split('/').skip(1).peekable();
    let mut trailing_slash = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "" if merge_slashes || last => trailing_slash = last,
            "." => trailing_slash = last,
            ".." => {
                segments.pop();
                trailing_slash = last;
            }
            other => {
                segments.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

/// Cuts `;parameters` from every segment (`/a;x=1/b;y` → `/a/b`).
fn strip_parameters(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split_once(';').map_or(segment, |(head, _)| head))
        .collect::<Vec<_>>()
        .join("/")
}

/// The normalized form of a path (query removed, [`check`]ed): unreserved escapes decoded,
/// slashes merged, dot segments removed.
pub fn normalize(path: &str) -> String {
    merge_and_remove_dots(&decode(path, false))
}

/// Every reading an upstream may take of a checked path (see the module docs, step 3): the
/// path as written, then for each decoding (unreserved escapes; every escape, when there is
/// one): dot segments removed, with slashes merged first and with the empty segments of a
/// `//` kept (then merged, as Envoy does); with `;` parameters, those cut from each segment
/// after removing the dots (Envoy normalizes, the upstream cuts) and before (Tomcat cuts,
/// then resolves: `/public/.;/../admin` is `/admin` to it, while `.;` is an ordinary segment
/// to a `..` resolved first; and cutting `/;a/` leaves a `//`).
pub fn readings(path: &str) -> Vec<String> {
    let mut out = vec![path.to_string()];
    let mut add = |reading: String| {
        if !out.contains(&reading) {
            out.push(reading);
        }
    };
    let decodings: &[bool] = if path.contains('%') {
        &[false, true]
    } else {
        &[false]
    };
    for &all in decodings {
        let decoded = decode(path, all);
        let resolved = resolutions(&decoded);
        if decoded.contains(';') {
            // Cut after the dots are removed, and before.
            for reading in &resolved {
                resolutions(&strip_parameters(reading))
                    .into_iter()
                    .for_each(&mut add);
            }
            resolutions(&strip_parameters(&decoded))
                .into_iter()
                .for_each(&mut add);
        }
        resolved.into_iter().for_each(&mut add);
    }
    out
}

/// `text` with its dot segments removed, the slashes merged first; and, when it has a `//`,
/// with its empty segments kept, then that merged too (Envoy's reading). Without a `//` the
/// ways agree: one reading.
fn resolutions(text: &str) -> Vec<String> {
    let mut out = vec![merge_and_remove_dots(text)];
    if text.contains("//") {
        let kept = remove_dots(text, false);
        out.push(merge_and_remove_dots(&kept));
        out.push(kept);
    }
    out
}

fn rank(require: Require) -> u8 {
    match require {
        Require::None => 0,
        Require::Optional => 1,
        Require::Required => 2,
    }
}

/// The strictest of `rules` ([`at_least_as_strict`] of every other), if one is.
fn strictest<'a>(rules: &[(Require, &'a [String])]) -> Result<(Require, &'a [String]), PathError> {
    rules
        .iter()
        .copied()
        .find(|candidate| {
            rules
                .iter()
                .all(|other| at_least_as_strict(*candidate, *other))
        })
        .ok_or(PathError::Ambiguous)
}

/// The strictest edge settings: CSRF on, the token not forwarded.
const STRICTEST_EDGE: EdgeRule = EdgeRule {
    csrf: true,
    forward_authorization: false,
};

/// A rule's requirement and scopes: borrowed from the configuration, owned only when two rules
/// had to be combined ([`combined`]).
pub type PathRule<'a> = (Require, Cow<'a, [String]>);

/// The stricter of `a` and `b`, or — when neither is — both at once: the higher requirement
/// and the scopes of both (allocating only then).
fn combined<'a>(a: PathRule<'a>, b: (Require, &'a [String])) -> PathRule<'a> {
    if at_least_as_strict((a.0, &a.1), b) {
        return a;
    }
    if at_least_as_strict(b, (a.0, &a.1)) {
        return (b.0, Cow::Borrowed(b.1));
    }
    let require = if rank(b.0) > rank(a.0) { b.0 } else { a.0 };
    let mut scopes = a.1.into_owned();
    for scope in b.1 {
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    (require, Cow::Owned(scopes))
}

/// Whether rule `a` is at least as strict as rule `b`.
fn at_least_as_strict(a: (Require, &[String]), b: (Require, &[String])) -> bool {
    rank(a.0) >= rank(b.0) && b.1.iter().all(|scope| a.1.contains(scope))
}

/// A request path that passed step 1 ([`check`]): `:path` without its query, and whether it
/// is plain (one reading). Checked once per request; its rule ([`CheckedPath::rule`]) and its
/// edge settings ([`CheckedPath::edge`]) are then looked up without walking it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedPath<'p> {
    path: &'p str,
    plain: bool,
}

impl<'p> CheckedPath<'p> {
    /// Cuts the query from the request path `raw` (`:path`) and checks the rest (step 1).
    ///
    /// # Errors
    /// [`PathError`] when the path is refused: answer 400.
    pub fn new(raw: &'p str) -> Result<CheckedPath<'p>, PathError> {
        let path = without_query(raw);
        let plain = scan(path)?;
        Ok(CheckedPath { path, plain })
    }

    /// Whether the path has one reading only (no dot segment, repeated slash, `%` or `;`).
    pub fn is_plain(self) -> bool {
        self.plain
    }

    /// The rule that applies and its CSRF and forwarding settings ([`EdgeRule`]), given the
    /// configuration's lookup `lookup` (a path without query → its rule's requirement, scopes
    /// and edge settings, the rules' paths compared as written or, with `true`, as a lax
    /// upstream reads them; see the module docs, steps 3 and 4), each reading looked up once
    /// each way for both. The rule: the strictest, lax readings combined; the edge settings:
    /// the strictest over every lookup (CSRF on if any one's rule has it on, the token
    /// forwarded only if every one's rule forwards it).
    ///
    /// # Errors
    /// [`PathError::Ambiguous`] when the readings of step 3 match rules that cannot be
    /// ordered: answer 400.
    pub fn rule_and_edge<'a>(
        self,
        lookup: impl Fn(&str, bool) -> ((Require, &'a [String]), EdgeRule),
    ) -> Result<(PathRule<'a>, EdgeRule), PathError> {
        if self.plain {
            let ((require, scopes), edge) = lookup(self.path, false);
            let (lax_rule, lax_edge) = lookup(self.path, true);
            return Ok((
                combined((require, Cow::Borrowed(scopes)), lax_rule),
                edge.stricter(lax_edge),
            ));
        }
        let readings = readings(self.path);
        let mut written = Vec::with_capacity(readings.len());
        let mut edge: Option<EdgeRule> = None;
        for reading in &readings {
            let (rule, reading_edge) = lookup(reading, false);
            written.push(rule);
            edge = Some(edge.map_or(reading_edge, |edge| edge.stricter(reading_edge)));
        }
        let (require, scopes) = strictest(&written)?;
        let mut rule = (require, Cow::Borrowed(scopes));
        // `readings` always holds the path itself: `edge` is set.
        let mut edge = edge.unwrap_or(STRICTEST_EDGE);
        for reading in &readings {
            let (lax_rule, lax_edge) = lookup(reading, true);
            rule = combined(rule, lax_rule);
            edge = edge.stricter(lax_edge);
        }
        Ok((rule, edge))
    }

    /// The rule alone ([`Self::rule_and_edge`] with `rule_for` as the lookup).
    ///
    /// # Errors
    /// As [`Self::rule_and_edge`].
    pub fn rule<'a>(
        self,
        rule_for: impl Fn(&str, bool) -> (Require, &'a [String]),
    ) -> Result<PathRule<'a>, PathError> {
        self.rule_and_edge(|path, lax| (rule_for(path, lax), STRICTEST_EDGE))
            .map(|(rule, _)| rule)
    }

    /// The edge settings alone ([`Self::rule_and_edge`] with `edge_for` as the lookup).
    pub fn edge(self, edge_for: impl Fn(&str, bool) -> EdgeRule) -> EdgeRule {
        // Rules that require nothing are always ordered: no error to meet.
        self.rule_and_edge(|path, lax| ((Require::None, &[]), edge_for(path, lax)))
            .map_or(STRICTEST_EDGE, |(_, edge)| edge)
    }
}

/// The rule that applies to the request path `raw` (`:path`, query included), given the
/// configuration's lookup `rule_for` ([`CheckedPath::rule`]).
///
/// # Errors
/// [`PathError`] when the path is refused (step 1) or its readings match rules that cannot
/// be ordered (steps 3, 4): answer 400.
pub fn rule_for_path<'a>(
    raw: &str,
    rule_for: impl Fn(&str, bool) -> (Require, &'a [String]),
) -> Result<PathRule<'a>, PathError> {
    CheckedPath::new(raw)?.rule(rule_for)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rule;

    /// `/public/` needs nothing, `/admin/` needs scope `admin`, `/reports/` scope `reports`,
    /// everything else a token.
    fn rules() -> Vec<Rule> {
        let rule = |prefix: &str, require, scopes: &[&str]| Rule {
            path: PathMatch::Prefix(prefix.into()),
            require,
            scopes: scopes.iter().map(|s| (*s).to_string()).collect(),
            csrf: true,
            forward_authorization: None,
        };
        vec![
            rule("/public/", Require::None, &[]),
            rule("/admin/", Require::Required, &["admin"]),
            rule("/reports/", Require::Required, &["reports"]),
        ]
    }

    /// The configuration's lookup over `rules`: the first match (compared as written or, with
    /// `lax`, as a lax upstream reads the path), else a token required.
    fn matching<'r>(rules: &'r [Rule]) -> impl Fn(&str, bool) -> (Require, &'r [String]) + 'r {
        move |path, lax| {
            rules
                .iter()
                .find(|rule| {
                    if lax {
                        rule.path.matches_lax(path)
                    } else {
                        rule.path.matches(path)
                    }
                })
                .map_or(DEFAULT, |rule| (rule.require, rule.scopes.as_slice()))
        }
    }

    /// A rule's edge settings that let a request through with its token, and the default's.
    const LAX_EDGE: EdgeRule = EdgeRule {
        csrf: false,
        forward_authorization: true,
    };
    const STRICT_EDGE: EdgeRule = EdgeRule {
        csrf: true,
        forward_authorization: false,
    };

    /// Where no rule matches.
    const DEFAULT: (Require, &[String]) = (Require::Required, &[]);

    /// [`matching`] as it was before lax readings (step 4): the path as written only.
    fn exact_only<'r>(rules: &'r [Rule]) -> impl Fn(&str, bool) -> (Require, &'r [String]) + 'r {
        let matching = matching(rules);
        move |path, _| matching(path, false)
    }

    fn lookup<'r>(rules: &'r [Rule]) -> impl Fn(&str) -> (Require, &'r [String]) + 'r {
        move |path| {
            rules
                .iter()
                .find(|rule| match &rule.path {
                    PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
                    PathMatch::Exact(exact) => path == exact,
                })
                .map_or((Require::Required, &[][..]), |rule| {
                    (rule.require, rule.scopes.as_slice())
                })
        }
    }

    #[test]
    fn edge_for_path_ambiguous_takes_strictest_reading() {
        // `/open/` forwards the token without CSRF; everything else is strict.
        let edge_for = |path: &str| {
            if path.starts_with("/open/") {
                EdgeRule {
                    csrf: false,
                    forward_authorization: true,
                }
            } else {
                EdgeRule {
                    csrf: true,
                    forward_authorization: false,
                }
            }
        };
        let (lax, strict) = (LAX_EDGE, STRICT_EDGE);
        assert_eq!(edge_of("/open/x?q=1", edge_for), lax);
        assert_eq!(edge_of("/open/../api/x", edge_for), strict);
        assert_eq!(edge_of("/open/%2e%2e/api", edge_for), strict);
        assert_eq!(edge_of("/api/x", edge_for), strict);
    }

    fn require_of(raw: &str) -> Result<Require, PathError> {
        let rules = rules();
        rule_for_path(raw, matching(&rules)).map(|(require, _)| require)
    }

    #[test]
    fn normalize_dot_segments_removed() {
        assert_eq!(normalize("/a/b/../c/./d"), "/a/c/d");
        assert_eq!(normalize("/../../a"), "/a");
        assert_eq!(normalize("/a/.."), "/");
        assert_eq!(normalize("/a/b/.."), "/a/");
        assert_eq!(normalize("/a/."), "/a/");
    }

    #[test]
    fn normalize_slashes_merged() {
        assert_eq!(normalize("//a///b/"), "/a/b/");
        assert_eq!(normalize("/"), "/");
    }

    #[test]
    fn normalize_unreserved_decoded_reserved_kept() {
        assert_eq!(normalize("/%70ublic/%7Ex"), "/public/~x");
        assert_eq!(normalize("/a/%2e%2E/b"), "/b");
        assert_eq!(normalize("/a%3bb"), "/a%3Bb");
    }

    #[test]
    fn plain_path_uses_its_own_rule() {
        assert_eq!(require_of("/public/page?x=/../admin/"), Ok(Require::None));
        assert_eq!(require_of("/private"), Ok(Require::Required));
    }

    #[test]
    fn harmless_normalization_keeps_public_rule() {
        assert_eq!(require_of("/public/./a//b"), Ok(Require::None));
        assert_eq!(require_of("/public/%7Eme"), Ok(Require::None));
        assert_eq!(require_of("/public/a;v=1"), Ok(Require::None));
    }

    /// Every attempt to walk out of `/public/` into a protected path: refused, or given a rule
    /// at least as strict as the protected path's.
    #[test]
    fn bypass_attempts_never_get_the_public_rule() {
        let attempts = [
            "/public/../private",
            "/public/../admin/users",
            "/public/./../private",
            "/public/%2e%2e/private",
            "/public/%2E%2E/private",
            "/public/.%2e/private",
            "/public/%2e./private",
            "/public/%2e%2e%2fprivate",
            "/public/..%2fprivate",
            "/public/..%2Fprivate",
            "/public/..%5cprivate",
            "/public/..\\private",
            "/public\\..\\private",
            "/public/..;/private",
            "/public/..;x=1/private",
            "/public;/../private",
            "/public/%2e%2e;/private",
            "/public/..%3b/private",
            "/public/%2e%2e%3B/private",
            "//public/../private",
            "/public//../../private",
            "/public/%00/../private",
            "/public/\u{0}/../private",
            "/public/%0a/../private",
            "/public/#/../private",
            "/public/a/../../private",
            "/public/%252e%252e/private",
            "public/../private",
            "/%70ublic/../private",
            // `;` segments a `..` removes before their parameters are cut, and slashes a
            // `..` consumes before they are merged (found by a review; each a walk out).
            "/public/.;/../private",
            "/public/;x/../private",
            "/public/..;/../private",
            "/public/%2e;/../private",
            "/public/../admin//../public/x",
            "/public/../private//../public/x",
            "/public/a/..//../../private",
            "/public/;a/..;/../private",
            "/public/;a/../../private",
            "/public/../../../../private",
            "/public/../admin/%2e%2e/reports/x",
            // Double encoding whose hex digits are themselves encoded: `%25%32e` is `%2e` to
            // an upstream that decodes once, `.` to one that decodes twice (review).
            "/public/%25%32e%25%32e/private",
            "/public/%25%32E%25%32E/private",
            "/public/%252%65%252%65/private",
            "/public/..%25%32Fprivate",
            "/public/..%25%35Cprivate",
            "/public/%25%33F/../private",
            "/public/%25%30%30/../private",
        ];
        for attempt in attempts {
            match require_of(attempt) {
                Err(_) | Ok(Require::Required) => {}
                Ok(other) => panic!("{attempt:?} got {other:?}"),
            }
        }
    }

    #[test]
    fn encoded_slash_refused() {
        assert_eq!(
            require_of("/public%2F..%2Fprivate"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(require_of("/public/%5c"), Err(PathError::EncodedSlash));
    }

    /// `/api/stats%3F` is `/api/stats` to an upstream that decodes the path and then splits off
    /// a query (or fragment) again: none of the filter's readings would be the exact rule.
    #[test]
    fn encoded_query_or_fragment_delimiter_refused() {
        for path in [
            "/api/stats%3F",
            "/api/stats%3fx=1",
            "/api/stats%23",
            "/public/%3F/../x",
        ] {
            assert_eq!(require_of(path), Err(PathError::EncodedDelimiter), "{path}");
        }
    }

    #[test]
    fn backslash_refused() {
        assert_eq!(require_of("/public\\x"), Err(PathError::Backslash));
    }

    #[test]
    fn control_characters_refused() {
        assert_eq!(require_of("/a\u{0}"), Err(PathError::ControlCharacter));
        assert_eq!(require_of("/a%00"), Err(PathError::ControlCharacter));
        assert_eq!(require_of("/a%7f"), Err(PathError::ControlCharacter));
    }

    #[test]
    fn malformed_escape_refused() {
        for path in ["/a%", "/a%2", "/a%zz", "/a%%41"] {
            assert_eq!(require_of(path), Err(PathError::BadEscape), "{path}");
        }
    }

    #[test]
    fn relative_path_refused() {
        assert_eq!(require_of("public/x"), Err(PathError::NotAbsolute));
        assert_eq!(require_of(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn double_encoding_refused() {
        assert_eq!(require_of("/a/%252e"), Err(PathError::DoubleEncoded));
        // The hex digits after `%25` written as escapes, one or both.
        for path in ["/a/%25%32e", "/a/%252%65", "/a/%25%32%65", "/a/%25%32%45"] {
            assert_eq!(require_of(path), Err(PathError::DoubleEncoded), "{path}");
        }
        // A literal percent sign not followed by an escape is fine, nor is one followed by a
        // single hex digit, or by an escape of something else.
        for path in [
            "/public/100%25",
            "/public/100%25e",
            "/public/100%25%7E",
            "/public/%25%32",
        ] {
            assert_eq!(require_of(path), Ok(Require::None), "{path}");
        }
    }

    #[test]
    fn fragment_refused() {
        assert_eq!(require_of("/public/#x"), Err(PathError::Fragment));
    }

    #[test]
    fn dot_segment_into_scoped_rule_gets_its_scopes() {
        let rules = rules();
        let (require, scopes) = rule_for_path("/public/../admin/users", matching(&rules)).unwrap();
        assert_eq!(require, Require::Required);
        assert_eq!(scopes.as_ref(), ["admin".to_string()]);
    }

    #[test]
    fn readings_with_unordered_scopes_refused() {
        // Raw reading: `/admin/` (scope admin); normalized: `/reports/` (scope reports).
        assert_eq!(require_of("/admin/../reports/x"), Err(PathError::Ambiguous));
    }

    #[test]
    fn protected_path_walking_into_public_stays_protected() {
        // An upstream that does not normalize serves `/private/...` for this.
        assert_eq!(require_of("/private/../public/x"), Ok(Require::Required));
    }

    #[test]
    fn readings_include_parameter_and_full_decoding() {
        for path in ["/public/..%3b/private", "/public/..;/private"] {
            let all = readings(path);
            assert!(all.contains(&"/private".to_string()), "{path}: {all:?}");
        }
    }

    /// Cutting `;a` leaves an empty segment, which a `..` then removes when an upstream keeps
    /// empty segments (Jetty-like): `/api//../admin` is `/api/admin` to it, `/admin` merged.
    #[test]
    fn readings_keep_the_empty_segment_a_cut_parameter_leaves() {
        for path in ["/api/;a/..;/admin", "/api/;a/../admin"] {
            let all = readings(path);
            assert!(all.contains(&"/api/admin".to_string()), "{path}: {all:?}");
        }
    }

    /// Paths of every kind: plain, ambiguous, refused, non-ASCII.
    const SAMPLE_PATHS: &[&str] = &[
        "/",
        "/api/me",
        "/api/me?x=1",
        "/api/me?x=/../a//b%2f;",
        "/public/page?x=/../admin/",
        "/a.b/c.d",
        "/.well-known/x",
        "/a/.",
        "/a/..",
        "//a",
        "/a//",
        "/a;b",
        "/a%41",
        "/100%25",
        "/%2e%2e/x",
        "/a/%2E/b",
        "/é/ü.x",
        "/é//x",
        "/x/é.",
        "/public\\x",
        "/a%",
        "/a%zz",
        "/a%2f",
        "/a%252e",
        "/a#b",
        "/a\u{0}",
        "/a%7f",
        "a/b",
        "",
        "?/a",
    ];

    /// The edge settings of an accepted request path.
    fn edge_of(raw: &str, edge_for: impl Fn(&str) -> EdgeRule) -> EdgeRule {
        CheckedPath::new(raw).unwrap().edge(|p, _| edge_for(p))
    }

    /// What [`scan`] says of plainness, the obvious way: the oracle of its test.
    fn is_plain(path: &str) -> bool {
        !path.contains("//") && !path.contains("/.") && !path.contains(['%', ';'])
    }

    #[test]
    fn scan_plain_matches_is_plain_on_every_checked_path() {
        let attempts = SAMPLE_PATHS.iter().copied().chain([
            "/public/../private",
            "/public/./../private",
            "/public/.%2e/private",
            "/public/..;/private",
            "/public;/../private",
            "//public/../private",
            "/public//../../private",
            "/%70ublic/../private",
        ]);
        for raw in attempts {
            let path = without_query(raw);
            assert_eq!(
                scan(path).map(|plain| plain == is_plain(path)),
                check(path).map(|()| true),
                "{raw:?}"
            );
            assert_eq!(
                CheckedPath::new(raw).map(CheckedPath::is_plain),
                check(path).map(|()| is_plain(path)),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn checked_path_rule_and_edge_match_the_walks_they_replaced() {
        let rules = rules();
        let edge_for = |path: &str| EdgeRule {
            csrf: !path.starts_with("/public/"),
            forward_authorization: path.starts_with("/public/"),
        };
        for raw in SAMPLE_PATHS.iter().copied().chain([
            "/public/x",
            "/public/../admin/users",
            "/admin/../reports/x",
            "/public/%7Eme",
        ]) {
            // What the request path did before one walk served both: cut the query and check
            // for each, judge plainness by separate scans, then look up every reading.
            let path = without_query(raw);
            let before_rule = check(path)
                .and_then(|()| {
                    if is_plain(path) {
                        return Ok(lookup(&rules)(path));
                    }
                    let found: Vec<(Require, &[String])> =
                        readings(path).iter().map(|r| lookup(&rules)(r)).collect();
                    found
                        .iter()
                        .copied()
                        .find(|c| found.iter().all(|o| at_least_as_strict(*c, *o)))
                        .ok_or(PathError::Ambiguous)
                })
                .map(|(require, scopes)| (require, scopes.to_vec()));
            let checked = CheckedPath::new(raw);
            assert_eq!(
                checked.and_then(|checked| checked
                    .rule(exact_only(&rules))
                    .map(|(require, scopes)| (require, scopes.into_owned()))),
                before_rule,
                "{raw:?}"
            );
            if let Ok(checked) = checked {
                let before_edge = readings(path)
                    .iter()
                    .filter(|_| !is_plain(path))
                    .fold(edge_for(path), |e, r| e.stricter(edge_for(r)));
                assert_eq!(checked.edge(|p, _| edge_for(p)), before_edge, "{raw:?}");
            }
        }
    }

    #[test]
    fn lax_upstream_readings_get_the_rule_they_match() {
        let mut rules = rules();
        rules.push(Rule {
            path: PathMatch::Exact("/stats".into()),
            require: Require::Required,
            scopes: vec!["admin".into()],
            csrf: true,
            forward_authorization: None,
        });
        let rule = |raw: &str| {
            let (require, scopes) = rule_for_path(raw, matching(&rules)).unwrap();
            (require, scopes.into_owned())
        };
        let admin = (Require::Required, vec!["admin".to_string()]);
        let none = (Require::None, vec![]);
        let default = (DEFAULT.0, DEFAULT.1.to_vec());
        // Case-insensitive routing (ASP.NET, Express): the scoped rule, not the default.
        assert_eq!(rule("/ADMIN/users"), admin);
        assert_eq!(rule("/Admin/users?x=1"), admin);
        assert_eq!(rule("/aDmin/../Admin/x"), admin);
        // A trailing slash cut or added (Express, Spring).
        assert_eq!(rule("/stats/"), admin);
        assert_eq!(rule("/STATS/"), admin);
        assert_eq!(rule("/admin"), admin);
        // Lax readings only ever tighten: an upper-case spelling of a public path gets the
        // default a case-sensitive upstream would serve it under.
        assert_eq!(rule("/Public/x"), default);
        // The open prefix's own index stays open.
        assert_eq!(rule("/public/"), none);
        assert_eq!(rule("/public/x"), none);
        assert_eq!(rule("/"), default);
    }

    #[test]
    fn lax_reading_of_a_rule_with_other_scopes_needs_both() {
        // `/api/admin/` needs `admin`, the rest of `/api/` needs `api`: `/api/admin` is the
        // `/api/` rule's as written and the admin rule's to a lax upstream — both, not a 400.
        let rule = |prefix: &str, scope: &str| Rule {
            path: PathMatch::Prefix(prefix.into()),
            require: Require::Required,
            scopes: vec![scope.into()],
            csrf: true,
            forward_authorization: None,
        };
        let rules = [rule("/api/admin/", "admin"), rule("/api/", "api")];
        let (require, scopes) = rule_for_path("/api/admin", matching(&rules)).unwrap();
        assert_eq!(
            (require, scopes.as_ref()),
            (
                Require::Required,
                &["api".to_string(), "admin".to_string()][..]
            )
        );
        // As written on both sides: one rule, borrowed.
        let (_, scopes) = rule_for_path("/api/admin/x", matching(&rules)).unwrap();
        assert!(matches!(scopes, Cow::Borrowed(_)));
        assert_eq!(scopes.as_ref(), ["admin".to_string()]);
        let (_, scopes) = rule_for_path("/api/x/../admin", matching(&rules)).unwrap();
        assert_eq!(scopes.as_ref(), ["api".to_string(), "admin".to_string()]);
    }

    #[test]
    fn matches_lax_folds_case_and_the_trailing_slash() {
        let prefix = PathMatch::Prefix("/api/admin/".into());
        let exact = PathMatch::Exact("/api/stats".into());
        for path in [
            "/api/admin/x",
            "/API/Admin/x",
            "/api/admin",
            "/Api/Admin",
            "/api/admin/",
        ] {
            assert!(prefix.matches_lax(path), "{path}");
        }
        for path in ["/api/adminx", "/api/", "/api/admi", "/"] {
            assert!(!prefix.matches_lax(path), "{path}");
        }
        for path in ["/api/stats", "/api/stats/", "/API/STATS", "/Api/Stats/"] {
            assert!(exact.matches_lax(path), "{path}");
        }
        for path in ["/api/stats/x", "/api/stat", "/api/statsx", "/api/stats//"] {
            assert!(!exact.matches_lax(path), "{path}");
        }
        // As written: neither case nor slash bends.
        assert!(!prefix.matches("/API/admin/x") && !prefix.matches("/api/admin"));
        assert!(!exact.matches("/api/stats/"));
    }

    #[test]
    fn lax_readings_tighten_the_edge_settings() {
        let open = PathMatch::Prefix("/open/".into());
        let (lax, strict) = (LAX_EDGE, STRICT_EDGE);
        let edge = |raw: &str| {
            CheckedPath::new(raw).unwrap().edge(|p, lax_reading| {
                let matched = if lax_reading {
                    open.matches_lax(p)
                } else {
                    open.matches(p)
                };
                if matched {
                    lax
                } else {
                    strict
                }
            })
        };
        assert_eq!(edge("/open/x"), lax);
        assert_eq!(edge("/OPEN/x"), strict);
        assert_eq!(edge("/open/"), lax);
    }

    #[test]
    fn without_query_cuts_at_question_mark() {
        assert_eq!(without_query("/a?b=/c"), "/a");
        assert_eq!(without_query("/a"), "/a");
    }

    /// A reserved escape kept as it is, wherever it stands: its two digits are its own.
    #[test]
    fn normalize_keeps_a_reserved_escape_after_other_bytes() {
        assert_eq!(normalize("/ab%3bc"), "/ab%3Bc");
        assert_eq!(normalize("/abcd%2fe"), "/abcd%2Fe");
    }

    /// `%25` followed by a literal hex digit and a byte that is not one: a legal `%` in a name.
    #[test]
    fn percent_escape_before_a_lone_hex_digit_is_not_double_encoding() {
        assert_eq!(require_of("/public/%25%3Ae"), Ok(Require::None));
    }

    /// The lax reading's rule requires more (a token) with other scopes than the rule as
    /// written: the stricter requirement and both scopes.
    #[test]
    fn combined_rule_takes_the_lax_readings_stricter_requirement_and_both_scopes() {
        let rule = |prefix: &str, require, scope: &str| Rule {
            path: PathMatch::Prefix(prefix.into()),
            require,
            scopes: vec![scope.into()],
            csrf: true,
            forward_authorization: None,
        };
        let rules = [
            rule("/api/admin/", Require::Required, "admin"),
            rule("/api/", Require::Optional, "api"),
        ];
        let (require, scopes) = rule_for_path("/api/admin", matching(&rules)).unwrap();
        assert_eq!(require, Require::Required);
        assert_eq!(scopes.as_ref(), ["api".to_string(), "admin".to_string()]);
    }

    /// An escape refused right after one accepted: the scan goes on from the next byte.
    #[test]
    fn refused_escape_right_after_an_accepted_one_is_refused() {
        assert_eq!(
            check("/public/%41%5c..%5cadmin"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(
            require_of("/public/%41%5c..%5cadmin"),
            Err(PathError::EncodedSlash)
        );
    }
}
