//! What every service does with a request before its real work: collect
//! every field violation, name a member by id or by identity, resolve it in
//! its community.

use rapport_domain::validate::{is_channel_slug, is_community_id};
use rapport_domain::{FieldViolation, Identity, Timestamp};
use rapport_proto::v1 as pb;

use rapport_store::{CommandOutcome, MemberGroup, MemberRef};

use super::Ready;
use super::timeline::MAX_PAGE_SIZE;
use crate::error::ApiError;

/// The channel of email addresses as identities.
pub(super) const EMAIL_CHANNEL: &str = "email";

/// The member's id, or NOT_FOUND unless it is a member of `community_id`:
/// a member of another community is not found either, so nothing leaks
/// across communities.
pub(super) async fn resolve(
    ready: &Ready,
    community_id: &str,
    member: Option<MemberRef>,
    field: &str,
) -> Result<String, ApiError> {
    let member = member.expect("validated");
    let found = match &member {
        MemberRef::Id(id) => ready
            .store
            .member_exists(community_id, id)
            .await?
            .then(|| id.clone()),
        MemberRef::Identity(identity) => ready.store.find_member(community_id, identity).await?,
    };
    found.ok_or_else(|| not_found(&member, community_id, field))
}

/// The member a read names and the members that read as it (see
/// `Store::member_group`): a member merged into another answers as that
/// one, and the response says so. One read, whether the request names the
/// member by id or by identity.
pub(super) async fn resolve_group(
    ready: &Ready,
    community_id: &str,
    member: Option<MemberRef>,
    field: &str,
) -> Result<MemberGroup, ApiError> {
    let member = member.expect("validated");
    ready
        .store
        .member_group(community_id, &member)
        .await?
        .ok_or_else(|| not_found(&member, community_id, field))
}

fn not_found(member: &MemberRef, community_id: &str, field: &str) -> ApiError {
    let what = match member {
        MemberRef::Id(id) => format!("{field} {id:?}"),
        MemberRef::Identity(identity) => format!(
            "member with identity {:?} on {:?}",
            identity.handle, identity.channel
        ),
    };
    ApiError::NotFound {
        what: format!("{what} in community {community_id:?}"),
        reason: "MEMBER_NOT_FOUND",
    }
}

/// Why a command named a member and wrote nothing, as the caller hears it:
/// the member was erased or merged, a merge was refused, or (unknown,
/// refused otherwise) it is not found.
pub(super) fn refused(outcome: CommandOutcome, member_id: String, community_id: &str) -> ApiError {
    let merge = |reason, message: String, into: Option<String>| ApiError::MergeRefused {
        message,
        reason,
        into,
    };
    match outcome {
        CommandOutcome::MemberErased => ApiError::MemberErased { member_id },
        CommandOutcome::MemberMerged { into } => merge(
            "MEMBER_MERGED",
            format!(
                "member {member_id:?} is merged into {into:?}: act on {into:?}, or unmerge it first"
            ),
            Some(into),
        ),
        CommandOutcome::HasMergedMembers => merge(
            "MEMBER_HAS_MERGED_MEMBERS",
            format!("other members are merged into {member_id:?}: unmerge them first"),
            None,
        ),
        CommandOutcome::TargetMerged { into } => merge(
            "TARGET_MERGED",
            format!("the target is merged into {into:?}: merge into {into:?} instead"),
            Some(into),
        ),
        CommandOutcome::NotMerged => merge(
            "MEMBER_NOT_MERGED",
            format!("member {member_id:?} is not merged into another member"),
            None,
        ),

        _ => ApiError::NotFound {
            what: format!("member_id {member_id:?} in community {community_id:?}"),
            reason: "MEMBER_NOT_FOUND",
        },
    }
}

/// Collects every field violation of a request before failing it.
#[derive(Default)]
pub(super) struct Violations(Vec<FieldViolation>);

