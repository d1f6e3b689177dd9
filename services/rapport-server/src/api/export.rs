//! `MemberService.ExportMember`: everything Rapport holds about a member
//! (a subject access request) as one JSON document, handed over as a
//! `google.protobuf.Struct` so grpcurl shows it as JSON.
//!
//! Only the member's own streams (its own, and those of the members merged
//! into it: one person): other members' interactions aimed at it carry
//! their authors' personal data, which is not the requester's.

use std::collections::BTreeMap;

use rapport_domain::{Event, EventBody, Identity, Target, Timestamp};
use serde_json::{Value, json};

use crate::convert::rfc3339;

/// Names the document's shape, for whoever reads it later.
pub const FORMAT: &str = "rapport.member-export.v1";

/// One timeline row of the read model.
pub struct TimelineRow {
    pub occurred_at: i64,
    pub position: i64,
    pub role: i16,
    pub event_type: i16,
    pub channel: Option<String>,
    pub kind: Option<i16>,
    pub counterpart: Option<String>,
}

/// The document: the member, its events, its timeline rows, its score.
pub fn document(
    member: Value,
    events: &[Event],
    timeline: &[TimelineRow],
    score: Value,
    exported_at: Timestamp,
) -> Value {
    json!({
        "format": FORMAT,
        "exported_at": rfc3339(exported_at),
        "member": member,
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "timeline": timeline.iter().map(|r| json!({
            "position": r.position,
            "occurred_at": rfc3339(Timestamp::from_micros(r.occurred_at)),
            "role": match r.role { 1 => "actor", 2 => "target", _ => "subject" },
            "event_type": r.event_type,
            "channel": r.channel,
            "kind": r.kind,
            "other_member_id": r.counterpart,
        })).collect::<Vec<_>>(),
        "score": score,
    })
}

fn identity_json(identity: &Identity) -> Value {
    json!({ "channel": identity.channel, "handle": identity.handle })
}

/// An event with its personal data, as plain JSON.
fn event_json(event: &Event) -> Value {
    let (kind, body) = match &event.body {
        EventBody::MemberRegistered { .. } => ("member_registered", json!({})),
        EventBody::IdentityLinked { identity, .. } => (
            "identity_linked",
            json!({ "identity": identity_json(identity) }),
        ),
        EventBody::IdentityUnlinked { identity, .. } => (
            "identity_unlinked",
            json!({ "identity": identity_json(identity) }),
        ),
        EventBody::InteractionRecorded {
            interaction: i,
            target_member_id,
            ..
        } => {
            let target = match &i.target {
                None => Value::Null,
                Some(Target::Member(t)) => {
                    json!({ "member": identity_json(t), "member_id": target_member_id })
                }
                Some(Target::Content(id)) => json!({ "content_id": id }),
                Some(Target::Brand) => json!({ "brand": true }),
            };
            let attributes: BTreeMap<&str, &str> = i
                .attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            (
                "interaction_recorded",
                json!({
                    "interaction_id": i.interaction_id,
                    "channel": i.channel,
                    "kind": format!("{:?}", i.kind),
                    "source_type": i.source_type,
                    "actor": identity_json(&i.actor),
                    "actor_display_name": i.actor_display_name,
                    "occurred_at": rfc3339(i.occurred_at),
                    "target": target,
                    "incentivized": i.incentivized,
                    "sentiment": i.sentiment,
                    "campaign_id": i.campaign_id,
                    "url": i.url,
                    "excerpt": i.excerpt,
                    "attributes": attributes,
                }),
            )
        }
        EventBody::MemberRoleSet { role, .. } => {
            ("member_role_set", json!({ "role": format!("{role:?}") }))
        }
        EventBody::MemberErased { reason, .. } => ("member_erased", json!({ "reason": reason })),
        EventBody::MergeSuggestionRejected {
            other_member_id, ..
        } => (
            "merge_suggestion_rejected",
            json!({ "other_member_id": other_member_id }),
        ),
        EventBody::MembersMerged {
            source_member_id,
            reason,
            ..
        } => (
            "members_merged",
            json!({ "source_member_id": source_member_id, "reason": reason }),
        ),
        EventBody::MemberUnmerged {
            source_member_id, ..
        } => (
            "member_unmerged",
            json!({ "source_member_id": source_member_id }),
        ),
        EventBody::ScoringPolicySet { .. } => ("scoring_policy_set", json!({})),
    };
    json!({
        "position": event.position,
        "member_id": event.body.member_id(),
        "stream_version": event.stream_version,
        "recorded_at": rfc3339(event.recorded_at),
        "type": kind,
        kind: body,
    })
}

/// A JSON value as a protobuf `Struct` value.
pub fn to_protobuf(value: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        // Positions and counts fit a double exactly below 2^53.
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_protobuf).collect(),
        }),
        Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map.into_iter().map(|(k, v)| (k, to_protobuf(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_becomes_the_same_struct() {
        let value = to_protobuf(json!({"a": [1, "b", null, true], "c": {"d": 2.5}}));
        let Some(prost_types::value::Kind::StructValue(s)) = value.kind else {
            panic!("an object is a struct");
        };
        let Some(prost_types::value::Kind::ListValue(list)) = &s.fields["a"].kind else {
            panic!("an array is a list");
        };
        assert_eq!(list.values.len(), 4);
        assert_eq!(
            s.fields["c"].kind,
            Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                fields: [(
                    "d".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::NumberValue(2.5))
                    }
                )]
                .into()
            }))
        );
    }
}
