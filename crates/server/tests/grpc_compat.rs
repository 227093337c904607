//! The gRPC front end against etcd's own: the same calls, sent with tonic clients to a real
//! etcd and to etcdgate in front of an identical cluster, must give the same responses (as
//! JSON, cluster-specific header ids removed) or the same status code and message.

mod common;

use common::{GrpcStream, Pair, Side, Which};
use etcdgate_proto::authpb::{Permission, UserAddOptions};
use etcdgate_proto::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, compare, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op, watch_client::WatchClient, watch_create_request::FilterType,
    watch_request::RequestUnion, *,
};
use etcdgate_proto::v3electionpb::{election_client::ElectionClient, *};
use etcdgate_proto::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use etcdgate_testkit::EtcdVersion;
use serde_json::Value;
use tonic::Code;

/// `call!(p, KvClient::put, message)`: one call on both sides, outcomes compared.
macro_rules! call {
    ($p:expr, $client:ident :: $method:ident, $message:expr) => {
        $p.grpc($message, |ch, r| async move { $client::new(ch).$method(r).await }).await
    };
    ($p:expr, $client:ident :: $method:ident, $message:expr, masked: $masked:expr) => {
        $p.grpc_masked($message, $masked, |ch, r| async move { $client::new(ch).$method(r).await }).await
    };
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest { key: key.into(), value: value.into(), ..Default::default() }
}

fn range(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest { key: key.into(), range_end: range_end.into(), ..Default::default() }
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestPut(put(key, value))) }
}

fn op_range(key: &str) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestRange(range(key, ""))) }
}

#[tokio::test]
async fn kv() {
    Pair::each_version(|p| async move {
        for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d/1", "x"), ("d/2", "y")] {
            call!(p, KvClient::put, put(k, v));
        }
        call!(p, KvClient::put, PutRequest { prev_kv: true, ..put("a", "10") });
        call!(p, KvClient::put, PutRequest { ignore_value: true, ..put("b", "") });
        call!(p, KvClient::range, range("a", ""));
        call!(p, KvClient::range, range("nope", ""));
        call!(p, KvClient::range, range("a", "d"));
        call!(p, KvClient::range, RangeRequest { limit: 2, ..range("\0", "\0") });
        call!(p, KvClient::range, RangeRequest { sort_order: 2, sort_target: 3, ..range("a", "z") });
        call!(p, KvClient::range, RangeRequest { keys_only: true, ..range("a", "z") });
        call!(p, KvClient::range, RangeRequest { count_only: true, ..range("a", "z") });
        call!(p, KvClient::range, RangeRequest { revision: 2, ..range("a", "") });
        call!(p, KvClient::range, RangeRequest { serializable: true, ..range("a", "") });
        call!(p, KvClient::range, RangeRequest { min_mod_revision: 3, max_create_revision: 4, ..range("a", "z") });
        call!(p, KvClient::delete_range, DeleteRangeRequest { key: "d/".into(), range_end: "d0".into(), prev_kv: true });
        call!(p, KvClient::delete_range, DeleteRangeRequest { key: "nope".into(), ..Default::default() });

        let compare = Compare {
            key: "a".into(),
            target: compare::CompareTarget::Value as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Value("10".into())),
            ..Default::default()
        };
        let nested = TxnRequest { success: vec![op_range("t")], ..Default::default() };
        let txn = TxnRequest {
            compare: vec![compare.clone()],
            success: vec![
                op_put("t", "yes"),
                op_range("a"),
                RequestOp { request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest { key: "c".into(), ..Default::default() })) },
                RequestOp { request: Some(request_op::Request::RequestTxn(nested)) },
            ],
            failure: vec![op_put("t", "no")],
        };
        assert_eq!(call!(p, KvClient::txn, txn).json()["succeeded"], true);
        let failing = TxnRequest {
            compare: vec![Compare { target_union: Some(compare::TargetUnion::Value("other".into())), ..compare }],
            success: vec![op_put("t", "yes")],
            failure: vec![op_range("t")],
        };
        call!(p, KvClient::txn, failing);

        call!(p, KvClient::compact, CompactionRequest { revision: 4, physical: true });
        let compacted = call!(p, KvClient::range, RangeRequest { revision: 3, ..range("a", "") });
        compacted.expect_error(Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted");
        call!(p, KvClient::range, RangeRequest { revision: 4, ..range("a", "") });
        let future = call!(p, KvClient::range, RangeRequest { revision: 1000, ..range("a", "") });
        future.expect_error(Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision");
        call!(p, KvClient::compact, CompactionRequest { revision: 2, physical: false });
        call!(p, KvClient::compact, CompactionRequest { revision: 1000, physical: false });
    })
    .await;
}

