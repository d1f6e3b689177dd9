//! The batch planner: which events a group of append requests produces.
//!
//! The group-commit writer gathers concurrent requests, looks up what the log
//! already knows about their interaction ids and identities ([`Known`]), and
//! asks [`plan`] what to write. The plan is computed here, with no I/O, so the
//! rules below are the same on every backend and tested with plain data:
//!
//! - An unseen identity (actor or member target) registers a member: a
//!   `MemberRegistered` and an `IdentityLinked` event precede the interaction,
//!   in the same batch. An identity seen twice in a batch resolves once.
//! - An interaction id already recorded with the same fingerprint is a
//!   duplicate: the caller gets the original member and position back.
//! - An interaction id recorded with another fingerprint is a conflict, and the
//!   whole request it belongs to is rejected; other requests in the batch are
//!   not affected.
//! - Positions follow `head` with no gap; each member stream's version grows by
//!   one per event.

use std::collections::HashMap;

use crate::event::{Event, EventBody, member_stream_id};
use crate::interaction::{Fingerprint, IdentityKey, Interaction, Target};
use crate::time::Timestamp;

/// An interaction id the log has recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRef {
    pub fingerprint: Fingerprint,
    pub member_id: String,
    pub position: u64,
}

/// A member the log knows, with its stream's current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownMember {
    pub member_id: String,
    pub stream_version: u64,
}

/// What the log already holds about a batch's keys (see [`lookup_keys`]).
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// By (community_id, interaction_id).
    pub interactions: HashMap<(String, String), RecordedRef>,
    pub identities: HashMap<IdentityKey, KnownMember>,
}

/// The keys to look up before planning a batch.
#[derive(Debug, Default, PartialEq)]
pub struct LookupKeys {
    /// (community_id, interaction_id), without repeats.
    pub interactions: Vec<(String, String)>,
    /// Actor and member-target identities, without repeats.
    pub identities: Vec<IdentityKey>,
}

pub fn lookup_keys(requests: &[Vec<Interaction>]) -> LookupKeys {
    let mut keys = LookupKeys::default();
    let mut seen_ids = std::collections::HashSet::new();
    let mut seen_identities = std::collections::HashSet::new();
    for interaction in requests.iter().flatten() {
        let id = (
            interaction.community_id.clone(),
            interaction.interaction_id.clone(),
        );
        if seen_ids.insert(id.clone()) {
            keys.interactions.push(id);
        }
        for identity in identities_of(interaction) {
            let key = identity.key(&interaction.community_id);
            if seen_identities.insert(key.clone()) {
                keys.identities.push(key);
            }
        }
    }
    keys
}

fn identities_of(interaction: &Interaction) -> impl Iterator<Item = &crate::Identity> {
    let target = match &interaction.target {
        Some(Target::Member(identity)) => Some(identity),
        _ => None,
    };
    std::iter::once(&interaction.actor).chain(target)
}

/// What one interaction of a request became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub member_id: String,
    pub position: u64,
    pub duplicate: bool,
}

/// A request rejected because an id was recorded before with another payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Index of the offending interaction in its request.
    pub index: usize,
    pub community_id: String,
    pub interaction_id: String,
}

/// A new idempotency record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInteractionRecord {
    pub community_id: String,
    pub interaction_id: String,
    pub fingerprint: Fingerprint,
    pub member_id: String,
    pub position: u64,
}

/// A member stream's version after the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHead {
    pub community_id: String,
    pub member_id: String,
    pub stream_version: u64,
    /// Registered by this batch (insert) rather than known (update).
    pub is_new: bool,
}

/// What to write for a batch, and what to answer each request.
#[derive(Debug, Default)]
pub struct Plan {
    /// In position order, starting right after the head.
    pub events: Vec<Event>,
    pub new_identities: Vec<(IdentityKey, String)>,
    pub new_interactions: Vec<NewInteractionRecord>,
    pub member_heads: Vec<MemberHead>,
    /// One per request, in request order.
    pub outcomes: Vec<Result<Vec<Recorded>, Conflict>>,
}

