use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rapport_domain::EventType;
use rapport_domain::validate::{is_channel_slug, is_community_id};
use rapport_proto::v1 as pb;
use rapport_proto::v1::event_log_service_server::EventLogService;
use rapport_proto::v1::subscribe_events_response::Item;
use rapport_store::{EventQuery, Followed, Follower};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::AppState;
use crate::convert::event_out;
use crate::error::ApiError;

/// Page size when the request says 0.
pub const DEFAULT_LIMIT: u32 = 100;
/// Larger requests are served this many events (AIP-158: coerce, don't fail).
pub const MAX_LIMIT: u32 = 1_000;

/// How often a subscription sends a checkpoint, at least.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Events a subscription reads from the log at a time while catching up.
const SUBSCRIPTION_PAGE: u32 = 1_000;
/// Responses queued for a subscriber beyond what HTTP/2 flow control holds:
/// enough to keep the connection busy while the next page is read, and the
/// bound on what a slow subscriber costs in memory.
const SUBSCRIPTION_BUFFER: usize = 1_024;

/// `rapport.v1.EventLogService`.
pub struct EventLog {
    pub state: AppState,
    /// One permit per open subscription.
    pub subscriptions: Arc<Semaphore>,
    pub max_subscriptions: usize,
    /// Turns true when the server starts shutting down: subscriptions end.
    pub stopping: watch::Receiver<bool>,
}

type SubscriptionStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SubscribeEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EventLogService for EventLog {
    async fn read_events(
        &self,
        request: Request<pb::ReadEventsRequest>,
    ) -> Result<Response<pb::ReadEventsResponse>, Status> {
        let query = event_query(request.into_inner())?;
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

    type SubscribeEventsStream = SubscriptionStream;

    async fn subscribe_events(
        &self,
        request: Request<pb::SubscribeEventsRequest>,
    ) -> Result<Response<SubscriptionStream>, Status> {
        let request = request.into_inner();
        let query = EventQuery {
            after: request.after_position,
            limit: SUBSCRIPTION_PAGE,
            ..filters(request.community_id, &request.event_types, request.channels)?
        };
        let ready = self.state.ready()?;
        let permit = Arc::clone(&self.subscriptions)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManySubscriptions {
                limit: self.max_subscriptions,
            })?;
        let follower = Follower::new(
            ready.store.clone(),
            ready.writer.feed(),
            query,
            CHECKPOINT_EVERY,
        );
        let (responses, stream) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_subscription(follower, responses, stopping).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }
}

/// Feeds one subscriber until it goes away, the database fails, or the
/// server shuts down. Waiting on a full `responses` is the backpressure: the
/// follower is not pulled meanwhile and reads the log when it resumes.
async fn serve_subscription(
    mut follower: Follower,
    responses: mpsc::Sender<Result<pb::SubscribeEventsResponse, Status>>,
    mut stopping: watch::Receiver<bool>,
) {
    // Everything matching up to here is queued for the subscriber.
    let mut queued = follower.position();
    loop {
        let next = tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => break,
            () = responses.closed() => return,
            next = follower.next() => next,
        };
        let item = match next {
            Ok(Followed::Event(event)) => Item::Event(event_out(event)),
            Ok(Followed::Checkpoint(position)) => Item::Checkpoint(pb::Checkpoint { position }),
            Err(error) => {
                let _ = responses.send(Err(ApiError::from(error).into())).await;
                return;
            }
        };
        let response = pb::SubscribeEventsResponse { item: Some(item) };
        tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => break,
            sent = responses.send(Ok(response)) => match sent {
                Ok(()) => queued = follower.position(),
                Err(_) => return, // the subscriber went away
            },
        }
    }
    // Shutting down: say where to resume, then end the stream with a status
    // the client can act on, instead of cutting the connection.
    let checkpoint = pb::SubscribeEventsResponse {
        item: Some(Item::Checkpoint(pb::Checkpoint { position: queued })),
    };
    if responses.send(Ok(checkpoint)).await.is_ok() {
        let _ = responses
            .send(Err(ApiError::ShuttingDown {
                resume_after: queued,
            }
            .into()))
            .await;
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
fn filters(
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