#[tokio::test]
async fn kv_errors() {
    Pair::each_version(|p| async move {
        call!(p, KvClient::put, put("", "v")).expect_error(Code::InvalidArgument, "etcdserver: key is not provided");
        call!(p, KvClient::range, range("", ""));
        call!(p, KvClient::delete_range, DeleteRangeRequest::default());
        call!(p, KvClient::put, PutRequest { lease: 12345, ..put("k", "v") });
        call!(p, KvClient::put, PutRequest { ignore_value: true, ..put("k", "") });
        call!(p, KvClient::put, PutRequest { ignore_lease: true, lease: 5, ..put("k", "v") });
        let puts = |n: usize| TxnRequest { success: (0..n).map(|i| op_put(&format!("k{i}"), "v")).collect(), ..Default::default() };
        call!(p, KvClient::txn, puts(128));
        let too_many = call!(p, KvClient::txn, puts(129));
        too_many.expect_error(Code::InvalidArgument, "etcdserver: too many operations in txn request");
        let duplicate = TxnRequest { success: vec![op_put("dup", "1"), op_put("dup", "2")], ..Default::default() };
        call!(p, KvClient::txn, duplicate).expect_error(Code::InvalidArgument, "etcdserver: duplicate key given in txn request");
        // Over --max-request-bytes (1.5 MiB): etcd's own error; over the gRPC limit (+512 KiB): grpc's.
        let large = call!(p, KvClient::put, put("big", &"x".repeat(1600 * 1024)));
        large.expect_error(Code::InvalidArgument, "etcdserver: request is too large");
        call!(p, KvClient::put, put("big", &"x".repeat(2 * 1024 * 1024)));
        call!(p, KvClient::range, range("\0", "\0"));
    })
    .await;
}

#[tokio::test]
async fn lease() {
    Pair::each_version(|p| async move {
        call!(p, LeaseClient::lease_grant, LeaseGrantRequest { ttl: 600, id: 1000 });
        call!(p, LeaseClient::lease_grant, LeaseGrantRequest { ttl: 300, id: 2000 });
        let duplicate = call!(p, LeaseClient::lease_grant, LeaseGrantRequest { ttl: 600, id: 1000 });
        duplicate.expect_error(Code::FailedPrecondition, "etcdserver: lease already exists");
        call!(p, LeaseClient::lease_grant, LeaseGrantRequest { ttl: 600, id: -5 });
        call!(p, KvClient::put, PutRequest { lease: 1000, ..put("leased", "v") });
        call!(p, LeaseClient::lease_time_to_live, LeaseTimeToLiveRequest { id: 1000, keys: true }, masked: &["TTL"]);
        call!(p, LeaseClient::lease_time_to_live, LeaseTimeToLiveRequest { id: 2000, keys: false }, masked: &["TTL"]);
        call!(p, LeaseClient::lease_time_to_live, LeaseTimeToLiveRequest { id: 999, keys: false });
        call!(p, LeaseClient::lease_leases, LeaseLeasesRequest {});
        call!(p, LeaseClient::lease_revoke, LeaseRevokeRequest { id: 2000 });
        call!(p, LeaseClient::lease_revoke, LeaseRevokeRequest { id: 1000 });
        let gone = call!(p, LeaseClient::lease_revoke, LeaseRevokeRequest { id: 1000 });
        gone.expect_error(Code::NotFound, "etcdserver: requested lease not found");
        call!(p, KvClient::range, range("leased", ""));

        call!(p, LeaseClient::lease_grant, LeaseGrantRequest { ttl: 600, id: 77 });
        p.same("keepalive stream", |side| async move {
            let mut stream = side
                .grpc_stream(LeaseKeepAliveRequest { id: 77 }, |ch, r| async move { LeaseClient::new(ch).lease_keep_alive(r).await })
                .await
                .expect("open keepalive");
            let mut transcript = vec![next(&mut stream).await];
            for id in [77, 78, 77] {
                stream.send(LeaseKeepAliveRequest { id }).await;
                transcript.push(next(&mut stream).await);
            }
            stream.close_input();
            transcript.push(next(&mut stream).await);
            transcript
        })
        .await;
    })
    .await;
}

