//! The gRPC front end: etcd's KV, Watch, Lease, Cluster, Maintenance, Auth, Lock and Election
//! services as tonic servers, each method a thin call into the [`Gateway`].

use std::sync::Arc;

use etcdgate_proto::etcdserverpb::{
    auth_server::{Auth, AuthServer},
    cluster_server::{Cluster, ClusterServer},
    kv_server::{Kv, KvServer},
    lease_server::{Lease, LeaseServer},
    maintenance_server::{Maintenance, MaintenanceServer},
    LeaseKeepAliveRequest, SnapshotRequest,
};
use etcdgate_proto::v3electionpb::{
    election_server::{Election, ElectionServer},
    LeaderRequest,
};
use etcdgate_proto::v3lockpb::lock_server::{Lock, LockServer};
use futures::StreamExt;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use crate::context::CallContext;
use crate::gateway::{Gateway, ResponseStream};
use crate::rpc::{self, UnaryRpc};

/// Implements every etcd service by forwarding to the gateway.
#[derive(Clone)]
pub struct Services {
    gateway: Arc<Gateway>,
    max_recv_bytes: usize,
}

impl Services {
    async fn unary<R: UnaryRpc>(&self, request: Request<R::Req>) -> Result<Response<R::Resp>, Status> {
        check_size(request.get_ref(), self.max_recv_bytes)?;
        let ctx = CallContext::from_grpc(&request);
        self.gateway.unary::<R>(&ctx, request.into_inner()).await.map(Response::new)
    }
}

/// Ends the client's input at its first error (a reset stream): etcd sees the same.
pub(crate) fn client_input<T: Send + 'static>(stream: Streaming<T>) -> futures::stream::BoxStream<'static, T> {
    stream.take_while(|item| futures::future::ready(item.is_ok())).filter_map(|item| async move { item.ok() }).boxed()
}

macro_rules! unary_service {
    ($service:ident { $($method:ident => $rpc:ident,)* } $($streaming:tt)*) => {
        #[tonic::async_trait]
        impl $service for Services {
            $(
                async fn $method(
                    &self,
                    request: Request<<rpc::$rpc as UnaryRpc>::Req>,
                ) -> Result<Response<<rpc::$rpc as UnaryRpc>::Resp>, Status> {
                    self.unary::<rpc::$rpc>(request).await
                }
            )*
            $($streaming)*
        }
    };
}

unary_service!(Kv {
    range => Range,
    put => Put,
    delete_range => DeleteRange,
    txn => Txn,
    compact => Compact,
});

unary_service!(Lease {
    lease_grant => LeaseGrant,
    lease_revoke => LeaseRevoke,
    lease_time_to_live => LeaseTimeToLive,
    lease_leases => LeaseLeases,
}
    type LeaseKeepAliveStream = ResponseStream<etcdgate_proto::etcdserverpb::LeaseKeepAliveResponse>;
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let ctx = CallContext::from_grpc(&request);
        self.gateway.lease_keep_alive(&ctx, client_input(request.into_inner())).await.map(Response::new)
    }
);

unary_service!(Cluster {
    member_add => MemberAdd,
    member_remove => MemberRemove,
    member_update => MemberUpdate,
    member_list => MemberList,
    member_promote => MemberPromote,
});

unary_service!(Maintenance {
    alarm => Alarm,
    status => Status,
    defragment => Defragment,
    hash => Hash,
    hash_kv => HashKv,
    move_leader => MoveLeader,
    downgrade => Downgrade,
}
    type SnapshotStream = ResponseStream<etcdgate_proto::etcdserverpb::SnapshotResponse>;
    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let ctx = CallContext::from_grpc(&request);
        self.gateway.snapshot(&ctx).await.map(Response::new)
    }
);

unary_service!(Auth {
    auth_enable => AuthEnable,
    auth_disable => AuthDisable,
    auth_status => AuthStatus,
    authenticate => Authenticate,
    user_add => UserAdd,
    user_get => UserGet,
    user_list => UserList,
    user_delete => UserDelete,
    user_change_password => UserChangePassword,
    user_grant_role => UserGrantRole,
    user_revoke_role => UserRevokeRole,
    role_add => RoleAdd,
    role_get => RoleGet,
    role_list => RoleList,
    role_delete => RoleDelete,
    role_grant_permission => RoleGrantPermission,
    role_revoke_permission => RoleRevokePermission,
});

unary_service!(Lock {
    lock => Lock,
    unlock => Unlock,
});

unary_service!(Election {
    campaign => Campaign,
    proclaim => Proclaim,
    leader => Leader,
    resign => Resign,
}
    type ObserveStream = ResponseStream<etcdgate_proto::v3electionpb::LeaderResponse>;
    async fn observe(&self, request: Request<LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let ctx = CallContext::from_grpc(&request);
        self.gateway.observe(&ctx, request.into_inner()).await.map(Response::new)
    }
);

/// How far past the limit tonic itself still decodes a message, so that [`check_size`] can
/// refuse it in grpc-go's words; beyond that tonic refuses it with its own error.
const DECODE_SLACK: usize = 4;

/// etcd's message size limit on what clients send, with grpc-go's code and message (tonic's
/// own are `OutOfRange` and other words).
fn check_size(message: &impl prost::Message, max_recv_bytes: usize) -> Result<(), Status> {
    let len = message.encoded_len();
    if len > max_recv_bytes {
        return Err(Status::resource_exhausted(format!("grpc: received message larger than max ({len} vs. {max_recv_bytes})")));
    }
    Ok(())
}

/// All etcd gRPC services, with etcd's message size limit on what clients send.
pub fn routes(gateway: Arc<Gateway>, max_recv_bytes: usize) -> Routes {
    let services = Services { gateway, max_recv_bytes };
    macro_rules! limited {
        ($server:ident) => {
            $server::new(services.clone())
                .max_decoding_message_size(max_recv_bytes.saturating_mul(DECODE_SLACK))
                .max_encoding_message_size(usize::MAX)
        };
    }
    Routes::new(limited!(KvServer))
        .add_service(crate::grpc_watch::WatchService::new(services.gateway.clone(), max_recv_bytes.saturating_mul(DECODE_SLACK)))
        .add_service(limited!(LeaseServer))
        .add_service(limited!(ClusterServer))
        .add_service(limited!(MaintenanceServer))
        .add_service(limited!(AuthServer))
        .add_service(limited!(LockServer))
        .add_service(limited!(ElectionServer))
}
