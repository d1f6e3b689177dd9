//! Following the log on both backends: history then live with no gap or
//! duplicate at the switch, filters, a follower that lags, commits made by
//! another process, checkpoints.

use std::time::Duration;

use rapport_domain::{Event, Interaction};
use rapport_store::{
    EventQuery, Feed, Followed, FollowedEvent, Follower, ProjectorSignal, Store, StoreOptions,
    Writer, WriterConfig,
};

mod common;
use common::{Backend, fresh, interaction};

on_both_backends!(
    history_then_live_with_no_gap_or_duplicate,
    live_events_match_what_a_filtered_read_returns,
    a_follower_that_lags_reads_the_log_and_misses_nothing,
    a_follower_a_little_behind_is_served_from_memory,
    a_commit_by_another_process_between_two_of_ours_is_not_skipped,
    commits_by_another_process_arrive_by_notification_and_by_poll,
    checkpoints_come_even_when_every_event_is_filtered_out,
);

const EVERY: Duration = Duration::from_millis(100);

fn query(after: u64) -> EventQuery {
    EventQuery {
        after,
        limit: 64,
        ..EventQuery::default()
    }
}

/// Events handed out until a checkpoint at or past `head`, failing after 60 s.
async fn follow_until(follower: &mut Follower, head: u64) -> Vec<Event> {
    let mut events = Vec::new();
    let collect = async {
        loop {
            match follower.next().await.expect("follow") {
                Followed::Event(event) => events.push(event.into_event()),
                Followed::Checkpoint(position) if position >= head => break,
                Followed::Checkpoint(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .unwrap_or_else(|_| panic!("no checkpoint at {head} within 60 s"));
    events
}

fn positions(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

fn on(channel: &str, mut item: Interaction) -> Interaction {
    item.channel = channel.into();
    item.actor.channel = channel.into();
    item
}

async fn history_then_live_with_no_gap_or_duplicate(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "follow_switch").await else {
        return;
    };
    let feed = Feed::new();
    let (writer, task) = Writer::spawn(store.clone(), WriterConfig::default(), feed.clone());
    for n in 0..20 {
        let batch = (0..10)
            .map(|i| interaction("acme", &format!("h{n}-{i}"), "ana"))
            .collect();
        writer.append(batch).await.unwrap().unwrap();
    }

    // The follower starts on history while 8 writers keep appending, so the
    // switch to live happens mid-traffic.
    let mut follower = Follower::new(store.clone(), &feed, query(0), EVERY);
    const WRITERS: usize = 8;
    const REQUESTS: usize = 40;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let writer = writer.clone();
            tokio::spawn(async move {
                for r in 0..REQUESTS {
                    let batch = (0..5)
                        .map(|i| interaction("acme", &format!("w{w}-{r}-{i}"), &format!("user{w}")))
                        .collect();
                    writer.append(batch).await.unwrap().unwrap();
                }
            })
        })
        .collect();
    // ana: 2 + 200; each writer's user: 2 + its interactions.
    let head = (2 + 200 + WRITERS * (2 + REQUESTS * 5)) as u64;
    let events = follow_until(&mut follower, head).await;
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(store.head().await.unwrap(), head);
    assert_eq!(positions(&events), (1..=head).collect::<Vec<_>>());
    // What was delivered live is what the log holds.
    let logged = store
        .read_events(&EventQuery {
            limit: 100_000,
            ..query(0)
        })
        .await
        .unwrap();
    assert_eq!(events, logged.events);

    drop(writer);
    task.await.unwrap();
}

async fn live_events_match_what_a_filtered_read_returns(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "follow_filters").await else {
        return;
    };
    let feed = Feed::new();
    let (writer, task) = Writer::spawn(store.clone(), WriterConfig::default(), feed.clone());
    let filtered = EventQuery {
        community_id: Some("acme".into()),
        channels: vec!["chat".into()],
        ..query(0)
    };
    let mut follower = Follower::new(store.clone(), &feed, filtered.clone(), EVERY);
    // Both communities, both channels, new and known members, in one stream
    // of commits: every filter has something to leave out.
    for n in 0..40 {
        let batch = vec![
            on("chat", interaction("acme", &format!("a{n}"), "ana")),
            on(
                "forum",
                interaction("acme", &format!("b{n}"), &format!("bo{}", n % 3)),
            ),
            on("chat", interaction("globex", &format!("c{n}"), "ana")),
        ];
        writer.append(batch).await.unwrap().unwrap();
    }
    let head = store.head().await.unwrap();
    let delivered = follow_until(&mut follower, head).await;
    let read = store
        .read_events(&EventQuery {
            limit: 100_000,
            ..filtered
        })
        .await
        .unwrap();
    assert_eq!(read.events.len(), 40, "acme's chat interactions");
    assert_eq!(delivered, read.events);

    drop(writer);
    task.await.unwrap();
}

async fn a_follower_that_lags_reads_the_log_and_misses_nothing(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "follow_lag").await else {
        return;
    };
    // A tail of 64 events, so that the follower falls out of its reach.
    let feed = Feed::with_tail(64);
    let (writer, task) = Writer::spawn(store.clone(), WriterConfig::default(), feed.clone());
    let mut follower = Follower::new(store.clone(), &feed, query(0), EVERY);
    // Live first (caught up with the empty log)...
    assert_eq!(follower.next().await.unwrap(), Followed::Checkpoint(0));
    // ...then not pulled while 300 commits go by: far more than the tail
    // keeps, so the follower must notice and read the log.
    commit_300(&writer).await;
    let head = store.head().await.unwrap();
    assert_eq!(head, 7 * 2 + 300);
    let followed = followed(&mut follower, head as usize).await;
    let events: Vec<Event> = followed.iter().map(|e| e.event().clone()).collect();
    assert_eq!(positions(&events), (1..=head).collect::<Vec<_>>());
    assert!(
        !followed[0].from_tail(),
        "the start is long gone from the tail: read"
    );
    assert!(
        followed[head as usize - 1].from_tail(),
        "back within reach: from the tail"
    );

    drop(writer);
    task.await.unwrap();
}

