//! The client's deadline, from the `grpc-timeout` header gRPC clients send
//! (e.g. `250m` for 250 ms): requests still queued when it passes are dropped
//! and answered DEADLINE_EXCEEDED.

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

/// tonic's server cancels a call at the deadline with CANCELLED; kiln gives up
/// this much earlier so the client gets DEADLINE_EXCEEDED instead.
const MARGIN: Duration = Duration::from_millis(2);

pub fn from_metadata(metadata: &MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_timeout(value)?.saturating_sub(MARGIN);
    Some(Instant::now() + timeout)
}

/// Whether a call's `grpc-timeout` leaves no more than the margin: it is
/// answered DEADLINE_EXCEEDED at once. Checked when the call arrives, before
/// anything waits (its message, a queue), because once something waits
/// tonic's timer, which runs from the same moment, may answer CANCELLED first.
pub fn already_due(headers: &http::HeaderMap) -> bool {
    headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_timeout)
        .is_some_and(|timeout| timeout <= MARGIN)
}

/// `<digits><unit>` with unit H, M, S, m (milli), u (micro) or n (nano).
fn parse_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_timeout("m"), None);
        assert_eq!(parse_timeout("5x"), None);
        let due = |v: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", v.parse().unwrap());
            already_due(&headers)
        };
        assert!(due("1m") && due("2000u"));
        // Leading zeros past gRPC's eight digits are read too (the e2e test uses them).
        assert!(due("000000001m"));
        assert!(!due("3m") && !due("1S"));
        assert!(!already_due(&http::HeaderMap::new()));
        assert_eq!(parse_timeout(""), None);
    }
}
