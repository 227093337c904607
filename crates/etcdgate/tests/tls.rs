//! TLS to members: a cluster that serves clients over TLS only and asks them for a
//! certificate (`--client-cert-auth`), behind etcdgate given etcdctl's `--cacert`, `--cert`
//! and `--key`. Clients talk plain gRPC and HTTP/JSON to etcdgate and cannot tell: reads,
//! writes, txns, the watch cache (its prefix load and upstream watch), watches, `/version`
//! and `/health` all work; the member list keeps the members' `https://` URLs; a killed
//! member is failed over. Without a client certificate, or with a CA that did not sign the
//! members' certificates, calls fail with an error that says why.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use etcdgate_testkit::{Cluster, EtcdVersion};
use futures::StreamExt;
use tonic::Code;

use common::{http_get, Etcdgate};

/// Longest wait for etcdgate to have loaded its cache and seen the members.
const WAIT: Duration = Duration::from_secs(30);

/// etcdgate's TLS flags: `--cacert ca`, and `--cert`/`--key` if given; with a short retry
/// budget (a call that fails on TLS fails the same way on every member).
fn tls_flags(ca: &Path, client: Option<(&Path, &Path)>) -> Vec<String> {
    let mut flags = vec!["--retry-budget-ms".to_string(), "1000".into(), "--cacert".into(), ca.display().to_string()];
    if let Some((cert, key)) = client {
        flags.extend(["--cert".to_string(), cert.display().to_string(), "--key".into(), key.display().to_string()]);
    }
    flags
}

fn start_etcdgate(cluster: &Cluster, flags: &[String]) -> Etcdgate {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Etcdgate::start_with_args(&cluster.endpoints(), &flags)
}

async fn put(kv: &mut KvClient<tonic::transport::Channel>, key: &str, value: &str) -> Result<i64, tonic::Status> {
    let put = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
    Ok(kv.put(put).await?.into_inner().header.map_or(0, |h| h.revision))
}

async fn value(kv: &mut KvClient<tonic::transport::Channel>, key: &str, serializable: bool) -> Option<Vec<u8>> {
    let range = RangeRequest { key: key.into(), serializable, ..Default::default() };
    kv.range(range).await.unwrap_or_else(|e| panic!("range {key}: {e}")).into_inner().kvs.pop().map(|kv| kv.value)
}

