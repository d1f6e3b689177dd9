//! The events of the log.

use crate::interaction::{Identity, Interaction};
use crate::policy::Policy;
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
    /// An identity was attached to a member: at its first sighting, or by
    /// a community manager (`LinkIdentity`).
    IdentityLinked {
        member_id: String,
        identity: Identity,
    },
    /// An identity was detached from a member (`UnlinkIdentity`): it no
    /// longer resolves to the member; its next sighting registers a new one.
    IdentityUnlinked {
        member_id: String,
        identity: Identity,
    },
    /// The member's personal data was erased (right to erasure): its data
    /// key destroyed, its identities detached. Its events stay, without
    /// their personal parts. `reason` is the operator's, not personal.
    MemberErased { member_id: String, reason: String },
    /// A community manager said two members are not the same person: the
    /// pair is not suggested for a merge again. On `member_id`'s stream.
    MergeSuggestionRejected {
        member_id: String,
        other_member_id: String,
    },
    /// A community manager said two members are one person: from now on
    /// `source_member_id` reads as `member_id` (the target), whose
    /// timelines and scores include the source's whole history. The
    /// source's own events and identities stay its own, so an unmerge can
    /// give them back. On the target's stream.
    MembersMerged {
        member_id: String,
        source_member_id: String,
        /// The operator's, not personal.
        reason: String,
    },
    /// The merge of `source_member_id` into `member_id` was undone: both
    /// read again as had they never been merged. On the target's stream.
    MemberUnmerged {
        member_id: String,
        source_member_id: String,
    },
    /// An interaction was recorded for the member its actor resolved to.
    InteractionRecorded {
        member_id: String,
        interaction: Box<Interaction>,
        /// The member the target identity resolved to, for member targets.
        target_member_id: Option<String>,
    },
    /// A member was marked as a regular member, staff or a bot. Staff and
    /// bots are left out of advocate rankings.
    MemberRoleSet { member_id: String, role: MemberRole },
    /// The community's scoring policy changed; every score is recomputed
    /// under it. On the community's stream ([`community_stream_id`]).
    ScoringPolicySet { policy: Box<Policy> },
}

/// What a member is to the community. The discriminants are the wire numbers
/// of `rapport.v1.MemberRole` and are stored: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(i32)]
pub enum MemberRole {
    #[default]
    Member = 1,
    Staff = 2,
    Bot = 3,
}

impl MemberRole {
    pub fn from_i32(value: i32) -> Option<Self> {
        match value {
            1 => Some(Self::Member),
            2 => Some(Self::Staff),
            3 => Some(Self::Bot),
            _ => None,
        }
    }

    /// Whether advocate rankings include the member.
    pub fn is_ranked(self) -> bool {
        self == MemberRole::Member
    }
}

/// Event types, with the wire numbers of `rapport.v1.EventType` (also stored:
/// never renumber).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum EventType {
    MemberRegistered = 1,
    IdentityLinked = 2,
    InteractionRecorded = 3,
    MemberRoleSet = 4,
    ScoringPolicySet = 5,
    IdentityUnlinked = 6,
    MemberErased = 7,
    MergeSuggestionRejected = 8,
    MembersMerged = 9,
    MemberUnmerged = 10,
}

impl EventType {
    pub fn from_i32(value: i32) -> Option<Self> {
        match value {
            1 => Some(Self::MemberRegistered),
            2 => Some(Self::IdentityLinked),
            3 => Some(Self::InteractionRecorded),
            4 => Some(Self::MemberRoleSet),
            5 => Some(Self::ScoringPolicySet),
            6 => Some(Self::IdentityUnlinked),
            7 => Some(Self::MemberErased),
            8 => Some(Self::MergeSuggestionRejected),
            9 => Some(Self::MembersMerged),
            10 => Some(Self::MemberUnmerged),
            _ => None,
        }
    }
}

