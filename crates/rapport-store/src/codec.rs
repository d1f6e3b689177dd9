//! How an event body is stored: two protobuf blobs.
//!
//! `payload` holds the non-personal facts (kinds, times, channels, ids) that
//! aggregates need forever. `personal` holds what identifies a person
//! (handles, display names, excerpts, urls, free-form attributes), so it can be
//! encrypted with the member's own key and crypto-shredded on erasure without
//! reshaping the log. Community, stream and member ids live in the event row.
//!
//! Protobuf (prost derive, tags never reused) keeps the rows compact and lets
//! fields be added without rewriting old events.

use std::collections::BTreeMap;

use prost::Message;
use rapport_domain::policy::{ComponentWeights, Policy, Thresholds};
use rapport_domain::{
    EventBody, EventType, Identity, Interaction, InteractionKind, MemberRole, Target, Timestamp,
};

use crate::StoreError;

#[derive(Clone, PartialEq, Message)]
struct StoredIdentityLinked {
    #[prost(string, tag = "1")]
    channel: String,
}

#[derive(Clone, PartialEq, Message)]
struct StoredInteraction {
    #[prost(string, tag = "1")]
    interaction_id: String,
    #[prost(string, tag = "2")]
    channel: String,
    #[prost(int32, tag = "3")]
    kind: i32,
    #[prost(string, tag = "4")]
    source_type: String,
    #[prost(string, tag = "5")]
    actor_channel: String,
    #[prost(int64, tag = "6")]
    occurred_at_micros: i64,
    /// 0 none, 1 member, 2 content, 3 brand.
    #[prost(int32, tag = "7")]
    target_kind: i32,
    #[prost(string, tag = "8")]
    target_channel: String,
    #[prost(string, tag = "9")]
    target_content_id: String,
    #[prost(string, optional, tag = "10")]
    target_member_id: Option<String>,
    #[prost(bool, tag = "11")]
    incentivized: bool,
    #[prost(double, optional, tag = "12")]
    sentiment: Option<f64>,
    #[prost(string, tag = "13")]
    campaign_id: String,
}

#[derive(Clone, PartialEq, Message)]
struct StoredRoleSet {
    #[prost(int32, tag = "1")]
    role: i32,
}

#[derive(Clone, PartialEq, Message)]
struct StoredRejected {
    #[prost(string, tag = "1")]
    other_member_id: String,
}

/// A merge or an unmerge: the source (the target is the event's member).
#[derive(Clone, PartialEq, Message)]
struct StoredMerge {
    #[prost(string, tag = "1")]
    source_member_id: String,
    #[prost(string, tag = "2")]
    reason: String,
}

#[derive(Clone, PartialEq, Message)]
struct StoredErased {
    #[prost(string, tag = "1")]
    reason: String,
}

/// A scoring policy, every field explicit: a stored policy never depends on
/// the defaults of the code reading it.
#[derive(Clone, PartialEq, Message)]
struct StoredPolicy {
    /// Kind wire number → weight.
    #[prost(btree_map = "int32, double", tag = "1")]
    kind_weights: BTreeMap<i32, f64>,
    #[prost(double, tag = "2")]
    positive_mention_weight: f64,
    #[prost(double, tag = "3")]
    incentive_factor: f64,
    #[prost(double, tag = "4")]
    half_life_days: f64,
    /// Engagement, consistency, exchange, advocacy, breadth.
    #[prost(double, repeated, tag = "5")]
    component_weights: Vec<f64>,
    /// Participant, contributor, advocate, champion.
    #[prost(double, repeated, tag = "6")]
    thresholds: Vec<f64>,
    #[prost(double, tag = "7")]
    demotion_margin: f64,
}

impl StoredPolicy {
    fn from_policy(p: &Policy) -> Self {
        let w = &p.component_weights;
        let t = &p.thresholds;
        StoredPolicy {
            kind_weights: p
                .kind_weights
                .iter()
                .map(|(k, v)| (k.as_i32(), *v))
                .collect(),
            positive_mention_weight: p.positive_mention_weight,
            incentive_factor: p.incentive_factor,
            half_life_days: p.half_life_days,
            component_weights: vec![
                w.engagement,
                w.consistency,
                w.exchange,
                w.advocacy,
                w.breadth,
            ],
            thresholds: vec![t.participant, t.contributor, t.advocate, t.champion],
            demotion_margin: p.demotion_margin,
        }
    }

