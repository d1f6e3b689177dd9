//! Between the wire types (`rapport_proto::v1`) and the domain. Plain field
//! moves: every rule lives in the domain.

use rapport_domain as domain;
use rapport_proto::v1 as pb;

pub fn timestamp(t: domain::Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = t.to_parts();
    prost_types::Timestamp { seconds, nanos }
}

fn identity_in(identity: pb::Identity) -> domain::Identity {
    domain::Identity {
        channel: identity.channel,
        handle: identity.handle,
    }
}

pub fn identity_out(identity: domain::Identity) -> pb::Identity {
    pb::Identity {
        channel: identity.channel,
        handle: identity.handle,
    }
}

/// A request's interaction, unchecked.
/// A time as RFC 3339 text (`2026-01-01T00:00:00Z`).
pub fn rfc3339(t: domain::Timestamp) -> String {
    timestamp(t).to_string()
}

pub fn interaction_input(i: pb::Interaction) -> domain::InteractionInput {
    use pb::target::Target as T;
    domain::InteractionInput {
        community_id: i.community_id,
        interaction_id: i.interaction_id,
        channel: i.channel,
        kind: i.kind,
        source_type: i.source_type,
        actor: i.actor.map(identity_in),
        occurred_at: i.occurred_at.map(|t| (t.seconds, t.nanos)),
        // An empty `target {}` says nothing: no target.
        target: i.target.and_then(|t| t.target).map(|t| match t {
            T::Member(identity) => domain::TargetInput::Member(identity_in(identity)),
            T::ContentId(id) => domain::TargetInput::Content(id),
            T::Brand(_) => domain::TargetInput::Brand,
        }),
        incentivized: i.incentivized,
        sentiment: i.sentiment,
        campaign_id: i.campaign_id,
        url: i.url,
        excerpt: i.excerpt,
        actor_display_name: i.actor_display_name,
        attributes: i.attributes,
    }
}

pub fn interaction_out(i: domain::Interaction) -> pb::Interaction {
    use pb::target::Target as T;
    pb::Interaction {
        community_id: i.community_id,
        interaction_id: i.interaction_id,
        channel: i.channel,
        kind: i.kind.as_i32(),
        source_type: i.source_type,
        actor: Some(identity_out(i.actor)),
        occurred_at: Some(timestamp(i.occurred_at)),
        target: i.target.map(|t| pb::Target {
            target: Some(match t {
                domain::Target::Member(identity) => T::Member(identity_out(identity)),
                domain::Target::Content(id) => T::ContentId(id),
                domain::Target::Brand => T::Brand(pb::target::Brand {}),
            }),
        }),
        incentivized: i.incentivized,
        sentiment: i.sentiment,
        campaign_id: i.campaign_id,
        url: i.url,
        excerpt: i.excerpt,
        actor_display_name: i.actor_display_name,
        attributes: i.attributes.into_iter().collect(),
    }
}

pub fn event_out(e: domain::Event) -> pb::Event {
    use pb::event::Payload;
    let payload = match e.body {
        domain::EventBody::MemberRegistered { member_id } => {
            Payload::MemberRegistered(pb::MemberRegistered { member_id })
        }
        domain::EventBody::IdentityLinked {
            member_id,
            identity,
        } => Payload::IdentityLinked(pb::IdentityLinked {
            member_id,
            identity: Some(identity_out(identity)),
        }),
        domain::EventBody::IdentityUnlinked {
            member_id,
            identity,
        } => Payload::IdentityUnlinked(pb::IdentityUnlinked {
            member_id,
            identity: Some(identity_out(identity)),
        }),
        domain::EventBody::MemberErased { member_id, reason } => {
            Payload::MemberErased(pb::MemberErased { member_id, reason })
        }
        domain::EventBody::MergeSuggestionRejected {
            member_id,
            other_member_id,
        } => Payload::MergeSuggestionRejected(pb::MergeSuggestionRejected {
            member_id,
            other_member_id,
        }),
        domain::EventBody::MembersMerged {
            member_id,
            source_member_id,
            reason,
        } => Payload::MembersMerged(pb::MembersMerged {
            member_id,
            source_member_id,
            reason,
        }),
        domain::EventBody::MemberUnmerged {
            member_id,
            source_member_id,
        } => Payload::MemberUnmerged(pb::MemberUnmerged {
            member_id,
            source_member_id,
        }),
        domain::EventBody::InteractionRecorded {
            member_id,
            interaction,
            target_member_id,
        } => Payload::InteractionRecorded(pb::InteractionRecorded {
            member_id,
            interaction: Some(interaction_out(*interaction)),
            target_member_id: target_member_id.unwrap_or_default(),
        }),
        domain::EventBody::MemberRoleSet { member_id, role } => {
            Payload::MemberRoleSet(pb::MemberRoleSet {
                member_id,
                role: role as i32,
            })
        }
        domain::EventBody::ScoringPolicySet { policy } => {
            Payload::ScoringPolicySet(pb::ScoringPolicySet {
                policy: Some(policy_out(&policy)),
            })
        }
    };
    pb::Event {
        position: e.position,
        community_id: e.community_id,
        stream_id: e.stream_id,
        stream_version: e.stream_version,
        recorded_at: Some(timestamp(e.recorded_at)),
        payload: Some(payload),
    }
}

