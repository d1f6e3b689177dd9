//! Timelines: what the log's events mean for each member's history.
//!
//! - [`timeline_rows`]: the timeline rows one event adds. An interaction is
//!   in its actor's timeline and, when it targets another member, in that
//!   member's timeline too; lifecycle events are in their member's timeline.
//! - [`connection_deltas`]: how a batch's rows change the exchange counts
//!   between pairs of members ("connections").
//! - [`PageToken`]: the opaque cursor of a timeline page.
//!
//! Rows keep no personal data: a read fetches the event itself from the log
//! by position, so erasing a member's personal data in the log (by
//! crypto-shredding its key) erases it from timelines too.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::event::{Event, EventBody, EventType};
use crate::interaction::InteractionKind;
use crate::time::Timestamp;

/// What the member was in an entry. The numbers are stored: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i16)]
pub enum Role {
    /// The member did it.
    Actor = 1,
    /// Another member's interaction was aimed at this member.
    Target = 2,
    /// Something happened to the member's record (registered, identity linked).
    Subject = 3,
    /// The member's advocate tier changed. Not a row of the timeline tables:
    /// the scores projection keeps tier changes; a timeline page merges them
    /// in, and its cursor needs this role to order them.
    TierChange = 4,
}

impl Role {
    pub fn from_i16(value: i16) -> Option<Self> {
        match value {
            1 => Some(Role::Actor),
            2 => Some(Role::Target),
            3 => Some(Role::Subject),
            4 => Some(Role::TierChange),
            _ => None,
        }
    }
}

/// One entry of a member's timeline, as the read model keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TimelineRow {
    pub community_id: String,
    pub member_id: String,
    /// When it happened: the interaction's `occurred_at`, or for lifecycle
    /// entries the time the log recorded them.
    pub occurred_at: Timestamp,
    pub position: u64,
    pub role: Role,
    pub event_type: EventType,
    /// The interaction's channel, or the linked identity's.
    pub channel: Option<String>,
    pub kind: Option<InteractionKind>,
    /// The other member of an exchange: the target for the actor's entry,
    /// the actor for the target's entry.
    pub counterpart: Option<String>,
}

impl TimelineRow {
    /// The read model's key, in its order: a member's entries together,
    /// oldest first. Strings compare by their bytes, as SQLite's and
    /// PostgreSQL's "C" collation do.
    pub fn key(&self) -> (&str, &str, Timestamp, u64, Role) {
        (
            &self.community_id,
            &self.member_id,
            self.occurred_at,
            self.position,
            self.role,
        )
    }
}

/// The timeline rows `event` adds.
pub fn timeline_rows(event: &Event) -> Vec<TimelineRow> {
    let row = |member_id: &str, role, occurred_at, channel: Option<&str>, kind, counterpart| {
        TimelineRow {
            community_id: event.community_id.clone(),
            member_id: member_id.to_owned(),
            occurred_at,
            position: event.position,
            role,
            event_type: event.body.event_type(),
            channel: channel.map(str::to_owned),
            kind,
            counterpart,
        }
    };
    match &event.body {
        EventBody::MemberRegistered { member_id } => {
            vec![row(
                member_id,
                Role::Subject,
                event.recorded_at,
                None,
                None,
                None,
            )]
        }
        EventBody::IdentityLinked {
            member_id,
            identity,
        }
        | EventBody::IdentityUnlinked {
            member_id,
            identity,
        } => vec![row(
            member_id,
            Role::Subject,
            event.recorded_at,
            Some(&identity.channel),
            None,
            None,
        )],
        EventBody::InteractionRecorded {
            member_id,
            interaction,
            target_member_id,
        } => {
            // Interacting with oneself is not an exchange.
            let other = target_member_id.as_deref().filter(|t| *t != member_id);
            let mut rows = vec![row(
                member_id,
                Role::Actor,
                interaction.occurred_at,
                Some(&interaction.channel),
                Some(interaction.kind),
                other.map(str::to_owned),
            )];
            if let Some(target) = other {
                rows.push(row(
                    target,
                    Role::Target,
                    interaction.occurred_at,
                    Some(&interaction.channel),
                    Some(interaction.kind),
                    Some(member_id.clone()),
                ));
            }
            rows
        }
        EventBody::MemberRoleSet { member_id, .. }
        | EventBody::MemberErased { member_id, .. }
        | EventBody::MergeSuggestionRejected { member_id, .. }
        // In the target's timeline: the source's history reads as the
        // target's while merged, and as its own again after.
        | EventBody::MembersMerged { member_id, .. }
        | EventBody::MemberUnmerged { member_id, .. } => {
            vec![row(
                member_id,
                Role::Subject,
                event.recorded_at,
                None,
                None,
                None,
            )]
        }
        // Community-wide: in no member's timeline.
        EventBody::ScoringPolicySet { .. } => Vec::new(),
    }
}

