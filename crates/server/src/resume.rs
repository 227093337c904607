//! Client streams that outlive the member under them.
//!
//! A client's bidirectional stream (Watch, LeaseKeepAlive) is relayed to one member's
//! stream. When that stream fails because of the member — it died, hung (HTTP/2 keepalive
//! gives up), or lost its leader (upstream streams carry `hasleader`, so etcd ends them) — a
//! new stream is opened on another member and brought to where the client is by replaying
//! requests; the client's stream stays open and sees no error. The stream's owner may also
//! say that the member went silent with something to deliver ([`Stalled`]): the member is
//! reported (it becomes suspect) and the stream moved at once. What to track and replay is
//! each stream's own business ([`Resumable`]); answers etcd gives on purpose (auth, invalid
//! requests) still end the client's stream as they would on etcd.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcdgate_upstream::{classify, Failure, MemberConnection, Pool, RetryPolicy, State, Target, Timing};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::context::CallContext;
use crate::gateway::ResponseStream;

/// How long a member may take to answer replayed requests before the next one is tried.
const REPLAY_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stream waits for some member to take it before the client gets the error.
const REOPEN_PATIENCE: Duration = Duration::from_secs(30);
/// Messages buffered towards a member or a client.
const STREAM_BUFFER: usize = 64;

/// The requests etcdgate sends on a member's stream.
pub type Outgoing<Req> = ReceiverStream<Req>;
/// Opening a member's stream: resolves when the member answers the first time.
pub type Opening<Resp> = BoxFuture<'static, Result<Response<Streaming<Resp>>, Status>>;

/// Lets the owner of a relayed stream say that the member under it went silent while it had
/// something to deliver; the relay then reports the member and moves the stream.
#[derive(Clone, Debug, Default)]
pub struct Stalled(Arc<Notify>);

impl Stalled {
    /// Moves the stream off its current member (once per call).
    pub fn report(&self) {
        self.0.notify_one();
    }
}

/// The state one kind of stream keeps to be moved between members.
pub trait Resumable: Send + 'static {
    type Req: Clone + Send + Sync + 'static;
    type Resp: Send + Sync + 'static;
    /// Names the stream kind in metrics and logs.
    const NAME: &'static str;
    /// Whether the member's stream ends once the client stops sending (LeaseKeepAlive), rather
    /// than staying open (Watch).
    const ENDS_WITH_CLIENT_INPUT: bool;

    /// Records a client request; returns what to send upstream, `None` for a request etcd
    /// would neither answer nor act on (a cancel of a watch the stream does not have): not
    /// sent, as a stream opened with it would wait for an answer that never comes.
    fn outgoing(&mut self, request: Self::Req) -> Option<Self::Req>;
    /// Records a member's answer; `None` if the client must not see it.
    fn incoming(&mut self, response: Self::Resp) -> Option<Self::Resp>;
    /// A request to send the member again, after an answer the client must not see that
    /// still owes it one (asked after each answer).
    fn ask_again(&mut self) -> Option<Self::Req> {
        None
    }
    /// What a new member must be sent to continue where the old one stopped.
    fn replay(&mut self) -> Vec<Self::Req>;
    fn open(connection: MemberConnection, request: Request<Outgoing<Self::Req>>) -> Opening<Self::Resp>;
}

/// A member's stream: where requests go (`None` once the client's input is over and the
/// stream must end with it), where answers come from, and — when the member kept open calls
/// (healthy or suspect) as the stream opened — its connection, to move the stream as soon as
/// the member leaves rotation for more than suspicion (a hung member is seen by the probes
/// long before HTTP/2 keepalive gives up).
struct Upstream<S: Resumable> {
    requests: Option<mpsc::Sender<S::Req>>,
    responses: Streaming<S::Resp>,
    member: Option<MemberConnection>,
}

