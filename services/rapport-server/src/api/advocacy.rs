use std::cmp::Ordering;

use rapport_domain::policy::{Policy, Tier};
use rapport_domain::score::{self, RankToken, assess};
use rapport_domain::timeline::request_digest;
use rapport_domain::validate::is_channel_slug;
use rapport_domain::{Command, MemberRole, Timestamp};
use rapport_projections::scores::{self, ALL_CHANNELS, NAME, RankQuery, Ranked};
use rapport_proto::v1 as pb;
use rapport_proto::v1::advocacy_service_server::AdvocacyService;
use rapport_store::CommandOutcome;
use tonic::{Request, Response, Status};

use super::request::{Violations, refused, resolve, resolve_group};
use super::{AppState, Ready, wait_deadline};
use crate::auth::Guard;
use crate::convert::{policy_in, policy_out, timestamp};
use crate::error::ApiError;

/// How long a leaderboard page token is good for: the ranking it continues
/// is pinned to the first page's time, and the bounds that make rankings
/// cheap hold only from a day before "now" (see `scores::BOUND_SLACK_SECONDS`).
const TOKEN_LIFETIME_SECONDS: i64 = scores::BOUND_SLACK_SECONDS - 3_600;

/// Members per leaderboard page when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Top contributions explained when the request says 0, and at most.
pub const DEFAULT_TOP_CONTRIBUTIONS: u32 = 5;
pub const MAX_TOP_CONTRIBUTIONS: u32 = 50;
/// Members a preview lists when the request says 0, and at most.
pub const DEFAULT_PREVIEW_TOP: u32 = 20;
pub const MAX_PREVIEW_TOP: u32 = 1000;

/// `rapport.v1.AdvocacyService`.
pub struct Advocacy {
    pub state: AppState,
}

#[tonic::async_trait]
impl AdvocacyService for Advocacy {
    async fn get_advocate_score(
        &self,
        request: Request<pb::GetAdvocateScoreRequest>,
    ) -> Result<Response<pb::GetAdvocateScoreResponse>, Status> {
        let deadline = wait_deadline(&request);
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let member = v.member("member_id", r.member_id, "identity", r.identity);
        channel_filter(&mut v, &r.channel);
        let as_of = v.time("as_of", r.as_of);
        let top_n = v.count(
            "top_contributions",
            r.top_contributions,
            DEFAULT_TOP_CONTRIBUTIONS,
            MAX_TOP_CONTRIBUTIONS,
        );
        v.check()?;

        let ready = self.state.ready()?;
        let group = resolve_group(ready, &r.community_id, member, "member_id").await?;
        let member_id = group.member_id;
        let active = ready
            .projections
            .wait_for(NAME, r.min_position, deadline)
            .await
            .map_err(ApiError::from)?;
        let g = active.generation;
        let policy = current_policy(ready, g, &r.community_id).await?;
        let channel = (!r.channel.is_empty()).then_some(r.channel.as_str());
        let (assessment, momentum) = match as_of {
            // Now: from the folded state, without reading the history.
            None => {
                let state = ready
                    .projections
                    .score_state(
                        g,
                        &r.community_id,
                        &member_id,
                        channel.unwrap_or(ALL_CHANNELS),
                    )
                    .await
                    .map_err(ApiError::from)?
                    .unwrap_or_default();
                // Never before the latest interaction (the clocks of
                // replicas differ by a little).
                let now = rapport_store::wall_clock()
                    .max(Timestamp::from_micros(state.at.unwrap_or(i64::MIN)));
                let (score, tier) = state.at_time(&policy, now);
                let top = ready
                    .projections
                    .top_contributions(
                        g,
                        &r.community_id,
                        &member_id,
                        channel,
                        &state,
                        &policy,
                        now,
                        top_n as usize,
                    )
                    .await
                    .map_err(ApiError::from)?;
                let momentum = match channel {
                    None => ready
                        .projections
                        .momentum_now(g, &r.community_id, &member_id, &state, &policy, now)
                        .await
                        .map_err(ApiError::from)?,
                    Some(_) => {
                        let activities = ready
                            .projections
                            .score_activities(g, &r.community_id, &member_id, channel, Some(now))
                            .await
                            .map_err(ApiError::from)?;
                        score::momentum(&activities, &policy, now)
                    }
                };
                let assessment = score::Assessment {
                    as_of: now,
                    score,
                    tier,
                    top,
                    counted: state.interactions as usize,
                };
                (assessment, momentum)
            }
            // The past: a replay of what had happened by then.
            Some(as_of) => {
                let activities = ready
                    .projections
                    .score_activities(g, &r.community_id, &member_id, channel, Some(as_of))
                    .await
                    .map_err(ApiError::from)?;
                (
                    assess(&activities, &policy, as_of, top_n as usize),
                    score::momentum(&activities, &policy, as_of),
                )
            }
        };
        let as_of = assessment.as_of;
        let role = ready
            .projections
            .member_role(g, &r.community_id, &member_id)
            .await
            .map_err(ApiError::from)?;
        let w = &policy.component_weights;
        let weights = [
            w.engagement,
            w.consistency,
            w.exchange,
            w.advocacy,
            w.breadth,
        ];
        Ok(Response::new(pb::GetAdvocateScoreResponse {
            member_id,
            merged_from: group.merged_from.unwrap_or_default(),
            as_of: Some(timestamp(as_of)),
            score: assessment.score.value,
            tier: assessment.tier.as_i32(),
            components: assessment
                .score
                .contributions(&policy)
                .into_iter()
                .zip(weights)
                .map(|((name, value, points), weight)| pb::ScoreComponent {
                    name: name.to_owned(),
                    value,
                    weight,
                    points,
                })
                .collect(),
            top_contributions: assessment
                .top
                .into_iter()
                .map(|c| pb::ScoreContribution {
                    position: c.position,
                    kind: c.kind.as_i32(),
                    channel: c.channel,
                    occurred_at: Some(timestamp(c.at)),
                    decayed_value: c.decayed_value,
                    points: c.points,
                })
                .collect(),
            momentum,
            capped: assessment.score.capped,
            role: role as i32,
            interactions_counted: u32::try_from(assessment.counted).unwrap_or(u32::MAX),
            projection_position: active.position,
        }))
    }

