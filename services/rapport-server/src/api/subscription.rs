//! `EventLogService.SubscribeEvents`, served by [`EventLogRoutes`] rather
//! than the generated server, so that an event fanned out to many
//! subscribers is encoded once, not once per subscriber.
//!
//! The generated code encodes each response message for each stream. Here a
//! response is its encoded bytes: a live event's bytes come from the feed's
//! chunk, encoded by the first subscriber that needs them and shared by the
//! others (a reference count each); an event read from the log is encoded
//! for its one subscriber. The bytes are exactly what the generated code
//! would send (`SubscribeEventsResponse`), so clients see no difference.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use prost::Message;
use rapport_proto::v1 as pb;
use rapport_proto::v1::event_log_service_server::EventLogServiceServer;
use rapport_proto::v1::subscribe_events_response::Item;
use rapport_store::{EventQuery, Followed, Follower};
use tokio::sync::{Semaphore, mpsc, watch};
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

use super::AppState;
use super::event_log::{EventLog, filters};
use crate::auth::Guard;
use crate::convert::event_out;
use crate::error::ApiError;

/// How often a subscription sends a checkpoint, at least.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Events a subscription reads from the log at a time while catching up.
const PAGE: u32 = 1_000;
/// Responses sent together when they are ready together (a page, a chunk):
/// tonic then writes them as one HTTP/2 frame instead of one frame each.
const BATCH: usize = 64;
/// Batches queued for a subscriber beyond what HTTP/2 flow control holds:
/// enough to keep the connection busy while the next page is read, and the
/// bound (`BATCH * BUFFER` responses) on what a slow subscriber costs.
const BUFFER: usize = 32;
const PATH: &str = "/rapport.v1.EventLogService/SubscribeEvents";

/// What every subscription shares.
pub struct Subscriptions {
    state: AppState,
    /// One permit per open subscription.
    permits: Arc<Semaphore>,
    limit: usize,
    /// Turns true when the server starts shutting down: subscriptions end.
    stopping: watch::Receiver<bool>,
}

/// `rapport.v1.EventLogService`: the generated server for every method but
/// `SubscribeEvents`, which is served here (see the module doc).
#[derive(Clone)]
pub struct EventLogRoutes {
    generated: EventLogServiceServer<EventLog>,
    subscriptions: Arc<Subscriptions>,
    max_request_bytes: usize,
}

impl EventLogRoutes {
    pub fn new(subscriptions: Subscriptions, max_request_bytes: usize) -> Self {
        let generated = EventLogServiceServer::new(EventLog {
            state: subscriptions.state.clone(),
        })
        .max_decoding_message_size(max_request_bytes);
        EventLogRoutes {
            generated,
            subscriptions: Arc::new(subscriptions),
            max_request_bytes,
        }
    }
}

impl NamedService for EventLogRoutes {
    const NAME: &'static str = <EventLogServiceServer<EventLog> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for EventLogRoutes
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != PATH {
            return self.generated.call(request);
        }
        let method = Subscribe(Arc::clone(&self.subscriptions));
        let max_request_bytes = self.max_request_bytes;
        Box::pin(async move {
            let mut grpc = Grpc::new(SubscriptionCodec)
                .apply_max_message_size_config(Some(max_request_bytes), None);
            Ok(grpc.server_streaming(method, request).await)
        })
    }
}

struct Subscribe(Arc<Subscriptions>);

impl ServerStreamingService<pb::SubscribeEventsRequest> for Subscribe {
    type Response = Bytes;
    type ResponseStream = Batches;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<pb::SubscribeEventsRequest>) -> Self::Future {
        let subscriptions = Arc::clone(&self.0);
        Box::pin(async move {
            let guard = Guard::of(&request);
            let request = request.into_inner();
            guard.community_or_all(&request.community_id)?;
            Ok(subscriptions.open(request)?)
        })
    }
}

impl Subscriptions {
    /// At most `limit` open at once; all end when `stopping` turns true.
    pub fn new(state: AppState, limit: usize, stopping: watch::Receiver<bool>) -> Self {
        Subscriptions {
            state,
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            stopping,
        }
    }

