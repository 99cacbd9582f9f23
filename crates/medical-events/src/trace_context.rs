//! W3C Trace Context (`traceparent`): taken from the client's request or
//! started at ingest, stored with the event, sent to the processor, and put
//! on the log lines of the event's whole life as `traceId`.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use rand::Rng;
use tracing::Instrument;

pub const HEADER: &str = "traceparent";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: String,
    span_id: String,
    flags: String,
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    loop {
        let value: String = (0..bytes)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect();
        // All-zero ids are invalid in the spec.
        if value.bytes().any(|b| b != b'0') {
            return value;
        }
    }
}

fn is_hex(value: &str, len: usize) -> bool {
    value.len() == len
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TraceContext {
    /// A new trace (no valid `traceparent` came with the request).
    pub fn new_root() -> Self {
        Self {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            flags: "01".to_owned(),
        }
    }

    /// Parses a version-00 `traceparent`; `None` if malformed.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let valid = version == "00"
            && parts.next().is_none()
            && is_hex(trace_id, 32)
            && is_hex(span_id, 16)
            && is_hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && span_id.bytes().any(|b| b != b'0');
        valid.then(|| Self {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            flags: flags.to_owned(),
        })
    }

    /// The same trace, a new span (this service's part of it).
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            span_id: random_hex(8),
            flags: self.flags.clone(),
        }
    }

    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    pub fn span_id(&self) -> &str {
        &self.span_id
    }

    pub fn header_value(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// Middleware: the request's context (child of the caller's, or a new
/// trace) goes into the request extensions and onto every log line of the
/// request; the response carries it back in `traceparent`.
pub async fn propagate(mut request: Request, next: Next) -> Response {
    let parent = request
        .headers()
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse);
    let context = parent
        .as_ref()
        .map_or_else(TraceContext::new_root, TraceContext::child);
    let span = tracing::info_span!("request", traceId = %context.trace_id());
    if let Some(parent) = &parent {
        crate::telemetry::continue_trace(&span, parent);
    }
    let header = HeaderValue::from_str(&context.header_value()).ok();
    request.extensions_mut().insert(context);
    let mut response = next.run(request).instrument(span).await;
    if let Some(header) = header {
        response.headers_mut().insert(HEADER, header);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_round_trips_and_children_keep_the_trace() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(value).unwrap();
        assert_eq!(context.header_value(), value);
        let child = context.child();
        assert_eq!(child.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(child.header_value(), value);
    }

    #[test]
    fn malformed_values_are_ignored() {
        for value in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(TraceContext::parse(value).is_none(), "{value}");
        }
        assert!(TraceContext::parse(&TraceContext::new_root().header_value()).is_some());
    }
}
