use rapport_domain::EventType;
use rapport_domain::validate::{is_channel_slug, is_community_id};
use rapport_proto::v1 as pb;
use rapport_proto::v1::event_log_service_server::EventLogService;
use rapport_store::EventQuery;
use tonic::{Request, Response, Status};

use super::AppState;
use crate::auth::Guard;
use crate::convert::event_out;
use crate::error::ApiError;

/// Page size when the request says 0.
pub const DEFAULT_LIMIT: u32 = 100;
/// Larger requests are served this many events (AIP-158: coerce, don't fail).
pub const MAX_LIMIT: u32 = 1_000;

/// `rapport.v1.EventLogService` but `SubscribeEvents` (see
/// `api::subscription`).
pub struct EventLog {
    pub state: AppState,
}

#[tonic::async_trait]
impl EventLogService for EventLog {
    async fn read_events(
        &self,
        request: Request<pb::ReadEventsRequest>,
    ) -> Result<Response<pb::ReadEventsResponse>, Status> {
        let guard = Guard::of(&request);
        let request = request.into_inner();
        guard.community_or_all(&request.community_id)?;
        let query = event_query(request)?;
        let page = self
            .state
            .ready()?
            .store
            .read_events(&query)
            .await
            .map_err(ApiError::from)?;
        let next_after_position = match page.events.last() {
            Some(last) if page.events.len() as u32 == query.limit => last.position,
            // A short page looked at everything up to the head.
            _ => page.head.max(query.after),
        };
        Ok(Response::new(pb::ReadEventsResponse {
            events: page.events.into_iter().map(event_out).collect(),
            head_position: page.head,
            next_after_position,
        }))
    }

    type SubscribeEventsStream = tokio_stream::Empty<Result<pb::SubscribeEventsResponse, Status>>;

    /// Never called: `EventLogRoutes` serves this method itself, with each
    /// event encoded once for all subscribers (see `api::subscription`).
    async fn subscribe_events(
        &self,
        _: Request<pb::SubscribeEventsRequest>,
    ) -> Result<Response<Self::SubscribeEventsStream>, Status> {
        Err(Status::internal(
            "SubscribeEvents is served by EventLogRoutes",
        ))
    }
}

fn event_query(request: pb::ReadEventsRequest) -> Result<EventQuery, ApiError> {
    Ok(EventQuery {
        after: request.after_position,
        limit: match request.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        },
        ..filters(request.community_id, &request.event_types, request.channels)?
    })
}

/// The filters of a read or a subscription, validated.
pub(super) fn filters(
    community_id: String,
    event_types: &[i32],
    channels: Vec<String>,
) -> Result<EventQuery, ApiError> {
    let mut violations = Vec::new();
    let mut fail = |field: String, description: String| {
        violations.push(rapport_domain::FieldViolation { field, description })
    };
    if !community_id.is_empty() && !is_community_id(&community_id) {
        fail(
            "community_id".into(),
            "must be 1-64 characters of [A-Za-z0-9._:-]".into(),
        );
    }
    let mut types = Vec::new();
    for (i, t) in event_types.iter().enumerate() {
        match EventType::from_i32(*t) {
            Some(t) => types.push(t),
            None => fail(
                format!("event_types[{i}]"),
                format!("unknown event type {t}"),
            ),
        }
    }
    for (i, c) in channels.iter().enumerate() {
        if !is_channel_slug(c) {
            fail(
                format!("channels[{i}]"),
                "must be a lowercase channel slug".into(),
            );
        }
    }
    if !violations.is_empty() {
        return Err(ApiError::InvalidArgument(violations));
    }
    Ok(EventQuery {
        after: 0,
        limit: 0,
        community_id: (!community_id.is_empty()).then_some(community_id),
        event_types: types,
        channels,
        without_personal: false,
    })
}
