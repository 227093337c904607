//! The watch cache losing continuity: etcdgate is frozen (SIGSTOP) while the prefix changes,
//! etcd compacts, and the whole cluster restarts, so that the cache's upstream watch cannot
//! resume where it stopped (etcd answers `compacted`). The cache reads the prefix again and
//! goes on: a client watch positioned before the gap is canceled with `compact_revision`
//! (nothing is ever synthesized), one positioned after the gap goes on untouched, and reads
//! from the cache show the new state. A cluster rebuilt at lower revisions (a restore from
//! an older snapshot) is noticed and read again, and every watch made before is canceled.

mod common;

use std::time::Duration;

use etcdgate_proto::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, CompactionRequest, PutRequest, RangeRequest,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use etcdgate_testkit::{Cluster, EtcdVersion};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use common::{http_get, Etcdgate};

async fn watch(url: &str, start_revision: i64) -> (mpsc::Sender<WatchRequest>, Streaming<WatchResponse>) {
    let (requests, input) = mpsc::channel(1);
    let create = WatchCreateRequest { key: b"/r/".to_vec(), range_end: b"/r0".to_vec(), start_revision, ..Default::default() };
    requests.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let mut responses = WatchClient::connect(url.to_string()).await.unwrap().watch(ReceiverStream::new(input)).await.unwrap().into_inner();
    let created = next(&mut responses).await;
    assert!(created.created, "{created:?}");
    (requests, responses)
}

async fn next(responses: &mut Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(30), responses.next())
        .await
        .expect("watch went silent")
        .expect("watch stream ended")
        .unwrap_or_else(|status| panic!("client saw an error: {status:?}"))
}

async fn put(kv: &mut KvClient<tonic::transport::Channel>, key: &str, value: &str) -> i64 {
    let response = kv.put(PutRequest { key: key.into(), value: value.into(), ..Default::default() }).await.unwrap();
    response.into_inner().header.unwrap().revision
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_cut_off_past_a_compaction_reads_again_and_cancels_only_watches_before_the_gap() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 1).await.unwrap();
        let gateway = Etcdgate::start_with_args(&cluster.endpoints(), &["--cache-prefix", "/r/"]);
        let mut through = KvClient::connect(gateway.url()).await.unwrap();
        let revision = put(&mut through, "/r/a", "1").await;

        let (_before, mut before_gap) = watch(&gateway.url(), revision + 1).await;
        let (_after, mut after_gap) = watch(&gateway.url(), revision + 100).await;

        // Cut off: the cluster goes down (the hub's watch ends), the gateway is frozen before
        // it can reconnect, and the writes and the compaction happen while it is frozen — so
        // none of their events can be waiting in a socket of the gateway.
        cluster.stop_all();
        gateway.signal("-STOP");
        cluster.start_all().await.unwrap();
        let mut direct = KvClient::connect(cluster.client_url(0)).await.unwrap();
        let mut last = 0;
        for i in 0..5 {
            last = put(&mut direct, "/r/b", &i.to_string()).await;
        }
        direct.compact(CompactionRequest { revision: last, physical: true }).await.unwrap();
        gateway.signal("-CONT");

        let canceled = next(&mut before_gap).await;
        assert!(canceled.canceled && canceled.compact_revision > revision, "{version}: the watch before the gap: {canceled:?}");
        assert!(canceled.events.is_empty(), "{version}: nothing synthesized: {canceled:?}");

        // The cache has the new state.
        let read =
            through.range(RangeRequest { key: b"/r/b".to_vec(), serializable: true, ..Default::default() }).await.unwrap().into_inner();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut read = read;
        while read.kvs.first().map(|kv| kv.value.as_slice()) != Some(b"4") {
            assert!(
                std::time::Instant::now() < deadline,
                "{version}: the cache never showed the writes made while it was cut off: {read:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            read =
                through.range(RangeRequest { key: b"/r/b".to_vec(), serializable: true, ..Default::default() }).await.unwrap().into_inner();
        }

        // The watch positioned after the gap is untouched and sees its revision come.
        let mut reached = 0;
        while reached < revision + 100 {
            reached = put(&mut through, "/r/c", "x").await;
        }
        let event = next(&mut after_gap).await;
        assert!(!event.canceled, "{version}: the watch after the gap: {event:?}");
        assert_eq!(event.events[0].kv.as_ref().unwrap().mod_revision, revision + 100, "{version}");

        let metrics = http_get(gateway.addr(), "/metrics");
        assert!(metrics.contains("etcdgate_cache_loads_total 2"), "{version}: read at start and again after the gap:\n{metrics}");
    }
}

/// The cluster is rebuilt empty behind etcdgate (as a restore from an older snapshot leaves
/// it): its revisions start again below the cache's. A linearizable read through etcdgate
/// never answers from the old state, even on a connection that saw the old revisions; the
/// cache reads the prefix again; and a watch made before is canceled with
/// `compact_revision` (what it was sent belongs to a history that is gone), so that a client
/// such as APISIX reads everything again.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_rebuilt_at_lower_revisions_is_read_again_and_old_watches_are_canceled() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 1).await.unwrap();
        let gateway = Etcdgate::start_with_args(&cluster.endpoints(), &["--cache-prefix", "/r/"]);
        let mut through = KvClient::connect(gateway.url()).await.unwrap();
        let mut old = 0;
        for i in 0..20 {
            old = put(&mut through, &format!("/r/old/{i}"), "x").await;
        }
        let (_keep_open, mut watching) = watch(&gateway.url(), 0).await;

        cluster.stop_all();
        std::fs::remove_dir_all(cluster.member_data_dir(0)).unwrap();
        cluster.start_all().await.unwrap();
        let mut direct = KvClient::connect(cluster.client_url(0)).await.unwrap();
        let mut new = 0;
        for i in 0..3 {
            new = put(&mut direct, &format!("/r/new/{i}"), "y").await;
        }
        assert!(new < old, "{version}: the rebuilt cluster is at {new}, the old one was at {old}");

        let keys = |read: &etcdgate_proto::etcdserverpb::RangeResponse| {
            read.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect::<Vec<_>>()
        };
        let prefix = RangeRequest { key: b"/r/".to_vec(), range_end: b"/r0".to_vec(), keys_only: true, ..Default::default() };
        let read = through.range(prefix.clone()).await.unwrap().into_inner();
        assert_eq!(keys(&read), ["/r/new/0", "/r/new/1", "/r/new/2"], "{version}: a linearizable read after the rebuild");

        let canceled = next(&mut watching).await;
        assert!(canceled.canceled && canceled.compact_revision > 0, "{version}: the watch made before: {canceled:?}");
        assert!(canceled.events.is_empty(), "{version}: nothing synthesized: {canceled:?}");

        // The cache itself holds the new state.
        let serializable = RangeRequest { serializable: true, ..prefix };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let read = through.range(serializable.clone()).await.unwrap().into_inner();
            if keys(&read) == ["/r/new/0", "/r/new/1", "/r/new/2"] {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{version}: the cache never showed the rebuilt cluster: {read:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let metrics = http_get(gateway.addr(), "/metrics");
        assert!(metrics.contains("etcdgate_cache_loads_total 2"), "{version}: read at start and again after the rebuild:\n{metrics}");
    }
}
