//! The scores read model on both backends: what it holds equals a replay of
//! the log through the pure model, after live batches, backfills, policy
//! changes and rebuilds; rankings are exact and leave staff out.

use std::collections::BTreeMap;
use std::time::Duration;

use rapport_domain::policy::{Policy, Tier};
use rapport_domain::score::{Activity, assess, momentum, tier_history};
use rapport_domain::{
    Command, Event, EventBody, Identity, Interaction, InteractionKind, MemberRole, Target,
    Timestamp,
};
use rapport_projections::scores::{ALL_CHANNELS, NAME, RankQuery, TierRange};
use rapport_projections::{Projections, RunnerOptions};
use rapport_store::{CommandOutcome, EventQuery, Store, StoreOptions};
use rapport_testkit::TestDatabase;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn fresh(backend: Backend, test: &str) -> Option<(TestDatabase, Store)> {
    let db = match backend {
        Backend::Sqlite => TestDatabase::sqlite(),
        Backend::Postgres => TestDatabase::postgres(test).await?,
    };
    let store = Store::connect(&StoreOptions::new(&db.url).with_master_key(
        rapport_store::MasterKey::from_base64(rapport_testkit::TEST_MASTER_KEY).unwrap(),
    ))
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");
    Some((db, store))
}

const DAY: i64 = 86_400_000_000;
/// 2025-10-09: every interaction here happened before the tests run.
const T0: i64 = 1_760_000_000_000_000;

/// Interaction `i` of a community of twelve members over ~200 days: mostly
/// in time order, every fifth one a backfill from earlier, some
/// incentivized, some aimed at other members, on three channels.
fn interaction(i: usize) -> Interaction {
    let handle = |n: usize| format!("member{}", n % 12);
    let day = if i.is_multiple_of(5) {
        (i * 37 % 150) as i64
    } else {
        (i / 2) as i64
    };
    let kinds = [
        InteractionKind::Reply,
        InteractionKind::Reaction,
        InteractionKind::Answer,
        InteractionKind::Review,
        InteractionKind::Mention,
        InteractionKind::Post,
    ];
    Interaction {
        community_id: "acme".into(),
        interaction_id: format!("i{i}"),
        channel: ["forum", "discord", "github"][i % 3].into(),
        kind: kinds[i * 7 % kinds.len()],
        source_type: String::new(),
        actor: Identity {
            channel: "forum".into(),
            handle: handle(i * 5 + i / 12),
        },
        occurred_at: Timestamp::from_micros(T0 + day * DAY + (i as i64) * 1_000_000),
        target: Some(if i.is_multiple_of(4) {
            Target::Brand
        } else {
            Target::Member(Identity {
                channel: "forum".into(),
                handle: handle(i * 5 + 1),
            })
        }),
        incentivized: i.is_multiple_of(6),
        sentiment: if i.is_multiple_of(2) { Some(0.6) } else { None },
        campaign_id: String::new(),
        url: String::new(),
        excerpt: String::new(),
        actor_display_name: String::new(),
        attributes: BTreeMap::new(),
    }
}

async fn append(store: &Store, range: std::ops::Range<usize>) {
    for chunk in range.collect::<Vec<_>>().chunks(25) {
        let batch = chunk.iter().map(|&i| vec![interaction(i)]).collect();
        store
            .append_batch(batch, rapport_store::wall_clock())
            .await
            .expect("append");
    }
}

fn options() -> RunnerOptions {
    RunnerOptions {
        batch_size: 40,
        bulk_batch_size: 70,
        poll_interval: Duration::from_millis(10),
        leader_check_interval: Duration::from_millis(200),
        retire_grace: Duration::ZERO,
        // Bounds tightened all the time: rankings must stay exact.
        maintain_interval: Duration::from_millis(10),
        ..RunnerOptions::default()
    }
}

struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("projector task");
        }
    }
}

fn start(projections: &Projections) -> Running {
    let (stop, shutdown) = watch::channel(false);
    let (_commits_tx, commits) = watch::channel(0);
    let tasks = projections.spawn(commits, options(), shutdown);
    Running { stop, tasks }
}

async fn caught_up(projections: &Projections) -> u64 {
    let head = projections.store().head().await.expect("head");
    projections
        .wait_for(NAME, head, Instant::now() + Duration::from_secs(30))
        .await
        .expect("the projection catches up")
        .generation
}

