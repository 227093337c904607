//! A client's Watch stream that survives the member under it (relayed by [`crate::resume`]).
//!
//! etcdgate keeps track of every watch on a client's stream: its create request, the ID it
//! got and the next revision the client has not seen yet. When the member's stream fails,
//! the watches are created again on another member from that next revision, with the same
//! IDs, and their `created` answers are swallowed: the client's stream stays open and sees no
//! error, no gap, no duplicate, no second `created`, and header revisions never go back.
//! Every progress request gets its answer, as from etcd: one below a revision the client's
//! connection has been shown is not given (it would go back) and etcd is asked again, and
//! those unanswered when a member fails are asked of the next.
//!
//! Watch IDs are chosen here (as etcd chooses them: the lowest free ID from a counter) and
//! sent explicitly, so they stay the same whichever member serves them. The one exception is
//! ID 0, which etcd only hands out itself: it is asked for with an automatic create, which
//! on a stream whose IDs mirror ours always yields 0.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use etcdgate_proto::etcdserverpb::{
    watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest, WatchRequest, WatchResponse,
};
use etcdgate_upstream::{MemberConnection, Pool};
use futures::stream::BoxStream;
use tonic::{Request, Status};

use crate::context::{CallContext, SeenRevision};
use crate::gateway::ResponseStream;
use crate::resume::{self, Opening, Outgoing, Resumable, Stalled};

/// The watch ID of etcd's answer to a progress request (no watch's own).
pub(crate) const PROGRESS_ANSWER_ID: i64 = -1;
/// Progress requests asked again of a new member, at most (answers beyond are lost).
const MAX_PROGRESS_REPLAYED: usize = 16;

/// A request for the stream's progress.
pub(crate) fn progress_request() -> WatchRequest {
    WatchRequest { request_union: Some(RequestUnion::ProgressRequest(Default::default())) }
}

/// etcd's answer to a progress request (not a watch's own progress notification).
pub(crate) fn is_progress_answer(response: &WatchResponse) -> bool {
    response.watch_id == PROGRESS_ANSWER_ID && response.events.is_empty() && !response.created && !response.canceled
}

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
    /// IDs re-created on a new member, in the order their creates went (etcd answers in
    /// order), whose `created` answer the client must not see again.
    recreating: VecDeque<i64>,
    next_id: i64,
    /// Progress requests sent upstream whose answer the client has not had.
    progress_unanswered: usize,
    /// The last answer was a progress answer below a revision the client was shown (not
    /// given): etcd is asked again.
    progress_again: bool,
    /// Highest header revision the client's connection has seen.
    seen: SeenRevision,
}

impl Watches {
    /// Gives an automatic create its ID, as etcd would: the lowest free one from the counter
    /// (none for a range that holds no key, which etcd refuses before giving an ID).
    fn assign_id(&mut self, mut create: WatchCreateRequest) -> WatchCreateRequest {
        if create.watch_id == 0 && !etcdgate_cache::KeyRange::new(&create.key, &create.range_end).is_empty() {
            while self.uses_id(self.next_id) {
                self.next_id += 1;
            }
            create.watch_id = self.next_id;
            self.next_id += 1;
        }
        create
    }

    /// Whether a watch of the stream has `id`, created or being created.
    fn uses_id(&self, id: i64) -> bool {
        self.live.contains_key(&id) || self.pending.iter().any(|p| p.watch_id == id)
    }
}

impl Resumable for Watches {
    type Req = WatchRequest;
    type Resp = WatchResponse;
    const NAME: &'static str = "watch";
    const ENDS_WITH_CLIENT_INPUT: bool = false;