/// Plans a batch. `head` is the last committed position; `new_member_id`
/// mints ids for members this batch registers.
pub fn plan(
    requests: &[Vec<Interaction>],
    known: &Known,
    head: u64,
    recorded_at: Timestamp,
    mut new_member_id: impl FnMut() -> String,
) -> Plan {
    let mut state = Planner {
        known,
        recorded_at,
        next_position: head + 1,
        recorded: HashMap::new(),
        identities: HashMap::new(),
        heads: HashMap::new(),
        head_order: Vec::new(),
        plan: Plan::default(),
    };
    for request in requests {
        // SHA-256 over every field: computed once per interaction.
        let fingerprints: Vec<Fingerprint> = request.iter().map(Interaction::fingerprint).collect();
        let outcome = match state.find_conflict(request, &fingerprints) {
            Some(conflict) => Err(conflict),
            None => Ok(request
                .iter()
                .zip(&fingerprints)
                .map(|(interaction, fingerprint)| {
                    state.record(interaction, *fingerprint, &mut new_member_id)
                })
                .collect()),
        };
        state.plan.outcomes.push(outcome);
    }
    let Planner {
        mut plan,
        heads,
        head_order,
        ..
    } = state;
    plan.member_heads = head_order
        .into_iter()
        .map(|member_id| {
            let (community_id, stream_version, is_new) = heads[&member_id].clone();
            MemberHead {
                community_id,
                member_id,
                stream_version,
                is_new,
            }
        })
        .collect();
    debug_assert!(
        plan.events
            .iter()
            .enumerate()
            .all(|(i, e)| e.position == head + 1 + i as u64),
        "positions must follow the head without gaps"
    );
    plan
}

struct Planner<'a> {
    known: &'a Known,
    recorded_at: Timestamp,
    next_position: u64,
    /// Interaction ids recorded earlier in this batch.
    recorded: HashMap<(String, String), RecordedRef>,
    /// Identities resolved in this batch (known or new).
    identities: HashMap<IdentityKey, String>,
    /// Member id → (community, stream version, registered in this batch).
    heads: HashMap<String, (String, u64, bool)>,
    /// Members in first-touched order, so the plan is deterministic.
    head_order: Vec<String>,
    plan: Plan,
}

