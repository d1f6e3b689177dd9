//! Rapport's domain: what an interaction is, what makes one valid, which events
//! the log holds, and how a batch of writes becomes events.
//!
//! # Layout
//!
//! - [`interaction`]: the validated [`Interaction`] and its parts (kinds,
//!   targets, identities, handle normalization).
//! - [`validate`]: turning caller input into an [`Interaction`], or into the
//!   list of every field that is wrong.
//! - [`event`]: the events of the log.
//! - [`ingest`]: the batch planner: given what the log already knows, which
//!   events a group of append requests produces and what each caller is told.
//! - [`timeline`]: what each event adds to members' timelines and to the
//!   exchange counts between members; the timeline's page tokens.
//! - [`policy`]: a community's scoring policy, its validation, the tiers.
//! - [`score`]: the advocate score, a pure function of a member's
//!   interactions, the policy and an as-of time (see `docs/scoring.md`).
//! - [`time`]: microsecond timestamps.
//!
//! **Architecture Invariant:** this crate does no I/O and reads no clock: the
//! current time, stored state and id generation are passed in. Everything here
//! is deterministic, so it is tested with plain data.

pub mod event;
pub mod ingest;
pub mod interaction;
pub mod policy;
pub mod score;
pub mod suggest;
pub mod time;
pub mod timeline;
pub mod validate;

pub use event::{
    Command, Event, EventBody, EventType, MemberRole, current_identities, member_stream_id,
};
pub use interaction::{Identity, IdentityKey, Interaction, InteractionKind, Target};
pub use time::Timestamp;
pub use validate::{FieldViolation, InteractionInput, TargetInput};