async fn a_follower_a_little_behind_is_served_from_memory(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "follow_behind").await else {
        return;
    };
    let feed = Feed::new();
    let (writer, task) = Writer::spawn(store.clone(), WriterConfig::default(), feed.clone());
    let mut follower = Follower::new(store.clone(), &feed, query(0), EVERY);
    assert_eq!(follower.next().await.unwrap(), Followed::Checkpoint(0));
    // Not pulled while 300 commits go by: well within the tail's reach.
    commit_300(&writer).await;
    let head = store.head().await.unwrap();
    let mut events = Vec::new();
    for event in followed(&mut follower, head as usize).await {
        assert!(
            event.from_tail(),
            "{:?} read from the log",
            event.event().position
        );
        events.push(event.into_event());
    }
    assert_eq!(positions(&events), (1..=head).collect::<Vec<_>>());

    drop(writer);
    task.await.unwrap();
}

async fn a_commit_by_another_process_between_two_of_ours_is_not_skipped(backend: Backend) {
    let Some((db, store)) = fresh(backend, "follow_gap").await else {
        return;
    };
    // Nothing watches for other processes' commits here: only our own next
    // commit, which moves the head while the tail holds no chunk right after
    // what the follower has seen, can tell it that something came in between.
    let feed = Feed::new();
    let (writer, task) = Writer::spawn(store.clone(), WriterConfig::default(), feed.clone());
    let elsewhere = Store::connect(&StoreOptions::new(&db.url).with_master_key(
        rapport_store::MasterKey::from_base64(rapport_testkit::TEST_MASTER_KEY).unwrap(),
    ))
    .await
    .unwrap();
    let (other, other_task) = Writer::spawn(elsewhere, WriterConfig::default(), Feed::new());
    let mut follower = Follower::new(store.clone(), &feed, query(0), Duration::from_secs(3_600));
    writer
        .append(vec![interaction("acme", "ours-1", "ana")])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(positions(&follow_events(&mut follower, 3).await), [1, 2, 3]);
    other
        .append(vec![interaction("acme", "theirs", "bob")])
        .await
        .unwrap()
        .unwrap();
    writer
        .append(vec![interaction("acme", "ours-2", "ana")])
        .await
        .unwrap()
        .unwrap();
    let events = follow_events(&mut follower, 4).await;
    assert_eq!(
        positions(&events),
        [4, 5, 6, 7],
        "bob's three events, then ana's"
    );

    drop((writer, other));
    task.await.unwrap();
    other_task.await.unwrap();
}

