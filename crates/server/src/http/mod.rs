//! The HTTP/JSON front end: exactly the paths etcd 3.4/3.5's grpc-gateway serves under
//! `/v3/` (with `/v3beta/` and `/v3alpha/` rewritten to `/v3/`), plus `/version` and
//! `/health`. Request bodies are proto3 JSON; responses and errors are byte-compatible with
//! etcd's gateway; every error body is JSON.

mod body;
mod cluster;
mod errors;
mod lean;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use etcdgate_proto::etcdserverpb::{LeaseKeepAliveRequest, SnapshotRequest, WatchRequest};
use etcdgate_proto::v3electionpb::LeaderRequest;
use futures::StreamExt;
use http::{HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
use tonic::{Code, Status};

use crate::context::CallContext;
use etcdgate_upstream::member_http::MemberHttpClient;
use crate::gateway::{Gateway, ResponseStream};
use crate::rpc::{self, UnaryRpc};
pub use errors::ErrorStyle;
pub use lean::{chunked, LeanServer};
pub use stream::flush_each_message;

/// Limits on what an HTTP client may send.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Largest request body, in bytes (JSON with base64 values is larger than the message).
    pub max_body_bytes: usize,
    /// How long a unary request body may take to arrive.
    pub body_timeout: Duration,
}

pub struct HttpState {
    gateway: Arc<Gateway>,
    errors: Arc<ErrorStyle>,
    member_http: MemberHttpClient,
    limits: HttpLimits,
}

/// The JSON gateway's routes.
pub fn router(gateway: Arc<Gateway>, errors: Arc<ErrorStyle>, limits: HttpLimits) -> Router {
    let member_http = MemberHttpClient::new(gateway.pool().options().tls.as_ref());
    let state = Arc::new(HttpState { gateway, errors, member_http, limits });
    Router::new()
        .route("/version", get(cluster::version))
        .route("/health", get(cluster::health))
        .route("/metrics", get(crate::metrics::endpoint))
        .route("/v3/kv/range", post(unary::<rpc::Range>))
        .route("/v3/kv/put", post(unary::<rpc::Put>))
        .route("/v3/kv/deleterange", post(unary::<rpc::DeleteRange>))
        .route("/v3/kv/txn", post(unary::<rpc::Txn>))
        .route("/v3/kv/compaction", post(unary::<rpc::Compact>))
        .route("/v3/watch", post(watch))
        .route("/v3/lease/grant", post(unary::<rpc::LeaseGrant>))
        .route("/v3/lease/revoke", post(unary::<rpc::LeaseRevoke>))
        .route("/v3/kv/lease/revoke", post(unary::<rpc::LeaseRevoke>))
        .route("/v3/lease/keepalive", post(lease_keep_alive))
        .route("/v3/lease/timetolive", post(unary::<rpc::LeaseTimeToLive>))
        .route("/v3/kv/lease/timetolive", post(unary::<rpc::LeaseTimeToLive>))
        .route("/v3/lease/leases", post(unary::<rpc::LeaseLeases>))
        .route("/v3/kv/lease/leases", post(unary::<rpc::LeaseLeases>))
        .route("/v3/cluster/member/add", post(unary::<rpc::MemberAdd>))
        .route("/v3/cluster/member/remove", post(unary::<rpc::MemberRemove>))
        .route("/v3/cluster/member/update", post(unary::<rpc::MemberUpdate>))
        .route("/v3/cluster/member/list", post(unary::<rpc::MemberList>))
        .route("/v3/cluster/member/promote", post(unary::<rpc::MemberPromote>))
        .route("/v3/maintenance/alarm", post(unary::<rpc::Alarm>))
        .route("/v3/maintenance/status", post(unary::<rpc::Status>))
        .route("/v3/maintenance/defragment", post(unary::<rpc::Defragment>))
        .route("/v3/maintenance/hash", post(unary::<rpc::Hash>))
        .route("/v3/maintenance/hashkv", post(unary::<rpc::HashKv>))
        .route("/v3/maintenance/snapshot", post(snapshot))
        .route("/v3/maintenance/transfer-leadership", post(unary::<rpc::MoveLeader>))
        .route("/v3/maintenance/downgrade", post(unary::<rpc::Downgrade>))
        .route("/v3/auth/enable", post(unary::<rpc::AuthEnable>))
        .route("/v3/auth/disable", post(unary::<rpc::AuthDisable>))
        .route("/v3/auth/status", post(unary::<rpc::AuthStatus>))
        .route("/v3/auth/authenticate", post(unary::<rpc::Authenticate>))
        .route("/v3/auth/user/add", post(unary::<rpc::UserAdd>))
        .route("/v3/auth/user/get", post(unary::<rpc::UserGet>))
        .route("/v3/auth/user/list", post(unary::<rpc::UserList>))
        .route("/v3/auth/user/delete", post(unary::<rpc::UserDelete>))
        .route("/v3/auth/user/changepw", post(unary::<rpc::UserChangePassword>))
        .route("/v3/auth/user/grant", post(unary::<rpc::UserGrantRole>))
        .route("/v3/auth/user/revoke", post(unary::<rpc::UserRevokeRole>))
        .route("/v3/auth/role/add", post(unary::<rpc::RoleAdd>))
        .route("/v3/auth/role/get", post(unary::<rpc::RoleGet>))
        .route("/v3/auth/role/list", post(unary::<rpc::RoleList>))
        .route("/v3/auth/role/delete", post(unary::<rpc::RoleDelete>))
        .route("/v3/auth/role/grant", post(unary::<rpc::RoleGrantPermission>))
        .route("/v3/auth/role/revoke", post(unary::<rpc::RoleRevokePermission>))
        .route("/v3/lock/lock", post(unary::<rpc::Lock>))
        .route("/v3/lock/unlock", post(unary::<rpc::Unlock>))
        .route("/v3/election/campaign", post(unary::<rpc::Campaign>))
        .route("/v3/election/proclaim", post(unary::<rpc::Proclaim>))
        .route("/v3/election/leader", post(unary::<rpc::Leader>))
        .route("/v3/election/observe", post(observe))
        .route("/v3/election/resign", post(unary::<rpc::Resign>))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn(cors))
}

