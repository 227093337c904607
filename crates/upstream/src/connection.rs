//! One HTTP/2 connection to one member, used directly by tonic clients.
//!
//! A call goes straight to the `h2` connection on the caller's thread (each worker thread has
//! its own connections; no buffer or dispatch task in between). A request whose body is
//! complete when the call starts (every unary call) is queued as HEADERS and DATA with
//! END_STREAM at once, so the member gets it in one write and reads it in one go; a streaming
//! body is piped by its own task, one chunk at a time as the member's flow-control window
//! allows. The connection is made on first use and made again after it fails. A failure is
//! reported so that the retry rules can tell a request that never left etcdgate (`not sent`:
//! connection refused, or closed before the request was queued) from one that may have
//! reached the member.
//!
//! HTTP/2 keep-alive pings (interval and timeout from [`ConnectOptions`]) are sent only while
//! a request or stream is open and nothing came from the member for an interval: etcd's gRPC
//! server counts pings on an idle connection as abuse and closes it (`GOAWAY
//! ENHANCE_YOUR_CALM "too_many_pings"`), and does the same to pings on a busy connection that
//! come more often than its `--grpc-keepalive-min-time` (default 5 s) when it has sent nothing
//! in between. A ping without an answer in time closes the connection, failing its calls.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use h2::client::SendRequest;
use h2::{PingPong, RecvStream, SendStream};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::Status;

use crate::health::State;
use crate::pool::Entry;
use crate::tls::MemberTls;

/// Prefix of the status message for calls that provably never reached the member.
pub const NOT_SENT: &str = "etcdgate: not sent to member: ";

/// How a connection is made and kept alive.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub connect_timeout: Duration,
    /// For `https://` members; `None`: such members cannot be reached.
    pub tls: Option<MemberTls>,
    /// Ping after this long without a frame from the member while a request is open; `None`:
    /// no pings.
    pub keepalive_interval: Option<Duration>,
    /// Close the connection (failing its open requests) when a ping gets no answer in time.
    pub keepalive_timeout: Duration,
}

