//! `rapport.v1.MemberService`: members and their identities.
//!
//! A member is put together from three places, each authoritative for its
//! part: its own stream in the log (identities, display name: personal
//! data stays in the log), the timeline (first and last seen, interaction
//! count) and the scores (role, tier).

use std::collections::HashMap;

use rapport_domain::{Command, Identity, Timestamp};
use rapport_projections::{scores, timeline};
use rapport_proto::v1 as pb;
use rapport_proto::v1::member_service_server::MemberService;
use rapport_store::{CommandOutcome, MemberGroup};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::advocacy::{current_policy, set_member_role};
use super::export;
use super::request::{Violations, refused, resolve, resolve_group};
use super::{AppState, Ready, wait_deadline};
use crate::auth::Guard;
use crate::convert::{identity_out, timestamp};
use crate::error::{ApiError, ERROR_DOMAIN};
use rapport_store::MemberRef;

/// Suggestions per page when the request says 0.
const DEFAULT_SUGGESTIONS: u32 = 50;

/// The pair a page of suggestions ended at, from its token.
fn decode_pair_token(token: &str) -> Option<(String, String)> {
    let text = String::from_utf8(hex::decode(token).ok()?).ok()?;
    let (a, b) = text.split_once('\t')?;
    (!a.is_empty() && !b.is_empty()).then(|| (a.to_owned(), b.to_owned()))
}

/// Longest operator's reason (erasure, merge): a ticket or request id, not
/// a story.
const MAX_REASON_CHARS: usize = 512;

pub struct Members {
    pub state: AppState,
}

#[tonic::async_trait]
impl MemberService for Members {
    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::GetMemberResponse>, Status> {
        let deadline = wait_deadline(&request);
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let member = v.member_id("member_id", r.member_id);
        v.check()?;
        let ready = self.state.ready()?;
        let group = resolve_group(ready, &r.community_id, member, "member_id").await?;
        let member = member_out(ready, &r.community_id, &group, r.min_position, deadline).await?;
        Ok(Response::new(pb::GetMemberResponse {
            member: Some(member),
            merged_from: group.merged_from.unwrap_or_default(),
        }))
    }

    async fn find_member(
        &self,
        request: Request<pb::FindMemberRequest>,
    ) -> Result<Response<pb::FindMemberResponse>, Status> {
        let deadline = wait_deadline(&request);
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let identity = v.identity_or_email(r.identity, r.email);
        v.check()?;
        let ready = self.state.ready()?;
        let group = resolve_group(
            ready,
            &r.community_id,
            identity.map(MemberRef::Identity),
            "identity",
        )
        .await?;
        let member = member_out(ready, &r.community_id, &group, r.min_position, deadline).await?;
        Ok(Response::new(pb::FindMemberResponse {
            member: Some(member),
            merged_from: group.merged_from.unwrap_or_default(),
        }))
    }

    async fn link_identity(
        &self,
        request: Request<pb::LinkIdentityRequest>,
    ) -> Result<Response<pb::LinkIdentityResponse>, Status> {
        let guard = Guard::of(&request);
        let r = request.into_inner();
        let change = IdentityChange::new(
            guard,
            r.community_id,
            r.member_id,
            r.member,
            r.identity,
            r.email,
        )?;
        let (ready, done) = change.run(&self.state, true).await?;
        match done.outcome {
            CommandOutcome::Appended(event) => {
                tracing::info!(community = %done.community_id, member = %done.member_id, position = event.position, "identity linked");
                Ok(Response::new(pb::LinkIdentityResponse {
                    position: event.position,
                    already_linked: false,
                }))
            }
            CommandOutcome::AlreadyLinked => Ok(Response::new(pb::LinkIdentityResponse {
                position: *ready.writer.committed().borrow(),
                already_linked: true,
            })),
            CommandOutcome::IdentityOwned { member_id: owner } => {
                Err(identity_owned(&done.identity, &owner))
            }
            refusal => Err(refused(refusal, done.member_id, &done.community_id).into()),
        }
    }

