//! etcdgate stopped as a service manager stops it (SIGTERM), against real etcd: it takes no
//! new connections, answers the calls in flight (a gRPC and an HTTP/JSON Put that etcd is slow
//! to apply: its member is paused), and exits without waiting for the watches open on it. And
//! a restart as an operator does one: an APISIX-style watch resumed on the new etcdgate from
//! where it was gets what was written while none ran.

mod common;

use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::{kv_client::KvClient, watch_client::WatchClient, PutRequest, RangeRequest};
use etcdgate_testkit::workload::{b64, JsonClient};
use etcdgate_testkit::{Cluster, EtcdVersion};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use common::Etcdgate;

/// How long any one answer may take.
const WAIT: Duration = Duration::from_secs(30);

fn put(key: &str) -> PutRequest {
    PutRequest { key: key.into(), value: b"1".to_vec(), ..Default::default() }
}

/// An int64 field of an answer, as proto3 JSON writes it.
fn int(field: &Value) -> i64 {
    etcdgate_testkit::workload::int(field).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_answers_the_calls_in_flight_and_does_not_wait_for_watches() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 1).await.unwrap();
        // Probes that never call the paused member hung: its calls are waited for, not moved.
        // No calls of etcdgate's own meanwhile (member list, inspections): the test counts
        // the calls sent to the member.
        let args = ["--probe-timeout-ms", "60000", "--member-sync-interval", "3600", "--no-console"];
        let mut gateway = Etcdgate::start_with_args(&cluster.endpoints(), &args);
        let member = cluster.client_url(0);
        let mut kv = KvClient::connect(gateway.url()).await.unwrap();
        kv.put(put("/stop/before")).await.expect("a Put before the stop");

        let (requests, input) = mpsc::channel(1);
        requests.send(common::watch_prefix(b"/stop/")).await.unwrap();
        let mut watch = WatchClient::connect(gateway.url()).await.unwrap().watch(ReceiverStream::new(input)).await.unwrap().into_inner();
        assert!(watch.next().await.unwrap().unwrap().created, "{version}");

        let sent_before = common::member_requests(gateway.addr(), &member);
        cluster.pause(0).unwrap();
        let grpc_put = tokio::spawn(async move { kv.put(put("/stop/grpc")).await });
        let addr = gateway.addr().to_string();
        let http_put = tokio::task::spawn_blocking(move || common::http_post(&addr, "/v3/kv/put", r#"{"key":"L3N0b3AvaHR0cA==","value":"MQ=="}"#));
        // Both calls reach the paused member through etcdgate, and wait.
        let deadline = Instant::now() + Duration::from_secs(20);
        while common::member_requests(gateway.addr(), &member) < sent_before + 2 {
            assert!(Instant::now() < deadline, "{version}: the two Puts were not sent to the member");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let in_flight = common::metric(gateway.addr(), "etcdgate_calls_in_flight");
        assert_eq!(in_flight, Some(3), "{version}: the two Puts and the scrape itself");
        gateway.signal("-TERM");

        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(gateway.addr()).is_ok() {
            assert!(Instant::now() < deadline, "{version}: etcdgate still takes connections after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cluster.resume(0).unwrap();

        let answered = grpc_put.await.unwrap().unwrap_or_else(|status| panic!("{version}: the gRPC Put in flight was cut: {status:?}"));
        assert!(answered.into_inner().header.unwrap().revision > 0, "{version}");
        let (status, body) = http_put.await.unwrap();
        assert_eq!(status, 200, "{version}: the HTTP/JSON Put in flight: {body}");
        let exited = tokio::task::spawn_blocking(move || gateway.wait()).await.unwrap();
        assert!(exited.success(), "{version}: etcdgate exited with {exited}");
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(_)) = watch.next().await {}
        })
        .await;
        assert!(ended.is_ok(), "{version}: the watch stayed open after etcdgate exited");
        drop(requests);

        let mut direct = KvClient::connect(cluster.client_url(0)).await.unwrap();
        let range = RangeRequest { key: b"/stop/".to_vec(), range_end: b"/stop0".to_vec(), keys_only: true, ..Default::default() };
        let keys: Vec<_> = direct.range(range).await.unwrap().into_inner().kvs.into_iter().map(|kv| String::from_utf8(kv.key).unwrap()).collect();
        assert_eq!(keys, ["/stop/before", "/stop/grpc", "/stop/http"], "{version}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_resumed_on_a_restarted_etcdgate_gets_what_was_written_meanwhile() {
    for version in EtcdVersion::all() {
        let cluster = Cluster::start(version, 1).await.unwrap();
        let http = JsonClient::new();
        let put_json = |key: &str| json!({"key": b64(key.as_bytes()), "value": b64(b"{}")});

        // APISIX reads everything through etcdgate, and then etcdgate is stopped.
        let mut gateway = Etcdgate::start(&cluster.endpoints());
        http.post(&gateway.url(), "/v3/kv/put", &put_json("/apisix/routes/1"), WAIT).await.unwrap();
        let read = json!({"key": b64(b"/apisix"), "range_end": b64(b"/apisiy")});
        let read_at = int(&http.post(&gateway.url(), "/v3/kv/range", &read, WAIT).await.unwrap()["header"]["revision"]);
        gateway.signal("-TERM");
        assert!(gateway.wait().success(), "{version}");

        // A write while no etcdgate runs (the Admin API of another instance, say).
        let mut direct = KvClient::connect(cluster.client_url(0)).await.unwrap();
        let meanwhile = direct.put(put("/apisix/routes/2")).await.unwrap().into_inner().header.unwrap().revision;

        // APISIX watches again on the new etcdgate from the revision after its read.
        let gateway = Etcdgate::start(&cluster.endpoints());
        let create = json!({"create_request": {"key": b64(b"/apisix/"), "range_end": b64(b"/apisix0"), "start_revision": (read_at + 1).to_string()}});
        let mut watch = http.stream(&gateway.url(), "/v3/watch", &create, WAIT).await.unwrap();
        let mut next = async || tokio::time::timeout(WAIT, watch.next_result()).await.expect("the watch went silent").unwrap();
        assert_eq!(next().await["created"], true, "{version}");
        let events = next().await;
        assert_eq!(events["events"][0]["kv"]["key"], b64(b"/apisix/routes/2"), "{version}: {events}");
        assert_eq!(int(&events["events"][0]["kv"]["mod_revision"]), meanwhile, "{version}: {events}");

        http.post(&gateway.url(), "/v3/kv/put", &put_json("/apisix/routes/3"), WAIT).await.unwrap();
        let events = next().await;
        assert_eq!(events["events"][0]["kv"]["key"], b64(b"/apisix/routes/3"), "{version}: {events}");
        assert_eq!(int(&events["events"][0]["kv"]["mod_revision"]), meanwhile + 1, "{version}: {events}");
    }
}