async fn commits_by_another_process_arrive_by_notification_and_by_poll(backend: Backend) {
    let Some((db, store)) = fresh(backend, "follow_elsewhere").await else {
        return;
    };
    // Another replica: its own store, writer and feed on the same database.
    let elsewhere = Store::connect(&StoreOptions::new(&db.url).with_master_key(
        rapport_store::MasterKey::from_base64(rapport_testkit::TEST_MASTER_KEY).unwrap(),
    ))
    .await
    .unwrap();
    let (other_writer, other_task) = Writer::spawn(elsewhere, WriterConfig::default(), Feed::new());
    let mut appended = 0;
    let mut append_elsewhere = async |n: usize| {
        for _ in 0..n {
            let item = interaction("acme", &format!("i{appended}"), "ana");
            other_writer.append(vec![item]).await.unwrap().unwrap();
            appended += 1;
        }
    };

    if backend == Backend::Postgres {
        // LISTEN/NOTIFY alone: the poll is too slow to matter here.
        let feed = Feed::new();
        let watch = store.watch_commits(feed.clone(), Duration::from_secs(3_600));
        let mut follower =
            Follower::new(store.clone(), &feed, query(0), Duration::from_secs(3_600));
        append_elsewhere(3).await;
        let head = store.head().await.unwrap();
        let events = follow_events(&mut follower, head as usize).await;
        assert_eq!(positions(&events), (1..=head).collect::<Vec<_>>());
        append_elsewhere(2).await;
        let more = follow_events(&mut follower, 2).await;
        assert_eq!(positions(&more), [head + 1, head + 2], "notified");
        watch.abort();
    }

    // The poll alone, as when a notification is lost (or on SQLite, where
    // another process's commits are only found this way).
    let feed = Feed::new();
    let poll_store = store.clone();
    let poll_feed = feed.clone();
    let poll = tokio::spawn(async move {
        poll_store
            .poll_commits(&poll_feed, Duration::from_millis(50))
            .await
    });
    let start = store.head().await.unwrap();
    let mut follower = Follower::new(
        store.clone(),
        &feed,
        query(start),
        Duration::from_secs(3_600),
    );
    // Caught up first, so what follows can only arrive live.
    let nothing_yet = tokio::time::timeout(Duration::from_millis(300), follower.next()).await;
    assert!(nothing_yet.is_err() || matches!(nothing_yet, Ok(Ok(Followed::Checkpoint(_)))));
    append_elsewhere(3).await;
    let events = follow_events(&mut follower, 3).await;
    assert_eq!(
        positions(&events),
        [start + 1, start + 2, start + 3],
        "polled"
    );
    poll.abort();

    drop(other_writer);
    other_task.await.unwrap();
}

/// The next `n` events, skipping checkpoints, failing after 10 s.
async fn follow_events(follower: &mut Follower, n: usize) -> Vec<Event> {
    followed(follower, n)
        .await
        .into_iter()
        .map(FollowedEvent::into_event)
        .collect()
}

