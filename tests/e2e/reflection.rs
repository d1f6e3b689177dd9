//! Server reflection answers on v1 as well as v1alpha (which grpcurl 1.8 uses,
//! see grpcurl.rs), and lists every service.

use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::app::{Backend, TestApp, spawn_app};

/// The services reflection v1 lists, asked without a token.
pub async fn list_services(app: &TestApp) -> Vec<String> {
    let mut client = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}")
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test]
async fn reflection_v1_lists_every_service() {
    let Some(app) = spawn_app(Backend::Sqlite, "reflection_v1").await else {
        return;
    };
    let names = list_services(&app).await;
    for expected in [
        "rapport.v1.InteractionService",
        "rapport.v1.EventLogService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}
