//! The router both front ends call: every etcd RPC, unary or streaming, enters here with its
//! [`CallContext`] and is answered from the watch cache or leaves for a member of the pool;
//! the writes it forwards tell the cache which revisions its hubs must reach before they
//! answer again.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcdgate_cache::WatchReply;
use etcdgate_proto::etcdserverpb::{
    maintenance_client::MaintenanceClient, LeaseKeepAliveRequest, LeaseKeepAliveResponse, RangeRequest, SnapshotRequest, SnapshotResponse,
    WatchRequest,
};
use etcdgate_proto::v3electionpb::{election_client::ElectionClient, LeaderRequest, LeaderResponse};
use etcdgate_upstream::{Pool, RetryPolicy, Target, Timing};
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use tonic::Status;

use crate::cache::Caches;
use crate::context::CallContext;
use crate::rpc::{Route, UnaryRpc};
use crate::shared_calls::SharedCalls;

/// Pauses before asking again for a read answered from behind the client (members apply a
/// committed entry within milliseconds of each other).
const CATCH_UP_PAUSES: [Duration; 5] = [
    Duration::from_millis(5),
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
];

/// A stream of responses to one streaming call.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers calls from the watch cache or forwards them to the member pool.
#[derive(Debug)]
pub struct Gateway {
    pool: Arc<Pool>,
    caches: Option<Arc<Caches>>,
    shared: Arc<SharedCalls>,
}

impl Gateway {
    /// A gateway that forwards everything.
    pub fn new(pool: Arc<Pool>) -> Gateway {
        Gateway { pool, caches: None, shared: Arc::default() }
    }

    /// A gateway that answers reads and watches inside cached prefixes from `caches`.
    pub fn with_caches(pool: Arc<Pool>, caches: Arc<Caches>) -> Gateway {
        Gateway { pool, caches: Some(caches), shared: Arc::default() }
    }

