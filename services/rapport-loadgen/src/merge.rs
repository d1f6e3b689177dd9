//! The merge benchmark (`bench/merge.sh`): two members with `per_member`
//! interactions each, a fifth of them exchanges with members of the
//! generated community (whose scores a merge re-folds too), merged and
//! unmerged in turn. Each round is timed from the call until the change is
//! visible in the timeline and the score: both read with `min_position`,
//! which waits until their projections have applied the event.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rapport_proto::v1 as pb;
use rapport_proto::v1::advocacy_service_client::AdvocacyServiceClient;
use rapport_proto::v1::interaction_service_client::InteractionServiceClient;
use rapport_proto::v1::member_service_client::MemberServiceClient;
use rapport_proto::v1::timeline_service_client::TimelineServiceClient;
use tonic::transport::Channel;

use crate::community::COMMUNITY;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn identity(handle: &str) -> pb::Identity {
    pb::Identity {
        channel: "forum".into(),
        handle: handle.into(),
    }
}

/// Interaction `i` of `handle`: one every ten minutes up to now, every fifth
/// aimed at a member of the generated community.
fn interaction(run: &str, handle: &str, i: u64, per_member: u64, members: u64) -> pb::Interaction {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let kinds = [
        pb::InteractionKind::Answer,
        pb::InteractionKind::Post,
        pb::InteractionKind::Reply,
        pb::InteractionKind::Reaction,
        pb::InteractionKind::Review,
    ];
    let target = if i.is_multiple_of(5) {
        pb::target::Target::Member(identity(&format!("member{}", (i * 7919) % members.max(1))))
    } else {
        pb::target::Target::Brand(pb::target::Brand {})
    };
    pb::Interaction {
        community_id: COMMUNITY.into(),
        interaction_id: format!("merge-{run}-{handle}-{i}"),
        channel: "forum".into(),
        kind: kinds[(i % 5) as usize] as i32,
        actor: Some(identity(handle)),
        occurred_at: Some(prost_types::Timestamp {
            seconds: now - ((per_member - i) as i64) * 600,
            nanos: 0,
        }),
        target: Some(pb::Target {
            target: Some(target),
        }),
        ..Default::default()
    }
}

/// Reads the timeline and the score of `member` at `position`, retrying
/// while a projection is behind (each read waits up to 5 s).
async fn visible(channel: &Channel, member: &str, position: u64) -> Result<u32, Error> {
    let mut timelines = TimelineServiceClient::new(channel.clone());
    let mut advocacy = AdvocacyServiceClient::new(channel.clone());
    loop {
        let mut request = tonic::Request::new(pb::GetTimelineRequest {
            community_id: COMMUNITY.into(),
            member_id: member.into(),
            page_size: 10,
            min_position: position,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(5));
        match timelines.get_timeline(request).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Unavailable => continue,
            Err(s) => return Err(s.into()),
        }
    }
    loop {
        let mut request = tonic::Request::new(pb::GetAdvocateScoreRequest {
            community_id: COMMUNITY.into(),
            member_id: member.into(),
            min_position: position,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(5));
        match advocacy.get_advocate_score(request).await {
            Ok(score) => return Ok(score.into_inner().interactions_counted),
            Err(s) if s.code() == tonic::Code::Unavailable => continue,
            Err(s) => return Err(s.into()),
        }
    }
}

pub async fn merge(
    channel: Channel,
    run: &str,
    per_member: u64,
    members: u64,
    rounds: u32,
    label: &str,
) -> Result<(), Error> {
    let mut ingest = InteractionServiceClient::new(channel.clone());
    let (a, b) = (format!("merge-a-{run}"), format!("merge-b-{run}"));
    let mut head = 0;
    for handle in [&a, &b] {
        for start in (0..per_member).step_by(1000) {
            let interactions = (start..(start + 1000).min(per_member))
                .map(|i| interaction(run, handle, i, per_member, members))
                .collect();
            let results = ingest
                .record_interactions(pb::RecordInteractionsRequest { interactions })
                .await?
                .into_inner()
                .results;
            head = head.max(results.iter().map(|r| r.position).max().unwrap_or(0));
        }
    }
    let mut people = MemberServiceClient::new(channel.clone());
    let id = |handle: String| {
        let mut people = people.clone();
        async move {
            let found = people
                .find_member(pb::FindMemberRequest {
                    community_id: COMMUNITY.into(),
                    identity: Some(identity(&handle)),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok::<_, Error>(found.member.expect("a member").member_id)
        }
    };
    let (source, target) = (id(a).await?, id(b).await?);
    let before = visible(&channel, &target, head).await?;

    let mut merges = Histogram::<u64>::new(3)?;
    let mut unmerges = Histogram::<u64>::new(3)?;
    let mut merged = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let position = people
            .merge_members(pb::MergeMembersRequest {
                community_id: COMMUNITY.into(),
                source_member_id: source.clone(),
                target_member_id: target.clone(),
                reason: "benchmark".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .position;
        merged = visible(&channel, &source, position).await?;
        assert_eq!(
            merged as u64,
            2 * per_member,
            "the merged score counts both"
        );
        merges.record(started.elapsed().as_micros() as u64)?;

        let started = Instant::now();
        let position = people
            .unmerge_member(pb::UnmergeMemberRequest {
                community_id: COMMUNITY.into(),
                source_member_id: source.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .position;
        visible(&channel, &target, position).await?;
        unmerges.record(started.elapsed().as_micros() as u64)?;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{label}: 2 x {per_member} interactions, {rounds} rounds; score over {before} \
         interactions alone, {merged} merged; merge visible in timeline and score: median {:.0} ms, \
         max {:.0} ms; unmerge: median {:.0} ms, max {:.0} ms",
        ms(&merges, 0.5),
        ms(&merges, 1.0),
        ms(&unmerges, 0.5),
        ms(&unmerges, 1.0),
    );
    println!(
        "RESULT {{\"label\":\"{label}\",\"merge_p50_ms\":{:.0},\"merge_max_ms\":{:.0},\
         \"unmerge_p50_ms\":{:.0},\"unmerge_max_ms\":{:.0}}}",
        ms(&merges, 0.5),
        ms(&merges, 1.0),
        ms(&unmerges, 0.5),
        ms(&unmerges, 1.0),
    );
    Ok(())
}
