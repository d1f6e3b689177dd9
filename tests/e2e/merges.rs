//! MergeMembers and UnmergeMember: two members read as one (timeline,
//! relationships, connections, score), the source id answers with the target
//! and says so, an unmerge gives both back as had they never been merged,
//! and concurrent merges of overlapping members serialize without losing an
//! identity.

use std::collections::{BTreeMap, BTreeSet};

use rapport_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::app::{Backend, TestApp, spawn_app};
use crate::ingest::violated_fields;
use crate::members::{field, list, object, text};
use crate::on_both_backends;

on_both_backends!(
    a_merged_member_reads_as_one_person_with_the_whole_history,
    merge_then_unmerge_equals_never_merged,
    concurrent_overlapping_merges_serialize_and_lose_no_identity,
    merges_that_would_chain_or_name_nobody_are_refused_clearly,
);

const DAY: i64 = 86_400;

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn identity(channel: &str, handle: &str) -> pb::Identity {
    pb::Identity {
        channel: channel.into(),
        handle: handle.into(),
    }
}

/// What one person and the people around them did over three months, the
/// same in every community it is recorded in: Ana as `ana#1234` on Discord
/// and `anadev` on GitHub, Bob and Cleo on both, exchanging with each other
/// (Ana's two identities with each other too).
fn history(community: &str, now: i64) -> Vec<pb::Interaction> {
    let people = [
        ("discord", "ana#1234"),
        ("github", "anadev"),
        ("discord", "bob"),
        ("github", "cleo"),
    ];
    let kinds = [
        pb::InteractionKind::Answer,
        pb::InteractionKind::Reply,
        pb::InteractionKind::Post,
        pb::InteractionKind::Review,
        pb::InteractionKind::Reaction,
    ];
    let mut out = Vec::new();
    for i in 0..120i64 {
        let (channel, handle) = people[(i % 4) as usize];
        let target = match i % 5 {
            1 => Some(people[((i + 1) % 4) as usize]),
            2 => Some(people[((i + 2) % 4) as usize]),
            3 => Some(people[((i + 3) % 4) as usize]),
            _ => None,
        };
        out.push(pb::Interaction {
            community_id: community.into(),
            interaction_id: format!("i{i}"),
            channel: channel.into(),
            kind: kinds[(i % 5) as usize] as i32,
            actor: Some(identity(channel, handle)),
            actor_display_name: format!("{handle} display"),
            occurred_at: Some(prost_types::Timestamp {
                seconds: now - 90 * DAY + i * 18 * 3600,
                nanos: 0,
            }),
            target: Some(pb::Target {
                target: Some(match target {
                    Some((c, h)) => pb::target::Target::Member(identity(c, h)),
                    None => pb::target::Target::Brand(pb::target::Brand {}),
                }),
            }),
            ..Default::default()
        });
    }
    out
}

async fn record(app: &TestApp, interactions: Vec<pb::Interaction>) -> u64 {
    let results = app
        .interactions()
        .await
        .record_interactions(pb::RecordInteractionsRequest { interactions })
        .await
        .expect("record")
        .into_inner()
        .results;
    results.iter().map(|r| r.position).max().unwrap_or(0)
}

async fn members(
    app: &TestApp,
) -> pb::member_service_client::MemberServiceClient<tonic::transport::Channel> {
    pb::member_service_client::MemberServiceClient::new(app.channel().await)
}

async fn find(
    app: &TestApp,
    community: &str,
    id: pb::Identity,
    min_position: u64,
) -> pb::FindMemberResponse {
    members(app)
        .await
        .find_member(pb::FindMemberRequest {
            community_id: community.into(),
            identity: Some(id),
            min_position,
            ..Default::default()
        })
        .await
        .expect("find member")
        .into_inner()
}

