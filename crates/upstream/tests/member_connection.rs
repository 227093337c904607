//! A member connection's HTTP/2 keep-alive against real etcd: pings while a stream is open
//! keep it going through quiet periods; a member that stops answering fails the stream; the
//! next call connects again.

use std::time::Duration;

use etcdgate_proto::etcdserverpb::kv_client::KvClient;
use etcdgate_proto::etcdserverpb::lease_client::LeaseClient;
use etcdgate_proto::etcdserverpb::watch_client::WatchClient;
use etcdgate_proto::etcdserverpb::watch_request::RequestUnion;
use etcdgate_proto::etcdserverpb::{PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};
use etcdgate_testkit::{Cluster, EtcdVersion};
use etcdgate_upstream::{ConnectOptions, MemberConnection};
use tokio_stream::StreamExt;

/// Bound on waits that must end for the test to pass (never a measure of speed).
const PATIENCE: Duration = Duration::from_secs(30);

fn connection(url: &str) -> MemberConnection {
    let options = ConnectOptions {
        keepalive_interval: Some(Duration::from_millis(300)),
        keepalive_timeout: Duration::from_millis(300),
        ..ConnectOptions::plain(Duration::from_secs(1))
    };
    MemberConnection::with_options(url, options).unwrap()
}

#[tokio::test]
async fn keep_alive_holds_a_quiet_stream_and_drops_a_member_that_stops_answering() {
    for version in EtcdVersion::all() {
        // etcd allows pings this often only when told to.
        let mut cluster = Cluster::builder(version).arg("--grpc-keepalive-min-time=100ms").start().await.unwrap();
        let connection = connection(&cluster.client_url(0));
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest { key: b"/k".to_vec(), ..Default::default() })),
        };
        let mut watch = WatchClient::new(connection.clone())
            .watch(tokio_stream::iter([create]).chain(tokio_stream::pending()))
            .await
            .unwrap()
            .into_inner();
        assert!(watch.next().await.unwrap().unwrap().created, "{version}");

        // Several keep-alive rounds with nothing on the stream; it still delivers.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut kv = KvClient::new(connection.clone());
        kv.put(PutRequest { key: b"/k".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
        let event = tokio::time::timeout(PATIENCE, watch.next()).await.expect("event").unwrap().unwrap();
        assert_eq!(event.events.len(), 1, "{version}: {event:?}");

        // A member that stops answering: the pings go unanswered and the stream fails.
        cluster.pause(0).unwrap();
        let failed = tokio::time::timeout(PATIENCE, watch.next()).await.expect("the stream of a frozen member must fail");
        assert!(!matches!(failed, Some(Ok(_))), "{version}: {failed:?}");
        cluster.resume(0).unwrap();

        // The next call makes a new connection.
        let read = tokio::time::timeout(PATIENCE, kv.range(RangeRequest { key: b"/k".to_vec(), ..Default::default() }))
            .await
            .expect("a call after the member came back")
            .unwrap()
            .into_inner();
        assert_eq!(read.kvs[0].value, b"v", "{version}");
    }
}

#[tokio::test]
async fn bodiless_and_streaming_requests_reach_the_member() {
    for version in EtcdVersion::all() {
        let cluster = Cluster::start(version, 1).await.unwrap();
        let connection = MemberConnection::new(&cluster.client_url(0), Duration::from_secs(1)).unwrap();
        // A keepalive stream whose input is over at once: etcd sees the end and ends it.
        let mut leases = LeaseClient::new(connection.clone());
        let call = leases.lease_keep_alive(tokio_stream::empty());
        let mut keepalives = tokio::time::timeout(PATIENCE, call).await.expect("a stream without input must end").unwrap().into_inner();
        let ended = tokio::time::timeout(PATIENCE, keepalives.next()).await.expect("a stream without input must end");
        assert!(ended.is_none(), "{version}: {ended:?}");

        // Requests sent one by one on a stream, each answered (etcd answers the call once the
        // first request is in).
        let (requests, receiver) = tokio::sync::mpsc::channel(1);
        let create = |key: &str| WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest { key: key.as_bytes().to_vec(), ..Default::default() })),
        };
        requests.send(create("/a")).await.unwrap();
        let mut watches = WatchClient::new(connection.clone());
        let call = watches.watch(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let mut watch = tokio::time::timeout(PATIENCE, call).await.expect("watch answered").unwrap().into_inner();
        for key in ["/a", "/b", "/c"] {
            if key != "/a" {
                requests.send(create(key)).await.unwrap();
            }
            let created = tokio::time::timeout(PATIENCE, watch.next()).await.expect("created").unwrap().unwrap();
            assert!(created.created, "{version} {key}: {created:?}");
        }
    }
}
