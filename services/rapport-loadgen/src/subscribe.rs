//! Subscription benchmarks (`bench/subscribe.sh`): catch-up delivery rate,
//! and subscribers that follow the log live while an ingest run writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rapport_proto::v1 as pb;
use rapport_proto::v1::event_log_service_client::EventLogServiceClient;
use rapport_proto::v1::subscribe_events_response::Item;
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn client(channel: Channel) -> EventLogServiceClient<Channel> {
    EventLogServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024)
}

async fn head(channel: Channel) -> Result<u64, BoxError> {
    let page = client(channel)
        .read_events(pb::ReadEventsRequest {
            limit: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(page.head_position)
}

/// One subscriber from position 0 to the head: events per second delivered,
/// and, for reference in the same run, paging through the same events with
/// `ReadEvents`.
pub async fn catch_up(channel: Channel, label: &str) -> Result<(), BoxError> {
    let head = head(channel.clone()).await?;
    let started = Instant::now();
    let mut stream = client(channel.clone())
        .subscribe_events(pb::SubscribeEventsRequest::default())
        .await?
        .into_inner();
    let mut events = 0u64;
    while let Some(message) = stream.message().await? {
        if let Some(Item::Event(event)) = message.item {
            events += 1;
            if event.position >= head {
                break;
            }
        }
    }
    let subscribed = started.elapsed();
    drop(stream);

    let started = Instant::now();
    let mut reader = client(channel);
    let mut after = 0;
    while after < head {
        let page = reader
            .read_events(pb::ReadEventsRequest {
                after_position: after,
                limit: 1_000,
                ..Default::default()
            })
            .await?
            .into_inner();
        after = page.next_after_position;
    }
    let paged = started.elapsed();

    let rate = events as f64 / subscribed.as_secs_f64();
    let read_rate = head as f64 / paged.as_secs_f64();
    println!(
        "{label}: {events} events by SubscribeEvents in {:.2} s: {rate:.0} events/s; \
         ReadEvents pages of 1,000: {read_rate:.0} events/s",
        subscribed.as_secs_f64()
    );
    println!(
        "RESULT {{\"label\":\"{label}\",\"events\":{events},\"events_per_s\":{rate:.0},\"read_events_per_s\":{read_rate:.0}}}"
    );
    Ok(())
}

/// How subscribers follow during an ingest run.
#[derive(Debug, Clone)]
pub struct Followers {
    pub count: usize,
    /// Subscriber `i` follows only community `bench-{i}` (the generator
    /// spreads interactions over that many communities); else everything.
    pub per_community: bool,
    /// A pause after each message: a deliberately slow consumer.
    pub pause: Option<Duration>,
    /// Also measure receipt after the writer's acknowledgement.
    pub acks: Option<Acks>,
}

/// What the followers saw while measuring.
pub struct Followed {
    pub events: u64,
    /// Receipt minus `recorded_at`, in microseconds: an upper bound of
    /// commit-to-receipt latency (the batch's time is taken before it commits).
    pub latency_us: Histogram<u64>,
    /// Receipt minus the writer's acknowledgement, 0 when the event arrived
    /// first: a lower bound of commit-to-receipt (the commit precedes the
    /// acknowledgement). Only with `acks`.
    pub after_ack_us: Histogram<u64>,
    pub errors: u64,
}

/// A `SubscribeEventsResponse` as the live subscribers decode it: only an
/// event's `recorded_at` and interaction id (prost skips the other fields).
/// The subscribers share the benchmark machine's two cores with the server;
/// decoding whole events 100 times over would measure the client, not the
/// server, which sends exactly the same bytes either way.
#[derive(Clone, PartialEq, prost::Message)]
struct LiteResponse {
    #[prost(message, optional, tag = "1")]
    event: Option<LiteEvent>,
    #[prost(message, optional, tag = "2")]
    checkpoint: Option<pb::Checkpoint>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LiteEvent {
    #[prost(message, optional, tag = "5")]
    recorded_at: Option<prost_types::Timestamp>,
    /// Decoded only for `--ack-latency` (see [`AckedResponse`]).
    #[prost(message, optional, tag = "12")]
    interaction_recorded: Option<LiteRecorded>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LiteRecorded {
    #[prost(message, optional, tag = "2")]
    interaction: Option<LiteInteraction>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LiteInteraction {
    #[prost(string, tag = "2")]
    interaction_id: String,
}

/// When each unary write of this run was acknowledged, by interaction id:
/// a subscriber that receives the event compares with it.
pub type Acks = Arc<Mutex<HashMap<String, Instant>>>;

async fn subscribe_lite(
    channel: Channel,
    request: pb::SubscribeEventsRequest,
) -> Result<tonic::codec::Streaming<LiteResponse>, BoxError> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/rapport.v1.EventLogService/SubscribeEvents",
    );
    let codec = tonic_prost::ProstCodec::<pb::SubscribeEventsRequest, LiteResponse>::default();
    Ok(grpc
        .server_streaming(tonic::Request::new(request), path, codec)
        .await?
        .into_inner())
}

/// Starts the followers at the current head and returns once each has
/// caught up (its first checkpoint).
pub async fn start_followers(
    channels: &[Channel],
    followers: &Followers,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<tokio::task::JoinHandle<Followed>>, BoxError> {
    let head = head(channels[0].clone()).await?;
    let mut tasks = Vec::new();
    for i in 0..followers.count {
        let request = pb::SubscribeEventsRequest {
            after_position: head,
            community_id: if followers.per_community {
                format!("bench-{i}")
            } else {
                String::new()
            },
            ..Default::default()
        };
        let mut stream = subscribe_lite(channels[i % channels.len()].clone(), request).await?;
        // The first message is the checkpoint that says history is caught up.
        stream.message().await?;
        let (measuring, stop, pause) = (Arc::clone(&measuring), Arc::clone(&stop), followers.pause);
        let acks = followers.acks.clone();
        tasks.push(tokio::spawn(async move {
            let mut followed = Followed {
                events: 0,
                latency_us: Histogram::new(3).expect("histogram"),
                after_ack_us: Histogram::new(3).expect("histogram"),
                errors: 0,
            };
            while !stop.load(Ordering::Relaxed) {
                let message =
                    match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                        Err(_) => continue, // checkpoints come every second
                        Ok(Ok(Some(message))) => message,
                        Ok(Ok(None)) => break,
                        Ok(Err(status)) => {
                            eprintln!("subscriber error: {status}");
                            followed.errors += 1;
                            break;
                        }
                    };
                if let (Some(event), true) = (message.event, measuring.load(Ordering::Relaxed)) {
                    followed.events += 1;
                    if let Some(recorded) = event.recorded_at {
                        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
                        let recorded_us =
                            recorded.seconds as i128 * 1_000_000 + recorded.nanos as i128 / 1_000;
                        let us = (now.as_micros() as i128 - recorded_us).max(0) as u64;
                        // `record`, not `saturating_record`: the histogram grows as needed.
                        let _ = followed.latency_us.record(us);
                    }
                    let id = event
                        .interaction_recorded
                        .and_then(|r| r.interaction)
                        .map(|i| i.interaction_id);
                    if let (Some(acks), Some(id)) = (&acks, id) {
                        let acked = acks.lock().expect("acks").remove(&id);
                        let after = acked.map_or(0, |t| t.elapsed().as_micros() as u64);
                        let _ = followed.after_ack_us.record(after);
                    }
                }
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
            }
            followed
        }));
    }
    Ok(tasks)
}

/// Prints what the followers saw, as text and `RESULT` lines; false when a
/// subscription failed.
pub async fn report(
    followers: Vec<tokio::task::JoinHandle<Followed>>,
    label: &str,
    elapsed: Duration,
    with_acks: bool,
) -> Result<bool, BoxError> {
    let count = followers.len();
    let mut latency = Histogram::<u64>::new(3)?;
    let mut after_ack = Histogram::<u64>::new(3)?;
    let (mut events, mut errors) = (0u64, 0u64);
    for task in followers {
        let followed = task.await?;
        latency.add(&followed.latency_us)?;
        after_ack.add(&followed.after_ack_us)?;
        events += followed.events;
        errors += followed.errors;
    }
    let rate = events as f64 / elapsed.as_secs_f64();
    let (p50, p99, max) = percentiles_ms(&latency);
    println!(
        "{label} subscribers: {count} received {rate:.0} events/s in all, recorded-to-receipt p50 {p50:.2} ms p99 {p99:.2} ms max {max:.2} ms, {errors} errors"
    );
    println!(
        "RESULT {{\"label\":\"{label}-subscribers\",\"events_per_s\":{rate:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3}}}"
    );
    if with_acks {
        let (p50, p99, max) = percentiles_ms(&after_ack);
        println!(
            "{label} subscribers: receipt after the write's acknowledgement (0 if before) p50 {p50:.2} ms p99 {p99:.2} ms max {max:.2} ms over {} events",
            after_ack.len()
        );
        println!(
            "RESULT {{\"label\":\"{label}-after-ack\",\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3}}}"
        );
    }
    Ok(errors == 0)
}

/// p50, p99 and max of a histogram of microseconds, in milliseconds.
fn percentiles_ms(h: &Histogram<u64>) -> (f64, f64, f64) {
    let ms = |us: u64| us as f64 / 1000.0;
    (
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
    )
}
