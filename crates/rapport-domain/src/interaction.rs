//! A validated interaction and its parts.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::time::Timestamp;

/// The semantic kind of an interaction, the same on every channel.
///
/// The discriminants are the wire numbers of `rapport.v1.InteractionKind` and
/// are stored in the log: never renumber them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum InteractionKind {
    Reaction = 1,
    Comment = 2,
    Post = 3,
    Reply = 4,
    Answer = 5,
    Share = 6,
    Mention = 7,
    Review = 8,
    EventAttended = 9,
    EventHosted = 10,
    ContentCreated = 11,
    Referral = 12,
    ContestEntry = 13,
    SupportRequest = 14,
}

impl InteractionKind {
    pub const ALL: [InteractionKind; 14] = [
        Self::Reaction,
        Self::Comment,
        Self::Post,
        Self::Reply,
        Self::Answer,
        Self::Share,
        Self::Mention,
        Self::Review,
        Self::EventAttended,
        Self::EventHosted,
        Self::ContentCreated,
        Self::Referral,
        Self::ContestEntry,
        Self::SupportRequest,
    ];

    /// The kind with this wire number; `None` for 0 (unspecified) and unknown numbers.
    pub fn from_i32(value: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as i32 == value)
    }

    pub fn as_i32(self) -> i32 {
        self as i32
    }
}

/// A (channel, handle) pair as the caller wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub channel: String,
    pub handle: String,
}

impl Identity {
    /// The key that identity resolution matches on, within a community.
    pub fn key(&self, community_id: &str) -> IdentityKey {
        IdentityKey {
            community_id: community_id.to_owned(),
            channel: self.channel.clone(),
            handle_key: normalize_handle(&self.channel, &self.handle),
        }
    }
}

/// What identity resolution compares: two identities with the same key are
/// the same person on that channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    pub community_id: String,
    pub channel: String,
    pub handle_key: String,
}

/// Channels whose handles are opaque, case-sensitive ids. Every other
/// channel's handles are matched case-insensitively: `Ana` and `ana` on a
/// forum, on GitHub, on X, on Discord or in an email address are one person.
const CASE_SENSITIVE_CHANNELS: &[&str] = &["slack", "youtube"];

/// The form of a handle that identity resolution compares: trimmed, and
/// lowercased unless the channel's handles are case-sensitive.
pub fn normalize_handle(channel: &str, handle: &str) -> String {
    let trimmed = handle.trim();
    if CASE_SENSITIVE_CHANNELS.contains(&channel) {
        trimmed.to_owned()
    } else {
        trimmed.to_lowercase()
    }
}

/// What an interaction was about.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Member(Identity),
    Content(String),
    Brand,
}

/// A validated interaction: every field is within its limits, the actor's
/// channel is filled in, and the time is plausible. Built by
/// [`crate::validate::validate_interaction`] only.
#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    pub community_id: String,
    pub interaction_id: String,
    pub channel: String,
    pub kind: InteractionKind,
    pub source_type: String,
    pub actor: Identity,
    pub occurred_at: Timestamp,
    pub target: Option<Target>,
    pub incentivized: bool,
    pub sentiment: Option<f64>,
    pub campaign_id: String,
    /// Personal data.
    pub url: String,
    /// Personal data.
    pub excerpt: String,
    /// Personal data.
    pub actor_display_name: String,
    /// Ordered, so that the fingerprint does not depend on map order.
    pub attributes: BTreeMap<String, String>,
}

/// A digest of everything an interaction says, to tell an idempotent retry
/// (same digest) from a conflicting reuse of its id (different digest).
pub type Fingerprint = [u8; 32];

impl Interaction {
    /// SHA-256 over an unambiguous (length-prefixed) encoding of every field.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Sha256::new();
        let mut put = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        put(self.community_id.as_bytes());
        put(self.interaction_id.as_bytes());
        put(self.channel.as_bytes());
        put(&self.kind.as_i32().to_le_bytes());
        put(self.source_type.as_bytes());
        put(self.actor.channel.as_bytes());
        put(self.actor.handle.as_bytes());
        put(&self.occurred_at.as_micros().to_le_bytes());
        match &self.target {
            None => put(b"none"),
            Some(Target::Brand) => put(b"brand"),
            Some(Target::Content(id)) => {
                put(b"content");
                put(id.as_bytes());
            }
            Some(Target::Member(identity)) => {
                put(b"member");
                put(identity.channel.as_bytes());
                put(identity.handle.as_bytes());
            }
        }
        put(&[u8::from(self.incentivized)]);
        match self.sentiment {
            None => put(b"none"),
            Some(s) => put(&s.to_bits().to_le_bytes()),
        }
        put(self.campaign_id.as_bytes());
        put(self.url.as_bytes());
        put(self.excerpt.as_bytes());
        put(self.actor_display_name.as_bytes());
        put(&(self.attributes.len() as u64).to_le_bytes());
        for (k, v) in &self.attributes {
            put(k.as_bytes());
            put(v.as_bytes());
        }
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_wire_numbers() {
        for kind in InteractionKind::ALL {
            assert_eq!(InteractionKind::from_i32(kind.as_i32()), Some(kind));
        }
        assert_eq!(InteractionKind::from_i32(0), None);
        assert_eq!(InteractionKind::from_i32(15), None);
    }

    #[test]
    fn handles_match_case_insensitively_except_on_case_sensitive_channels() {
        assert_eq!(normalize_handle("discord", " Ana#1234 "), "ana#1234");
        assert_eq!(normalize_handle("github", "AnaDev"), "anadev");
        assert_eq!(normalize_handle("youtube", "UCxYz"), "UCxYz");
    }
}
