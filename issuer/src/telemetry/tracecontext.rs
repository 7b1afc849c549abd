//! W3C Trace Context (`traceparent`) for the issuer's logs: every request runs in a `request`
//! span carrying `trace_id` (the caller's, from the `traceparent` header Envoy or an Istio
//! sidecar sends when tracing is on; a fresh one otherwise) and `span_id` (this request's own,
//! child of the caller's `parent_id`). With `WEAUTH_LOG_FORMAT=json`, every line logged while
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

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl TraceContext {
    /// The context of a request whose `traceparent` header is `header`: the caller's trace
    /// continued when the header is valid, else a new trace `fresh_trace`. `span_id` is the
    /// request's own span. Zero ids (one chance in 2^64 or 2^128) are replaced by 1.
    pub fn child_of(header: Option<&str>, fresh_trace: [u8; 16], span_id: [u8; 8]) -> TraceContext {
        let span_id = if span_id == [0; 8] {
            [0, 0, 0, 0, 0, 0, 0, 1]
        } else {
            span_id
        };
        match header.and_then(parse_traceparent) {
            Some((trace_id, parent, sampled)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id,
                caller_sampled: Some(sampled),
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
        let sampled = TraceContext::child_of(Some(SPEC_EXAMPLE), [7; 16], [9; 8]);
        let unsampled =
            TraceContext::child_of(Some(&SPEC_EXAMPLE.replace("-01", "-00")), [7; 16], [9; 8]);
        let low = TraceContext::child_of(None, [0; 16], [9; 8]);
        let high = TraceContext::child_of(None, [0xff; 16], [9; 8]);
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
                tenth.sampled(&TraceContext::child_of(None, id, [9; 8]))
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
        let ctx = TraceContext::child_of(Some(SPEC_EXAMPLE), [7; 16], [9; 8]);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_id_hex(), "00f067aa0ba902b7");
        assert_eq!(ctx.span_id_hex(), "0909090909090909");
    }

    #[test]
    fn child_of_missing_or_bad_header_starts_a_trace() {
        for header in [None, Some("garbage")] {
            let ctx = TraceContext::child_of(header, [7; 16], [9; 8]);
            assert_eq!(ctx.trace_id, [7; 16]);
            assert_eq!(ctx.parent_id, None);
            assert_eq!(ctx.parent_id_hex(), "");
        }
    }

    #[test]
    fn child_of_zero_ids_replaced() {
        let ctx = TraceContext::child_of(None, [0; 16], [0; 8]);
        assert_ne!(ctx.trace_id, [0; 16]);
        assert_ne!(ctx.span_id, [0; 8]);
    }
}
