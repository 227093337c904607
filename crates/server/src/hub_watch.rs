//! A client's Watch stream when prefixes are cached: each watch the hubs can serve (its keys
//! inside a cached prefix, its start revision still in the history) is served from a hub;
//! the others go to etcd through one relayed stream (see [`crate::watch`]) opened when the
//! first of them comes. Watch IDs are given here for both kinds, as etcd gives them, and
//! both kinds' responses are merged into the client's stream.
//!
//! A client stream is one [`WatchStream`], with no task of its own: polled by the client's
//! connection, it handles the client's requests one at a time, sends their answers, relays
//! etcd's answers, and reads each hub watch from the history when the client can take more
//! (no task or queue per watch; its events go out as encoded once for every watcher, see
//! [`WatchReply`]). With thousands of watchers, every byte and every task per watcher counts.
//!
//! Progress requests are answered by the stream itself when no watch of it is at etcd (at the
//! revision the hubs of its watches hold, or the client was shown if later), else by etcd;
//! either answer is held until the hub watches have sent everything up to its revision (or,
//! as a hub hears of no revision after writes outside its keys, for [`PROGRESS_HOLD`] at
//! most). Creates are answered in the order they came, whoever serves them, as etcd answers
//! them.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use etcdgate_cache::{Hub, WatchReply, Watcher};
use etcdgate_proto::etcdserverpb::{watch_request::RequestUnion, ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use etcdgate_upstream::Pool;
use futures::future::{AbortHandle, BoxFuture};
use futures::stream::{Abortable, BoxStream, SelectAll};
use futures::task::{ArcWake, AtomicWaker};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::cache::Caches;
use crate::context::{CallContext, SeenRevision};
use crate::gateway::ResponseStream;
use crate::watch::{is_progress_answer, progress_request, PROGRESS_ANSWER_ID};

/// Requests queued towards etcd's stream.
const RELAY_BUFFER: usize = 16;
/// Answers decided and not yet sent, above which the client's next request waits (a client
/// that sends requests and reads no answers holds this much at most).
const MAX_READY: usize = 16;
/// etcd's answer to a create with a watch ID the stream already uses.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's answer to a create whose range ends at or before its key (checked before an ID
/// is given).
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// How long etcd's answer to a progress request may be held for the stream's hub watches.
/// A hub learns of a revision from events in its keys (or etcd's progress notifications,
/// ten minutes apart by default): after writes elsewhere it may not be told of the
/// answer's revision at all, and the answer then goes as etcd gave it (the hub watches have
/// sent what their hubs hold; etcd's own answers may come ahead of events before 3.5.8,
/// etcd#15220).
const PROGRESS_HOLD: Duration = Duration::from_millis(100);

fn lock(ids: &Mutex<Ids>) -> std::sync::MutexGuard<'_, Ids> {
    ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// IDs of the stream's live watches and who serves each, shared by the request side and
/// the response side.
#[derive(Debug, Default)]
struct Ids {
    live: HashMap<i64, At>,
    next: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Hub,
    Etcd,
}

/// What handling a request decided, in order.
enum Effect {
    /// An answer to send.
    Send(WatchResponse),
    /// A hub watch whose `created` answer went before: its responses follow.
    Serve(Watcher),
    /// A hub watch the client canceled: stop it and say so.
    Stop(i64),
    /// Answer a progress request of a stream whose watches are all at hubs, with `header`
    /// (the first hub's; its revision is set when the answer is held, see [`HeldProgress`]).
    Progress(Option<ResponseHeader>),
    /// etcd's stream, being opened for the first watch that needs it, and the way to it.
    Relay(BoxFuture<'static, Result<ResponseStream<WatchResponse>, Status>>, ToEtcd),
}

/// The way to etcd's stream for the watches the hubs cannot serve, held by both sides of a
/// client stream: its requests, and the creates sent to it not answered yet.
#[derive(Clone)]
struct ToEtcd {
    requests: mpsc::Sender<WatchRequest>,
    creates: Arc<EtcdCreates>,
}

/// Creates sent to etcd whose `created` answer the client has not been sent yet. An answer
/// the stream gives itself to a later create waits for them: etcd answers a stream's creates
/// in the order they came, and a client that lets etcd pick watch IDs tells its watches
/// apart by that order.
#[derive(Default)]
struct EtcdCreates {
    unanswered: AtomicUsize,
    answered: Notify,
}

impl EtcdCreates {
    fn sent(&self) {
        self.unanswered.fetch_add(1, Ordering::AcqRel);
    }

    /// etcd's `created` answer went to the client.
    fn answered(&self) {
        let _ = self.unanswered.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.answered.notify_waiters();
    }

    /// etcd's stream ended: no answer will come.
    fn abandoned(&self) {
        self.unanswered.store(0, Ordering::Release);
        self.answered.notify_waiters();
    }

    async fn all_answered(&self) {
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if self.unanswered.load(Ordering::Acquire) == 0 {
                return;
            }
            answered.await;
        }
    }
}

/// The request side of a client stream.
struct Mux {
    pool: Arc<Pool>,
    caches: Arc<Caches>,
    ctx: CallContext,
    ids: Arc<Mutex<Ids>>,
    /// etcd's stream, once a watch needed it.
    to_etcd: Option<ToEtcd>,
    effects: Vec<Effect>,
}

/// Serves one client watch stream with the hubs' help.
pub async fn watch(
    pool: Arc<Pool>,
    caches: Arc<Caches>,
    ctx: CallContext,
    input: BoxStream<'static, WatchRequest>,
) -> Result<ResponseStream<WatchReply>, Status> {
    let ids = Arc::<Mutex<Ids>>::default();
    let seen = ctx.seen.clone();
    let mux = Mux { pool, caches, ctx, ids: ids.clone(), to_etcd: None, effects: Vec::new() };
    Ok(Box::pin(WatchStream {
        input: Some(input),
        input_wake: Arc::new(InputWake { woken: AtomicBool::new(true), task: AtomicWaker::new() }),
        requests: Requests::Idle(Box::new(mux)),
        ready: VecDeque::new(),
        relay: Relay::None,
        to_etcd: None,
        held_progress: None,
        watchers: HubWatches::None,
        serving: HashMap::new(),
        ids,
        seen,
    }))
}

impl Mux {
    /// Handles one client request; gives itself back with what it decided.
    async fn handle(mut self: Box<Self>, request: WatchRequest) -> (Box<Mux>, Vec<Effect>) {
        self.decide(request).await;
        let effects = std::mem::take(&mut self.effects);
        (self, effects)
    }

    async fn decide(&mut self, request: WatchRequest) {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                let at = {
                    let mut ids = lock(&self.ids);
                    let at = ids.live.get(&cancel.watch_id).copied();
                    if at == Some(At::Hub) {
                        ids.live.remove(&cancel.watch_id);
                    }
                    at
                };
                match at {
                    Some(At::Hub) => self.effects.push(Effect::Stop(cancel.watch_id)),
                    Some(At::Etcd) => {
                        self.send_to_etcd(WatchRequest { request_union: Some(RequestUnion::CancelRequest(cancel)) }).await
                    }
                    // etcd ignores the cancel of a watch the stream does not have.
                    None => {}
                }
            }
            Some(RequestUnion::ProgressRequest(progress)) => {
                if self.to_etcd.is_some() {
                    return self.send_to_etcd(WatchRequest { request_union: Some(RequestUnion::ProgressRequest(progress)) }).await;
                }
                let header = self.header();
                self.effects.push(Effect::Progress(header));
            }
            None => {}
        }
    }

    /// A header at the first hub's revision (for answers that concern no one watch).
    fn header(&self) -> Option<ResponseHeader> {
        self.caches.hubs().first().and_then(|hub| hub.header())
    }

    /// Waits until etcd has answered every create sent to it before (see [`EtcdCreates`]).
    async fn answers_before(&mut self) {
        if let Some(to_etcd) = self.to_etcd.clone() {
            to_etcd.creates.all_answered().await;
        }
    }

    /// etcd's answer to a create it refuses: created and canceled at once, with ID -1.
    async fn refuse_create(&mut self, reason: &str) {
        self.answers_before().await;
        let header = self.header();
        let refused = WatchResponse { header, watch_id: -1, created: true, canceled: true, cancel_reason: reason.into(), ..Default::default() };
        self.send(refused);
    }

    async fn create(&mut self, mut create: WatchCreateRequest) {
        if etcdgate_cache::KeyRange::new(&create.key, &create.range_end).is_empty() {
            return self.refuse_create(EMPTY_RANGE).await;
        }
        let duplicate = {
            let mut ids = lock(&self.ids);
            if create.watch_id == 0 {
                while ids.live.contains_key(&ids.next) {
                    ids.next += 1;
                }
                create.watch_id = ids.next;
                ids.next += 1;
            }
            ids.live.get(&create.watch_id) == Some(&At::Hub)
        };
        if duplicate {
            return self.refuse_create(DUPLICATE_ID).await;
        }
        let id = create.watch_id;
        let served = match self.caches.hub_for(&create.key, &create.range_end) {
            Some(hub) if self.caches.admits(&self.pool, &self.ctx, hub, &create.key, &create.range_end).await => {
                self.caches.catch_up(hub).await;
                Watcher::create(hub, id, &create, self.caches.max_request_bytes())
            }
            _ => None,
        };
        let Some((watcher, created)) = served else {
            if create.watch_id >= 0 {
                lock(&self.ids).live.insert(id, At::Etcd);
            }
            return self.send_to_etcd(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await;
        };
        self.answers_before().await;
        lock(&self.ids).live.insert(id, At::Hub);
        self.send(created);
        self.effects.push(Effect::Serve(watcher));
    }

    fn send(&mut self, response: WatchResponse) {
        self.effects.push(Effect::Send(response));
    }

    /// Sends a request to etcd's stream, opening it first if needed.
    async fn send_to_etcd(&mut self, request: WatchRequest) {
        let is_create = matches!(request.request_union, Some(RequestUnion::CreateRequest(_)));
        let to_etcd = match &self.to_etcd {
            Some(to_etcd) => to_etcd.clone(),
            None => {
                let (requests, input) = mpsc::channel(RELAY_BUFFER);
                let to_etcd = ToEtcd { requests, creates: Arc::default() };
                let opening = crate::watch::watch(self.pool.clone(), self.ctx.clone(), ReceiverStream::new(input).boxed());
                self.effects.push(Effect::Relay(opening.boxed(), to_etcd.clone()));
                self.to_etcd = Some(to_etcd.clone());
                to_etcd
            }
        };
        // A create is counted once etcd's stream took it (its answer is read on this task, so
        // it cannot go out before); a stream that is gone takes nothing, and its end (or
        // error) reaches the client there.
        if to_etcd.requests.send(request).await.is_ok() && is_create {
            to_etcd.creates.sent();
        }
    }
}

