//! What this process knows has committed to the log, as it happens.
//!
//! Two signals, because they have different costs and guarantees:
//!
//! - **Events** committed by this process's own writer, broadcast in chunks
//!   right after each commit, so a live subscriber gets them without a
//!   database read. The broadcast is bounded: a receiver that falls behind
//!   is told it lagged (and reads the log instead); the writer never waits.
//! - **The head**: the highest position known committed by *anyone*. This
//!   process's writer advances it; on PostgreSQL so does `LISTEN/NOTIFY` for
//!   commits made by other replicas; and a poll of the database advances it
//!   in case a notification is lost (see [`Store::watch_commits`]). Whoever
//!   sees the head pass what it has read reads the log from the database.
//!
//! Neither signal is the source of truth: the log is. A subscriber uses the
//! broadcast only when it continues exactly where its reads left off.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rapport_domain::Event;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::Store;

/// Events per broadcast chunk. With [`CHUNKS`], this bounds what the
/// broadcast holds (`EVENTS_PER_CHUNK * CHUNKS` events, some MiB) whatever
/// the batch sizes, while still holding seconds of live traffic.
const EVENTS_PER_CHUNK: usize = 128;
/// Chunks the broadcast keeps for receivers that have not read them yet.
const CHUNKS: usize = 256;

/// Consecutive committed events, in position order, and their wire form
/// once a subscriber has asked for it. Cheap to clone.
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
        Chunk(Arc::new(ChunkInner {
            events,
            wire: OnceLock::new(),
        }))
    }

    pub fn events(&self) -> &[Event] {
        &self.0.events
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
        let positions = self.0.events.first().zip(self.0.events.last());
        f.debug_struct("Chunk")
            .field(
                "positions",
                &positions.map(|(a, b)| a.position..=b.position),
            )
            .finish()
    }
}

/// The commit signals of one process. Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    events: broadcast::Sender<Chunk>,
    head: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("head", &*self.head.borrow())
            .field("receivers", &self.events.receiver_count())
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
        let (events, _) = broadcast::channel(CHUNKS);
        let (head, _) = watch::channel(0);
        Feed {
            events,
            head: Arc::new(head),
        }
    }

    /// Events this process commits from now on. Subscribe *before* reading
    /// the log, so nothing committed in between is missed.
    pub fn subscribe(&self) -> broadcast::Receiver<Chunk> {
        self.events.subscribe()
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
        // Without receivers there is nobody to copy the events for.
        if self.events.receiver_count() > 0 {
            let mut events = events.into_iter().peekable();
            while events.peek().is_some() {
                let chunk = Chunk::new(events.by_ref().take(EVENTS_PER_CHUNK).collect());
                // An error only means every receiver has gone meanwhile.
                let _ = self.events.send(chunk);
            }
        }
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

    #[tokio::test]
    async fn a_batch_arrives_in_bounded_chunks_in_order_and_moves_the_head() {
        let feed = Feed::new();
        let mut events = feed.subscribe();
        let head = feed.head();
        feed.publish((1..=300).map(event).collect());
        let mut seen = Vec::new();
        while let Ok(chunk) = events.try_recv() {
            assert!(chunk.events().len() <= EVENTS_PER_CHUNK);
            seen.extend(chunk.events().iter().map(|e| e.position));
        }
        assert_eq!(seen, (1..=300).collect::<Vec<_>>());
        assert_eq!(*head.borrow(), 300);
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

    #[tokio::test]
    async fn a_receiver_that_falls_behind_is_told_so() {
        let feed = Feed::new();
        let mut events = feed.subscribe();
        for p in 1..=(CHUNKS as u64 + 1) {
            feed.publish(vec![event(p)]);
        }
        assert!(matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(1))
        ));
    }
}