    /// The gateway of another worker thread, with that worker's `pool` (connections live on
    /// one runtime), the same caches and the same calls in flight.
    pub fn sibling(&self, pool: Arc<Pool>) -> Gateway {
        Gateway { pool, caches: self.caches.clone(), shared: self.shared.clone() }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    fn target(route: Route, ctx: &CallContext) -> Target {
        match (route, &ctx.member) {
            (Route::Leader, _) => Target::Leader,
            (Route::MemberOrBalanced, Some(member)) => Target::Named(member.clone()),
            _ => Target::Any,
        }
    }

    /// A Range answered from the watch cache, already encoded as etcd's HTTP gateway's JSON;
    /// `None` if the cache does not answer it.
    pub async fn cached_range_json(&self, ctx: &CallContext, request: &RangeRequest) -> Option<bytes::Bytes> {
        if crate::rpc::Range::refused(request).is_some() {
            return None;
        }
        let (json, revision) = self.caches.as_ref()?.range_json(&self.pool, ctx, request).await?;
        ctx.seen.saw(revision);
        crate::metrics::request_done::<()>("Range", &Ok(()));
        Some(json)
    }

    /// One unary RPC, from the watch cache or forwarded, within the client's deadline
    /// (retries included).
    pub async fn unary<R: UnaryRpc>(&self, ctx: &CallContext, message: R::Req) -> Result<R::Resp, Status> {
        self.answer::<R>(ctx, message, true).await
    }

    /// One unary RPC forwarded to a member (the caller already asked the cache), within the
    /// client's deadline.
    pub async fn forwarded<R: UnaryRpc>(&self, ctx: &CallContext, message: R::Req) -> Result<R::Resp, Status> {
        self.answer::<R>(ctx, message, false).await
    }

    async fn answer<R: UnaryRpc>(&self, ctx: &CallContext, message: R::Req, ask_cache: bool) -> Result<R::Resp, Status> {
        let without_credentials;
        let ctx = if R::SENDS_CREDENTIALS {
            ctx
        } else {
            without_credentials = ctx.without_credentials();
            &without_credentials
        };
        if let Some(refusal) = R::refused(&message).or_else(|| crate::guard::held_back(R::NAME, &message)) {
            let refused = Err(refusal);
            crate::metrics::request_done(R::NAME, &refused);
            return refused;
        }
        let sent_at = std::time::Instant::now();
        let call = async {
            if ask_cache {
                if let Some(response) = self.answer_from_cache::<R>(ctx, &message).await {
                    return Ok(response);
                }
            }
            if R::SHARED {
                return self.shared_call::<R>(ctx, &message).await;
            }
            Self::unary_not_behind::<R>(&self.pool, ctx, &message).await
        };
        let result = match ctx.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, call)
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("context deadline exceeded"))),
            None => call.await,
        };
        if result.as_ref().is_err_and(|status| status.message().starts_with(etcdgate_upstream::CUT_TWICE)) {
            crate::guard::hold_back(R::NAME, &message, self.pool.clone(), sent_at);
        }
        if let Some((response, revision)) = result.as_ref().ok().and_then(|r| Some((r, R::header_revision(r)?))) {
            ctx.seen.saw(revision);
            if let Some(caches) = &self.caches {
                caches.expect(&R::written(&message, response), revision);
                if let Some(lease) = R::revoked_lease(&message) {
                    caches.expect_lease_revoked(lease, revision);
                }
            }
        }
        crate::metrics::request_done(R::NAME, &result);
        result
    }

    /// The watch cache's answer, for an RPC it may answer (Range) inside a cached prefix.
    async fn answer_from_cache<R: UnaryRpc>(&self, ctx: &CallContext, message: &R::Req) -> Option<R::Resp> {
        let range = R::as_range(message)?;
        self.caches.as_ref()?.range(&self.pool, ctx, range).await.and_then(R::from_range)
    }

    /// Forwards a unary RPC whose identical concurrent calls share one call to etcd. The
    /// shared call runs without this client's deadline (the retry budget bounds it); a client
    /// that has seen a later revision than the shared answer's asks on its own.
    async fn shared_call<R: UnaryRpc>(&self, ctx: &CallContext, message: &R::Req) -> Result<R::Resp, Status> {
        let (pool, request) = (self.pool.clone(), message.clone());
        let mut shared_ctx = ctx.clone();
        shared_ctx.deadline = None;
        let forward = move || async move { Self::unary_not_behind::<R>(&pool, &shared_ctx, &request).await }.boxed();
        match self.shared.call::<R>(ctx, message, forward).await {
            (Ok(response), true) if R::header_revision(&response).is_some_and(|revision| revision < ctx.seen.get()) => {
                Self::unary_not_behind::<R>(&self.pool, ctx, message).await
            }
            (result, _) => result,
        }
    }

    /// Forwards a unary RPC. A balanced read answered by a member that has not applied the
    /// revision the client's connection has already seen is asked again where it cannot be
    /// behind: a serializable Range as a linearizable one, other reads after short pauses.
    async fn unary_not_behind<R: UnaryRpc>(pool: &Pool, ctx: &CallContext, message: &R::Req) -> Result<R::Resp, Status> {
        let target = Self::target(R::ROUTE, ctx);
        let seen = ctx.seen.get();
        let behind = |response: &R::Resp| R::header_revision(response).is_some_and(|revision| revision < seen);
        let response = Self::forward::<R>(pool, &target, ctx, message).await?;
        if !behind(&response) || target != Target::Any || R::POLICY != RetryPolicy::Read {
            return Ok(response);
        }
        crate::metrics::read_behind(R::NAME);
        if let Some(current) = R::current_read(message) {
            return Self::forward::<R>(pool, &target, ctx, &current).await;
        }
        for pause in CATCH_UP_PAUSES {
            tokio::time::sleep(pause).await;
            let response = Self::forward::<R>(pool, &target, ctx, message).await?;
            if !behind(&response) {
                return Ok(response);
            }
        }
        Err(Status::unavailable(format!("etcdgate: no member has caught up with revision {seen} yet")))
    }

    async fn forward<R: UnaryRpc>(pool: &Pool, target: &Target, ctx: &CallContext, message: &R::Req) -> Result<R::Resp, Status> {
        pool.call(target, R::POLICY, R::TIMING, |connection| R::call(connection, ctx.request(message.clone())))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The Watch stream: client requests in, watch responses out; moves to another member
    /// when its member fails (see [`crate::watch`]).
    pub async fn watch(&self, ctx: &CallContext, input: BoxStream<'static, WatchRequest>) -> Result<ResponseStream<WatchReply>, Status> {
        match &self.caches {
            Some(caches) => crate::hub_watch::watch(self.pool.clone(), caches.clone(), ctx.clone(), input).await,
            None => {
                let responses = crate::watch::watch(self.pool.clone(), ctx.clone(), input).await?;
                Ok(Box::pin(responses.map(|response| response.map(WatchReply::from))))
            }
        }
    }

    /// The LeaseKeepAlive stream; moves to another member when its member fails.
    pub async fn lease_keep_alive(
        &self,
        ctx: &CallContext,
        input: BoxStream<'static, LeaseKeepAliveRequest>,
    ) -> Result<ResponseStream<LeaseKeepAliveResponse>, Status> {
        crate::keepalive::keep_alive(self.pool.clone(), ctx.clone(), input).await
    }

    /// A database snapshot streamed from one member (the one named, or a balanced pick).
    pub async fn snapshot(&self, ctx: &CallContext) -> Result<ResponseStream<SnapshotResponse>, Status> {
        let target = Self::target(Route::MemberOrBalanced, ctx);
        let response = self
            .pool
            .call(&target, RetryPolicy::Read, Timing::Unmeasured, |connection| async move {
                MaintenanceClient::new(connection).max_decoding_message_size(usize::MAX).snapshot(ctx.request(SnapshotRequest {})).await
            })
            .await?;
        Ok(Box::pin(response.into_inner()))
    }

    /// Election.Observe: leader changes of one election.
    pub async fn observe(&self, ctx: &CallContext, message: LeaderRequest) -> Result<ResponseStream<LeaderResponse>, Status> {
        let response = self
            .pool
            .call(&Target::Any, RetryPolicy::Read, Timing::Unmeasured, |connection| {
                let request = ctx.request(message.clone());
                async move { ElectionClient::new(connection).observe(request).await }
            })
            .await?;
        Ok(Box::pin(response.into_inner()))
    }
}
