//! The gRPC services: decode, validate through the domain, call the store,
//! encode. No business rule lives here.

mod event_log;
mod interaction;

use std::sync::{Arc, OnceLock};

use rapport_store::{Store, Writer};

pub use event_log::EventLog;
pub use interaction::Interactions;

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
}

impl AppState {
    pub fn set_ready(&self, ready: Ready) {
        let _ = self.ready.set(ready);
    }

    pub fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready.get().ok_or(ApiError::NotReady)
    }
}
