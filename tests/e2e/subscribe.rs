//! Following the log over gRPC: `SubscribeEvents` from history into live,
//! exactly once and in order under concurrent writers, resume from a
//! checkpoint, a subscriber that does not read, the subscription limit,
//! shutdown, and (PostgreSQL) a subscriber on one replica seeing writes made
//! through another.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rapport_proto::v1 as pb;
use rapport_proto::v1::event::Payload;
use rapport_proto::v1::subscribe_events_response::Item;
use tonic::Code;
use tonic::codec::Streaming;
use tonic_types::StatusExt;

use crate::app::{Backend, TestApp, fresh_database, spawn_app, start, start_on};
use crate::ingest::{interaction, one, violated_fields};
use crate::on_both_backends;

on_both_backends!(
    a_subscriber_gets_every_event_once_in_order_while_eight_writers_append,
    a_subscriber_resumes_from_its_last_checkpoint_and_misses_nothing,
    a_subscriber_that_does_not_read_holds_back_no_writer_and_loses_nothing,
    subscriptions_past_the_limit_are_resource_exhausted,
    shutdown_ends_a_subscription_with_where_to_resume,
    bad_filters_are_invalid_arguments,
);

async fn subscribe(app: &TestApp, after_position: u64) -> Streaming<pb::SubscribeEventsResponse> {
    app.event_log()
        .await
        .subscribe_events(pb::SubscribeEventsRequest {
            after_position,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner()
}

/// `writers` concurrent clients record `per_writer` interactions each, in
/// requests of `batch`, by a few hundred members (new ones keep appearing).
async fn write_concurrently(
    app: &TestApp,
    tag: &str,
    writers: usize,
    per_writer: usize,
    batch: usize,
) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = app.interactions().await;
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            for start in (0..per_writer).step_by(batch) {
                let interactions = (start..(start + batch).min(per_writer))
                    .map(|i| {
                        interaction(
                            &format!("{tag}-{w}-{i}"),
                            &format!("member{}", (w * 31 + i) % 400),
                        )
                    })
                    .collect();
                client
                    .record_interactions(pb::RecordInteractionsRequest { interactions })
                    .await
                    .expect("record");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
}

async fn head(app: &TestApp) -> u64 {
    app.event_log()
        .await
        .read_events(pb::ReadEventsRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .head_position
}

/// What a subscription delivered: events, and the checkpoints in between.
#[derive(Default)]
struct Received {
    events: Vec<pb::Event>,
    checkpoints: Vec<u64>,
}

impl Received {
    fn positions(&self) -> Vec<u64> {
        self.events.iter().map(|e| e.position).collect()
    }
}

/// Reads `stream` until a checkpoint at or past `until` (which may be set
/// later, from another task; `u64::MAX` until then), failing after 120 s.
async fn receive(
    stream: &mut Streaming<pb::SubscribeEventsResponse>,
    until: &AtomicU64,
) -> Received {
    let mut received = Received::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, stream.message())
            .await
            .expect("the subscription caught up within 120 s")
            .expect("the subscription is healthy")
            .expect("the subscription does not end");
        match message.item.expect("an item") {
            Item::Event(event) => received.events.push(event),
            Item::Checkpoint(checkpoint) => {
                received.checkpoints.push(checkpoint.position);
                if checkpoint.position >= until.load(Ordering::SeqCst) {
                    return received;
                }
            }
        }
    }
}

async fn a_subscriber_gets_every_event_once_in_order_while_eight_writers_append(backend: Backend) {
    let Some(app) = spawn_app(backend, "subscribe_exactly_once").await else {
        return;
    };
    let mut stream = subscribe(&app, 0).await;
    let until = Arc::new(AtomicU64::new(u64::MAX));
    let subscriber = {
        let until = Arc::clone(&until);
        tokio::spawn(async move { receive(&mut stream, &until).await })
    };
    write_concurrently(&app, "x", 8, 6_250, 125).await;
    let head = head(&app).await;
    until.store(head, Ordering::SeqCst);
    let received = subscriber.await.unwrap();

    // Every position, once, in order: positions are gap-free, so that is
    // every event of the log.
    assert_eq!(received.positions(), (1..=head).collect::<Vec<_>>());
    let ids: Vec<&str> = received
        .events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::InteractionRecorded(r)) => {
                Some(r.interaction.as_ref()?.interaction_id.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 50_000);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 50_000);
    // The events are the log's, as ReadEvents returns them.
    let mut read = Vec::new();
    let mut client = app.event_log().await;
    while (read.len() as u64) < head {
        let page = client
            .read_events(pb::ReadEventsRequest {
                after_position: read.len() as u64,
                limit: 1_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        read.extend(page.events);
    }
    assert!(
        read == received.events,
        "subscribed events differ from the log"
    );
    // Checkpoints only move forward.
    assert!(received.checkpoints.windows(2).all(|w| w[0] <= w[1]));
}

async fn a_subscriber_resumes_from_its_last_checkpoint_and_misses_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend, "subscribe_resume").await else {
        return;
    };
    write_concurrently(&app, "history", 2, 1_000, 100).await;
    // Writers keep going until the resumed subscription is open, so the
    // disconnect happens mid-way.
    let stop = Arc::new(AtomicU64::new(0));
    let background = {
        let mut client = app.interactions().await;
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut n = 0;
            while stop.load(Ordering::SeqCst) == 0 {
                let interactions = (0..20)
                    .map(|i| interaction(&format!("live-{n}-{i}"), &format!("member{}", i % 7)))
                    .collect();
                client
                    .record_interactions(pb::RecordInteractionsRequest { interactions })
                    .await
                    .expect("record");
                n += 1;
            }
        })
    };

    // The first subscription reads to its first checkpoint and a little
    // past it (what it then receives again after resuming), and goes away.
    let mut first = subscribe(&app, 0).await;
    let mut before = Vec::new();
    let checkpoint = loop {
        match first.message().await.unwrap().unwrap().item.unwrap() {
            Item::Event(event) => before.push(event.position),
            Item::Checkpoint(c) => break c.position,
        }
    };
    for _ in 0..50 {
        if let Item::Event(event) = first.message().await.unwrap().unwrap().item.unwrap() {
            before.push(event.position);
        }
    }
    drop(first);

    let mut resumed = subscribe(&app, checkpoint).await;
    stop.store(1, Ordering::SeqCst);
    background.await.unwrap();
    let head = head(&app).await;
    assert!(
        checkpoint < head,
        "disconnected mid-way ({checkpoint} of {head})"
    );
    let after = receive(&mut resumed, &AtomicU64::new(head)).await;

    assert_eq!(
        after.positions(),
        ((checkpoint + 1)..=head).collect::<Vec<_>>(),
        "the resumed subscription continues right after the checkpoint"
    );
    let mut all: Vec<u64> = before
        .iter()
        .copied()
        .filter(|p| *p <= checkpoint)
        .collect();
    all.extend(after.positions());
    assert_eq!(all, (1..=head).collect::<Vec<_>>(), "nothing missed");
}