/// The next message of a gRPC stream (or its end, or its error) as normalized JSON.
async fn next<Req, Resp: serde::Serialize>(stream: &mut GrpcStream<Req, Resp>) -> Result<Option<String>, (Code, String)> {
    match stream.next().await {
        Ok(message) => Ok(message.map(|m| common::to_json(&m, &[]))),
        Err(status) => Err((status.code(), status.message().to_string())),
    }
}

#[tokio::test]
async fn cluster() {
    Pair::each_version(|p| async move {
        let ids: &[&str] = &["ID", "peerURLs", "clientURLs"];
        call!(p, ClusterClient::member_list, MemberListRequest { linearizable: false }, masked: ids);
        call!(p, ClusterClient::member_list, MemberListRequest { linearizable: true }, masked: ids);
        // Each membership call is followed by `settle` (see there).
        let unknown = call!(p, ClusterClient::member_remove, MemberRemoveRequest { id: 12345 });
        unknown.expect_error(Code::NotFound, "etcdserver: member not found");
        p.settle().await;
        call!(p, ClusterClient::member_update, MemberUpdateRequest { id: 12345, peer_ur_ls: vec!["http://127.0.0.1:1".into()] });
        p.settle().await;
        call!(p, ClusterClient::member_promote, MemberPromoteRequest { id: 12345 });
        p.settle().await;
        call!(p, ClusterClient::member_add, MemberAddRequest { peer_ur_ls: vec!["not a url".into()], is_learner: true });
    })
    .await;
}

#[tokio::test]
async fn maintenance() {
    Pair::each_version(|p| async move {
        call!(p, KvClient::put, put("a", "1"));
        // dbSize, raftIndex, the leader's id... differ between two clusters: compare the
        // fields that must agree.
        p.same("status", |side| async move {
            let status = MaintenanceClient::new(side.channel.clone()).status(side.request(StatusRequest {})).await.expect("status");
            let status = status.into_inner();
            (status.header.map(|h| h.revision), status.version, status.errors, status.is_learner, status.db_size_quota)
        })
        .await;
        p.same("hash", |side| async move {
            let hash = MaintenanceClient::new(side.channel.clone()).hash(side.request(HashRequest {})).await.expect("hash");
            hash.into_inner().header.map(|h| h.revision)
        })
        .await;
        call!(p, MaintenanceClient::hash_kv, HashKvRequest { revision: 0 });
        call!(p, MaintenanceClient::hash_kv, HashKvRequest { revision: 2 });
        call!(p, MaintenanceClient::hash_kv, HashKvRequest { revision: 100 });
        call!(p, MaintenanceClient::alarm, AlarmRequest::default());
        call!(p, MaintenanceClient::alarm, AlarmRequest { action: 2, member_id: 1, alarm: 1 });
        call!(p, MaintenanceClient::defragment, DefragmentRequest {});
    })
    .await;
}