/// The next `n` events handed out, as handed out (from the tail or read).
async fn followed(follower: &mut Follower, n: usize) -> Vec<FollowedEvent> {
    let mut events = Vec::new();
    let collect = async {
        while events.len() < n {
            if let Followed::Event(event) = follower.next().await.expect("follow") {
                events.push(event);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .unwrap_or_else(|_| panic!("{n} events did not arrive within 10 s"));
    events
}

/// 300 commits of one interaction each, by seven members: 7 × 2 + 300
/// events.
async fn commit_300(writer: &Writer) {
    for n in 0..300 {
        let item = interaction("acme", &format!("i{n}"), &format!("user{}", n % 7));
        writer.append(vec![item]).await.unwrap().unwrap();
    }
}

async fn checkpoints_come_even_when_every_event_is_filtered_out(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "follow_checkpoints").await else {
        return;
    };
    let feed = Feed::new();
    let (writer, task) = Writer::spawn(store.clone(), WriterConfig::default(), feed.clone());
    for n in 0..5 {
        let item = interaction("acme", &format!("i{n}"), "ana");
        writer.append(vec![item]).await.unwrap().unwrap();
    }
    let nobody = EventQuery {
        community_id: Some("nobody".into()),
        ..query(0)
    };
    let mut follower = Follower::new(store.clone(), &feed, nobody, EVERY);
    // Caught up with history: said at once, not after the interval.
    let first = tokio::time::timeout(EVERY / 2, follower.next()).await;
    assert_eq!(first.unwrap().unwrap(), Followed::Checkpoint(7));

    let item = interaction("acme", "i5", "ana");
    writer.append(vec![item]).await.unwrap().unwrap();
    // Then every interval, moving with the log although nothing matches.
    let mut seen = Vec::new();
    while seen.last() != Some(&8) {
        match tokio::time::timeout(EVERY * 20, follower.next()).await {
            Ok(Ok(Followed::Checkpoint(position))) => seen.push(position),
            other => panic!("expected a checkpoint, got {other:?}"),
        }
    }
    assert!(seen.iter().all(|p| *p == 7 || *p == 8), "{seen:?}");

    drop(writer);
    task.await.unwrap();
}

/// What a replica's projector and the reads on the others tell each other
/// (`notify_projector`) reaches every replica listening, with its signal,
/// read model and position. PostgreSQL only: on SQLite one process serves
/// a data directory, and there is nobody to tell.
#[tokio::test]
async fn projector_signals_reach_the_other_replicas() {
    let Some((db, store)) = fresh(Backend::Postgres, "projector_signals").await else {
        return;
    };
    let elsewhere = Store::connect(&StoreOptions::new(&db.url).with_master_key(
        rapport_store::MasterKey::from_base64(rapport_testkit::TEST_MASTER_KEY).unwrap(),
    ))
    .await
    .unwrap();
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let listening = tokio::spawn(async move {
        let heard = move |signal: ProjectorSignal, name: &str, position: u64| {
            heard_tx.send((signal, name.to_owned(), position)).unwrap();
        };
        elsewhere.listen_projectors(&heard).await;
    });
    let sent = [
        (ProjectorSignal::Wanted, "timeline", 7),
        (ProjectorSignal::Applied, "scores", 12),
    ];
    // LISTEN takes a moment to start: send until the first is heard.
    let first = loop {
        let (signal, name, position) = sent[0];
        store
            .notify_projector(signal, name, position)
            .await
            .unwrap();
        if let Ok(Some(first)) =
            tokio::time::timeout(Duration::from_millis(200), heard.recv()).await
        {
            break first;
        }
    };
    assert_eq!(first, (ProjectorSignal::Wanted, "timeline".to_owned(), 7));
    let (signal, name, position) = sent[1];
    store
        .notify_projector(signal, name, position)
        .await
        .unwrap();
    let next = loop {
        let heard = tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .expect("the second signal is heard")
            .unwrap();
        // Repeats of the first, sent while LISTEN was starting, come first.
        if heard != first {
            break heard;
        }
    };
    assert_eq!(next, (ProjectorSignal::Applied, "scores".to_owned(), 12));
    listening.abort();
}
