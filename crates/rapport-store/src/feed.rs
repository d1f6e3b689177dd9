//! What this process knows has committed to the log, as it happens.
//!
//! Two signals, because they have different costs and guarantees:
//!
//! - **Events** committed by this process's own writer, kept in memory in
//!   chunks right after each commit (the *tail*: the most recent
//!   [`DEFAULT_TAIL_EVENTS`], shared by every subscriber of this process),
//!   so a subscriber that is live, or only a little behind, gets them
//!   without a database read and with each event encoded once for all. The
//!   tail is bounded in events, not per subscriber: a subscriber that falls
//!   further behind than it reaches reads the log instead, and the writer
//!   never waits for anyone.
//! - **The head**: the highest position known committed by *anyone*. This
//!   process's writer advances it; on PostgreSQL so does `LISTEN/NOTIFY` for
//!   commits made by other replicas; and a poll of the database advances it
//!   in case a notification is lost (see [`Store::watch_commits`]). Whoever
//!   sees the head pass what it has read, and finds the next position
//!   missing from the tail, reads the log from the database.
//!
//! Neither signal is the source of truth: the log is. A subscriber takes a
//! chunk from the tail only when it holds exactly the next position after
//! what it has looked at.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rapport_domain::Event;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::Store;

/// Events per chunk: the unit a subscriber takes from the tail and the
/// unit encoded at once, whatever the batch sizes.
const EVENTS_PER_CHUNK: usize = 128;
/// Events the tail keeps by default: about a second of batch ingest at its
/// fastest, minutes of ordinary traffic, some tens of MiB (an event and
/// its wire form take up to a KiB or so).
pub const DEFAULT_TAIL_EVENTS: usize = 32_768;

/// Consecutive committed events, in position order, and their wire form
/// once a subscriber has asked for it. Never empty. Cheap to clone.
#[derive(Clone)]
pub struct Chunk(Arc<ChunkInner>);

struct ChunkInner {
    events: Vec<Event>,
    /// Every event encoded once, back to back, for all subscribers of this
    /// process: fanning an event out to N subscribers costs one encoding
    /// and N reference counts, not N encodings.
    wire: OnceLock<Wire>,
}

struct Wire {
    bytes: Bytes,
    /// Where each event's encoding ends in `bytes`.
    ends: Vec<usize>,
}

/// How an API layer encodes an event for its subscribers.
pub type Encode = fn(&Event) -> Vec<u8>;

impl Chunk {
    fn new(events: Vec<Event>) -> Chunk {
        debug_assert!(!events.is_empty());
        Chunk(Arc::new(ChunkInner {
            events,
            wire: OnceLock::new(),
        }))
    }

    pub fn events(&self) -> &[Event] {
        &self.0.events
    }

    fn first(&self) -> u64 {
        self.0.events[0].position
    }

    fn last(&self) -> u64 {
        self.0.events[self.0.events.len() - 1].position
    }

    /// The `index`th event as `encode` makes it. The whole chunk is encoded
    /// by the first caller; `encode` must be the same function every time.
    pub fn encoded(&self, index: usize, encode: Encode) -> Bytes {
        let wire = self.0.wire.get_or_init(|| {
            let mut bytes = Vec::new();
            let mut ends = Vec::with_capacity(self.0.events.len());
            for event in &self.0.events {
                bytes.extend_from_slice(&encode(event));
                ends.push(bytes.len());
            }
            Wire {
                bytes: Bytes::from(bytes),
                ends,
            }
        });
        let start = index.checked_sub(1).map_or(0, |i| wire.ends[i]);
        wire.bytes.slice(start..wire.ends[index])
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("positions", &(self.first()..=self.last()))
            .finish()
    }
}

/// The most recent chunks this process committed, oldest first. Positions
/// increase from chunk to chunk (one writer publishes in commit order) but
/// may jump between two: other replicas' commits, or a time without
/// listeners.
#[derive(Default)]
struct Tail {
    chunks: VecDeque<Chunk>,
    events: usize,
}

