use rapport_domain::InteractionKind;
use rapport_domain::timeline::{Cursor, PageToken, request_digest};
use rapport_domain::validate::is_channel_slug;
use rapport_projections::timeline::{NAME, TimelineQuery};
use rapport_proto::v1 as pb;
use rapport_proto::v1::timeline_service_server::TimelineService;
use tonic::{Request, Response, Status};

use super::request::{Violations, resolve};
use super::{AppState, Ready, wait_deadline};
use crate::convert::{timeline_entry_out, timestamp};
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
        let r = request.into_inner();
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
        let member_id = resolve(ready, &r.community_id, member, "member_id").await?;
        // Tokens are bound to the member, not to how it was named.
        let digest = request_digest(
            ["timeline", &r.community_id, &member_id]
                .into_iter()
                .chain(r.channels.iter().map(String::as_str))
                .chain([
                    format!("{:?}", r.kinds).as_str(),
                    &format!("{since:?}"),
                    &format!("{until:?}"),
                ]),
        );
        let after = page_token(&r.page_token, &digest)?;
        let active = ready
            .projections
            .wait_for(NAME, r.min_position, deadline)
            .await
            .map_err(ApiError::from)?;
        let g = active.generation;
        let query = TimelineQuery {
            community_id: r.community_id,
            member_id: member_id.clone(),
            counterpart: None,
            channels: r.channels,
            kinds,
            since,
            until,
            after,
            limit: page_size,
        };
        let (entries, next_page_token) = page(ready, g, query, &digest).await?;
        Ok(Response::new(pb::GetTimelineResponse {
            entries,
            next_page_token,
            projection_position: active.position,
            member_id,
        }))
    }

    async fn get_relationship(
        &self,
        request: Request<pb::GetRelationshipRequest>,
    ) -> Result<Response<pb::GetRelationshipResponse>, Status> {
        let deadline = wait_deadline(&request);
        let r = request.into_inner();
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
        let member_id = resolve(ready, &r.community_id, member, "member_id").await?;
        let other_member_id = resolve(ready, &r.community_id, other, "other_member_id").await?;
        if member_id == other_member_id {
            return Err(ApiError::field("other_member_id", "must be another member").into());
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
            .relationship_counts(g, &r.community_id, &member_id, &other_member_id)
            .await
            .map_err(ApiError::from)?;
        let query = TimelineQuery {
            community_id: r.community_id,
            member_id: member_id.clone(),
            counterpart: Some(other_member_id.clone()),
            after,
            limit: page_size,
            ..TimelineQuery::default()
        };
        let (entries, next_page_token) = page(ready, g, query, &digest).await?;
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
        }))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let deadline = wait_deadline(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        v.community(&r.community_id);
        let member = v.member("member_id", r.member_id, "identity", r.identity);
        let limit = v.page_size(r.page_size, DEFAULT_CONNECTIONS);
        v.check()?;

        let ready = self.state.ready()?;
        let member_id = resolve(ready, &r.community_id, member, "member_id").await?;
        let active = ready
            .projections
            .wait_for(NAME, r.min_position, deadline)
            .await
            .map_err(ApiError::from)?;
        let g = active.generation;
        let connections = ready
            .projections
            .connections(g, &r.community_id, &member_id, limit)
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
            member_id,
        }))
    }
}

/// Reads one page (one entry more than asked, to know whether another page
/// follows) and its token.
async fn page(
    ready: &Ready,
    g: u64,
    mut query: TimelineQuery,
    digest: &[u8; 8],
) -> Result<(Vec<pb::TimelineEntry>, String), ApiError> {
    let size = query.limit as usize;
    query.limit += 1;
    let mut entries = ready.projections.timeline_page(g, &query).await?;
    let next = if entries.len() > size {
        entries.truncate(size);
        let last = entries.last().expect("a full page");
        PageToken {
            cursor: last.cursor(),
        }
        .encode(digest)
    } else {
        String::new()
    };
    let entries = entries.into_iter().map(timeline_entry_out).collect();
    Ok((entries, next))
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
