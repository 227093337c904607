//! A client's Watch stream when prefixes are cached: each watch the hubs can serve (its keys
//! inside a cached prefix, its start revision still in the history) is served from a hub;
//! the others go to etcd through one relayed stream (see [`crate::watch`]) opened when the
//! first of them comes. Watch IDs are given here for both kinds, as etcd gives them, and
//! both kinds' responses are merged into the client's stream.
//!
//! A stream is one task reading the client's requests and, on the response side, a stream
//! that merges that task's answers with its hub watches' responses: each hub watch is read
//! from the history when the client can take more, with no task or queue of its own, and
//! its events go out as encoded once for every watcher (see [`WatchReply`]).
//!
//! Progress requests are answered from the hubs when no watch of the stream is at etcd (with
//! the revision every hub watch has been sent up to), else by etcd.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use etcdgate_cache::{Hub, WatchReply, Watcher};
use etcdgate_proto::etcdserverpb::{watch_request::RequestUnion, ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use etcdgate_upstream::Pool;
use futures::future::AbortHandle;
use futures::stream::{Abortable, BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::cache::Caches;
use crate::context::{CallContext, SeenRevision};
use crate::gateway::ResponseStream;

/// Answers queued towards the client's stream (hub watches are not queued: the stream reads
/// them from the history when the client can take more).
const CLIENT_BUFFER: usize = 16;
/// etcd's answer to a create with a watch ID the stream already uses.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

fn lock(ids: &Mutex<Ids>) -> std::sync::MutexGuard<'_, Ids> {
    ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// IDs of the stream's live watches, shared with the task relaying etcd's answers.
#[derive(Debug, Default)]
struct Ids {
    live: HashSet<i64>,
    next: i64,
}

/// What the request side of a client stream tells its response side, in order.
enum Control {
    /// An answer to send.
    Reply(Box<Result<WatchReply, Status>>),
    /// A hub watch whose `created` answer went before: its responses follow.
    Serve(Box<(Watcher, Arc<AtomicI64>)>),
    /// A hub watch the client canceled (its `canceled` answer follows).
    Stop(i64),
}

/// A watch served by a hub: the hub, and the revision its responses have been sent up to.
struct HubWatch {
    hub: Arc<Hub>,
    sent_through: Arc<AtomicI64>,
}

struct Mux {
    pool: Arc<Pool>,
    caches: Arc<Caches>,
    ctx: CallContext,
    client: mpsc::Sender<Control>,
    ids: Arc<Mutex<Ids>>,
    hub_watches: HashMap<i64, HubWatch>,
    /// The relayed stream to etcd, once a watch needed it.
    relay: Option<mpsc::Sender<WatchRequest>>,
}

/// Serves one client watch stream with the hubs' help.
pub async fn watch(
    pool: Arc<Pool>,
    caches: Arc<Caches>,
    ctx: CallContext,
    mut input: BoxStream<'static, WatchRequest>,
) -> Result<ResponseStream<WatchReply>, Status> {
    let (client, control) = mpsc::channel(CLIENT_BUFFER);
    let ids = Arc::<Mutex<Ids>>::default();
    let responses = Responses::new(control, ids.clone(), ctx.seen.clone());
    let mut mux = Mux { pool, caches, ctx, client, ids, hub_watches: HashMap::new(), relay: None };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                request = input.next() => match request {
                    // Boxed: the task's own state stays small while it waits for requests.
                    Some(request) => {
                        if !Box::pin(mux.handle(request)).await {
                            break;
                        }
                    }
                    // As etcd, the stream stays open after the client's input ends.
                    None => {
                        mux.client.closed().await;
                        break;
                    }
                },
                () = mux.client.closed() => break,
            }
        }
    });
    Ok(Box::pin(responses))
}

