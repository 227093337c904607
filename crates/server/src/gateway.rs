//! The router both front ends call: every etcd RPC, unary or streaming, enters here with its
//! [`CallContext`] and leaves for a member of the pool. Later this is where reads and watches
//! are answered from the watch cache instead.

use std::pin::Pin;
use std::sync::Arc;

use etcdgate_proto::etcdserverpb::{
    maintenance_client::MaintenanceClient,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, SnapshotRequest, SnapshotResponse, WatchRequest, WatchResponse,
};
use etcdgate_proto::v3electionpb::{election_client::ElectionClient, LeaderRequest, LeaderResponse};
use etcdgate_upstream::{Pool, RetryPolicy, Target, Timing};
use futures::stream::BoxStream;
use futures::Stream;
use tonic::Status;

use crate::context::CallContext;
use crate::rpc::{Route, UnaryRpc};

/// A stream of responses to one streaming call.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Forwards calls to the member pool.
#[derive(Debug)]
pub struct Gateway {
    pool: Arc<Pool>,
}

impl Gateway {
    pub fn new(pool: Arc<Pool>) -> Gateway {
        Gateway { pool }
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

    /// One unary RPC.
    pub async fn unary<R: UnaryRpc>(&self, ctx: &CallContext, message: R::Req) -> Result<R::Resp, Status> {
        let target = Self::target(R::ROUTE, ctx);
        let result = self
            .pool
            .call(&target, R::POLICY, R::TIMING, |connection| R::call(connection, ctx.request(message.clone())))
            .await
            .map(tonic::Response::into_inner);
        crate::metrics::request_done(R::NAME, &result);
        result
    }

    /// The Watch stream: client requests in, watch responses out; moves to another member
    /// when its member fails (see [`crate::watch`]).
    pub async fn watch(
        &self,
        ctx: &CallContext,
        input: BoxStream<'static, WatchRequest>,
    ) -> Result<ResponseStream<WatchResponse>, Status> {
        crate::watch::watch(self.pool.clone(), ctx.clone(), input).await
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
                MaintenanceClient::new(connection)
                    .max_decoding_message_size(usize::MAX)
                    .snapshot(ctx.request(SnapshotRequest {}))
                    .await
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
