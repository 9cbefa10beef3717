//! Shared state of the server and its settings.

use std::sync::Arc;
use std::time::Duration;

use oz_store::Store;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// Default of [`ServerSettings::log_retention`]: a week.
pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Settings the running server needs (resolved from flags, env and file).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Base URL clients and agents use to reach this server (no trailing slash).
    pub public_url: String,
    /// Worker id for runs that do not name one.
    pub default_worker_host: Option<String>,
    /// Fail runs that stay QUEUED longer than this.
    pub queue_timeout: Option<Duration>,
    /// How long runs of a disconnected worker wait for it to come back.
    pub lease_grace: Duration,
    /// How long a cancelled running run waits for the worker's confirmation.
    pub cancel_timeout: Duration,
    /// How long an assignment may go unanswered before the run is requeued.
    pub assign_timeout: Duration,
    /// Delete the logs of runs that ended longer ago than this; `None`
    /// keeps them forever.
    pub log_retention: Option<Duration>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            public_url: "http://127.0.0.1:8080".into(),
            default_worker_host: None,
            queue_timeout: None,
            lease_grace: Duration::from_secs(120),
            cancel_timeout: Duration::from_secs(60),
            assign_timeout: Duration::from_secs(60),
            log_retention: Some(DEFAULT_LOG_RETENTION),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub settings: Arc<ServerSettings>,
    /// Fires when the server shuts down (closes worker connections).
    pub shutdown: CancellationToken,
    /// Wakes the scheduler when a schedule changes.
    pub scheduler: Arc<tokio::sync::Notify>,
    /// Key that signs download URLs (shared by replicas through the store).
    pub url_key: Arc<Vec<u8>>,
    /// Live API keys seen in the last second (see [`crate::auth::KeyCache`]).
    pub keys: Arc<crate::auth::KeyCache>,
}

impl AppState {
    /// `OZ_API_BASE_URL` handed to agents.
    pub fn api_base_url(&self) -> String {
        format!("{}/api/v1", self.settings.public_url)
    }
}
