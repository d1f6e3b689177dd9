//! Group commit: concurrent append requests share one transaction.
//!
//! Callers hand their validated interactions to [`Writer::append`]. One task
//! takes whatever is queued (up to a bounded number of interactions, waiting
//! at most `linger` for more), appends it all in one transaction, and answers
//! every caller only after the commit: an acknowledged write is durable. While
//! a batch commits, the next one gathers, so batching grows with load without
//! a fixed delay.

use std::time::Duration;

use rapport_domain::{Command, Interaction};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, warn};

use crate::{AppendOutcome, CommandOutcome, Feed, Store, StoreError};

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most interactions in one transaction. A single request is never split,
    /// so this is at least the largest request allowed.
    pub max_batch: usize,
    /// How long the writer may wait for more requests once it has some; zero
    /// means commit what is queued at once.
    pub linger: Duration,
    /// Requests queued before callers wait: backpressure, not a drop.
    pub queue_depth: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch: 5_000,
            linger: Duration::ZERO,
            queue_depth: 4_096,
        }
    }
}

struct Job {
    interactions: Vec<Interaction>,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    /// The caller's span: the batch that commits this job links to it.
    span: tracing::Span,
}

/// What the queue holds: interactions to batch, or a command, which commits
/// on its own after everything queued before it.
enum Queued {
    Append(Job),
    Command {
        command: Command,
        reply: oneshot::Sender<Result<CommandOutcome, StoreError>>,
    },
}

/// A handle to the group-commit task. Cheap to clone; the task flushes its
/// queue and stops when the last handle is dropped.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Queued>,
    /// Where each commit is announced, so that projectors and subscribers in
    /// this process wake at once instead of waiting for their next poll.
    feed: Feed,
}

impl Writer {
    /// Starts the writer task. Await the returned handle after dropping every
    /// `Writer` to know the last batch has committed.
    /// Every commit's events are published on `feed`.
    pub fn spawn(store: Store, config: WriterConfig, feed: Feed) -> (Writer, JoinHandle<()>) {
        let (jobs, queue) = mpsc::channel(config.queue_depth.max(1));
        let task = tokio::spawn(run(store, config, queue, feed.clone()));
        (Writer { jobs, feed }, task)
    }

    /// Changes whenever the log's known head moves: at each commit of this
    /// writer, and for other processes' commits as far as the feed hears of
    /// them (see [`Store::watch_commits`]).
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.feed.head()
    }

    /// Where this writer announces its commits.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Appends one request's interactions atomically, batched with whatever
    /// else is being written. Resolves after the commit.
    pub async fn append(
        &self,
        interactions: Vec<Interaction>,
    ) -> Result<AppendOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Queued::Append(Job {
                interactions,
                reply,
                span: tracing::Span::current(),
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends a command's event, after every request queued before it.
    /// Resolves after the commit.
    pub async fn command(&self, command: Command) -> Result<CommandOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Queued::Command { command, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run(store: Store, config: WriterConfig, mut queue: mpsc::Receiver<Queued>, feed: Feed) {
    let max_batch = config.max_batch.max(rapport_domain::validate::MAX_BATCH);
    // A command taken off the queue while gathering a batch: it runs after
    // that batch commits, keeping queue order.
    let mut pending: Option<Queued> = None;
    // `recv` returns None only once every sender is gone *and* the queue is
    // empty, so everything accepted is committed before the task ends.
    loop {
        let first = match pending.take() {
            Some(queued) => queued,
            None => match queue.recv().await {
                Some(queued) => queued,
                None => break,
            },
        };
        let first = match first {
            Queued::Append(job) => job,
            Queued::Command { command, reply } => {
                run_command(&store, command, reply, &feed).await;
                continue;
            }
        };
        let mut size = first.interactions.len();
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + config.linger;
        while size < max_batch {
            let next = match queue.try_recv() {
                Ok(job) => Some(job),
                Err(_) if config.linger.is_zero() => None,
                Err(_) => tokio::time::timeout_at(deadline, queue.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            let job = match next {
                Some(Queued::Append(job)) => job,
                Some(command) => {
                    pending = Some(command);
                    break;
                }
                None => break,
            };
            if size + job.interactions.len() > max_batch {
                // Too big for this batch: it opens the next one.
                commit(&store, std::mem::take(&mut jobs), size, &feed).await;
                size = 0;
            }
            size += job.interactions.len();
            jobs.push(job);
        }
        commit(&store, jobs, size, &feed).await;
    }
    debug!("group-commit writer stopped");
}

async fn run_command(
    store: &Store,
    command: Command,
    reply: oneshot::Sender<Result<CommandOutcome, StoreError>>,
    feed: &Feed,
) {
    let outcome = store.append_command(command, crate::wall_clock()).await;
    match &outcome {
        Ok(CommandOutcome::Appended(event)) => feed.publish(vec![event.clone()]),
        // Refused: nothing written, the caller hears why.
        Ok(_) => {}
        Err(error) => warn!(error = %error, "command failed, nothing written"),
    }
    let _ = reply.send(outcome);
}

async fn commit(store: &Store, jobs: Vec<Job>, size: usize, feed: &Feed) {
    if jobs.is_empty() {
        return;
    }
    // One batch serves many calls: a root span of its own, linked to each
    // (OpenTelemetry's model for batching), rather than a child of one.
    let span = tracing::info_span!(parent: None, "group_commit", requests = jobs.len(), interactions = size);
    let mut requests = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        span.follows_from(&job.span);
        requests.push(job.interactions);
        replies.push(job.reply);
    }
    let started = std::time::Instant::now();
    match store
        .append(requests, crate::wall_clock())
        .instrument(span)
        .await
    {
        Ok(committed) => {
            let elapsed = started.elapsed();
            debug!(
                requests = replies.len(),
                interactions = size,
                elapsed_us = elapsed.as_micros() as u64,
                "batch committed"
            );
            metrics::histogram!("rapport_group_commit_batch_size").record(size as f64);
            metrics::histogram!("rapport_group_commit_duration_seconds")
                .record(elapsed.as_secs_f64());
            metrics::counter!("rapport_events_appended_total")
                .increment(committed.events.len() as u64);
            // Published before the callers hear back, so a subscriber sees
            // a write no later than its writer's acknowledgement.
            feed.publish(committed.events);
            for (reply, outcome) in replies.into_iter().zip(committed.outcomes) {
                // A caller that went away still had its write committed; a
                // retry will be recognized as a duplicate.
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            metrics::counter!("rapport_group_commit_failures_total").increment(1);
            warn!(requests = replies.len(), interactions = size, error = %error, "batch failed, nothing written");
            for reply in replies {
                let _ = reply.send(Err(error.share()));
            }
        }
    }
}
