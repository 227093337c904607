//! Accepting connections: gRPC (HTTP/2) and the JSON gateway (HTTP/1.1 or HTTP/2) on one
//! listener, told apart per request by path and content type, as etcd does on its client port.
//! A connection's first line picks its server: an HTTP/1.1 watch gets the lean path (one
//! request, no per-connection buffers), anything else hyper. With TLS configured (see
//! [`crate::tls`]) every connection is TLS, and served by hyper (the lean path reads and writes
//! the plain socket from two tasks at once). Told to stop, it stops as [`crate::drain`] says.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes};
use etcdgate_proto::etcdserverpb::StatusRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::context::{CallContext, SeenRevision};
use crate::drain::Drain;
use crate::gateway::Gateway;
use crate::http::{self, ErrorStyle, HttpLimits, LeanServer};
use crate::rewind::Rewind;
use crate::rpc;

/// How long `serve` waits to learn the cluster's version before it accepts connections.
const VERSION_WAIT: Duration = Duration::from_secs(2);

/// How long a client may take to send a request head (hyper's HTTP/1 limit; the lean path's
/// too, from the connection's start).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes read to find a connection's first line.
const SNIFF_LIMIT: usize = 4096;

/// gRPC framing and metadata allowance on top of the request size limit, as etcd adds it.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request a client may send (etcd's `--max-request-bytes`, default 1.5 MiB).
    pub max_request_bytes: usize,
    /// How long a unary HTTP request body may take to arrive.
    pub http_body_timeout: Duration,
    /// TLS on the listener; `None`: plain.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Routes served beside etcd's (the operations console).
    pub extra_routes: Option<axum::Router>,
    /// How long a stop waits for the calls in flight to be answered (see [`crate::drain`]).
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_request_bytes: 1536 * 1024,
            http_body_timeout: Duration::from_secs(10),
            tls: None,
            extra_routes: None,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves until `shutdown` resolves, then stops as [`crate::drain`] says.
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
        .merge(http::router(gateway, errors.clone(), limits))
        .merge(config.extra_routes.unwrap_or_default())
        .fallback(fallback);
    let drain = Drain::default();
    let app = app.layer(axum::middleware::from_fn_with_state(drain.clone(), Drain::count));
    let lean = LeanServer::new(app.clone(), errors);
    let tls = config.tls.map(TlsAcceptor::from);

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
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => tokio::spawn(serve_connection(stream, app.clone(), lean.clone(), drain.clone())),
            Some(tls) => tokio::spawn(serve_tls_connection(stream, tls.clone(), app.clone(), drain.clone())),
        };
    }
    drop(listener);
    drain.stop(config.shutdown_grace).await;
    Ok(())
}

/// What a connection speaks, told from its first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http2,
    /// An HTTP/1.1 watch (`POST /v3/watch`, or under `/v3beta/`, `/v3alpha/`), served lean.
    Http1Watch,
    Http1,
}

/// Serves one connection: a watch over HTTP/1.1 on the lean path, anything else with hyper
/// (which is given the bytes read to tell them apart first).
async fn serve_connection(mut stream: TcpStream, app: axum::Router, lean: LeanServer, drain: Drain) {
    let head_deadline = Instant::now() + HEADER_READ_TIMEOUT;
    let Ok(Some((protocol, received))) = tokio::time::timeout_at(head_deadline, sniff(&mut stream)).await else { return };
    let seen = SeenRevision::default();
    match protocol {
        Protocol::Http1Watch => lean.serve(stream, received, head_deadline, seen).await,
        Protocol::Http1 | Protocol::Http2 => {
            Box::pin(serve_with_hyper(protocol, Rewind::new(Bytes::from(received), stream), app, seen, drain)).await;
        }
    }
}

/// Serves one TLS connection with hyper, once the handshake is done (within the time a
/// request head may take).
async fn serve_tls_connection(stream: TcpStream, tls: TlsAcceptor, app: axum::Router, drain: Drain) {
    let head_deadline = Instant::now() + HEADER_READ_TIMEOUT;
    let mut stream = match tokio::time::timeout_at(head_deadline, tls.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
        Err(_) => return,
    };
    let Ok(Some((protocol, received))) = tokio::time::timeout_at(head_deadline, sniff(&mut stream)).await else { return };
    let protocol = if protocol == Protocol::Http2 { Protocol::Http2 } else { Protocol::Http1 };
    Box::pin(serve_with_hyper(protocol, Rewind::new(Bytes::from(received), stream), app, SeenRevision::default(), drain)).await;
}

/// Reads the connection's first line (at most [`SNIFF_LIMIT`] bytes) and tells its protocol;
/// returns it with everything read. `None` if the client closed before sending anything.
async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> Option<(Protocol, Vec<u8>)> {
    let mut received = Vec::with_capacity(SNIFF_LIMIT);
    loop {
        let space = SNIFF_LIMIT - received.len();
        match stream.read_buf(&mut (&mut received).limit(space)).await {
            Ok(0) | Err(_) if received.is_empty() => return None,
            Ok(0) | Err(_) => return Some((Protocol::Http1, received)),
            Ok(_) => {}
        }
        if let Some(line_end) = received.windows(2).position(|pair| pair == b"\r\n") {
            return Some((protocol_of(&received[..line_end]), received));
        }
        if received.len() == SNIFF_LIMIT {
            return Some((Protocol::Http1, received));
        }
    }
}

fn protocol_of(first_line: &[u8]) -> Protocol {
    if first_line == b"PRI * HTTP/2.0" {
        return Protocol::Http2;
    }
    let target = first_line.strip_prefix(b"POST ").and_then(|rest| rest.strip_suffix(b" HTTP/1.1"));
    let path = target.and_then(|target| target.split(|&b| b == b'?').next());
    match path {
        Some(b"/v3/watch" | b"/v3beta/watch" | b"/v3alpha/watch") => Protocol::Http1Watch,
        _ => Protocol::Http1,
    }
}

/// Serves a connection with hyper's HTTP/1 or HTTP/2 server, until it ends, or until the
/// calls in it are answered once the stop began.
async fn serve_with_hyper<S>(protocol: Protocol, io: Rewind<S>, app: axum::Router, seen: SeenRevision, drain: Drain)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = app.map_request(move |request: Request<hyper::body::Incoming>| {
        let mut request = http::rewrite_legacy_prefix(request);
        request.extensions_mut().insert(seen.clone());
        request
    });
    let service = TowerToHyperService::new(app.map_response(http::flush_each_message));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(Some(10_000))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let (builder, io) =
        if protocol == Protocol::Http2 { (builder.http2_only(), io.without_vectored_writes()) } else { (builder.http1_only(), io) };
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = drain.stopping() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, "connection ended with an error");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_lines_pick_the_server() {
        assert_eq!(protocol_of(b"PRI * HTTP/2.0"), Protocol::Http2);
        for watch in ["POST /v3/watch HTTP/1.1", "POST /v3beta/watch HTTP/1.1", "POST /v3alpha/watch?x=1 HTTP/1.1"] {
            assert_eq!(protocol_of(watch.as_bytes()), Protocol::Http1Watch, "{watch}");
        }
        for other in ["POST /v3/watch HTTP/1.0", "GET /v3/watch HTTP/1.1", "POST /v3/watcher HTTP/1.1", "POST /v3/kv/range HTTP/1.1", ""] {
            assert_eq!(protocol_of(other.as_bytes()), Protocol::Http1, "{other}");
        }
    }
}
