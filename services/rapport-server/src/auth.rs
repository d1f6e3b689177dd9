//! Authentication and authorization of every gRPC call.
//!
//! Two steps, because the community a call touches is inside its message:
//!
//! 1. [`AuthLayer`], in front of every service, reads the bearer token,
//!    finds its [`Principal`] in the tokens file, checks the method's scope
//!    ([`access`]) and hands the principal to the handler as a request
//!    extension. Health and reflection stay open.
//! 2. Each handler, once it has the message, checks the communities it
//!    touches with a [`Guard`].
//!
//! Without a tokens file there is no principal and both steps let everything
//! through; the server then listens on loopback only (see `main.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rapport_auth::{Principal, Scope, TokenSet, bearer_token};
use tonic::codegen::{BoxFuture, Service, http};
use tracing::{error, info};

use crate::error::ApiError;

/// Who may call what: what a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health checks and reflection: no token.
    Open,
    /// A token with this scope.
    Scope(Scope),
    /// Not a method of ours: any valid token, then the router answers
    /// UNIMPLEMENTED (so probing for methods needs a token too).
    Unknown,
}

/// The access each gRPC method path needs.
pub fn access(path: &str) -> Access {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Access::Unknown;
    };
    match (service, method) {
        (
            "grpc.health.v1.Health"
            | "grpc.reflection.v1.ServerReflection"
            | "grpc.reflection.v1alpha.ServerReflection",
            _,
        ) => Access::Open,
        ("rapport.v1.InteractionService", "RecordInteraction" | "RecordInteractions") => {
            Access::Scope(Scope::Ingest)
        }
        ("rapport.v1.EventLogService", "ReadEvents" | "SubscribeEvents")
        | ("rapport.v1.TimelineService", "GetTimeline" | "GetRelationship" | "ListConnections")
        | (
            "rapport.v1.AdvocacyService",
            "GetAdvocateScore" | "ListAdvocates" | "GetScoringPolicy" | "PreviewScoringPolicy",
        )
        | ("rapport.v1.MemberService", "GetMember" | "FindMember" | "ListMergeSuggestions") => {
            Access::Scope(Scope::Read)
        }
        ("rapport.v1.AdvocacyService", "SetScoringPolicy" | "SetMemberRole")
        | (
            "rapport.v1.MemberService",
            "LinkIdentity"
            | "UnlinkIdentity"
            | "SetMemberRole"
            | "EraseMember"
            | "ExportMember"
            | "RejectMergeSuggestion"
            | "MergeMembers"
            | "UnmergeMember",
        )
        | ("rapport.v1.AdminService", "ListProjections" | "RebuildProjection") => {
            Access::Scope(Scope::Admin)
        }
        _ => Access::Unknown,
    }
}

/// The authenticated caller, as a request extension.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<Principal>);

/// What a handler checks once it has the message: the communities it
/// touches. Taken from the request before `into_inner`.
pub struct Guard(Option<Arc<Principal>>);

impl Guard {
    pub fn of<T>(request: &tonic::Request<T>) -> Guard {
        Guard(
            request
                .extensions()
                .get::<Caller>()
                .map(|c| Arc::clone(&c.0)),
        )
    }

    /// PERMISSION_DENIED unless the caller may touch `community_id`. An
    /// empty id passes: validation then says it is required, which helps
    /// the caller more.
    pub fn community(&self, community_id: &str) -> Result<(), ApiError> {
        match &self.0 {
            Some(principal) if !community_id.is_empty() => {
                Ok(principal.require_community(community_id)?)
            }
            _ => Ok(()),
        }
    }

    /// PERMISSION_DENIED unless the caller may touch every community.
    pub fn all_communities(&self) -> Result<(), ApiError> {
        match &self.0 {
            Some(principal) => Ok(principal.require_all_communities()?),
            None => Ok(()),
        }
    }

    /// A filter on one community, or on all of them when empty.
    pub fn community_or_all(&self, community_id: &str) -> Result<(), ApiError> {
        if community_id.is_empty() {
            self.all_communities()
        } else {
            self.community(community_id)
        }
    }
}

/// The tokens in force; replaced whole when the file changes.
#[derive(Clone)]
pub struct Tokens(Arc<RwLock<Arc<TokenSet>>>);