/// The commit signals of one process. Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    tail: Arc<Mutex<Tail>>,
    capacity: usize,
    /// Live [`Listener`]s: without any, the tail is not kept.
    listeners: Arc<AtomicUsize>,
    head: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("head", &*self.head.borrow())
            .field("listeners", &self.listeners.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new()
    }
}

impl Feed {
    pub fn new() -> Feed {
        Feed::with_tail(DEFAULT_TAIL_EVENTS)
    }

    /// A feed whose tail keeps about `events` events (at least one chunk).
    pub fn with_tail(events: usize) -> Feed {
        let (head, _) = watch::channel(0);
        Feed {
            tail: Arc::default(),
            capacity: events.max(1),
            listeners: Arc::default(),
            head: Arc::new(head),
        }
    }

    /// Access to the events this process commits from now on, for as long
    /// as the listener lives. Take it *before* reading the log, so that what
    /// commits meanwhile is kept for it (it would be read otherwise).
    pub fn listen(&self) -> Listener {
        self.listeners.fetch_add(1, Ordering::SeqCst);
        Listener { feed: self.clone() }
    }

    /// The highest position known committed. Changes whenever it moves.
    pub fn head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Announces events that just committed, in position order (consecutive
    /// positions: one transaction's events), then advances the head.
    pub(crate) fn publish(&self, events: Vec<Event>) {
        let Some(last) = events.last().map(|e| e.position) else {
            return;
        };
        {
            let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            if self.listeners.load(Ordering::SeqCst) == 0 {
                // Nobody to keep events for: keep none (a later listener
                // reads the log up to where the tail starts again).
                tail.chunks.clear();
                tail.events = 0;
            } else {
                let mut events = events.into_iter().peekable();
                while events.peek().is_some() {
                    let chunk = Chunk::new(events.by_ref().take(EVENTS_PER_CHUNK).collect());
                    tail.events += chunk.events().len();
                    tail.chunks.push_back(chunk);
                }
                while tail.events > self.capacity && tail.chunks.len() > 1 {
                    let oldest = tail.chunks.pop_front().expect("more than one chunk");
                    tail.events -= oldest.events().len();
                }
            }
        }
        // After the tail: whoever sees the head move finds the chunks there.
        self.observe(last);
    }

    /// Records that the log reached `position` (seen by a poll, a
    /// notification or a commit). The head never moves back.
    pub fn observe(&self, position: u64) {
        self.head.send_if_modified(|head| {
            let moved = position > *head;
            *head = (*head).max(position);
            moved
        });
    }
}

/// A subscriber's access to the tail (see [`Feed::listen`]).
pub struct Listener {
    feed: Feed,
}

impl Listener {
    /// The chunk holding position `after + 1`, if this process committed it
    /// and the tail still keeps it.
    pub fn chunk_after(&self, after: u64) -> Option<Chunk> {
        let next = after + 1;
        let tail = self.feed.tail.lock().unwrap_or_else(|e| e.into_inner());
        let i = tail.chunks.partition_point(|c| c.last() < next);
        tail.chunks.get(i).filter(|c| c.first() <= next).cloned()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.feed.listeners.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Store {
    /// Keeps `feed`'s head up to date with commits made by other processes:
    /// on PostgreSQL through `LISTEN/NOTIFY` (every append notifies at
    /// commit), and on both backends by reading the head every
    /// `poll_interval`, which also covers a lost notification. Runs until
    /// the returned task is aborted.
    pub fn watch_commits(&self, feed: Feed, poll_interval: Duration) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let listen = async {
                if let Store::Postgres(pg) = &store {
                    pg.listen(&feed).await;
                    // The pool closed or LISTEN failed for good: polling remains.
                    warn!("stopped listening for commits; polling only");
                }
            };
            tokio::join!(listen, store.poll_commits(&feed, poll_interval));
        })
    }