impl EventBody {
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::MemberRegistered { .. } => EventType::MemberRegistered,
            EventBody::IdentityLinked { .. } => EventType::IdentityLinked,
            EventBody::IdentityUnlinked { .. } => EventType::IdentityUnlinked,
            EventBody::MemberErased { .. } => EventType::MemberErased,
            EventBody::MergeSuggestionRejected { .. } => EventType::MergeSuggestionRejected,
            EventBody::MembersMerged { .. } => EventType::MembersMerged,
            EventBody::MemberUnmerged { .. } => EventType::MemberUnmerged,
            EventBody::InteractionRecorded { .. } => EventType::InteractionRecorded,
            EventBody::MemberRoleSet { .. } => EventType::MemberRoleSet,
            EventBody::ScoringPolicySet { .. } => EventType::ScoringPolicySet,
        }
    }

    /// The member the event is about: the owner of any personal data in it,
    /// whose key will encrypt that data. Empty for community-wide events
    /// (a scoring policy), which hold no personal data.
    pub fn member_id(&self) -> &str {
        match self {
            EventBody::MemberRegistered { member_id }
            | EventBody::IdentityLinked { member_id, .. }
            | EventBody::IdentityUnlinked { member_id, .. }
            | EventBody::MemberErased { member_id, .. }
            | EventBody::MergeSuggestionRejected { member_id, .. }
            | EventBody::MembersMerged { member_id, .. }
            | EventBody::MemberUnmerged { member_id, .. }
            | EventBody::InteractionRecorded { member_id, .. }
            | EventBody::MemberRoleSet { member_id, .. } => member_id,
            EventBody::ScoringPolicySet { .. } => "",
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

/// A member's identities now, from its identity events in stream order:
/// each link adds one, each unlink removes it (compared as identity
/// resolution compares them).
pub fn current_identities<'a>(bodies: impl IntoIterator<Item = &'a EventBody>) -> Vec<Identity> {
    let same = |a: &Identity, b: &Identity| {
        a.channel == b.channel
            && crate::interaction::normalize_handle(&a.channel, &a.handle)
                == crate::interaction::normalize_handle(&b.channel, &b.handle)
    };
    let mut identities: Vec<Identity> = Vec::new();
    for body in bodies {
        match body {
            EventBody::IdentityLinked { identity, .. }
                if !identities.iter().any(|i| same(i, identity)) =>
            {
                identities.push(identity.clone());
            }
            EventBody::IdentityUnlinked { identity, .. } => {
                identities.retain(|i| !same(i, identity));
            }
            _ => {}
        }
    }
    identities
}

/// The stream of a member's events.
pub fn member_stream_id(member_id: &str) -> String {
    format!("member-{member_id}")
}

/// The stream of a community's own events (its scoring policy).
pub fn community_stream_id(community_id: &str) -> String {
    format!("community-{community_id}")
}

/// A write that is not an interaction: an operator's decision, appended on
/// its own (see [`Command::event`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    SetMemberRole {
        community_id: String,
        member_id: String,
        role: MemberRole,
    },
    SetScoringPolicy {
        community_id: String,
        policy: Policy,
    },
    /// Attach an identity to a member. The store refuses it when another
    /// member owns the identity (that is a merge) and appends nothing when
    /// the member already owns it.
    LinkIdentity {
        community_id: String,
        member_id: String,
        identity: Identity,
    },
    /// Detach an identity the member owns.
    UnlinkIdentity {
        community_id: String,
        member_id: String,
        identity: Identity,
    },
    /// Erase a member's personal data (see [`EventBody::MemberErased`]).
    EraseMember {
        community_id: String,
        member_id: String,
        reason: String,
    },
    /// Record that two members are not to be suggested for a merge.
    RejectMergeSuggestion {
        community_id: String,
        member_id: String,
        other_member_id: String,
    },
    /// Merge `source_member_id` into `target_member_id` (see
    /// [`EventBody::MembersMerged`]). The store refuses chains: a source
    /// already merged, a target merged into another, a source others were
    /// merged into.
    MergeMembers {
        community_id: String,
        source_member_id: String,
        target_member_id: String,
        reason: String,
    },
    /// Undo the merge of `source_member_id` into `target_member_id`; the
    /// store refuses it unless that is the source's merge now.
    UnmergeMember {
        community_id: String,
        source_member_id: String,
        target_member_id: String,
    },
}

impl Command {
    pub fn community_id(&self) -> &str {
        match self {
            Command::SetMemberRole { community_id, .. }
            | Command::SetScoringPolicy { community_id, .. }
            | Command::LinkIdentity { community_id, .. }
            | Command::UnlinkIdentity { community_id, .. }
            | Command::EraseMember { community_id, .. }
            | Command::RejectMergeSuggestion { community_id, .. }
            | Command::MergeMembers { community_id, .. }
            | Command::UnmergeMember { community_id, .. } => community_id,
        }
    }

