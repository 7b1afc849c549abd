//! W3C Trace Context (`traceparent`) and B3 for the issuer's logs: every request runs in a
//! `request` span carrying `trace_id` (the caller's, from the `traceparent` header Envoy or an
//! Istio sidecar sends when tracing is on — or, failing that, B3's `b3` or `X-B3-*` headers,
//! which Envoy's Zipkin tracer, Istio's long-time default, sends instead; a fresh one
//! otherwise) and `span_id` (this request's own, child of the caller's `parent_id`). With `WEAUTH_LOG_FORMAT=json`, every line logged while
//! the request is handled carries them under `span` (`{"span":{"trace_id":…,"span_id":…}}`);
//! in text they prefix the line (`request{trace_id=… span_id=…}:`).
//!
//! Pure: the parser takes the header value, the ids are passed in (see [`TraceContext::child_of`]).
//! The ids join the issuer's log lines to the trace the mesh records; whether the request's
//! spans are exported is [`Sampler`]'s decision (`crate::telemetry::otel`).

/// One request's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// The caller's span (the `parent-id` of its `traceparent`), when there was one.
    pub parent_id: Option<[u8; 8]>,
    /// This request's span, never all zero.
    pub span_id: [u8; 8],
    /// The caller's `sampled` flag, when there was a caller's trace.
    pub caller_sampled: Option<bool>,
}

/// Which requests' spans are exported: OpenTelemetry's `OTEL_TRACES_SAMPLER` (`always_on`,
/// `always_off`, `traceidratio`, and `parentbased_` each: the default is
/// `parentbased_always_on`) with `OTEL_TRACES_SAMPLER_ARG` (the ratio, 0 to 1, default 1).
/// Parent-based: a caller's trace is exported exactly when the caller sampled it (the mesh's
/// 1 % stays 1 %); a trace the issuer starts by the ratio, decided on the trace id as
/// OpenTelemetry SDKs do, so every replica decides alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    pub parent_based: bool,
    /// The share of traces the issuer starts (or of every trace, not parent-based) exported.
    pub ratio: f64,
}

impl Default for Sampler {
    fn default() -> Sampler {
        Sampler {
            parent_based: true,
            ratio: 1.0,
        }
    }
}

impl Sampler {
    /// From the variables' values (`None`: unset).
    ///
    /// # Errors
    /// An unknown sampler or a ratio that is not a number from 0 to 1, named.
    pub fn from_env(sampler: Option<&str>, arg: Option<&str>) -> Result<Sampler, String> {
        let ratio = match arg.map(str::trim).filter(|a| !a.is_empty()) {
            None => 1.0,
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    format!("OTEL_TRACES_SAMPLER_ARG `{text}` is not a ratio from 0 to 1")
                })?,
        };
        let name = sampler.map(str::trim).filter(|s| !s.is_empty());
        let (parent_based, ratio) = match name.unwrap_or("parentbased_always_on") {
            "always_on" => (false, 1.0),
            "always_off" => (false, 0.0),
            "traceidratio" => (false, ratio),
            "parentbased_always_on" => (true, 1.0),
            "parentbased_always_off" => (true, 0.0),
            "parentbased_traceidratio" => (true, ratio),
            other => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER `{other}` is not one of always_on, always_off, \
                     traceidratio, parentbased_always_on, parentbased_always_off, \
                     parentbased_traceidratio"
                ))
            }
        };
        Ok(Sampler {
            parent_based,
            ratio,
        })
    }

    /// Whether a request with this context is exported.
    pub fn sampled(&self, ctx: &TraceContext) -> bool {
        match ctx.caller_sampled {
            Some(sampled) if self.parent_based => sampled,
            _ => {
                // The trace id's last 8 bytes, shifted to 63 bits (OpenTelemetry's
                // TraceIdRatioBased), against the ratio of 2^63.
                if self.ratio >= 1.0 {
                    return true;
                }
                let mut low = [0u8; 8];
                low.copy_from_slice(&ctx.trace_id[8..]);
                let x = u64::from_be_bytes(low) >> 1;
                x < (self.ratio * 2f64.powi(63)) as u64
            }
        }
    }
}