    async fn list_advocates(
        &self,
        request: Request<pb::ListAdvocatesRequest>,
    ) -> Result<Response<pb::ListAdvocatesResponse>, Status> {
        let deadline = wait_deadline(&request);
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let page_size = v.page_size(r.page_size, DEFAULT_PAGE_SIZE);
        channel_filter(&mut v, &r.channel);
        let min_tier = match r.min_tier {
            0 => None,
            t => {
                let tier = Tier::from_i32(t);
                if tier.is_none() {
                    v.add("min_tier", format!("unknown tier {t}"));
                }
                tier
            }
        };
        let order = pb::AdvocateOrder::try_from(r.order_by).ok();
        if order.is_none() {
            v.add("order_by", format!("unknown order {}", r.order_by));
        }
        v.check()?;
        let by_momentum = order == Some(pb::AdvocateOrder::Momentum);
        // Momentum needs a replay per member: rank those with some standing.
        let min_tier = min_tier.unwrap_or(if by_momentum {
            Tier::Participant
        } else {
            Tier::Observer
        });

        let digest = request_digest([
            "advocates",
            r.community_id.as_str(),
            &r.channel,
            &min_tier.as_i32().to_string(),
            &r.order_by.to_string(),
            &r.ascending.to_string(),
        ]);
        let token = if r.page_token.is_empty() {
            None
        } else {
            let token = RankToken::decode(&r.page_token, &digest)
                .map_err(|e| ApiError::field("page_token", e.to_string()))?;
            // A ranking is exact only for times the stored bounds cover.
            let oldest = rapport_store::wall_clock().plus_seconds(-TOKEN_LIFETIME_SECONDS);
            if token.as_of < oldest {
                return Err(ApiError::field(
                    "page_token",
                    "page token expired (older than a day): start from the first page",
                )
                .into());
            }
            Some(token)
        };
        let ready = self.state.ready()?;
        let active = ready
            .projections
            .wait_for(NAME, r.min_position, deadline)
            .await
            .map_err(ApiError::from)?;
        let g = active.generation;
        let policy = current_policy(ready, g, &r.community_id).await?;
        let as_of = token.map_or_else(rapport_store::wall_clock, |t| t.as_of);
        let offset = token.map_or(0, |t| t.offset) as usize;
        let query = RankQuery {
            community_id: r.community_id.clone(),
            channel: if r.channel.is_empty() {
                ALL_CHANNELS.to_owned()
            } else {
                r.channel.clone()
            },
            min_tier,
            as_of,
        };
        let limit = page_size as usize;
        let mut rows: Vec<(Ranked, Option<f64>)> = if !by_momentum && !r.ascending {
            ready
                .projections
                .rank(g, &query, &policy, offset, limit + 1)
                .await
                .map_err(ApiError::from)?
                .into_iter()
                .map(|ranked| (ranked, None))
                .collect()
        } else {
            let mut all = every_ranked(ready, g, &query, &policy).await?;
            if by_momentum {
                let momenta = momenta(ready, g, &query, &policy, &all).await?;
                let mut with: Vec<(Ranked, Option<f64>)> =
                    all.into_iter().zip(momenta.into_iter().map(Some)).collect();
                with.sort_by(|a, b| {
                    let order = a.1.unwrap_or(0.0).total_cmp(&b.1.unwrap_or(0.0));
                    let order = if r.ascending { order } else { order.reverse() };
                    order.then_with(|| a.0.member_id.cmp(&b.0.member_id))
                });
                with.into_iter().skip(offset).take(limit + 1).collect()
            } else {
                all.sort_by(|a, b| {
                    a.score
                        .total_cmp(&b.score)
                        .then_with(|| a.member_id.cmp(&b.member_id))
                });
                all.into_iter()
                    .skip(offset)
                    .take(limit + 1)
                    .map(|ranked| (ranked, None))
                    .collect()
            }
        };
        let next_page_token = if rows.len() > limit {
            rows.truncate(limit);
            RankToken {
                as_of,
                offset: (offset + limit) as u64,
            }
            .encode(&digest)
        } else {
            String::new()
        };
        let missing: Vec<Ranked> = rows
            .iter()
            .filter(|(_, m)| m.is_none())
            .map(|(ranked, _)| ranked.clone())
            .collect();
        let mut computed = momenta(ready, g, &query, &policy, &missing)
            .await?
            .into_iter();
        let mut members = Vec::with_capacity(rows.len());
        for (i, (ranked, known_momentum)) in rows.into_iter().enumerate() {
            let momentum = match known_momentum {
                Some(m) => m,
                None => computed.next().expect("one momentum per member without"),
            };
            members.push(pb::RankedMember {
                rank: (offset + i + 1) as u32,
                member_id: ranked.member_id,
                score: ranked.score,
                tier: ranked.tier.as_i32(),
                momentum,
                last_active_at: Some(timestamp(ranked.last_active_at)),
            });
        }
        Ok(Response::new(pb::ListAdvocatesResponse {
            members,
            next_page_token,
            as_of: Some(timestamp(as_of)),
            projection_position: active.position,
        }))
    }

