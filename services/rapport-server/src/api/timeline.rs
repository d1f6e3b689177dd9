use rapport_domain::InteractionKind;
use rapport_domain::score::TierChange;
use rapport_domain::timeline::Role;
use rapport_domain::timeline::{Cursor, PageToken, request_digest};
use rapport_domain::validate::is_channel_slug;
use rapport_projections::scores::{self, TierRange};
use rapport_projections::timeline::{NAME, TimelineEntry, TimelineQuery};
use rapport_proto::v1 as pb;
use rapport_proto::v1::timeline_service_server::TimelineService;
use tonic::{Request, Response, Status};

use super::request::{Violations, resolve_group};
use super::{AppState, Ready, wait_deadline};
use crate::auth::Guard;
use crate::convert::{tier_change_out, timeline_entry_out, timestamp};
use crate::error::ApiError;

/// Page size when the request says 0 (AIP-158).
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Larger page sizes are lowered to this.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Connections listed when the request says 0.
pub const DEFAULT_CONNECTIONS: u32 = 20;

/// `rapport.v1.TimelineService`.
pub struct Timelines {
    pub state: AppState,
}

#[tonic::async_trait]
impl TimelineService for Timelines {
    async fn get_timeline(
        &self,
        request: Request<pb::GetTimelineRequest>,
    ) -> Result<Response<pb::GetTimelineResponse>, Status> {
        let deadline = wait_deadline(&request);
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let member = v.member("member_id", r.member_id, "identity", r.identity);
        let page_size = v.page_size(r.page_size, DEFAULT_PAGE_SIZE);
        for (i, c) in r.channels.iter().enumerate() {
            if !is_channel_slug(c) {
                v.add(format!("channels[{i}]"), "must be a lowercase channel slug");
            }
        }
        let mut kinds = Vec::new();
        for (i, k) in r.kinds.iter().enumerate() {
            match InteractionKind::from_i32(*k) {
                Some(k) => kinds.push(k),
                None => v.add(
                    format!("kinds[{i}]"),
                    format!("unknown interaction kind {k}"),
                ),
            }
        }
        let since = v.time("since", r.since);
        let until = v.time("until", r.until);
        if let (Some(s), Some(u)) = (since, until)
            && s >= u
        {
            v.add("until", "must be after since");
        }
        v.check()?;

        let ready = self.state.ready()?;
        let named = async {
            let group = resolve_group(ready, &r.community_id, member, "member_id").await?;
            // Tokens are bound to the member, not to how it was named.
            let digest = request_digest(
                ["timeline", &r.community_id, &group.member_id]
                    .into_iter()
                    .chain(r.channels.iter().map(String::as_str))
                    .chain([
                        format!("{:?}", r.kinds).as_str(),
                        &format!("{since:?}"),
                        &format!("{until:?}"),
                    ]),
            );
            let after = page_token(&r.page_token, &digest)?;
            Ok::<_, ApiError>((group, digest, after))
        };
        let timeline = async {
            ready
                .projections
                .wait_for(NAME, r.min_position, deadline)
                .await
                .map_err(ApiError::from)
        };
        // Tier changes come from the scores projection; a filtered timeline
        // (channels, kinds) leaves them out, as it does lifecycle entries.
        let scores = async {
            if !(r.channels.is_empty() && kinds.is_empty()) {
                return Ok::<_, ApiError>(None);
            }
            let scores = ready
                .projections
                .wait_for(scores::NAME, r.min_position, deadline)
                .await?;
            Ok(Some(scores.generation))
        };
        // The member and the read models' progress do not depend on each
        // other: a page waits for the slowest, not for their sum. The first
        // error wins (an unknown member does not wait for `min_position`).
        let ((group, digest, after), active, tiers) = tokio::try_join!(named, timeline, scores)?;
        let member_id = group.member_id.clone();
        let g = active.generation;
        let query = TimelineQuery {
            community_id: r.community_id,
            members: group.all(),
            counterparts: Vec::new(),
            channels: r.channels,
            kinds,
            since,
            until,
            after,
            limit: page_size,
        };
        let (entries, next_page_token) = page(ready, g, query, &digest, tiers).await?;
        Ok(Response::new(pb::GetTimelineResponse {
            entries,
            next_page_token,
            projection_position: active.position,
            member_id,
            merged_from: group.merged_from.unwrap_or_default(),
        }))
    }

