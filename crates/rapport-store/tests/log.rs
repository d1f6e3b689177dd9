//! The event log on both backends: the same tests, run once on SQLite and once
//! on PostgreSQL (a fresh database each). Two `Store`s on one database stand
//! for two server replicas.

use std::collections::HashSet;
use std::time::Duration;

use rapport_domain::policy::Policy;
use rapport_domain::{
    Command, EventBody, EventType, Identity, InteractionKind, MemberRole, Target,
};
use rapport_store::{CommandOutcome, EventQuery, Feed, Store, StoreOptions, Writer, WriterConfig};

mod common;
use common::{Backend, T0, fresh, interaction};

on_both_backends!(
    positions_are_gap_free_in_commit_order_under_concurrent_replicas,
    a_retry_is_a_duplicate_and_a_reused_id_conflicts,
    concurrent_first_sightings_make_one_member,
    recorded_events_read_back_whole_and_filtered,
    a_conflicting_request_writes_nothing,
    streams_continue_across_writers_and_restarts,
    commands_append_in_order_and_check_the_member,
);

async fn positions_are_gap_free_in_commit_order_under_concurrent_replicas(backend: Backend) {
    let Some((db, store_a)) = fresh(backend, "gap_free").await else {
        return;
    };
    let store_b = Store::connect(&StoreOptions::new(&db.url).with_master_key(
        rapport_store::MasterKey::from_base64(rapport_testkit::TEST_MASTER_KEY).unwrap(),
    ))
    .await
    .unwrap();
    let (writer_a, task_a) = Writer::spawn(store_a.clone(), WriterConfig::default(), Feed::new());
    let (writer_b, task_b) = Writer::spawn(store_b.clone(), WriterConfig::default(), Feed::new());

    const WRITERS: usize = 8;
    const REQUESTS: usize = 40;
    const PER_REQUEST: usize = 5;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let writer = if w % 2 == 0 {
            writer_a.clone()
        } else {
            writer_b.clone()
        };
        writers.push(tokio::spawn(async move {
            for r in 0..REQUESTS {
                let batch = (0..PER_REQUEST)
                    .map(|i| {
                        // A few shared handles, so replicas race on identities too.
                        interaction(
                            "acme",
                            &format!("w{w}-r{r}-i{i}"),
                            &format!("user{}", (r + i) % 7),
                        )
                    })
                    .collect();
                writer
                    .append(batch)
                    .await
                    .expect("append")
                    .expect("no conflict");
            }
        }));
    }

    // A follower that checkpoints by position, as a projector would: if a
    // smaller position could commit after a larger one, it would never see it.
    let follower_store = store_b.clone();
    let follower = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut after = 0;
        let expected_interactions = WRITERS * REQUESTS * PER_REQUEST;
        let mut interactions = 0;
        while interactions < expected_interactions {
            let page = follower_store
                .read_events(&EventQuery {
                    after,
                    limit: 97,
                    ..Default::default()
                })
                .await
                .expect("read");
            for e in &page.events {
                seen.push(e.position);
                if e.body.event_type() == EventType::InteractionRecorded {
                    interactions += 1;
                }
            }
            match page.events.last() {
                Some(last) => after = last.position,
                None => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
        seen
    });

    for w in writers {
        w.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), follower)
        .await
        .expect("the follower saw every interaction")
        .unwrap();
    let head = store_a.head().await.unwrap();
    let expected: Vec<u64> = (1..=head).collect();
    assert_eq!(
        seen, expected,
        "the follower saw every position once, in order, with no gap"
    );
    // 7 members (2 events each) plus every interaction.
    assert_eq!(head as usize, 7 * 2 + WRITERS * REQUESTS * PER_REQUEST);

    drop((writer_a, writer_b));
    task_a.await.unwrap();
    task_b.await.unwrap();
}

async fn a_retry_is_a_duplicate_and_a_reused_id_conflicts(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "idempotency").await else {
        return;
    };
    let first = store
        .append_batch(vec![vec![interaction("acme", "i1", "ana")]], T0)
        .await
        .unwrap();
    let original = first[0].clone().unwrap()[0].clone();
    assert!(!original.duplicate);

    let retry = store
        .append_batch(vec![vec![interaction("acme", "i1", "ana")]], T0)
        .await
        .unwrap();
    let retried = retry[0].clone().unwrap()[0].clone();
    assert!(retried.duplicate);
    assert_eq!(
        (retried.member_id, retried.position),
        (original.member_id, original.position)
    );

    let mut changed = interaction("acme", "i1", "ana");
    changed.excerpt = "edited".into();
    let conflict = store.append_batch(vec![vec![changed]], T0).await.unwrap();
    let conflict = conflict[0].clone().unwrap_err();
    assert_eq!(
        (conflict.index, conflict.interaction_id.as_str()),
        (0, "i1")
    );

    // The same id in another community is another interaction.
    let other = store
        .append_batch(vec![vec![interaction("globex", "i1", "ana")]], T0)
        .await
        .unwrap();
    assert!(!other[0].clone().unwrap()[0].duplicate);
    assert_eq!(store.head().await.unwrap(), 6);
}

