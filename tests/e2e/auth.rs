//! Bearer tokens: every RPC against every scope and community, no data
//! across communities, reloading the tokens file, TLS.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rapport_proto::v1 as pb;
use tonic::{Code, Request};

use crate::app::{Backend, TestApp, fresh_database, start};
use crate::ingest::interaction;
use crate::on_both_backends;

/// A tokens file in a fresh temporary directory: `(token, name, scopes,
/// communities)` per entry.
pub struct TokensFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TokensFile {
    pub fn new(entries: &[(&str, &str, &[&str], &[&str])]) -> TokensFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let file = TokensFile { _dir: dir, path };
        file.write(entries);
        file
    }

    pub fn write(&self, entries: &[(&str, &str, &[&str], &[&str])]) {
        let mut text = String::new();
        for (token, name, scopes, communities) in entries {
            text.push_str(&format!(
                "[[tokens]]\nname = {name:?}\nsha256 = {:?}\nscopes = {scopes:?}\ncommunities = {communities:?}\n\n",
                rapport_auth::hash_token(token)
            ));
        }
        // Write then rename, as a secret mount swaps its content at once.
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, &self.path).unwrap();
    }
}

/// Starts the server with `tokens`, waits for SERVING.
pub async fn spawn_with_tokens(
    backend: Backend,
    test: &str,
    tokens: &TokensFile,
) -> Option<TestApp> {
    let db = fresh_database(backend, test).await?;
    let app = start(db, &["--tokens-file", tokens.path.to_str().unwrap()]).await;
    app.wait_serving().await;
    Some(app)
}

/// `message` with `authorization: Bearer <token>` when a token is given.
pub fn authed<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rpc {
    RecordInteraction,
    RecordInteractions,
    ReadEvents,
    SubscribeEvents,
    GetTimeline,
    GetRelationship,
    ListConnections,
    GetAdvocateScore,
    ListAdvocates,
    GetScoringPolicy,
    SetScoringPolicy,
    PreviewScoringPolicy,
    SetMemberRole,
    ListProjections,
    RebuildProjection,
    GetMember,
    FindMember,
    LinkIdentity,
    UnlinkIdentity,
    MemberSetMemberRole,
    EraseMember,
    ExportMember,
    ListMergeSuggestions,
    RejectMergeSuggestion,
}

/// Every RPC of the API (auth.rs's unit test checks that the server knows a
/// scope for every method of the descriptor set; this list is checked
/// against it by count).
const EVERY_RPC: [Rpc; 24] = [
    Rpc::RecordInteraction,
    Rpc::RecordInteractions,
    Rpc::ReadEvents,
    Rpc::SubscribeEvents,
    Rpc::GetTimeline,
    Rpc::GetRelationship,
    Rpc::ListConnections,
    Rpc::GetAdvocateScore,
    Rpc::ListAdvocates,
    Rpc::GetScoringPolicy,
    Rpc::SetScoringPolicy,
    Rpc::PreviewScoringPolicy,
    Rpc::SetMemberRole,
    Rpc::ListProjections,
    Rpc::RebuildProjection,
    Rpc::GetMember,
    Rpc::FindMember,
    Rpc::LinkIdentity,
    Rpc::UnlinkIdentity,
    Rpc::MemberSetMemberRole,
    Rpc::EraseMember,
    Rpc::ExportMember,
    Rpc::ListMergeSuggestions,
    Rpc::RejectMergeSuggestion,
];