/// Waits until the rebuilt generation serves reads.
async fn switched_to(projections: &Projections, rebuilt: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = projections.status().await.expect("status");
        let scores = status.iter().find(|s| s.name == NAME).expect("scores");
        if scores.active.as_ref().map(|a| a.generation) == Some(rebuilt) {
            return;
        }
        assert!(Instant::now() < deadline, "never switched: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_events(store: &Store) -> Vec<Event> {
    store
        .read_events(&EventQuery {
            limit: 100_000,
            ..EventQuery::default()
        })
        .await
        .expect("read")
        .events
}

/// Each member's activities, derived from the log here, independently of
/// the projection: what the model's input is by definition. A member merged
/// into another (as the log stands at its end) is that one, wherever it
/// appears: its interactions are the target's, and so are those aimed at it.
fn activities_by_member(events: &[Event]) -> BTreeMap<String, Vec<Activity>> {
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    for e in events {
        match &e.body {
            EventBody::MembersMerged {
                member_id,
                source_member_id,
                ..
            } => {
                merged.insert(source_member_id.clone(), member_id.clone());
            }
            EventBody::MemberUnmerged {
                source_member_id, ..
            } => {
                merged.remove(source_member_id);
            }
            _ => {}
        }
    }
    let canonical = |m: &String| merged.get(m).cloned().unwrap_or_else(|| m.clone());
    let mut out: BTreeMap<String, Vec<Activity>> = BTreeMap::new();
    for e in events {
        if let EventBody::InteractionRecorded {
            member_id,
            interaction,
            target_member_id,
        } = &e.body
        {
            let member_id = &canonical(member_id);
            let target_member_id = target_member_id.as_ref().map(canonical);
            out.entry(member_id.clone()).or_default().push(Activity {
                position: e.position,
                at: interaction.occurred_at.min(e.recorded_at),
                kind: interaction.kind,
                channel: interaction.channel.clone(),
                incentivized: interaction.incentivized,
                positive: interaction.sentiment.is_some_and(|s| s > 0.0),
                other_member: target_member_id.clone().filter(|t| t != member_id),
            });
        }
    }
    out
}

/// Every member's stored state, on all channels and on each, evaluated at
/// `as_of`, equals the replay of their activities from the log.
async fn assert_states_replay(projections: &Projections, g: u64, policy: &Policy) {
    let events = all_events(projections.store()).await;
    let members = activities_by_member(&events);
    assert!(members.len() >= 10, "the test community has its members");
    let as_of = Timestamp::from_micros(T0 + 400 * DAY);
    for (member, activities) in &members {
        let mut channels: Vec<&str> = activities.iter().map(|a| a.channel.as_str()).collect();
        channels.sort();
        channels.dedup();
        channels.insert(0, ALL_CHANNELS);
        for channel in channels {
            let input: Vec<Activity> = activities
                .iter()
                .filter(|a| channel == ALL_CHANNELS || a.channel == channel)
                .cloned()
                .collect();
            let replay = assess(&input, policy, as_of, 0);
            let state = projections
                .score_state(g, "acme", member, channel)
                .await
                .expect("state")
                .expect("every active member has a state");
            let (score, tier) = state.at_time(policy, as_of);
            assert_eq!(score, replay.score, "{member} on {channel:?}");
            assert_eq!(tier, replay.tier, "{member} on {channel:?}");
            if channel == ALL_CHANNELS {
                // What a timeline page reads in one snapshot: the policy,
                // this state, and the stored history, to which it adds
                // what time alone has changed since.
                let reads = projections
                    .timeline_tiers(g, "acme", member, &TierRange::default(), 100_000)
                    .await
                    .expect("tier changes");
                assert_eq!(&reads.policy.unwrap_or_default(), policy, "{member} policy");
                assert_eq!(reads.state.as_ref(), Some(&state), "{member} state");
                let mut history = reads.stored;
                history.reverse();
                history.extend(state.changes_until(policy, as_of));
                assert_eq!(history, tier_history(&input, policy, as_of), "{member}");
                // Momentum from the snapshot, the explanation from a
                // bounded scan: both as a replay gives them.
                // Long after the last interaction, and soon after it (the base
                // day then falls inside the history: a snapshot answers).
                for as_of in [as_of, Timestamp::from_micros(T0 + 215 * DAY)] {
                    assert!(state.at.is_some_and(|latest| latest <= as_of.as_micros()));
                    let fast = projections
                        .momentum_now(g, "acme", member, &state, policy, as_of)
                        .await
                        .expect("momentum");
                    assert_eq!(fast, momentum(&input, policy, as_of), "{member} momentum");
                }
                let top = projections
                    .top_contributions(g, "acme", member, None, &state, policy, as_of, 5)
                    .await
                    .expect("top");
                let replayed = assess(&input, policy, as_of, 5).top;
                assert_eq!(
                    top.iter().map(|c| c.position).collect::<Vec<_>>(),
                    replayed.iter().map(|c| c.position).collect::<Vec<_>>(),
                    "{member} top contributions"
                );
            }
        }
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}

on_both_backends!(
    scores_equal_a_replay_of_the_log,
    a_policy_change_rescores_from_the_log,
    a_rebuild_of_the_scores_is_identical,
    merged_members_score_as_one_and_rebuild_identically,
    rankings_are_exact_and_leave_staff_and_bots_out,
    tied_rankings_page_by_member_id_across_reads,
);

async fn scores_equal_a_replay_of_the_log(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "scores_replay").await else {
        return;
    };
    let projections = Projections::new(store.clone());
    let running = start(&projections);
    append(&store, 0..200).await;
    let g = caught_up(&projections).await;
    assert_states_replay(&projections, g, &Policy::default()).await;
    // More, after the first batches: states fold forward from what they hold.
    append(&store, 200..400).await;
    let g = caught_up(&projections).await;
    assert_states_replay(&projections, g, &Policy::default()).await;
    running.stop().await;
}

async fn a_policy_change_rescores_from_the_log(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "scores_policy").await else {
        return;
    };
    let projections = Projections::new(store.clone());
    let running = start(&projections);
    append(&store, 0..200).await;
    let mut policy = Policy {
        half_life_days: 30.0,
        ..Policy::default()
    };
    policy.kind_weights.insert(InteractionKind::Reaction, 2.0);
    policy.thresholds.participant = 5.0;
    policy.demotion_margin = 2.0;
    let outcome = store
        .append_command(
            Command::SetScoringPolicy {
                community_id: "acme".into(),
                policy: policy.clone(),
            },
            rapport_store::wall_clock(),
        )
        .await
        .expect("set policy");
    let CommandOutcome::Appended(event) = outcome else {
        panic!("a policy needs no member");
    };
    append(&store, 200..260).await;
    let g = caught_up(&projections).await;
    assert_eq!(
        projections.scoring_policy(g, "acme").await.expect("policy"),
        Some((policy.clone(), event.position))
    );
    assert_eq!(
        projections
            .scoring_policy(g, "other")
            .await
            .expect("policy"),
        None
    );
    assert_states_replay(&projections, g, &policy).await;
    running.stop().await;
}

