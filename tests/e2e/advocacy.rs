//! Advocate scores through gRPC: the contest scenario the product exists
//! for, scores that equal the documented model, `as_of` replays, staff and
//! bots left out, policies set, previewed and refused.

use std::collections::HashSet;

use rapport_domain::policy::Policy;
use rapport_domain::score::{Activity, assess};
use rapport_domain::{InteractionKind, Timestamp};
use rapport_proto::v1 as pb;
use tonic::Code;

use crate::app::{Backend, TestApp, spawn_app};
use crate::ingest::violated_fields;
use crate::on_both_backends;

on_both_backends!(
    real_members_outrank_twenty_thousand_contest_likers,
    a_score_is_the_documented_model_explained_and_replayable,
    staff_and_bots_leave_the_rankings,
    policies_are_set_previewed_and_refused_with_field_violations,
);

const DAY: i64 = 86_400;

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn seconds_ago(s: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: now_seconds() - s,
        nanos: 0,
    }
}

fn forum(handle: &str) -> pb::Identity {
    pb::Identity {
        channel: "forum".into(),
        handle: handle.into(),
    }
}

#[allow(clippy::too_many_arguments)]
fn interaction(
    id: String,
    channel: &str,
    actor: &str,
    kind: pb::InteractionKind,
    target: Option<&str>,
    ago_seconds: i64,
    incentivized: bool,
) -> pb::Interaction {
    pb::Interaction {
        community_id: "acme".into(),
        interaction_id: id,
        channel: channel.into(),
        kind: kind as i32,
        actor: Some(forum(actor)),
        occurred_at: Some(seconds_ago(ago_seconds)),
        target: Some(pb::Target {
            target: Some(match target {
                Some(handle) => pb::target::Target::Member(forum(handle)),
                None => pb::target::Target::Brand(pb::target::Brand {}),
            }),
        }),
        incentivized,
        ..Default::default()
    }
}

/// Records in calls of at most 1,000; returns each (member id, position).
async fn record(app: &TestApp, interactions: Vec<pb::Interaction>) -> Vec<(String, u64)> {
    let mut client = app.interactions().await;
    let mut out = Vec::new();
    for chunk in interactions.chunks(1000) {
        let results = client
            .record_interactions(pb::RecordInteractionsRequest {
                interactions: chunk.to_vec(),
            })
            .await
            .expect("record")
            .into_inner()
            .results;
        out.extend(results.into_iter().map(|r| (r.member_id, r.position)));
    }
    out
}

async fn list(app: &TestApp, request: pb::ListAdvocatesRequest) -> pb::ListAdvocatesResponse {
    let mut request = tonic::Request::new(request);
    // Generous: a debug build projecting 60,000 events on a busy machine.
    request.set_timeout(std::time::Duration::from_secs(60));
    let started = std::time::Instant::now();
    let response = app
        .advocacy()
        .await
        .list_advocates(request)
        .await
        .expect("list advocates")
        .into_inner();
    eprintln!("list_advocates took {:?}", started.elapsed());
    response
}

/// A few dozen real members with varied genuine engagement over six months:
/// helpers answering others every week, hosts, reviewers, occasional posters.
fn real_community() -> (Vec<String>, Vec<pb::Interaction>) {
    use pb::InteractionKind as K;
    let names: Vec<String> = (0..36).map(|i| format!("real{i:02}")).collect();
    let mut out = Vec::new();
    let mut id = 0;
    let mut next = |v: &mut Vec<pb::Interaction>,
                    channel: &str,
                    actor: &str,
                    kind: K,
                    target: Option<&str>,
                    ago_days: i64| {
        id += 1;
        v.push(interaction(
            format!("real-{id}"),
            channel,
            actor,
            kind,
            target,
            ago_days * DAY + 3600,
            false,
        ));
    };
    for (i, name) in names.iter().enumerate() {
        let peer = |k: i64| names[(i + k as usize) % names.len()].as_str();
        match i % 4 {
            // Helpers: a reply and an answer to other members every week.
            0 => {
                for week in 0..26 {
                    next(
                        &mut out,
                        "forum",
                        name,
                        K::Reply,
                        Some(peer(week + 1)),
                        week * 7 + 1,
                    );
                    next(
                        &mut out,
                        "forum",
                        name,
                        K::Answer,
                        Some(peer(week + 2)),
                        week * 7 + 2,
                    );
                }
            }
            // Hosts: an event every month, posts every other week.
            1 => {
                for month in 0..6 {
                    next(
                        &mut out,
                        "meetup",
                        name,
                        K::EventHosted,
                        None,
                        month * 30 + 5,
                    );
                }
                for fortnight in 0..12 {
                    next(&mut out, "forum", name, K::Post, None, fortnight * 14 + 3);
                }
            }
            // Reviewers: a review a month, comments to others most weeks.
            2 => {
                for month in 0..6 {
                    next(&mut out, "github", name, K::Review, None, month * 30 + 10);
                }
                for week in (0..26).step_by(2) {
                    next(
                        &mut out,
                        "github",
                        name,
                        K::Comment,
                        Some(peer(week + 3)),
                        week * 7 + 4,
                    );
                }
            }
            // Occasional posters: a post every three weeks, a reply now and then.
            _ => {
                for k in 0..8 {
                    next(&mut out, "forum", name, K::Post, None, k * 21 + 6);
                    next(
                        &mut out,
                        "forum",
                        name,
                        K::Reply,
                        Some(peer(k + 1)),
                        k * 21 + 7,
                    );
                }
            }
        }
    }
    (names, out)
}