/// The change a batch makes to one member's connection with another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionDelta {
    pub community_id: String,
    pub member_id: String,
    pub other_member_id: String,
    /// Interactions of `member_id` aimed at `other_member_id`.
    pub sent: u64,
    /// Interactions of `other_member_id` aimed at `member_id`.
    pub received: u64,
    pub first_at: Timestamp,
    pub last_at: Timestamp,
}

impl ConnectionDelta {
    /// The exchange one row records, if it is one: the actor's row sends,
    /// the target's row receives.
    pub fn of_row(row: &TimelineRow) -> Option<ConnectionDelta> {
        let other = row.counterpart.as_ref()?;
        let sent = match row.role {
            Role::Actor => true,
            Role::Target => false,
            Role::Subject | Role::TierChange => return None,
        };
        Some(ConnectionDelta {
            community_id: row.community_id.clone(),
            member_id: row.member_id.clone(),
            other_member_id: other.clone(),
            sent: u64::from(sent),
            received: u64::from(!sent),
            first_at: row.occurred_at,
            last_at: row.occurred_at,
        })
    }

    /// Adds `other`'s counts and widens the time range: sums, minimum and
    /// maximum, so the result does not depend on how events were batched.
    pub fn absorb(&mut self, other: &ConnectionDelta) {
        self.sent += other.sent;
        self.received += other.received;
        self.first_at = self.first_at.min(other.first_at);
        self.last_at = self.last_at.max(other.last_at);
    }
}

/// How `rows` change connections: one delta per (member, other member),
/// both directions of every exchange (each direction is a row of its own),
/// sorted by key.
pub fn connection_deltas<'r>(
    rows: impl IntoIterator<Item = &'r TimelineRow>,
) -> Vec<ConnectionDelta> {
    let mut deltas: BTreeMap<(String, String, String), ConnectionDelta> = BTreeMap::new();
    for delta in rows.into_iter().filter_map(ConnectionDelta::of_row) {
        let key = (
            delta.community_id.clone(),
            delta.member_id.clone(),
            delta.other_member_id.clone(),
        );
        deltas
            .entry(key)
            .and_modify(|d| d.absorb(&delta))
            .or_insert(delta);
    }
    deltas.into_values().collect()
}

/// Where a page of a timeline starts: just after this entry, going back in
/// time. Entries are ordered by (`occurred_at`, `position`, `role`), newest
/// first.
// Ord compares the fields in that order: the timeline's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub occurred_at: Timestamp,
    pub position: u64,
    pub role: Role,
}

/// An opaque page token: a cursor bound to the request it continues.
///
/// The token carries a digest of the request's parameters (community,
/// members, filters), so a token used with other parameters is refused, and
/// a checksum, so a damaged or edited token is refused instead of silently
/// starting elsewhere. It grants nothing: whoever holds it could make the
/// same request without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    pub cursor: Cursor,
}

/// Why a page token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    #[error("page token is malformed or was altered")]
    Malformed,
    #[error("page token belongs to a request with other parameters")]
    OtherRequest,
}

const TOKEN_VERSION: u8 = 1;
const TOKEN_LEN: usize = 1 + 8 + 8 + 2 + 8 + 8;

impl PageToken {
    /// The token for the page after `cursor`, bound to `request`: any bytes
    /// that identify the request's parameters (see [`request_digest`]).
    pub fn encode(&self, request: &[u8; 8]) -> String {
        let mut bytes = Vec::with_capacity(TOKEN_LEN);
        bytes.push(TOKEN_VERSION);
        bytes.extend_from_slice(&self.cursor.occurred_at.as_micros().to_be_bytes());
        bytes.extend_from_slice(&self.cursor.position.to_be_bytes());
        bytes.extend_from_slice(&(self.cursor.role as i16).to_be_bytes());
        bytes.extend_from_slice(request);
        let check = checksum(&bytes);
        bytes.extend_from_slice(&check);
        hex(&bytes)
    }

    /// Reads a token made by [`PageToken::encode`] for the same request.
    pub fn decode(token: &str, request: &[u8; 8]) -> Result<PageToken, PageTokenError> {
        let bytes = unhex(token).ok_or(PageTokenError::Malformed)?;
        if bytes.len() != TOKEN_LEN || bytes[0] != TOKEN_VERSION {
            return Err(PageTokenError::Malformed);
        }
        let (body, check) = bytes.split_at(TOKEN_LEN - 8);
        if checksum(body) != check {
            return Err(PageTokenError::Malformed);
        }
        if &body[19..27] != request {
            return Err(PageTokenError::OtherRequest);
        }
        let occurred_at = i64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
        let position = u64::from_be_bytes(body[9..17].try_into().expect("8 bytes"));
        let role = i16::from_be_bytes(body[17..19].try_into().expect("2 bytes"));
        let role = Role::from_i16(role).ok_or(PageTokenError::Malformed)?;
        Ok(PageToken {
            cursor: Cursor {
                occurred_at: Timestamp::from_micros(occurred_at),
                position,
                role,
            },
        })
    }
}