    /// What goes upstream for a client's request (nothing for the cancel of a watch the
    /// stream does not have, which etcd ignores).
    fn outgoing(&mut self, request: WatchRequest) -> Option<WatchRequest> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                let create = self.assign_id(create);
                self.pending.push_back(create.clone());
                Some(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) })
            }
            Some(RequestUnion::CancelRequest(cancel)) if !self.uses_id(cancel.watch_id) => None,
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_unanswered += 1;
                Some(progress_request())
            }
            other => Some(WatchRequest { request_union: other }),
        }
    }

    /// Updates the book-keeping for a member's answer; `None` if the client must not see it.
    fn incoming(&mut self, response: WatchResponse) -> Option<WatchResponse> {
        let id = response.watch_id;
        let revision = response.header.as_ref().map_or(0, |h| h.revision);
        if response.created {
            if let Some(recreated) = self.recreating.pop_front() {
                if !response.canceled {
                    return None;
                }
                // Refused by the new member (the stream's token expired or went old since, or
                // the user lost the permission; etcd 3.4 names the watch -1): the client's
                // watch is gone, and it is told so as of any canceled watch.
                self.live.remove(&recreated);
                let mut response = WatchResponse { watch_id: recreated, created: false, ..response };
                self.seen.lift(&mut response.header);
                return Some(response);
            }
            if let Some(create) = self.pending.pop_front() {
                if !response.canceled {
                    let next_revision = if create.start_revision > 0 { create.start_revision } else { revision + 1 };
                    self.live.insert(id, Tracked { create, next_revision });
                }
            }
        } else if response.canceled {
            self.live.remove(&id);
        } else if let Some(last) = response.events.last() {
            if let (Some(watch), false) = (self.live.get_mut(&id), response.fragment) {
                let event_revision = last.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                watch.next_revision = watch.next_revision.max(event_revision + 1);
            }
        } else if id == PROGRESS_ANSWER_ID {
            if revision < self.seen.get() {
                // Going back would tell the client less than it knows (the connection was
                // shown a later revision meanwhile): etcd is asked again.
                self.progress_again = true;
                return None;
            }
            self.progress_unanswered = self.progress_unanswered.saturating_sub(1);
        } else if revision < self.seen.get() {
            // A progress notification from a member behind the one before: it says nothing new.
            return None;
        }
        let mut response = response;
        self.seen.lift(&mut response.header);
        Some(response)
    }

    fn ask_again(&mut self) -> Option<WatchRequest> {
        std::mem::take(&mut self.progress_again).then(progress_request)
    }

    /// The creates that bring a new member's stream to where the client is, then its
    /// unanswered progress requests (a few at most: they all get the same answer).
    fn replay(&mut self) -> Vec<WatchRequest> {
        self.recreating = self.live.keys().copied().collect();
        let mut creates: Vec<WatchCreateRequest> =
            self.live.values().map(|watch| WatchCreateRequest { start_revision: watch.next_revision, ..watch.create.clone() }).collect();
        creates.extend(self.pending.iter().cloned());
        let mut replay: Vec<WatchRequest> =
            creates.into_iter().map(|create| WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).collect();
        self.progress_again = false;
        self.progress_unanswered = self.progress_unanswered.min(MAX_PROGRESS_REPLAYED);
        replay.extend((0..self.progress_unanswered).map(|_| progress_request()));
        replay
    }

    fn open(connection: MemberConnection, request: Request<Outgoing<WatchRequest>>) -> Opening<WatchResponse> {
        Box::pin(async move { WatchClient::new(connection).max_decoding_message_size(usize::MAX).watch(request).await })
    }
}

/// Serves one client watch stream; see the module doc.
pub async fn watch(
    pool: Arc<Pool>,
    ctx: CallContext,
    input: BoxStream<'static, WatchRequest>,
) -> Result<ResponseStream<WatchResponse>, Status> {
    relay(pool, ctx, input, None).await
}

/// [`watch`], for an owner that can tell when the stream stalls (the cache's feed knows
/// which revisions must come): a report on `stalled` moves it to another member at once.
pub async fn watch_reporting_stalls(
    pool: Arc<Pool>,
    ctx: CallContext,
    input: BoxStream<'static, WatchRequest>,
    stalled: Stalled,
) -> Result<ResponseStream<WatchResponse>, Status> {
    relay(pool, ctx, input, Some(stalled)).await
}