    fn into_policy(self) -> Option<Policy> {
        let kind_weights = self
            .kind_weights
            .into_iter()
            .map(|(k, v)| InteractionKind::from_i32(k).map(|k| (k, v)))
            .collect::<Option<_>>()?;
        let [engagement, consistency, exchange, advocacy, breadth] =
            <[f64; 5]>::try_from(self.component_weights).ok()?;
        let [participant, contributor, advocate, champion] =
            <[f64; 4]>::try_from(self.thresholds).ok()?;
        Some(Policy {
            kind_weights,
            positive_mention_weight: self.positive_mention_weight,
            incentive_factor: self.incentive_factor,
            half_life_days: self.half_life_days,
            component_weights: ComponentWeights {
                engagement,
                consistency,
                exchange,
                advocacy,
                breadth,
            },
            thresholds: Thresholds {
                participant,
                contributor,
                advocate,
                champion,
            },
            demotion_margin: self.demotion_margin,
        })
    }
}

pub(crate) fn encode_policy(policy: &Policy) -> Vec<u8> {
    StoredPolicy::from_policy(policy).encode_to_vec()
}

pub(crate) fn decode_policy(bytes: &[u8]) -> Result<Policy, StoreError> {
    StoredPolicy::decode(bytes)
        .ok()
        .and_then(StoredPolicy::into_policy)
        .ok_or_else(|| StoreError::Corrupt("stored scoring policy".into()))
}

/// The personal part of any event; unused fields stay empty and cost nothing.
#[derive(Clone, PartialEq, Message)]
struct StoredPersonal {
    #[prost(string, tag = "1")]
    handle: String,
    #[prost(string, tag = "2")]
    display_name: String,
    #[prost(string, tag = "3")]
    excerpt: String,
    #[prost(string, tag = "4")]
    url: String,
    #[prost(string, tag = "5")]
    target_handle: String,
    #[prost(btree_map = "string, string", tag = "6")]
    attributes: BTreeMap<String, String>,
}

const TARGET_NONE: i32 = 0;
const TARGET_MEMBER: i32 = 1;
const TARGET_CONTENT: i32 = 2;
const TARGET_BRAND: i32 = 3;

/// Whether an event of this body has a personal part (to seal).
pub(crate) fn has_personal(body: &EventBody) -> bool {
    matches!(
        body,
        EventBody::IdentityLinked { .. }
            | EventBody::IdentityUnlinked { .. }
            | EventBody::InteractionRecorded { .. }
    )
}

