//! A request's deadline for the work it starts on the CPU pool: its client's `grpc-timeout`
//! less a margin, so our answer arrives before the client gives up, and at most the daemon's
//! own cap ([`MAX_WORK`]).

use crate::service::cpu_pool::MAX_WORK;
use std::time::{Duration, Instant};

/// Answered before the client's own deadline, so the client reads our status, not its timeout.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// The deadline of a request: its client's `grpc-timeout` less a margin (so our answer arrives
/// first), at most [`MAX_WORK`] from now.
pub fn of(metadata: &tonic::metadata::MetadataMap) -> Instant {
    let now = Instant::now();
    let cap = now + MAX_WORK;
    match metadata.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout) {
        Some(t) => (now + t.saturating_sub(DEADLINE_MARGIN)).min(cap),
        None => cap,
    }
}

/// gRPC's `TimeoutValue TimeoutUnit`: up to 8 digits and one of H M S m u n.
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
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
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        for bad in ["", "5", "m", "123456789S", "-1S", "1x"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