async fn real_members_outrank_twenty_thousand_contest_likers(backend: Backend) {
    let Some(app) = spawn_app(backend, "advocacy_contest").await else {
        return;
    };
    let (real_names, real) = real_community();
    let real_results = record(&app, real).await;
    // 20,000 people whose only interaction is one incentivized like of the
    // contest post, all within three days, three weeks ago.
    let contest: Vec<pb::Interaction> = (0..20_000)
        .map(|i| {
            interaction(
                format!("contest-{i}"),
                "instagram",
                &format!("contest{i:05}"),
                pb::InteractionKind::Reaction,
                None,
                21 * DAY - (i as i64 % (3 * DAY)),
                true,
            )
        })
        .collect();
    let contest_results = record(&app, contest).await;
    let last = contest_results.last().unwrap().1;

    let real_ids: HashSet<String> = real_results.into_iter().map(|(m, _)| m).collect();
    let contest_ids: HashSet<String> = contest_results.into_iter().map(|(m, _)| m).collect();
    assert_eq!(real_ids.len(), real_names.len());
    assert_eq!(contest_ids.len(), 20_000);

    // The first page: every real member, then contest likers, all observers.
    let page = list(
        &app,
        pb::ListAdvocatesRequest {
            community_id: "acme".into(),
            page_size: 100,
            min_position: last,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(page.members.len(), 100);
    assert!(!page.next_page_token.is_empty());
    let (top, rest) = page.members.split_at(real_ids.len());
    let top_ids: HashSet<String> = top.iter().map(|m| m.member_id.clone()).collect();
    assert_eq!(
        top_ids, real_ids,
        "every real member ranks above every contest liker"
    );
    let lowest_real = top.last().unwrap().score;
    for m in rest {
        assert!(contest_ids.contains(&m.member_id));
        assert!(m.score < lowest_real);
        assert_eq!(m.tier, pb::Tier::Observer as i32);
    }
    for (i, m) in page.members.iter().enumerate() {
        assert_eq!(m.rank as usize, i + 1);
    }

    // Above the lowest tier, over the whole community: real members only.
    let above = list(
        &app,
        pb::ListAdvocatesRequest {
            community_id: "acme".into(),
            page_size: 500,
            min_tier: pb::Tier::Participant as i32,
            ..Default::default()
        },
    )
    .await;
    let above_ids: HashSet<String> = above.members.iter().map(|m| m.member_id.clone()).collect();
    assert!(
        above_ids.is_disjoint(&contest_ids),
        "no contest liker leaves the lowest tier"
    );
    assert_eq!(
        above_ids, real_ids,
        "every real member reaches participant or above"
    );

    // The explanation says why: no organic interaction.
    let contest_member = rest[0].member_id.clone();
    let score = app
        .advocacy()
        .await
        .get_advocate_score(pb::GetAdvocateScoreRequest {
            community_id: "acme".into(),
            member_id: contest_member,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(score.capped);
    assert_eq!(score.tier, pb::Tier::Observer as i32);
    assert_eq!(score.interactions_counted, 1);
}

async fn a_score_is_the_documented_model_explained_and_replayable(backend: Backend) {
    use pb::InteractionKind as K;
    let Some(app) = spawn_app(backend, "advocacy_model").await else {
        return;
    };
    // Bob and Cid exist first, so that their member ids are known.
    let peers = record(
        &app,
        vec![
            interaction("b0".into(), "forum", "bob", K::Post, None, 200 * DAY, false),
            interaction("c0".into(), "forum", "cid", K::Post, None, 200 * DAY, false),
        ],
    )
    .await;
    let (bob, cid) = (peers[0].0.clone(), peers[1].0.clone());
    // Ana answers Bob and replies to Cid every week for 20 weeks, wrote one
    // tutorial, and liked a contest post.
    let mut sent = Vec::new();
    let mut plan = Vec::new();
    for week in 0..20 {
        plan.push((
            K::Answer,
            Some(("bob", &bob)),
            week * 7 * DAY + 7200,
            false,
            "forum",
        ));
        plan.push((
            K::Reply,
            Some(("cid", &cid)),
            week * 7 * DAY + 3 * DAY,
            false,
            "forum",
        ));
    }
    plan.push((K::ContentCreated, None, 40 * DAY, false, "blog"));
    plan.push((K::Reaction, None, 10 * DAY, true, "instagram"));
    for (i, (kind, target, ago, incentivized, channel)) in plan.iter().enumerate() {
        sent.push(interaction(
            format!("a{i}"),
            channel,
            "ana",
            *kind,
            target.map(|t| t.0),
            *ago,
            *incentivized,
        ));
    }
    let results = record(&app, sent.clone()).await;
    let ana = results[0].0.clone();
    let last = results.last().unwrap().1;

    // What the documented model says, computed here from what was sent.
    let activities: Vec<Activity> = plan
        .iter()
        .zip(&sent)
        .zip(&results)
        .map(
            |(((kind, target, _, incentivized, channel), i), (_, position))| {
                let t = i.occurred_at.unwrap();
                Activity {
                    position: *position,
                    at: Timestamp::from_parts(t.seconds, t.nanos).unwrap(),
                    kind: InteractionKind::from_i32(*kind as i32).unwrap(),
                    channel: channel.to_string(),
                    incentivized: *incentivized,
                    positive: false,
                    other_member: target.map(|t| t.1.clone()),
                }
            },
        )
        .collect();

    let mut client = app.advocacy().await;
    let now = client
        .get_advocate_score(pb::GetAdvocateScoreRequest {
            community_id: "acme".into(),
            identity: Some(forum("Ana")),
            min_position: last,
            top_contributions: 3,
            ..Default::default()
        })
        .await
        .expect("score")
        .into_inner();
    assert_eq!(now.member_id, ana);
    let as_of = now.as_of.unwrap();
    let as_of = Timestamp::from_parts(as_of.seconds, as_of.nanos).unwrap();
    let expected = assess(&activities, &Policy::default(), as_of, 3);
    assert_eq!(now.score, expected.score.value);
    assert_eq!(now.tier, expected.tier.as_i32());
    assert_eq!(now.interactions_counted as usize, activities.len());
    assert!(!now.capped);
    let names: Vec<&str> = now.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "engagement",
            "consistency",
            "exchange",
            "advocacy",
            "breadth"
        ]
    );
    let points: f64 = now.components.iter().map(|c| c.points).sum();
    assert!((points - now.score).abs() < 1e-9);
    assert_eq!(now.top_contributions.len(), 3);
    assert_eq!(now.top_contributions[0].kind, K::ContentCreated as i32);
    assert_eq!(
        now.top_contributions
            .iter()
            .map(|c| c.position)
            .collect::<Vec<_>>(),
        expected.top.iter().map(|c| c.position).collect::<Vec<_>>()
    );
    assert!(now.momentum.is_finite());

    // Ninety days ago: a replay of what had happened by then.
    let then = prost_types::Timestamp {
        seconds: as_of.to_parts().0 - 90 * DAY,
        nanos: 0,
    };
    let past = client
        .get_advocate_score(pb::GetAdvocateScoreRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            as_of: Some(then),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let then = Timestamp::from_parts(then.seconds, 0).unwrap();
    let replay = assess(&activities, &Policy::default(), then, 0);
    assert_eq!(past.score, replay.score.value);
    assert_eq!(past.interactions_counted as usize, replay.counted);
    assert!(past.interactions_counted < now.interactions_counted);

    // One channel only: the blog post alone.
    let blog = client
        .get_advocate_score(pb::GetAdvocateScoreRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            channel: "blog".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(blog.interactions_counted, 1);

    // The leaderboard agrees with the score.
    let board = list(
        &app,
        pb::ListAdvocatesRequest {
            community_id: "acme".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(board.members[0].member_id, ana);
    assert_eq!(board.members.len(), 3);
    // One channel: only activity there counts; Bob and Cid never blogged.
    let blog_board = list(
        &app,
        pb::ListAdvocatesRequest {
            community_id: "acme".into(),
            channel: "blog".into(),
            ..Default::default()
        },
    )
    .await;
    let blog_ids: Vec<&str> = blog_board
        .members
        .iter()
        .map(|m| m.member_id.as_str())
        .collect();
    assert_eq!(blog_ids, [ana.as_str()]);
    // By momentum, lowest first, over everyone: the order the values say.
    let by_momentum = list(
        &app,
        pb::ListAdvocatesRequest {
            community_id: "acme".into(),
            order_by: pb::AdvocateOrder::Momentum as i32,
            ascending: true,
            min_tier: pb::Tier::Observer as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_momentum.members.len(), 3);
    assert!(
        by_momentum
            .members
            .windows(2)
            .all(|w| w[0].momentum <= w[1].momentum),
        "{:?}",
        by_momentum.members
    );
    let ana_row = by_momentum
        .members
        .iter()
        .find(|m| m.member_id == ana)
        .unwrap();
    // Read a moment later: decay moved it by a hair.
    assert!(
        (ana_row.momentum - now.momentum).abs() < 1e-3,
        "the same momentum as her score says: {} vs {}",
        ana_row.momentum,
        now.momentum
    );

    // Unknown members and bad requests.
    let missing = client
        .get_advocate_score(pb::GetAdvocateScoreRequest {
            community_id: "globex".into(),
            member_id: ana.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let bad = client
        .get_advocate_score(pb::GetAdvocateScoreRequest {
            community_id: "acme".into(),
            member_id: ana,
            channel: "Not A Slug".into(),
            top_contributions: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad), ["channel", "top_contributions"]);
}

async fn staff_and_bots_leave_the_rankings(backend: Backend) {
    use pb::InteractionKind as K;
    let Some(app) = spawn_app(backend, "advocacy_roles").await else {
        return;
    };
    let mut sent = Vec::new();
    for (n, handle) in ["ana", "bob", "cid"].iter().enumerate() {
        for k in 0..(3 - n as i64) * 4 {
            sent.push(interaction(
                format!("{handle}-{k}"),
                "forum",
                handle,
                K::Post,
                None,
                k * 7 * DAY + 60,
                false,
            ));
        }
    }
    let results = record(&app, sent).await;
    let ids: Vec<String> = results.iter().map(|r| r.0.clone()).collect();
    let (ana, bob, cid) = (ids[0].clone(), ids[12].clone(), ids[20].clone());
    let board = |min_position| {
        let app = &app;
        async move {
            list(
                app,
                pb::ListAdvocatesRequest {
                    community_id: "acme".into(),
                    min_position,
                    ..Default::default()
                },
            )
            .await
            .members
            .into_iter()
            .map(|m| m.member_id)
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        board(results.last().unwrap().1).await,
        [ana.clone(), bob.clone(), cid.clone()]
    );

    let mut client = app.advocacy().await;
    let staff = client
        .set_member_role(pb::SetMemberRoleRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            role: pb::MemberRole::Staff as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let bot = client
        .set_member_role(pb::SetMemberRoleRequest {
            community_id: "acme".into(),
            identity: Some(forum("CID")),
            role: pb::MemberRole::Bot as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bot.member_id, cid);
    assert!(bot.position > staff.position);
    assert_eq!(board(bot.position).await, std::slice::from_ref(&bob));

    // Still scored, and saying so.
    let score = client
        .get_advocate_score(pb::GetAdvocateScoreRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(score.role, pb::MemberRole::Staff as i32);
    assert!(score.score > 0.0);

    // Back to member: back in the ranking.
    let back = client
        .set_member_role(pb::SetMemberRoleRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            role: pb::MemberRole::Member as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(board(back.position).await, [ana.clone(), bob]);

    // The role change is in the member's timeline and in the log.
    let timeline = app
        .timelines()
        .await
        .get_timeline(pb::GetTimelineRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            min_position: back.position,
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        timeline.entries[0].r#type,
        pb::EventType::MemberRoleSet as i32
    );
    assert_eq!(
        timeline.entries[0].member_role,
        pb::MemberRole::Member as i32
    );

    for (request, code, fields) in [
        (
            pb::SetMemberRoleRequest {
                community_id: "acme".into(),
                member_id: ana.clone(),
                role: 0,
                ..Default::default()
            },
            Code::InvalidArgument,
            vec!["role"],
        ),
        (
            pb::SetMemberRoleRequest {
                community_id: "globex".into(),
                member_id: ana.clone(),
                role: pb::MemberRole::Bot as i32,
                ..Default::default()
            },
            Code::NotFound,
            vec![],
        ),
    ] {
        let error = client.set_member_role(request).await.unwrap_err();
        assert_eq!(error.code(), code);
        assert_eq!(violated_fields(&error), fields);
    }
}

async fn policies_are_set_previewed_and_refused_with_field_violations(backend: Backend) {
    use pb::InteractionKind as K;
    let Some(app) = spawn_app(backend, "advocacy_policy").await else {
        return;
    };
    // A reviewer and a weekly reactor: which ranks first depends on weights.
    let mut sent = Vec::new();
    for k in 0..3 {
        sent.push(interaction(
            format!("r{k}"),
            "forum",
            "rev",
            K::Review,
            None,
            k * 30 * DAY + 60,
            false,
        ));
    }
    for k in 0..20 {
        sent.push(interaction(
            format!("l{k}"),
            "forum",
            "liker",
            K::Reaction,
            None,
            k * 7 * DAY + 60,
            false,
        ));
    }
    let results = record(&app, sent).await;
    let (rev, liker) = (results[0].0.clone(), results[3].0.clone());
    let mut client = app.advocacy().await;

    let default = client
        .get_scoring_policy(pb::GetScoringPolicyRequest {
            community_id: "acme".into(),
            min_position: results.last().unwrap().1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(default.is_default);
    assert_eq!(default.position, 0);
    let mut policy = default.policy.unwrap();
    assert_eq!(policy.half_life_days, 120.0);

    // Refused: every broken rule named.
    let mut broken = policy.clone();
    broken.component_weights.as_mut().unwrap().breadth = 0.5;
    broken.kind_weights[0].weight = -1.0;
    broken.tier_thresholds.as_mut().unwrap().champion = 20.0;
    let error = client
        .set_scoring_policy(pb::SetScoringPolicyRequest {
            community_id: "acme".into(),
            policy: Some(broken),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&error),
        [
            "policy.kind_weights[REACTION]",
            "policy.component_weights",
            "policy.tier_thresholds.champion",
        ]
    );
    let missing = client
        .set_scoring_policy(pb::SetScoringPolicyRequest {
            community_id: "acme".into(),
            policy: None,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&missing), ["policy"]);

    // A candidate that values reactions highly: previewed, nothing changes.
    let reaction = policy
        .kind_weights
        .iter_mut()
        .find(|k| k.kind == K::Reaction as i32)
        .unwrap();
    reaction.weight = 20.0;
    let before = list(
        &app,
        pb::ListAdvocatesRequest {
            community_id: "acme".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(before.members[0].member_id, rev);
    let preview = client
        .preview_scoring_policy(pb::PreviewScoringPolicyRequest {
            community_id: "acme".into(),
            policy: Some(policy.clone()),
            top_n: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.members_scored, 2);
    assert_eq!(preview.top.len(), 1);
    assert_eq!(preview.top[0].member_id, liker);
    let counted: u32 = preview.tier_counts.iter().map(|t| t.members).sum();
    let current: u32 = preview.current_tier_counts.iter().map(|t| t.members).sum();
    assert_eq!((counted, current), (2, 2));
    let unchanged = client
        .get_scoring_policy(pb::GetScoringPolicyRequest {
            community_id: "acme".into(),
            min_position: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(unchanged.is_default);

    // Set: an event; every score is recomputed; the leaderboard follows the
    // preview.
    let set = client
        .set_scoring_policy(pb::SetScoringPolicyRequest {
            community_id: "acme".into(),
            policy: Some(policy.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let now = client
        .get_scoring_policy(pb::GetScoringPolicyRequest {
            community_id: "acme".into(),
            min_position: set.position,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!now.is_default);
    assert_eq!(now.position, set.position);
    assert_eq!(now.policy.unwrap(), policy);
    let after = list(
        &app,
        pb::ListAdvocatesRequest {
            community_id: "acme".into(),
            min_position: set.position,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(after.members[0].member_id, liker);
    // Another community keeps the default.
    let other = client
        .get_scoring_policy(pb::GetScoringPolicyRequest {
            community_id: "globex".into(),
            min_position: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other.is_default);
}
