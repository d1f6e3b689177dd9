//! `rapport-loadgen`: drives a running Rapport server with generated clients
//! and reports throughput and latency percentiles. Used by `bench/ingest.sh`;
//! figures go to `docs/performance.md`.
//!
//! Ingest modes:
//! - `batch`: `RecordInteractions` with `--batch-size` interactions per call;
//! - `unary`: `RecordInteraction`, one interaction per call.
//!
//! `--concurrency` tasks each keep one call in flight, spread over
//! `--connections` HTTP/2 connections (at most `--rate` interactions/s in
//! all, when set). Calls made during `--warmup` are not counted. Every
//! interaction has a fresh id, so runs never hit duplicates.
//!
//! Timeline benchmark modes (`bench/timeline.sh`), on the generated
//! community of `community.rs`:
//! - `populate`: write `--total` interactions by `--members` members;
//! - `timeline`: first-page `GetTimeline` latency of the heavy member;
//! - `lag`: write, then read with `min_position`, every `--interval-ms`
//!   (`--lag-of timeline`: the timeline projection alone; `--lag-poll`:
//!   read without `min_position` until the entry shows);
//! - `catch-up`: wait until the projections have applied the whole log;
//! - `rebuild`: rebuild the timeline from position 0 and time it.
//!
//! Merge benchmark (`bench/merge.sh`): `merge` times `MergeMembers` and
//! `UnmergeMember` of two members until visible in timeline and score.
//!
//! Subscription benchmarks (`bench/subscribe.sh`):
//! - `follow`: one `SubscribeEvents` from position 0 to the head (catch-up
//!   delivery rate), and `ReadEvents` paging over the same events;
//! - `--subscribers N` with `batch` or `unary`: N subscribers follow the log
//!   live during the ingest run; their delivery latency is reported.

mod advocacy;
mod community;
mod merge;
mod probes;
mod subscribe;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rapport_proto::v1 as pb;
use rapport_proto::v1::interaction_service_client::InteractionServiceClient;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Batch,
    Unary,
    Populate,
    Timeline,
    Lag,
    CatchUp,
    Rebuild,
    /// `ListAdvocates` top 100 latency.
    Advocates,
    /// `GetAdvocateScore` latency, members drawn uniformly by rank.
    Scores,
    /// Time from `SetScoringPolicy` until the scores are recomputed.
    Rescore,
    /// Time of one `PreviewScoringPolicy`.
    Preview,
    /// One subscriber from 0 to the head: catch-up delivery rate.
    Follow,
    /// Two members of `--per-member` interactions each merged and unmerged
    /// `--rounds` times: time until visible in timeline and score.
    Merge,
}

