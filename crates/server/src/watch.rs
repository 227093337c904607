//! A client's Watch stream that survives the member under it.
//!
//! etcdgate relays a client's watch stream to one member's watch stream, keeping track of
//! every watch on it: its create request, the ID it got and the next revision the client has
//! not seen yet. When the member's stream fails — the member died, hung (HTTP/2 keepalive
//! gives up), lost its leader (upstream streams carry `hasleader`, so etcd cancels them) —
//! the watches are created again on another member from that next revision, with the same
//! IDs, and their `created` answers are swallowed: the client's stream stays open and sees no
//! error, no gap, no duplicate, no second `created`, and header revisions never go back.
//!
//! Watch IDs are chosen here (as etcd chooses them: the lowest free ID from a counter) and
//! sent explicitly, so they stay the same whichever member serves them. The one exception is
//! ID 0, which etcd only hands out itself: it is asked for with an automatic create, which
//! on a stream whose IDs mirror ours always yields 0.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use etcdgate_proto::etcdserverpb::{
    watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest, WatchRequest, WatchResponse,
};
use etcdgate_upstream::{classify, Failure, MemberConnection, Pool, RetryPolicy, Target};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Status, Streaming};

use crate::context::CallContext;
use crate::gateway::ResponseStream;

/// How long a member may take to answer the creates replayed on it before the next is tried.
const REPLAY_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages buffered towards a member or a client.
const STREAM_BUFFER: usize = 64;

/// One watch the client has on its stream.
#[derive(Debug, Clone)]
struct Tracked {
    create: WatchCreateRequest,
    /// First revision the client has not seen; 0 while that is "from now" and nothing came.
    next_revision: i64,
}

#[derive(Debug, Default)]
struct Watches {
    live: BTreeMap<i64, Tracked>,
    /// Creates sent upstream and not yet answered, in order.
    pending: VecDeque<WatchCreateRequest>,
    /// IDs re-created on a new member whose `created` answer the client must not see again.
    recreating: HashSet<i64>,
    next_id: i64,
    /// Highest header revision the client has seen.
    max_revision: i64,
}

impl Watches {
    /// Gives an automatic create its ID, as etcd would: the lowest free one from the counter.
    fn assign_id(&mut self, mut create: WatchCreateRequest) -> WatchCreateRequest {
        if create.watch_id == 0 {
            while self.live.contains_key(&self.next_id) || self.pending.iter().any(|p| p.watch_id == self.next_id) {
                self.next_id += 1;
            }
            create.watch_id = self.next_id;
            self.next_id += 1;
        }
        create
    }

    /// What goes upstream for a client's request.
    fn outgoing(&mut self, request: WatchRequest) -> WatchRequest {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                let create = self.assign_id(create);
                self.pending.push_back(create.clone());
                WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }
            }
            other => WatchRequest { request_union: other },
        }
    }

    /// Updates the book-keeping for a member's answer; `None` if the client must not see it.
    fn incoming(&mut self, response: WatchResponse) -> Option<WatchResponse> {
        let id = response.watch_id;
        let revision = response.header.as_ref().map_or(0, |h| h.revision);
        if response.created {
            if self.recreating.remove(&id) {
                return None;
            }
            if let Some(create) = self.pending.pop_front() {
                if !response.canceled {
                    let next_revision = if create.start_revision > 0 { create.start_revision } else { revision + 1 };
                    self.live.insert(id, Tracked { create, next_revision });
                }
            }
        } else if response.canceled {
            self.live.remove(&id);
            self.recreating.remove(&id);
        } else if let Some(last) = response.events.last() {
            if let (Some(watch), false) = (self.live.get_mut(&id), response.fragment) {
                let event_revision = last.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                watch.next_revision = watch.next_revision.max(event_revision + 1);
            }
        } else if revision < self.max_revision {
            // A progress notification from a member behind the one before: it says nothing new.
            return None;
        }
        self.max_revision = self.max_revision.max(revision);
        Some(response)
    }

    /// The creates that bring a new member's stream to where the client is.
    fn replay(&mut self) -> Vec<WatchRequest> {
        self.recreating = self.live.keys().copied().collect();
        let mut creates: Vec<WatchCreateRequest> = self
            .live
            .values()
            .map(|watch| WatchCreateRequest { start_revision: watch.next_revision, ..watch.create.clone() })
            .collect();
        creates.extend(self.pending.iter().cloned());
        creates
            .into_iter()
            .map(|create| WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) })
            .collect()
    }
}