    async fn unlink_identity(
        &self,
        request: Request<pb::UnlinkIdentityRequest>,
    ) -> Result<Response<pb::UnlinkIdentityResponse>, Status> {
        let guard = Guard::of(&request);
        let r = request.into_inner();
        let change = IdentityChange::new(
            guard,
            r.community_id,
            r.member_id,
            r.member,
            r.identity,
            r.email,
        )?;
        let (_, done) = change.run(&self.state, false).await?;
        match done.outcome {
            CommandOutcome::Appended(event) => {
                tracing::info!(community = %done.community_id, member = %done.member_id, position = event.position, "identity unlinked");
                Ok(Response::new(pb::UnlinkIdentityResponse {
                    position: event.position,
                }))
            }
            CommandOutcome::NotLinked => Err(ApiError::NotFound {
                what: format!(
                    "identity {:?} on {:?} of member {:?}",
                    done.identity.handle, done.identity.channel, done.member_id
                ),
                reason: "IDENTITY_NOT_LINKED",
            }
            .into()),
            refusal => Err(refused(refusal, done.member_id, &done.community_id).into()),
        }
    }

    async fn export_member(
        &self,
        request: Request<pb::ExportMemberRequest>,
    ) -> Result<Response<pb::ExportMemberResponse>, Status> {
        use rapport_proto::v1::advocacy_service_server::AdvocacyService;
        let deadline = wait_deadline(&request);
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let member = v.member("member_id", r.member_id, "member", r.member);
        v.check()?;
        let ready = self.state.ready()?;
        let community_id = r.community_id;
        let group = resolve_group(ready, &community_id, member, "member_id").await?;
        let member_id = group.member_id.clone();
        let shown = member_out(ready, &community_id, &group, r.min_position, deadline).await?;
        // One person: the streams of the members merged into it too.
        let mut events = Vec::new();
        for member in group.all() {
            let stream = ready
                .store
                .member_stream(&member)
                .await
                .map_err(ApiError::from)?;
            events.extend(stream);
        }
        events.sort_by_key(|e| e.position);
        let timelines = ready
            .projections
            .wait_for(timeline::NAME, r.min_position, deadline)
            .await
            .map_err(ApiError::from)?;
        let rows = ready
            .projections
            .member_timeline_rows(timelines.generation, &community_id, &group.all())
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(
                |(occurred_at, position, role, event_type, channel, kind, counterpart)| {
                    export::TimelineRow {
                        occurred_at,
                        position,
                        role,
                        event_type,
                        channel,
                        kind,
                        counterpart,
                    }
                },
            )
            .collect::<Vec<_>>();
        // The score as GetAdvocateScore tells it, now.
        let score = super::Advocacy {
            state: self.state.clone(),
        }
        .get_advocate_score(Request::new(pb::GetAdvocateScoreRequest {
            community_id: community_id.clone(),
            member_id: member_id.clone(),
            min_position: r.min_position,
            ..Default::default()
        }))
        .await?
        .into_inner();
        let document = export::document(
            member_json(&shown),
            &events,
            &rows,
            score_json(&score),
            rapport_store::wall_clock(),
        );
        let Some(prost_types::value::Kind::StructValue(document)) =
            export::to_protobuf(document).kind
        else {
            unreachable!("the document is an object");
        };
        tracing::info!(community = %community_id, member = %member_id, events = events.len(), "member exported");
        Ok(Response::new(pb::ExportMemberResponse {
            document: Some(document),
        }))
    }