#[derive(Debug, Parser)]
#[command(
    name = "rapport-loadgen",
    about = "Load generator for Rapport ingest benchmarks"
)]
struct Args {
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[arg(long, value_enum, default_value_t = Mode::Batch)]
    mode: Mode,
    /// Interactions per RecordInteractions call (batch mode).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Distinct actors; the first call by each registers a member.
    #[arg(long, default_value_t = 20_000)]
    members: u64,
    /// Label printed with the result.
    #[arg(long, default_value = "run")]
    label: String,
    /// Most interactions per second in all (ingest modes); 0: no limit.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Interactions in the generated community (populate).
    #[arg(long, default_value_t = 10_000_000)]
    total: u64,
    /// Time between two lag probes.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// The projection to rebuild.
    #[arg(long, default_value = "timeline")]
    projection: String,
    /// Lag mode: `all` reads a whole first page (its tier changes come from
    /// the scores, so it waits for both projections); `timeline` reads the
    /// page of one channel, which has no tier changes: the timeline
    /// projection's lag alone.
    #[arg(long, default_value = "all", value_parser = ["all", "timeline"])]
    lag_of: String,
    /// Lag mode: read without `min_position`, again and again until the
    /// written entry shows (the lag of a reader that does not wait).
    #[arg(long)]
    lag_poll: bool,
    /// Lag mode: the deadline of each read with `min_position` (the server
    /// waits for the projection up to it). Past the server's default of
    /// 5 s, a projection that stops for longer shows in the figures
    /// instead of failing the probe.
    #[arg(long, default_value_t = 5)]
    lag_deadline_secs: u64,
    /// Lag mode: read through this server instead of `--addr` (another
    /// replica on the same PostgreSQL database, say one that does not run
    /// the projectors).
    #[arg(long)]
    read_addr: Option<String>,
    /// Communities the ingest modes write to (`bench`, or `bench-0` ...).
    #[arg(long, default_value_t = 1)]
    communities: u64,
    /// Subscribers following the log live during an ingest run.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Subscriber `i` follows only community `bench-{i}`.
    #[arg(long)]
    per_community: bool,
    /// A subscriber pause after each message, in milliseconds (a slow consumer).
    #[arg(long, default_value_t = 0)]
    subscriber_pause_ms: u64,
    /// Unary mode: subscribers also measure receipt after each write's
    /// acknowledgement (a lower bound of commit-to-receipt).
    #[arg(long)]
    ack_latency: bool,
    /// Populate: one interaction in this many is by the heavy probe member.
    #[arg(long, default_value_t = community::HEAVY_EVERY)]
    heavy_every: u64,
    /// Merge mode: interactions of each of the two members.
    #[arg(long, default_value_t = 10_000)]
    per_member: u64,
    /// Merge mode: merges (each followed by its unmerge) timed.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(Endpoint::from_shared(args.addr.clone())?.connect().await?);
    }
    let started_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    // The prefix of every interaction id this run writes. The process id
    // keeps two load generators started in the same millisecond (the
    // benchmarks start probes side by side) from writing the same ids with
    // different payloads, which the server rightly refuses.
    let run_id = format!("{started_ms}-{}", std::process::id());
    let duration = Duration::from_secs(args.duration);
    let label = args.label.as_str();
    match args.mode {
        Mode::Batch | Mode::Unary => {}
        Mode::Populate => {
            let community = community::Community {
                total: args.total,
                members: args.members,
                run: run_id.clone(),
                end: (started_ms / 1000) as i64 - 3600,
                heavy_every: args.heavy_every,
            };
            return probes::populate(
                &channels,
                community,
                args.batch_size as u64,
                args.concurrency,
            )
            .await;
        }
        Mode::Timeline => return probes::timeline(channels[0].clone(), duration, label).await,
        Mode::Lag => {
            let interval = Duration::from_millis(args.interval_ms);
            let reader = match &args.read_addr {
                Some(addr) => Endpoint::from_shared(addr.clone())?.connect().await?,
                None => channels[0].clone(),
            };
            return probes::lag(
                channels[0].clone(),
                reader,
                duration,
                interval,
                args.lag_of == "timeline",
                args.lag_poll,
                Duration::from_secs(args.lag_deadline_secs),
                &run_id,
                label,
            )
            .await;
        }
        Mode::CatchUp => return probes::catch_up(channels[0].clone(), label).await,
        Mode::Rebuild => {
            return probes::rebuild(channels[0].clone(), &args.projection, label).await;
        }
        Mode::Advocates => return advocacy::advocates(channels[0].clone(), duration, label).await,
        Mode::Scores => {
            return advocacy::scores(channels[0].clone(), duration, args.members, label).await;
        }
        Mode::Rescore => return advocacy::rescore(channels[0].clone(), label).await,
        Mode::Preview => return advocacy::preview(channels[0].clone(), label).await,
        Mode::Follow => return subscribe::catch_up(channels[0].clone(), label).await,
        Mode::Merge => {
            return merge::merge(
                channels[0].clone(),
                &run_id,
                args.per_member,
                args.members,
                args.rounds,
                label,
            )
            .await;
        }
    }
    // Each task's share of the rate: one call every `pace`.
    let pace = (args.rate > 0).then(|| {
        let size = match args.mode {
            Mode::Batch => args.batch_size as f64,
            _ => 1.0,
        };
        Duration::from_secs_f64(size * args.concurrency as f64 / args.rate as f64)
    });
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Option<subscribe::Acks> = args.ack_latency.then(Default::default);
    let followers = subscribe::start_followers(
        &channels,
        &subscribe::Followers {
            count: args.subscribers,
            per_community: args.per_community,
            pause: (args.subscriber_pause_ms > 0)
                .then(|| Duration::from_millis(args.subscriber_pause_ms)),
            acks: acks.clone(),
        },
        Arc::clone(&measuring),
        Arc::clone(&stop),
    )
    .await?;

    let mut tasks = Vec::new();
    for task in 0..args.concurrency {
        let client = InteractionServiceClient::new(channels[task % channels.len()].clone())
            .max_decoding_message_size(16 * 1024 * 1024);
        let generator = Generator {
            run_id: run_id.clone(),
            task,
            members: args.members,
            communities: args.communities.max(1),
            next: 0,
        };
        tasks.push(tokio::spawn(drive(
            client,
            generator,
            args.mode,
            args.batch_size,
            pace,
            Signals {
                measuring: Arc::clone(&measuring),
                stop: Arc::clone(&stop),
                acks: acks.clone(),
            },
        )));
    }

    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    stop.store(true, Ordering::SeqCst);
    let elapsed = started.elapsed();

    let mut latency = Histogram::<u64>::new(3)?;
    let (mut interactions, mut calls, mut errors) = (0u64, 0u64, 0u64);
    for task in tasks {
        let stats = task.await?;
        latency.add(&stats.latency_us)?;
        interactions += stats.interactions;
        calls += stats.calls;
        errors += stats.errors;
    }
    let rate = interactions as f64 / elapsed.as_secs_f64();
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{label}: {rate:.0} interactions/s, {calls_rate:.0} calls/s, latency p50 {p50:.2} ms p99 {p99:.2} ms max {max:.2} ms, {errors} errors",
        label = args.label,
        calls_rate = calls as f64 / elapsed.as_secs_f64(),
        p50 = ms(0.50),
        p99 = ms(0.99),
        max = latency.max() as f64 / 1000.0,
    );
    println!(
        "RESULT {{\"label\":\"{}\",\"interactions_per_s\":{rate:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"errors\":{errors}}}",
        args.label,
        ms(0.50),
        ms(0.99)
    );
    if !followers.is_empty()
        && !subscribe::report(followers, label, elapsed, acks.is_some()).await?
    {
        std::process::exit(1);
    }
    if errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Makes unique, plausible interactions.