/// Opens a stream on a member like [`open_once`], waiting out member failures — a cluster
/// electing a leader answers `no leader` everywhere for a second or two, and that answer
/// exists only because etcdgate asked for `hasleader` — for up to [`REOPEN_PATIENCE`].
async fn open<S: Resumable>(pool: &Pool, ctx: &CallContext, first: Vec<S::Req>, input_over: bool) -> Result<Upstream<S>, Status> {
    let deadline = tokio::time::Instant::now() + REOPEN_PATIENCE;
    let mut pause = Duration::from_millis(100);
    loop {
        match open_once::<S>(pool, ctx, first.clone(), input_over).await {
            Err(status) if member_failed(&status) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(stream = S::NAME, error = %status.message(), ?pause, "no member can take the stream yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            result => return result,
        }
    }
}

/// Opens a stream on a member, sending `first` on it, and waits for its first answer.
async fn open_once<S: Resumable>(pool: &Pool, ctx: &CallContext, first: Vec<S::Req>, input_over: bool) -> Result<Upstream<S>, Status> {
    pool.call(&Target::Any, RetryPolicy::Read, Timing::Unmeasured, |connection: MemberConnection| {
        let (requests, receiver) = mpsc::channel(STREAM_BUFFER.max(first.len()));
        for message in &first {
            let _ = requests.try_send(message.clone());
        }
        let requests = (!(S::ENDS_WITH_CLIENT_INPUT && input_over)).then_some(requests);
        let mut request = ctx.request(ReceiverStream::new(receiver));
        request.metadata_mut().insert("hasleader", MetadataValue::from_static("true"));
        let member = connection.state().is_some_and(State::keeps_open_calls).then(|| connection.clone());
        let opening = S::open(connection, request);
        let replaying = !first.is_empty();
        async move {
            let response = if replaying {
                tokio::time::timeout(REPLAY_ANSWER_TIMEOUT, opening)
                    .await
                    .map_err(|_| Status::unavailable("etcdgate: member did not answer the replayed stream"))??
            } else {
                opening.await?
            };
            Ok(Upstream { requests, responses: response.into_inner(), member })
        }
    })
    .await
}

/// Whether a failure of a member's stream is the member's (move on) rather than an answer
/// for the client.
fn member_failed(status: &Status) -> bool {
    classify(status) != Failure::Answer
}

/// Serves one client stream with `state`; see the module doc. `stalled`, if given, moves the
/// stream when its owner reports a stall.
pub async fn relay<S: Resumable>(
    pool: Arc<Pool>,
    ctx: CallContext,
    mut input: BoxStream<'static, S::Req>,
    mut state: S,
    stalled: Option<Stalled>,
) -> Result<ResponseStream<S::Resp>, Status> {
    // As etcd's gateway, answer nothing before the client asked something.
    let mut first: Vec<S::Req> = Vec::new();
    while let Some(request) = input.next().await {
        if let Some(outgoing) = state.outgoing(request) {
            first.push(outgoing);
            break;
        }
    }
    // Over if the client ended its input before asking anything etcd would answer.
    let input = (!first.is_empty()).then_some(input);
    let upstream = open::<S>(&pool, &ctx, first, input.is_none()).await?;
    let (client, responses) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(run(pool, ctx, input, upstream, state, client, stalled));
    Ok(Box::pin(ReceiverStream::new(responses)))
}

async fn run<S: Resumable>(
    pool: Arc<Pool>,
    ctx: CallContext,
    // The client's requests; `None` once they are over.
    mut input: Option<BoxStream<'static, S::Req>>,
    upstream: Upstream<S>,
    mut state: S,
    client: mpsc::Sender<Result<S::Resp, Status>>,
    stalled: Option<Stalled>,
) {
    // `None` after a member failed with nothing to replay: the next member's stream is opened
    // with the client's next request (etcd answers nothing before a request, so opening an
    // idle stream would wait for an answer that cannot come).
    let mut upstream = Some(upstream);
    // Requests the member's stream has no room for yet, and an answer the client has no
    // room for yet. While one waits, the side it came from is not read (the other end slows
    // down), but the other side still is: a stream waiting to send a request must not stop
    // reading the member's answers, or a member that waits to send answers before it reads
    // more requests (etcd does) never takes the request. (Beyond the client's request, the
    // requests waiting are those asked again, at most one per answer read.)
    let mut unsent: VecDeque<S::Req> = VecDeque::new();
    let mut undelivered: Option<Result<S::Resp, Status>> = None;
    loop {
        let member = upstream.as_ref().and_then(|u| u.member.clone());
        let left_rotation = async {
            match &member {
                Some(member) => member.left_rotation().await,
                None => std::future::pending().await,
            }
        };
        let has_upstream = upstream.is_some();
        let stall = async {
            match (&stalled, has_upstream) {
                (Some(stalled), true) => {
                    stalled.0.notified().await;
                    if let Some(member) = &member {
                        member.report_stalled(format!("a {} stream on it went silent with something to deliver", S::NAME));
                    }
                }
                _ => std::future::pending().await,
            }
        };
        let requests = upstream.as_ref().and_then(|u| u.requests.clone()).filter(|_| !unsent.is_empty());
        let member_room = async {
            match requests {
                Some(requests) => requests.reserve_owned().await.ok(),
                None => std::future::pending().await,
            }
        };
        let request = async {
            match input.as_mut() {
                Some(input) => input.next().await,
                None => std::future::pending().await,
            }
        };
        let answer = async {
            match upstream.as_mut() {
                Some(upstream) => upstream.responses.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            request = request, if unsent.is_empty() => match (request, upstream.as_mut()) {
                (Some(request), Some(current)) => {
                    if let Some(outgoing) = state.outgoing(request) {
                        send_or_queue(current, &mut unsent, outgoing);
                    }
                }
                (Some(request), None) => {
                    let Some(outgoing) = state.outgoing(request) else { continue };
                    match open::<S>(&pool, &ctx, vec![outgoing], false).await {
                        Ok(next) => upstream = Some(next),
                        Err(status) => return fail(&client, status).await,
                    }
                }
                (None, current) => {
                    input = None;
                    if S::ENDS_WITH_CLIENT_INPUT {
                        match current {
                            Some(current) => current.requests = None,
                            None => return,
                        }
                    }
                }
            },
            room = member_room => match room {
                Some(room) => {
                    room.send(unsent.pop_front().expect("room is asked for only with a request waiting"));
                }
                // The stream failed: the answer arm moves it (and the replay carries what
                // the requests asked).
                None => unsent.clear(),
            },
            room = client.reserve(), if undelivered.is_some() => match room {
                Ok(room) => room.send(undelivered.take().expect("room is asked for only with an answer waiting")),
                Err(_) => return,
            },
            answer = async {
                tokio::select! {
                    answer = answer => answer,
                    _ = left_rotation => Some(Err(Status::unavailable("etcdgate: member left rotation"))),
                    _ = stall => Some(Err(Status::unavailable("etcdgate: stream stalled on its member"))),
                }
            }, if undelivered.is_none() => match answer {
                Some(Ok(response)) => {
                    let response = state.incoming(response);
                    if let (Some(again), Some(current)) = (state.ask_again(), upstream.as_ref()) {
                        send_or_queue(current, &mut unsent, again);
                    }
                    if let Some(response) = response {
                        match client.try_send(Ok(response)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(response)) => undelivered = Some(response),
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                }
                Some(Err(status)) if !member_failed(&status) => return fail(&client, status).await,
                // The member ended the stream because the client's input is over.
                None if upstream.as_ref().is_some_and(|u| u.requests.is_none()) => return,
                failed => {
                    if let Some(Err(status)) = &failed {
                        tracing::info!(stream = S::NAME, error = %status.message(), "stream lost its member, moving it");
                    }
                    crate::metrics::stream_moved(S::NAME);
                    // What they asked is in the replay.
                    unsent.clear();
                    let replay = state.replay();
                    if replay.is_empty() {
                        upstream = None;
                        if input.is_none() && S::ENDS_WITH_CLIENT_INPUT {
                            return;
                        }
                        continue;
                    }
                    match open::<S>(&pool, &ctx, replay, input.is_none()).await {
                        Ok(next) => upstream = Some(next),
                        Err(status) => return fail(&client, status).await,
                    }
                }
            },
            _ = client.closed() => return,
        }
    }
}

/// Sends `request` on the member's stream, or queues it behind those waiting for room (a
/// stream that is gone takes nothing: the answer arm moves it, and the replay carries it).
fn send_or_queue<S: Resumable>(upstream: &Upstream<S>, unsent: &mut VecDeque<S::Req>, request: S::Req) {
    let Some(requests) = &upstream.requests else { return };
    if !unsent.is_empty() {
        return unsent.push_back(request);
    }
    if let Err(mpsc::error::TrySendError::Full(request)) = requests.try_send(request) {
        unsent.push_back(request);
    }
}

/// Ends the client's stream with `status`.
async fn fail<Resp>(client: &mpsc::Sender<Result<Resp, Status>>, status: Status) {
    let _ = client.send(Err(status)).await;
}
