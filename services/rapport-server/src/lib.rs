//! The Rapport server: gRPC over an event log on SQLite or PostgreSQL.
//!
//! # Layout
//!
//! - [`run`]: serves on a bound listener until a shutdown future resolves;
//!   `main.rs` only parses [`Config`], installs logging, binds and calls it,
//!   and tests call it the same way with port 0.
//! - [`config`]: flags and environment variables.
//! - `api`: the gRPC services (`InteractionService`, `EventLogService`,
//!   `TimelineService`, `AdvocacyService`, `MemberService`, `AdminService`).
//! - [`error`]: every client-visible error and its gRPC status, in one place.
//! - `convert`: wire types to domain types and back.
//! - [`auth`]: bearer tokens, scopes and communities of every call.
//! - `prometheus`: Prometheus `/metrics` on the admin port, RED per method.
//! - [`telemetry`]: logs and OTLP traces.
//!
//! Start-up: the listener serves health and reflection at once; the store
//! connects and migrates in the background (retrying while the database is
//! down), and only then does health turn SERVING. From then on health
//! follows the database: NOT_SERVING while it does not answer. Shutdown: health turns
//! NOT_SERVING, the server stops accepting and finishes in-flight requests,
//! the group-commit writer commits what it holds, the projectors stop
//! between batches, the database closes.

mod api;
pub mod auth;
pub mod config;
mod convert;
pub mod error;
mod prometheus;
pub mod telemetry;

use std::future::Future;
use std::time::Duration;

use rapport_projections::{Projections, RunnerOptions};
use rapport_proto::v1::admin_service_server::AdminServiceServer;
use rapport_proto::v1::advocacy_service_server::AdvocacyServiceServer;
use rapport_proto::v1::interaction_service_server::InteractionServiceServer;
use rapport_proto::v1::member_service_server::MemberServiceServer;
use rapport_proto::v1::timeline_service_server::TimelineServiceServer;
use rapport_store::{Feed, Store, StoreError, StoreOptions, Writer, WriterConfig};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

pub use config::Config;

use api::{
    Admin, Advocacy, AppState, EventLogRoutes, Interactions, Members, Ready, Subscriptions,
    Timelines,
};

/// Largest `RecordInteractions` request: 1,000 interactions of a few KiB each.
pub const MAX_INGEST_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Largest request of any other service.
pub const MAX_QUERY_REQUEST_BYTES: usize = 64 * 1024;

/// How often the tokens file is re-read for changes.
const TOKENS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How long an HTTP/2 keepalive PING may go unanswered.
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// After the drain, how long the writer's last commit, the projectors' last
/// batches and the database's close may take together. Past it the server
/// abandons what is left (nothing unacknowledged is promised; an abandoned
/// projector batch rolls back and is applied again after the restart) and
/// exits: a database call that never returns (a lock held elsewhere) must not
/// hold the process until Kubernetes kills it. `deploy/check.py` keeps the
/// grace period above preStop + drain + this.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The health service name of the liveness probe: SERVING as long as the
/// process serves gRPC, whatever the database does, so that a database
/// outage turns replicas unready without getting them restarted.
pub const LIVENESS_SERVICE: &str = "liveness";

