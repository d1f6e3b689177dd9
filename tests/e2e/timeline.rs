//! Timelines, relationships and connections; read-your-writes; pagination;
//! rebuilds through the admin service; projector failover across replicas.

use std::collections::HashSet;
use std::time::Duration;

use rapport_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::app::{Backend, TestApp, spawn_app, start_on};
use crate::ingest::violated_fields;
use crate::on_both_backends;

on_both_backends!(
    a_timeline_shows_a_members_history_newest_first,
    pagination_walks_every_entry_once_while_writes_continue,
    relationships_and_connections_count_exchanges_both_ways,
    unknown_members_and_members_of_other_communities_are_not_found,
    a_read_waits_for_min_position_and_says_when_the_projection_is_behind,
    a_rebuild_through_the_admin_service_gives_the_same_timeline,
);

/// 2026-01-01T00:00:00Z plus `minutes`.
fn at(minutes: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_767_225_600 + minutes * 60,
        nanos: 0,
    }
}

/// Members are forum identities here; they act on several channels (an
/// identity on another channel would be another member until merged).
fn member(handle: &str) -> pb::Target {
    pb::Target {
        target: Some(pb::target::Target::Member(pb::Identity {
            channel: "forum".into(),
            handle: handle.into(),
        })),
    }
}

/// An interaction on `channel` by `actor`, aimed at `target`.
fn exchange(
    id: &str,
    channel: &str,
    actor: &str,
    kind: pb::InteractionKind,
    target: Option<pb::Target>,
    minutes: i64,
) -> pb::Interaction {
    pb::Interaction {
        community_id: "acme".into(),
        interaction_id: id.into(),
        channel: channel.into(),
        kind: kind as i32,
        actor: Some(pb::Identity {
            channel: "forum".into(),
            handle: actor.into(),
        }),
        occurred_at: Some(at(minutes)),
        target,
        url: format!("https://{channel}.example/{id}"),
        excerpt: format!("excerpt of {id}"),
        ..Default::default()
    }
}

/// Records `interactions` in one call; returns each (member id, position).
async fn record(app: &TestApp, interactions: Vec<pb::Interaction>) -> Vec<(String, u64)> {
    app.interactions()
        .await
        .record_interactions(pb::RecordInteractionsRequest { interactions })
        .await
        .expect("record")
        .into_inner()
        .results
        .into_iter()
        .map(|r| (r.member_id, r.position))
        .collect()
}

fn timeline_request(member_id: &str, min_position: u64) -> pb::GetTimelineRequest {
    pb::GetTimelineRequest {
        community_id: "acme".into(),
        member_id: member_id.into(),
        min_position,
        ..Default::default()
    }
}

async fn timeline(app: &TestApp, request: pb::GetTimelineRequest) -> pb::GetTimelineResponse {
    app.timelines()
        .await
        .get_timeline(request)
        .await
        .expect("timeline")
        .into_inner()
}

