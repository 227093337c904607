//! The table of etcd's unary RPCs: for each, its request and response types, how to call it
//! on a member, where it must go, whether it may be retried, and whether its latency says how
//! busy its member is (not for Lock and Campaign, which wait for a lock or an election, nor
//! for Authenticate, Hash and HashKV, slow by design: a password hash, the whole store);
//! only reads whose latency does are hedged. Both front ends (gRPC and
//! HTTP/JSON) serve every RPC through this one table, so the rules live in one place.

use etcdgate_cache::KeyRange;
use etcdgate_proto::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, *,
};
use etcdgate_proto::v3electionpb::{election_client::ElectionClient, *};
use etcdgate_proto::v3lockpb::{lock_client::LockClient, *};
use etcdgate_upstream::MemberConnection;
use etcdgate_upstream::{RetryPolicy, Timing};
use std::future::Future;
use tonic::{Request, Response};

use crate::guard;

/// Where an RPC must be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Any healthy member.
    Balanced,
    /// The raft leader: membership changes, promote, move-leader.
    Leader,
    /// The member the client names with `etcdgate-member` (maintenance RPCs that report on or
    /// act on one member); a balanced pick when it names none.
    MemberOrBalanced,
}

/// One unary etcd RPC.
pub trait UnaryRpc: Send + Sync + 'static {
    type Req: prost::Message + serde::de::DeserializeOwned + Default + Clone + Send + Sync + 'static;
    type Resp: prost::Message + serde::Serialize + Clone + Send + Sync + 'static;
    /// gRPC method name, for logs and metrics.
    const NAME: &'static str;
    const POLICY: RetryPolicy;
    const ROUTE: Route;
    const TIMING: Timing;
    /// Whether identical concurrent calls share one call to etcd (see [`crate::shared_calls`]).
    const SHARED: bool = false;
    /// Whether the client's credentials (`token`, `authorization`) go to etcd with the call.
    /// Not with `Authenticate`, which needs none: etcd 3.5 ignores them, and 3.4 refuses a
    /// login carrying a token that went bad, so a client that logs in again with its old
    /// token, as lua-resty-etcd does, would never get a new one.
    const SENDS_CREDENTIALS: bool = true;
    /// The answer's `header.revision`, if it has one (etcd 3.4 leaves it out of some answers,
    /// e.g. MemberList's).
    fn header_revision(response: &Self::Resp) -> Option<i64>;
    /// The same read, served so that its revision cannot be behind any the client has seen
    /// (a serializable Range made linearizable); `None` for RPCs without such a form.
    fn current_read(_request: &Self::Req) -> Option<Self::Req> {
        None
    }
    /// The keys a successful call surely wrote an event into at its answer's revision (a
    /// hub of those keys will reach that revision); empty for RPCs that write no keys.
    fn written(_request: &Self::Req, _response: &Self::Resp) -> Vec<KeyRange> {
        Vec::new()
    }
    /// The lease a successful call revoked (deleting the keys attached to it at its
    /// answer's revision), for LeaseRevoke.
    fn revoked_lease(_request: &Self::Req) -> Option<i64> {
        None
    }
    /// The error to answer instead of sending a request etcd would crash on (see
    /// [`crate::guard`]); `None` for any other request.
    fn refused(_request: &Self::Req) -> Option<tonic::Status> {
        None
    }
    /// The request as a Range, for RPCs the watch cache may answer.
    fn as_range(_request: &Self::Req) -> Option<&RangeRequest> {
        None
    }
    /// The cache's answer as this RPC's response.
    fn from_range(_response: RangeResponse) -> Option<Self::Resp> {
        None
    }
    fn call(connection: MemberConnection, request: Request<Self::Req>) -> impl Future<Output = Result<Response<Self::Resp>, tonic::Status>> + Send + 'static;
}

