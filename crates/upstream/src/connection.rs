//! One HTTP/2 connection to one member, used directly by tonic clients.
//!
//! tonic's own `Channel` puts a buffer task between every caller and the connection; here a
//! call goes straight to hyper's HTTP/2 sender on the caller's thread (each worker thread has
//! its own connections). The connection is made on first use and made again after it fails.
//! A failure is reported so that the retry rules can tell a request that never left etcdgate
//! (`not sent`: connection refused, or closed before the request was written) from one that
//! may have reached the member.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tonic::body::Body;
use tonic::Status;

/// Prefix of the status message for calls that provably never reached the member.
pub const NOT_SENT: &str = "etcdgate: not sent to member: ";

/// Clones share the connection.
#[derive(Clone, Debug)]
pub struct MemberConnection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    connect_timeout: Duration,
    sender: Mutex<Option<SendRequest<Body>>>,
}

impl MemberConnection {
    pub fn new(url: &str, connect_timeout: Duration) -> Result<MemberConnection, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("endpoint {url}: {e}"))?;
        let authority = uri.authority().cloned().ok_or_else(|| format!("endpoint {url}: no host:port"))?;
        if authority.port_u16().is_none() {
            return Err(format!("endpoint {url}: no port"));
        }
        Ok(MemberConnection {
            inner: Arc::new(Inner {
                scheme: uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
                authority,
                connect_timeout,
                sender: Mutex::new(None),
            }),
        })
    }
}

impl MemberConnection {
    /// Another connection to the same member, made on its first use.
    pub fn fresh(&self) -> MemberConnection {
        MemberConnection {
            inner: Arc::new(Inner {
                scheme: self.inner.scheme.clone(),
                authority: self.inner.authority.clone(),
                connect_timeout: self.inner.connect_timeout,
                sender: Mutex::new(None),
            }),
        }
    }
}

impl Inner {
    /// The live sender, connecting first if there is none.
    async fn sender(&self) -> Result<SendRequest<Body>, Status> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let not_sent = |what: String| Status::unavailable(format!("{NOT_SENT}{what}"));
        let address = self.authority.as_str().to_string();
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&address)).await {
            Err(_) => return Err(not_sent(format!("connect to {address} timed out"))),
            Ok(Err(error)) => return Err(not_sent(format!("connect to {address}: {error}"))),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| not_sent(format!("HTTP/2 handshake with {address}: {error}")))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "member connection ended");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }
}

impl tower_service::Service<http::Request<Body>> for MemberConnection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut parts = request.uri().clone().into_parts();
            parts.scheme = Some(inner.scheme.clone());
            parts.authority = Some(inner.authority.clone());
            *request.uri_mut() = http::Uri::from_parts(parts).map_err(|e| Status::internal(e.to_string()))?;
            let mut sender = inner.sender().await?;
            sender
                .ready()
                .await
                .map_err(|error| Status::unavailable(format!("{NOT_SENT}connection closed: {error}")))?;
            sender.try_send_request(request).await.map_err(|mut error| {
                if error.take_message().is_some() {
                    Status::unavailable(format!("{NOT_SENT}{}", error.error()))
                } else {
                    Status::unavailable(format!("etcdgate: member connection failed: {}", error.error()))
                }
            })
        })
    }
}