    fn open(&self, request: pb::SubscribeEventsRequest) -> Result<Response<Batches>, ApiError> {
        let query = EventQuery {
            after: request.after_position,
            limit: PAGE,
            ..filters(request.community_id, &request.event_types, request.channels)?
        };
        let ready = self.state.ready()?;
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManySubscriptions { limit: self.limit })?;
        let follower = Follower::new(
            ready.store.clone(),
            ready.writer.feed(),
            query,
            CHECKPOINT_EVERY,
        );
        let (responses, stream) = mpsc::channel(BUFFER);
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let _open = Open::new(permit);
            serve(follower, responses, stopping).await;
        });
        Ok(Response::new(Batches {
            queue: stream,
            batch: Vec::new().into_iter(),
        }))
    }
}

/// An open subscription: its permit, counted in `rapport_subscriptions_open`
/// for as long as it is held.
struct Open(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl Open {
    fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Open {
        metrics::gauge!("rapport_subscriptions_open").increment(1.0);
        Open(permit)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("rapport_subscriptions_open").decrement(1.0);
    }
}

/// An event as a `SubscribeEventsResponse`, encoded: what [`Chunk`]s keep
/// for every subscriber.
///
/// [`Chunk`]: rapport_store::Chunk
fn encode_event(event: &rapport_domain::Event) -> Vec<u8> {
    pb::SubscribeEventsResponse {
        item: Some(Item::Event(event_out(event.clone()))),
    }
    .encode_to_vec()
}

fn encode_checkpoint(position: u64) -> Bytes {
    pb::SubscribeEventsResponse {
        item: Some(Item::Checkpoint(pb::Checkpoint { position })),
    }
    .encode_to_vec()
    .into()
}

type Batch = Vec<Result<Bytes, Status>>;

/// Feeds one subscriber until it goes away, the database fails, or the
/// server shuts down. Waiting on a full `responses` is the backpressure: the
/// follower is not pulled meanwhile and reads the log when it resumes.
async fn serve(
    mut follower: Follower,
    responses: mpsc::Sender<Batch>,
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
        let mut batch = Vec::with_capacity(BATCH);
        let mut next = Some(next);
        while let Some(item) = next.take() {
            batch.push(match item {
                Ok(Followed::Event(event)) => Ok(event.encoded(encode_event)),
                Ok(Followed::Checkpoint(position)) => Ok(encode_checkpoint(position)),
                Err(error) => Err(ApiError::from(error).into()),
            });
            if batch.len() < BATCH && batch.last().is_some_and(Result::is_ok) {
                next = follower.try_next().map(Ok);
            }
        }
        let failed = batch.last().is_some_and(Result::is_err);
        tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => break,
            sent = responses.send(batch) => match sent {
                Ok(()) if failed => return,
                Ok(()) => queued = follower.position(),
                Err(_) => return, // the subscriber went away
            },
        }
    }
    // Shutting down: say where to resume, then end the stream with a status
    // the client can act on, instead of cutting the connection.
    let status = ApiError::ShuttingDown {
        resume_after: queued,
    };
    let _ = responses
        .send(vec![Ok(encode_checkpoint(queued)), Err(status.into())])
        .await;
}

/// The response stream: the batches `serve` queues, one response at a time.
/// Responses that are ready together are polled ready together, so tonic
/// encodes them into one buffer and one frame.
pub struct Batches {
    queue: mpsc::Receiver<Batch>,
    batch: std::vec::IntoIter<Result<Bytes, Status>>,
}

impl tokio_stream::Stream for Batches {
    type Item = Result<Bytes, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(response) = self.batch.next() {
                return Poll::Ready(Some(response));
            }
            match self.queue.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.batch = batch.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Decodes the request as the generated code would; encodes a response by
/// copying its bytes, already encoded.
#[derive(Debug, Clone, Copy, Default)]
struct SubscriptionCodec;

impl Codec for SubscriptionCodec {
    type Encode = Bytes;
    type Decode = pb::SubscribeEventsRequest;
    type Encoder = Encoded;
    type Decoder = tonic_prost::ProstDecoder<pb::SubscribeEventsRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        Encoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

#[derive(Debug, Clone, Copy)]
struct Encoded;

impl Encoder for Encoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}