async fn a_rebuild_of_the_scores_is_identical(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "scores_rebuild").await else {
        return;
    };
    let projections = Projections::new(store.clone());
    let running = start(&projections);
    append(&store, 0..300).await;
    let live = caught_up(&projections).await;
    let live_rows = projections.scores_dump(live).await.expect("dump");
    let (rebuilt, started) = projections.rebuild(NAME).await.expect("rebuild");
    assert!(started);
    switched_to(&projections, rebuilt).await;
    let rebuilt_rows = projections.scores_dump(rebuilt).await.expect("dump");
    assert_eq!(rebuilt_rows.len(), live_rows.len());
    assert_eq!(rebuilt_rows, live_rows);
    running.stop().await;
}

/// Merges and unmerges between batches (and interactions of a merged member
/// meanwhile): every state is the replay of its member's activities with
/// the merges as the log ends, and a rebuild from position 0 gives the same
/// rows.
async fn merged_members_score_as_one_and_rebuild_identically(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "scores_merges").await else {
        return;
    };
    let projections = Projections::new(store.clone());
    let running = start(&projections);
    let member = |n: usize| {
        let store = store.clone();
        async move {
            let identity = Identity {
                channel: "forum".into(),
                handle: format!("member{n}"),
            };
            store
                .find_member("acme", &identity)
                .await
                .expect("find")
                .expect("a member")
        }
    };
    let command = |command: Command| {
        let store = store.clone();
        async move {
            let outcome = store
                .append_command(command, rapport_store::wall_clock())
                .await
                .expect("command");
            assert!(
                matches!(outcome, CommandOutcome::Appended(_)),
                "{outcome:?}"
            );
        }
    };
    let merge = |source: String, target: String| Command::MergeMembers {
        community_id: "acme".into(),
        source_member_id: source,
        target_member_id: target,
        reason: "test".into(),
    };
    append(&store, 0..150).await;
    let (m3, m5, m7) = (member(3).await, member(5).await, member(7).await);
    command(merge(m3.clone(), m5.clone())).await;
    append(&store, 150..250).await;
    command(merge(m7.clone(), m5.clone())).await;
    let g = caught_up(&projections).await;
    assert_states_replay(&projections, g, &Policy::default()).await;
    assert!(
        projections
            .score_state(g, "acme", &m3, ALL_CHANNELS)
            .await
            .expect("state")
            .is_none(),
        "a merged member has no score of its own"
    );
    command(Command::UnmergeMember {
        community_id: "acme".into(),
        source_member_id: m3.clone(),
        target_member_id: m5.clone(),
    })
    .await;
    append(&store, 250..300).await;
    let live = caught_up(&projections).await;
    assert_states_replay(&projections, live, &Policy::default()).await;

    let live_rows = projections.scores_dump(live).await.expect("dump");
    let (rebuilt, _) = projections.rebuild(NAME).await.expect("rebuild");
    switched_to(&projections, rebuilt).await;
    assert_eq!(
        projections.scores_dump(rebuilt).await.expect("dump"),
        live_rows
    );
    running.stop().await;
}