async fn a_subscriber_that_does_not_read_holds_back_no_writer_and_loses_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend, "subscribe_slow").await else {
        return;
    };
    // Opened, then not read while 20,000 interactions are written: far more
    // than its buffer and the HTTP/2 window hold.
    let mut stalled = subscribe(&app, 0).await;
    let writes = write_concurrently(&app, "x", 4, 5_000, 100);
    tokio::time::timeout(Duration::from_secs(300), writes)
        .await
        .expect("the writers finished although a subscriber does not read");
    let head = head(&app).await;

    // When it reads again, it gets everything, in order.
    let received = receive(&mut stalled, &AtomicU64::new(head)).await;
    assert_eq!(received.positions(), (1..=head).collect::<Vec<_>>());
}

async fn subscriptions_past_the_limit_are_resource_exhausted(backend: Backend) {
    let Some(db) = fresh_database(backend, "subscribe_limit").await else {
        return;
    };
    let app = start(db, &["--max-subscriptions", "2"]).await;
    app.wait_serving().await;
    let mut first = subscribe(&app, 0).await;
    let _second = subscribe(&app, 0).await;
    // Both are open: each has said where history ends.
    assert!(matches!(
        first.message().await.unwrap().unwrap().item,
        Some(Item::Checkpoint(_))
    ));

    let refused = app
        .event_log()
        .await
        .subscribe_events(pb::SubscribeEventsRequest::default())
        .await
        .expect_err("a third subscription is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.get_error_details().error_info().unwrap().reason,
        "TOO_MANY_SUBSCRIPTIONS"
    );

    // Closing one frees its place.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = app
            .event_log()
            .await
            .subscribe_events(pb::SubscribeEventsRequest::default())
            .await;
        match attempt {
            Ok(_) => break,
            Err(status)
                if status.code() == Code::ResourceExhausted && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(status) => panic!("the freed place was not given back: {status:?}"),
        }
    }
}

