//! The timeline benchmark's parts: populate a generated community, probe
//! `GetTimeline` latency and projection lag, time a rebuild.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rapport_proto::v1 as pb;
use rapport_proto::v1::admin_service_client::AdminServiceClient;
use rapport_proto::v1::interaction_service_client::InteractionServiceClient;
use rapport_proto::v1::timeline_service_client::TimelineServiceClient;
use tonic::transport::Channel;

use crate::community::{COMMUNITY, Community, HEAVY_HANDLE};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Writes the whole community with `concurrency` tasks of `batch_size`
/// interactions per call; prints progress and the ingest rate.
pub async fn populate(
    channels: &[Channel],
    community: Community,
    batch_size: u64,
    concurrency: usize,
) -> Result<(), Error> {
    let community = Arc::new(community);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let mut client = InteractionServiceClient::new(channels[task % channels.len()].clone());
        let community = Arc::clone(&community);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(batch_size, Ordering::SeqCst);
                if from >= community.total {
                    return Ok::<(), Error>(());
                }
                let to = (from + batch_size).min(community.total);
                let interactions = (from..to).map(|n| community.interaction(n)).collect();
                client
                    .record_interactions(pb::RecordInteractionsRequest { interactions })
                    .await?;
                let tenth = (community.total / 10).max(1);
                if from / tenth != to / tenth && to < community.total {
                    eprintln!(
                        "populate: {to} of {} after {:.0} s",
                        community.total,
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = community.total as f64 / elapsed;
    println!(
        "populate: {} interactions, {} members in {elapsed:.0} s: {rate:.0} interactions/s",
        community.total, community.members
    );
    println!(
        "RESULT {{\"label\":\"populate\",\"interactions\":{},\"seconds\":{elapsed:.1},\"interactions_per_s\":{rate:.0}}}",
        community.total
    );
    Ok(())
}

fn heavy() -> pb::Identity {
    pb::Identity {
        channel: "forum".into(),
        handle: HEAVY_HANDLE.into(),
    }
}

pub fn report(label: &str, histogram: &Histogram<u64>, count: u64) {
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{label}: {count} samples, p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        ms(0.5),
        ms(0.99),
        histogram.max() as f64 / 1000.0
    );
    println!(
        "RESULT {{\"label\":\"{label}\",\"samples\":{count},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        ms(0.5),
        ms(0.99),
        histogram.max() as f64 / 1000.0
    );
}

/// First-page `GetTimeline` of the heavy member, one call at a time.
pub async fn timeline(channel: Channel, duration: Duration, label: &str) -> Result<(), Error> {
    let mut client = TimelineServiceClient::new(channel);
    let request = pb::GetTimelineRequest {
        community_id: COMMUNITY.into(),
        identity: Some(heavy()),
        ..Default::default()
    };
    let first = client.get_timeline(request.clone()).await?.into_inner();
    assert_eq!(
        first.entries.len(),
        50,
        "the heavy member has a full first page"
    );
    let mut histogram = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let mut count = 0;
    while started.elapsed() < duration {
        let t = Instant::now();
        let page = client.get_timeline(request.clone()).await?.into_inner();
        histogram.record(t.elapsed().as_micros() as u64)?;
        assert_eq!(page.entries.len(), 50);
        count += 1;
    }
    report(label, &histogram, count);
    Ok(())
}

/// Projection lag as a client sees it: write one interaction, then read
/// with its position as `min_position`; the time from the write's answer to
/// the read's is the lag plus one read. `timeline_only`: read the written
/// channel's entries, which waits for the timeline projection alone (a
/// whole page also holds tier changes, so it waits for the scores too).
/// `poll`: read without `min_position` instead, every 2 ms until the
/// written entry is on the page: the lag of a reader that does not ask
/// to wait (and so does not hurry a lingering projector). Reads go to
/// `read_channel`: the writer's server, or another replica.
#[allow(clippy::too_many_arguments)]
pub async fn lag(
    channel: Channel,
    read_channel: Channel,
    duration: Duration,
    interval: Duration,
    timeline_only: bool,
    poll: bool,
    deadline: Duration,
    run: &str,
    label: &str,
) -> Result<(), Error> {
    let mut writer = InteractionServiceClient::new(channel);
    let mut reader = TimelineServiceClient::new(read_channel);
    let mut histogram = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let mut n = 0u64;
    let mut ticker = tokio::time::interval(interval);
    while started.elapsed() < duration {
        ticker.tick().await;
        let mut interaction = Community {
            total: 1,
            members: 1,
            run: format!("{run}-lag"),
            end: 0,
            heavy_every: crate::community::HEAVY_EVERY,
        }
        .interaction(n + 1);
        interaction.actor = Some(pb::Identity {
            channel: "forum".into(),
            handle: "probe-lag".into(),
        });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        interaction.occurred_at = Some(prost_types::Timestamp {
            seconds: now,
            nanos: 0,
        });
        let channel_of_probe = interaction.channel.clone();
        n += 1;
        let written = writer
            .record_interaction(pb::RecordInteractionRequest {
                interaction: Some(interaction),
            })
            .await?
            .into_inner();
        let t = Instant::now();
        let request = pb::GetTimelineRequest {
            community_id: COMMUNITY.into(),
            member_id: written.member_id,
            page_size: 1,
            min_position: if poll { 0 } else { written.position },
            channels: if timeline_only {
                vec![channel_of_probe.clone()]
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        loop {
            let mut read = tonic::Request::new(request.clone());
            read.set_timeout(deadline);
            let page = reader.get_timeline(read).await?.into_inner();
            let seen = page
                .entries
                .first()
                .is_some_and(|e| e.position >= written.position);
            if !poll || seen {
                break;
            }
            if t.elapsed() > deadline {
                return Err(format!(
                    "position {} not visible after {deadline:?}",
                    written.position
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        histogram.record(t.elapsed().as_micros() as u64)?;
    }
    report(label, &histogram, n);
    Ok(())
}

/// Waits until every projection has applied the whole log; prints how long.
pub async fn catch_up(channel: Channel, label: &str) -> Result<(), Error> {
    let mut admin = AdminServiceClient::new(channel);
    let started = Instant::now();
    loop {
        let status = admin
            .list_projections(pb::ListProjectionsRequest {})
            .await?
            .into_inner();
        if status
            .projections
            .iter()
            .all(|p| p.lag == 0 && p.active_generation > 0)
        {
            println!(
                "{label}: caught up after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rebuilds a projection from position 0 and times it until the new
/// generation serves reads.
pub async fn rebuild(channel: Channel, projection: &str, label: &str) -> Result<(), Error> {
    let mut admin = AdminServiceClient::new(channel);
    let started = Instant::now();
    let generation = admin
        .rebuild_projection(pb::RebuildProjectionRequest {
            name: projection.into(),
        })
        .await?
        .into_inner()
        .generation;
    loop {
        let status = admin
            .list_projections(pb::ListProjectionsRequest {})
            .await?
            .into_inner()
            .projections
            .into_iter()
            .find(|p| p.name == projection)
            .ok_or("no such projection")?;
        if status.active_generation == generation {
            let elapsed = started.elapsed().as_secs_f64();
            let rate = status.checkpoint_position as f64 / elapsed;
            println!(
                "{label}: {} events in {elapsed:.1} s: {rate:.0} events/s",
                status.checkpoint_position
            );
            println!(
                "RESULT {{\"label\":\"{label}\",\"events\":{},\"seconds\":{elapsed:.2},\"events_per_s\":{rate:.0}}}",
                status.checkpoint_position
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
