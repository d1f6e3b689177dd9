//! Following the log: every matching event after a position, in order, then
//! live as events commit, with a checkpoint at least every so often.
//!
//! A [`Follower`] is pulled ([`Follower::next`]), so a slow consumer slows
//! only itself: while it is not pulling, the feed's tail moves on without
//! it. When it pulls again, it takes what it missed from the tail if the
//! tail still holds it (memory shared by every subscriber, each event
//! encoded once), else reads the log from the database until it is back
//! within the tail's reach. It never holds more than two pages (the one
//! being handed out, the next read ahead while catching up) or one chunk of
//! events, and never drops one.
//!
//! How the switch from history to live stays gap-free and duplicate-free:
//! positions are gap-free and in commit order (see the crate doc), so the
//! follower only needs the position it has looked at everything up to
//! (`scanned`). A read of the log advances it to the end of the page, or to
//! the head the read saw. A chunk of the tail (this process's own commit) is
//! used only if it holds `scanned + 1`; events at or below `scanned` are
//! skipped. A head past `scanned` with no chunk holding `scanned + 1`
//! (another replica's commit, heard by `LISTEN/NOTIFY` or the poll, or a
//! commit the tail no longer keeps) means reading the log.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use rapport_domain::Event;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::feed::{Encode, Listener};
use crate::{Chunk, EventPage, EventQuery, Feed, Store, StoreError};

/// What a follower hands out next.
#[derive(Debug, Clone, PartialEq)]
pub enum Followed {
    Event(FollowedEvent),
    /// Every matching event up to this position has been handed out: resume
    /// after it.
    Checkpoint(u64),
}

/// An event a follower hands out: read from the log, or taken from this
/// process's tail, in which case its wire form is shared with every other
/// subscriber (see [`FollowedEvent::encoded`]).
#[derive(Debug, Clone)]
pub struct FollowedEvent(Source);

#[derive(Debug, Clone)]
enum Source {
    Read(Event),
    Live(Chunk, usize),
}

impl FollowedEvent {
    pub fn event(&self) -> &Event {
        match &self.0 {
            Source::Read(event) => event,
            Source::Live(chunk, index) => &chunk.events()[*index],
        }
    }

    pub fn into_event(self) -> Event {
        match self.0 {
            Source::Read(event) => event,
            Source::Live(chunk, index) => chunk.events()[index].clone(),
        }
    }

    /// Whether it came from the tail (memory shared by every subscriber)
    /// rather than from a read of the log.
    pub fn from_tail(&self) -> bool {
        matches!(self.0, Source::Live(..))
    }

    /// The event as `encode` makes it: encoded here for an event read from
    /// the log, once per process for one from the tail.
    pub fn encoded(&self, encode: Encode) -> Bytes {
        match &self.0 {
            Source::Read(event) => Bytes::from(encode(event)),
            Source::Live(chunk, index) => chunk.encoded(*index, encode),
        }
    }
}

impl PartialEq for FollowedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event() == other.event()
    }
}

/// A subscription to the log; see the module doc.
pub struct Follower {
    store: Store,
    /// The filters, the page size of reads (`limit`), and in `after` the
    /// position everything up to which has been looked at (`scanned`).
    query: EventQuery,
    live: Listener,
    head: watch::Receiver<u64>,
    /// Matching events looked at but not handed out yet: a page or a chunk.
    buffer: VecDeque<FollowedEvent>,
    /// Whether the next events come from reading the log (catching up, or
    /// after a gap or a lag) rather than from the tail.
    reading: bool,
    caught_up_once: bool,
    checkpoint_every: Duration,
    next_checkpoint: Instant,
    /// While catching up, the read of the page after the one being handed
    /// out, so the database and the consumer work at the same time.
    prefetch: Option<JoinHandle<Result<EventPage, StoreError>>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(read) = self.prefetch.take() {
            read.abort();
        }
    }
}

impl Follower {
    /// Follows the events matching `query` after `query.after`, reading
    /// history `query.limit` events at a time. Checkpoints come at least
    /// every `checkpoint_every`, and once when history is caught up.
    pub fn new(store: Store, feed: &Feed, query: EventQuery, checkpoint_every: Duration) -> Self {
        Follower {
            store,
            query: EventQuery {
                limit: query.limit.max(1),
                ..query
            },
            // Before the first read, so what commits meanwhile is kept.
            live: feed.listen(),
            head: feed.head(),
            buffer: VecDeque::new(),
            reading: true,
            caught_up_once: false,
            checkpoint_every,
            next_checkpoint: Instant::now() + checkpoint_every,
            prefetch: None,
        }
    }