impl Violations {
    pub(super) fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    pub(super) fn community(&mut self, community_id: &str) {
        if community_id.is_empty() {
            self.add("community_id", "is required");
        } else if !is_community_id(community_id) {
            self.add("community_id", "must be 1-64 characters of [A-Za-z0-9._:-]");
        }
    }

    /// A member given by id only: required.
    pub(super) fn member_id(&mut self, field: &str, id: String) -> Option<MemberRef> {
        if id.is_empty() {
            self.add(field, "is required");
            None
        } else {
            Some(MemberRef::Id(id))
        }
    }

    /// A member given by id or by identity: exactly one of the two.
    pub(super) fn member(
        &mut self,
        id_field: &str,
        id: String,
        identity_field: &str,
        identity: Option<pb::Identity>,
    ) -> Option<MemberRef> {
        match (id.is_empty(), identity) {
            (true, None) => {
                self.add(id_field, format!("is required (or give {identity_field})"));
                None
            }
            (false, Some(_)) => {
                self.add(
                    identity_field,
                    format!("give {id_field} or {identity_field}, not both"),
                );
                None
            }
            (false, None) => Some(MemberRef::Id(id)),
            (true, Some(identity)) => {
                let before = self.0.len();
                if !is_channel_slug(&identity.channel) {
                    self.add(
                        format!("{identity_field}.channel"),
                        "must be a lowercase channel slug",
                    );
                }
                if identity.handle.trim().is_empty() {
                    self.add(format!("{identity_field}.handle"), "is required");
                }
                (self.0.len() == before).then_some(MemberRef::Identity(Identity {
                    channel: identity.channel,
                    handle: identity.handle,
                }))
            }
        }
    }

    /// An identity given as a (channel, handle) or as an email address (the
    /// identity on the channel "email"): exactly one of the two.
    pub(super) fn identity_or_email(
        &mut self,
        identity: Option<pb::Identity>,
        email: String,
    ) -> Option<Identity> {
        match (identity, email.trim()) {
            (None, "") => {
                self.add("identity", "is required (or give email)");
                None
            }
            (Some(_), _) if !email.is_empty() => {
                self.add("email", "give identity or email, not both");
                None
            }
            (Some(identity), _) => {
                let before = self.0.len();
                if !is_channel_slug(&identity.channel) {
                    self.add("identity.channel", "must be a lowercase channel slug");
                }
                if identity.handle.trim().is_empty() {
                    self.add("identity.handle", "is required");
                }
                (self.0.len() == before).then_some(Identity {
                    channel: identity.channel,
                    handle: identity.handle,
                })
            }
            (None, email) => {
                let valid = email.len() <= 254
                    && email
                        .split_once('@')
                        .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
                    && !email.contains(char::is_whitespace);
                if valid {
                    Some(Identity {
                        channel: EMAIL_CHANNEL.to_owned(),
                        handle: email.to_owned(),
                    })
                } else {
                    self.add("email", "must be an address like name@example.org");
                    None
                }
            }
        }
    }

    /// AIP-158: 0 is the default, negative is an error, large is lowered.
    pub(super) fn page_size(&mut self, page_size: i32, default: u32) -> u32 {
        match u32::try_from(page_size) {
            Ok(0) => default,
            Ok(n) => n.min(MAX_PAGE_SIZE),
            Err(_) => {
                self.add("page_size", "must not be negative");
                default
            }
        }
    }

    /// A count with a default for 0 and a cap; negative is an error.
    pub(super) fn count(&mut self, field: &str, value: i32, default: u32, max: u32) -> u32 {
        match u32::try_from(value) {
            Ok(0) => default,
            Ok(n) => n.min(max),
            Err(_) => {
                self.add(field, "must not be negative");
                default
            }
        }
    }

    pub(super) fn time(
        &mut self,
        field: &str,
        t: Option<prost_types::Timestamp>,
    ) -> Option<Timestamp> {
        let t = t?;
        let parsed = Timestamp::from_parts(t.seconds, t.nanos);
        if parsed.is_none() {
            self.add(field, "is not a valid timestamp");
        }
        parsed
    }

    pub(super) fn check(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }
}
