//! A client's LeaseKeepAlive stream that survives the member under it (relayed by
//! [`crate::resume`]): keepalives sent but not yet answered are sent again on the next member,
//! so every request the client made gets its answer.

use std::collections::VecDeque;
use std::sync::Arc;

use etcdgate_proto::etcdserverpb::{lease_client::LeaseClient, LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use etcdgate_upstream::{MemberConnection, Pool};
use futures::stream::BoxStream;
use tonic::{Request, Status};

use crate::context::{CallContext, SeenRevision};
use crate::gateway::ResponseStream;
use crate::resume::{self, Opening, Outgoing, Resumable};

/// Lease IDs of keepalives sent and not yet answered, in order.
#[derive(Debug, Default)]
struct KeepAlives {
    unanswered: VecDeque<i64>,
    /// Highest header revision the client's connection has seen.
    seen: SeenRevision,
}

impl Resumable for KeepAlives {
    type Req = LeaseKeepAliveRequest;
    type Resp = LeaseKeepAliveResponse;
    const NAME: &'static str = "keepalive";
    const ENDS_WITH_CLIENT_INPUT: bool = true;

    fn outgoing(&mut self, request: LeaseKeepAliveRequest) -> Option<LeaseKeepAliveRequest> {
        self.unanswered.push_back(request.id);
        Some(request)
    }

    fn incoming(&mut self, mut response: LeaseKeepAliveResponse) -> Option<LeaseKeepAliveResponse> {
        if let Some(at) = self.unanswered.iter().position(|id| *id == response.id) {
            self.unanswered.remove(at);
        }
        self.seen.lift(&mut response.header);
        Some(response)
    }

    fn replay(&mut self) -> Vec<LeaseKeepAliveRequest> {
        self.unanswered.iter().map(|id| LeaseKeepAliveRequest { id: *id }).collect()
    }

    fn open(connection: MemberConnection, request: Request<Outgoing<LeaseKeepAliveRequest>>) -> Opening<LeaseKeepAliveResponse> {
        Box::pin(async move { LeaseClient::new(connection).lease_keep_alive(request).await })
    }
}

/// Serves one client LeaseKeepAlive stream.
pub async fn keep_alive(
    pool: Arc<Pool>,
    ctx: CallContext,
    input: BoxStream<'static, LeaseKeepAliveRequest>,
) -> Result<ResponseStream<LeaseKeepAliveResponse>, Status> {
    let keepalives = KeepAlives { seen: ctx.seen.clone(), ..KeepAlives::default() };
    resume::relay(pool, ctx, input, keepalives, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_keepalives_are_replayed_once() {
        let mut keepalives = KeepAlives::default();
        keepalives.outgoing(LeaseKeepAliveRequest { id: 7 });
        keepalives.outgoing(LeaseKeepAliveRequest { id: 8 });
        keepalives.outgoing(LeaseKeepAliveRequest { id: 7 });
        keepalives.incoming(LeaseKeepAliveResponse { id: 7, ttl: 10, ..Default::default() });
        let replayed: Vec<i64> = keepalives.replay().iter().map(|r| r.id).collect();
        assert_eq!(replayed, vec![8, 7]);
    }
}