/// The `trace-id`, `parent-id` and `sampled` flag of a valid `traceparent` value, or `None`.
///
/// Accepts version `00` exactly (`00-<32 hex>-<16 hex>-<2 hex>`), and a later version's first
/// four fields when the value goes on with `-` (the spec's forward compatibility); refuses
/// version `ff`, upper-case hex, and all-zero ids, as the spec says to.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let value = value.trim();
    let bytes = value.as_bytes();
    if bytes.len() < 55 {
        return None;
    }
    let version = value.get(0..2)?;
    if version == "ff" || !is_lower_hex(version) {
        return None;
    }
    if (version == "00" && bytes.len() != 55) || (bytes.len() > 55 && bytes[55] != b'-') {
        return None;
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let (trace, parent, flags) = (value.get(3..35)?, value.get(36..52)?, value.get(53..55)?);
    if !(is_lower_hex(trace) && is_lower_hex(parent) && is_lower_hex(flags)) {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    hex::decode_to_slice(trace, &mut trace_id).ok()?;
    hex::decode_to_slice(parent, &mut parent_id).ok()?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id, parent_id, flags & 1 == 1))
}

/// The trace id, span id and sampled flag of B3 propagation (openzipkin/b3-propagation): the
/// single `b3` header (`{trace}-{span}[-{sampling}[-{parent}]]`), else the `X-B3-TraceId`,
/// `X-B3-SpanId`, `X-B3-Sampled` and `X-B3-Flags` headers, read by `header` (a name in lower
/// case) — also when a `b3` header is there but malformed, as OpenTelemetry's B3 propagators
/// do: one broken header does not hide a valid set. A 16-digit trace id is the low half of a
/// 128-bit one; lower-case hex only, as the specification says; sampling `1` or `d` (debug) is
/// sampled, `0` not, none undecided. `None` without a valid pair of ids; a lone `b3: 0` is a
/// valid header that only says "do not sample": `None`, the `X-B3-*` headers not read.
pub fn parse_b3<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
) -> Option<([u8; 16], [u8; 8], Option<bool>)> {
    let multi = || {
        let sampled = match (header("x-b3-flags"), header("x-b3-sampled")) {
            (Some("1"), _) => Some(true),
            (_, Some("1" | "true")) => Some(true),
            (_, Some("0" | "false")) => Some(false),
            _ => None,
        };
        b3_ids(header("x-b3-traceid")?, header("x-b3-spanid")?, sampled)
    };
    match header("b3").map(str::trim) {
        Some("0") => None,
        Some(single) => parse_b3_single(single).or_else(multi),
        None => multi(),
    }
}

