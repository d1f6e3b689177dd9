//! `rapport-server`: parse the configuration, bind, serve until SIGTERM or Ctrl-C.

use clap::Parser;
use rapport_server::{Config, run, telemetry};
use tokio::net::TcpListener;

/// glibc's allocator spent a third of the server's CPU under ingest load
/// (fragmentation and consolidation with many short-lived buffers of every
/// size); mimalloc does not. See docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve());
    // Dropping a runtime waits for its blocking threads, and a SQLite call
    // abandoned by the shutdown (a rebuild's final merge runs for minutes
    // at 10 M) would hold the exit. What it was doing rolls back.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn serve() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = telemetry::init(config.log_format);
    let addr = config.effective_listen();
    if config.tokens_file.is_none() {
        tracing::warn!(
            %addr,
            "no --tokens-file: every call is allowed without a token, so gRPC listens on loopback only"
        );
    }
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%addr, %error, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = match run(listener, config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = ?error, "server failed");
            std::process::ExitCode::FAILURE
        }
    };
    // Off the runtime's worker: the flush blocks until the export is done.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