    /// The identity a link or unlink is about.
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Command::LinkIdentity { identity, .. } | Command::UnlinkIdentity { identity, .. } => {
                Some(identity)
            }
            _ => None,
        }
    }

    /// The member that must exist in the community for the command to apply.
    pub fn member_id(&self) -> Option<&str> {
        match self {
            Command::SetMemberRole { member_id, .. }
            | Command::LinkIdentity { member_id, .. }
            | Command::UnlinkIdentity { member_id, .. }
            | Command::EraseMember { member_id, .. }
            | Command::RejectMergeSuggestion { member_id, .. } => Some(member_id),
            Command::MergeMembers {
                source_member_id, ..
            }
            | Command::UnmergeMember {
                source_member_id, ..
            } => Some(source_member_id),
            Command::SetScoringPolicy { .. } => None,
        }
    }

    /// The stream the command's event goes to.
    pub fn stream_id(&self) -> String {
        match self {
            Command::SetMemberRole { member_id, .. }
            | Command::LinkIdentity { member_id, .. }
            | Command::UnlinkIdentity { member_id, .. }
            | Command::EraseMember { member_id, .. }
            | Command::RejectMergeSuggestion { member_id, .. } => member_stream_id(member_id),
            Command::MergeMembers {
                target_member_id, ..
            }
            | Command::UnmergeMember {
                target_member_id, ..
            } => member_stream_id(target_member_id),
            Command::SetScoringPolicy { community_id, .. } => community_stream_id(community_id),
        }
    }

    /// The event the command appends, given the log's head and the stream's
    /// current version (both read under the log's lock).
    pub fn event(&self, head: u64, stream_version: u64, recorded_at: Timestamp) -> Event {
        let body = match self {
            Command::SetMemberRole {
                member_id, role, ..
            } => EventBody::MemberRoleSet {
                member_id: member_id.clone(),
                role: *role,
            },
            Command::SetScoringPolicy { policy, .. } => EventBody::ScoringPolicySet {
                policy: Box::new(policy.clone()),
            },
            Command::LinkIdentity {
                member_id,
                identity,
                ..
            } => EventBody::IdentityLinked {
                member_id: member_id.clone(),
                identity: identity.clone(),
            },
            Command::UnlinkIdentity {
                member_id,
                identity,
                ..
            } => EventBody::IdentityUnlinked {
                member_id: member_id.clone(),
                identity: identity.clone(),
            },
            Command::EraseMember {
                member_id, reason, ..
            } => EventBody::MemberErased {
                member_id: member_id.clone(),
                reason: reason.clone(),
            },
            Command::RejectMergeSuggestion {
                member_id,
                other_member_id,
                ..
            } => EventBody::MergeSuggestionRejected {
                member_id: member_id.clone(),
                other_member_id: other_member_id.clone(),
            },
            Command::MergeMembers {
                source_member_id,
                target_member_id,
                reason,
                ..
            } => EventBody::MembersMerged {
                member_id: target_member_id.clone(),
                source_member_id: source_member_id.clone(),
                reason: reason.clone(),
            },
            Command::UnmergeMember {
                source_member_id,
                target_member_id,
                ..
            } => EventBody::MemberUnmerged {
                member_id: target_member_id.clone(),
                source_member_id: source_member_id.clone(),
            },
        };
        Event {
            position: head + 1,
            community_id: self.community_id().to_owned(),
            stream_id: self.stream_id(),
            stream_version: stream_version + 1,
            recorded_at,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(channel: &str, handle: &str) -> Identity {
        Identity {
            channel: channel.into(),
            handle: handle.into(),
        }
    }

    #[test]
    fn identities_are_the_links_minus_the_unlinks() {
        let linked = |c, h| EventBody::IdentityLinked {
            member_id: "m".into(),
            identity: identity(c, h),
        };
        let unlinked = |c, h| EventBody::IdentityUnlinked {
            member_id: "m".into(),
            identity: identity(c, h),
        };
        let events = [
            linked("discord", "ana#1234"),
            linked("github", "AnaDev"),
            linked("email", "ana@example.org"),
            unlinked("github", "anadev"),
            EventBody::MemberRoleSet {
                member_id: "m".into(),
                role: MemberRole::Staff,
            },
            linked("slack", "U123"),
            unlinked("slack", "u123"),
        ];
        assert_eq!(
            current_identities(&events),
            [
                identity("discord", "ana#1234"),
                identity("email", "ana@example.org"),
                identity("slack", "U123"),
            ],
            "unlinks match as resolution does: github ignores case, slack does not"
        );
    }
}