async fn rankings_are_exact_and_leave_staff_and_bots_out(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "scores_rank").await else {
        return;
    };
    let projections = Projections::new(store.clone());
    let running = start(&projections);
    append(&store, 0..300).await;
    let policy = Policy::default();
    // Rankings are exact for "now" (maintenance keeps bounds valid from a
    // day before the time it runs).
    let as_of = rapport_store::wall_clock();
    let events = all_events(&store).await;
    let expected = |excluded: &[&str]| {
        let mut all: Vec<(String, f64, Tier)> = activities_by_member(&events)
            .into_iter()
            .filter(|(m, _)| !excluded.contains(&m.as_str()))
            .map(|(m, acts)| {
                let a = assess(&acts, &policy, as_of, 0);
                (m, a.score.value, a.tier)
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all
    };
    let query = RankQuery {
        community_id: "acme".into(),
        channel: ALL_CHANNELS.into(),
        min_tier: Tier::Observer,
        as_of,
    };
    let g = caught_up(&projections).await;
    let ranked = |g, offset, limit| {
        let (projections, query, policy) = (&projections, &query, &policy);
        async move {
            projections
                .rank(g, query, policy, offset, limit)
                .await
                .expect("rank")
                .into_iter()
                .map(|r| (r.member_id, r.score, r.tier))
                .collect::<Vec<_>>()
        }
    };
    let all = expected(&[]);
    assert_eq!(ranked(g, 0, 100).await, all);
    assert_eq!(ranked(g, 2, 3).await, all[2..5].to_vec());
    // A tier filter reads only states whose bound allows the tier: bounds
    // must never be below the score.
    for min_tier in [Tier::Participant, Tier::Contributor] {
        let filtered: Vec<_> = all.iter().filter(|r| r.2 >= min_tier).cloned().collect();
        assert!(!filtered.is_empty() || min_tier == Tier::Contributor);
        let query = RankQuery {
            min_tier,
            ..query.clone()
        };
        let got: Vec<_> = projections
            .rank(g, &query, &policy, 0, 100)
            .await
            .expect("rank")
            .into_iter()
            .map(|r| (r.member_id, r.score, r.tier))
            .collect();
        assert_eq!(got, filtered, "at least {min_tier:?}");
    }

    // The top member becomes staff, the second a bot: both leave the ranking.
    for (member, role) in [(&all[0].0, MemberRole::Staff), (&all[1].0, MemberRole::Bot)] {
        store
            .append_command(
                Command::SetMemberRole {
                    community_id: "acme".into(),
                    member_id: member.clone(),
                    role,
                },
                rapport_store::wall_clock(),
            )
            .await
            .expect("set role");
    }
    let g = caught_up(&projections).await;
    assert_eq!(
        ranked(g, 0, 100).await,
        expected(&[all[0].0.as_str(), all[1].0.as_str()])
    );
    assert_eq!(
        projections.member_role(g, "acme", &all[1].0).await.unwrap(),
        MemberRole::Bot
    );
    running.stop().await;
}

async fn tied_rankings_page_by_member_id_across_reads(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "scores_ties").await else {
        return;
    };
    let projections = Projections::new(store.clone());
    let running = start(&projections);
    // 600 members with the same interaction at the same time: the same
    // score to the last bit, so the ranking is by member id, and a page
    // deep in it needs more than one read of states.
    let batch: Vec<Vec<Interaction>> = (0..600)
        .map(|i| {
            let mut one = interaction(1);
            one.interaction_id = format!("tie-{i}");
            one.actor.handle = format!("tied{i:03}");
            one.target = Some(Target::Brand);
            vec![one]
        })
        .collect();
    store
        .append_batch(batch, rapport_store::wall_clock())
        .await
        .expect("append");
    let g = caught_up(&projections).await;
    let mut members: Vec<String> = activities_by_member(&all_events(&store).await)
        .into_keys()
        .collect();
    members.sort();
    assert_eq!(members.len(), 600);
    let query = RankQuery {
        community_id: "acme".into(),
        channel: ALL_CHANNELS.into(),
        min_tier: Tier::Observer,
        as_of: rapport_store::wall_clock(),
    };
    let policy = Policy::default();
    for (offset, limit) in [(0, 10), (250, 20), (590, 50)] {
        let page: Vec<String> = projections
            .rank(g, &query, &policy, offset, limit)
            .await
            .expect("rank")
            .into_iter()
            .map(|r| r.member_id)
            .collect();
        let expected: Vec<String> = members.iter().skip(offset).take(limit).cloned().collect();
        assert_eq!(page, expected, "offset {offset}");
    }
    running.stop().await;
}