#[tokio::test]
async fn auth() {
    Pair::each_version(|p| async move {
        let status = call!(p, AuthClient::auth_status, AuthStatusRequest {});
        if p.version == EtcdVersion::V3_4 {
            assert_eq!(status.0.as_ref().err().map(|e| e.0), Some(Code::Unimplemented), "{status:?}");
        }
        call!(p, AuthClient::auth_enable, AuthEnableRequest {});
        call!(p, AuthClient::authenticate, AuthenticateRequest { name: "root".into(), password: "pw".into() });
        let user = |name: &str, password: &str| AuthUserAddRequest { name: name.into(), password: password.into(), ..Default::default() };
        call!(p, AuthClient::user_add, user("root", "rootpw"));
        call!(p, AuthClient::user_add, user("root", "rootpw"));
        call!(p, AuthClient::user_add, user("", "x"));
        call!(p, AuthClient::user_add, user("app", "apppw"));
        let no_password = AuthUserAddRequest { options: Some(UserAddOptions { no_password: true }), ..user("nopw", "") };
        call!(p, AuthClient::user_add, no_password);
        call!(p, AuthClient::role_add, AuthRoleAddRequest { name: "root".into() });
        call!(p, AuthClient::role_add, AuthRoleAddRequest { name: "app-role".into() });
        call!(p, AuthClient::role_add, AuthRoleAddRequest { name: "app-role".into() });
        call!(p, AuthClient::user_grant_role, AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() });
        call!(p, AuthClient::user_grant_role, AuthUserGrantRoleRequest { user: "app".into(), role: "app-role".into() });
        call!(p, AuthClient::user_grant_role, AuthUserGrantRoleRequest { user: "ghost".into(), role: "app-role".into() });
        let perm = |perm_type: i32, key: &str, range_end: &str| AuthRoleGrantPermissionRequest {
            name: "app-role".into(),
            perm: Some(Permission { perm_type, key: key.into(), range_end: range_end.into() }),
        };
        call!(p, AuthClient::role_grant_permission, perm(2, "app/", "app0"));
        call!(p, AuthClient::role_grant_permission, perm(0, "shared", ""));
        call!(p, AuthClient::role_get, AuthRoleGetRequest { role: "app-role".into() });
        call!(p, AuthClient::role_get, AuthRoleGetRequest { role: "ghost".into() });
        call!(p, AuthClient::role_list, AuthRoleListRequest {});
        call!(p, AuthClient::user_get, AuthUserGetRequest { name: "app".into() });
        call!(p, AuthClient::user_get, AuthUserGetRequest { name: "ghost".into() });
        call!(p, AuthClient::user_list, AuthUserListRequest {});
        let changepw = AuthUserChangePasswordRequest { name: "app".into(), password: "apppw2".into(), ..Default::default() };
        call!(p, AuthClient::user_change_password, changepw);
        call!(p, KvClient::put, put("shared", "s"));

        call!(p, AuthClient::auth_enable, AuthEnableRequest {});
        let anonymous = call!(p, KvClient::range, range("app/x", ""));
        anonymous.expect_error(Code::InvalidArgument, "etcdserver: user name is empty");
        call!(p, AuthClient::authenticate, AuthenticateRequest { name: "app".into(), password: "wrong".into() });

        p.login("app", "apppw2").await;
        call!(p, KvClient::put, put("app/x", "1"));
        call!(p, KvClient::range, range("app/", "app0"));
        call!(p, KvClient::range, range("shared", ""));
        let denied = call!(p, KvClient::put, put("shared", "no"));
        denied.expect_error(Code::PermissionDenied, "etcdserver: permission denied");
        call!(p, KvClient::put, put("other", "no"));
        call!(p, KvClient::range, range("\0", "\0"));
        call!(p, AuthClient::user_list, AuthUserListRequest {});
        call!(p, AuthClient::auth_disable, AuthDisableRequest {});
        // A watch on a key the user may not read.
        p.same("denied watch", |side| async move {
            let create = create_watch(WatchCreateRequest { key: "other".into(), ..Default::default() });
            match side.grpc_stream(create, |ch, r| async move { WatchClient::new(ch).watch(r).await }).await {
                Ok(mut stream) => vec![next(&mut stream).await],
                Err(status) => vec![Err((status.code(), status.message().to_string()))],
            }
        })
        .await;

        p.set_tokens([Some("garbage.1".into()), Some("garbage.1".into())]);
        call!(p, KvClient::range, range("app/x", ""));

        p.login("root", "rootpw").await;
        call!(p, AuthClient::user_revoke_role, AuthUserRevokeRoleRequest { name: "app".into(), role: "app-role".into() });
        let revoke = |key: &str| AuthRoleRevokePermissionRequest { role: "app-role".into(), key: key.into(), range_end: vec![] };
        call!(p, AuthClient::role_revoke_permission, revoke("shared"));
        call!(p, AuthClient::role_revoke_permission, revoke("never"));
        call!(p, AuthClient::user_delete, AuthUserDeleteRequest { name: "nopw".into() });
        call!(p, AuthClient::role_delete, AuthRoleDeleteRequest { role: "app-role".into() });
        call!(p, AuthClient::role_delete, AuthRoleDeleteRequest { role: "root".into() });
        call!(p, AuthClient::user_revoke_role, AuthUserRevokeRoleRequest { name: "root".into(), role: "root".into() });
        call!(p, AuthClient::auth_disable, AuthDisableRequest {});
        p.set_tokens([None, None]);
        call!(p, KvClient::range, range("app/x", ""));
    })
    .await;
}

