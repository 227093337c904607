//! One HTTP/2 connection to one member, used directly by tonic clients.
//!
//! tonic's own `Channel` puts a buffer task between every caller and the connection; here a
//! call goes straight to hyper's HTTP/2 sender on the caller's thread (each worker thread has
//! its own connections). The connection is made on first use and made again after it fails.
//! A failure is reported so that the retry rules can tell a request that never left etcdgate
//! (`not sent`: connection refused, or closed before the request was written) from one that
//! may have reached the member.
//!
//! HTTP/2 keep-alive pings (interval and timeout from [`ConnectOptions`]) are sent only while
//! a request or stream is open: etcd's gRPC server counts pings on an idle connection as
//! abuse and closes it (`GOAWAY ENHANCE_YOUR_CALM "too_many_pings"`), and does the same to
//! pings on a busy connection that come more often than its `--grpc-keepalive-min-time`
//! (default 5 s) when it has sent nothing in between.

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

use crate::health::State;
use crate::pool::Entry;

/// Prefix of the status message for calls that provably never reached the member.
pub const NOT_SENT: &str = "etcdgate: not sent to member: ";

/// How a connection is made and kept alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    pub connect_timeout: Duration,
    /// Ping after this long without a frame from the member while a request is open; `None`:
    /// no pings.
    pub keepalive_interval: Option<Duration>,
    /// Close the connection (failing its open requests) when a ping gets no answer in time.
    pub keepalive_timeout: Duration,
}

impl ConnectOptions {
    /// Connect timeout only, no keep-alive pings.
    pub fn plain(connect_timeout: Duration) -> ConnectOptions {
        ConnectOptions { connect_timeout, keepalive_interval: None, keepalive_timeout: Duration::from_secs(20) }
    }
}

/// Clones share the connection.
#[derive(Clone, Debug)]
pub struct MemberConnection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    options: ConnectOptions,
    sender: Mutex<Option<SendRequest<Body>>>,
    /// The pool member this connection belongs to, if any.
    member: Option<Arc<Entry>>,
}

impl MemberConnection {
    /// A connection without keep-alive pings.
    pub fn new(url: &str, connect_timeout: Duration) -> Result<MemberConnection, String> {
        MemberConnection::with_options(url, ConnectOptions::plain(connect_timeout))
    }

    pub fn with_options(url: &str, options: ConnectOptions) -> Result<MemberConnection, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("endpoint {url}: {e}"))?;
        let authority = uri.authority().cloned().ok_or_else(|| format!("endpoint {url}: no host:port"))?;
        if authority.port_u16().is_none() {
            return Err(format!("endpoint {url}: no port"));
        }
        Ok(MemberConnection {
            inner: Arc::new(Inner {
                scheme: uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
                authority,
                options,
                sender: Mutex::new(None),
                member: None,
            }),
        })
    }

    /// The same connection settings, tied to a pool member (see [`MemberConnection::state`]).
    pub(crate) fn for_member(url: &str, options: ConnectOptions, member: Arc<Entry>) -> Result<MemberConnection, String> {
        let mut connection = MemberConnection::with_options(url, options)?;
        if let Some(inner) = Arc::get_mut(&mut connection.inner) {
            inner.member = Some(member);
        }
        Ok(connection)
    }

    /// Another connection to the same member, made on its first use.
    pub fn fresh(&self) -> MemberConnection {
        MemberConnection {
            inner: Arc::new(Inner {
                scheme: self.inner.scheme.clone(),
                authority: self.inner.authority.clone(),
                options: self.inner.options,
                sender: Mutex::new(None),
                member: self.inner.member.clone(),
            }),
        }
    }

    /// `http://host:port` of the member.
    pub fn url(&self) -> String {
        format!("{}://{}", self.inner.scheme, self.inner.authority)
    }

    /// The pool's current state of the member this connection goes to (`None` for a
    /// connection made outside a pool).
    pub fn state(&self) -> Option<State> {
        self.inner.member.as_ref().map(|member| member.state())
    }

    /// Resolves once the member this connection goes to is out of rotation for more than
    /// suspicion (hung, down, leaderless, lagging, learner, removed; see
    /// [`State::keeps_open_calls`]) — at once if it already is. Never resolves for a
    /// connection made outside a pool. For long-lived streams: move them when this fires.
    pub async fn left_rotation(&self) {
        match &self.inner.member {
            Some(member) => member.left_rotation().await,
            None => std::future::pending().await,
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
        let stream = match tokio::time::timeout(self.options.connect_timeout, TcpStream::connect(&address)).await {
            Err(_) => return Err(not_sent(format!("connect to {address} timed out"))),
            Ok(Err(error)) => return Err(not_sent(format!("connect to {address}: {error}"))),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        if let Some(interval) = self.options.keepalive_interval {
            builder
                .keep_alive_interval(interval)
                .keep_alive_timeout(self.options.keepalive_timeout)
                .keep_alive_while_idle(false);
        }
        let (sender, connection) = builder
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