    /// Reads the log's head every `interval` and records it on `feed`: the
    /// fallback that finds every commit, notified or not. Never returns.
    pub async fn poll_commits(&self, feed: &Feed, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.head().await {
                Ok(head) => feed.observe(head),
                Err(error) => debug!(error = %error, "cannot read the log's head"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_domain::{EventBody, Timestamp};

    fn event(position: u64) -> Event {
        Event {
            position,
            community_id: "acme".into(),
            stream_id: "member-m".into(),
            stream_version: position,
            recorded_at: Timestamp::from_micros(0),
            body: EventBody::MemberRegistered {
                member_id: "m".into(),
            },
        }
    }

    /// Every position the tail serves, walking it from `after` as a
    /// follower does.
    fn walk(listener: &Listener, mut after: u64) -> Vec<u64> {
        let mut seen = Vec::new();
        while let Some(chunk) = listener.chunk_after(after) {
            assert!(chunk.events().len() <= EVENTS_PER_CHUNK);
            seen.extend(
                chunk
                    .events()
                    .iter()
                    .map(|e| e.position)
                    .filter(|p| *p > after),
            );
            after = chunk.last();
        }
        seen
    }

    #[tokio::test]
    async fn a_batch_is_kept_in_bounded_chunks_in_order_and_moves_the_head() {
        let feed = Feed::new();
        let listener = feed.listen();
        let head = feed.head();
        feed.publish((1..=300).map(event).collect());
        assert_eq!(walk(&listener, 0), (1..=300).collect::<Vec<_>>());
        assert_eq!(walk(&listener, 150), (151..=300).collect::<Vec<_>>());
        assert_eq!(*head.borrow(), 300);
    }

    #[tokio::test]
    async fn the_tail_keeps_the_newest_events_up_to_its_capacity() {
        let feed = Feed::with_tail(200);
        let listener = feed.listen();
        for p in 1..=1_000 {
            feed.publish(vec![event(p)]);
        }
        assert_eq!(walk(&listener, 0), Vec::<u64>::new(), "1 is long gone");
        assert!(listener.chunk_after(800).is_some());
        assert_eq!(walk(&listener, 800), (801..=1_000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_position_committed_elsewhere_is_not_in_the_tail() {
        let feed = Feed::new();
        let listener = feed.listen();
        feed.publish((1..=3).map(event).collect());
        // 4..=6 committed by another replica: only the head hears of them.
        feed.observe(6);
        feed.publish((7..=8).map(event).collect());
        assert_eq!(walk(&listener, 0), [1, 2, 3]);
        assert!(listener.chunk_after(3).is_none(), "4 must be read");
        assert_eq!(walk(&listener, 6), [7, 8]);
    }

    #[tokio::test]
    async fn without_listeners_nothing_is_kept() {
        let feed = Feed::new();
        feed.publish((1..=3).map(event).collect());
        let listener = feed.listen();
        feed.publish((4..=5).map(event).collect());
        assert!(listener.chunk_after(0).is_none());
        assert_eq!(walk(&listener, 3), [4, 5]);
        drop(listener);
        feed.publish((6..=7).map(event).collect());
        assert_eq!(feed.tail.lock().unwrap().events, 0);
        assert_eq!(*feed.head().borrow(), 7);
    }

    #[test]
    fn a_chunk_is_encoded_once_and_sliced_per_event() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        fn encode(event: &Event) -> Vec<u8> {
            CALLS.fetch_add(1, Ordering::SeqCst);
            vec![event.position as u8; event.position as usize]
        }
        let chunk = Chunk::new((1..=4).map(event).collect());
        for _ in 0..3 {
            for (i, position) in (1..=4u8).enumerate() {
                assert_eq!(
                    &chunk.encoded(i, encode)[..],
                    vec![position; position as usize]
                );
            }
        }
        assert_eq!(CALLS.load(Ordering::SeqCst), 4, "each event encoded once");
    }

    #[tokio::test]
    async fn the_head_never_moves_back() {
        let feed = Feed::new();
        feed.observe(10);
        feed.observe(4);
        assert_eq!(*feed.head().borrow(), 10);
    }
}
