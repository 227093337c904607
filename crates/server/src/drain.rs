//! Stopping without cutting calls short. Told to stop (SIGTERM, Ctrl-C), etcdgate takes no new
//! connections, asks every client connection to end (HTTP/2: GOAWAY, after which a client opens
//! no new streams on it and takes its next calls elsewhere; HTTP/1.1: closed once the answer
//! in progress is written), and waits, at most for the grace period, until every call in flight
//! has been answered. A write etcd is applying when the stop comes is therefore answered, not
//! cut into an error that leaves the client unsure whether it was applied.
//!
//! Streams that last as long as the client wants (watches, lease keep-alives, election
//! observations) are not waited for: they end when etcdgate exits, and clients open them again
//! elsewhere from where they were (clientv3 and APISIX watch again from their last revision).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;

/// Paths of streams that last as long as the client wants: not waited for.
const ENDLESS: &[&str] = &[
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/v3election.Election/Observe",
    "/v3/watch",
    "/v3/election/observe",
];

/// How long after its connections were asked to end a call may still arrive (sent by a client
/// before it read the GOAWAY): the stop waits at least this long for one to show up.
const LATE_CALLS: Duration = Duration::from_millis(250);
/// How often the stop looks whether the calls in flight are done.
const POLL: Duration = Duration::from_millis(20);

/// One listener's calls in flight and its stop signal to its connections.
#[derive(Clone)]
pub struct Drain {
    in_flight: Arc<AtomicUsize>,
    stopping: Arc<watch::Sender<bool>>,
}

/// A call in flight, counted until it is dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        crate::metrics::calls_in_flight(1);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::calls_in_flight(-1);
    }
}

/// An answer being sent: its call stays in flight until it is sent whole, or dropped.
struct Answering {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Answering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    /// The answer's own: a unary answer keeps its `content-length`, as etcd sends it.
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Default for Drain {
    fn default() -> Drain {
        Drain { in_flight: Arc::default(), stopping: Arc::new(watch::channel(false).0) }
    }
}

impl Drain {
    /// Middleware (see `axum::middleware::from_fn_with_state`): counts a call as in flight
    /// until its answer has been sent whole, or dropped.
    pub async fn count(State(drain): State<Drain>, request: Request, next: Next) -> Response {
        if ENDLESS.contains(&request.uri().path()) {
            return next.run(request).await;
        }
        let in_flight = InFlight::enter(&drain.in_flight);
        let response = next.run(request).await;
        response.map(|body| Body::new(Answering { body, _in_flight: in_flight }))
    }

    /// Resolves once the stop has begun: a connection then ends as gracefully as it can.
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    }

    /// Asks every connection to end, then waits until no call is in flight, at most `grace`.
    pub async fn stop(&self, grace: Duration) {
        self.stopping.send_replace(true);
        let started = Instant::now();
        let deadline = started + grace;
        tracing::info!(calls_in_flight = self.in_flight.load(Ordering::Relaxed), grace_secs = grace.as_secs_f64(), "stopping: answering the calls in flight");
        tokio::time::sleep_until((started + LATE_CALLS).min(deadline)).await;
        while self.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        match self.in_flight.load(Ordering::Relaxed) {
            0 => tracing::info!(after_ms = started.elapsed().as_millis() as u64, "stopped: every call answered"),
            left => tracing::warn!(left, grace_secs = grace.as_secs_f64(), "stopped with calls unanswered after the grace period"),
        }
    }
}
