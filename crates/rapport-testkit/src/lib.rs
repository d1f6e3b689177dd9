//! Test support: a fresh database per test, on either backend.
//!
//! PostgreSQL tests run against `RAPPORT_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`): each test creates its own
//! database there, named by a UUID, and drops it afterwards. When the server
//! is unreachable a PostgreSQL test fails if `CI=true` or
//! `RAPPORT_TEST_POSTGRES=required`, and otherwise says it is skipped, so a
//! laptop without PostgreSQL still runs the SQLite half.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

/// The master key tests give the store and the server (base64 of 32
/// bytes): replicas of one test must share it, as in production.
pub const TEST_MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Where the PostgreSQL tests create their databases.
pub fn postgres_admin_url() -> String {
    std::env::var("RAPPORT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Whether an unreachable PostgreSQL fails the suite instead of skipping it.
pub fn postgres_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("RAPPORT_TEST_POSTGRES").is_ok_and(|v| v == "required")
}

/// A database that lives as long as the test: a SQLite file in a temporary
/// directory, or a PostgreSQL database dropped on `Drop`.
pub struct TestDatabase {
    /// The URL to hand to the store or the server.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDatabase {
    /// A new SQLite database file in a temporary directory.
    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite:{}", dir.path().join("rapport.db").display());
        TestDatabase {
            url,
            cleanup: Cleanup::Sqlite(dir),
        }
    }

    /// A new, empty PostgreSQL database, or `None` when PostgreSQL is
    /// unreachable and not required (the caller then skips, saying so).
    pub async fn postgres(test: &str) -> Option<TestDatabase> {
        let admin_url = postgres_admin_url();
        let mut admin = match tokio::time::timeout(
            Duration::from_secs(5),
            PgConnection::connect(&admin_url),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            failure => {
                let why = match failure {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                assert!(
                    !postgres_required(),
                    "PostgreSQL is required (CI=true or RAPPORT_TEST_POSTGRES=required) but {admin_url} is unreachable: {why}"
                );
                eprintln!("SKIPPED {test}: PostgreSQL at {admin_url} is unreachable ({why})");
                return None;
            }
        };
        let name = format!("rapport_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        Some(TestDatabase {
            url,
            cleanup: Cleanup::Postgres { admin_url, name },
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Cleanup::Postgres { admin_url, name } = &self.cleanup {
            // Drop may run inside or outside a runtime: use a thread of our own.
            let (admin_url, name) = (admin_url.clone(), name.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut admin)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