/// A member's watch stream: where to send requests, where answers come from.
struct Upstream {
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

/// Opens a watch stream on a member, sending `first` on it, and waits for its first answer.
async fn open(pool: &Pool, ctx: &CallContext, first: Vec<WatchRequest>) -> Result<Upstream, Status> {
    pool.call(&Target::Any, RetryPolicy::Read, |connection: MemberConnection| {
        let (requests, receiver) = mpsc::channel(STREAM_BUFFER);
        for message in &first {
            let _ = requests.try_send(message.clone());
        }
        let mut request = ctx.request(ReceiverStream::new(receiver));
        request.metadata_mut().insert("hasleader", MetadataValue::from_static("true"));
        let replaying = !first.is_empty();
        async move {
            let mut client = WatchClient::new(connection).max_decoding_message_size(usize::MAX);
            let opening = client.watch(request);
            let response = if replaying {
                tokio::time::timeout(REPLAY_ANSWER_TIMEOUT, opening)
                    .await
                    .map_err(|_| Status::unavailable("etcdgate: member did not answer the watch stream"))??
            } else {
                opening.await?
            };
            Ok(Upstream { requests, responses: response.into_inner() })
        }
    })
    .await
}

/// Whether a failure of a member's watch stream is the member's (try another) rather than an
/// answer for the client.
fn member_failed(status: &Status) -> bool {
    classify(status) != Failure::Answer || status.message() == "etcdserver: no leader"
}

/// Serves one client watch stream; see the module doc.
pub async fn watch(
    pool: Arc<Pool>,
    ctx: CallContext,
    mut input: BoxStream<'static, WatchRequest>,
) -> Result<ResponseStream<WatchResponse>, Status> {
    let mut watches = Watches::default();
    // As etcd's gateway, answer nothing before the client asked something.
    let first = match input.next().await {
        Some(request) => vec![watches.outgoing(request)],
        None => Vec::new(),
    };
    let upstream = open(&pool, &ctx, first).await?;
    let (client, responses) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(relay(pool, ctx, input, upstream, watches, client));
    Ok(Box::pin(ReceiverStream::new(responses)))
}

async fn relay(
    pool: Arc<Pool>,
    ctx: CallContext,
    mut input: BoxStream<'static, WatchRequest>,
    mut upstream: Upstream,
    mut watches: Watches,
    client: mpsc::Sender<Result<WatchResponse, Status>>,
) {
    let mut input_open = true;
    loop {
        tokio::select! {
            request = input.next(), if input_open => match request {
                Some(request) => {
                    let outgoing = watches.outgoing(request);
                    // A send failure means the stream just failed: its answer arm fails over.
                    let _ = upstream.requests.send(outgoing).await;
                }
                // etcd keeps a watch stream whose client stopped sending; so does etcdgate.
                None => input_open = false,
            },
            answer = upstream.responses.next() => match answer {
                Some(Ok(response)) => {
                    if let Some(response) = watches.incoming(response) {
                        if client.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Err(status)) if !member_failed(&status) => {
                    let _ = client.send(Err(status)).await;
                    return;
                }
                failed => {
                    if let Some(Err(status)) = &failed {
                        tracing::info!(error = %status.message(), watches = watches.live.len(), "watch stream lost its member, moving it");
                    }
                    match open(&pool, &ctx, watches.replay()).await {
                        Ok(next) => upstream = next,
                        Err(status) => {
                            let _ = client.send(Err(status)).await;
                            return;
                        }
                    }
                }
            },
            _ = client.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdgate_proto::etcdserverpb::ResponseHeader;
    use etcdgate_proto::mvccpb::{Event, KeyValue};

    fn create(key: &str, start_revision: i64) -> WatchRequest {
        WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.into(),
                start_revision,
                ..Default::default()
            })),
        }
    }

    fn answer(id: i64, revision: i64) -> WatchResponse {
        WatchResponse { watch_id: id, header: Some(ResponseHeader { revision, ..Default::default() }), ..Default::default() }
    }

    fn event_at(id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            events: vec![Event { kv: Some(KeyValue { mod_revision: revision, ..Default::default() }), ..Default::default() }],
            ..answer(id, revision)
        }
    }

    fn sent_id(request: &WatchRequest) -> i64 {
        match &request.request_union {
            Some(RequestUnion::CreateRequest(create)) => create.watch_id,
            _ => panic!("not a create"),
        }
    }

    #[test]
    fn ids_are_assigned_like_etcd_and_kept_across_a_move() {
        let mut watches = Watches::default();
        assert_eq!(sent_id(&watches.outgoing(create("a", 0))), 0);
        assert_eq!(sent_id(&watches.outgoing(create("b", 7))), 1);
        assert!(watches.incoming(WatchResponse { created: true, ..answer(0, 10) }).is_some());
        assert!(watches.incoming(WatchResponse { created: true, ..answer(1, 10) }).is_some());
        assert!(watches.incoming(event_at(0, 12)).is_some());

        let replay = watches.replay();
        let starts: Vec<(i64, i64)> = replay
            .iter()
            .map(|r| match &r.request_union {
                Some(RequestUnion::CreateRequest(c)) => (c.watch_id, c.start_revision),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(starts, vec![(0, 13), (1, 7)], "from the next unseen revision, same IDs");
        assert!(watches.incoming(WatchResponse { created: true, ..answer(0, 9) }).is_none(), "no second created");
        assert!(watches.incoming(WatchResponse { created: true, ..answer(1, 9) }).is_none());
        assert!(watches.incoming(answer(0, 9)).is_none(), "progress from a member behind is dropped");
        assert!(watches.incoming(event_at(0, 13)).is_some());
    }

    #[test]
    fn canceled_and_refused_watches_are_not_replayed() {
        let mut watches = Watches::default();
        watches.outgoing(create("a", 0));
        watches.outgoing(create("b", 0));
        watches.incoming(WatchResponse { created: true, canceled: true, ..answer(0, 5) });
        watches.incoming(WatchResponse { created: true, ..answer(1, 5) });
        watches.incoming(WatchResponse { canceled: true, compact_revision: 3, ..answer(1, 5) });
        assert!(watches.replay().is_empty());
        assert_eq!(sent_id(&watches.outgoing(create("c", 0))), 2, "IDs are not reused while the counter runs");
    }

    #[test]
    fn fragments_move_the_resume_point_only_when_complete() {
        let mut watches = Watches::default();
        watches.outgoing(create("a", 0));
        watches.incoming(WatchResponse { created: true, ..answer(0, 4) });
        watches.incoming(WatchResponse { fragment: true, ..event_at(0, 6) });
        assert_eq!(watches.live[&0].next_revision, 5);
        watches.incoming(event_at(0, 6));
        assert_eq!(watches.live[&0].next_revision, 7);
    }
}