async fn a_timeline_shows_a_members_history_newest_first(backend: Backend) {
    let Some(app) = spawn_app(backend, "timeline_history").await else {
        return;
    };
    use pb::InteractionKind as K;
    let results = record(
        &app,
        vec![
            exchange("q1", "forum", "ana", K::Post, None, 0),
            exchange("a1", "forum", "bo", K::Answer, Some(member("ana")), 10),
            exchange("r1", "discord", "ana", K::Reply, Some(member("bo")), 20),
            exchange(
                "s1",
                "x",
                "ana",
                K::Share,
                Some(pb::Target {
                    target: Some(pb::target::Target::Brand(pb::target::Brand {})),
                }),
                30,
            ),
        ],
    )
    .await;
    let (ana, bo) = (results[0].0.clone(), results[1].0.clone());
    let last = results.iter().map(|r| r.1).max().unwrap();

    // Read-your-writes: the position of the write as min_position.
    let page = timeline(&app, timeline_request(&ana, last)).await;
    assert!(page.projection_position >= last);
    assert!(page.next_page_token.is_empty());
    // Tier changes ("became participant") are merged in, right above the
    // interaction that earned them; demotions since (a midnight, no event)
    // may follow as time passed. Set them aside first.
    let (tiers, entries): (Vec<_>, Vec<_>) =
        page.entries.iter().partition(|e| e.tier_change.is_some());
    let promotions: Vec<&pb::TimelineEntry> =
        tiers.iter().copied().filter(|e| e.position != 0).collect();
    assert!(!promotions.is_empty(), "ana's posts earned her a tier");
    for promotion in promotions {
        let i = page
            .entries
            .iter()
            .position(|e| std::ptr::eq(e, promotion))
            .unwrap();
        let earned_by = &page.entries[i + 1];
        assert_eq!(earned_by.position, promotion.position);
        assert_eq!(earned_by.occurred_at, promotion.occurred_at);
        assert_eq!(earned_by.actor_member_id, ana);
        let change = promotion.tier_change.as_ref().unwrap();
        assert!(change.to > change.from);
    }
    // Lifecycle entries carry the time the log recorded them: today, after
    // these 2026-01-01 interactions, so they come first.
    let summary: Vec<(i32, i32, String)> = entries
        .iter()
        .skip(2)
        .map(|e| (e.r#type, e.role, e.interaction_id.clone()))
        .collect();
    use pb::EventType as E;
    use pb::TimelineRole as R;
    let interaction = E::InteractionRecorded as i32;
    assert_eq!(
        summary[..4],
        [
            (interaction, R::Actor as i32, "s1".to_owned()),
            (interaction, R::Actor as i32, "r1".to_owned()),
            (interaction, R::Target as i32, "a1".to_owned()),
            (interaction, R::Actor as i32, "q1".to_owned()),
        ],
        "newest first: {summary:?}"
    );
    let lifecycle: HashSet<i32> = entries[..2]
        .iter()
        .inspect(|e| assert_eq!(e.role, R::Subject as i32))
        .map(|e| e.r#type)
        .collect();
    assert_eq!(
        lifecycle,
        HashSet::from([E::MemberRegistered as i32, E::IdentityLinked as i32])
    );
    assert_eq!(entries.len(), 6);
    assert_eq!(
        entries[0].identity.as_ref().map(|i| i.handle.as_str()),
        Some("ana")
    );

    let reply = &page
        .entries
        .iter()
        .find(|e| e.interaction_id == "r1")
        .unwrap();
    assert_eq!(reply.channel, "discord");
    assert_eq!(reply.kind, K::Reply as i32);
    assert_eq!(reply.actor_member_id, ana);
    assert_eq!(
        reply.target_member_id, bo,
        "the target resolved to a member"
    );
    assert_eq!(reply.excerpt, "excerpt of r1");
    assert_eq!(reply.url, "https://discord.example/r1");
    assert_eq!(reply.occurred_at, Some(at(20)));
    assert_eq!(reply.position, results[2].1);
    let answer = &page
        .entries
        .iter()
        .find(|e| e.interaction_id == "a1")
        .unwrap();
    assert_eq!(answer.actor_member_id, bo);
    assert_eq!(answer.target_member_id, ana);

    // The same timeline by identity; handles match as in ingest (forum
    // handles case-insensitively).
    let by_identity = timeline(
        &app,
        pb::GetTimelineRequest {
            member_id: String::new(),
            identity: Some(pb::Identity {
                channel: "forum".into(),
                handle: " ANA ".into(),
            }),
            ..timeline_request(&ana, last)
        },
    )
    .await;
    assert_eq!(by_identity.member_id, ana);
    assert_eq!(by_identity.entries, page.entries);
    let status = app
        .timelines()
        .await
        .get_timeline(pb::GetTimelineRequest {
            member_id: String::new(),
            identity: Some(pb::Identity {
                channel: "discord".into(),
                handle: "ana".into(),
            }),
            ..timeline_request(&ana, 0)
        })
        .await
        .expect_err("ana has no discord identity yet");
    assert_eq!(status.code(), Code::NotFound);

    // Filters: channels, kinds, time range.
    let only = |channels: &[&str], kinds: &[K], since, until| pb::GetTimelineRequest {
        channels: channels.iter().map(|c| c.to_string()).collect(),
        kinds: kinds.iter().map(|k| *k as i32).collect(),
        since,
        until,
        ..timeline_request(&ana, 0)
    };
    let ids = |page: pb::GetTimelineResponse| -> Vec<String> {
        page.entries.into_iter().map(|e| e.interaction_id).collect()
    };
    assert_eq!(
        ids(timeline(&app, only(&["discord", "x"], &[], None, None)).await),
        ["s1", "r1"]
    );
    assert_eq!(
        ids(timeline(&app, only(&[], &[K::Answer, K::Post], None, None)).await),
        ["a1", "q1"]
    );
    assert_eq!(
        ids(timeline(&app, only(&[], &[], Some(at(10)), Some(at(30)))).await),
        // The tier change r1 earned happened in the range too.
        ["", "r1", "a1"],
        "since is inclusive, until exclusive"
    );
}

async fn pagination_walks_every_entry_once_while_writes_continue(backend: Backend) {
    let Some(app) = spawn_app(backend, "timeline_pagination").await else {
        return;
    };
    use pb::InteractionKind as K;
    let existing: Vec<pb::Interaction> = (0..120)
        .map(|i| {
            // Some share a minute: the cursor must break ties by position.
            exchange(&format!("old{i}"), "forum", "ana", K::Comment, None, i / 3)
        })
        .collect();
    let results = record(&app, existing).await;
    let ana = results[0].0.clone();
    let last = results.iter().map(|r| r.1).max().unwrap();

    // Writes go on during the walk: newer ones and back-filled older ones.
    let writer_app_url = app.url();
    let writer = tokio::spawn(async move {
        let channel = tonic::transport::Channel::from_shared(writer_app_url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client =
            rapport_proto::v1::interaction_service_client::InteractionServiceClient::new(channel);
        for i in 0..40 {
            let minutes = if i % 2 == 0 { 1000 + i } else { -1000 - i };
            client
                .record_interaction(pb::RecordInteractionRequest {
                    interaction: Some(exchange(
                        &format!("new{i}"),
                        "forum",
                        "ana",
                        K::Comment,
                        None,
                        minutes,
                    )),
                })
                .await
                .expect("write during the walk");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = timeline(
            &app,
            pb::GetTimelineRequest {
                page_size: 7,
                page_token: token,
                ..timeline_request(&ana, last)
            },
        )
        .await;
        pages += 1;
        assert!(page.entries.len() <= 7);
        seen.extend(page.entries.iter().map(|e| (e.position, e.role)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writer.await.unwrap();
    assert!(pages >= 18, "walked {pages} pages");
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no entry twice");
    for (_, position) in &results {
        assert!(
            seen.iter().any(|(p, _)| p == position),
            "entry at {position} existed before the walk and was missed"
        );
    }

    // A token is bound to its request and tamper-evident.
    let first = timeline(
        &app,
        pb::GetTimelineRequest {
            page_size: 5,
            ..timeline_request(&ana, 0)
        },
    )
    .await;
    let token = first.next_page_token;
    let mut client = app.timelines().await;
    let mut tampered = token.clone().into_bytes();
    tampered[3] = if tampered[3] == b'0' { b'1' } else { b'0' };
    for (bad, request) in [
        (
            "tampered",
            pb::GetTimelineRequest {
                page_token: String::from_utf8(tampered).unwrap(),
                ..timeline_request(&ana, 0)
            },
        ),
        (
            "other filters",
            pb::GetTimelineRequest {
                page_token: token.clone(),
                channels: vec!["discord".into()],
                ..timeline_request(&ana, 0)
            },
        ),
        (
            "garbage",
            pb::GetTimelineRequest {
                page_token: "eyJvZmZzZXQiOjEwfQ==".into(),
                ..timeline_request(&ana, 0)
            },
        ),
    ] {
        let status = client.get_timeline(request).await.expect_err(bad);
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert_eq!(violated_fields(&status), ["page_token"], "{bad}");
    }
}

async fn relationships_and_connections_count_exchanges_both_ways(backend: Backend) {
    let Some(app) = spawn_app(backend, "timeline_relationships").await else {
        return;
    };
    use pb::InteractionKind as K;
    let results = record(
        &app,
        vec![
            exchange("e0", "forum", "ana", K::Post, None, 0),
            exchange("e1", "forum", "bo", K::Reply, Some(member("ana")), 1),
            exchange("e2", "forum", "ana", K::Reply, Some(member("bo")), 2),
            exchange("e3", "forum", "bo", K::Reaction, Some(member("ana")), 3),
            exchange("e4", "forum", "ana", K::Reply, Some(member("cy")), 4),
            exchange("e5", "forum", "bo", K::Mention, Some(member("cy")), 5),
            exchange("e6", "forum", "ana", K::Reply, Some(member("bo")), 6),
            exchange("e7", "forum", "cy", K::Post, None, 7),
        ],
    )
    .await;
    let (ana, bo) = (results[0].0.clone(), results[1].0.clone());
    let cy = results[7].0.clone();
    assert_ne!(cy, ana);
    let last = results.iter().map(|r| r.1).max().unwrap();
    let mut client = app.timelines().await;

    let relationship = client
        .get_relationship(pb::GetRelationshipRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            other_member_id: bo.clone(),
            page_size: 3,
            min_position: last,
            ..Default::default()
        })
        .await
        .expect("relationship")
        .into_inner();
    let ids: Vec<_> = relationship
        .entries
        .iter()
        .map(|e| e.interaction_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["e6", "e3", "e2"],
        "newest first, only between the two"
    );
    let mut counts: Vec<_> = relationship
        .counts
        .iter()
        .map(|c| (c.kind, c.sent, c.received))
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        [(K::Reaction as i32, 0, 1), (K::Reply as i32, 2, 1),]
    );
    let rest = client
        .get_relationship(pb::GetRelationshipRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            other_member_id: bo.clone(),
            page_size: 3,
            page_token: relationship.next_page_token,
            ..Default::default()
        })
        .await
        .expect("second page")
        .into_inner();
    let ids: Vec<_> = rest
        .entries
        .iter()
        .map(|e| e.interaction_id.as_str())
        .collect();
    assert_eq!(ids, ["e1"]);
    assert!(rest.next_page_token.is_empty());

    let connections = client
        .list_connections(pb::ListConnectionsRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            ..Default::default()
        })
        .await
        .expect("connections")
        .into_inner()
        .connections;
    let summary: Vec<_> = connections
        .iter()
        .map(|c| (c.member_id.clone(), c.sent, c.received))
        .collect();
    assert_eq!(
        summary,
        [(bo.clone(), 2, 2), (cy.clone(), 1, 0)],
        "most exchanges first"
    );
    assert_eq!(connections[0].first_exchange_at, Some(at(1)));
    assert_eq!(connections[0].last_exchange_at, Some(at(6)));

    let status = client
        .get_relationship(pb::GetRelationshipRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            other_member_id: ana.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a member with themself");
    assert_eq!(violated_fields(&status), ["other_member_id"]);
}

async fn unknown_members_and_members_of_other_communities_are_not_found(backend: Backend) {
    let Some(app) = spawn_app(backend, "timeline_not_found").await else {
        return;
    };
    let mut elsewhere = exchange("x1", "forum", "zed", pb::InteractionKind::Post, None, 0);
    elsewhere.community_id = "globex".into();
    let results = record(&app, vec![elsewhere]).await;
    let zed = results[0].0.clone();
    let ana = record(
        &app,
        vec![exchange(
            "a1",
            "forum",
            "ana",
            pb::InteractionKind::Post,
            None,
            0,
        )],
    )
    .await[0]
        .0
        .clone();
    let mut client = app.timelines().await;

    for (what, request) in [
        (
            "unknown",
            timeline_request("0192f0c8-0000-7000-8000-000000000000", 0),
        ),
        ("of another community", timeline_request(&zed, 0)),
    ] {
        let status = client.get_timeline(request).await.expect_err(what);
        assert_eq!(status.code(), Code::NotFound, "{what}");
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "MEMBER_NOT_FOUND");
    }
    let status = client
        .get_relationship(pb::GetRelationshipRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            other_member_id: zed.clone(),
            ..Default::default()
        })
        .await
        .expect_err("other member of another community");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("other_member_id"),
        "{}",
        status.message()
    );
    let status = client
        .list_connections(pb::ListConnectionsRequest {
            community_id: "acme".into(),
            member_id: zed,
            ..Default::default()
        })
        .await
        .expect_err("connections of another community's member");
    assert_eq!(status.code(), Code::NotFound);

    // Bad arguments name every wrong field.
    let status = client
        .get_timeline(pb::GetTimelineRequest {
            community_id: "not a community!".into(),
            member_id: String::new(),
            page_size: -1,
            kinds: vec![0, 99],
            channels: vec!["Forum".into()],
            since: Some(at(10)),
            until: Some(at(5)),
            ..Default::default()
        })
        .await
        .expect_err("bad arguments");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        [
            "community_id",
            "member_id",
            "page_size",
            "channels[0]",
            "kinds[0]",
            "kinds[1]",
            "until"
        ]
    );
}

async fn a_read_waits_for_min_position_and_says_when_the_projection_is_behind(backend: Backend) {
    let Some(app) = spawn_app(backend, "timeline_min_position").await else {
        return;
    };
    let (ana, position) = record(
        &app,
        vec![exchange(
            "a1",
            "forum",
            "ana",
            pb::InteractionKind::Post,
            None,
            0,
        )],
    )
    .await[0]
        .clone();
    let mut client = app.timelines().await;

    // A position the log has not reached: the read waits for the caller's
    // deadline, then says the projection is behind.
    let mut request = tonic::Request::new(timeline_request(&ana, position + 1_000));
    request.set_timeout(Duration::from_millis(600));
    let started = std::time::Instant::now();
    let status = client.get_timeline(request).await.expect_err("behind");
    let waited = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("behind"), "{}", status.message());
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        "PROJECTION_BEHIND"
    );
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "bounded by the deadline: {waited:?}"
    );

    // A write whose position a read waits for, made while the read waits.
    let reader = {
        let mut client = client.clone();
        let ana = ana.clone();
        tokio::spawn(async move {
            client
                .get_timeline(timeline_request(&ana, position + 1))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    record(
        &app,
        vec![exchange(
            "a2",
            "forum",
            "ana",
            pb::InteractionKind::Post,
            None,
            1,
        )],
    )
    .await;
    let page = reader
        .await
        .unwrap()
        .expect("answered once caught up")
        .into_inner();
    assert!(page.entries.iter().any(|e| e.interaction_id == "a2"));
}

async fn a_rebuild_through_the_admin_service_gives_the_same_timeline(backend: Backend) {
    let Some(app) = spawn_app(backend, "timeline_admin_rebuild").await else {
        return;
    };
    use pb::InteractionKind as K;
    let interactions = (0..60u32)
        .map(|i| {
            let target = i
                .is_multiple_of(4)
                .then(|| member(&format!("m{}", (i + 1) % 5)));
            exchange(
                &format!("i{i}"),
                "forum",
                &format!("m{}", i % 5),
                K::Reply,
                target,
                i64::from(i),
            )
        })
        .collect();
    let results = record(&app, interactions).await;
    let last = results.iter().map(|r| r.1).max().unwrap();
    let members: Vec<String> = results
        .iter()
        .map(|r| r.0.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let snapshot = |app: &TestApp, min: u64| {
        let members = members.clone();
        let url = app.url();
        async move {
            let mut pages = Vec::new();
            let channel = tonic::transport::Channel::from_shared(url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client =
                rapport_proto::v1::timeline_service_client::TimelineServiceClient::new(channel);
            for m in members {
                let page = client
                    .get_timeline(pb::GetTimelineRequest {
                        page_size: 500,
                        ..timeline_request(&m, min)
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let connections = client
                    .list_connections(pb::ListConnectionsRequest {
                        community_id: "acme".into(),
                        member_id: m.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                pages.push((page.entries, connections.connections));
            }
            pages
        }
    };
    let before = snapshot(&app, last).await;

    let mut admin = app.admin().await;
    let status = admin
        .list_projections(pb::ListProjectionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .projections;
    let names: Vec<&str> = status.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["scores", "timeline"]);
    let timeline = &status[1];
    let old = timeline.active_generation;
    assert!(timeline.leading_here);

    let rebuild = admin
        .rebuild_projection(pb::RebuildProjectionRequest {
            name: "timeline".into(),
        })
        .await
        .expect("rebuild")
        .into_inner();
    assert!(!rebuild.already_running);
    assert!(rebuild.generation > old);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = admin
            .list_projections(pb::ListProjectionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .projections
            .into_iter()
            .find(|p| p.name == "timeline")
            .expect("the timeline projection");
        if s.active_generation == rebuild.generation {
            assert_eq!(s.lag, 0);
            assert_eq!(s.checkpoint_position, s.head_position);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rebuild never finished: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        snapshot(&app, last).await,
        before,
        "the rebuilt timeline is the same"
    );

    let status = admin
        .rebuild_projection(pb::RebuildProjectionRequest {
            name: "scores-v9".into(),
        })
        .await
        .expect_err("unknown projection");
    assert_eq!(status.code(), Code::NotFound);
}

/// Two server processes on one PostgreSQL database: one runs the projector;
/// when it dies the other takes over and reads stay current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_projector_fails_over_to_the_other_replica() {
    let Some(first) = spawn_app(Backend::Postgres, "timeline_failover").await else {
        return;
    };
    let second = start_on(first.database_url(), None, &[]);
    second.wait_serving().await;
    let (ana, position) = record(
        &first,
        vec![exchange(
            "a1",
            "forum",
            "ana",
            pb::InteractionKind::Post,
            None,
            0,
        )],
    )
    .await[0]
        .clone();
    timeline(&second, timeline_request(&ana, position)).await;

    let leads = async |app: &TestApp| leading(app).await.iter().any(|p| p == "timeline");
    let (a, b) = (leads(&first).await, leads(&second).await);
    assert!(a != b, "exactly one replica runs the projector ({a}, {b})");
    let (leader, survivor) = if a { (first, second) } else { (second, first) };

    // The leader dies without a goodbye; its database session ends with it.
    let _db = leader.kill();
    let started = std::time::Instant::now();
    let page = post_and_read_back(&survivor, "a2", 1, Duration::from_secs(15))
        .await
        .expect("the survivor takes over the projector");
    assert!(page.entries.iter().any(|e| e.interaction_id == "a2"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took over in {:?}",
        started.elapsed()
    );
    assert!(leads(&survivor).await);
}

/// Which read models `app`'s process runs the projector of.
async fn leading(app: &TestApp) -> Vec<String> {
    app.admin()
        .await
        .list_projections(pb::ListProjectionsRequest {})
        .await
        .expect("list projections")
        .into_inner()
        .projections
        .into_iter()
        .filter(|p| p.leading_here)
        .map(|p| p.name)
        .collect()
}

/// Records a post by ana through `app` and reads her timeline back there
/// with the post's position as `min_position`, within `timeout`.
async fn post_and_read_back(
    app: &TestApp,
    id: &str,
    minutes: i64,
    timeout: Duration,
) -> Result<pb::GetTimelineResponse, tonic::Status> {
    let post = exchange(id, "forum", "ana", pb::InteractionKind::Post, None, minutes);
    let (ana, position) = record(app, vec![post]).await[0].clone();
    let mut request = tonic::Request::new(timeline_request(&ana, position));
    request.set_timeout(timeout);
    Ok(app
        .timelines()
        .await
        .get_timeline(request)
        .await?
        .into_inner())
}

/// Two replicas on PostgreSQL whose projectors linger ten minutes after
/// each batch: a read with `min_position` on the replica that runs no
/// projector tells the one that does (`NOTIFY`), which applies at once, as
/// it would for a read of its own, instead of after its linger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_read_on_another_replica_ends_the_projectors_linger() {
    let Some(db) = crate::app::fresh_database(Backend::Postgres, "timeline_wanted").await else {
        return;
    };
    let linger = ["--projector-linger-ms", "600000"];
    let leader = crate::app::start(db, &linger).await;
    leader.wait_serving().await;
    // The first replica takes both projectors before the second starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while leading(&leader).await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first replica leads both projectors"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reader = start_on(leader.database_url(), None, &linger);
    reader.wait_serving().await;
    assert!(
        leading(&reader).await.is_empty(),
        "the second replica leads nothing"
    );

    // A read that asks for a position far past the log gives up, and must
    // not keep the replica from telling the leader about the reads after it.
    let (ana, _) = record(
        &reader,
        vec![exchange(
            "w0",
            "forum",
            "ana",
            pb::InteractionKind::Post,
            None,
            0,
        )],
    )
    .await[0]
        .clone();
    let mut request = tonic::Request::new(timeline_request(&ana, 1_000_000_000));
    request.set_timeout(Duration::from_secs(1));
    let status = reader
        .timelines()
        .await
        .get_timeline(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);

    // An idle projector applies a commit at once, then lingers: the second
    // write is the one that would wait out the linger.
    for (minutes, id) in [(1, "w1"), (2, "w2")] {
        let page = post_and_read_back(&reader, id, minutes, Duration::from_secs(10))
            .await
            .unwrap_or_else(|status| panic!("{id} is read on the other replica: {status:?}"));
        assert!(page.entries.iter().any(|e| e.interaction_id == id));
    }
}
