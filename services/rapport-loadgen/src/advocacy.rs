//! The advocate-score benchmark's probes: leaderboard and score latency,
//! the time a policy change takes to re-score the community, a preview.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rapport_proto::v1 as pb;
use rapport_proto::v1::advocacy_service_client::AdvocacyServiceClient;
use tonic::transport::Channel;

use crate::community::COMMUNITY;
use crate::probes::report;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// `ListAdvocates` first page of 100, one call at a time.
pub async fn advocates(channel: Channel, duration: Duration, label: &str) -> Result<(), Error> {
    let mut client = AdvocacyServiceClient::new(channel);
    let request = pb::ListAdvocatesRequest {
        community_id: COMMUNITY.into(),
        page_size: 100,
        ..Default::default()
    };
    let first = client.list_advocates(request.clone()).await?.into_inner();
    assert_eq!(first.members.len(), 100, "a full top 100");
    let mut histogram = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let mut count = 0;
    while started.elapsed() < duration {
        let t = Instant::now();
        let page = client.list_advocates(request.clone()).await?.into_inner();
        histogram.record(t.elapsed().as_micros() as u64)?;
        assert_eq!(page.members.len(), 100);
        count += 1;
    }
    report(label, &histogram, count);
    Ok(())
}

/// `GetAdvocateScore` with its explanation (five top contributions) for
/// members drawn uniformly by rank, one call at a time; then the same for
/// the heavy probe member alone.
pub async fn scores(
    channel: Channel,
    duration: Duration,
    members: u64,
    label: &str,
) -> Result<(), Error> {
    let mut client = AdvocacyServiceClient::new(channel);
    let request = |handle: String| pb::GetAdvocateScoreRequest {
        community_id: COMMUNITY.into(),
        identity: Some(pb::Identity {
            channel: "forum".into(),
            handle,
        }),
        top_contributions: 5,
        ..Default::default()
    };
    for (suffix, pick) in [
        ("members", None),
        ("heavy-member", Some(crate::community::HEAVY_HANDLE)),
    ] {
        let mut histogram = Histogram::<u64>::new(3)?;
        let started = Instant::now();
        let mut count = 0u64;
        while started.elapsed() < duration / 2 {
            let handle = match pick {
                Some(h) => h.to_owned(),
                // A fixed, well-spread sequence of ranks (Fibonacci hashing).
                None => format!(
                    "member{}",
                    count.wrapping_mul(0x9e37_79b9_7f4a_7c15) % members.max(1)
                ),
            };
            let t = Instant::now();
            match client.get_advocate_score(request(handle)).await {
                Ok(_) => {}
                // A rank the generated community never drew: no such member.
                Err(status) if status.code() == tonic::Code::NotFound => continue,
                Err(status) => return Err(status.into()),
            }
            histogram.record(t.elapsed().as_micros() as u64)?;
            count += 1;
        }
        report(&format!("{label}-{suffix}"), &histogram, count);
    }
    Ok(())
}

/// A policy close to the current one, different enough to change scores.
async fn candidate(
    client: &mut AdvocacyServiceClient<Channel>,
) -> Result<pb::ScoringPolicy, Error> {
    let mut policy = client
        .get_scoring_policy(pb::GetScoringPolicyRequest {
            community_id: COMMUNITY.into(),
            min_position: 0,
        })
        .await?
        .into_inner()
        .policy
        .ok_or("no policy")?;
    policy.half_life_days = if policy.half_life_days == 90.0 {
        120.0
    } else {
        90.0
    };
    Ok(policy)
}

/// Sets a new policy and times until reads see the whole community
/// re-scored under it.
pub async fn rescore(channel: Channel, label: &str) -> Result<(), Error> {
    let mut client = AdvocacyServiceClient::new(channel);
    let policy = candidate(&mut client).await?;
    let started = Instant::now();
    let position = client
        .set_scoring_policy(pb::SetScoringPolicyRequest {
            community_id: COMMUNITY.into(),
            policy: Some(policy),
        })
        .await?
        .into_inner()
        .position;
    loop {
        let mut request = tonic::Request::new(pb::GetScoringPolicyRequest {
            community_id: COMMUNITY.into(),
            min_position: position,
        });
        request.set_timeout(Duration::from_secs(5));
        match client.get_scoring_policy(request).await {
            Ok(_) => break,
            // Still re-scoring: the server said so (projection behind), or
            // the call's own timeout ran out first.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Cancelled
                        | tonic::Code::DeadlineExceeded
                ) =>
            {
                continue;
            }
            Err(status) => return Err(status.into()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("{label}: re-scored after a policy change in {elapsed:.1} s");
    println!("RESULT {{\"label\":\"{label}\",\"seconds\":{elapsed:.2}}}");
    Ok(())
}

/// One `PreviewScoringPolicy` of the whole community, timed.
pub async fn preview(channel: Channel, label: &str) -> Result<(), Error> {
    let mut client = AdvocacyServiceClient::new(channel);
    let policy = candidate(&mut client).await?;
    let started = Instant::now();
    let mut request = tonic::Request::new(pb::PreviewScoringPolicyRequest {
        community_id: COMMUNITY.into(),
        policy: Some(policy),
        top_n: 20,
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(600));
    let preview = client.preview_scoring_policy(request).await?.into_inner();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{label}: previewed {} members in {elapsed:.1} s",
        preview.members_scored
    );
    println!(
        "RESULT {{\"label\":\"{label}\",\"members\":{},\"seconds\":{elapsed:.2}}}",
        preview.members_scored
    );
    Ok(())
}
