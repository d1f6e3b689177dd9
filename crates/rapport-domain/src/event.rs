//! The events of the log.

use crate::interaction::{Identity, Interaction};
use crate::time::Timestamp;

/// One entry of the global log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Place in the global log: from 1, strictly increasing, gap-free in commit order.
    pub position: u64,
    pub community_id: String,
    /// The stream the event belongs to; see [`member_stream_id`].
    pub stream_id: String,
    /// The stream's version after this event: 1 for its first event.
    pub stream_version: u64,
    /// When the log committed it.
    pub recorded_at: Timestamp,
    pub body: EventBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    /// A member came into being at the first sighting of one of its identities.
    MemberRegistered { member_id: String },
    /// An identity was attached to a member.
    IdentityLinked {
        member_id: String,
        identity: Identity,
    },
    /// An interaction was recorded for the member its actor resolved to.
    InteractionRecorded {
        member_id: String,
        interaction: Box<Interaction>,
        /// The member the target identity resolved to, for member targets.
        target_member_id: Option<String>,
    },
}

/// Event types, with the wire numbers of `rapport.v1.EventType` (also stored:
/// never renumber).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum EventType {
    MemberRegistered = 1,
    IdentityLinked = 2,
    InteractionRecorded = 3,
}

impl EventType {
    pub fn from_i32(value: i32) -> Option<Self> {
        match value {
            1 => Some(Self::MemberRegistered),
            2 => Some(Self::IdentityLinked),
            3 => Some(Self::InteractionRecorded),
            _ => None,
        }
    }
}

impl EventBody {
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::MemberRegistered { .. } => EventType::MemberRegistered,
            EventBody::IdentityLinked { .. } => EventType::IdentityLinked,
            EventBody::InteractionRecorded { .. } => EventType::InteractionRecorded,
        }
    }

    /// The member the event is about: the owner of any personal data in it,
    /// whose key will encrypt that data.
    pub fn member_id(&self) -> &str {
        match self {
            EventBody::MemberRegistered { member_id }
            | EventBody::IdentityLinked { member_id, .. }
            | EventBody::InteractionRecorded { member_id, .. } => member_id,
        }
    }

    /// The channel of an interaction, for filtering; `None` for other events.
    pub fn channel(&self) -> Option<&str> {
        match self {
            EventBody::InteractionRecorded { interaction, .. } => Some(&interaction.channel),
            _ => None,
        }
    }
}

/// The stream of a member's events.
pub fn member_stream_id(member_id: &str) -> String {
    format!("member-{member_id}")
}
