//! Configuration: command-line flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The Rapport server: an event-sourced community-relationship service over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "rapport-server", version, about)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "RAPPORT_LISTEN", default_value = "[::]:50051")]
    pub listen: SocketAddr,

    /// Database URL: `postgres://user@host/db` or `sqlite:PATH`. When unset,
    /// an embedded SQLite database is kept in the data directory.
    #[arg(long, env = "RAPPORT_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory of the embedded SQLite database (used when no database URL is set).
    #[arg(long, env = "RAPPORT_DATA_DIR", default_value = "./rapport-data")]
    pub data_dir: PathBuf,

    /// Database connections (PostgreSQL pool; SQLite readers).
    #[arg(long, env = "RAPPORT_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// Most interactions committed in one group-commit transaction.
    #[arg(long, env = "RAPPORT_GROUP_COMMIT_MAX_BATCH", default_value_t = 5_000)]
    pub group_commit_max_batch: usize,

    /// How long the writer may wait for more requests before committing a
    /// batch, in milliseconds. 0 commits what is queued at once; batches still
    /// grow under load, while the previous batch commits.
    #[arg(long, env = "RAPPORT_GROUP_COMMIT_LINGER_MS", default_value_t = 0)]
    pub group_commit_linger_ms: u64,

    /// Most `SubscribeEvents` streams open at once; past it, RESOURCE_EXHAUSTED.
    /// A subscriber that is catching up holds up to about 1 MiB (two pages
    /// of events and its queued responses), so this bounds that memory.
    #[arg(long, env = "RAPPORT_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    pub max_subscriptions: usize,

    /// How often to read the log's head for commits made by other processes
    /// (replicas), in milliseconds. On PostgreSQL, LISTEN/NOTIFY hears of
    /// them at once; this poll covers a lost notification.
    #[arg(long, env = "RAPPORT_COMMIT_POLL_MS", default_value_t = 500)]
    pub commit_poll_ms: u64,

    /// After SIGTERM, how long in-flight requests may take before the
    /// remaining connections are closed, in seconds. Keep it below the
    /// Kubernetes termination grace period.
    #[arg(long, env = "RAPPORT_DRAIN_TIMEOUT_SECS", default_value_t = 20)]
    pub drain_timeout_secs: u64,

    /// Log format.
    #[arg(long, env = "RAPPORT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The database URL in effect: the configured one, or the embedded default.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite:{}", self.data_dir.join("rapport.db").display()),
        }
    }

    pub fn group_commit_linger(&self) -> Duration {
        Duration::from_millis(self.group_commit_linger_ms)
    }

    pub fn commit_poll_interval(&self) -> Duration {
        Duration::from_millis(self.commit_poll_ms.max(1))
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_keeps_sqlite_data_in_rapport_data() {
        let config = Config::parse_from(["rapport-server"]);
        assert_eq!(
            config.effective_database_url(),
            "sqlite:./rapport-data/rapport.db"
        );
        assert_eq!(config.listen.port(), 50051);
    }

    #[test]
    fn a_database_url_wins_over_the_data_dir() {
        let config =
            Config::parse_from(["rapport-server", "--database-url", "postgres://db/rapport"]);
        assert_eq!(config.effective_database_url(), "postgres://db/rapport");
    }
}
