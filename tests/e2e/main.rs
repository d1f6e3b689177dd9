//! End-to-end tests: the real `rapport-server` binary on an ephemeral port,
//! driven over gRPC, on SQLite and on PostgreSQL (a fresh database each).
//!
//! One test binary with a module per area, as in zero-to-production; the
//! harness is in `app.rs`. Each test runs once per backend through
//! `on_both_backends!`, so a PostgreSQL failure has its own name.

mod advocacy;
mod app;
mod auth;
mod durability;
mod event_log;
mod grpcurl;
mod health;
mod ingest;
mod limits;
mod members;
mod merges;
mod metrics;
mod personal;
mod reflection;
mod subscribe;
mod timeline;
mod traces;