impl ConnectOptions {
    /// Connect timeout only, no keep-alive pings.
    pub fn plain(connect_timeout: Duration) -> ConnectOptions {
        ConnectOptions { connect_timeout, tls: None, keepalive_interval: None, keepalive_timeout: Duration::from_secs(20) }
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
    live: Mutex<Option<Live>>,
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
                live: Mutex::new(None),
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
                options: self.inner.options.clone(),
                live: Mutex::new(None),
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

    /// Reports that a stream on this connection went silent while it had something to
    /// deliver: the member becomes suspect (a fallback only, re-probed at once) unless it is
    /// worse already. Does nothing for a connection made outside a pool.
    pub fn report_stalled(&self, evidence: String) {
        if let Some(member) = &self.inner.member {
            member.stream_stalled(evidence);
        }
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

/// The h2 sender of a made connection and what its driver task shares with callers.
#[derive(Clone, Debug)]
struct Live {
    sender: SendRequest<Bytes>,
    shared: Arc<Shared>,
}

/// Shared between a connection's driver task, its IO and its calls.
#[derive(Debug)]
struct Shared {
    /// Calls whose response is not finished (keep-alive pings only while there are some).
    open_calls: AtomicUsize,
    /// The driver task has ended, or the connection refused a new stream: make a new
    /// connection for the next call.
    closed: AtomicBool,
    /// When a byte last came from the member, in ms since `epoch`.
    last_read_ms: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn last_read(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed))
    }
}

impl Inner {
    /// The live connection, connecting first if there is none.
    async fn live(&self) -> Result<Live, Status> {
        let mut slot = self.live.lock().await;
        if let Some(live) = slot.as_ref().filter(|live| !live.shared.closed.load(Ordering::Acquire)) {
            return Ok(live.clone());
        }
        let not_sent = |what: String| Status::unavailable(format!("{NOT_SENT}{what}"));
        let address = self.authority.as_str().to_string();
        let stream = match tokio::time::timeout(self.options.connect_timeout, TcpStream::connect(&address)).await {
            Err(_) => return Err(not_sent(format!("connect to {address} timed out"))),
            Ok(Err(error)) => return Err(not_sent(format!("connect to {address}: {error}"))),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::new(Shared {
            open_calls: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            last_read_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let sender = if self.scheme == http::uri::Scheme::HTTPS {
            let Some(tls) = &self.options.tls else {
                return Err(not_sent(format!("{address} is an https:// member and no TLS is configured")));
            };
            let stream = tls.handshake(self.authority.host(), stream).await.map_err(not_sent)?;
            self.start(ReadClock { stream, shared: shared.clone() }, &shared).await
        } else {
            self.start(ReadClock { stream, shared: shared.clone() }, &shared).await
        }
        .map_err(|error| not_sent(format!("HTTP/2 handshake with {address}: {error}")))?;
        let live = Live { sender, shared };
        *slot = Some(live.clone());
        Ok(live)
    }

    /// The HTTP/2 handshake over `io`, and the task that drives the connection.
    async fn start<S>(&self, io: ReadClock<S>, shared: &Arc<Shared>) -> Result<SendRequest<Bytes>, h2::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // hyper's HTTP/2 client settings, which etcd's large answers were tested with.
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(2 << 20)
            .initial_connection_window_size(5 << 20)
            .max_frame_size(16 << 10)
            .max_header_list_size(16 << 10)
            .max_send_buffer_size(1 << 20)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let pings = connection.ping_pong();
        let (options, driver_shared) = (self.options.clone(), shared.clone());
        tokio::spawn(async move {
            let keep_alive = async {
                match (options.keepalive_interval, pings) {
                    (Some(interval), Some(pings)) => keep_alive(pings, &driver_shared, interval, options.keepalive_timeout).await,
                    _ => std::future::pending().await,
                }
            };
            // Dropping the connection (keep-alive failed) fails its open calls.
            tokio::select! {
                ended = &mut connection => if let Err(error) = ended { tracing::debug!(%error, "member connection ended") },
                why = keep_alive => tracing::debug!(why, "member connection closed"),
            }
            driver_shared.closed.store(true, Ordering::Release);
        });
        Ok(sender)
    }
}

/// Pings the member while calls are open and it has been silent for `interval`; returns why
/// the connection must close.
async fn keep_alive(mut pings: PingPong, shared: &Shared, interval: Duration, timeout: Duration) -> String {
    // The last ping, or the last time the connection was idle when looked at.
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep_until(shared.last_read().max(quiet_since) + interval).await;
        let now = Instant::now();
        if shared.last_read() + interval > now {
            continue;
        }
        quiet_since = now;
        if shared.open_calls.load(Ordering::Relaxed) == 0 {
            continue;
        }
        match tokio::time::timeout(timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return format!("keep-alive ping failed: {error}"),
            Err(_) => return "keep-alive timed out".to_string(),
        }
    }
}

/// The member's socket (plain or TLS), noting when bytes arrive (for keep-alive).
struct ReadClock<S> {
    stream: S,
    shared: Arc<Shared>,
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadClock<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = self.shared.epoch.elapsed().as_millis() as u64;
            self.shared.last_read_ms.store(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadClock<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Counts a call as open until dropped.
struct OpenCall(Arc<Shared>);

impl OpenCall {
    fn new(shared: &Arc<Shared>) -> OpenCall {
        shared.open_calls.fetch_add(1, Ordering::Relaxed);
        OpenCall(shared.clone())
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.open_calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Stops a request-body pipe when the call is dropped.
struct AbortOnDrop(Option<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(pipe) = self.0.take() {
            pipe.abort();
        }
    }
}

/// A member's answer body: DATA then trailers, with flow-control capacity given back as the
/// caller takes the data.
pub struct MemberBody {
    stream: RecvStream,
    data_done: bool,
    done: bool,
    _open: OpenCall,
    _pipe: AbortOnDrop,
}

impl http_body::Body for MemberBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match std::task::ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
                None => this.data_done = true,
            }
        }
        let trailers = std::task::ready!(this.stream.poll_trailers(cx));
        this.done = true;
        Poll::Ready(trailers.transpose().map(|trailers| trailers.map(Frame::trailers)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Frames of `body` that are ready now, and whether the body ended with them.
async fn ready_frames(body: &mut Body) -> Result<(Vec<Frame<Bytes>>, bool), Status> {
    let mut frames = Vec::new();
    loop {
        match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Pending => return Ok((frames, false)),
            Poll::Ready(None) => return Ok((frames, true)),
            Poll::Ready(Some(Ok(frame))) => frames.push(frame),
            Poll::Ready(Some(Err(status))) => return Err(status),
        }
    }
}

/// Queues one frame on `stream`: data (ending the stream if `last`) or trailers.
fn send_frame(stream: &mut SendStream<Bytes>, frame: Frame<Bytes>, last: bool) -> Result<(), h2::Error> {
    match frame.into_data() {
        Ok(data) => stream.send_data(data, last),
        Err(frame) => match frame.into_trailers() {
            Ok(trailers) => stream.send_trailers(trailers),
            Err(_) => Ok(()),
        },
    }
}

/// Queues `frames` on `stream`, the last one ending the stream if `ends`.
fn send_frames(stream: &mut SendStream<Bytes>, frames: Vec<Frame<Bytes>>, ends: bool) -> Result<(), h2::Error> {
    let count = frames.len();
    for (index, frame) in frames.into_iter().enumerate() {
        let trailers = frame.is_trailers();
        send_frame(stream, frame, ends && index + 1 == count)?;
        if trailers {
            return Ok(());
        }
    }
    if ends && count == 0 {
        stream.send_data(Bytes::new(), true)?;
    }
    Ok(())
}

/// Sends the rest of a streaming request body, one chunk at a time as the member's window
/// allows; ends when the body ends or the member resets the stream.
async fn pipe(mut body: Body, mut stream: SendStream<Bytes>) {
    loop {
        let frame = tokio::select! {
            biased;
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
            frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => frame,
        };
        let frame = match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(_)) => {
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref().filter(|data| !data.is_empty()) {
            stream.reserve_capacity(data.len());
            while stream.capacity() == 0 {
                match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        }
        if send_frame(&mut stream, frame, false).is_err() {
            return;
        }
    }
}

impl tower_service::Service<http::Request<Body>> for MemberConnection {
    type Response = http::Response<MemberBody>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let (mut head, mut body) = request.into_parts();
            let mut parts = head.uri.clone().into_parts();
            parts.scheme = Some(inner.scheme.clone());
            parts.authority = Some(inner.authority.clone());
            head.uri = http::Uri::from_parts(parts).map_err(|e| Status::internal(e.to_string()))?;
            let live = inner.live().await?;
            let open = OpenCall::new(&live.shared);
            // A connection that takes no new stream (closed, or told to go away while its
            // open streams finish) is replaced for the calls after this one.
            let refused = |error: h2::Error| {
                live.shared.closed.store(true, Ordering::Release);
                Status::unavailable(format!("{NOT_SENT}connection refuses new streams: {error}"))
            };
            let mut sender = live.sender.clone().ready().await.map_err(refused)?;
            let (frames, ended) = ready_frames(&mut body).await?;
            // Never END_STREAM on HEADERS: etcd's gRPC server then never tells a streaming
            // handler that the input is over. An empty DATA frame ends a bodiless stream.
            let (response, mut stream) = sender.send_request(http::Request::from_parts(head, ()), false).map_err(refused)?;
            let connection_failed = |error: h2::Error| Status::unavailable(format!("etcdgate: member connection failed: {error}"));
            send_frames(&mut stream, frames, ended).map_err(connection_failed)?;
            let pipe = AbortOnDrop((!ended).then(|| tokio::spawn(self::pipe(body, stream)).abort_handle()));
            let response = response.await.map_err(connection_failed)?;
            Ok(response.map(|stream| MemberBody { stream, data_done: false, done: false, _open: open, _pipe: pipe }))
        })
    }
}