async fn relay(
    pool: Arc<Pool>,
    ctx: CallContext,
    input: BoxStream<'static, WatchRequest>,
    stalled: Option<Stalled>,
) -> Result<ResponseStream<WatchResponse>, Status> {
    let watches = Watches { seen: ctx.seen.clone(), ..Watches::default() };
    resume::relay(pool, ctx, input, watches, stalled).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdgate_proto::etcdserverpb::{ResponseHeader, WatchCancelRequest};
    use etcdgate_proto::mvccpb::{Event, KeyValue};

    fn create(key: &str, start_revision: i64) -> WatchRequest {
        WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest { key: key.into(), start_revision, ..Default::default() })),
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
    fn cancels_of_watches_the_stream_does_not_have_are_not_sent() {
        let mut watches = Watches::default();
        let cancel = |watch_id| WatchRequest { request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })) };
        assert!(watches.outgoing(cancel(0)).is_none(), "etcd answers nothing: a stream opened with it would wait");
        watches.outgoing(create("a", 0)).unwrap();
        assert!(watches.outgoing(cancel(0)).is_some(), "pending");
        watches.incoming(WatchResponse { created: true, ..answer(0, 10) });
        assert!(watches.outgoing(cancel(0)).is_some(), "live");
        assert!(watches.outgoing(cancel(5)).is_none());
    }

    #[test]
    fn ids_are_assigned_like_etcd_and_kept_across_a_move() {
        let mut watches = Watches::default();
        assert_eq!(sent_id(&watches.outgoing(create("a", 0)).unwrap()), 0);
        assert_eq!(sent_id(&watches.outgoing(create("b", 7)).unwrap()), 1);
        assert!(watches.incoming(WatchResponse { created: true, ..answer(0, 10) }).is_some());
        assert!(watches.incoming(WatchResponse { created: true, ..answer(1, 10) }).is_some());
        assert!(watches.incoming(event_at(0, 12)).is_some());
        assert!(watches.incoming(answer(1, 20)).is_some(), "progress: the old member was at 20");

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
        let event = watches.incoming(event_at(0, 13)).unwrap();
        assert_eq!(event.header.unwrap().revision, 20, "header revisions never go back");
    }

    #[test]
    fn canceled_and_refused_watches_are_not_replayed() {
        let mut watches = Watches::default();
        watches.outgoing(create("a", 0)).unwrap();
        watches.outgoing(create("b", 0)).unwrap();
        watches.incoming(WatchResponse { created: true, canceled: true, ..answer(0, 5) });
        watches.incoming(WatchResponse { created: true, ..answer(1, 5) });
        watches.incoming(WatchResponse { canceled: true, compact_revision: 3, ..answer(1, 5) });
        assert!(watches.replay().is_empty());
        assert_eq!(sent_id(&watches.outgoing(create("c", 0)).unwrap()), 2, "IDs are not reused while the counter runs");
    }

    #[test]
    fn a_watch_refused_on_the_new_member_is_canceled_for_the_client() {
        let mut watches = Watches::default();
        watches.outgoing(create("a", 0)).unwrap();
        watches.outgoing(create("b", 0)).unwrap();
        watches.incoming(WatchResponse { created: true, ..answer(0, 5) });
        watches.incoming(WatchResponse { created: true, ..answer(1, 5) });
        assert_eq!(watches.replay().len(), 2);
        assert!(watches.incoming(WatchResponse { created: true, ..answer(0, 6) }).is_none(), "no second created");
        let refused = WatchResponse { created: true, canceled: true, cancel_reason: "etcdserver: permission denied".into(), ..answer(-1, 6) };
        let told = watches.incoming(refused).expect("the client learns its watch is gone");
        assert_eq!((told.watch_id, told.created, told.canceled), (1, false, true));
        assert_eq!(told.cancel_reason, "etcdserver: permission denied");
        assert_eq!(watches.live.keys().copied().collect::<Vec<_>>(), vec![0], "not re-created again");
    }

    #[test]
    fn fragments_move_the_resume_point_only_when_complete() {
        let mut watches = Watches::default();
        watches.outgoing(create("a", 0)).unwrap();
        watches.incoming(WatchResponse { created: true, ..answer(0, 4) });
        watches.incoming(WatchResponse { fragment: true, ..event_at(0, 6) });
        assert_eq!(watches.live[&0].next_revision, 5);
        watches.incoming(event_at(0, 6));
        assert_eq!(watches.live[&0].next_revision, 7);
    }
}