    async fn get_scoring_policy(
        &self,
        request: Request<pb::GetScoringPolicyRequest>,
    ) -> Result<Response<pb::GetScoringPolicyResponse>, Status> {
        let deadline = wait_deadline(&request);
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        v.check()?;
        let ready = self.state.ready()?;
        let active = ready
            .projections
            .wait_for(NAME, r.min_position, deadline)
            .await
            .map_err(ApiError::from)?;
        let set = ready
            .projections
            .scoring_policy(active.generation, &r.community_id)
            .await
            .map_err(ApiError::from)?;
        let (policy, position) = set.clone().unwrap_or_else(|| (Policy::default(), 0));
        Ok(Response::new(pb::GetScoringPolicyResponse {
            policy: Some(policy_out(&policy)),
            is_default: set.is_none(),
            position,
        }))
    }

    async fn set_scoring_policy(
        &self,
        request: Request<pb::SetScoringPolicyRequest>,
    ) -> Result<Response<pb::SetScoringPolicyResponse>, Status> {
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let policy = policy_field(&mut v, r.policy);
        v.check()?;
        let ready = self.state.ready()?;
        let outcome = ready
            .writer
            .command(Command::SetScoringPolicy {
                community_id: r.community_id.clone(),
                policy: policy.expect("validated"),
            })
            .await
            .map_err(ApiError::from)?;
        let CommandOutcome::Appended(event) = outcome else {
            return Err(Status::internal("a policy names no member"));
        };
        tracing::info!(community = %r.community_id, position = event.position, "scoring policy set");
        Ok(Response::new(pb::SetScoringPolicyResponse {
            position: event.position,
        }))
    }

