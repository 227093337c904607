//! Accepting connections: gRPC (HTTP/2) and the JSON gateway (HTTP/1.1 or HTTP/2) on one
//! listener, told apart per request by path and content type, as etcd does on its client port.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use etcdgate_proto::etcdserverpb::StatusRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::context::{CallContext, SeenRevision};
use crate::gateway::Gateway;
use crate::http::{self, ErrorStyle, HttpLimits};
use crate::rpc;

/// How long `serve` waits to learn the cluster's version before it accepts connections.
const VERSION_WAIT: Duration = Duration::from_secs(2);

/// gRPC framing and metadata allowance on top of the request size limit, as etcd adds it.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request a client may send (etcd's `--max-request-bytes`, default 1.5 MiB).
    pub max_request_bytes: usize,
    /// How long a unary HTTP request body may take to arrive.
    pub http_body_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { max_request_bytes: 1536 * 1024, http_body_timeout: Duration::from_secs(10) }
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let errors = Arc::new(ErrorStyle::default());
    let mut learning = tokio::spawn(learn_cluster_version(gateway.clone(), errors.clone()));
    // HTTP errors copy the layout of the etcd version behind: give the first clients the
    // right one, unless the cluster takes long to answer (then learning goes on meanwhile).
    let _ = tokio::time::timeout(VERSION_WAIT, &mut learning).await;

    let max_grpc_message = config.max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES);
    let limits = HttpLimits { max_body_bytes: max_grpc_message.saturating_mul(2), body_timeout: config.http_body_timeout };
    let app = crate::grpc::routes(gateway.clone(), max_grpc_message)
        .into_axum_router()
        .merge(http::router(gateway, errors, limits))
        .fallback(fallback);
    let service = app.map_request(http::rewrite_legacy_prefix::<hyper::body::Incoming>);

    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let seen = SeenRevision::default();
        let service = TowerToHyperService::new(service.clone().map_request(move |mut request: Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(seen.clone());
            request
        }));
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(Some(10_000))
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(10));
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
}

/// gRPC calls to unknown methods get `Unimplemented`; anything else a JSON 404.
async fn fallback(request: Request) -> Response {
    let is_grpc = request
        .headers()
        .get(::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        tonic::Status::unimplemented("").into_http::<axum::body::Body>().into_response()
    } else {
        http::not_found().await
    }
}

/// Learns which etcd version is behind the gateway, so that HTTP errors copy its layout.
async fn learn_cluster_version(gateway: Arc<Gateway>, errors: Arc<ErrorStyle>) {
    loop {
        if let Ok(status) = gateway.unary::<rpc::Status>(&CallContext::default(), StatusRequest {}).await {
            errors.set_cluster_version(&status.version);
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