#[tokio::test]
async fn lock_and_election() {
    Pair::each_version(|p| async move {
        call!(p, LeaseClient::lease_grant, LeaseGrantRequest { ttl: 600, id: 4096 });
        let lock = call!(p, LockClient::lock, LockRequest { name: "mylock".into(), lease: 4096 }).json();
        let lock_key = base64_decode(&lock["key"]);
        call!(p, LockClient::lock, LockRequest { name: "other".into(), lease: 31337 });
        call!(p, LockClient::unlock, UnlockRequest { key: lock_key });
        call!(p, LockClient::unlock, UnlockRequest { key: "never-locked".into() });

        call!(p, ElectionClient::leader, LeaderRequest { name: "elect".into() });
        let campaign = CampaignRequest { name: "elect".into(), lease: 4096, value: "me".into() };
        let won = call!(p, ElectionClient::campaign, campaign).json();
        call!(p, ElectionClient::campaign, CampaignRequest { name: "elect".into(), lease: 31337, value: "me".into() });
        let leader = LeaderKey {
            name: "elect".into(),
            key: base64_decode(&won["leader"]["key"]),
            rev: won["leader"]["rev"].as_str().expect("rev").parse().expect("rev number"),
            lease: 4096,
        };
        call!(p, ElectionClient::leader, LeaderRequest { name: "elect".into() });
        p.same("observe", |side| {
            let leader = leader.clone();
            async move {
                let mut election = ElectionClient::new(side.channel.clone());
                let response = election.observe(side.request(LeaderRequest { name: "elect".into() })).await;
                let mut stream = match response {
                    Ok(stream) => stream.into_inner(),
                    Err(status) => return vec![Err((status.code(), status.message().to_string()))],
                };
                let mut transcript = vec![common::next_outcome(&mut stream, &[]).await];
                let proclaim = ProclaimRequest { leader: Some(leader), value: "me again".into() };
                election.proclaim(side.request(proclaim)).await.expect("proclaim");
                transcript.push(common::next_outcome(&mut stream, &[]).await);
                transcript
            }
        })
        .await;
        call!(p, ElectionClient::resign, ResignRequest { leader: Some(leader.clone()) });
        call!(p, ElectionClient::leader, LeaderRequest { name: "elect".into() });
        let stale = LeaderKey { key: "elect/gone".into(), ..leader };
        call!(p, ElectionClient::proclaim, ProclaimRequest { leader: Some(stale.clone()), value: "x".into() });
        call!(p, ElectionClient::resign, ResignRequest { leader: Some(stale) });
    })
    .await;
}

fn base64_decode(value: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(value.as_str().expect("base64 string")).expect("base64")
}

fn create_watch(create: WatchCreateRequest) -> WatchRequest {
    WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }
}

type WatchStream = GrpcStream<WatchRequest, WatchResponse>;

/// Reads watch responses until `n` entries arrived: every event is one entry (`w<id> <event>`,
/// as batching of events into responses may differ), every other response one entry
/// (normalized JSON). Entries are ordered by watch id, keeping each watch's own order
/// (responses of different watches for one revision may come in either order).
async fn read_entries(stream: &mut WatchStream, n: usize) -> Vec<String> {
    let mut entries: Vec<(i64, String)> = Vec::new();
    while entries.len() < n {
        let response = stream.next().await.expect("watch stream failed").expect("watch stream ended");
        if response.events.is_empty() {
            entries.push((response.watch_id, common::to_json(&response, &[])));
        } else {
            for event in &response.events {
                entries.push((response.watch_id, format!("w{} {}", response.watch_id, common::to_json(event, &[]))));
            }
        }
    }
    entries.sort_by_key(|(id, _)| *id);
    entries.into_iter().map(|(_, entry)| entry).collect()
}

