//! Property tests of validation and the batch planner.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use rapport_domain::ingest::{Known, plan};
use rapport_domain::validate::{InteractionInput, validate_interaction};
use rapport_domain::{EventBody, Identity, Interaction, InteractionKind, Timestamp};

const NOW: Timestamp = Timestamp::from_micros(1_750_000_000_000_000);

prop_compose! {
    fn any_input()(
        community_id in ".{0,70}",
        interaction_id in ".{0,10}",
        channel in "[a-zA-Z _-]{0,40}",
        kind in -2i32..20,
        handle in proptest::option::of(".{0,20}"),
        seconds in proptest::option::of(any::<i64>()),
        nanos in any::<i32>(),
        sentiment in proptest::option::of(any::<f64>()),
        excerpt in ".{0,50}",
    ) -> InteractionInput {
        InteractionInput {
            community_id,
            interaction_id,
            channel,
            kind,
            actor: handle.map(|handle| Identity { channel: String::new(), handle }),
            occurred_at: seconds.map(|s| (s, nanos)),
            sentiment,
            excerpt,
            ..Default::default()
        }
    }
}

proptest! {
    /// Any input gets an answer, never a panic; violations name fields under the prefix.
    #[test]
    fn validation_is_total(input in any_input()) {
        match validate_interaction(&input, "interaction.", NOW) {
            Ok(valid) => {
                prop_assert!(InteractionKind::from_i32(input.kind).is_some());
                prop_assert!(!valid.actor.channel.is_empty());
            }
            Err(violations) => {
                prop_assert!(!violations.is_empty());
                for v in violations {
                    prop_assert!(v.field.starts_with("interaction."), "{}", v.field);
                    prop_assert!(!v.description.is_empty());
                }
            }
        }
    }
}

fn interaction(id: u8, handle: u8, excerpt: u8) -> Interaction {
    Interaction {
        community_id: "acme".into(),
        interaction_id: format!("i{id}"),
        channel: "forum".into(),
        kind: InteractionKind::Comment,
        source_type: String::new(),
        actor: Identity {
            channel: "forum".into(),
            handle: format!("user{handle}"),
        },
        occurred_at: Timestamp::from_micros(1_700_000_000_000_000),
        target: None,
        incentivized: false,
        sentiment: None,
        campaign_id: String::new(),
        url: String::new(),
        excerpt: format!("text {excerpt}"),
        attributes: BTreeMap::new(),
        actor_display_name: String::new(),
    }
}

proptest! {
    /// Whatever mix of new ids, retries and conflicts a batch holds: positions
    /// follow the head without gaps, each id is recorded once, a duplicate
    /// points at the original, and one identity is one member.
    #[test]
    fn plans_are_gap_free_and_idempotent(
        head in 0u64..1_000,
        // Small id, handle and payload spaces force retries and conflicts.
        requests in prop::collection::vec(prop::collection::vec((0u8..6, 0u8..4, 0u8..2), 1..4), 1..8),
    ) {
        let requests: Vec<Vec<Interaction>> = requests
            .iter()
            .map(|r| r.iter().map(|&(id, handle, text)| interaction(id, handle, text)).collect())
            .collect();
        let mut next = 0;
        let plan = plan(&requests, &Known::default(), head, NOW, || { next += 1; format!("m{next}") });

        for (i, event) in plan.events.iter().enumerate() {
            prop_assert_eq!(event.position, head + 1 + i as u64);
        }
        prop_assert_eq!(plan.outcomes.len(), requests.len());

        let mut recorded_at: HashMap<String, (u64, String)> = HashMap::new();
        for event in &plan.events {
            if let EventBody::InteractionRecorded { interaction, member_id, .. } = &event.body {
                let previous = recorded_at.insert(
                    interaction.interaction_id.clone(),
                    (event.position, member_id.clone()),
                );
                prop_assert!(previous.is_none(), "{} recorded twice", interaction.interaction_id);
            }
        }
        let mut member_of_handle: HashMap<String, String> = HashMap::new();
        for (request, outcome) in requests.iter().zip(&plan.outcomes) {
            let Ok(results) = outcome else { continue };
            for (interaction, result) in request.iter().zip(results) {
                let (position, member) = &recorded_at[&interaction.interaction_id];
                prop_assert_eq!(result.position, *position);
                prop_assert_eq!(&result.member_id, member);
                let owner = member_of_handle
                    .entry(interaction.actor.handle.clone())
                    .or_insert_with(|| member.clone());
                prop_assert_eq!(owner, member);
            }
        }
    }
}
