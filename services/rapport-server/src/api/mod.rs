//! The gRPC services: decode, validate through the domain, call the store or
//! the read models, encode. No business rule lives here.

mod admin;
mod advocacy;
mod event_log;
mod export;
mod interaction;
mod member;
mod request;
mod subscription;
mod timeline;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rapport_projections::Projections;
use rapport_store::{Store, Writer};
use tokio::time::Instant;

pub use admin::Admin;
pub use advocacy::Advocacy;
pub use interaction::Interactions;
pub use member::Members;
pub use subscription::{EventLogRoutes, Subscriptions};
pub use timeline::Timelines;

use crate::error::ApiError;

/// What the services share. The store arrives after start-up, once the
/// database answers and is migrated; until then requests get UNAVAILABLE.
#[derive(Clone, Default)]
pub struct AppState {
    ready: Arc<OnceLock<Ready>>,
}

pub struct Ready {
    pub store: Store,
    pub writer: Writer,
    pub projections: Projections,
}

impl AppState {
    pub fn set_ready(&self, ready: Ready) {
        let _ = self.ready.set(ready);
    }

    pub fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready.get().ok_or(ApiError::NotReady)
    }
}

/// How long a read waits for `min_position` when the caller sets no deadline.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// When a read that waits for the projection must give up: shortly before the
/// caller's own deadline (`grpc-timeout`), so the caller gets our answer
/// (UNAVAILABLE, the projection is behind) rather than DEADLINE_EXCEEDED;
/// [`DEFAULT_WAIT`] without one.
pub fn wait_deadline<T>(request: &tonic::Request<T>) -> Instant {
    let timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(DEFAULT_WAIT, |t| t.mul_f64(0.9));
    Instant::now() + timeout
}

/// `grpc-timeout`: at most 8 digits and a unit (gRPC over HTTP/2 spec).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
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
    fn grpc_timeouts_parse_per_the_spec() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
        assert_eq!(parse_grpc_timeout("123456789S"), None, "too many digits");
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }
}
