//! Requests that crash etcd members (see `crates/server/src/guard.rs`) are refused by
//! etcdgate, over gRPC and HTTP/JSON, inside and outside the cached prefix, with the error a
//! later etcd release gives; nothing is written and every member still runs. Sent straight to
//! a member, the first of them kills it: on etcd 3.4.23 and 3.5.1 the guard is what keeps a
//! client's bad request from taking the cluster down. And a read that two members die
//! serving (as a request of death not known yet would kill them) is not sent to the third,
//! and is held back while they come back.

mod common;

use std::time::Duration;

use etcdgate_proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, maintenance_client::MaintenanceClient, request_op, AlarmRequest,
    AuthRoleAddRequest, AuthRoleGrantPermissionRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
};
use etcdgate_testkit::{Cluster, EtcdVersion};
use tonic::transport::Channel;
use tonic::Code;

use common::{http_get, http_post, metric, Etcdgate};

/// A Range sorted by a target etcd does not know.
fn bad_sort(key: &str) -> RangeRequest {
    RangeRequest { key: key.into(), sort_order: 1, sort_target: 99, ..Default::default() }
}

fn op(request: request_op::Request) -> RequestOp {
    RequestOp { request: Some(request) }
}

fn assert_refused<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>, message: &str) {
    match result {
        Err(status) => assert_eq!((status.code(), status.message()), (Code::InvalidArgument, message), "{what}"),
        Ok(answer) => panic!("{what} was answered: {answer:?}"),
    }
}