/// A timeline entry: the row's place and role, the details from its event.
pub fn timeline_entry_out(
    entry: rapport_projections::timeline::TimelineEntry,
) -> pb::TimelineEntry {
    use domain::timeline::Role;
    let role = match entry.role {
        Role::Actor => pb::TimelineRole::Actor,
        Role::Target => pb::TimelineRole::Target,
        Role::Subject | Role::TierChange => pb::TimelineRole::Subject,
    };
    let event = entry.event;
    let mut out = pb::TimelineEntry {
        position: event.position,
        r#type: event.body.event_type() as i32,
        role: role as i32,
        occurred_at: Some(timestamp(entry.occurred_at)),
        recorded_at: Some(timestamp(event.recorded_at)),
        ..pb::TimelineEntry::default()
    };
    match event.body {
        domain::EventBody::MemberRegistered { .. }
        | domain::EventBody::MemberErased { .. }
        | domain::EventBody::MergeSuggestionRejected { .. } => {}
        domain::EventBody::MembersMerged {
            source_member_id, ..
        }
        | domain::EventBody::MemberUnmerged {
            source_member_id, ..
        } => out.merged_member_id = source_member_id,
        domain::EventBody::IdentityLinked { identity, .. }
        | domain::EventBody::IdentityUnlinked { identity, .. } => {
            out.channel = identity.channel.clone();
            out.identity = Some(identity_out(identity));
        }
        domain::EventBody::InteractionRecorded {
            member_id,
            interaction,
            target_member_id,
        } => {
            let i = interaction_out(*interaction);
            out.channel = i.channel;
            out.kind = i.kind;
            out.source_type = i.source_type;
            out.interaction_id = i.interaction_id;
            out.actor_member_id = member_id;
            out.actor = i.actor;
            out.target = i.target;
            out.target_member_id = target_member_id.unwrap_or_default();
            out.excerpt = i.excerpt;
            out.url = i.url;
            out.incentivized = i.incentivized;
            out.sentiment = i.sentiment;
            out.campaign_id = i.campaign_id;
        }
        domain::EventBody::MemberRoleSet { role, .. } => out.member_role = role as i32,
        // In no timeline (see `rapport_domain::timeline`).
        domain::EventBody::ScoringPolicySet { .. } => {}
    }
    out
}

pub fn policy_out(p: &domain::policy::Policy) -> pb::ScoringPolicy {
    let w = &p.component_weights;
    let t = &p.thresholds;
    pb::ScoringPolicy {
        kind_weights: p
            .kind_weights
            .iter()
            .map(|(kind, weight)| pb::KindWeight {
                kind: kind.as_i32(),
                weight: *weight,
            })
            .collect(),
        positive_mention_weight: p.positive_mention_weight,
        incentive_factor: p.incentive_factor,
        half_life_days: p.half_life_days,
        component_weights: Some(pb::ComponentWeights {
            engagement: w.engagement,
            consistency: w.consistency,
            exchange: w.exchange,
            advocacy: w.advocacy,
            breadth: w.breadth,
        }),
        tier_thresholds: Some(pb::TierThresholds {
            participant: t.participant,
            contributor: t.contributor,
            advocate: t.advocate,
            champion: t.champion,
        }),
        demotion_margin: p.demotion_margin,
    }
}

/// A policy from a request: every violation at once, with paths under
/// `prefix` (the shape first, then the domain's rules).
pub fn policy_in(
    p: Option<pb::ScoringPolicy>,
    prefix: &str,
) -> Result<domain::policy::Policy, Vec<domain::FieldViolation>> {
    let violation = |field: String, description: &str| domain::FieldViolation {
        field,
        description: description.to_owned(),
    };
    let Some(p) = p else {
        return Err(vec![violation(prefix.to_owned(), "is required")]);
    };
    let mut out = Vec::new();
    let mut kind_weights = std::collections::BTreeMap::new();
    for (i, kw) in p.kind_weights.iter().enumerate() {
        match domain::InteractionKind::from_i32(kw.kind) {
            None => out.push(violation(
                format!("{prefix}.kind_weights[{i}].kind"),
                "must be a known interaction kind",
            )),
            Some(kind) => {
                if kind_weights.insert(kind, kw.weight).is_some() {
                    out.push(violation(
                        format!("{prefix}.kind_weights[{i}].kind"),
                        "appears twice",
                    ));
                }
            }
        }
    }
    if p.component_weights.is_none() {
        out.push(violation(
            format!("{prefix}.component_weights"),
            "is required",
        ));
    }
    if p.tier_thresholds.is_none() {
        out.push(violation(
            format!("{prefix}.tier_thresholds"),
            "is required",
        ));
    }
    if !out.is_empty() {
        return Err(out);
    }
    let w = p.component_weights.unwrap_or_default();
    let t = p.tier_thresholds.unwrap_or_default();
    let policy = domain::policy::Policy {
        kind_weights,
        positive_mention_weight: p.positive_mention_weight,
        incentive_factor: p.incentive_factor,
        half_life_days: p.half_life_days,
        component_weights: domain::policy::ComponentWeights {
            engagement: w.engagement,
            consistency: w.consistency,
            exchange: w.exchange,
            advocacy: w.advocacy,
            breadth: w.breadth,
        },
        thresholds: domain::policy::Thresholds {
            participant: t.participant,
            contributor: t.contributor,
            advocate: t.advocate,
            champion: t.champion,
        },
        demotion_margin: p.demotion_margin,
    };
    let violations = policy.violations(prefix);
    if violations.is_empty() {
        Ok(policy)
    } else {
        Err(violations)
    }
}

/// A tier change as a timeline entry.
pub fn tier_change_out(change: rapport_domain::score::TierChange) -> pb::TimelineEntry {
    pb::TimelineEntry {
        position: change.position,
        role: pb::TimelineRole::Subject as i32,
        occurred_at: Some(timestamp(change.at)),
        tier_change: Some(pb::TierChange {
            from: change.from.as_i32(),
            to: change.to.as_i32(),
        }),
        ..pb::TimelineEntry::default()
    }
}