impl Tokens {
    /// Reads and parses the tokens file; an unreadable or invalid file is a
    /// start-up error, never an open server.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read tokens file {}: {e}", path.display()))?;
        let set = TokenSet::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Tokens(Arc::new(RwLock::new(Arc::new(set)))))
    }

    fn current(&self) -> Arc<TokenSet> {
        Arc::clone(&self.0.read().expect("tokens lock"))
    }

    /// How many tokens are in force, for logs.
    pub fn count(&self) -> usize {
        self.current().len()
    }

    /// Re-reads `path` every `interval` and swaps the tokens in when its
    /// content changed and parses. Kubernetes updates a mounted secret by
    /// swapping a symlink, so the content is compared, not the mtime. A
    /// broken file keeps the previous tokens: a bad edit must not lock out
    /// every caller.
    pub fn watch(&self, path: PathBuf, interval: Duration) -> tokio::task::JoinHandle<()> {
        let tokens = self.clone();
        tokio::spawn(async move {
            let mut last = tokio::fs::read(&path).await.ok();
            loop {
                tokio::time::sleep(interval).await;
                let Ok(bytes) = tokio::fs::read(&path).await else {
                    continue;
                };
                if last.as_deref() == Some(&bytes[..]) {
                    continue;
                }
                match std::str::from_utf8(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|text| TokenSet::parse(text).map_err(|e| e.to_string()))
                {
                    Ok(set) => {
                        info!(path = %path.display(), tokens = set.len(), "tokens file reloaded");
                        *tokens.0.write().expect("tokens lock") = Arc::new(set);
                    }
                    Err(problem) => error!(
                        path = %path.display(), %problem,
                        "tokens file is invalid; keeping the previous tokens"
                    ),
                }
                last = Some(bytes);
            }
        })
    }
}

/// The tower layer of step 1. `None`: no tokens file, everything open.
#[derive(Clone)]
pub struct AuthLayer(pub Option<Tokens>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            tokens: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    tokens: Option<Tokens>,
}

impl<S, B> Service<http::Request<B>> for Authenticate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(tokens) = &self.tokens {
            match authorize(tokens, &request) {
                Ok(Some(caller)) => {
                    request.extensions_mut().insert(caller);
                }
                Ok(None) => {}
                Err(error) => {
                    let response = tonic::Status::from(error).into_http();
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        Box::pin(self.inner.call(request))
    }
}

fn authorize<B>(tokens: &Tokens, request: &http::Request<B>) -> Result<Option<Caller>, ApiError> {
    let access = access(request.uri().path());
    if access == Access::Open {
        return Ok(None);
    }
    let header =
        request
            .headers()
            .get(http::header::AUTHORIZATION)
            .ok_or(ApiError::Unauthenticated(
                "missing authorization: send `authorization: Bearer <token>` metadata",
            ))?;
    let token = header
        .to_str()
        .ok()
        .and_then(bearer_token)
        .ok_or(ApiError::Unauthenticated(
            "authorization must be `Bearer <token>`",
        ))?;
    let principal = tokens
        .current()
        .authenticate(token)
        .ok_or(ApiError::Unauthenticated("unknown token"))?;
    if let Access::Scope(scope) = access {
        principal.require_scope(scope)?;
    }
    Ok(Some(Caller(principal)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every method of the API has a scope: a new RPC cannot ship open or
    /// reachable by any token by accident.
    #[test]
    fn every_rapport_method_needs_a_scope() {
        let set = prost_types::FileDescriptorSet::decode(rapport_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut methods = 0;
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert!(
                        matches!(access(&path), Access::Scope(_)),
                        "{path} has no scope in auth::access"
                    );
                    methods += 1;
                }
            }
        }
        assert!(methods >= 15, "found only {methods} methods");
    }

    #[test]
    fn health_and_reflection_are_open_and_the_rest_is_not() {
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(access("/grpc.health.v1.Health/Watch"), Access::Open);
        assert_eq!(
            access("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Access::Open
        );
        assert_eq!(access("/rapport.v1.Nope/Get"), Access::Unknown);
        assert_eq!(access("/grpc.health.v1.Healthy/Check"), Access::Unknown);
        assert_eq!(access("nonsense"), Access::Unknown);
        assert_eq!(
            access("/rapport.v1.AdvocacyService/SetScoringPolicy"),
            Access::Scope(Scope::Admin)
        );
    }
}