    async fn list_merge_suggestions(
        &self,
        request: Request<pb::ListMergeSuggestionsRequest>,
    ) -> Result<Response<pb::ListMergeSuggestionsResponse>, Status> {
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let page_size = v.page_size(r.page_size, DEFAULT_SUGGESTIONS) as usize;
        let after = match r.page_token.as_str() {
            "" => None,
            token => match decode_pair_token(token) {
                Some(pair) => Some(pair),
                None => {
                    v.add("page_token", "is not a token this method gave");
                    None
                }
            },
        };
        v.check()?;
        let ready = self.state.ready()?;
        let candidates = ready
            .store
            .merge_candidates(&r.community_id)
            .await
            .map_err(ApiError::from)?;
        let mut suggestions = rapport_domain::suggest::suggest(
            &candidates.handles,
            &candidates.emails,
            &candidates.rejected,
        )
        .into_iter()
        .filter(|s| {
            after.as_ref().is_none_or(|(a, b)| {
                (s.member_id.as_str(), s.other_member_id.as_str()) > (a.as_str(), b.as_str())
            })
        })
        .take(page_size + 1)
        .collect::<Vec<_>>();
        let next_page_token = if suggestions.len() > page_size {
            suggestions.truncate(page_size);
            let last = suggestions.last().expect("a full page");
            hex::encode(format!("{}\t{}", last.member_id, last.other_member_id))
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListMergeSuggestionsResponse {
            suggestions: suggestions
                .into_iter()
                .map(|s| pb::MergeSuggestion {
                    member_id: s.member_id,
                    other_member_id: s.other_member_id,
                    reasons: s.reasons.into_iter().map(|r| r as i32).collect(),
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn reject_merge_suggestion(
        &self,
        request: Request<pb::RejectMergeSuggestionRequest>,
    ) -> Result<Response<pb::RejectMergeSuggestionResponse>, Status> {
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        if !r.member_id.is_empty() && r.other_member_id == r.member_id {
            v.add("other_member_id", "must be another member than member_id");
        }
        let member = v.member_id("member_id", r.member_id);
        let other = v.member_id("other_member_id", r.other_member_id);
        v.check()?;
        let ready = self.state.ready()?;
        let member_id = resolve(ready, &r.community_id, member, "member_id").await?;
        let other_member_id = resolve(ready, &r.community_id, other, "other_member_id").await?;
        let outcome = ready
            .writer
            .command(Command::RejectMergeSuggestion {
                community_id: r.community_id.clone(),
                member_id: member_id.clone(),
                other_member_id,
            })
            .await
            .map_err(ApiError::from)?;
        match outcome {
            CommandOutcome::Appended(event) => {
                Ok(Response::new(pb::RejectMergeSuggestionResponse {
                    position: event.position,
                }))
            }
            refusal => Err(refused(refusal, member_id, &r.community_id).into()),
        }
    }

    async fn erase_member(
        &self,
        request: Request<pb::EraseMemberRequest>,
    ) -> Result<Response<pb::EraseMemberResponse>, Status> {
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let member = v.member("member_id", r.member_id, "member", r.member);
        let reason = operator_reason(&mut v, &r.reason);
        v.check()?;
        let ready = self.state.ready()?;
        let member_id = resolve(ready, &r.community_id, member, "member_id").await?;
        let outcome = ready
            .writer
            .command(Command::EraseMember {
                community_id: r.community_id.clone(),
                member_id: member_id.clone(),
                reason,
            })
            .await
            .map_err(ApiError::from)?;
        match outcome {
            CommandOutcome::Appended(event) => {
                tracing::info!(community = %r.community_id, member = %member_id, position = event.position, "member erased");
                Ok(Response::new(pb::EraseMemberResponse {
                    member_id,
                    position: event.position,
                    already_erased: false,
                }))
            }
            CommandOutcome::AlreadyErased => Ok(Response::new(pb::EraseMemberResponse {
                member_id,
                position: *ready.writer.committed().borrow(),
                already_erased: true,
            })),
            refusal => Err(refused(refusal, member_id, &r.community_id).into()),
        }
    }

    async fn set_member_role(
        &self,
        request: Request<pb::SetMemberRoleRequest>,
    ) -> Result<Response<pb::SetMemberRoleResponse>, Status> {
        set_member_role(&self.state, request).await
    }

    async fn merge_members(
        &self,
        request: Request<pb::MergeMembersRequest>,
    ) -> Result<Response<pb::MergeMembersResponse>, Status> {
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        if !r.source_member_id.is_empty() && r.source_member_id == r.target_member_id {
            v.add(
                "target_member_id",
                "must be another member than source_member_id",
            );
        }
        let source = v.member("source_member_id", r.source_member_id, "source", r.source);
        let target = v.member("target_member_id", r.target_member_id, "target", r.target);
        let reason = operator_reason(&mut v, &r.reason);
        v.check()?;
        let ready = self.state.ready()?;
        let source = resolve(ready, &r.community_id, source, "source_member_id").await?;
        let target = resolve(ready, &r.community_id, target, "target_member_id").await?;
        if source == target {
            // Named by two identities of one member.
            return Err(ApiError::field(
                "target_member_id",
                "must be another member than source_member_id",
            )
            .into());
        }
        let outcome = ready
            .writer
            .command(Command::MergeMembers {
                community_id: r.community_id.clone(),
                source_member_id: source.clone(),
                target_member_id: target.clone(),
                reason,
            })
            .await
            .map_err(ApiError::from)?;
        match outcome {
            CommandOutcome::Appended(event) => {
                tracing::info!(community = %r.community_id, source = %source, target = %target, position = event.position, "members merged");
                Ok(Response::new(pb::MergeMembersResponse {
                    position: event.position,
                    member_id: target,
                    source_member_id: source,
                }))
            }
            CommandOutcome::TargetErased => {
                Err(ApiError::MemberErased { member_id: target }.into())
            }
            CommandOutcome::UnknownTarget => {
                Err(refused(CommandOutcome::UnknownMember, target, &r.community_id).into())
            }
            refusal => Err(refused(refusal, source, &r.community_id).into()),
        }
    }

    async fn unmerge_member(
        &self,
        request: Request<pb::UnmergeMemberRequest>,
    ) -> Result<Response<pb::UnmergeMemberResponse>, Status> {
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let source = v.member("source_member_id", r.source_member_id, "source", r.source);
        v.check()?;
        let ready = self.state.ready()?;
        let group = resolve_group(ready, &r.community_id, source, "source_member_id").await?;
        let Some(source) = group.merged_from else {
            return Err(
                refused(CommandOutcome::NotMerged, group.member_id, &r.community_id).into(),
            );
        };
        // The store checks again, under the log's lock, that this is still
        // the source's merge: a concurrent unmerge or merge makes it refuse.
        let target = group.member_id;
        let outcome = ready
            .writer
            .command(Command::UnmergeMember {
                community_id: r.community_id.clone(),
                source_member_id: source.clone(),
                target_member_id: target.clone(),
            })
            .await
            .map_err(ApiError::from)?;
        match outcome {
            CommandOutcome::Appended(event) => {
                tracing::info!(community = %r.community_id, source = %source, target = %target, position = event.position, "member unmerged");
                Ok(Response::new(pb::UnmergeMemberResponse {
                    position: event.position,
                    target_member_id: target,
                    source_member_id: source,
                }))
            }
            refusal => Err(refused(refusal, source, &r.community_id).into()),
        }
    }
}

/// An operator's reason (erasure, merge): required, short, kept in the log.
fn operator_reason(v: &mut Violations, reason: &str) -> String {
    let reason = reason.trim();
    if reason.is_empty() {
        v.add(
            "reason",
            "is required (a ticket or request id, kept in the log)",
        );
    } else if reason.chars().count() > MAX_REASON_CHARS {
        v.add(
            "reason",
            format!("must be at most {MAX_REASON_CHARS} characters"),
        );
    }
    reason.to_owned()
}

/// A link or unlink, validated: the community, the member as the request
/// names it, the identity.
struct IdentityChange {
    community_id: String,
    member: MemberRef,
    identity: Identity,
}

/// What a link or unlink did, for the member it resolved to.
struct Changed {
    outcome: CommandOutcome,
    community_id: String,
    member_id: String,
    identity: Identity,
}

impl IdentityChange {
    fn new(
        guard: Guard,
        community_id: String,
        member_id: String,
        member: Option<pb::Identity>,
        identity: Option<pb::Identity>,
        email: String,
    ) -> Result<IdentityChange, ApiError> {
        guard.community(&community_id)?;
        let mut v = Violations::default();
        v.community(&community_id);
        let member = v.member("member_id", member_id, "member", member);
        let identity = v.identity_or_email(identity, email);
        v.check()?;
        Ok(IdentityChange {
            community_id,
            member: member.expect("validated"),
            identity: identity.expect("validated"),
        })
    }

    /// Resolves the member and runs the command through the writer.
    async fn run(self, state: &AppState, link: bool) -> Result<(&Ready, Changed), ApiError> {
        let ready = state.ready()?;
        let member_id = resolve(ready, &self.community_id, Some(self.member), "member_id").await?;
        let (community_id, identity) = (self.community_id, self.identity);
        let command = if link {
            Command::LinkIdentity {
                community_id: community_id.clone(),
                member_id: member_id.clone(),
                identity: identity.clone(),
            }
        } else {
            Command::UnlinkIdentity {
                community_id: community_id.clone(),
                member_id: member_id.clone(),
                identity: identity.clone(),
            }
        };
        let outcome = ready.writer.command(command).await?;
        Ok((
            ready,
            Changed {
                outcome,
                community_id,
                member_id,
                identity,
            },
        ))
    }
}

/// FAILED_PRECONDITION naming the owner, in the message and in the
/// ErrorInfo, so a tool can offer the merge.
fn identity_owned(identity: &Identity, owner: &str) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let details = ErrorDetails::with_error_info(
        "IDENTITY_OWNED_BY_ANOTHER_MEMBER",
        ERROR_DOMAIN,
        HashMap::from([("owner_member_id".to_owned(), owner.to_owned())]),
    );
    Status::with_error_details(
        tonic::Code::FailedPrecondition,
        format!(
            "identity {:?} on {:?} belongs to member {owner:?}: merge the two members instead",
            identity.handle, identity.channel
        ),
        details,
    )
}

fn member_json(m: &pb::Member) -> serde_json::Value {
    let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(ToString::to_string);
    serde_json::json!({
        "member_id": m.member_id,
        "community_id": m.community_id,
        "identities": m.identities.iter().map(|i| serde_json::json!({
            "channel": i.channel, "handle": i.handle,
        })).collect::<Vec<_>>(),
        "display_name": m.display_name,
        "role": pb::MemberRole::try_from(m.role).map(|r| r.as_str_name()).unwrap_or_default(),
        "first_seen": time(&m.first_seen),
        "last_seen": time(&m.last_seen),
        "interactions": m.interactions,
        "tier": pb::Tier::try_from(m.tier).map(|t| t.as_str_name()).unwrap_or_default(),
        "erased": m.erased,
        "merged_member_ids": m.merged_member_ids,
    })
}

fn score_json(s: &pb::GetAdvocateScoreResponse) -> serde_json::Value {
    serde_json::json!({
        "as_of": s.as_of.as_ref().map(ToString::to_string),
        "score": s.score,
        "tier": pb::Tier::try_from(s.tier).map(|t| t.as_str_name()).unwrap_or_default(),
        "components": s.components.iter().map(|c| serde_json::json!({
            "name": c.name, "value": c.value, "weight": c.weight, "points": c.points,
        })).collect::<Vec<_>>(),
        "momentum": s.momentum,
        "capped": s.capped,
        "interactions_counted": s.interactions_counted,
    })
}

/// How an erased member shows.
const ERASED_MEMBER: &str = "erased member";

/// The member as `GetMember` shows it, once the read models have applied
/// the log up to `min_position`.
async fn member_out(
    ready: &Ready,
    community_id: &str,
    group: &MemberGroup,
    min_position: u64,
    deadline: Instant,
) -> Result<pb::Member, ApiError> {
    let member_id = group.member_id.clone();
    let timelines = ready
        .projections
        .wait_for(timeline::NAME, min_position, deadline)
        .await?;
    let scored = ready
        .projections
        .wait_for(scores::NAME, min_position, deadline)
        .await?;
    let mut profile = ready.store.member_profile(&member_id).await?;
    // The members merged into it: their identities are its identities, and
    // their display name stands in for a missing one.
    for merged in &group.merged {
        let other = ready.store.member_profile(merged).await?;
        profile.identities.extend(other.identities);
        if profile.display_name.is_empty() {
            profile.display_name = other.display_name;
        }
    }
    let (interactions, first, last) = ready
        .projections
        .member_activity(timelines.generation, community_id, &group.all())
        .await?;
    let g = scored.generation;
    let role = ready
        .projections
        .member_role(g, community_id, &member_id)
        .await?;
    let state = ready
        .projections
        .score_state(g, community_id, &member_id, scores::ALL_CHANNELS)
        .await?
        .unwrap_or_default();
    let policy = current_policy(ready, g, community_id).await?;
    let now = rapport_store::wall_clock().max(Timestamp::from_micros(state.at.unwrap_or(i64::MIN)));
    let (_, tier) = state.at_time(&policy, now);
    Ok(pb::Member {
        member_id,
        community_id: community_id.to_owned(),
        identities: profile.identities.into_iter().map(identity_out).collect(),
        display_name: if profile.erased {
            ERASED_MEMBER.to_owned()
        } else {
            profile.display_name
        },
        erased: profile.erased,
        role: role as i32,
        first_seen: first.map(|t| timestamp(Timestamp::from_micros(t))),
        last_seen: last.map(|t| timestamp(Timestamp::from_micros(t))),
        interactions,
        tier: tier.as_i32(),
        merged_member_ids: group.merged.clone(),
    })
}
