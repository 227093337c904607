//! A client's Watch stream when prefixes are cached: each watch the hubs can serve (its keys
//! inside a cached prefix, its start revision still in the history) is served from a hub;
//! the others go to etcd through one relayed stream (see [`crate::watch`]) opened when the
//! first of them comes. Watch IDs are given here for both kinds, as etcd gives them, and
//! both kinds' responses are merged into the client's stream.
//!
//! Progress requests are answered from the hubs when no watch of the stream is at etcd (with
//! the revision every hub watch has been sent up to), else by etcd.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use etcdgate_cache::{Hub, Watcher};
use etcdgate_proto::etcdserverpb::{watch_request::RequestUnion, ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use etcdgate_upstream::Pool;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::cache::Caches;
use crate::context::CallContext;
use crate::gateway::ResponseStream;

/// Responses buffered towards the client (each hub watch then waits its turn, holding only
/// its position in the history).
const CLIENT_BUFFER: usize = 16;
/// etcd's answer to a create with a watch ID the stream already uses.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

type Responses = mpsc::Sender<Result<WatchResponse, Status>>;

fn lock(ids: &Mutex<Ids>) -> std::sync::MutexGuard<'_, Ids> {
    ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// IDs of the stream's live watches, shared with the task relaying etcd's answers.
#[derive(Debug, Default)]
struct Ids {
    live: HashSet<i64>,
    next: i64,
}

/// A watch served by a hub: the hub, its pump task and how far it has sent.
struct HubWatch {
    hub: Arc<Hub>,
    pump: AbortHandle,
    sent_through: Arc<AtomicI64>,
}

struct Mux {
    pool: Arc<Pool>,
    caches: Arc<Caches>,
    ctx: CallContext,
    client: Responses,
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
) -> Result<ResponseStream<WatchResponse>, Status> {
    let (client, responses) = mpsc::channel(CLIENT_BUFFER);
    let mut mux = Mux { pool, caches, ctx, client, ids: Arc::default(), hub_watches: HashMap::new(), relay: None };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                request = input.next() => match request {
                    Some(request) => {
                        if !mux.handle(request).await {
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
        for watch in mux.hub_watches.values() {
            watch.pump.abort();
        }
    });
    Ok(Box::pin(ReceiverStream::new(responses)))
}

impl Mux {
    /// Handles one client request; false once the client is gone.
    async fn handle(&mut self, request: WatchRequest) -> bool {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => match self.hub_watches.remove(&cancel.watch_id) {
                Some(watch) => {
                    watch.pump.abort();
                    lock(&self.ids).live.remove(&cancel.watch_id);
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
        let Some((hub, (mut watcher, created))) = served else {
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
        let (client, sent, ctx, ids) = (self.client.clone(), sent_through.clone(), self.ctx.clone(), self.ids.clone());
        let count = WatcherCount::new();
        let pump = tokio::spawn(async move {
            let _count = count;
            loop {
                let mut response = watcher.next().await;
                let canceled = response.canceled;
                crate::metrics::cache_events_out(response.events.len());
                if canceled {
                    lock(&ids).live.remove(&id);
                }
                ctx.seen.lift(&mut response.header);
                if client.send(Ok(response)).await.is_err() || canceled {
                    return;
                }
                sent.store(watcher.next_revision() - 1, Ordering::Release);
            }
        })
        .abort_handle();
        self.hub_watches.insert(id, HubWatch { hub, pump, sent_through });
        true
    }

    async fn send(&self, mut response: WatchResponse) -> bool {
        self.ctx.seen.lift(&mut response.header);
        self.client.send(Ok(response)).await.is_ok()
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
                        if client.send(response).await.is_err() {
                            return;
                        }
                    }
                }
                Err(status) => {
                    let _ = client.send(Err(status)).await;
                }
            }
        });
        true
    }
}

/// Counts a hub watch in the metrics for as long as its pump exists.
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