impl Rpc {
    /// The scope the API documents for it (docs/operations.md).
    fn scope(self) -> &'static str {
        use Rpc::*;
        match self {
            RecordInteraction | RecordInteractions => "ingest",
            SetScoringPolicy
            | SetMemberRole
            | ListProjections
            | RebuildProjection
            | LinkIdentity
            | UnlinkIdentity
            | MemberSetMemberRole
            | EraseMember
            | ExportMember
            | RejectMergeSuggestion => "admin",
            _ => "read",
        }
    }

    /// Calls that span every community need a `*` token.
    fn spans_all_communities(self) -> bool {
        matches!(self, Rpc::ListProjections | Rpc::RebuildProjection)
    }

    /// The status code of one call on `community` with `token`.
    async fn call(self, app: &TestApp, token: Option<&str>, community: &str) -> Code {
        let c = community.to_owned();
        let member = || {
            Some(pb::Identity {
                channel: "forum".into(),
                handle: "ana".into(),
            })
        };
        let members = || async {
            rapport_proto::v1::member_service_client::MemberServiceClient::new(app.channel().await)
        };
        let result = match self {
            Rpc::RecordInteraction => {
                let interaction = pb::Interaction {
                    community_id: c,
                    ..interaction("auth-1", "ana")
                };
                app.interactions()
                    .await
                    .record_interaction(authed(
                        pb::RecordInteractionRequest {
                            interaction: Some(interaction),
                        },
                        token,
                    ))
                    .await
                    .map(|_| ())
            }
            Rpc::RecordInteractions => {
                let interaction = pb::Interaction {
                    community_id: c,
                    ..interaction("auth-2", "ana")
                };
                app.interactions()
                    .await
                    .record_interactions(authed(
                        pb::RecordInteractionsRequest {
                            interactions: vec![interaction],
                        },
                        token,
                    ))
                    .await
                    .map(|_| ())
            }
            Rpc::ReadEvents => app
                .event_log()
                .await
                .read_events(authed(
                    pb::ReadEventsRequest {
                        community_id: c,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::SubscribeEvents => app
                .event_log()
                .await
                .subscribe_events(authed(
                    pb::SubscribeEventsRequest {
                        community_id: c,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::GetTimeline => app
                .timelines()
                .await
                .get_timeline(authed(
                    pb::GetTimelineRequest {
                        community_id: c,
                        identity: member(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::GetRelationship => app
                .timelines()
                .await
                .get_relationship(authed(
                    pb::GetRelationshipRequest {
                        community_id: c,
                        identity: member(),
                        other_member_id: "m-other".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::ListConnections => app
                .timelines()
                .await
                .list_connections(authed(
                    pb::ListConnectionsRequest {
                        community_id: c,
                        identity: member(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::GetAdvocateScore => app
                .advocacy()
                .await
                .get_advocate_score(authed(
                    pb::GetAdvocateScoreRequest {
                        community_id: c,
                        identity: member(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::ListAdvocates => app
                .advocacy()
                .await
                .list_advocates(authed(
                    pb::ListAdvocatesRequest {
                        community_id: c,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::GetScoringPolicy => app
                .advocacy()
                .await
                .get_scoring_policy(authed(
                    pb::GetScoringPolicyRequest {
                        community_id: c,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::SetScoringPolicy => app
                .advocacy()
                .await
                .set_scoring_policy(authed(
                    pb::SetScoringPolicyRequest {
                        community_id: c,
                        policy: None,
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::PreviewScoringPolicy => app
                .advocacy()
                .await
                .preview_scoring_policy(authed(
                    pb::PreviewScoringPolicyRequest {
                        community_id: c,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::SetMemberRole => app
                .advocacy()
                .await
                .set_member_role(authed(
                    pb::SetMemberRoleRequest {
                        community_id: c,
                        member_id: "m-nobody".into(),
                        role: pb::MemberRole::Staff as i32,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::ListProjections => app
                .admin()
                .await
                .list_projections(authed(pb::ListProjectionsRequest {}, token))
                .await
                .map(|_| ()),
            Rpc::RebuildProjection => app
                .admin()
                .await
                .rebuild_projection(authed(
                    pb::RebuildProjectionRequest {
                        name: "no-such-projection".into(),
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::GetMember => members()
                .await
                .get_member(authed(
                    pb::GetMemberRequest {
                        community_id: community.to_owned(),
                        member_id: "m-nobody".into(),
                        min_position: 0,
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::FindMember => members()
                .await
                .find_member(authed(
                    pb::FindMemberRequest {
                        community_id: community.to_owned(),
                        email: "ana@example.org".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::LinkIdentity => members()
                .await
                .link_identity(authed(
                    pb::LinkIdentityRequest {
                        community_id: community.to_owned(),
                        member_id: "m-nobody".into(),
                        email: "ana@example.org".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::UnlinkIdentity => members()
                .await
                .unlink_identity(authed(
                    pb::UnlinkIdentityRequest {
                        community_id: community.to_owned(),
                        member_id: "m-nobody".into(),
                        email: "ana@example.org".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::ListMergeSuggestions => members()
                .await
                .list_merge_suggestions(authed(
                    pb::ListMergeSuggestionsRequest {
                        community_id: community.to_owned(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::RejectMergeSuggestion => members()
                .await
                .reject_merge_suggestion(authed(
                    pb::RejectMergeSuggestionRequest {
                        community_id: community.to_owned(),
                        member_id: "m-nobody".into(),
                        other_member_id: "m-other".into(),
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::ExportMember => members()
                .await
                .export_member(authed(
                    pb::ExportMemberRequest {
                        community_id: community.to_owned(),
                        member_id: "m-nobody".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::EraseMember => members()
                .await
                .erase_member(authed(
                    pb::EraseMemberRequest {
                        community_id: community.to_owned(),
                        member_id: "m-nobody".into(),
                        reason: "ticket 1".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            Rpc::MemberSetMemberRole => members()
                .await
                .set_member_role(authed(
                    pb::SetMemberRoleRequest {
                        community_id: community.to_owned(),
                        member_id: "m-nobody".into(),
                        role: pb::MemberRole::Bot as i32,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => Code::Ok,
            Err(status) => status.code(),
        }
    }
}

const INGEST: &str = "tok-ingest-acme";
const READ: &str = "tok-read-acme";
const ADMIN: &str = "tok-admin-acme";
const ALL_ACME: &str = "tok-all-acme";
const ALL_STAR: &str = "tok-all-star";

fn table_tokens() -> TokensFile {
    TokensFile::new(&[
        (INGEST, "ingest-acme", &["ingest"], &["acme"]),
        (READ, "read-acme", &["read"], &["acme"]),
        (ADMIN, "admin-acme", &["admin"], &["acme"]),
        (
            ALL_ACME,
            "all-acme",
            &["ingest", "read", "admin"],
            &["acme"],
        ),
        (ALL_STAR, "all-star", &["ingest", "read", "admin"], &["*"]),
    ])
}

on_both_backends!(
    every_rpc_checks_its_token_scope_and_community,
    no_rpc_shows_one_community_to_another,
    a_changed_tokens_file_takes_effect_without_a_restart,
);

async fn every_rpc_checks_its_token_scope_and_community(backend: Backend) {
    let tokens = table_tokens();
    let Some(app) = spawn_with_tokens(backend, "auth_table", &tokens).await else {
        return;
    };
    let denied = |code: Code| matches!(code, Code::Unauthenticated | Code::PermissionDenied);
    let mut checked = 0;
    for rpc in EVERY_RPC {
        let expect = |token: Option<&str>, community: &str, want: Option<Code>| {
            let token = token.map(str::to_owned);
            let community = community.to_owned();
            let app = &app;
            async move {
                let got = rpc.call(app, token.as_deref(), &community).await;
                match want {
                    Some(code) => assert_eq!(got, code, "{rpc:?} with {token:?} on {community:?}"),
                    None => assert!(
                        !denied(got),
                        "{rpc:?} with {token:?} on {community:?} should be allowed, got {got:?}"
                    ),
                }
            }
        };
        expect(None, "acme", Some(Code::Unauthenticated)).await;
        expect(Some("not-a-token"), "acme", Some(Code::Unauthenticated)).await;
        for (token, scope) in [(INGEST, "ingest"), (READ, "read"), (ADMIN, "admin")] {
            let allowed = scope == rpc.scope() && !rpc.spans_all_communities();
            let want = (!allowed).then_some(Code::PermissionDenied);
            expect(Some(token), "acme", want).await;
        }
        // Every scope, but another community.
        expect(Some(ALL_ACME), "globex", Some(Code::PermissionDenied)).await;
        // Every scope, every community.
        expect(Some(ALL_STAR), "globex", None).await;
        checked += 1;
    }
    assert_eq!(checked, EVERY_RPC.len());

    // Health and reflection need no token.
    assert_eq!(
        app.health("rapport.v1.InteractionService").await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let services = crate::reflection::list_services(&app).await;
    assert!(
        services
            .iter()
            .any(|s| s == "rapport.v1.InteractionService"),
        "{services:?}"
    );
    // The whole log is every community's.
    let status = app
        .event_log()
        .await
        .read_events(authed(pb::ReadEventsRequest::default(), Some(READ)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("every community"),
        "{}",
        status.message()
    );
    // A malformed header is UNAUTHENTICATED too, and says what is expected.
    let mut request = Request::new(pb::ReadEventsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    let status = app
        .event_log()
        .await
        .read_events(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("Bearer"), "{}", status.message());
}

/// With a token for `acme` only, nothing of `globex` shows: not its events,
/// not its members (even by id or by a handle both communities share), not
/// in rankings, not in a subscription.
async fn no_rpc_shows_one_community_to_another(backend: Backend) {
    let tokens = table_tokens();
    let Some(app) = spawn_with_tokens(backend, "auth_leak", &tokens).await else {
        return;
    };
    let mut interactions = app.interactions().await;
    let mut record = async |community: &str, id: &str, handle: &str| {
        interactions
            .record_interaction(authed(
                pb::RecordInteractionRequest {
                    interaction: Some(pb::Interaction {
                        community_id: community.into(),
                        ..interaction(id, handle)
                    }),
                },
                Some(ALL_STAR),
            ))
            .await
            .unwrap()
            .into_inner()
    };
    let acme_ana = record("acme", "a-1", "ana").await;
    let globex_ana = record("globex", "g-1", "ana").await;
    let globex_bob = record("globex", "g-2", "bob").await;
    assert_ne!(acme_ana.member_id, globex_ana.member_id);
    let head = globex_bob.position;

    let token = Some(ALL_ACME);
    let events = app
        .event_log()
        .await
        .read_events(authed(
            pb::ReadEventsRequest {
                community_id: "acme".into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| e.community_id == "acme"),
        "{events:?}"
    );

    // A subscription sees acme's events and checkpoints past globex's.
    let mut stream = app
        .event_log()
        .await
        .subscribe_events(authed(
            pb::SubscribeEventsRequest {
                community_id: "acme".into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a checkpoint within a second or so")
            .unwrap()
            .expect("the stream stays open");
        match item.item.unwrap() {
            pb::subscribe_events_response::Item::Event(e) => assert_eq!(e.community_id, "acme"),
            pb::subscribe_events_response::Item::Checkpoint(c) if c.position >= head => break,
            pb::subscribe_events_response::Item::Checkpoint(_) => {}
        }
    }

    // globex's member ids are not found through acme.
    let not_found = |result: Result<(), tonic::Status>| {
        assert_eq!(result.unwrap_err().code(), Code::NotFound);
    };
    for member_id in [&globex_ana.member_id, &globex_bob.member_id] {
        not_found(
            app.timelines()
                .await
                .get_timeline(authed(
                    pb::GetTimelineRequest {
                        community_id: "acme".into(),
                        member_id: member_id.clone(),
                        min_position: head,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        );
        not_found(
            app.advocacy()
                .await
                .get_advocate_score(authed(
                    pb::GetAdvocateScoreRequest {
                        community_id: "acme".into(),
                        member_id: member_id.clone(),
                        min_position: head,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        );
        not_found(
            app.timelines()
                .await
                .get_relationship(authed(
                    pb::GetRelationshipRequest {
                        community_id: "acme".into(),
                        member_id: acme_ana.member_id.clone(),
                        other_member_id: member_id.clone(),
                        min_position: head,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        );
        not_found(
            rapport_proto::v1::member_service_client::MemberServiceClient::new(app.channel().await)
                .get_member(authed(
                    pb::GetMemberRequest {
                        community_id: "acme".into(),
                        member_id: member_id.clone(),
                        min_position: head,
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        );
        not_found(
            app.advocacy()
                .await
                .set_member_role(authed(
                    pb::SetMemberRoleRequest {
                        community_id: "acme".into(),
                        member_id: member_id.clone(),
                        role: pb::MemberRole::Bot as i32,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        );
    }
    // The handle both share resolves to acme's member only.
    let timeline = app
        .timelines()
        .await
        .get_timeline(authed(
            pb::GetTimelineRequest {
                community_id: "acme".into(),
                identity: Some(pb::Identity {
                    channel: "forum".into(),
                    handle: "ana".into(),
                }),
                min_position: head,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        timeline
            .entries
            .iter()
            .all(|e| e.position != globex_ana.position)
    );
    assert!(
        timeline
            .entries
            .iter()
            .any(|e| e.position == acme_ana.position)
    );
    // Rankings list acme's members only.
    let ranked = app
        .advocacy()
        .await
        .list_advocates(authed(
            pb::ListAdvocatesRequest {
                community_id: "acme".into(),
                min_position: head,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = ranked
        .members
        .iter()
        .map(|a| a.member_id.as_str())
        .collect();
    assert_eq!(ids, [acme_ana.member_id.as_str()]);
}

async fn a_changed_tokens_file_takes_effect_without_a_restart(backend: Backend) {
    let tokens = TokensFile::new(&[("old-token", "old", &["read"], &["acme"])]);
    let Some(app) = spawn_with_tokens(backend, "auth_reload", &tokens).await else {
        return;
    };
    let code = |token: &'static str| {
        let app = &app;
        async move { Rpc::ListAdvocates.call(app, Some(token), "acme").await }
    };
    assert_eq!(code("old-token").await, Code::Ok);
    assert_eq!(code("new-token").await, Code::Unauthenticated);

    tokens.write(&[("new-token", "new", &["read"], &["acme"])]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while code("new-token").await != Code::Ok {
        assert!(Instant::now() < deadline, "the new token never worked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(code("old-token").await, Code::Unauthenticated);

    // A broken edit keeps the tokens in force rather than locking everyone out.
    std::fs::write(&tokens.path, "[[tokens]]\nname = \"oops\"\n").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(code("new-token").await, Code::Ok);
    let log = app.log.lock().unwrap().join("\n");
    assert!(
        log.contains("tokens file is invalid; keeping the previous tokens"),
        "{log}"
    );
}

/// `--tls-cert`/`--tls-key`: gRPC over TLS, which a client trusting the
/// certificate can call and a plaintext client cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_certificate() {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let db = fresh_database(Backend::Sqlite, "tls").await.unwrap();
    let app = start(
        db,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(certified.cert.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a TLS connection");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest::default())
            .await
            .expect("health over TLS")
            .into_inner()
            .status();
        if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
            break;
        }
        assert!(Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let plaintext = async {
        let channel = Channel::from_shared(app.url()).unwrap().connect().await?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map_err(Into::into)
    };
    let result: Result<_, Box<dyn std::error::Error>> = plaintext.await;
    assert!(result.is_err(), "a plaintext client gets nothing");
}

/// Without a tokens file the server is open, so it listens on loopback only,
/// whatever address it was given, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_server_listens_on_loopback_only_and_warns() {
    let db = fresh_database(Backend::Sqlite, "open_loopback")
        .await
        .unwrap();
    let app = start(db, &["--listen", "0.0.0.0:0"]).await;
    assert!(app.addr.ip().is_loopback(), "listening on {}", app.addr);
    app.wait_serving().await;
    let log = app.log.lock().unwrap().join("\n");
    assert!(log.contains("no --tokens-file"), "{log}");
}