/// A serializable Range as a linearizable one (which etcd answers at the cluster's current
/// revision or later); `None` if it already is.
fn linearizable_range(request: &RangeRequest) -> Option<RangeRequest> {
    request.serializable.then(|| RangeRequest { serializable: false, ..request.clone() })
}

fn put_written(request: &PutRequest, _response: &PutResponse) -> Vec<KeyRange> {
    vec![KeyRange::new(&request.key, b"")]
}

fn lease_revoked(request: &LeaseRevokeRequest) -> Option<i64> {
    Some(request.id)
}

/// A DeleteRange writes events only if it deleted something.
fn delete_written(request: &DeleteRangeRequest, response: &DeleteRangeResponse) -> Vec<KeyRange> {
    if response.deleted > 0 {
        vec![KeyRange::new(&request.key, &request.range_end)]
    } else {
        Vec::new()
    }
}

/// The writes of the branch a Txn took, nested transactions included.
fn txn_written(request: &TxnRequest, response: &TxnResponse) -> Vec<KeyRange> {
    let taken = if response.succeeded { &request.success } else { &request.failure };
    let mut written = Vec::new();
    for (op, answer) in taken.iter().zip(&response.responses) {
        match (&op.request, &answer.response) {
            (Some(request_op::Request::RequestPut(put)), _) => written.push(KeyRange::new(&put.key, b"")),
            (Some(request_op::Request::RequestDeleteRange(delete)), Some(response_op::Response::ResponseDeleteRange(deleted))) => {
                written.extend(delete_written(delete, deleted))
            }
            (Some(request_op::Request::RequestTxn(txn)), Some(response_op::Response::ResponseTxn(answer))) => {
                written.extend(txn_written(txn, answer))
            }
            _ => {}
        }
    }
    written
}

/// The two methods of an RPC the watch cache answers (Range).
macro_rules! cached_range {
    (cached) => {
        fn as_range(request: &RangeRequest) -> Option<&RangeRequest> {
            Some(request)
        }
        fn from_range(response: RangeResponse) -> Option<RangeResponse> {
            Some(response)
        }
    };
}

macro_rules! unary_rpcs {
    (@timing) => { Timing::Measured };
    (@timing $timing:ident) => { Timing::$timing };
    ($($name:ident: $client:ident.$method:ident($req:ty) -> $resp:ty, $policy:ident, $route:ident $(, current: $current:path)? $(, wrote: $wrote:path)? $(, revokes: $revokes:path)? $(, cache: $cached:ident)? $(, timing: $timing:ident)? $(, refuse: $refuse:path)?$(, shared: $shared:literal)?$(, credentials: $credentials:literal)?;)*) => {$(
        #[doc = concat!("`", stringify!($name), "`")]
        pub struct $name;
        impl UnaryRpc for $name {
            type Req = $req;
            type Resp = $resp;
            const NAME: &'static str = stringify!($name);
            const POLICY: RetryPolicy = RetryPolicy::$policy;
            const ROUTE: Route = Route::$route;
            const TIMING: Timing = unary_rpcs!(@timing $($timing)?);
            $(const SHARED: bool = $shared;)?
            $(const SENDS_CREDENTIALS: bool = $credentials;)?
            fn header_revision(response: &$resp) -> Option<i64> {
                response.header.as_ref().map(|header| header.revision).filter(|revision| *revision > 0)
            }
            $(fn current_read(request: &$req) -> Option<$req> {
                $current(request)
            })?
            $(fn written(request: &$req, response: &$resp) -> Vec<KeyRange> {
                $wrote(request, response)
            })?
            $(fn revoked_lease(request: &$req) -> Option<i64> {
                $revokes(request)
            })?
            $(fn refused(request: &$req) -> Option<tonic::Status> {
                $refuse(request)
            })?
            $(cached_range!($cached);)?
            fn call(connection: MemberConnection, request: Request<$req>) -> impl Future<Output = Result<Response<$resp>, tonic::Status>> + Send + 'static {
                async move { $client::new(connection).max_decoding_message_size(usize::MAX).$method(request).await }
            }
        }
    )*};
}

