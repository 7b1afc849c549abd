//! W3C Trace Context (`traceparent`) for the issuer's logs: every request runs in a `request`
//! span carrying `trace_id` (the caller's, from the `traceparent` header Envoy or an Istio
//! sidecar sends when tracing is on; a fresh one otherwise) and `span_id` (this request's own,
//! child of the caller's `parent_id`). With `WEAUTH_LOG_FORMAT=json`, every line logged while
//! the request is handled carries them under `span` (`{"span":{"trace_id":…,"span_id":…}}`);
//! in text they prefix the line (`request{trace_id=… span_id=…}:`).
//!
//! Pure: the parser takes the header value, the ids are passed in (see [`TraceContext::child_of`]).
//! The spans are not exported (no OpenTelemetry exporter yet); the ids join the issuer's log
//! lines to the trace the mesh records.

/// One request's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// The caller's span (the `parent-id` of its `traceparent`), when there was one.
    pub parent_id: Option<[u8; 8]>,
    /// This request's span, never all zero.
    pub span_id: [u8; 8],
}

/// The `trace-id` and `parent-id` of a valid `traceparent` value, or `None`.
///
/// Accepts version `00` exactly (`00-<32 hex>-<16 hex>-<2 hex>`), and a later version's first
/// four fields when the value goes on with `-` (the spec's forward compatibility); refuses
/// version `ff`, upper-case hex, and all-zero ids, as the spec says to.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8])> {
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
    Some((trace_id, parent_id))
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
            Some((trace_id, parent)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id,
            },
            None => TraceContext {
                trace_id: if fresh_trace == [0; 16] {
                    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
                } else {
                    fresh_trace
                },
                parent_id: None,
                span_id,
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
        let (trace, parent) = parse_traceparent(SPEC_EXAMPLE).unwrap();
        assert_eq!(hex::encode(trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(parent), "00f067aa0ba902b7");
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