/// The gRPC services whose health follows the database.
const SERVICES: [&str; 6] = [
    <InteractionServiceServer<Interactions> as tonic::server::NamedService>::NAME,
    <EventLogRoutes as tonic::server::NamedService>::NAME,
    <TimelineServiceServer<Timelines> as tonic::server::NamedService>::NAME,
    <AdvocacyServiceServer<Advocacy> as tonic::server::NamedService>::NAME,
    <AdminServiceServer<Admin> as tonic::server::NamedService>::NAME,
    <MemberServiceServer<Members> as tonic::server::NamedService>::NAME,
];

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("gRPC transport failed")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection descriptors are invalid")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot serve metrics on {addr}")]
    AdminListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Serves Rapport on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let url = config.effective_database_url();
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        return Err(ServerError::Config(format!(
            "database url must start with sqlite: or postgres:// (got {:?})",
            url.split("://").next().unwrap_or_default()
        )));
    }

    let tokens = match &config.tokens_file {
        Some(path) => {
            let tokens = auth::Tokens::load(path).map_err(ServerError::Config)?;
            info!(path = %path.display(), tokens = tokens.count(), "tokens loaded; every call but health and reflection needs one");
            tokens.watch(path.clone(), TOKENS_RELOAD_INTERVAL);
            Some(tokens)
        }
        None => None,
    };
    let master_key = master_key(&config, &url)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        _ => None,
    };

    // Before anything records a metric.
    prometheus::recorder();
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    health
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;

    let state = AppState::default();
    // Turns true when the shutdown starts: health flips, streams end.
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);

    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| ServerError::AdminListen {
            addr: config.admin_listen,
            source,
        })?;
    if let Ok(addr) = admin_listener.local_addr() {
        info!(admin_addr = %addr, "serving Prometheus metrics at /metrics");
    }
    let (admin_stop, mut admin_stopping) = tokio::sync::watch::channel(false);
    let admin_http = tokio::spawn(prometheus::serve_admin(
        admin_listener,
        state.clone(),
        async move {
            let _ = admin_stopping.wait_for(|stop| *stop).await;
        },
    ));
    // The projectors stop after the drain, so reads waiting for them finish.
    let (projectors_stop, projectors_stopping) = tokio::sync::watch::channel(false);
    let startup = tokio::spawn(open_store(
        config.clone(),
        master_key,
        state.clone(),
        health.clone(),
        projectors_stopping,
        stopping.clone(),
    ));

    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let interactions = InteractionServiceServer::new(Interactions {
        state: state.clone(),
    })
    .max_decoding_message_size(MAX_INGEST_REQUEST_BYTES);
    let event_log = EventLogRoutes::new(
        Subscriptions::new(state.clone(), config.max_subscriptions, stopping.clone()),
        MAX_QUERY_REQUEST_BYTES,
    );
    let timelines = TimelineServiceServer::new(Timelines {
        state: state.clone(),
    })
    .max_decoding_message_size(MAX_QUERY_REQUEST_BYTES);
    let advocacy = AdvocacyServiceServer::new(Advocacy {
        state: state.clone(),
    })
    .max_decoding_message_size(MAX_QUERY_REQUEST_BYTES);
    let admin = AdminServiceServer::new(Admin {
        state: state.clone(),
    })
    .max_decoding_message_size(MAX_QUERY_REQUEST_BYTES);
    let members = MemberServiceServer::new(Members {
        state: state.clone(),
    })
    .max_decoding_message_size(MAX_QUERY_REQUEST_BYTES);

    // The shutdown signal flips health first, then stops the listener; the
    // drain that follows is bounded, so a client that never closes its
    // connection cannot hold the process (and the pending batch) hostage.
    let drain_health = health.clone();
    tokio::spawn(async move {
        shutdown.await;
        info!("shutting down: health NOT_SERVING, draining in-flight requests");
        set_health(&drain_health, ServingStatus::NotServing).await;
        let _ = stopping_tx.send(true);
    });
    let mut stop_accepting = stopping.clone();
    let drain_timeout = config.drain_timeout();
    info!(addr = %listener.local_addr().map_err(|e| ServerError::Config(e.to_string()))?, "listening");
    // Small responses must leave at once: without TCP_NODELAY, Nagle's
    // algorithm holds them back waiting for the client's delayed ACK.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = tonic::transport::Server::builder()
        .timeout(config.request_timeout())
        .http2_keepalive_interval(config.http2_keepalive())
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let serve = server
        .trace_fn(telemetry::grpc_span)
        // Outermost first: count every call, then authenticate, then shed
        // what is over the limit.
        .layer(
            tower::ServiceBuilder::new()
                .layer(prometheus::RedLayer)
                .layer(auth::AuthLayer(tokens))
                .layer(tower::load_shed::LoadShedLayer::new())
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    config.max_concurrent_requests.max(1),
                )),
        )
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(interactions)
        .add_service(event_log)
        .add_service(timelines)
        .add_service(advocacy)
        .add_service(admin)
        .add_service(members)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_accepting.wait_for(|stop| *stop).await;
        });
    tokio::select! {
        served = serve => served?,
        _ = async {
            let _ = stopping.wait_for(|stop| *stop).await;
            tokio::time::sleep(drain_timeout).await;
        } => warn!(timeout_s = drain_timeout.as_secs(), "drain timed out, closing the remaining connections"),
    }

    // The admin server holds the state, and so the writer: it stops first.
    let _ = admin_stop.send(true);
    let _ = admin_http.await;

    // Every request has been answered. Stop connecting if we never did; else
    // let the writer commit what it holds (it stops once the last handle,
    // held by the state, is gone) and close the database.
    startup.abort();
    let tasks = startup.await.ok();
    let store = state.ready().ok().map(|r| r.store.clone());
    drop(state);
    let _ = projectors_stop.send(true);
    // The close gets the last two seconds whatever happened before it.
    let finish_within = STOP_TIMEOUT - Duration::from_secs(2);
    let deadline = tokio::time::Instant::now() + finish_within;
    let close_by = deadline + Duration::from_secs(2);
    if let Some((writer_task, projector_tasks, commit_watch)) = tasks {
        commit_watch.abort();
        if tokio::time::timeout_at(deadline, writer_task)
            .await
            .is_err()
        {
            warn!(
                timeout_s = finish_within.as_secs(),
                "the group-commit writer did not finish its last commit in time; abandoning it"
            );
        }
        // A projector stops between batches. One stuck in a database call
        // is aborted: its transaction never commits, so the batch is applied
        // again, whole, by whichever process leads next.
        for task in projector_tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                warn!(
                    timeout_s = finish_within.as_secs(),
                    "a projector did not stop in time; abandoning its batch"
                );
                abort.abort();
            }
        }
    }
    if let Some(store) = store
        && tokio::time::timeout_at(close_by, store.close())
            .await
            .is_err()
    {
        warn!("the database connections did not close in time; exiting without them");
    }
    info!("stopped");
    Ok(())
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rapport_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // So that grpcurl can decode google.rpc error details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// The master key: configured, or the embedded default's own on SQLite.
/// Checked before anything starts: without it nothing could be written.
fn master_key(config: &Config, url: &str) -> Result<rapport_store::MasterKey, ServerError> {
    use rapport_store::{MasterKey, Store};
    let key = match (&config.master_key, &config.master_key_file) {
        (Some(text), _) => MasterKey::from_base64(text),
        (None, Some(path)) => MasterKey::load_or_create(path, false),
        (None, None) => match Store::embedded_master_key_path(url) {
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        ServerError::Config(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                MasterKey::load_or_create(&path, true)
            }
            None => {
                return Err(ServerError::Config(
                    "PostgreSQL needs a master key, the same on every replica: \
                     set --master-key-file or RAPPORT_MASTER_KEY (openssl rand -base64 32)"
                        .into(),
                ));
            }
        },
    };
    key.map_err(|e| ServerError::Config(e.to_string()))
}

fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tonic::transport::ServerTlsConfig, ServerError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", path.display())))
    };
    let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
    Ok(tonic::transport::ServerTlsConfig::new().identity(identity))
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in SERVICES {
        health.set_service_status(service, status).await;
    }
}

/// Connects, migrates and checks the database, retrying with backoff while it
/// is unreachable; then hands the store to the services and turns SERVING.
/// Starts the projectors and the watch for other processes' commits. Returns
/// the writer and projector tasks, to await at shutdown, and the watch.
async fn open_store(
    config: Config,
    master_key: rapport_store::MasterKey,
    state: AppState,
    health: HealthReporter,
    projectors_stopping: tokio::sync::watch::Receiver<bool>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> (
    tokio::task::JoinHandle<()>,
    Vec<tokio::task::JoinHandle<()>>,
    tokio::task::JoinHandle<()>,
) {
    let mut options =
        StoreOptions::new(config.effective_database_url()).with_master_key(master_key);
    options.max_connections = config.db_max_connections;
    options.sqlite_heap_limit = config.sqlite_cache_mib.saturating_mul(1 << 20);
    let mut delay = Duration::from_millis(200);
    let store = loop {
        match connect(&options).await {
            Ok(store) => break store,
            Err(error) => {
                warn!(error = %error_chain(&error), retry_in_ms = delay.as_millis() as u64, "database not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    let head = store.head().await.unwrap_or_default();
    info!(backend = store.backend(), head, "database ready");
    let feed = Feed::new();
    feed.observe(head);
    let commit_watch = store.watch_commits(feed.clone(), config.commit_poll_interval());
    let (writer, task) = Writer::spawn(
        store.clone(),
        WriterConfig {
            max_batch: config.group_commit_max_batch,
            linger: config.group_commit_linger(),
            ..WriterConfig::default()
        },
        feed,
    );
    let projections = Projections::new(store.clone());
    let projector_tasks = projections.spawn(
        writer.committed(),
        RunnerOptions {
            linger: config.projector_linger(),
            ..RunnerOptions::default()
        },
        projectors_stopping,
    );
    let store_for_health = store.clone();
    state.set_ready(Ready {
        store,
        writer,
        projections,
    });
    set_health(&health, ServingStatus::Serving).await;
    tokio::spawn(follow_database(
        store_for_health,
        health,
        config.health_check_interval(),
        stopping,
    ));
    (task, projector_tasks, commit_watch)
}

/// Keeps health in step with the database: NOT_SERVING while it does not
/// answer (Kubernetes then routes to other replicas), SERVING again when it
/// does, NOT_SERVING for good once the shutdown starts. The only writer of
/// health once the store is open, so the shutdown's NOT_SERVING always wins.
async fn follow_database(
    store: Store,
    health: HealthReporter,
    interval: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => break,
            _ = tokio::time::sleep(interval) => {}
        }
        let answered = matches!(
            tokio::time::timeout(interval, store.ping()).await,
            Ok(Ok(()))
        );
        if answered != serving && !*stopping.borrow() {
            serving = answered;
            if serving {
                info!("database answers again: SERVING");
                set_health(&health, ServingStatus::Serving).await;
            } else {
                warn!("database does not answer: NOT_SERVING");
                set_health(&health, ServingStatus::NotServing).await;
            }
        }
    }
    set_health(&health, ServingStatus::NotServing).await;
}

async fn connect(options: &StoreOptions) -> Result<Store, StoreError> {
    let store = Store::connect(options).await?;
    store.migrate().await?;
    store.ping().await?;
    Ok(store)
}

/// `error: cause: cause`, for one-line logs.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