unary_rpcs! {
    Range: KvClient.range(RangeRequest) -> RangeResponse, Read, Balanced, current: linearizable_range, cache: cached, refuse: guard::range;
    Put: KvClient.put(PutRequest) -> PutResponse, Write, Balanced, wrote: put_written;
    DeleteRange: KvClient.delete_range(DeleteRangeRequest) -> DeleteRangeResponse, Write, Balanced, wrote: delete_written;
    Txn: KvClient.txn(TxnRequest) -> TxnResponse, Write, Balanced, wrote: txn_written, refuse: guard::txn;
    Compact: KvClient.compact(CompactionRequest) -> CompactionResponse, Write, Balanced;

    LeaseGrant: LeaseClient.lease_grant(LeaseGrantRequest) -> LeaseGrantResponse, Write, Balanced;
    LeaseRevoke: LeaseClient.lease_revoke(LeaseRevokeRequest) -> LeaseRevokeResponse, Write, Balanced, revokes: lease_revoked;
    LeaseTimeToLive: LeaseClient.lease_time_to_live(LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse, Read, Balanced;
    LeaseLeases: LeaseClient.lease_leases(LeaseLeasesRequest) -> LeaseLeasesResponse, Read, Balanced;

    MemberAdd: ClusterClient.member_add(MemberAddRequest) -> MemberAddResponse, Write, Leader;
    MemberRemove: ClusterClient.member_remove(MemberRemoveRequest) -> MemberRemoveResponse, Write, Leader;
    MemberUpdate: ClusterClient.member_update(MemberUpdateRequest) -> MemberUpdateResponse, Write, Leader;
    MemberList: ClusterClient.member_list(MemberListRequest) -> MemberListResponse, Read, Balanced;
    MemberPromote: ClusterClient.member_promote(MemberPromoteRequest) -> MemberPromoteResponse, Write, Leader;

    Alarm: MaintenanceClient.alarm(AlarmRequest) -> AlarmResponse, Write, MemberOrBalanced, refuse: guard::alarm;
    Status: MaintenanceClient.status(StatusRequest) -> StatusResponse, Read, MemberOrBalanced;
    Defragment: MaintenanceClient.defragment(DefragmentRequest) -> DefragmentResponse, Write, MemberOrBalanced;
    Hash: MaintenanceClient.hash(HashRequest) -> HashResponse, Read, MemberOrBalanced, timing: Unmeasured;
    HashKv: MaintenanceClient.hash_kv(HashKvRequest) -> HashKvResponse, Read, MemberOrBalanced, timing: Unmeasured;
    MoveLeader: MaintenanceClient.move_leader(MoveLeaderRequest) -> MoveLeaderResponse, Write, Leader;
    Downgrade: MaintenanceClient.downgrade(DowngradeRequest) -> DowngradeResponse, Write, Leader;

    AuthEnable: AuthClient.auth_enable(AuthEnableRequest) -> AuthEnableResponse, Write, Balanced;
    AuthDisable: AuthClient.auth_disable(AuthDisableRequest) -> AuthDisableResponse, Write, Balanced;
    AuthStatus: AuthClient.auth_status(AuthStatusRequest) -> AuthStatusResponse, Read, Balanced;
    Authenticate: AuthClient.authenticate(AuthenticateRequest) -> AuthenticateResponse, Read, Balanced, timing: Unmeasured, shared: true, credentials: false;
    UserAdd: AuthClient.user_add(AuthUserAddRequest) -> AuthUserAddResponse, Write, Balanced;
    UserGet: AuthClient.user_get(AuthUserGetRequest) -> AuthUserGetResponse, Read, Balanced;
    UserList: AuthClient.user_list(AuthUserListRequest) -> AuthUserListResponse, Read, Balanced;
    UserDelete: AuthClient.user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse, Write, Balanced;
    UserChangePassword: AuthClient.user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse, Write, Balanced;
    UserGrantRole: AuthClient.user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse, Write, Balanced;
    UserRevokeRole: AuthClient.user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse, Write, Balanced;
    RoleAdd: AuthClient.role_add(AuthRoleAddRequest) -> AuthRoleAddResponse, Write, Balanced;
    RoleGet: AuthClient.role_get(AuthRoleGetRequest) -> AuthRoleGetResponse, Read, Balanced;
    RoleList: AuthClient.role_list(AuthRoleListRequest) -> AuthRoleListResponse, Read, Balanced;
    RoleDelete: AuthClient.role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse, Write, Balanced;
    RoleGrantPermission: AuthClient.role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse, Write, Balanced, refuse: guard::role_grant_permission;
    RoleRevokePermission: AuthClient.role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse, Write, Balanced;

    Lock: LockClient.lock(LockRequest) -> LockResponse, Write, Balanced, timing: Unmeasured;
    Unlock: LockClient.unlock(UnlockRequest) -> UnlockResponse, Write, Balanced;

    Campaign: ElectionClient.campaign(CampaignRequest) -> CampaignResponse, Write, Balanced, timing: Unmeasured;
    Proclaim: ElectionClient.proclaim(ProclaimRequest) -> ProclaimResponse, Write, Balanced;
    Leader: ElectionClient.leader(LeaderRequest) -> LeaderResponse, Read, Balanced;
    Resign: ElectionClient.resign(ResignRequest) -> ResignResponse, Write, Balanced;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_calls_that_wait_for_a_lock_or_an_election_go_untimed() {
        assert_eq!(Lock::TIMING, Timing::Unmeasured);
        assert_eq!(Campaign::TIMING, Timing::Unmeasured);
        for timing in [Range::TIMING, Put::TIMING, Txn::TIMING, Unlock::TIMING, Leader::TIMING, Status::TIMING] {
            assert_eq!(timing, Timing::Measured);
        }
    }

    #[test]
    fn txn_written_follows_the_branch_taken_and_what_it_changed() {
        let put =
            |key: &str| RequestOp { request: Some(request_op::Request::RequestPut(PutRequest { key: key.into(), ..Default::default() })) };
        let delete = |key: &str, end: &str| RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        };
        let answer = |response: response_op::Response| ResponseOp { response: Some(response) };
        let put_answer = || answer(response_op::Response::ResponsePut(PutResponse::default()));
        let deleted = |n: i64| answer(response_op::Response::ResponseDeleteRange(DeleteRangeResponse { deleted: n, ..Default::default() }));
        let nested = TxnRequest { success: vec![put("/n")], failure: vec![put("/m")], ..Default::default() };
        let request = TxnRequest {
            success: vec![
                put("/a"),
                delete("/b", "/c"),
                delete("/d", ""),
                RequestOp { request: Some(request_op::Request::RequestTxn(nested)) },
            ],
            failure: vec![put("/x")],
            ..Default::default()
        };
        let nested_answer = answer(response_op::Response::ResponseTxn(TxnResponse {
            succeeded: false,
            responses: vec![put_answer()],
            ..Default::default()
        }));
        let succeeded =
            TxnResponse { succeeded: true, responses: vec![put_answer(), deleted(2), deleted(0), nested_answer], ..Default::default() };
        let keys = |written: Vec<KeyRange>| written.into_iter().map(|k| (k.start, k.end)).collect::<Vec<_>>();
        assert_eq!(
            keys(txn_written(&request, &succeeded)),
            vec![(b"/a".to_vec(), vec![]), (b"/b".to_vec(), b"/c".to_vec()), (b"/m".to_vec(), vec![])],
            "the put, the delete that deleted something, the nested txn's failure branch"
        );
        let failed = TxnResponse { succeeded: false, responses: vec![put_answer()], ..Default::default() };
        assert_eq!(keys(txn_written(&request, &failed)), vec![(b"/x".to_vec(), vec![])]);
    }
}