/// etcd serves every HTTP response with permissive CORS headers (its `--cors` default `*`)
/// and answers `OPTIONS` preflights with an empty 200; so does etcdgate.
async fn cors(request: Request, next: axum::middleware::Next) -> Response {
    let mut response = if request.method() == http::Method::OPTIONS { Response::new(Body::empty()) } else { next.run(request).await };
    let headers = response.headers_mut();
    headers.insert("access-control-allow-headers", HeaderValue::from_static("accept, content-type, authorization"));
    headers.insert("access-control-allow-methods", HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"));
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    response
}

/// `/v3beta/...` and `/v3alpha/...` are served as `/v3/...`, as older clients expect.
pub fn rewrite_legacy_prefix<B>(mut request: http::Request<B>) -> http::Request<B> {
    let path = request.uri().path();
    let rest = path.strip_prefix("/v3beta/").or_else(|| path.strip_prefix("/v3alpha/"));
    if let Some(rest) = rest {
        let mut target = format!("/v3/{rest}");
        if let Some(query) = request.uri().query() {
            target.push('?');
            target.push_str(query);
        }
        if let Ok(uri) = target.parse() {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// Unknown paths: a JSON 404 (etcd answers in plain text; we never do).
pub async fn not_found() -> Response {
    errors::json_response(StatusCode::NOT_FOUND, br#"{"error":"Not Found","code":5,"message":"Not Found"}"#.to_vec())
}

async fn method_not_allowed() -> Response {
    errors::json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        br#"{"error":"Method Not Allowed","code":12,"message":"Method Not Allowed"}"#.to_vec(),
    )
}

/// A unary call's answer: a message to encode, or JSON the watch cache already encoded.
enum Answer<T> {
    Message(T),
    Encoded(bytes::Bytes),
}

async fn unary<R: UnaryRpc>(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let result = async {
        let bytes = body::read_all(body, state.limits.max_body_bytes, state.limits.body_timeout).await?;
        let message: R::Req = body::decode_one(&bytes)?;
        let ctx = CallContext::from_http(&parts.headers, &parts.extensions);
        // A Range the cache answers comes already encoded; anything else (a cache miss
        // included) goes to a member.
        if let Some(range) = R::as_range(&message) {
            if let Some(json) = state.gateway.cached_range_json(&ctx, range).await {
                return Ok(Answer::Encoded(json));
            }
        }
        state.gateway.forwarded::<R>(&ctx, message).await.map(Answer::Message)
    }
    .await;
    match result {
        Ok(Answer::Message(response)) => errors::json_response(StatusCode::OK, serde_json::to_vec(&response).unwrap_or_default()),
        Ok(Answer::Encoded(json)) => errors::json_response(StatusCode::OK, json),
        Err(status) => state.errors.response(&status),
    }
}

/// A unary request body opening a server stream (snapshot, observe).
async fn single_message<T: DeserializeOwned + Default>(state: &HttpState, body: Body) -> Result<T, Status> {
    let bytes = body::read_all(body, state.limits.max_body_bytes, state.limits.body_timeout).await?;
    body::decode_one(&bytes)
}

async fn snapshot(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if let Err(status) = single_message::<SnapshotRequest>(&state, body).await {
        return state.errors.response(&status);
    }
    stream_or_error(&state, state.gateway.snapshot(&CallContext::from_http(&parts.headers, &parts.extensions)).await)
}

async fn observe(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let message = match single_message::<LeaderRequest>(&state, body).await {
        Ok(message) => message,
        Err(status) => return state.errors.response(&status),
    };
    stream_or_error(&state, state.gateway.observe(&CallContext::from_http(&parts.headers, &parts.extensions), message).await)
}

async fn watch(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let ctx = CallContext::from_http(request.headers(), request.extensions());
    // A watch stream without a request would never answer (etcd's gateway hangs on it).
    let if_empty = Some("etcdgate: no watch request in the body");
    bidi::<WatchRequest, _, _>(state.clone(), request.into_body(), if_empty, |input| async move { state.gateway.watch(&ctx, input).await })
        .await
}

async fn lease_keep_alive(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let ctx = CallContext::from_http(request.headers(), request.extensions());
    bidi::<LeaseKeepAliveRequest, _, _>(state.clone(), request.into_body(), None, |input| async move {
        state.gateway.lease_keep_alive(&ctx, input).await
    })
    .await
}

/// A bidirectional stream over HTTP: the body is a sequence of JSON messages. A bad first
/// message fails the request as etcd does (500, code 2); a bad later one ends the input
/// there, as if the body had ended (etcd's gateway stops reading it and half-closes the
/// stream: a watch goes on, a keepalive stream ends after its last answer). The first
/// message must arrive within the body timeout; a body without any fails with `if_empty`
/// when given.
async fn bidi<Req, Resp, Open>(
    state: Arc<HttpState>,
    body: Body,
    if_empty: Option<&'static str>,
    open: impl FnOnce(futures::stream::BoxStream<'static, Req>) -> Open,
) -> Response
where
    Req: DeserializeOwned + Send + 'static,
    Resp: serde::Serialize + Send + 'static,
    Open: std::future::Future<Output = Result<ResponseStream<Resp>, Status>>,
{
    // Fused: the rest of the stream is polled again after an empty body already ended it.
    let mut messages = Box::pin(body::decode_stream::<Req>(body, state.limits.max_body_bytes).fuse());
    let first = match tokio::time::timeout(state.limits.body_timeout, messages.next()).await {
        Err(_) => return state.errors.response(&body::timed_out(state.limits.body_timeout)),
        // etcd's gateway passes an oversize message on and gRPC refuses it: a stream error.
        Ok(Some(Err(status))) if status.code() == Code::ResourceExhausted => return state.errors.stream_response(&status),
        Ok(Some(Err(status))) => return state.errors.response(&status),
        Ok(first) => first,
    };
    if let (None, Some(message)) = (&first, if_empty) {
        return state.errors.response(&Status::invalid_argument(message));
    }
    let rest = messages.scan((), |_, item| {
        futures::future::ready(match item {
            Ok(message) => Some(message),
            Err(status) => {
                tracing::debug!(error = %status.message(), "bad message in HTTP stream; input ends here");
                None
            }
        })
    });
    let input = futures::stream::iter(first.and_then(Result::ok)).chain(rest).boxed();
    stream_or_error(&state, open(input).await)
}

/// The response of a streaming call; one that failed before its first message is answered
/// as etcd's gateway does, with the stream's error line.
fn stream_or_error<T: serde::Serialize + Send + 'static>(state: &HttpState, result: Result<ResponseStream<T>, Status>) -> Response {
    match result {
        Ok(responses) => stream::respond(responses),
        Err(status) => state.errors.stream_response(&status),
    }
}
