//! `spawn_app`: start the real server binary on port 0 against a fresh database.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rapport_proto::v1::admin_service_client::AdminServiceClient;
use rapport_proto::v1::advocacy_service_client::AdvocacyServiceClient;
use rapport_proto::v1::event_log_service_client::EventLogServiceClient;
use rapport_proto::v1::interaction_service_client::InteractionServiceClient;
use rapport_proto::v1::timeline_service_client::TimelineServiceClient;
use rapport_testkit::TestDatabase;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each listed async test once per backend, as `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::app::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::app::Backend::Postgres).await })*
        }
    };
}

/// A running server and the database it owns.
pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `/metrics` is served.
    pub admin_addr: SocketAddr,
    /// Always `Some` until the app is consumed by `crash` or `terminate`.
    db: Option<TestDatabase>,
    process: Child,
    /// Everything the server logged, for failure messages.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// A fresh database on `backend`, or `None` when PostgreSQL is skipped.
pub async fn fresh_database(backend: Backend, test: &str) -> Option<TestDatabase> {
    match backend {
        Backend::Sqlite => Some(TestDatabase::sqlite()),
        Backend::Postgres => TestDatabase::postgres(test).await,
    }
}

/// Starts the server on a fresh database and waits until it is SERVING.
pub async fn spawn_app(backend: Backend, test: &str) -> Option<TestApp> {
    let db = fresh_database(backend, test).await?;
    let app = start(db, &[]).await;
    app.wait_serving().await;
    Some(app)
}

/// Starts the server binary on `db` without waiting for the database.
pub async fn start(db: TestDatabase, extra_args: &[&str]) -> TestApp {
    let url = db.url.clone();
    start_on(&url, Some(db), extra_args)
}

/// Starts the server binary on a database URL, which may be unreachable.
pub fn start_on(url: &str, db: Option<TestDatabase>, extra_args: &[&str]) -> TestApp {
    start_with_env(url, db, extra_args, &[])
}

/// [`start_on`] with environment variables set for the server.
pub fn start_with_env(
    url: &str,
    db: Option<TestDatabase>,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> TestApp {
    let mut process = Command::new(env!("CARGO_BIN_EXE_rapport-server"))
        .args(if extra_args.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        })
        .args(["--database-url", url])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(extra_args)
        .env("RUST_LOG", "info")
        .env("RAPPORT_MASTER_KEY", rapport_testkit::TEST_MASTER_KEY)
        .env_remove("RAPPORT_MASTER_KEY_FILE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .envs(env.iter().copied())
        .env_remove("RAPPORT_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rapport-server");
    let stderr = process.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (admin_tx, admin_rx) = std::sync::mpsc::channel();
    let sink = Arc::clone(&log);
    // Keep reading stderr for the whole life of the process, so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening addr=").nth(1) {
                let _ = addr_tx.send(addr.trim().to_owned());
            }
            if let Some(addr) = line.split("admin_addr=").nth(1) {
                let _ = admin_tx.send(addr.trim().to_owned());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "the server never said it was listening: {:?}",
                log.lock().unwrap()
            )
        });
    let admin_addr = admin_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the server says where it serves metrics");
    TestApp {
        addr: addr.parse().expect("listening address"),
        admin_addr: admin_addr.parse().expect("admin address"),
        db,
        process,
        log,
    }
}

impl TestApp {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connect to the server")
    }

    pub async fn interactions(&self) -> InteractionServiceClient<Channel> {
        InteractionServiceClient::new(self.channel().await)
    }

    pub async fn event_log(&self) -> EventLogServiceClient<Channel> {
        EventLogServiceClient::new(self.channel().await)
    }

    pub async fn timelines(&self) -> TimelineServiceClient<Channel> {
        TimelineServiceClient::new(self.channel().await)
    }

    pub async fn advocacy(&self) -> AdvocacyServiceClient<Channel> {
        AdvocacyServiceClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel().await)
    }

    pub async fn health(&self, service: &str) -> ServingStatus {
        let mut client = HealthClient::new(self.channel().await);
        let response = client
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health check");
        response.into_inner().status()
    }

    pub async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.health("").await != ServingStatus::Serving {
            assert!(
                Instant::now() < deadline,
                "not SERVING after 30 s: {:?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: a crash, with no chance to flush anything.
    pub fn crash(mut self) -> TestDatabase {
        self.process.kill().expect("kill");
        self.process.wait().expect("reap");
        self.into_database()
    }

    /// SIGKILL, for an app that may not own its database (a second replica).
    pub fn kill(mut self) -> Option<TestDatabase> {
        let _ = self.process.kill();
        let _ = self.process.wait();
        self.db.take()
    }

    /// SIGTERM, then waits for the process to exit; returns its success.
    pub async fn terminate(self) -> (bool, TestDatabase) {
        let (success, db) = self.terminate_without_database().await;
        (success, db.expect("database"))
    }

    /// As `terminate`, for an app started without a database of its own.
    pub async fn terminate_without_database(mut self) -> (bool, Option<TestDatabase>) {
        let pid = self.process.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.process.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit 30 s after SIGTERM");
            // Async: the test's own connections must keep being polled while the server drains.
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        (status.success(), self.db.take())
    }

    /// `GET /metrics` on the admin port: the Prometheus text.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.admin_addr)
            .await
            .expect("connect to the admin port");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: rapport\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain"),
            "{head}"
        );
        body.to_owned()
    }

    pub fn database_url(&self) -> &str {
        &self.db.as_ref().expect("database").url
    }

    fn into_database(mut self) -> TestDatabase {
        let _ = self.process.kill();
        let _ = self.process.wait();
        self.db.take().expect("database")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