    async fn get_relationship(
        &self,
        request: Request<pb::GetRelationshipRequest>,
    ) -> Result<Response<pb::GetRelationshipResponse>, Status> {
        let deadline = wait_deadline(&request);
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let member = v.member("member_id", r.member_id, "identity", r.identity);
        let other = v.member(
            "other_member_id",
            r.other_member_id,
            "other_identity",
            r.other_identity,
        );
        let page_size = v.page_size(r.page_size, DEFAULT_PAGE_SIZE);
        v.check()?;

        let ready = self.state.ready()?;
        // Two independent reads: at once.
        let (group, others) = tokio::try_join!(
            resolve_group(ready, &r.community_id, member, "member_id"),
            resolve_group(ready, &r.community_id, other, "other_member_id"),
        )?;
        let (member_id, other_member_id) = (group.member_id.clone(), others.member_id.clone());
        if member_id == other_member_id {
            return Err(ApiError::field(
                "other_member_id",
                "must be another member (not one merged with member_id either)",
            )
            .into());
        }
        let digest = request_digest([
            "relationship",
            &r.community_id,
            &member_id,
            &other_member_id,
        ]);
        let after = page_token(&r.page_token, &digest)?;
        let active = ready
            .projections
            .wait_for(NAME, r.min_position, deadline)
            .await
            .map_err(ApiError::from)?;
        let g = active.generation;
        let counts = ready
            .projections
            .relationship_counts(g, &r.community_id, &group.all(), &others.all())
            .await
            .map_err(ApiError::from)?;
        let query = TimelineQuery {
            community_id: r.community_id,
            members: group.all(),
            counterparts: others.all(),
            after,
            limit: page_size,
            ..TimelineQuery::default()
        };
        let (entries, next_page_token) = page(ready, g, query, &digest, None).await?;
        Ok(Response::new(pb::GetRelationshipResponse {
            entries,
            next_page_token,
            counts: counts
                .into_iter()
                .map(|c| pb::ExchangeCount {
                    kind: c.kind.as_i32(),
                    sent: c.sent,
                    received: c.received,
                })
                .collect(),
            projection_position: active.position,
            member_id,
            other_member_id,
            merged_from: group.merged_from.unwrap_or_default(),
            other_merged_from: others.merged_from.unwrap_or_default(),
        }))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let deadline = wait_deadline(&request);
        let guard = Guard::of(&request);
        let r = request.into_inner();
        guard.community(&r.community_id)?;
        let mut v = Violations::default();
        v.community(&r.community_id);
        let member = v.member("member_id", r.member_id, "identity", r.identity);
        let limit = v.page_size(r.page_size, DEFAULT_CONNECTIONS);
        v.check()?;

        let ready = self.state.ready()?;
        let group = resolve_group(ready, &r.community_id, member, "member_id").await?;
        let active = ready
            .projections
            .wait_for(NAME, r.min_position, deadline)
            .await
            .map_err(ApiError::from)?;
        let g = active.generation;
        let connections = ready
            .projections
            .connections(g, &r.community_id, &group.all(), limit)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListConnectionsResponse {
            connections: connections
                .into_iter()
                .map(|c| pb::Connection {
                    member_id: c.other_member_id,
                    sent: c.sent,
                    received: c.received,
                    first_exchange_at: Some(timestamp(c.first_at)),
                    last_exchange_at: Some(timestamp(c.last_at)),
                })
                .collect(),
            projection_position: active.position,
            member_id: group.member_id,
            merged_from: group.merged_from.unwrap_or_default(),
        }))
    }
}

/// Reads one page (one entry more than asked, to know whether another page
/// follows) and its token.
/// One page of timeline entries, newest first. With `tiers` (the scores
/// generation), the member's tier changes are merged in by the same key.
async fn page(
    ready: &Ready,
    g: u64,
    mut query: TimelineQuery,
    digest: &[u8; 8],
    tiers: Option<u64>,
) -> Result<(Vec<pb::TimelineEntry>, String), ApiError> {
    let size = query.limit as usize;
    query.limit += 1;
    let entries = async { Ok::<_, ApiError>(ready.projections.timeline_page(g, &query).await?) };
    // The entries and the tier changes come from two read models: read
    // both at once. Each read is a hop to a database thread, and under
    // load the wait for a core at each hop, not the query, is most of a
    // slow page's time.
    let mut items: Vec<Item> = match tiers {
        Some(scores_g) => {
            let (entries, changes) =
                tokio::try_join!(entries, tier_items(ready, scores_g, &query))?;
            let mut items: Vec<Item> = entries.into_iter().map(Item::Entry).collect();
            items.extend(changes);
            items.sort_by_key(|item| std::cmp::Reverse(item.cursor()));
            items
        }
        None => entries.await?.into_iter().map(Item::Entry).collect(),
    };
    let next = if items.len() > size {
        items.truncate(size);
        let last = items.last().expect("a full page");
        PageToken {
            cursor: last.cursor(),
        }
        .encode(digest)
    } else {
        String::new()
    };
    let entries = items
        .into_iter()
        .map(|item| match item {
            Item::Entry(entry) => timeline_entry_out(entry),
            Item::Tier(change) => tier_change_out(change),
        })
        .collect();
    Ok((entries, next))
}

/// A timeline entry from the log, or a tier change from the scores.
enum Item {
    Entry(TimelineEntry),
    Tier(TierChange),
}

impl Item {
    fn cursor(&self) -> Cursor {
        match self {
            Item::Entry(entry) => entry.cursor(),
            Item::Tier(change) => Cursor {
                occurred_at: change.at,
                position: change.position,
                role: Role::TierChange,
            },
        }
    }
}

/// The member's tier changes a page may show: the stored ones (up to the
/// latest interaction) and the demotions time has made since, up to now.
async fn tier_items(ready: &Ready, g: u64, query: &TimelineQuery) -> Result<Vec<Item>, ApiError> {
    let (community, member) = (&query.community_id, &query.members[0]);
    let range = TierRange {
        before: query.after.map(|c| (c.occurred_at, c.position)),
        since: query.since,
        until: query.until,
    };
    let reads = ready
        .projections
        .timeline_tiers(g, community, member, &range, query.limit)
        .await?;
    let policy = reads.policy.unwrap_or_default();
    let trailing = match reads.state {
        Some(state) => state.changes_until(&policy, rapport_store::wall_clock()),
        None => Vec::new(),
    };
    let in_range = |c: &TierChange| {
        range.before.is_none_or(|b| (c.at, c.position) < b)
            && range.since.is_none_or(|s| c.at >= s)
            && range.until.is_none_or(|u| c.at < u)
    };
    Ok(trailing
        .into_iter()
        .filter(in_range)
        .chain(reads.stored)
        .map(Item::Tier)
        .collect())
}

/// The cursor of a page token made for this request.
fn page_token(token: &str, digest: &[u8; 8]) -> Result<Option<Cursor>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    PageToken::decode(token, digest)
        .map(|t| Some(t.cursor))
        .map_err(|e| ApiError::field("page_token", e.to_string()))
}