struct Generator {
    run_id: String,
    task: usize,
    members: u64,
    communities: u64,
    next: u64,
}

const KINDS: [pb::InteractionKind; 6] = [
    pb::InteractionKind::Reaction,
    pb::InteractionKind::Comment,
    pb::InteractionKind::Reply,
    pb::InteractionKind::Answer,
    pb::InteractionKind::Post,
    pb::InteractionKind::Share,
];

impl Generator {
    fn interaction(&mut self) -> pb::Interaction {
        let n = self.next;
        self.next += 1;
        // A cheap scramble so tasks don't walk the members in lockstep.
        let actor = (n.wrapping_mul(2_654_435_761) ^ self.task as u64) % self.members;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        pb::Interaction {
            community_id: if self.communities == 1 {
                "bench".into()
            } else {
                format!("bench-{}", actor % self.communities)
            },
            interaction_id: format!("{}-{}-{n}", self.run_id, self.task),
            channel: "forum".into(),
            kind: KINDS[(n % KINDS.len() as u64) as usize] as i32,
            source_type: "discourse.post".into(),
            actor: Some(pb::Identity {
                channel: String::new(),
                handle: format!("member{actor}"),
            }),
            occurred_at: Some(prost_types::Timestamp {
                seconds: now - (n % 86_400) as i64,
                nanos: 0,
            }),
            excerpt: "thanks, clearing the cache and restarting fixed it for me".into(),
            url: format!("https://forum.example/t/{}/{n}", actor % 977),
            ..Default::default()
        }
    }
}

/// What a driving task shares with the run: when to count, when to stop,
/// where to note acknowledgements.
struct Signals {
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acks: Option<subscribe::Acks>,
}

struct Stats {
    latency_us: Histogram<u64>,
    interactions: u64,
    calls: u64,
    errors: u64,
}

async fn drive(
    mut client: InteractionServiceClient<Channel>,
    mut generator: Generator,
    mode: Mode,
    batch_size: usize,
    pace: Option<Duration>,
    signals: Signals,
) -> Stats {
    let Signals {
        measuring,
        stop,
        acks,
    } = signals;
    let mut ticker = pace.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut stats = Stats {
        latency_us: Histogram::new(3).expect("histogram"),
        interactions: 0,
        calls: 0,
        errors: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        let started = Instant::now();
        let (result, size) = match mode {
            Mode::Unary => {
                let interaction = generator.interaction();
                let id = interaction.interaction_id.clone();
                let request = pb::RecordInteractionRequest {
                    interaction: Some(interaction),
                };
                let result = client.record_interaction(request).await.map(|_| ());
                if let (Some(acks), Ok(())) = (&acks, &result) {
                    acks.lock().expect("acks").insert(id, Instant::now());
                }
                (result, 1)
            }
            _ => {
                let interactions: Vec<_> =
                    (0..batch_size).map(|_| generator.interaction()).collect();
                let request = pb::RecordInteractionsRequest { interactions };
                (
                    client.record_interactions(request).await.map(|_| ()),
                    batch_size as u64,
                )
            }
        };
        let took = started.elapsed();
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        match result {
            Ok(()) => {
                stats
                    .latency_us
                    .record(took.as_micros() as u64)
                    .expect("latency in range");
                stats.interactions += size;
                stats.calls += 1;
            }
            Err(status) => {
                if stats.errors == 0 {
                    eprintln!("error: {status}");
                }
                stats.errors += 1;
            }
        }
    }
    stats
}