/// The request side: waiting for the client's next request, or handling one.
enum Requests {
    Idle(Box<Mux>),
    Handling(BoxFuture<'static, (Box<Mux>, Vec<Effect>)>),
    /// Only while switching between the two.
    Switching,
}

/// etcd's stream for the watches the hubs cannot serve.
enum Relay {
    None,
    Opening(BoxFuture<'static, Result<ResponseStream<WatchResponse>, Status>>),
    Open(ResponseStream<WatchResponse>),
}

/// A client's watch stream: its requests in, their answers, etcd's and the hub watches'
/// responses out.
struct WatchStream {
    /// The client's requests, until they end (the stream stays open after, as etcd's).
    input: Option<BoxStream<'static, WatchRequest>>,
    input_wake: Arc<InputWake>,
    requests: Requests,
    /// Answers decided, sent before anything else.
    ready: VecDeque<Result<WatchReply, Status>>,
    relay: Relay,
    /// The way to etcd's stream, once it is opened (to count its `created` answers, and to
    /// ask for progress again, see `held_progress`).
    to_etcd: Option<ToEtcd>,
    /// An answer to a progress request (etcd's or the stream's own), held until the stream's
    /// hub watches have sent everything up to its revision: it promises the client every
    /// event up to there.
    held_progress: Option<HeldProgress>,
    watchers: HubWatches,
    serving: HashMap<i64, Serving>,
    ids: Arc<Mutex<Ids>>,
    seen: SeenRevision,
}

/// Notes that the client's input woke the stream (and wakes the stream).
struct InputWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for InputWake {
    fn wake_by_ref(wake: &Arc<Self>) {
        wake.woken.store(true, Ordering::Release);
        wake.task.wake();
    }
}

/// A hub watch being served: its hub.
struct Serving {
    hub: Arc<Hub>,
    _count: WatcherCount,
}

/// A hub watch's response.
struct Followed {
    id: i64,
    reply: WatchReply,
}

impl WatchStream {
    fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send(response) => self.ready.push_back(Ok(response.into())),
                Effect::Serve(watcher) => self.serve(watcher),
                Effect::Stop(id) => {
                    // Gone already if it canceled itself meanwhile (its cancel went then).
                    if let Some(serving) = self.serving.remove(&id) {
                        self.watchers.stop(id);
                        let header = serving.hub.header();
                        self.ready.push_back(Ok(WatchResponse { header, watch_id: id, canceled: true, ..Default::default() }.into()));
                    }
                }
                Effect::Progress(header) if self.serving.is_empty() => {
                    self.ready.push_back(Ok(WatchResponse { header, watch_id: PROGRESS_ANSWER_ID, ..Default::default() }.into()));
                }
                // Held until the hub watches have sent everything up to the revision their
                // hubs hold (or the client was shown, if later), as etcd's answer is.
                Effect::Progress(header) => {
                    let mut header = header.unwrap_or_default();
                    let held = self.serving.values().filter_map(|serving| serving.hub.revision()).min();
                    header.revision = held.unwrap_or(header.revision).max(self.seen.get());
                    self.hold_progress(WatchResponse { header: Some(header), watch_id: PROGRESS_ANSWER_ID, ..Default::default() });
                }
                Effect::Relay(opening, to_etcd) => {
                    self.relay = Relay::Opening(opening);
                    self.to_etcd = Some(to_etcd);
                }
            }
        }
    }

    /// Serves a hub watch: its responses join the stream until it is canceled.
    fn serve(&mut self, watcher: Watcher) {
        let (id, hub) = (watcher.id(), watcher.hub().clone());
        self.serving.insert(id, Serving { hub, _count: WatcherCount::new() });
        let responses = futures::stream::unfold(Some(watcher), |watcher| async move {
            let mut watcher = watcher?;
            let reply = watcher.next().await;
            let followed = Followed { id: watcher.id(), reply };
            // A canceled watch is done after its cancel.
            let watcher = (!followed.reply.canceled()).then_some(watcher);
            Some((followed, watcher))
        });
        self.watchers.push(id, responses.boxed());
    }

    /// Moves the request side on; true if it did something worth looking at again.
    fn poll_requests(&mut self, cx: &mut Context<'_>) -> bool {
        if let Requests::Handling(handling) = &mut self.requests {
            let Poll::Ready((mux, effects)) = handling.poll_unpin(cx) else { return false };
            self.requests = Requests::Idle(mux);
            self.apply(effects);
            return true;
        }
        if self.ready.len() >= MAX_READY {
            return false;
        }
        let Some(input) = self.input.as_mut() else { return false };
        // The input is looked at only when it woke the stream: most wake-ups are a hub
        // watch's, and polling the client's input on each costs more than the event.
        if !self.input_wake.woken.swap(false, Ordering::AcqRel) {
            return false;
        }
        self.input_wake.task.register(cx.waker());
        let waker = futures::task::waker_ref(&self.input_wake);
        match input.poll_next_unpin(&mut Context::from_waker(&waker)) {
            Poll::Ready(Some(request)) => {
                self.input_wake.woken.store(true, Ordering::Release);
                if let Requests::Idle(mux) = std::mem::replace(&mut self.requests, Requests::Switching) {
                    self.requests = Requests::Handling(mux.handle(request).boxed());
                }
                true
            }
            Poll::Ready(None) => {
                self.input = None;
                false
            }
            Poll::Pending => false,
        }
    }

    fn relay_ended(&mut self) {
        self.relay = Relay::None;
        if let Some(to_etcd) = self.to_etcd.take() {
            to_etcd.creates.abandoned();
        }
    }

    /// etcd's next answer, if one is ready.
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Result<WatchResponse, Status>> {
        loop {
            match &mut self.relay {
                Relay::None => return Poll::Pending,
                Relay::Opening(opening) => match opening.poll_unpin(cx) {
                    Poll::Ready(Ok(responses)) => self.relay = Relay::Open(responses),
                    Poll::Ready(Err(status)) => {
                        self.relay_ended();
                        return Poll::Ready(Err(status));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Relay::Open(responses) => {
                    return match responses.poll_next_unpin(cx) {
                        Poll::Ready(Some(Ok(response))) => {
                            if response.canceled {
                                lock(&self.ids).live.remove(&response.watch_id);
                            }
                            if response.created {
                                self.to_etcd.iter().for_each(|to_etcd| to_etcd.creates.answered());
                            }
                            Poll::Ready(Ok(response))
                        }
                        Poll::Ready(Some(Err(status))) => {
                            self.relay_ended();
                            Poll::Ready(Err(status))
                        }
                        Poll::Ready(None) => {
                            self.relay_ended();
                            Poll::Pending
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchReply, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while this.poll_requests(cx) {}
        let reply = loop {
            if let Some(reply) = this.ready.pop_front() {
                if this.ready.is_empty() {
                    // Answers are rare after the first: no room kept for them (×10 000 streams).
                    this.ready = VecDeque::new();
                }
                break reply;
            }
            if let Poll::Ready(reply) = this.poll_relay(cx) {
                match reply {
                    Ok(response) if is_progress_answer(&response) && !this.serving.is_empty() => {
                        this.hold_progress(response);
                        continue;
                    }
                    // etcd's answers were lifted as the relay read them, in their order. One
                    // without events (created, canceled, progress) must not be lifted again
                    // here by what the relay read after it (its watches' next events): those
                    // would then predate the revision it claims.
                    Ok(response) if response.events.is_empty() => return Poll::Ready(Some(Ok(response.into()))),
                    reply => break reply.map(WatchReply::from),
                }
            }
            // What the hub watches have been told of their hubs' revisions, before they are
            // polled: a change after this has woken them, and they are polled now.
            let announced = this.held_progress.as_ref().and_then(HeldProgress::announced);
            match this.watchers.poll_next(cx) {
                Poll::Ready(Some(Followed { id, reply })) => {
                    crate::metrics::cache_events_out(reply.event_count());
                    if reply.canceled() {
                        lock(&this.ids).live.remove(&id);
                        this.serving.remove(&id);
                        this.watchers.stop(id);
                    }
                    break Ok(reply);
                }
                // Every hub watch has sent all the hubs hold: a progress answer held for them
                // may go.
                _ => match this.release_progress(announced, cx) {
                    Some(progress) => return Poll::Ready(Some(Ok(progress.into()))),
                    None => return Poll::Pending,
                },
            }
        };
        Poll::Ready(Some(reply.map(|mut reply| {
            this.seen.lift(reply.header_mut());
            reply
        })))
    }
}

/// An answer to a progress request (etcd's, or the stream's own) held for the stream's hub
/// watches, and the revisions of their hubs as those watches are told them.
struct HeldProgress {
    /// The latest answer: it covers every earlier one.
    response: WatchResponse,
    /// Answers owed to the client: one per progress request etcd answered, as etcd gives.
    owed: usize,
    /// etcd was asked again (the answer was below a revision the client had been shown): its
    /// next answer is that request's, not one the client is owed.
    asked_again: bool,
    hubs: Vec<tokio::sync::watch::Receiver<i64>>,
    /// When the answer goes even if the hubs have not been told of its revision.
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl HeldProgress {
    fn new<'a>(response: WatchResponse, hubs: impl Iterator<Item = &'a Arc<Hub>>) -> HeldProgress {
        let mut distinct: Vec<&Arc<Hub>> = Vec::new();
        for hub in hubs {
            if !distinct.iter().any(|known| Arc::ptr_eq(known, hub)) {
                distinct.push(hub);
            }
        }
        HeldProgress {
            response,
            owed: 1,
            asked_again: false,
            hubs: distinct.into_iter().map(|hub| hub.subscribe()).collect(),
            deadline: Box::pin(tokio::time::sleep(PROGRESS_HOLD)),
        }
    }

    /// Another progress request was answered while this one was held (the deadline stays:
    /// a client asking all the time still gets answers).
    fn another(&mut self, response: WatchResponse) {
        if !std::mem::take(&mut self.asked_again) {
            self.owed += 1;
        }
        if response.header.as_ref().map_or(0, |h| h.revision) >= self.revision() {
            self.response = response;
        }
    }

    fn revision(&self) -> i64 {
        self.response.header.as_ref().map_or(0, |h| h.revision)
    }

    /// The lowest revision the hub watches have been told of.
    fn announced(&self) -> Option<i64> {
        self.hubs.iter().map(|hub| *hub.borrow()).min()
    }
}

impl WatchStream {
    /// Holds a progress answer (etcd's, or the stream's own) for the stream's hub watches.
    fn hold_progress(&mut self, response: WatchResponse) {
        match self.held_progress.as_mut() {
            Some(held) => held.another(response),
            None => self.held_progress = Some(HeldProgress::new(response, self.serving.values().map(|serving| &serving.hub))),
        }
    }

    /// The held progress answer (and the copies owed, queued), once the hub watches have
    /// been told of revisions at or past its own (`announced`, read before they were
    /// polled) or [`PROGRESS_HOLD`] is over, and they have sent all they had (called when
    /// they have nothing more to send). If the client has been shown a later revision
    /// meanwhile, the answer would go back: etcd is asked again instead, or, on a stream
    /// with no watch at etcd, the answer is raised to that revision and waited for.
    fn release_progress(&mut self, announced: Option<i64>, cx: &mut Context<'_>) -> Option<WatchResponse> {
        let seen = self.seen.get();
        let held = self.held_progress.as_mut()?;
        if held.revision() < seen && self.to_etcd.is_none() {
            // The stream's own answer (no etcd to ask again): it may not go back, so the hub
            // watches are waited for up to what the client was shown.
            if let Some(header) = held.response.header.as_mut() {
                header.revision = seen;
            }
        }
        let revision = held.revision();
        let told = announced.is_some_and(|announced| announced >= revision);
        if !told && held.deadline.poll_unpin(cx).is_pending() {
            return None;
        }
        if let Some(to_etcd) = self.to_etcd.as_ref().filter(|_| revision < seen) {
            if !held.asked_again {
                // Full: tried again when the stream is next woken (by etcd's answers to
                // what fills it).
                held.asked_again = to_etcd.requests.try_send(progress_request()).is_ok();
            }
            // Held for etcd's next answer.
            return None;
        }
        let held = self.held_progress.take()?;
        for _ in 1..held.owed {
            self.ready.push_back(Ok(held.response.clone().into()));
        }
        Some(held.response)
    }
}

/// The hub watches of a stream. Most streams have one (APISIX's HTTP watches; clientv3 opens
/// a stream per watch unless told otherwise): it is polled directly, waking the stream's
/// task itself. From the second on they are merged, each with a handle to stop it.
enum HubWatches {
    None,
    One(i64, BoxStream<'static, Followed>),
    Many { merged: SelectAll<Abortable<BoxStream<'static, Followed>>>, stops: HashMap<i64, AbortHandle> },
}

impl HubWatches {
    fn push(&mut self, id: i64, responses: BoxStream<'static, Followed>) {
        match std::mem::replace(self, HubWatches::None) {
            HubWatches::None => *self = HubWatches::One(id, responses),
            HubWatches::One(first_id, first) => {
                *self = HubWatches::Many { merged: SelectAll::new(), stops: HashMap::new() };
                self.push(first_id, first);
                self.push(id, responses);
            }
            HubWatches::Many { mut merged, mut stops } => {
                let (stop, registration) = AbortHandle::new_pair();
                merged.push(Abortable::new(responses, registration));
                stops.insert(id, stop);
                *self = HubWatches::Many { merged, stops };
            }
        }
    }

    /// Stops watch `id` (if it is still there).
    fn stop(&mut self, id: i64) {
        match self {
            HubWatches::One(only, _) if *only == id => *self = HubWatches::None,
            HubWatches::Many { stops, .. } => {
                if let Some(stop) = stops.remove(&id) {
                    stop.abort();
                }
            }
            _ => {}
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Followed>> {
        match self {
            HubWatches::None => Poll::Ready(None),
            HubWatches::One(_, responses) => {
                let next = responses.poll_next_unpin(cx);
                if let Poll::Ready(None) = next {
                    *self = HubWatches::None;
                }
                next
            }
            HubWatches::Many { merged, .. } => merged.poll_next_unpin(cx),
        }
    }
}

/// Counts a hub watch in the metrics for as long as it is served.
struct WatcherCount;

impl WatcherCount {
    fn new() -> WatcherCount {
        crate::metrics::hub_watchers(1);
        WatcherCount
    }
}

impl Drop for WatcherCount {
    fn drop(&mut self) {
        crate::metrics::hub_watchers(-1);
    }
}
