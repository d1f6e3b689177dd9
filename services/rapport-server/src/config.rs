//! Configuration: command-line flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The Rapport server: an event-sourced community-relationship service over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "rapport-server", version, about)]
pub struct Config {
    /// Address to serve gRPC on. Without a tokens file the server is open,
    /// so it then listens on loopback only (127.0.0.1, this port).
    #[arg(long, env = "RAPPORT_LISTEN", default_value = "[::]:50051")]
    pub listen: SocketAddr,

    /// Address of the admin HTTP server: Prometheus metrics at `/metrics`.
    #[arg(long, env = "RAPPORT_ADMIN_LISTEN", default_value = "[::]:9090")]
    pub admin_listen: SocketAddr,

    /// Bearer tokens allowed to call the API: a TOML file of token hashes
    /// with their scopes and communities (see docs/operations.md). Re-read
    /// when it changes. Unset: no authentication, loopback only.
    #[arg(long, env = "RAPPORT_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// PEM certificate chain to serve gRPC over TLS (with --tls-key).
    #[arg(long, env = "RAPPORT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "RAPPORT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Database URL: `postgres://user@host/db` or `sqlite:PATH`. When unset,
    /// an embedded SQLite database is kept in the data directory.
    #[arg(long, env = "RAPPORT_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory of the embedded SQLite database (used when no database URL is set).
    #[arg(long, env = "RAPPORT_DATA_DIR", default_value = "./rapport-data")]
    pub data_dir: PathBuf,

    /// File holding the master key that wraps every member's data key (base64
    /// of 32 bytes: `openssl rand -base64 32`), usually a Kubernetes secret
    /// mount. Unset on SQLite: `master.key` in the data directory, created
    /// on first start. PostgreSQL needs it (or RAPPORT_MASTER_KEY), the same
    /// on every replica. Losing it loses every member's personal data.
    #[arg(long, env = "RAPPORT_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,

    /// The master key itself, base64 (prefer the file: an argument shows in
    /// the process list).
    #[arg(
        long,
        env = "RAPPORT_MASTER_KEY",
        hide_env_values = true,
        conflicts_with = "master_key_file"
    )]
    pub master_key: Option<String>,

    /// Database connections (PostgreSQL pool; SQLite readers).
    #[arg(long, env = "RAPPORT_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// SQLite: the most memory SQLite's page caches may take in all, in MiB
    /// (a soft limit; past it, connections reuse their cached pages). Keep it
    /// well below the container's memory limit. 0: no limit.
    #[arg(long, env = "RAPPORT_SQLITE_CACHE_MIB", default_value_t = rapport_store::DEFAULT_SQLITE_HEAP_LIMIT >> 20)]
    pub sqlite_cache_mib: u64,

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

    /// Most gRPC calls in progress at once (streams count until their
    /// first response); past it, RESOURCE_EXHAUSTED at once rather than a
    /// queue that grows until every caller times out.
    #[arg(long, env = "RAPPORT_MAX_CONCURRENT_REQUESTS", default_value_t = 1_000)]
    pub max_concurrent_requests: usize,

    /// Deadline of a call whose client sets none (a shorter `grpc-timeout`
    /// wins), in seconds.
    #[arg(long, env = "RAPPORT_REQUEST_TIMEOUT_SECS", default_value_t = 60)]
    pub request_timeout_secs: u64,

    /// HTTP/2 keepalive: a PING after this many idle seconds; a connection
    /// that does not answer within 20 s is closed. 0 turns it off.
    #[arg(long, env = "RAPPORT_HTTP2_KEEPALIVE_SECS", default_value_t = 30)]
    pub http2_keepalive_secs: u64,

    /// How often to check that the database answers, in seconds: health
    /// turns NOT_SERVING when it does not, and SERVING again when it does.
    #[arg(long, env = "RAPPORT_HEALTH_CHECK_SECS", default_value_t = 5)]
    pub health_check_secs: u64,

    /// How often to read the log's head for commits made by other processes
    /// (replicas), in milliseconds. On PostgreSQL, LISTEN/NOTIFY hears of
    /// them at once; this poll covers a lost notification.
    #[arg(long, env = "RAPPORT_COMMIT_POLL_MS", default_value_t = 500)]
    pub commit_poll_ms: u64,

    /// Once a projector has caught up with the log, how long it lets new
    /// commits gather before it applies the next batch, in milliseconds.
    /// Higher: less CPU per event under many small writes; reads without
    /// `min_position` may see a write up to about this much later. A read
    /// with `min_position` ends the linger (on PostgreSQL also one served by
    /// a replica that does not lead the projector: it tells the leader by
    /// `NOTIFY`). 0: every commit as it comes.
    #[arg(long, env = "RAPPORT_PROJECTOR_LINGER_MS", default_value_t = 25)]
    pub projector_linger_ms: u64,

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

    pub fn projector_linger(&self) -> Duration {
        Duration::from_millis(self.projector_linger_ms)
    }

    pub fn commit_poll_interval(&self) -> Duration {
        Duration::from_millis(self.commit_poll_ms.max(1))
    }

    /// Where gRPC is served: `listen`, but on loopback when there is no
    /// tokens file (an open server must not be reachable from the network).
    pub fn effective_listen(&self) -> SocketAddr {
        match self.tokens_file {
            Some(_) => self.listen,
            None if self.listen.ip().is_loopback() => self.listen,
            None => SocketAddr::from(([127, 0, 0, 1], self.listen.port())),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }

    pub fn http2_keepalive(&self) -> Option<Duration> {
        (self.http2_keepalive_secs > 0).then(|| Duration::from_secs(self.http2_keepalive_secs))
    }

    pub fn health_check_interval(&self) -> Duration {
        Duration::from_secs(self.health_check_secs.max(1))
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
    fn without_tokens_the_server_listens_on_loopback_only() {
        let open = Config::parse_from(["rapport-server", "--listen", "[::]:7000"]);
        assert_eq!(open.effective_listen().to_string(), "127.0.0.1:7000");
        let local = Config::parse_from(["rapport-server", "--listen", "[::1]:7000"]);
        assert_eq!(local.effective_listen().to_string(), "[::1]:7000");
        let protected = Config::parse_from([
            "rapport-server",
            "--listen",
            "[::]:7000",
            "--tokens-file",
            "/etc/rapport/tokens.toml",
        ]);
        assert_eq!(protected.effective_listen().to_string(), "[::]:7000");
    }

    #[test]
    fn tls_needs_both_the_certificate_and_the_key() {
        assert!(Config::try_parse_from(["rapport-server", "--tls-cert", "c.pem"]).is_err());
        assert!(
            Config::try_parse_from([
                "rapport-server",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem"
            ])
            .is_ok()
        );
    }

    /// docs/operations.md is the configuration reference: it must name
    /// every flag and its variable.
    #[test]
    fn the_operations_guide_documents_every_flag() {
        use clap::CommandFactory;
        let guide = include_str!("../../../docs/operations.md");
        let mut documented = 0;
        for arg in Config::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let env = arg.get_env().expect("every flag has a variable");
            let row = format!("| `--{long}` | `{}` |", env.to_string_lossy());
            assert!(
                guide.contains(&row),
                "docs/operations.md lacks the row {row}"
            );
            documented += 1;
        }
        assert!(documented >= 18, "only {documented} flags");
    }

    #[test]
    fn a_database_url_wins_over_the_data_dir() {
        let config =
            Config::parse_from(["rapport-server", "--database-url", "postgres://db/rapport"]);
        assert_eq!(config.effective_database_url(), "postgres://db/rapport");
    }
}