/// The single `b3` header's ids and sampling.
fn parse_b3_single(single: &str) -> Option<([u8; 16], [u8; 8], Option<bool>)> {
    let mut parts = single.split('-');
    let (trace, span) = (parts.next()?, parts.next()?);
    let sampled = match parts.next() {
        None => None,
        Some("1" | "d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    if parts
        .next()
        .is_some_and(|parent| parent.len() != 16 || !is_lower_hex(parent))
        || parts.next().is_some()
    {
        return None;
    }
    b3_ids(trace, span, sampled)
}

/// B3's trace id (32 or 16 lower-case hex digits) and span id (16), neither all zeros.
fn b3_ids(
    trace: &str,
    span: &str,
    sampled: Option<bool>,
) -> Option<([u8; 16], [u8; 8], Option<bool>)> {
    let mut trace_id = [0u8; 16];
    match trace.len() {
        32 if is_lower_hex(trace) => hex::decode_to_slice(trace, &mut trace_id).ok()?,
        16 if is_lower_hex(trace) => hex::decode_to_slice(trace, &mut trace_id[8..]).ok()?,
        _ => return None,
    }
    let mut span_id = [0u8; 8];
    if span.len() != 16 || !is_lower_hex(span) {
        return None;
    }
    hex::decode_to_slice(span, &mut span_id).ok()?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, sampled))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl TraceContext {
    /// The context of a request whose headers `header` reads (a name in lower case): the
    /// caller's trace continued from a valid `traceparent`, else from valid B3 headers
    /// ([`parse_b3`]), else a new trace `fresh_trace`. `span_id` is the request's own span.
    /// Zero ids (one chance in 2^64 or 2^128) are replaced by 1.
    pub fn child_of<'a>(
        header: impl Fn(&str) -> Option<&'a str>,
        fresh_trace: [u8; 16],
        span_id: [u8; 8],
    ) -> TraceContext {
        let span_id = if span_id == [0; 8] {
            [0, 0, 0, 0, 0, 0, 0, 1]
        } else {
            span_id
        };
        let caller = header("traceparent")
            .and_then(parse_traceparent)
            .map(|(trace, parent, sampled)| (trace, parent, Some(sampled)))
            .or_else(|| parse_b3(&header));
        match caller {
            Some((trace_id, parent, sampled)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id,
                caller_sampled: sampled,
            },
            None => TraceContext {
                trace_id: if fresh_trace == [0; 16] {
                    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
                } else {
                    fresh_trace
                },
                parent_id: None,
                span_id,
                caller_sampled: None,
            },
        }
    }

    /// The trace id as 32 lower-case hex digits (the form tracing back ends search for).
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }

    /// The caller's span id as 16 hex digits, or empty.
    pub fn parent_id_hex(&self) -> String {
        self.parent_id.map(hex::encode).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// A request's headers holding only `traceparent`, when given.
    fn only_traceparent<'a>(value: Option<&'a str>) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name| value.filter(|_| name == "traceparent")
    }

    /// A request's headers from `pairs` (names in lower case).
    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    #[test]
    fn b3_single_and_multi_headers_continue_the_trace() {
        let trace = "463ac35c9f6413ad48485a3953bb6124";
        let span = "a2fb4a1d1a96d312";
        for (pairs, sampled) in [
            (vec![("b3", format!("{trace}-{span}-1"))], Some(true)),
            (vec![("b3", format!("{trace}-{span}-d"))], Some(true)),
            (
                vec![("b3", format!("{trace}-{span}-0-0020000000000001"))],
                Some(false),
            ),
            (vec![("b3", format!("{trace}-{span}"))], None),
            (
                vec![
                    ("x-b3-traceid", trace.to_string()),
                    ("x-b3-spanid", span.to_string()),
                    ("x-b3-sampled", "1".to_string()),
                ],
                Some(true),
            ),
            (
                vec![
                    ("x-b3-traceid", trace.to_string()),
                    ("x-b3-spanid", span.to_string()),
                    ("x-b3-sampled", "0".to_string()),
                    ("x-b3-flags", "1".to_string()),
                ],
                Some(true),
            ),
            (
                vec![
                    ("x-b3-traceid", trace.to_string()),
                    ("x-b3-spanid", span.to_string()),
                ],
                None,
            ),
        ] {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let ctx = TraceContext::child_of(headers(&pairs), [7; 16], [9; 8]);
            assert_eq!(ctx.trace_id_hex(), trace, "{pairs:?}");
            assert_eq!(ctx.parent_id_hex(), span, "{pairs:?}");
            assert_eq!(ctx.caller_sampled, sampled, "{pairs:?}");
        }
        // A 64-bit trace id is the low half of a 128-bit one.
        let short = [("b3", "48485a3953bb6124-a2fb4a1d1a96d312-1")];
        let ctx = TraceContext::child_of(headers(&short), [7; 16], [9; 8]);
        assert_eq!(ctx.trace_id_hex(), "000000000000000048485a3953bb6124");
        // traceparent first, when both are sent.
        let both = [("traceparent", SPEC_EXAMPLE), ("b3", short[0].1)];
        let ctx = TraceContext::child_of(headers(&both), [7; 16], [9; 8]);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn b3_invalid_starts_a_trace() {
        for pairs in [
            vec![("b3", "0")],
            vec![("b3", "463ac35c9f6413ad48485a3953bb6124")],
            vec![("b3", "463AC35C9F6413AD48485A3953BB6124-a2fb4a1d1a96d312-1")],
            vec![("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d31-1")],
            vec![("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-2")],
            vec![(
                "b3",
                "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1-x-y",
            )],
            vec![("b3", "00000000000000000000000000000000-a2fb4a1d1a96d312")],
            vec![("b3", "463ac35c9f6413ad48485a3953bb6124-0000000000000000")],
            vec![("b3", "463ac35c9f6413ad4848-a2fb4a1d1a96d312")],
            vec![("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")],
        ] {
            let ctx = TraceContext::child_of(headers(&pairs), [7; 16], [9; 8]);
            assert_eq!(ctx.trace_id, [7; 16], "{pairs:?}");
            assert_eq!(ctx.parent_id, None, "{pairs:?}");
        }
    }

    #[test]
    fn b3_invalid_single_header_falls_back_to_valid_multi_headers() {
        let trace = "463ac35c9f6413ad48485a3953bb6124";
        let span = "a2fb4a1d1a96d312";
        let bad_sampling = format!("{trace}-{span}-true");
        for single in ["garbage", "463ac35c9f6413ad-XYZ-1", bad_sampling.as_str()] {
            let pairs = [
                ("b3", single),
                ("x-b3-traceid", trace),
                ("x-b3-spanid", span),
                ("x-b3-sampled", "1"),
            ];
            let ctx = TraceContext::child_of(headers(&pairs), [7; 16], [9; 8]);
            assert_eq!(ctx.trace_id_hex(), trace, "{single}");
            assert_eq!(ctx.parent_id.map(hex::encode).as_deref(), Some(span));
        }
        // A valid single header wins over the multi headers, a lone `b3: 0` too.
        let deny = [("b3", "0"), ("x-b3-traceid", trace), ("x-b3-spanid", span)];
        let ctx = TraceContext::child_of(headers(&deny), [7; 16], [9; 8]);
        assert_eq!(ctx.trace_id, [7; 16]);
        let other = "0af7651916cd43dd8448eb211c80319c";
        let single = format!("{other}-{span}-1");
        let pairs = [
            ("b3", single.as_str()),
            ("x-b3-traceid", trace),
            ("x-b3-spanid", span),
        ];
        let ctx = TraceContext::child_of(headers(&pairs), [7; 16], [9; 8]);
        assert_eq!(ctx.trace_id_hex(), other);
    }

    #[test]
    fn parse_traceparent_spec_example() {
        let (trace, parent, sampled) = parse_traceparent(SPEC_EXAMPLE).unwrap();
        assert_eq!(hex::encode(trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(parent), "00f067aa0ba902b7");
        assert!(sampled);
        let unsampled = SPEC_EXAMPLE.replace("-01", "-00");
        assert_eq!(parse_traceparent(&unsampled).map(|p| p.2), Some(false));
    }

    #[test]
    fn sampler_parent_based_follows_the_caller_ratio_decides_the_rest() {
        let default = Sampler::from_env(None, None).unwrap();
        assert_eq!(default, Sampler::default());
        let sampled = TraceContext::child_of(only_traceparent(Some(SPEC_EXAMPLE)), [7; 16], [9; 8]);
        let unsampled = TraceContext::child_of(
            only_traceparent(Some(&SPEC_EXAMPLE.replace("-01", "-00"))),
            [7; 16],
            [9; 8],
        );
        let low = TraceContext::child_of(only_traceparent(None), [0; 16], [9; 8]);
        let high = TraceContext::child_of(only_traceparent(None), [0xff; 16], [9; 8]);
        assert!(default.sampled(&sampled) && !default.sampled(&unsampled));
        assert!(default.sampled(&low) && default.sampled(&high));
        let tenth = Sampler::from_env(Some("parentbased_traceidratio"), Some("0.1")).unwrap();
        assert!(tenth.sampled(&sampled) && !tenth.sampled(&unsampled));
        assert!(tenth.sampled(&low) && !tenth.sampled(&high));
        let ratio = Sampler::from_env(Some("traceidratio"), Some("0.1")).unwrap();
        let sampled_high = TraceContext {
            caller_sampled: Some(true),
            ..high
        };
        assert!(
            !ratio.sampled(&sampled_high),
            "not parent-based: the caller's flag ignored"
        );
        assert!(
            tenth.sampled(&sampled_high),
            "parent-based: the caller's flag followed"
        );
        let off = Sampler::from_env(Some("always_off"), None).unwrap();
        assert!(!off.sampled(&sampled) && !off.sampled(&low));
        // About the ratio over random trace ids.
        let kept = (0..10_000u32)
            .filter(|i| {
                let mut id = [0u8; 16];
                id[8..12].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
                tenth.sampled(&TraceContext::child_of(only_traceparent(None), id, [9; 8]))
            })
            .count();
        assert!((800..1200).contains(&kept), "{kept}");
        assert!(Sampler::from_env(Some("sometimes"), None).is_err());
        assert!(Sampler::from_env(None, Some("1.5")).is_err());
    }

    #[test]
    fn parse_traceparent_invalid_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parse_traceparent_later_version_first_fields_kept() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert!(parse_traceparent(later).is_some());
        assert_eq!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            None
        );
    }

    #[test]
    fn child_of_valid_header_continues_the_trace() {
        let ctx = TraceContext::child_of(only_traceparent(Some(SPEC_EXAMPLE)), [7; 16], [9; 8]);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_id_hex(), "00f067aa0ba902b7");
        assert_eq!(ctx.span_id_hex(), "0909090909090909");
    }

    #[test]
    fn child_of_missing_or_bad_header_starts_a_trace() {
        for header in [None, Some("garbage")] {
            let ctx = TraceContext::child_of(only_traceparent(header), [7; 16], [9; 8]);
            assert_eq!(ctx.trace_id, [7; 16]);
            assert_eq!(ctx.parent_id, None);
            assert_eq!(ctx.parent_id_hex(), "");
        }
    }

    #[test]
    fn child_of_zero_ids_replaced() {
        let ctx = TraceContext::child_of(only_traceparent(None), [0; 16], [0; 8]);
        assert_ne!(ctx.trace_id, [0; 16]);
        assert_ne!(ctx.span_id, [0; 8]);
    }
}