impl Planner<'_> {
    fn previously_recorded(&self, key: &(String, String)) -> Option<&RecordedRef> {
        self.recorded
            .get(key)
            .or_else(|| self.known.interactions.get(key))
    }

    fn find_conflict(
        &self,
        request: &[Interaction],
        fingerprints: &[Fingerprint],
    ) -> Option<Conflict> {
        let mut in_request: HashMap<(String, String), Fingerprint> = HashMap::new();
        for (index, (interaction, &fingerprint)) in request.iter().zip(fingerprints).enumerate() {
            let key = (
                interaction.community_id.clone(),
                interaction.interaction_id.clone(),
            );
            let earlier = self
                .previously_recorded(&key)
                .map(|r| r.fingerprint)
                .or_else(|| in_request.get(&key).copied());
            match earlier {
                Some(f) if f != fingerprint => {
                    return Some(Conflict {
                        index,
                        community_id: interaction.community_id.clone(),
                        interaction_id: interaction.interaction_id.clone(),
                    });
                }
                Some(_) => {}
                None => {
                    in_request.insert(key, fingerprint);
                }
            }
        }
        None
    }

    fn record(
        &mut self,
        interaction: &Interaction,
        fingerprint: Fingerprint,
        new_member_id: &mut impl FnMut() -> String,
    ) -> Recorded {
        let key = (
            interaction.community_id.clone(),
            interaction.interaction_id.clone(),
        );
        if let Some(original) = self.previously_recorded(&key) {
            return Recorded {
                member_id: original.member_id.clone(),
                position: original.position,
                duplicate: true,
            };
        }
        let community = &interaction.community_id;
        let member_id = self.resolve(community, &interaction.actor, new_member_id);
        let target_member_id = match &interaction.target {
            Some(Target::Member(identity)) => {
                Some(self.resolve(community, identity, new_member_id))
            }
            _ => None,
        };
        let position = self.push(
            community,
            &member_id,
            EventBody::InteractionRecorded {
                member_id: member_id.clone(),
                interaction: Box::new(interaction.clone()),
                target_member_id,
            },
        );
        self.recorded.insert(
            key,
            RecordedRef {
                fingerprint,
                member_id: member_id.clone(),
                position,
            },
        );
        self.plan.new_interactions.push(NewInteractionRecord {
            community_id: community.clone(),
            interaction_id: interaction.interaction_id.clone(),
            fingerprint,
            member_id: member_id.clone(),
            position,
        });
        Recorded {
            member_id,
            position,
            duplicate: false,
        }
    }

    /// The member an identity belongs to, registering one if it is unseen.
    fn resolve(
        &mut self,
        community: &str,
        identity: &crate::Identity,
        new_member_id: &mut impl FnMut() -> String,
    ) -> String {
        let key = identity.key(community);
        if let Some(member_id) = self.identities.get(&key) {
            return member_id.clone();
        }
        let member_id = match self.known.identities.get(&key) {
            Some(known) => {
                if !self.heads.contains_key(&known.member_id) {
                    self.heads.insert(
                        known.member_id.clone(),
                        (community.to_owned(), known.stream_version, false),
                    );
                    self.head_order.push(known.member_id.clone());
                }
                known.member_id.clone()
            }
            None => {
                let member_id = new_member_id();
                self.heads
                    .insert(member_id.clone(), (community.to_owned(), 0, true));
                self.head_order.push(member_id.clone());
                self.push(
                    community,
                    &member_id,
                    EventBody::MemberRegistered {
                        member_id: member_id.clone(),
                    },
                );
                self.push(
                    community,
                    &member_id,
                    EventBody::IdentityLinked {
                        member_id: member_id.clone(),
                        identity: identity.clone(),
                    },
                );
                self.plan
                    .new_identities
                    .push((key.clone(), member_id.clone()));
                member_id
            }
        };
        self.identities.insert(key, member_id.clone());
        member_id
    }

    /// Appends an event to a member's stream at the next position.
    fn push(&mut self, community: &str, member_id: &str, body: EventBody) -> u64 {
        let head = self
            .heads
            .get_mut(member_id)
            .expect("a member is resolved before its events are pushed");
        head.1 += 1;
        let position = self.next_position;
        self.next_position += 1;
        self.plan.events.push(Event {
            position,
            community_id: community.to_owned(),
            stream_id: member_stream_id(member_id),
            stream_version: head.1,
            recorded_at: self.recorded_at,
            body,
        });
        position
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::interaction::{Identity, InteractionKind};
    use std::collections::BTreeMap;

    fn interaction(id: &str, handle: &str) -> Interaction {
        Interaction {
            community_id: "acme".into(),
            interaction_id: id.into(),
            channel: "forum".into(),
            kind: InteractionKind::Post,
            source_type: String::new(),
            actor: Identity {
                channel: "forum".into(),
                handle: handle.into(),
            },
            occurred_at: Timestamp::from_micros(1_700_000_000_000_000),
            target: None,
            incentivized: false,
            sentiment: None,
            campaign_id: String::new(),
            url: String::new(),
            excerpt: String::new(),
            actor_display_name: String::new(),
            attributes: BTreeMap::new(),
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("m{n}")
        }
    }

    const AT: Timestamp = Timestamp::from_micros(1_700_000_001_000_000);

    fn types(plan: &Plan) -> Vec<EventType> {
        plan.events.iter().map(|e| e.body.event_type()).collect()
    }

    #[test]
    fn an_unseen_actor_registers_a_member_before_its_interaction() {
        let plan = plan(
            &[vec![interaction("i1", "ana")]],
            &Known::default(),
            10,
            AT,
            ids(),
        );
        assert_eq!(
            types(&plan),
            [
                EventType::MemberRegistered,
                EventType::IdentityLinked,
                EventType::InteractionRecorded
            ]
        );
        let positions: Vec<u64> = plan.events.iter().map(|e| e.position).collect();
        assert_eq!(positions, [11, 12, 13]);
        let versions: Vec<u64> = plan.events.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, [1, 2, 3]);
        assert_eq!(
            plan.outcomes,
            [Ok(vec![Recorded {
                member_id: "m1".into(),
                position: 13,
                duplicate: false
            }])]
        );
        assert_eq!(plan.member_heads.len(), 1);
        assert!(plan.member_heads[0].is_new);
        assert_eq!(plan.member_heads[0].stream_version, 3);
    }

    #[test]
    fn one_identity_seen_twice_in_a_batch_is_one_member() {
        // Different spellings of the same handle: case-insensitive on a forum.
        let requests = [
            vec![interaction("i1", "ana")],
            vec![interaction("i2", "Ana")],
        ];
        let plan = plan(&requests, &Known::default(), 0, AT, ids());
        let members: Vec<&str> = plan
            .outcomes
            .iter()
            .map(|o| o.as_ref().unwrap()[0].member_id.as_str())
            .collect();
        assert_eq!(members, ["m1", "m1"]);
        assert_eq!(plan.new_identities.len(), 1);
        assert_eq!(plan.events.len(), 4);
    }

    #[test]
    fn a_known_identity_continues_its_stream() {
        let mut known = Known::default();
        known.identities.insert(
            Identity {
                channel: "forum".into(),
                handle: "ana".into(),
            }
            .key("acme"),
            KnownMember {
                member_id: "old".into(),
                stream_version: 7,
            },
        );
        let plan = plan(&[vec![interaction("i1", "ana")]], &known, 100, AT, ids());
        assert_eq!(types(&plan), [EventType::InteractionRecorded]);
        assert_eq!(plan.events[0].stream_version, 8);
        assert_eq!(plan.events[0].stream_id, "member-old");
        assert_eq!(
            plan.member_heads,
            [MemberHead {
                community_id: "acme".into(),
                member_id: "old".into(),
                stream_version: 8,
                is_new: false
            }]
        );
    }

    #[test]
    fn a_member_target_resolves_and_registers_like_an_actor() {
        let mut reply = interaction("i1", "ana");
        reply.target = Some(Target::Member(Identity {
            channel: "forum".into(),
            handle: "bob".into(),
        }));
        let plan = plan(&[vec![reply]], &Known::default(), 0, AT, ids());
        assert_eq!(plan.events.len(), 5);
        match &plan.events[4].body {
            EventBody::InteractionRecorded {
                member_id,
                target_member_id,
                ..
            } => {
                assert_eq!(member_id, "m1");
                assert_eq!(target_member_id.as_deref(), Some("m2"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_retry_is_a_duplicate_with_the_original_result() {
        let original = interaction("i1", "ana");
        let mut known = Known::default();
        known.interactions.insert(
            ("acme".into(), "i1".into()),
            RecordedRef {
                fingerprint: original.fingerprint(),
                member_id: "m9".into(),
                position: 42,
            },
        );
        let plan = plan(&[vec![original]], &known, 100, AT, ids());
        assert!(plan.events.is_empty());
        assert_eq!(
            plan.outcomes,
            [Ok(vec![Recorded {
                member_id: "m9".into(),
                position: 42,
                duplicate: true
            }])]
        );
    }

    #[test]
    fn a_retry_within_the_batch_is_a_duplicate() {
        let requests = [
            vec![interaction("i1", "ana")],
            vec![interaction("i1", "ana")],
        ];
        let plan = plan(&requests, &Known::default(), 0, AT, ids());
        assert_eq!(plan.events.len(), 3);
        let second = &plan.outcomes[1].as_ref().unwrap()[0];
        assert!(second.duplicate);
        assert_eq!(second.position, 3);
    }

    #[test]
    fn a_conflict_rejects_only_its_request_and_leaves_no_gap() {
        let mut changed = interaction("i1", "ana");
        changed.excerpt = "different".into();
        let requests = [
            vec![interaction("i1", "ana")],
            vec![interaction("i2", "carla"), changed],
            vec![interaction("i3", "bob")],
        ];
        let plan = plan(&requests, &Known::default(), 0, AT, ids());
        assert_eq!(
            plan.outcomes[1],
            Err(Conflict {
                index: 1,
                community_id: "acme".into(),
                interaction_id: "i1".into()
            })
        );
        assert!(plan.outcomes[0].is_ok() && plan.outcomes[2].is_ok());
        // carla was never registered: the rejected request wrote nothing.
        assert_eq!(plan.events.len(), 6);
        assert_eq!(plan.new_interactions.len(), 2);
        assert_eq!(plan.events.last().unwrap().position, 6);
    }

    #[test]
    fn lookup_keys_are_unique() {
        let mut reply = interaction("i2", "bob");
        reply.target = Some(Target::Member(Identity {
            channel: "forum".into(),
            handle: "ANA".into(),
        }));
        let keys = lookup_keys(&[vec![
            interaction("i1", "ana"),
            reply,
            interaction("i1", "ana"),
        ]]);
        assert_eq!(keys.interactions.len(), 2);
        assert_eq!(keys.identities.len(), 2);
    }
}