async fn concurrent_first_sightings_make_one_member(backend: Backend) {
    let Some((db, store_a)) = fresh(backend, "identity_race").await else {
        return;
    };
    let store_b = Store::connect(&StoreOptions::new(&db.url).with_master_key(
        rapport_store::MasterKey::from_base64(rapport_testkit::TEST_MASTER_KEY).unwrap(),
    ))
    .await
    .unwrap();
    let (writer_a, _) = Writer::spawn(store_a.clone(), WriterConfig::default(), Feed::new());
    let (writer_b, _) = Writer::spawn(store_b, WriterConfig::default(), Feed::new());

    let tasks: Vec<_> = (0..24)
        .map(|n| {
            let writer = if n % 2 == 0 {
                writer_a.clone()
            } else {
                writer_b.clone()
            };
            // Spellings differ only in case: one person on a forum.
            let handle = if n % 3 == 0 { "NewComer" } else { "newcomer" };
            let item = interaction("acme", &format!("hello-{n}"), handle);
            tokio::spawn(
                async move { writer.append(vec![item]).await.unwrap().unwrap()[0].clone() },
            )
        })
        .collect();
    let members: HashSet<String> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().member_id)
        .collect();
    assert_eq!(members.len(), 1, "one identity, one member: {members:?}");

    let page = store_a
        .read_events(&EventQuery {
            limit: 1000,
            event_types: vec![EventType::MemberRegistered],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
}

async fn recorded_events_read_back_whole_and_filtered(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "read_back").await else {
        return;
    };
    let mut reply = interaction("acme", "i1", "ana");
    reply.target = Some(Target::Member(Identity {
        channel: "forum".into(),
        handle: "bob".into(),
    }));
    let mut review = interaction("acme", "i2", "ana");
    review.channel = "reviews".into(); // the actor stays ana on the forum
    review.kind = InteractionKind::Review;
    review.target = Some(Target::Brand);
    let other_community = interaction("globex", "i1", "zed");
    store
        .append_batch(
            vec![vec![reply.clone(), review.clone()], vec![other_community]],
            T0,
        )
        .await
        .unwrap();

    let all = store
        .read_events(&EventQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.head, 9);
    let kinds: Vec<EventType> = all.events.iter().map(|e| e.body.event_type()).collect();
    use EventType::*;
    assert_eq!(
        kinds,
        [
            MemberRegistered,
            IdentityLinked, // ana
            MemberRegistered,
            IdentityLinked,      // bob, the reply's target
            InteractionRecorded, // the reply
            InteractionRecorded, // the review, by the same ana
            MemberRegistered,
            IdentityLinked,
            InteractionRecorded, // zed in globex
        ]
    );

    let e = &all.events[4];
    assert_eq!(e.recorded_at, T0);
    match &e.body {
        EventBody::InteractionRecorded {
            interaction,
            target_member_id,
            member_id,
        } => {
            assert_eq!(**interaction, reply, "every field reads back as recorded");
            assert_eq!(
                target_member_id.as_deref(),
                Some(all.events[2].body.member_id())
            );
            assert_eq!(member_id, all.events[0].body.member_id());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        (e.stream_id.as_str(), e.stream_version),
        (
            format!("member-{}", all.events[0].body.member_id()).as_str(),
            3
        )
    );

    let reviews = store
        .read_events(&EventQuery {
            limit: 100,
            channels: vec!["reviews".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reviews.events.len(), 1);
    assert_eq!(reviews.events[0].position, 6);

    // Without the personal part: the same facts, the personal fields empty.
    let impersonal = store
        .read_events(&EventQuery {
            limit: 100,
            without_personal: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(impersonal.events.len(), all.events.len());
    for (bare, whole) in impersonal.events.iter().zip(&all.events) {
        assert_eq!(bare.position, whole.position);
        assert_eq!(bare.body.event_type(), whole.body.event_type());
        assert_eq!(bare.body.member_id(), whole.body.member_id());
        if let (
            EventBody::InteractionRecorded {
                interaction: b,
                target_member_id: bt,
                ..
            },
            EventBody::InteractionRecorded {
                interaction: w,
                target_member_id: wt,
                ..
            },
        ) = (&bare.body, &whole.body)
        {
            assert_eq!(
                (b.kind, b.occurred_at, &b.channel, bt),
                (w.kind, w.occurred_at, &w.channel, wt)
            );
            assert!(b.excerpt.is_empty() && b.url.is_empty() && b.actor.handle.is_empty());
            assert!(!w.excerpt.is_empty() && !w.actor.handle.is_empty());
        }
    }

    let globex = store
        .read_events(&EventQuery {
            limit: 100,
            community_id: Some("globex".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let positions: Vec<u64> = globex.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [7, 8, 9]);

    let paged = store
        .read_events(&EventQuery {
            after: 4,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let positions: Vec<u64> = paged.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [5, 6]);
}

async fn a_conflicting_request_writes_nothing(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "conflict_writes_nothing").await else {
        return;
    };
    store
        .append_batch(vec![vec![interaction("acme", "i1", "ana")]], T0)
        .await
        .unwrap();
    let head = store.head().await.unwrap();
    let mut changed = interaction("acme", "i1", "ana");
    changed.kind = InteractionKind::Post;
    let outcomes = store
        .append_batch(
            vec![
                vec![interaction("acme", "i2", "carla"), changed],
                vec![interaction("acme", "i3", "dan")],
            ],
            T0,
        )
        .await
        .unwrap();
    assert!(outcomes[0].is_err());
    assert!(outcomes[1].is_ok());
    // Only dan's three events: carla's registration went with her rejected request.
    assert_eq!(store.head().await.unwrap(), head + 3);
    let retry = store
        .append_batch(vec![vec![interaction("acme", "i2", "carla")]], T0)
        .await
        .unwrap();
    assert!(
        !retry[0].clone().unwrap()[0].duplicate,
        "i2 was never recorded"
    );
}

async fn streams_continue_across_writers_and_restarts(backend: Backend) {
    let Some((db, first)) = fresh(backend, "streams_continue").await else {
        return;
    };
    first
        .append_batch(vec![vec![interaction("acme", "i1", "ana")]], T0)
        .await
        .unwrap();
    // Another writer (a restart, or a replica) knows nothing yet.
    let second = Store::connect(&StoreOptions::new(&db.url).with_master_key(
        rapport_store::MasterKey::from_base64(rapport_testkit::TEST_MASTER_KEY).unwrap(),
    ))
    .await
    .unwrap();
    second
        .append_batch(vec![vec![interaction("acme", "i2", "ana")]], T0)
        .await
        .unwrap();
    // And the first writer must notice the second one's append.
    first
        .append_batch(vec![vec![interaction("acme", "i3", "ana")]], T0)
        .await
        .unwrap();
    let page = first
        .read_events(&EventQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let versions: Vec<u64> = page.events.iter().map(|e| e.stream_version).collect();
    assert_eq!(
        versions,
        [1, 2, 3, 4, 5],
        "one member, one stream, no version reused"
    );
}

async fn commands_append_in_order_and_check_the_member(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "commands").await else {
        return;
    };
    let (writer, task) = Writer::spawn(store.clone(), WriterConfig::default(), Feed::new());
    let first = writer
        .append(vec![interaction("acme", "i1", "ana")])
        .await
        .unwrap()
        .unwrap();
    let ana = first[0].member_id.clone();

    // A role on ana's stream, after her registration, link and interaction.
    let set_role = Command::SetMemberRole {
        community_id: "acme".into(),
        member_id: ana.clone(),
        role: MemberRole::Staff,
    };
    let CommandOutcome::Appended(role_event) = writer.command(set_role).await.unwrap() else {
        panic!("ana is a member of acme");
    };
    assert_eq!(role_event.position, 4);
    assert_eq!(role_event.stream_version, 4);
    assert_eq!(
        *writer.committed().borrow(),
        4,
        "commands wake the followers too"
    );

    // A member of another community, or nobody: nothing written.
    for (community, member) in [("other", ana.as_str()), ("acme", "no-such-member")] {
        let outcome = writer
            .command(Command::SetMemberRole {
                community_id: community.into(),
                member_id: member.into(),
                role: MemberRole::Bot,
            })
            .await
            .unwrap();
        assert_eq!(outcome, CommandOutcome::UnknownMember);
    }

    // The policy goes to the community's stream; batches continue after it
    // and ana's stream continues after her role.
    let policy = Policy {
        half_life_days: 60.0,
        ..Policy::default()
    };
    let outcome = writer
        .command(Command::SetScoringPolicy {
            community_id: "acme".into(),
            policy: policy.clone(),
        })
        .await
        .unwrap();
    let CommandOutcome::Appended(policy_event) = outcome else {
        panic!("a policy needs no member");
    };
    assert_eq!((policy_event.position, policy_event.stream_version), (5, 1));
    let next = writer
        .append(vec![interaction("acme", "i2", "ana")])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next[0].position, 6);

    drop(writer);
    task.await.unwrap();
    let all = store
        .read_events(&EventQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .events;
    assert_eq!(all.len(), 6);
    assert_eq!(
        all[3].body,
        EventBody::MemberRoleSet {
            member_id: ana.clone(),
            role: MemberRole::Staff
        }
    );
    assert_eq!(
        all[4].body,
        EventBody::ScoringPolicySet {
            policy: Box::new(policy)
        }
    );
    assert_eq!(
        (all[5].stream_id.as_str(), all[5].stream_version),
        (all[0].stream_id.as_str(), 5)
    );
}
