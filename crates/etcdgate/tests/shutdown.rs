//! etcdgate stopped as a service manager stops it (SIGTERM), against real etcd: it takes no
//! new connections, answers the calls in flight (a gRPC and an HTTP/JSON Put that etcd is slow
//! to apply: its member is paused), and exits without waiting for the watches open on it.

mod common;

use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, PutRequest, RangeRequest, WatchCreateRequest,
    WatchRequest,
};
use etcdgate_testkit::{Cluster, EtcdVersion};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use common::Etcdgate;

fn put(key: &str) -> PutRequest {
    PutRequest { key: key.into(), value: b"1".to_vec(), ..Default::default() }
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
        let sent = format!("etcdgate_member_requests_total{{member=\"{}\"}}", cluster.client_url(0));
        let mut kv = KvClient::connect(gateway.url()).await.unwrap();
        kv.put(put("/stop/before")).await.expect("a Put before the stop");

        let (requests, input) = mpsc::channel(1);
        let create = WatchCreateRequest { key: b"/stop/".to_vec(), range_end: b"/stop0".to_vec(), ..Default::default() };
        requests.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
        let mut watch = WatchClient::connect(gateway.url()).await.unwrap().watch(ReceiverStream::new(input)).await.unwrap().into_inner();
        assert!(watch.next().await.unwrap().unwrap().created, "{version}");

        let sent_before = common::metric(gateway.addr(), &sent).unwrap_or_else(|| panic!("{version}: no {sent}"));
        cluster.pause(0).unwrap();
        let grpc_put = tokio::spawn(async move { kv.put(put("/stop/grpc")).await });
        let addr = gateway.addr().to_string();
        let http_put = tokio::task::spawn_blocking(move || common::http_post(&addr, "/v3/kv/put", r#"{"key":"L3N0b3AvaHR0cA==","value":"MQ=="}"#));
        // Both calls reach the paused member through etcdgate, and wait.
        let deadline = Instant::now() + Duration::from_secs(20);
        while common::metric(gateway.addr(), &sent).unwrap_or_default() < sent_before + 2 {
            assert!(Instant::now() < deadline, "{version}: the two Puts were not sent to the member");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gateway.terminate();

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