#[tokio::test(flavor = "multi_thread")]
async fn members_behind_tls_with_client_certificates() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::builder(version).members(3).tls().start().await.unwrap();
        assert!(cluster.endpoints().starts_with("https://"), "{version}: {}", cluster.endpoints());
        let tls = cluster.tls().expect("a TLS cluster");
        let gateway = start_etcdgate(&cluster, &tls_flags(&tls.ca, Some((&tls.client_cert, &tls.client_key))));
        let mut kv = KvClient::connect(gateway.url()).await.unwrap();

        // Writes and reads, outside and inside the cached prefix (`/apisix`).
        let revision = put(&mut kv, "/tls/a", "1").await.unwrap_or_else(|e| panic!("{version}: put through etcdgate: {e}"));
        assert!(revision > 1);
        assert_eq!(value(&mut kv, "/tls/a", false).await.as_deref(), Some(&b"1"[..]), "{version}");
        put(&mut kv, "/apisix/routes/1", "r1").await.unwrap();
        // Read-your-writes from the cache needs its upstream watch, over TLS, to bring the put.
        assert_eq!(value(&mut kv, "/apisix/routes/1", true).await.as_deref(), Some(&b"r1"[..]), "{version}: cached read");
        let deadline = Instant::now() + WAIT;
        while common::metric(gateway.addr(), "etcdgate_cache_loads_total").unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "{version}: the cache did not load over TLS");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A watch from the hub sees a later put.
        let (requests, input) = tokio::sync::mpsc::channel(1);
        let create = WatchCreateRequest { key: b"/apisix/".to_vec(), range_end: b"/apisix0".to_vec(), ..Default::default() };
        requests.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
        let mut watch = WatchClient::connect(gateway.url())
            .await
            .unwrap()
            .watch(tokio_stream::wrappers::ReceiverStream::new(input))
            .await
            .unwrap()
            .into_inner();
        let created = watch.next().await.unwrap().unwrap();
        assert!(created.created, "{version}: {created:?}");
        put(&mut kv, "/apisix/routes/2", "r2").await.unwrap();
        let events = tokio::time::timeout(WAIT, watch.next()).await.expect("event in time").unwrap().unwrap();
        assert_eq!(events.events.len(), 1, "{version}: {events:?}");
        assert_eq!(events.events[0].kv.as_ref().map(|kv| kv.key.as_slice()), Some(&b"/apisix/routes/2"[..]));

        // `/version` and `/health`, which etcd serves over HTTP/1.1 (over TLS here).
        let version_answer = http_get(gateway.addr(), "/version");
        assert!(version_answer.starts_with("HTTP/1.1 200") && version_answer.contains("etcdserver"), "{version}: {version_answer}");
        let health = http_get(gateway.addr(), "/health");
        assert!(health.starts_with("HTTP/1.1 200") && health.contains(r#""health":"true""#), "{version}: {health}");

        // The member list (read from etcd) keeps the members' https:// URLs: all three are
        // healthy members of the pool.
        let healthy: Vec<String> =
            (0..3).map(|i| format!(r#"etcdgate_member_state{{member="{}",state="healthy"}} 1"#, cluster.client_url(i))).collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let metrics = http_get(gateway.addr(), "/metrics");
            if healthy.iter().all(|series| metrics.contains(series)) {
                break;
            }
            assert!(Instant::now() < deadline, "{version}: not all of {healthy:?} in\n{metrics}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A killed member is failed over, over TLS as over plain HTTP. (A follower: writes
        // while a new leader is elected may time out in etcd itself.)
        let follower = (cluster.leader().await.expect("a leader") + 1) % 3;
        cluster.kill(follower);
        for i in 0..10 {
            let key = format!("/tls/after-kill/{i}");
            put(&mut kv, &key, "v").await.unwrap_or_else(|e| panic!("{version}: put {i} with a member down: {e}"));
            assert_eq!(value(&mut kv, &key, false).await.as_deref(), Some(&b"v"[..]), "{version}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_right_certificates_calls_fail_saying_why() {
    let version = EtcdVersion::V3_5;
    let cluster = Cluster::builder(version).tls().start().await.unwrap();
    let tls = cluster.tls().unwrap().clone();

    // The CA but no client certificate: the member refuses the handshake.
    let gateway = start_etcdgate(&cluster, &tls_flags(&tls.ca, None));
    let mut kv = KvClient::connect(gateway.url()).await.unwrap();
    let refused = put(&mut kv, "/tls/x", "1").await.expect_err("a put without a client certificate");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("TLS"), "the error says TLS failed: {refused:?}");
    eprintln!("no client certificate: {}", refused.message());
    drop(gateway);

    // A CA that did not sign the members' certificates (the client certificate stands in
    // for one): etcdgate refuses the member.
    let gateway = start_etcdgate(&cluster, &tls_flags(&tls.client_cert, Some((&tls.client_cert, &tls.client_key))));
    let mut kv = KvClient::connect(gateway.url()).await.unwrap();
    let refused = put(&mut kv, "/tls/x", "1").await.expect_err("a put to a member whose certificate is not trusted");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("certificate"), "the error names the certificate: {refused:?}");
    eprintln!("wrong CA: {}", refused.message());

    // Nothing was written.
    let direct = cluster.etcdctl(&["get", "/tls/x", "--print-value-only"]);
    assert!(direct.status.success() && direct.stdout.is_empty(), "{direct:?}");
}