    /// The position up to which every matching event has been handed out.
    pub fn position(&self) -> u64 {
        self.buffer
            .front()
            .map_or(self.query.after, |next| next.event().position - 1)
    }

    /// The next event, or a checkpoint when one is due. Waits while there is
    /// nothing new. Fails only when the database does (the follower can be
    /// resumed from [`Follower::position`]) or the feed has closed.
    pub async fn next(&mut self) -> Result<Followed, StoreError> {
        loop {
            if Instant::now() >= self.next_checkpoint {
                self.next_checkpoint = Instant::now() + self.checkpoint_every;
                return Ok(Followed::Checkpoint(self.position()));
            }
            if let Some(event) = self.buffer.pop_front() {
                return Ok(Followed::Event(event));
            }
            if self.reading {
                self.read_page().await?;
            } else {
                self.wait().await?;
            }
        }
    }

    /// The next event if one is already in hand and no checkpoint is due:
    /// no waiting, no I/O. Lets a caller send what is ready together.
    pub fn try_next(&mut self) -> Option<Followed> {
        if Instant::now() >= self.next_checkpoint {
            return None;
        }
        if !self.reading {
            self.take_from_tail();
        }
        self.buffer.pop_front().map(Followed::Event)
    }

    async fn read_page(&mut self) -> Result<(), StoreError> {
        let page = match self.prefetch.as_mut() {
            // Awaited by reference, so a cancelled `next` keeps the read.
            Some(read) => {
                let page = read
                    .await
                    .map_err(|e| StoreError::Corrupt(format!("a log read failed: {e}")));
                self.prefetch = None;
                page??
            }
            None => self.store.read_events(&self.query).await?,
        };
        let full = page.events.len() >= self.query.limit as usize;
        self.query.after = match page.events.last() {
            Some(last) if full => last.position,
            // A short page looked at everything up to the head it saw.
            _ => page.head.max(self.query.after),
        };
        self.buffer.extend(
            page.events
                .into_iter()
                .map(|e| FollowedEvent(Source::Read(e))),
        );
        if full && self.live.chunk_after(self.query.after).is_some() {
            // Back within the tail's reach: the rest is in memory.
            self.reading = false;
        } else if full {
            let (store, query) = (self.store.clone(), self.query.clone());
            self.prefetch = Some(tokio::spawn(async move { store.read_events(&query).await }));
        } else {
            self.reading = false;
        }
        Ok(())
    }

    /// Takes what this process committed meanwhile from the tail, else waits
    /// for its next commit, another process's (the head moves either way),
    /// or the next checkpoint.
    async fn wait(&mut self) -> Result<(), StoreError> {
        loop {
            // The head first: the writer keeps a commit's chunks before it
            // moves the head, so every chunk of this process up to `head` is
            // in the tail now, and a head still past what was looked at
            // after taking them is another process's commit or one the tail
            // no longer keeps.
            let head = *self.head.borrow_and_update();
            if self.take_from_tail() {
                return Ok(());
            }
            if head > self.query.after {
                self.reading = true;
                return Ok(());
            }
            if !self.caught_up_once {
                self.caught_up_once = true;
                // Tell the consumer where history ended, without waiting.
                self.next_checkpoint = Instant::now();
                return Ok(());
            }
            tokio::select! {
                changed = self.head.changed() => changed.map_err(|_| StoreError::Closed)?,
                () = tokio::time::sleep_until(self.next_checkpoint) => return Ok(()),
            }
        }
    }

    /// Takes chunks from the tail while they continue what has been looked
    /// at and nothing matching is in hand. Whether anything is in hand now.
    fn take_from_tail(&mut self) -> bool {
        while self.buffer.is_empty() {
            match self.live.chunk_after(self.query.after) {
                Some(chunk) => self.take(&chunk),
                None => break,
            }
        }
        !self.buffer.is_empty()
    }

    /// Takes the matching events of a chunk holding `scanned + 1`.
    fn take(&mut self, chunk: &Chunk) {
        let events = chunk.events();
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return;
        };
        debug_assert!(first.position <= self.query.after + 1 && last.position > self.query.after);
        let after = self.query.after;
        let wanted = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.position > after && self.query.matches(e))
            .map(|(i, _)| FollowedEvent(Source::Live(chunk.clone(), i)));
        self.buffer.extend(wanted);
        self.query.after = last.position;
    }
}
