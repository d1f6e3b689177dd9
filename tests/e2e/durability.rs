//! Every acknowledged write survives a crash and a graceful shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rapport_proto::v1 as pb;
use rapport_proto::v1::event::Payload;

use crate::app::{Backend, TestApp, spawn_app, start};
use crate::ingest::{interaction, one};
use crate::on_both_backends;

on_both_backends!(
    acknowledged_writes_survive_a_crash,
    shutdown_drains_in_flight_writes
);

type Acks = Arc<Mutex<Vec<(String, u64)>>>;

/// Eight clients recording as fast as they can until the server goes away.
async fn start_writers(app: &TestApp) -> (Acks, Vec<tokio::task::JoinHandle<()>>) {
    let acks: Acks = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut client = app.interactions().await;
        let acks = Arc::clone(&acks);
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                let id = format!("w{w}-{n}");
                match client
                    .record_interaction(one(interaction(&id, &format!("user{}", n % 5))))
                    .await
                {
                    Ok(r) => acks.lock().unwrap().push((id, r.into_inner().position)),
                    Err(_) => return,
                }
            }
        }));
    }
    (acks, tasks)
}

async fn wait_for_acks(acks: &Acks, count: usize) {
    for _ in 0..3000 {
        if acks.lock().unwrap().len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {count} acknowledged writes after 30 s");
}

/// Asserts every acknowledged interaction is in the log at its position.
async fn assert_all_present(app: &TestApp, acks: &[(String, u64)]) {
    let mut log = app.event_log().await;
    let mut recorded: HashMap<u64, String> = HashMap::new();
    let mut after = 0;
    loop {
        let page = log
            .read_events(pb::ReadEventsRequest {
                after_position: after,
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for e in &page.events {
            if let Some(Payload::InteractionRecorded(ir)) = &e.payload {
                recorded.insert(
                    e.position,
                    ir.interaction.as_ref().unwrap().interaction_id.clone(),
                );
            }
        }
        if page.events.is_empty() {
            break;
        }
        after = page.next_after_position;
    }
    for (id, position) in acks {
        assert_eq!(
            recorded.get(position),
            Some(id),
            "acknowledged {id} at {position} is missing"
        );
    }
}

/// Waits for the writers to notice the server is gone, restarts it on the
/// same database and checks every acknowledged write is there.
async fn restart_with_every_ack(
    db: rapport_testkit::TestDatabase,
    writers: Vec<tokio::task::JoinHandle<()>>,
    acks: &Acks,
) -> TestApp {
    for writer in writers {
        writer.await.unwrap();
    }
    let acks = acks.lock().unwrap().clone();
    let app = start(db, &[]).await;
    app.wait_serving().await;
    assert_all_present(&app, &acks).await;
    app
}

async fn acknowledged_writes_survive_a_crash(backend: Backend) {
    let Some(app) = spawn_app(backend, "crash").await else {
        return;
    };
    let (acks, tasks) = start_writers(&app).await;
    wait_for_acks(&acks, 300).await;
    let db = app.crash();
    restart_with_every_ack(db, tasks, &acks).await;
}

async fn shutdown_drains_in_flight_writes(backend: Backend) {
    let Some(app) = spawn_app(backend, "graceful").await else {
        return;
    };
    let (acks, tasks) = start_writers(&app).await;
    wait_for_acks(&acks, 200).await;
    let (clean_exit, db) = app.terminate().await;
    assert!(clean_exit, "SIGTERM ends the server with status 0");
    let app = restart_with_every_ack(db, tasks, &acks).await;
    // And it still takes writes after the restart.
    let after = app
        .interactions()
        .await
        .record_interaction(one(interaction("after-restart", "ana")))
        .await;
    assert!(after.is_ok());
}

/// A projector stuck in a database call (here: behind another session's
/// lock on its table) must not hold the shutdown: after the drain the server
/// gives its projectors a bounded time, abandons the stuck batch (its
/// transaction rolls back) and exits. The abandoned batch is applied after a
/// restart: nothing acknowledged is lost from the read model either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_shutdown_does_not_wait_for_a_stuck_projector() {
    use sqlx::Connection;
    let Some(db) = crate::app::fresh_database(Backend::Postgres, "stuck_projector").await else {
        return;
    };
    let app = start(db, &["--drain-timeout-secs", "1"]).await;
    app.wait_serving().await;
    let mut interactions = app.interactions().await;
    let first = interactions
        .record_interaction(one(interaction("before-lock", "ana")))
        .await
        .unwrap()
        .into_inner();

    let mut blocker = sqlx::PgConnection::connect(app.database_url())
        .await
        .unwrap();
    // The timeline's live table exists once its first generation is active.
    let generation: i64 = loop {
        let active: Option<i64> = sqlx::query_scalar(
            "SELECT generation FROM projection_generations \
             WHERE name = 'timeline' AND state = 'active' AND position >= $1",
        )
        .bind(first.position as i64)
        .fetch_optional(&mut blocker)
        .await
        .unwrap();
        if let Some(g) = active {
            break g;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE timeline_entries_g{generation} IN ACCESS EXCLUSIVE MODE"
    )))
    .execute(&mut blocker)
    .await
    .unwrap();
    let stuck = interactions
        .record_interaction(one(interaction("while-locked", "bea")))
        .await
        .unwrap()
        .into_inner();
    // Wait until the projector really waits for the lock.
    let mut admin = sqlx::PgConnection::connect(app.database_url())
        .await
        .unwrap();
    for attempt in 0.. {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(attempt < 200, "the timeline projector never blocked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = std::time::Instant::now();
    let (clean_exit, db) = app.terminate().await;
    let took = started.elapsed();
    assert!(clean_exit, "SIGTERM ends the server with status 0");
    // Drain (1 s, nothing in flight) + the projectors' bound (10 s).
    assert!(
        took < Duration::from_secs(15),
        "the shutdown waited {took:?} for a stuck projector"
    );

    // Releasing the lock lets the abandoned batch's transaction go; a
    // restarted server applies the write it held.
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let app = start(db, &[]).await;
    app.wait_serving().await;
    let page = app
        .timelines()
        .await
        .get_timeline(pb::GetTimelineRequest {
            community_id: "acme".into(),
            member_id: stuck.member_id.clone(),
            min_position: stuck.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        page.entries.iter().any(|e| e.position == stuck.position),
        "the write made while the projector was stuck is in the timeline after a restart"
    );
}