impl Mux {
    /// Handles one client request; false once the client is gone.
    async fn handle(&mut self, request: WatchRequest) -> bool {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => match self.hub_watches.remove(&cancel.watch_id) {
                Some(watch) => {
                    lock(&self.ids).live.remove(&cancel.watch_id);
                    if self.client.send(Control::Stop(cancel.watch_id)).await.is_err() {
                        return false;
                    }
                    let header = watch.hub.header();
                    self.send(WatchResponse { header, watch_id: cancel.watch_id, canceled: true, ..Default::default() }).await
                }
                None => self.to_etcd(WatchRequest { request_union: Some(RequestUnion::CancelRequest(cancel)) }).await,
            },
            Some(RequestUnion::ProgressRequest(progress)) => {
                if self.relay.is_some() {
                    return self.to_etcd(WatchRequest { request_union: Some(RequestUnion::ProgressRequest(progress)) }).await;
                }
                let mut header = self.header();
                if let Some(header) = header.as_mut() {
                    let sent = self.hub_watches.values().map(|w| w.sent_through.load(Ordering::Acquire)).min();
                    header.revision = sent.map_or(header.revision, |sent| sent.min(header.revision));
                }
                self.send(WatchResponse { header, watch_id: -1, ..Default::default() }).await
            }
            None => true,
        }
    }

    /// A header at the first hub's revision (for answers that concern no one watch).
    fn header(&self) -> Option<ResponseHeader> {
        self.caches.hubs().first().and_then(|hub| hub.header())
    }

    async fn create(&mut self, mut create: WatchCreateRequest) -> bool {
        {
            let mut ids = lock(&self.ids);
            if create.watch_id == 0 {
                while ids.live.contains(&ids.next) {
                    ids.next += 1;
                }
                create.watch_id = ids.next;
                ids.next += 1;
            } else if self.hub_watches.contains_key(&create.watch_id) {
                drop(ids);
                let header = self.header();
                let refused = WatchResponse {
                    header,
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: DUPLICATE_ID.into(),
                    ..Default::default()
                };
                return self.send(refused).await;
            }
        }
        let id = create.watch_id;
        let served = match self.caches.hub_for(&create.key, &create.range_end) {
            Some(hub) if self.caches.auth_off(&self.ctx).await.is_some() => {
                Watcher::create(hub, id, &create, self.caches.max_request_bytes()).map(|served| (hub.clone(), served))
            }
            _ => None,
        };
        let Some((hub, (watcher, created))) = served else {
            if create.watch_id >= 0 {
                lock(&self.ids).live.insert(id);
            }
            return self.to_etcd(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await;
        };
        lock(&self.ids).live.insert(id);
        if !self.send(created).await {
            return false;
        }
        let sent_through = Arc::new(AtomicI64::new(watcher.next_revision() - 1));
        self.hub_watches.insert(id, HubWatch { hub, sent_through: sent_through.clone() });
        self.client.send(Control::Serve(Box::new((watcher, sent_through)))).await.is_ok()
    }

    async fn send(&self, response: WatchResponse) -> bool {
        self.client.send(Control::Reply(Box::new(Ok(response.into())))).await.is_ok()
    }

    /// Sends a request to etcd's stream, opening it first if needed.
    async fn to_etcd(&mut self, request: WatchRequest) -> bool {
        if let Some(relay) = &self.relay {
            return relay.send(request).await.is_ok();
        }
        let (relay, input) = mpsc::channel(CLIENT_BUFFER);
        let _ = relay.send(request).await;
        self.relay = Some(relay);
        let (pool, ctx, client, ids) = (self.pool.clone(), self.ctx.clone(), self.client.clone(), self.ids.clone());
        tokio::spawn(async move {
            match crate::watch::watch(pool, ctx, ReceiverStream::new(input).boxed()).await {
                Ok(mut responses) => {
                    while let Some(response) = responses.next().await {
                        if let Ok(response) = &response {
                            if response.canceled {
                                lock(&ids).live.remove(&response.watch_id);
                            }
                        }
                        if client.send(Control::Reply(Box::new(response.map(WatchReply::from)))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(status) => {
                    let _ = client.send(Control::Reply(Box::new(Err(status)))).await;
                }
            }
        });
        true
    }
}

/// The response side of a client stream: the mux's answers in order, and the responses of
/// its hub watches, each read from the hub's history when the client can take more (no task
/// or queue per watch).
struct Responses {
    control: mpsc::Receiver<Control>,
    control_open: bool,
    watchers: SelectAll<Abortable<BoxStream<'static, Followed>>>,
    serving: HashMap<i64, Serving>,
    ids: Arc<Mutex<Ids>>,
    seen: SeenRevision,
}

/// A hub watch being served: how to stop it and where to note how far it was sent.
struct Serving {
    stop: AbortHandle,
    sent_through: Arc<AtomicI64>,
    _count: WatcherCount,
}

impl Responses {
    fn new(control: mpsc::Receiver<Control>, ids: Arc<Mutex<Ids>>, seen: SeenRevision) -> Responses {
        Responses { control, control_open: true, watchers: SelectAll::new(), serving: HashMap::new(), ids, seen }
    }

    /// Serves a hub watch: its responses join the stream until it is canceled.
    fn serve(&mut self, watcher: Watcher, sent_through: Arc<AtomicI64>) {
        let (stop, registration) = AbortHandle::new_pair();
        self.serving.insert(watcher.id(), Serving { stop, sent_through, _count: WatcherCount::new() });
        let responses = futures::stream::unfold(Some(watcher), |watcher| async move {
            let mut watcher = watcher?;
            let reply = watcher.next().await;
            let followed = Followed { id: watcher.id(), next_revision: watcher.next_revision(), reply };
            // A canceled watch is done after its cancel.
            let watcher = (!followed.reply.canceled()).then_some(watcher);
            Some((followed, watcher))
        });
        self.watchers.push(Abortable::new(responses.boxed(), registration));
    }
}

/// A hub watch's response, and the next revision that watch will send.
struct Followed {
    id: i64,
    next_revision: i64,
    reply: WatchReply,
}

impl Stream for Responses {
    type Item = Result<WatchReply, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while this.control_open {
            match this.control.poll_recv(cx) {
                Poll::Ready(Some(Control::Reply(reply))) => {
                    let mut reply = *reply;
                    if let Ok(reply) = &mut reply {
                        this.seen.lift(reply.header_mut());
                    }
                    return Poll::Ready(Some(reply));
                }
                Poll::Ready(Some(Control::Serve(served))) => {
                    let (watcher, sent_through) = *served;
                    this.serve(watcher, sent_through);
                }
                Poll::Ready(Some(Control::Stop(id))) => {
                    if let Some(serving) = this.serving.remove(&id) {
                        serving.stop.abort();
                    }
                }
                Poll::Ready(None) => this.control_open = false,
                Poll::Pending => break,
            }
        }
        if let Poll::Ready(Some(Followed { id, next_revision, mut reply })) = this.watchers.poll_next_unpin(cx) {
            crate::metrics::cache_events_out(reply.event_count());
            this.seen.lift(reply.header_mut());
            if reply.canceled() {
                lock(&this.ids).live.remove(&id);
                this.serving.remove(&id);
            } else if let Some(serving) = this.serving.get(&id) {
                serving.sent_through.store(next_revision - 1, Ordering::Release);
            }
            return Poll::Ready(Some(Ok(reply)));
        }
        if !this.control_open && this.watchers.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Pending
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