/// Every watch feature on one stream: history from a start revision with prev_kv, a second
/// watch with a filter, live events, progress, cancel, a compacted start, an empty range, a
/// negative start, explicit ids, creates answered in order.
async fn watch_scenario(side: Side) -> Vec<Vec<String>> {
    let mut kv = KvClient::new(side.channel.clone());
    macro_rules! write {
        ($method:ident, $message:expr) => {
            kv.$method(side.request($message)).await.expect("write")
        };
    }
    write!(put, put("a", "1"));
    write!(put, put("a", "2"));
    write!(put, put("b", "1"));
    write!(delete_range, DeleteRangeRequest { key: "a".into(), ..Default::default() });
    write!(put, put("c", "1"));

    let history = WatchCreateRequest { key: "a".into(), range_end: "d".into(), start_revision: 2, prev_kv: true, ..Default::default() };
    let mut stream = side
        .grpc_stream(create_watch(history), |ch, r| async move { WatchClient::new(ch).watch(r).await })
        .await
        .expect("open watch");
    let mut transcript = vec![read_entries(&mut stream, 6).await];

    let filtered = WatchCreateRequest { key: "b".into(), filters: vec![FilterType::Noput as i32], ..Default::default() };
    stream.send(create_watch(filtered)).await;
    transcript.push(read_entries(&mut stream, 1).await);
    write!(put, put("b", "2"));
    write!(delete_range, DeleteRangeRequest { key: "b".into(), prev_kv: true, ..Default::default() });
    transcript.push(read_entries(&mut stream, 3).await);

    stream.send(WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) }).await;
    transcript.push(read_entries(&mut stream, 1).await);
    stream.send(WatchRequest { request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 1 })) }).await;
    transcript.push(read_entries(&mut stream, 1).await);
    stream.send(WatchRequest { request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 99 })) }).await;
    write!(put, put("b", "3"));
    transcript.push(read_entries(&mut stream, 1).await);

    write!(compact, CompactionRequest { revision: 7, physical: true });
    stream.send(create_watch(WatchCreateRequest { key: "a".into(), start_revision: 3, ..Default::default() })).await;
    let compacted_start = read_entries(&mut stream, 2).await;
    if common::cache_everything() {
        // etcd says compacted; the watch cache still holds those events and serves them.
        let expected = if side.which == Which::Etcd { ["canceled", "compact_revision\":\"7"] } else { ["\"mod_revision\":\"3", "\"mod_revision\":\"5"] };
        let all = compacted_start.join("\n");
        let served = expected.iter().all(|part| all.contains(part));
        if !served {
            eprintln!("{:?} answered a compacted start with: {all}", side.which);
        }
        transcript.push(vec![format!("compacted start answered as expected: {served}")]);
    } else {
        transcript.push(compacted_start);
    }

    // A range that holds no key is refused before it gets an ID; the next watch gets the ID
    // it would have had. A negative start revision is answered with etcd's compaction.
    stream.send(create_watch(WatchCreateRequest { key: "c".into(), range_end: "b".into(), ..Default::default() })).await;
    transcript.push(read_entries(&mut stream, 1).await);
    stream.send(create_watch(WatchCreateRequest { key: "a".into(), start_revision: -5, ..Default::default() })).await;
    transcript.push(read_entries(&mut stream, 2).await);

    let explicit = WatchCreateRequest { key: "e".into(), watch_id: 100, ..Default::default() };
    stream.send(create_watch(explicit.clone())).await;
    transcript.push(read_entries(&mut stream, 1).await);
    stream.send(create_watch(explicit)).await;
    transcript.push(read_entries(&mut stream, 1).await);
    write!(put, put("e", "1"));
    transcript.push(read_entries(&mut stream, 1).await);

    // Creates sent back to back are answered in the order they came, as etcd answers them,
    // whoever serves them (with the cache on: etcd the first, which starts below 0, the cache
    // the second). A client letting etcd pick IDs tells its watches apart by that order.
    stream.send(create_watch(WatchCreateRequest { key: "f".into(), start_revision: -1, ..Default::default() })).await;
    stream.send(create_watch(WatchCreateRequest { key: "g".into(), ..Default::default() })).await;
    let mut created_in_order = Vec::new();
    while created_in_order.len() < 2 {
        let response = stream.next().await.expect("watch stream failed").expect("watch stream ended");
        if response.created {
            created_in_order.push(format!("created w{}", response.watch_id));
        }
    }
    transcript.push(created_in_order);
    transcript
}

#[tokio::test]
async fn watch() {
    Pair::each_version(|p| async move {
        p.same("watch scenario", watch_scenario).await;
    })
    .await;
}