/// A digest of a request's parameters, to bind page tokens to it. Each part
/// is length-prefixed so that ("ab", "c") and ("a", "bc") differ.
pub fn request_digest<'a>(parts: impl IntoIterator<Item = &'a str>) -> [u8; 8] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..8].try_into().expect("8 bytes")
}

pub(crate) fn checksum(bytes: &[u8]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    hasher.update(b"rapport page token");
    hasher.update(bytes);
    hasher.finalize()[..8].try_into().expect("8 bytes")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interaction::{Identity, Interaction, Target};
    use std::collections::BTreeMap as Map;

    fn interaction(actor: &str, target: Option<&str>, at: i64) -> Event {
        Event {
            position: at as u64,
            community_id: "acme".into(),
            stream_id: format!("member-{actor}"),
            stream_version: 1,
            recorded_at: Timestamp::from_micros(1_000_000),
            body: EventBody::InteractionRecorded {
                member_id: actor.into(),
                interaction: Box::new(Interaction {
                    community_id: "acme".into(),
                    interaction_id: format!("i{at}"),
                    channel: "forum".into(),
                    kind: InteractionKind::Reply,
                    source_type: String::new(),
                    actor: Identity {
                        channel: "forum".into(),
                        handle: actor.into(),
                    },
                    occurred_at: Timestamp::from_micros(at),
                    target: target.map(|t| {
                        Target::Member(Identity {
                            channel: "forum".into(),
                            handle: t.into(),
                        })
                    }),
                    incentivized: false,
                    sentiment: None,
                    campaign_id: String::new(),
                    url: String::new(),
                    excerpt: String::new(),
                    actor_display_name: String::new(),
                    attributes: Map::new(),
                }),
                target_member_id: target.map(str::to_owned),
            },
        }
    }

    #[test]
    fn an_exchange_is_in_both_timelines() {
        let rows = timeline_rows(&interaction("ana", Some("bo"), 5));
        let who: Vec<_> = rows
            .iter()
            .map(|r| (r.member_id.as_str(), r.role, r.counterpart.as_deref()))
            .collect();
        assert_eq!(
            who,
            [
                ("ana", Role::Actor, Some("bo")),
                ("bo", Role::Target, Some("ana"))
            ]
        );
    }

    #[test]
    fn talking_to_oneself_is_not_an_exchange() {
        let event = interaction("ana", Some("ana"), 5);
        assert_eq!(timeline_rows(&event).len(), 1);
        assert_eq!(timeline_rows(&event)[0].counterpart, None);
        assert!(connection_deltas(&timeline_rows(&event)).is_empty());
    }

    #[test]
    fn connection_deltas_count_both_ways_whatever_the_batching() {
        let events = [
            interaction("ana", Some("bo"), 5),
            interaction("bo", Some("ana"), 3),
            interaction("ana", Some("bo"), 9),
            interaction("ana", None, 11),
        ];
        let deltas = |events: &[Event]| {
            connection_deltas(&events.iter().flat_map(timeline_rows).collect::<Vec<_>>())
        };
        let all = deltas(&events);
        let ana = all.iter().find(|d| d.member_id == "ana").unwrap();
        assert_eq!((ana.sent, ana.received), (2, 1));
        assert_eq!((ana.first_at.as_micros(), ana.last_at.as_micros()), (3, 9));
        let bo = all.iter().find(|d| d.member_id == "bo").unwrap();
        assert_eq!((bo.sent, bo.received), (1, 2));

        // Split in two batches and absorbed: the same result.
        let mut split = deltas(&events[..1]);
        for d in deltas(&events[1..]) {
            match split.iter_mut().find(|s| s.member_id == d.member_id) {
                Some(s) => s.absorb(&d),
                None => split.push(d),
            }
        }
        split.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        assert_eq!(split, all);
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_tampering_and_other_requests() {
        let request = request_digest(["timeline", "acme", "m1"]);
        let token = PageToken {
            cursor: Cursor {
                occurred_at: Timestamp::from_micros(-42),
                position: 7,
                role: Role::Target,
            },
        };
        let text = token.encode(&request);
        assert_eq!(PageToken::decode(&text, &request), Ok(token));

        let other = request_digest(["timeline", "acme", "m2"]);
        assert_eq!(
            PageToken::decode(&text, &other),
            Err(PageTokenError::OtherRequest)
        );
        for i in 0..text.len() {
            let mut tampered = text.clone().into_bytes();
            tampered[i] = if tampered[i] == b'0' { b'1' } else { b'0' };
            let tampered = String::from_utf8(tampered).unwrap();
            assert_eq!(
                PageToken::decode(&tampered, &request),
                Err(PageTokenError::Malformed),
                "flipping character {i}"
            );
        }
        assert_eq!(
            PageToken::decode("not a token", &request),
            Err(PageTokenError::Malformed)
        );
        assert_ne!(
            request_digest(["ab", "c"]),
            request_digest(["a", "bc"]),
            "parts are delimited"
        );
    }
}