async fn merge(
    app: &TestApp,
    community: &str,
    source: &str,
    target: &str,
) -> Result<pb::MergeMembersResponse, tonic::Status> {
    members(app)
        .await
        .merge_members(pb::MergeMembersRequest {
            community_id: community.into(),
            source_member_id: source.into(),
            target_member_id: target.into(),
            reason: "ticket 42: one person".into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn unmerge(
    app: &TestApp,
    community: &str,
    source: &str,
) -> Result<pb::UnmergeMemberResponse, tonic::Status> {
    members(app)
        .await
        .unmerge_member(pb::UnmergeMemberRequest {
            community_id: community.into(),
            source_member_id: source.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn get_member(
    app: &TestApp,
    community: &str,
    member_id: &str,
    min_position: u64,
) -> pb::GetMemberResponse {
    members(app)
        .await
        .get_member(pb::GetMemberRequest {
            community_id: community.into(),
            member_id: member_id.into(),
            min_position,
        })
        .await
        .expect("get member")
        .into_inner()
}

/// Every entry of a member's timeline, walking the pages.
async fn timeline(
    app: &TestApp,
    community: &str,
    member_id: &str,
    min_position: u64,
) -> (Vec<pb::TimelineEntry>, pb::GetTimelineResponse) {
    let mut client = app.timelines().await;
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .get_timeline(pb::GetTimelineRequest {
                community_id: community.into(),
                member_id: member_id.into(),
                page_size: 37,
                page_token: token,
                min_position,
                ..Default::default()
            })
            .await
            .expect("timeline")
            .into_inner();
        entries.extend(page.entries.iter().cloned());
        if page.next_page_token.is_empty() {
            return (entries, page);
        }
        token = page.next_page_token.clone();
    }
}

async fn score(
    app: &TestApp,
    community: &str,
    member_id: &str,
    as_of: Option<i64>,
    min_position: u64,
) -> pb::GetAdvocateScoreResponse {
    app.advocacy()
        .await
        .get_advocate_score(pb::GetAdvocateScoreRequest {
            community_id: community.into(),
            member_id: member_id.into(),
            as_of: as_of.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            min_position,
            top_contributions: 5,
            ..Default::default()
        })
        .await
        .expect("score")
        .into_inner()
}

async fn connections(
    app: &TestApp,
    community: &str,
    member_id: &str,
    min_position: u64,
) -> pb::ListConnectionsResponse {
    app.timelines()
        .await
        .list_connections(pb::ListConnectionsRequest {
            community_id: community.into(),
            member_id: member_id.into(),
            page_size: 50,
            min_position,
            ..Default::default()
        })
        .await
        .expect("connections")
        .into_inner()
}

async fn advocates(app: &TestApp, community: &str, min_position: u64) -> Vec<pb::RankedMember> {
    app.advocacy()
        .await
        .list_advocates(pb::ListAdvocatesRequest {
            community_id: community.into(),
            page_size: 100,
            min_position,
            ..Default::default()
        })
        .await
        .expect("advocates")
        .into_inner()
        .members
}

/// Everything a reader sees of a community's members, with member ids
/// replaced by who they are (ids differ between communities) and log
/// positions left out (so do they): what "the same state" means.
async fn observe(
    app: &TestApp,
    community: &str,
    min_position: u64,
    as_of: i64,
) -> BTreeMap<String, String> {
    let people = [
        identity("discord", "ana#1234"),
        identity("github", "anadev"),
        identity("discord", "bob"),
        identity("github", "cleo"),
    ];
    let mut names = BTreeMap::new();
    for p in &people {
        let found = find(app, community, p.clone(), min_position).await;
        names.insert(
            found.member.unwrap().member_id,
            format!("{}:{}", p.channel, p.handle),
        );
    }
    let name = |id: &str| {
        names
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("unknown {id}"))
    };
    let mut seen = BTreeMap::new();
    for (id, who) in &names {
        let member = get_member(app, community, id, min_position)
            .await
            .member
            .unwrap();
        seen.insert(
            format!("{who} member"),
            format!(
                "{:?} {} {:?} {:?} {} {:?}",
                member.identities,
                member.interactions,
                member.first_seen,
                member.last_seen,
                member.tier,
                member.merged_member_ids
            ),
        );
        // Interactions and tier changes; merge and unmerge entries are the
        // audit trail of what was done, not part of the state.
        let (entries, _) = timeline(app, community, id, min_position).await;
        let entries: Vec<String> = entries
            .iter()
            .filter(|e| {
                e.r#type == pb::EventType::InteractionRecorded as i32 || e.tier_change.is_some()
            })
            .map(|e| {
                format!(
                    "{} {} {:?} {} {} {:?} {}",
                    e.interaction_id,
                    e.role,
                    e.occurred_at,
                    e.channel,
                    e.kind,
                    e.tier_change.as_ref().map(|t| (t.from, t.to)),
                    name(&e.target_member_id)
                )
            })
            .collect();
        seen.insert(format!("{who} timeline"), entries.join("\n"));
        let s = score(app, community, id, Some(as_of), min_position).await;
        seen.insert(
            format!("{who} score"),
            format!(
                "{:.9} {} {:.9} {} {:?}",
                s.score,
                s.tier,
                s.momentum,
                s.interactions_counted,
                s.components
                    .iter()
                    .map(|c| format!("{} {:.9}", c.name, c.value))
                    .collect::<Vec<_>>()
            ),
        );
        let c = connections(app, community, id, min_position).await;
        seen.insert(
            format!("{who} connections"),
            c.connections
                .iter()
                .map(|c| format!("{} {} {}", name(&c.member_id), c.sent, c.received))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let ranked = advocates(app, community, min_position).await;
    seen.insert(
        "advocates".into(),
        ranked
            .iter()
            .map(|r| format!("{} {}", name(&r.member_id), r.tier))
            .collect::<Vec<_>>()
            .join(", "),
    );
    seen
}

async fn a_merged_member_reads_as_one_person_with_the_whole_history(backend: Backend) {
    let Some(app) = spawn_app(backend, "merge_reads").await else {
        return;
    };
    let now = now_seconds();
    let head = record(&app, history("acme", now)).await;
    let ana = find(&app, "acme", identity("discord", "ana#1234"), head)
        .await
        .member
        .unwrap();
    let anadev = find(&app, "acme", identity("github", "anadev"), head)
        .await
        .member
        .unwrap();
    let bob = find(&app, "acme", identity("discord", "bob"), head)
        .await
        .member
        .unwrap();
    let (ana_entries, _) = timeline(&app, "acme", &ana.member_id, head).await;
    let (anadev_entries, _) = timeline(&app, "acme", &anadev.member_id, head).await;
    let ana_score = score(&app, "acme", &ana.member_id, None, head).await;
    let anadev_score = score(&app, "acme", &anadev.member_id, None, head).await;
    let bob_connections = connections(&app, "acme", &bob.member_id, head).await;
    let count_with = |c: &pb::ListConnectionsResponse, id: &str| {
        c.connections
            .iter()
            .find(|c| c.member_id == id)
            .map(|c| (c.sent, c.received))
            .unwrap_or_default()
    };

    let merged = merge(&app, "acme", &anadev.member_id, &ana.member_id)
        .await
        .unwrap();
    assert_eq!(merged.member_id, ana.member_id);
    let at = merged.position;

    // The source id answers with the target, and says so.
    let got = get_member(&app, "acme", &anadev.member_id, at).await;
    let member = got.member.unwrap();
    assert_eq!(member.member_id, ana.member_id);
    assert_eq!(got.merged_from, anadev.member_id);
    assert_eq!(
        member.merged_member_ids,
        std::slice::from_ref(&anadev.member_id)
    );
    let handles: BTreeSet<String> = member.identities.iter().map(|i| i.handle.clone()).collect();
    assert_eq!(
        handles,
        BTreeSet::from(["ana#1234".to_owned(), "anadev".to_owned()])
    );
    assert_eq!(member.interactions, ana.interactions + anadev.interactions);
    let found = find(&app, "acme", identity("github", "AnaDev"), at).await;
    assert_eq!(found.member.unwrap().member_id, ana.member_id);
    assert_eq!(found.merged_from, anadev.member_id);

    // One timeline with both histories: every interaction of either, once
    // (an exchange between the two is the actor's entry only), and the merge.
    let (entries, page) = timeline(&app, "acme", &anadev.member_id, at).await;
    assert_eq!(page.member_id, ana.member_id);
    assert_eq!(page.merged_from, anadev.member_id);
    let interactions = |entries: &[pb::TimelineEntry]| -> BTreeSet<String> {
        entries
            .iter()
            .filter(|e| e.r#type == pb::EventType::InteractionRecorded as i32)
            .map(|e| e.interaction_id.clone())
            .collect()
    };
    let both: BTreeSet<String> = interactions(&ana_entries)
        .union(&interactions(&anadev_entries))
        .cloned()
        .collect();
    assert_eq!(interactions(&entries), both);
    let rows = entries
        .iter()
        .filter(|e| e.r#type == pb::EventType::InteractionRecorded as i32)
        .count();
    assert_eq!(rows, both.len(), "each interaction once");
    assert!(
        entries
            .iter()
            .any(|e| e.r#type == pb::EventType::MembersMerged as i32
                && e.merged_member_id == anadev.member_id)
    );

    // Connections: Bob's exchanges with either are with Ana now, summed;
    // Ana's own list has neither of her two ids.
    let bob_after = connections(&app, "acme", &bob.member_id, at).await;
    let (a_sent, a_received) = count_with(&bob_connections, &ana.member_id);
    let (d_sent, d_received) = count_with(&bob_connections, &anadev.member_id);
    assert_eq!(
        count_with(&bob_after, &ana.member_id),
        (a_sent + d_sent, a_received + d_received)
    );
    assert_eq!(count_with(&bob_after, &anadev.member_id), (0, 0));
    let ana_connections = connections(&app, "acme", &anadev.member_id, at).await;
    assert_eq!(ana_connections.member_id, ana.member_id);
    assert_eq!(ana_connections.merged_from, anadev.member_id);
    assert!(
        ana_connections
            .connections
            .iter()
            .all(|c| c.member_id != ana.member_id && c.member_id != anadev.member_id)
    );

    // Relationship with Bob, named through the source: both histories.
    let relationship = app
        .timelines()
        .await
        .get_relationship(pb::GetRelationshipRequest {
            community_id: "acme".into(),
            member_id: anadev.member_id.clone(),
            other_member_id: bob.member_id.clone(),
            page_size: 500,
            min_position: at,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(relationship.member_id, ana.member_id);
    assert_eq!(relationship.merged_from, anadev.member_id);
    let sent: u64 = relationship.counts.iter().map(|c| c.sent).sum();
    let received: u64 = relationship.counts.iter().map(|c| c.received).sum();
    let bob_to_ana = count_with(&bob_after, &ana.member_id);
    assert_eq!((received, sent), bob_to_ana);

    // The score: over both histories, higher than Ana's alone; the source is
    // no longer ranked on its own.
    let merged_score = score(&app, "acme", &anadev.member_id, None, at).await;
    assert_eq!(merged_score.member_id, ana.member_id);
    assert_eq!(merged_score.merged_from, anadev.member_id);
    assert!(
        merged_score.score > ana_score.score,
        "{} > {}",
        merged_score.score,
        ana_score.score
    );
    assert_eq!(
        merged_score.interactions_counted,
        ana_score.interactions_counted + anadev_score.interactions_counted
    );
    let ranked = advocates(&app, "acme", at).await;
    assert!(ranked.iter().all(|r| r.member_id != anadev.member_id));

    // A new interaction through the source's identity counts for the target.
    let mut more = history("acme", now);
    more.truncate(1);
    more[0].interaction_id = "later".into();
    more[0].channel = "github".into();
    more[0].actor = Some(identity("github", "anadev"));
    let later = record(&app, more).await;
    let member = get_member(&app, "acme", &ana.member_id, later)
        .await
        .member
        .unwrap();
    assert_eq!(
        member.interactions,
        ana.interactions + anadev.interactions + 1
    );

    // The export is the person's: every event of both members' streams,
    // in log order, with their personal data.
    let document = members(&app)
        .await
        .export_member(pb::ExportMemberRequest {
            community_id: "acme".into(),
            member_id: anadev.member_id.clone(),
            min_position: later,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .document
        .unwrap();
    let events = list(field(&document, "events"));
    let owners: BTreeSet<&str> = events
        .iter()
        .map(|e| text(field(object(e), "member_id")))
        .collect();
    assert_eq!(
        owners,
        BTreeSet::from([ana.member_id.as_str(), anadev.member_id.as_str()])
    );
    let exported: BTreeSet<&str> = events
        .iter()
        .filter(|e| text(field(object(e), "type")) == "interaction_recorded")
        .map(|e| {
            text(field(
                object(field(object(e), "interaction_recorded")),
                "interaction_id",
            ))
        })
        .collect();
    let made: BTreeSet<&str> = ana_entries
        .iter()
        .chain(&anadev_entries)
        .filter(|e| {
            e.r#type == pb::EventType::InteractionRecorded as i32
                && (e.actor_member_id == ana.member_id || e.actor_member_id == anadev.member_id)
        })
        .map(|e| e.interaction_id.as_str())
        .chain(["later"])
        .collect();
    assert_eq!(exported, made, "every interaction either member made");
    let handles: BTreeSet<&str> = list(field(object(field(&document, "member")), "identities"))
        .iter()
        .map(|i| text(field(object(i), "handle")))
        .collect();
    assert_eq!(handles, BTreeSet::from(["ana#1234", "anadev"]));

    // The log tells it as events.
    let events = app
        .event_log()
        .await
        .read_events(pb::ReadEventsRequest {
            community_id: "acme".into(),
            event_types: vec![pb::EventType::MembersMerged as i32],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    let Some(pb::event::Payload::MembersMerged(m)) = &events[0].payload else {
        panic!("a MembersMerged event: {:?}", events[0]);
    };
    assert_eq!(
        (
            m.member_id.as_str(),
            m.source_member_id.as_str(),
            m.reason.as_str()
        ),
        (
            ana.member_id.as_str(),
            anadev.member_id.as_str(),
            "ticket 42: one person"
        )
    );
}

/// The proof the issue asks for: a community where two members were merged
/// and unmerged (with interactions recorded meanwhile) reads exactly as one
/// where they never were; and while merged, the score is the one a single
/// member with both identities from the start has.
async fn merge_then_unmerge_equals_never_merged(backend: Backend) {
    let Some(app) = spawn_app(backend, "merge_unmerge").await else {
        return;
    };
    let now = now_seconds();
    let (first, second) = {
        let mut all = history("acme", now);
        let second = all.split_off(80);
        (all, second)
    };
    let retarget = |list: &[pb::Interaction], community: &str| -> Vec<pb::Interaction> {
        list.iter()
            .cloned()
            .map(|mut i| {
                i.community_id = community.into();
                i
            })
            .collect()
    };

    // "single": Ana's two identities are one member from the start.
    let head = record(&app, retarget(&first[..1], "single")).await;
    let single_ana = find(&app, "single", identity("discord", "ana#1234"), head)
        .await
        .member
        .unwrap();
    members(&app)
        .await
        .link_identity(pb::LinkIdentityRequest {
            community_id: "single".into(),
            member_id: single_ana.member_id.clone(),
            identity: Some(identity("github", "anadev")),
            ..Default::default()
        })
        .await
        .unwrap();
    record(&app, retarget(&first[1..], "single")).await;

    // "acme": merged after the first part, unmerged after the second.
    // "control": the same interactions, never merged.
    let head = record(&app, first.clone()).await;
    record(&app, retarget(&first, "control")).await;
    let ana = find(&app, "acme", identity("discord", "ana#1234"), head)
        .await
        .member
        .unwrap();
    let anadev = find(&app, "acme", identity("github", "anadev"), head)
        .await
        .member
        .unwrap();
    let merged = merge(&app, "acme", &anadev.member_id, &ana.member_id)
        .await
        .unwrap();
    let as_of = now - DAY;
    let merged_score = score(&app, "acme", &ana.member_id, Some(as_of), merged.position).await;
    let single_score = score(
        &app,
        "single",
        &single_ana.member_id,
        Some(as_of),
        merged.position,
    )
    .await;
    let now_merged = score(&app, "acme", &ana.member_id, None, merged.position).await;
    let now_single = score(&app, "single", &single_ana.member_id, None, merged.position).await;
    assert_eq!(
        format!(
            "{:.9} {} {}",
            merged_score.score, merged_score.tier, merged_score.interactions_counted
        ),
        format!(
            "{:.9} {} {}",
            single_score.score, single_score.tier, single_score.interactions_counted
        ),
        "merged, Ana scores as one member with both identities from the start"
    );
    assert!(
        (now_merged.score - now_single.score).abs() < 1e-6,
        "{} vs {}",
        now_merged.score,
        now_single.score
    );
    assert_eq!(now_merged.tier, now_single.tier);

    record(&app, second.clone()).await;
    let head = record(&app, retarget(&second, "control")).await;
    let unmerged = unmerge(&app, "acme", &anadev.member_id).await.unwrap();
    assert_eq!(unmerged.target_member_id, ana.member_id);
    let at = unmerged.position.max(head);

    let got = get_member(&app, "acme", &anadev.member_id, at).await;
    assert_eq!(got.member.unwrap().member_id, anadev.member_id);
    assert!(got.merged_from.is_empty());

    let acme = observe(&app, "acme", at, as_of).await;
    let control = observe(&app, "control", at, as_of).await;
    assert_eq!(acme.len(), control.len());
    for (key, value) in &control {
        assert_eq!(acme.get(key), Some(value), "{key} after merge and unmerge");
    }
    // "Now" scores, from the stored states rather than a replay.
    for who in [
        identity("discord", "ana#1234"),
        identity("github", "anadev"),
        identity("discord", "bob"),
    ] {
        let a = find(&app, "acme", who.clone(), at).await.member.unwrap();
        let c = find(&app, "control", who, at).await.member.unwrap();
        let (a, c) = (
            score(&app, "acme", &a.member_id, None, at).await,
            score(&app, "control", &c.member_id, None, at).await,
        );
        assert!(
            (a.score - c.score).abs() < 1e-6 && a.tier == c.tier,
            "{a:?} vs {c:?}"
        );
    }
}

async fn concurrent_overlapping_merges_serialize_and_lose_no_identity(backend: Backend) {
    let Some(app) = spawn_app(backend, "merge_concurrent").await else {
        return;
    };
    let now = now_seconds();
    let handles: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
    let head = record(
        &app,
        handles
            .iter()
            .enumerate()
            .map(|(i, h)| pb::Interaction {
                community_id: "acme".into(),
                interaction_id: format!("c{i}"),
                channel: "forum".into(),
                kind: pb::InteractionKind::Post as i32,
                actor: Some(identity("forum", h)),
                occurred_at: Some(prost_types::Timestamp {
                    seconds: now - 3600,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .collect(),
    )
    .await;
    let mut ids = Vec::new();
    for h in &handles {
        ids.push(
            find(&app, "acme", identity("forum", h), head)
                .await
                .member
                .unwrap()
                .member_id,
        );
    }
    // Every ordered pair among the first four, and the rest into them: many
    // merges name the same members, as sources and as targets at once.
    let mut attempts = Vec::new();
    for s in 0..8 {
        for t in 0..4 {
            if s != t {
                attempts.push((ids[s].clone(), ids[t].clone()));
            }
        }
    }
    let client = members(&app).await;
    let mut tasks = tokio::task::JoinSet::new();
    for (s, t) in attempts {
        let mut client = client.clone();
        tasks.spawn(async move {
            client
                .merge_members(pb::MergeMembersRequest {
                    community_id: "acme".into(),
                    source_member_id: s,
                    target_member_id: t,
                    reason: "ticket 7".into(),
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let results = tasks.join_all().await;
    let mut done = 0;
    let mut at = head;
    for r in &results {
        match r {
            Ok(merged) => {
                done += 1;
                at = at.max(merged.position);
            }
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    assert!(done >= 1, "some merge went through");

    // No chains, every member in exactly one group, every identity once.
    let mut seen_identities = Vec::new();
    let mut canonical = BTreeSet::new();
    for id in &ids {
        let got = get_member(&app, "acme", id, at).await;
        let member = got.member.unwrap();
        if member.member_id == *id {
            assert!(got.merged_from.is_empty());
            canonical.insert(id.clone());
            seen_identities.extend(member.identities.iter().map(|i| i.handle.clone()));
            for merged in &member.merged_member_ids {
                let again = get_member(&app, "acme", merged, at).await;
                assert_eq!(
                    again.member.unwrap().member_id,
                    *id,
                    "one level: {merged} reads as {id}"
                );
            }
        } else {
            assert_eq!(got.merged_from, *id);
            assert!(member.merged_member_ids.contains(id));
        }
    }
    seen_identities.sort();
    let mut expected = handles.clone();
    expected.sort();
    assert_eq!(
        seen_identities, expected,
        "every identity in exactly one member"
    );
    assert_eq!(
        canonical.len() + done,
        ids.len(),
        "each merge joined two groups"
    );
    // Each identity still finds its member's group.
    for h in &handles {
        let found = find(&app, "acme", identity("forum", h), at).await;
        assert!(canonical.contains(&found.member.unwrap().member_id));
    }
}

async fn merges_that_would_chain_or_name_nobody_are_refused_clearly(backend: Backend) {
    let Some(app) = spawn_app(backend, "merge_refusals").await else {
        return;
    };
    let now = now_seconds();
    let head = record(&app, history("acme", now)).await;
    record(&app, history("globex", now)).await;
    let id = |h: &'static str, c: &'static str| {
        let app = &app;
        async move {
            find(app, "acme", identity(c, h), head)
                .await
                .member
                .unwrap()
                .member_id
        }
    };
    let (ana, anadev, bob, cleo) = (
        id("ana#1234", "discord").await,
        id("anadev", "github").await,
        id("bob", "discord").await,
        id("cleo", "github").await,
    );
    let reason_of = |status: &tonic::Status| {
        status
            .get_error_details()
            .error_info()
            .map(|i| (i.reason.clone(), i.metadata.get("into_member_id").cloned()))
    };

    // Bad requests: every violation, nothing written.
    let status = members(&app)
        .await
        .merge_members(pb::MergeMembersRequest {
            community_id: "acme".into(),
            source_member_id: ana.clone(),
            target_member_id: ana.clone(),
            reason: " ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["target_member_id", "reason"]);
    let status = merge(&app, "acme", "no-such-member", &ana)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let globex_ana = find(&app, "globex", identity("discord", "ana#1234"), head)
        .await
        .member
        .unwrap()
        .member_id;
    let status = merge(&app, "acme", &globex_ana, &ana).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "another community's member is not found"
    );

    merge(&app, "acme", &anadev, &ana).await.unwrap();
    // The source again, into anyone: it is merged.
    let status = merge(&app, "acme", &anadev, &bob).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        reason_of(&status),
        Some(("MEMBER_MERGED".into(), Some(ana.clone())))
    );
    // Into the source: merge into its target instead.
    let status = merge(&app, "acme", &bob, &anadev).await.unwrap_err();
    assert_eq!(
        reason_of(&status),
        Some(("TARGET_MERGED".into(), Some(ana.clone())))
    );
    // The target into another: unmerge first.
    let status = merge(&app, "acme", &ana, &cleo).await.unwrap_err();
    assert_eq!(
        reason_of(&status),
        Some(("MEMBER_HAS_MERGED_MEMBERS".into(), None))
    );
    // Commands on the merged source name the member to act on.
    let status = members(&app)
        .await
        .link_identity(pb::LinkIdentityRequest {
            community_id: "acme".into(),
            member_id: anadev.clone(),
            email: "ana@example.org".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        reason_of(&status),
        Some(("MEMBER_MERGED".into(), Some(ana.clone())))
    );
    assert!(status.message().contains(&ana), "{}", status.message());
    // Erasing one member of a merged person is refused: unmerge first.
    let status = members(&app)
        .await
        .erase_member(pb::EraseMemberRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            reason: "GDPR 1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        reason_of(&status),
        Some(("MEMBER_HAS_MERGED_MEMBERS".into(), None))
    );

    // Unmerge: of a member not merged, refused; once, fine; twice, refused.
    let status = unmerge(&app, "acme", &bob).await.unwrap_err();
    assert_eq!(reason_of(&status), Some(("MEMBER_NOT_MERGED".into(), None)));
    unmerge(&app, "acme", &anadev).await.unwrap();
    let status = unmerge(&app, "acme", &anadev).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = unmerge(&app, "globex", &anadev).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = members(&app)
        .await
        .unmerge_member(pb::UnmergeMemberRequest {
            community_id: "acme".into(),
            source_member_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["source_member_id"]);
}