/// The stored form of an event body: (payload, personal part if any).
pub(crate) fn encode(body: &EventBody) -> (Vec<u8>, Option<Vec<u8>>) {
    match body {
        EventBody::MemberRegistered { .. } => (Vec::new(), None),
        EventBody::IdentityLinked { identity, .. }
        | EventBody::IdentityUnlinked { identity, .. } => (
            StoredIdentityLinked {
                channel: identity.channel.clone(),
            }
            .encode_to_vec(),
            Some(
                StoredPersonal {
                    handle: identity.handle.clone(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        ),
        EventBody::InteractionRecorded {
            interaction: i,
            target_member_id,
            ..
        } => {
            let (target_kind, target_channel, target_content_id, target_handle) = match &i.target {
                None => (TARGET_NONE, "", "", ""),
                Some(Target::Member(t)) => {
                    (TARGET_MEMBER, t.channel.as_str(), "", t.handle.as_str())
                }
                Some(Target::Content(id)) => (TARGET_CONTENT, "", id.as_str(), ""),
                Some(Target::Brand) => (TARGET_BRAND, "", "", ""),
            };
            let payload = StoredInteraction {
                interaction_id: i.interaction_id.clone(),
                channel: i.channel.clone(),
                kind: i.kind.as_i32(),
                source_type: i.source_type.clone(),
                actor_channel: i.actor.channel.clone(),
                occurred_at_micros: i.occurred_at.as_micros(),
                target_kind,
                target_channel: target_channel.to_owned(),
                target_content_id: target_content_id.to_owned(),
                target_member_id: target_member_id.clone(),
                incentivized: i.incentivized,
                sentiment: i.sentiment,
                campaign_id: i.campaign_id.clone(),
            };
            let personal = StoredPersonal {
                handle: i.actor.handle.clone(),
                display_name: i.actor_display_name.clone(),
                excerpt: i.excerpt.clone(),
                url: i.url.clone(),
                target_handle: target_handle.to_owned(),
                attributes: i.attributes.clone(),
            };
            (payload.encode_to_vec(), Some(personal.encode_to_vec()))
        }
        EventBody::MemberRoleSet { role, .. } => {
            (StoredRoleSet { role: *role as i32 }.encode_to_vec(), None)
        }
        EventBody::MergeSuggestionRejected {
            other_member_id, ..
        } => (
            StoredRejected {
                other_member_id: other_member_id.clone(),
            }
            .encode_to_vec(),
            None,
        ),
        EventBody::MembersMerged {
            source_member_id,
            reason,
            ..
        } => (
            StoredMerge {
                source_member_id: source_member_id.clone(),
                reason: reason.clone(),
            }
            .encode_to_vec(),
            None,
        ),
        EventBody::MemberUnmerged {
            source_member_id, ..
        } => (
            StoredMerge {
                source_member_id: source_member_id.clone(),
                reason: String::new(),
            }
            .encode_to_vec(),
            None,
        ),
        EventBody::MemberErased { reason, .. } => (
            StoredErased {
                reason: reason.clone(),
            }
            .encode_to_vec(),
            None,
        ),
        EventBody::ScoringPolicySet { policy } => {
            (StoredPolicy::from_policy(policy).encode_to_vec(), None)
        }
    }
}

/// The event body back from its stored form.
pub(crate) fn decode(
    event_type: i32,
    community_id: &str,
    member_id: String,
    payload: &[u8],
    personal: Option<&[u8]>,
) -> Result<EventBody, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("{what} of a {event_type} event"));
    let personal = match personal {
        Some(bytes) => StoredPersonal::decode(bytes).map_err(|_| corrupt("personal part"))?,
        None => StoredPersonal::default(),
    };
    match EventType::from_i32(event_type) {
        Some(EventType::MemberRegistered) => Ok(EventBody::MemberRegistered { member_id }),
        Some(t @ (EventType::IdentityLinked | EventType::IdentityUnlinked)) => {
            let p = StoredIdentityLinked::decode(payload).map_err(|_| corrupt("payload"))?;
            let identity = Identity {
                channel: p.channel,
                handle: personal.handle,
            };
            Ok(if t == EventType::IdentityLinked {
                EventBody::IdentityLinked {
                    member_id,
                    identity,
                }
            } else {
                EventBody::IdentityUnlinked {
                    member_id,
                    identity,
                }
            })
        }
        Some(EventType::InteractionRecorded) => {
            let p = StoredInteraction::decode(payload).map_err(|_| corrupt("payload"))?;
            let kind = InteractionKind::from_i32(p.kind).ok_or_else(|| corrupt("kind"))?;
            let target = match p.target_kind {
                TARGET_NONE => None,
                TARGET_MEMBER => Some(Target::Member(Identity {
                    channel: p.target_channel,
                    handle: personal.target_handle,
                })),
                TARGET_CONTENT => Some(Target::Content(p.target_content_id)),
                TARGET_BRAND => Some(Target::Brand),
                _ => return Err(corrupt("target")),
            };
            Ok(EventBody::InteractionRecorded {
                member_id,
                target_member_id: p.target_member_id,
                interaction: Box::new(Interaction {
                    community_id: community_id.to_owned(),
                    interaction_id: p.interaction_id,
                    channel: p.channel,
                    kind,
                    source_type: p.source_type,
                    actor: Identity {
                        channel: p.actor_channel,
                        handle: personal.handle,
                    },
                    occurred_at: Timestamp::from_micros(p.occurred_at_micros),
                    target,
                    incentivized: p.incentivized,
                    sentiment: p.sentiment,
                    campaign_id: p.campaign_id,
                    url: personal.url,
                    excerpt: personal.excerpt,
                    actor_display_name: personal.display_name,
                    attributes: personal.attributes,
                }),
            })
        }
        Some(EventType::MemberRoleSet) => {
            let p = StoredRoleSet::decode(payload).map_err(|_| corrupt("payload"))?;
            Ok(EventBody::MemberRoleSet {
                member_id,
                role: MemberRole::from_i32(p.role).ok_or_else(|| corrupt("role"))?,
            })
        }
        Some(EventType::MergeSuggestionRejected) => {
            let p = StoredRejected::decode(payload).map_err(|_| corrupt("payload"))?;
            Ok(EventBody::MergeSuggestionRejected {
                member_id,
                other_member_id: p.other_member_id,
            })
        }
        Some(EventType::MembersMerged) => {
            let p = StoredMerge::decode(payload).map_err(|_| corrupt("payload"))?;
            Ok(EventBody::MembersMerged {
                member_id,
                source_member_id: p.source_member_id,
                reason: p.reason,
            })
        }
        Some(EventType::MemberUnmerged) => {
            let p = StoredMerge::decode(payload).map_err(|_| corrupt("payload"))?;
            Ok(EventBody::MemberUnmerged {
                member_id,
                source_member_id: p.source_member_id,
            })
        }
        Some(EventType::MemberErased) => {
            let p = StoredErased::decode(payload).map_err(|_| corrupt("payload"))?;
            Ok(EventBody::MemberErased {
                member_id,
                reason: p.reason,
            })
        }
        Some(EventType::ScoringPolicySet) => {
            let p = StoredPolicy::decode(payload).map_err(|_| corrupt("payload"))?;
            Ok(EventBody::ScoringPolicySet {
                policy: Box::new(p.into_policy().ok_or_else(|| corrupt("policy"))?),
            })
        }
        None => Err(StoreError::Corrupt(format!(
            "unknown event type {event_type}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: EventBody) {
        let (payload, personal) = encode(&body);
        let decoded = decode(
            body.event_type() as i32,
            "acme",
            body.member_id().to_owned(),
            &payload,
            personal.as_deref(),
        )
        .unwrap();
        assert_eq!(decoded, body);
    }

    #[test]
    fn every_event_round_trips() {
        round_trip(EventBody::MemberRegistered {
            member_id: "m1".into(),
        });
        round_trip(EventBody::MergeSuggestionRejected {
            member_id: "m1".into(),
            other_member_id: "m2".into(),
        });
        round_trip(EventBody::MembersMerged {
            member_id: "m1".into(),
            source_member_id: "m2".into(),
            reason: "one person: ticket 7".into(),
        });
        round_trip(EventBody::MemberUnmerged {
            member_id: "m1".into(),
            source_member_id: "m2".into(),
        });
        round_trip(EventBody::MemberErased {
            member_id: "m1".into(),
            reason: "GDPR request 42".into(),
        });
        round_trip(EventBody::IdentityLinked {
            member_id: "m1".into(),
            identity: Identity {
                channel: "discord".into(),
                handle: "ana#1234".into(),
            },
        });
        round_trip(EventBody::IdentityUnlinked {
            member_id: "m1".into(),
            identity: Identity {
                channel: "email".into(),
                handle: "ana@example.org".into(),
            },
        });
        for target in [
            None,
            Some(Target::Brand),
            Some(Target::Content("post-9".into())),
            Some(Target::Member(Identity {
                channel: "forum".into(),
                handle: "bob".into(),
            })),
        ] {
            round_trip(EventBody::InteractionRecorded {
                member_id: "m1".into(),
                target_member_id: matches!(target, Some(Target::Member(_))).then(|| "m2".into()),
                interaction: Box::new(Interaction {
                    community_id: "acme".into(),
                    interaction_id: "msg-1".into(),
                    channel: "forum".into(),
                    kind: InteractionKind::Answer,
                    source_type: "discourse.post".into(),
                    actor: Identity {
                        channel: "forum".into(),
                        handle: "ana".into(),
                    },
                    occurred_at: Timestamp::from_micros(1_700_000_000_123_456),
                    target,
                    incentivized: true,
                    sentiment: Some(-0.25),
                    campaign_id: "spring".into(),
                    url: "https://forum.example/t/1".into(),
                    excerpt: "try restarting it".into(),
                    actor_display_name: "Ana".into(),
                    attributes: [("lang".to_owned(), "en".to_owned())].into(),
                }),
            });
        }
    }

    #[test]
    fn operator_events_round_trip() {
        for role in [MemberRole::Member, MemberRole::Staff, MemberRole::Bot] {
            round_trip(EventBody::MemberRoleSet {
                member_id: "m1".into(),
                role,
            });
        }
        let mut policy = Policy::default();
        policy.kind_weights.remove(&InteractionKind::Share);
        policy.half_life_days = 30.5;
        round_trip(EventBody::ScoringPolicySet {
            policy: Box::new(policy),
        });
    }

    #[test]
    fn personal_strings_stay_out_of_the_payload() {
        let (payload, personal) = encode(&EventBody::IdentityLinked {
            member_id: "m1".into(),
            identity: Identity {
                channel: "discord".into(),
                handle: "secret-handle".into(),
            },
        });
        let needle = b"secret-handle";
        assert!(!payload.windows(needle.len()).any(|w| w == needle));
        assert!(personal.unwrap().windows(needle.len()).any(|w| w == needle));
    }
}