async fn shutdown_ends_a_subscription_with_where_to_resume(backend: Backend) {
    let Some(db) = fresh_database(backend, "subscribe_shutdown").await else {
        return;
    };
    // A drain far longer than `terminate` waits: the subscription must end
    // by itself, not by the drain timing out.
    let app = start(db, &["--drain-timeout-secs", "120"]).await;
    app.wait_serving().await;
    let mut client = app.interactions().await;
    for n in 0..3 {
        client
            .record_interaction(one(interaction(&format!("i{n}"), "ana")))
            .await
            .unwrap();
    }
    let mut stream = subscribe(&app, 0).await;
    let caught_up = receive(&mut stream, &AtomicU64::new(5)).await;
    assert_eq!(caught_up.positions(), [1, 2, 3, 4, 5]);

    let terminated = tokio::spawn(app.terminate());
    let mut last_checkpoint = None;
    let status = loop {
        match stream.message().await {
            Ok(Some(message)) => {
                if let Some(Item::Checkpoint(c)) = message.item {
                    last_checkpoint = Some(c.position);
                }
            }
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "SHUTTING_DOWN");
    assert_eq!(info.metadata["resume_after"], "5");
    assert_eq!(last_checkpoint, Some(5));
    let (exited_cleanly, _db) = terminated.await.unwrap();
    assert!(exited_cleanly);
}

async fn bad_filters_are_invalid_arguments(backend: Backend) {
    let Some(app) = spawn_app(backend, "subscribe_bad_filters").await else {
        return;
    };
    let status = app
        .event_log()
        .await
        .subscribe_events(pb::SubscribeEventsRequest {
            after_position: 0,
            community_id: "no spaces allowed".into(),
            event_types: vec![99],
            channels: vec!["Not A Slug".into()],
        })
        .await
        .expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["community_id", "event_types[0]", "channels[0]"]
    );
}

/// Two servers on one PostgreSQL database: a subscriber on one sees what is
/// written through the other within a second, by LISTEN/NOTIFY (the poll is
/// set to a minute, so it cannot be what delivers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_subscriber_on_one_replica_sees_writes_through_another_within_a_second() {
    let Some(db) = fresh_database(Backend::Postgres, "subscribe_replicas").await else {
        return;
    };
    let url = db.url.clone();
    let slow_poll = ["--commit-poll-ms", "60000"];
    let a = start(db, &slow_poll).await;
    a.wait_serving().await;
    let b = start_on(&url, None, &slow_poll);
    b.wait_serving().await;

    let mut stream = subscribe(&a, 0).await;
    let _ = receive(&mut stream, &AtomicU64::new(0)).await;
    let mut through_b = b.interactions().await;
    for n in 0..5 {
        let sent = Instant::now();
        let recorded = through_b
            .record_interaction(one(interaction(&format!("i{n}"), "ana")))
            .await
            .unwrap()
            .into_inner();
        let received = loop {
            let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("the write through B reached A's subscriber")
                .unwrap()
                .unwrap();
            if let Some(Item::Event(event)) = message.item
                && event.position == recorded.position
            {
                break Instant::now();
            }
        };
        let latency = received - sent;
        assert!(
            latency < Duration::from_secs(1),
            "write {n} took {latency:?} to arrive"
        );
    }
    b.kill();
}