    async fn preview_scoring_policy(
        &self,
        request: Request<pb::PreviewScoringPolicyRequest>,
    ) -> Result<Response<pb::PreviewScoringPolicyResponse>, Status> {
        let deadline = wait_deadline(&request);
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let top_n = v.count("top_n", r.top_n, DEFAULT_PREVIEW_TOP, MAX_PREVIEW_TOP) as usize;
        let candidate = policy_field(&mut v, r.policy);
        v.check()?;
        let candidate = candidate.expect("validated");
        let ready = self.state.ready()?;
        let active = ready
            .projections
            .wait_for(NAME, r.min_position, deadline)
            .await
            .map_err(ApiError::from)?;
        let g = active.generation;
        let current = current_policy(ready, g, &r.community_id).await?;
        let unranked = ready
            .projections
            .unranked_members(g, &r.community_id)
            .await
            .map_err(ApiError::from)?;
        let as_of = rapport_store::wall_clock();
        let mut top: Vec<Top> = Vec::new();
        let mut counts = [0u32; 5];
        let mut current_counts = [0u32; 5];
        let mut scored = 0u32;
        ready
            .projections
            .for_each_member_activities(g, &r.community_id, |member, activities| {
                if unranked.contains(member) {
                    return;
                }
                scored += 1;
                let under = assess(activities, &candidate, as_of, 0);
                counts[under.tier as usize - 1] += 1;
                keep_top(
                    &mut top,
                    top_n,
                    Top {
                        member_id: member.to_owned(),
                        score: under.score.value,
                        tier: under.tier,
                        last_active_at: activities.iter().map(|a| a.at).max().unwrap_or(as_of),
                    },
                );
            })
            .await
            .map_err(ApiError::from)?;
        // Under the current policy, the folded states say it all.
        let everyone = RankQuery {
            community_id: r.community_id.clone(),
            channel: ALL_CHANNELS.to_owned(),
            min_tier: Tier::Observer,
            as_of,
        };
        for ranked in every_ranked(ready, g, &everyone, &current).await? {
            current_counts[ranked.tier as usize - 1] += 1;
        }
        let tier_counts = |counts: [u32; 5]| {
            Tier::ALL
                .into_iter()
                .zip(counts)
                .map(|(tier, members)| pb::TierCount {
                    tier: tier.as_i32(),
                    members,
                })
                .collect()
        };
        Ok(Response::new(pb::PreviewScoringPolicyResponse {
            top: top
                .into_iter()
                .enumerate()
                .map(|(i, ranked)| pb::RankedMember {
                    rank: i as u32 + 1,
                    member_id: ranked.member_id,
                    score: ranked.score,
                    tier: ranked.tier.as_i32(),
                    // A preview ranks; momentum under a policy not in force
                    // would be a second replay per member for little use.
                    momentum: 0.0,
                    last_active_at: Some(timestamp(ranked.last_active_at)),
                })
                .collect(),
            tier_counts: tier_counts(counts),
            current_tier_counts: tier_counts(current_counts),
            as_of: Some(timestamp(as_of)),
            members_scored: scored,
        }))
    }

    async fn set_member_role(
        &self,
        request: Request<pb::SetMemberRoleRequest>,
    ) -> Result<Response<pb::SetMemberRoleResponse>, Status> {
        set_member_role(&self.state, request).await
    }
}