async fn requests_of_death_are_refused(version: EtcdVersion) {
    let mut cluster = Cluster::start(version, 3).await.unwrap();
    let gateway = Etcdgate::start(&cluster.endpoints());
    let channel = Channel::from_shared(gateway.url()).unwrap().connect().await.unwrap();
    let mut kv = KvClient::new(channel.clone());
    kv.put(PutRequest { key: b"a".to_vec(), value: b"1".to_vec(), ..Default::default() }).await.unwrap();
    kv.put(PutRequest { key: b"/apisix/routes/1".to_vec(), value: b"{}".to_vec(), ..Default::default() }).await.unwrap();
    let invalid_sort = "etcdserver: invalid sort option";

    assert_refused("a Range sorted by target 99", kv.range(bad_sort("a")).await, invalid_sort);
    let cached = RangeRequest { serializable: true, sort_order: 0, sort_target: 7, ..bad_sort("/apisix/routes/") };
    assert_refused("a cached serializable Range sorted by target 7", kv.range(cached).await, invalid_sort);
    let put_then_bad_range = TxnRequest {
        success: vec![
            op(request_op::Request::RequestPut(PutRequest { key: b"written".to_vec(), value: b"1".to_vec(), ..Default::default() })),
            op(request_op::Request::RequestRange(bad_sort("a"))),
        ],
        ..Default::default()
    };
    assert_refused("a Txn writing and then ranging with target 99", kv.txn(put_then_bad_range).await, invalid_sort);
    let nested = TxnRequest {
        failure: vec![op(request_op::Request::RequestTxn(TxnRequest {
            success: vec![op(request_op::Request::RequestRange(bad_sort("a")))],
            ..Default::default()
        }))],
        ..Default::default()
    };
    assert_refused("a nested Txn ranging with target 99", kv.txn(nested).await, invalid_sort);

    let mut maintenance = MaintenanceClient::new(channel.clone());
    for (action, alarm) in [(99, 0), (1, 0), (1, 99)] {
        let refused = maintenance.alarm(AlarmRequest { action, alarm, member_id: 0 }).await;
        assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument, "Alarm action {action} alarm {alarm}");
    }
    let mut auth = AuthClient::new(channel);
    auth.role_add(AuthRoleAddRequest { name: "reader".into() }).await.unwrap();
    let no_permission = AuthRoleGrantPermissionRequest { name: "reader".into(), perm: None };
    assert_refused("a permission grant without a permission", auth.role_grant_permission(no_permission).await, "etcdserver: permission not given");

    // Over HTTP/JSON: enum numbers etcd does not know get past the JSON decoding, as in etcd's
    // gateway, and meet the same refusal.
    for body in [
        r#"{"key":"YQ==","sort_order":"ASCEND","sort_target":99}"#,
        r#"{"key":"L2FwaXNpeC9yb3V0ZXMv","range_end":"L2FwaXNpeC9yb3V0ZXMw","sort_target":5}"#,
    ] {
        let (status, answer) = http_post(gateway.addr(), "/v3/kv/range", body);
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        let expected = serde_json::json!({"error": invalid_sort, "code": 3, "message": invalid_sort});
        assert_eq!((status, answer), (400, expected), "{body}");
    }
    for body in [r#"{"action":"ACTIVATE"}"#, r#"{"action":7}"#] {
        let (status, answer) = http_post(gateway.addr(), "/v3/maintenance/alarm", body);
        assert_eq!(status, 400, "{body}: {answer}");
    }

    // Nothing was written, no alarm raised, and every member is still there.
    let written = kv.range(RangeRequest { key: b"written".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(written.count, 0, "the refused Txn's put was applied");
    let alarms = maintenance.alarm(AlarmRequest::default()).await.unwrap().into_inner();
    assert!(alarms.alarms.is_empty(), "alarms: {:?}", alarms.alarms);
    for i in 0..cluster.member_count() {
        assert!(cluster.is_running(i), "member {i} died");
        let mut member = MaintenanceClient::connect(cluster.client_url(i)).await.unwrap();
        member.status(StatusRequest {}).await.unwrap_or_else(|e| panic!("member {i} does not answer: {e}"));
    }

    // What the guard prevents: the same Range sent straight to a member kills it.
    let mut direct = KvClient::connect(cluster.client_url(0)).await.unwrap();
    let killed = direct.range(RangeRequest { serializable: true, ..bad_sort("a") }).await;
    assert!(killed.is_err(), "etcd {} answered a Range sorted by target 99: {killed:?}", version.label());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.is_running(0) {
        assert!(std::time::Instant::now() < deadline, "etcd {} survived a Range sorted by target 99", version.label());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Member 2 down, members 0 and 1 paused; a read goes to one and is hedged to the other;
/// both are killed under it. The read fails at once without going further, the same read is
/// held back once the cluster is whole again, and other reads are served.
async fn a_read_two_members_die_serving_is_held_back(version: EtcdVersion) {
    let mut cluster = Cluster::start(version, 3).await.unwrap();
    let gateway = Etcdgate::start(&cluster.endpoints());
    let channel = Channel::from_shared(gateway.url()).unwrap().connect().await.unwrap();
    let mut kv = KvClient::new(channel);
    kv.put(PutRequest { key: b"k".to_vec(), value: b"1".to_vec(), ..Default::default() }).await.unwrap();
    let read = RangeRequest { key: b"k".to_vec(), serializable: true, ..Default::default() };

    cluster.kill(2);
    let down = format!("etcdgate_member_state{{member=\"{}\",state=\"down\"}}", cluster.client_url(2));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(gateway.addr(), &down) != Some(1) {
        assert!(std::time::Instant::now() < deadline, "etcdgate did not see member 2 down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.pause(0).unwrap();
    cluster.pause(1).unwrap();
    let in_flight = tokio::spawn({
        let (mut kv, read) = (kv.clone(), read.clone());
        async move { kv.range(read).await }
    });
    // Once the read is hedged to the other member, before the probes call them hung.
    let hedged = || {
        http_get(gateway.addr(), "/metrics")
            .lines()
            .filter(|line| line.starts_with("etcdgate_hedged_reads_total{"))
            .any(|line| line.rsplit(' ').next() != Some("0"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !hedged() {
        assert!(std::time::Instant::now() < deadline, "the read was not hedged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.kill(0);
    cluster.kill(1);
    let failed = in_flight.await.unwrap().expect_err("a read with no member left was answered");
    assert_eq!(failed.code(), Code::Unavailable);
    assert!(failed.message().starts_with("etcdgate: two etcd members failed while serving this request"), "{}", failed.message());

    for i in 0..3 {
        cluster.respawn(i).unwrap();
    }
    for i in 0..3 {
        cluster.wait_member_ready(i, Duration::from_secs(30)).await.unwrap();
    }
    let other = RangeRequest { key: b"k".to_vec(), ..Default::default() };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while kv.range(other.clone()).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "reads are not served again after the members came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = kv.range(read).await.expect_err("the read two members died serving was sent again at once");
    assert_eq!(held.code(), Code::Unavailable);
    assert!(held.message().starts_with("etcdgate: request held back"), "{}", held.message());
    assert_eq!(metric(gateway.addr(), "etcdgate_requests_held_back_total{rpc=\"Range\"}"), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_two_members_die_serving_is_held_back_on_etcd_3_5() {
    a_read_two_members_die_serving_is_held_back(EtcdVersion::V3_5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_of_death_are_refused_on_etcd_3_4() {
    requests_of_death_are_refused(EtcdVersion::V3_4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_of_death_are_refused_on_etcd_3_5() {
    requests_of_death_are_refused(EtcdVersion::V3_5).await;
}
