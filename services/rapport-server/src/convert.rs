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

fn identity_out(identity: domain::Identity) -> pb::Identity {
    pb::Identity {
        channel: identity.channel,
        handle: identity.handle,
    }
}

/// A request's interaction, unchecked.
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
        domain::EventBody::InteractionRecorded {
            member_id,
            interaction,
            target_member_id,
        } => Payload::InteractionRecorded(pb::InteractionRecorded {
            member_id,
            interaction: Some(interaction_out(*interaction)),
            target_member_id: target_member_id.unwrap_or_default(),
        }),
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
        Role::Subject => pb::TimelineRole::Subject,
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
        domain::EventBody::MemberRegistered { .. } => {}
        domain::EventBody::IdentityLinked { identity, .. } => {
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
    }
    out
}