/// `SetMemberRole`, served by AdvocacyService and MemberService alike.
pub(super) async fn set_member_role(
    state: &AppState,
    request: Request<pb::SetMemberRoleRequest>,
) -> Result<Response<pb::SetMemberRoleResponse>, Status> {
    let guard = Guard::of(&request);
    let r = request.into_inner();
    guard.community(&r.community_id)?;
    let mut v = Violations::default();
    v.community(&r.community_id);
    let member = v.member("member_id", r.member_id, "identity", r.identity);
    let role = MemberRole::from_i32(r.role);
    if role.is_none() {
        v.add(
            "role",
            "must be MEMBER_ROLE_MEMBER, MEMBER_ROLE_STAFF or MEMBER_ROLE_BOT",
        );
    }
    v.check()?;
    let ready = state.ready()?;
    let member_id = resolve(ready, &r.community_id, member, "member_id").await?;
    let outcome = ready
        .writer
        .command(Command::SetMemberRole {
            community_id: r.community_id.clone(),
            member_id: member_id.clone(),
            role: role.expect("validated"),
        })
        .await
        .map_err(ApiError::from)?;
    match outcome {
        CommandOutcome::Appended(event) => Ok(Response::new(pb::SetMemberRoleResponse {
            member_id,
            position: event.position,
        })),
        refusal => Err(refused(refusal, member_id, &r.community_id).into()),
    }
}

/// The request's `policy`, or its violations added to `v`.
fn policy_field(v: &mut Violations, policy: Option<pb::ScoringPolicy>) -> Option<Policy> {
    match policy_in(policy, "policy") {
        Ok(policy) => Some(policy),
        Err(violations) => {
            for violation in violations {
                v.add(violation.field, violation.description);
            }
            None
        }
    }
}

fn channel_filter(v: &mut Violations, channel: &str) {
    if !channel.is_empty() && !is_channel_slug(channel) {
        v.add("channel", "must be a lowercase channel slug");
    }
}

pub(super) async fn current_policy(
    ready: &Ready,
    g: u64,
    community_id: &str,
) -> Result<Policy, ApiError> {
    Ok(ready
        .projections
        .scoring_policy(g, community_id)
        .await?
        .map(|(policy, _)| policy)
        .unwrap_or_default())
}

/// Every ranked member passing the query's tier, exact for its time.
async fn every_ranked(
    ready: &Ready,
    g: u64,
    query: &RankQuery,
    policy: &Policy,
) -> Result<Vec<Ranked>, ApiError> {
    let min_bound = (policy.thresholds.start(query.min_tier) - policy.demotion_margin).max(0.0);
    let states = ready.projections.ranked_states(g, query, min_bound).await?;
    Ok(states
        .into_iter()
        .filter_map(|stored| {
            let (score, tier) = stored.state.at_time(policy, query.as_of);
            (tier >= query.min_tier).then(|| Ranked {
                member_id: stored.member_id,
                score: score.value,
                tier,
                last_active_at: Timestamp::from_micros(stored.state.at.unwrap_or(0)),
                state: stored.state,
            })
        })
        .collect())
}

/// Ranked members' momentum at the ranking's time: from their snapshots on
/// all channels (one query), from a replay each on one channel.
async fn momenta(
    ready: &Ready,
    g: u64,
    query: &RankQuery,
    policy: &Policy,
    ranked: &[Ranked],
) -> Result<Vec<f64>, ApiError> {
    if query.channel == ALL_CHANNELS {
        let members: Vec<(&str, &rapport_domain::score::ScoreState)> = ranked
            .iter()
            .map(|r| (r.member_id.as_str(), &r.state))
            .collect();
        return Ok(ready
            .projections
            .momentum_many(g, &query.community_id, &members, policy, query.as_of)
            .await?);
    }
    let mut out = Vec::with_capacity(ranked.len());
    for r in ranked {
        let activities = ready
            .projections
            .score_activities(
                g,
                &query.community_id,
                &r.member_id,
                Some(&query.channel),
                Some(query.as_of),
            )
            .await?;
        out.push(score::momentum(&activities, policy, query.as_of));
    }
    Ok(out)
}

/// A member of a preview's top.
struct Top {
    member_id: String,
    score: f64,
    tier: Tier,
    last_active_at: Timestamp,
}

/// Keeps the `n` highest scores (ties by member id), sorted.
fn keep_top(top: &mut Vec<Top>, n: usize, candidate: Top) {
    let order = |a: &Top, b: &Top| match b.score.total_cmp(&a.score) {
        Ordering::Equal => a.member_id.cmp(&b.member_id),
        other => other,
    };
    let at = top
        .binary_search_by(|probe| order(probe, &candidate))
        .unwrap_or_else(|i| i);
    if at < n {
        top.insert(at, candidate);
        top.truncate(n);
    }
}
