//! Streams through etcdgate survive the member under them. A watch, with that member killed
//! (SIGKILL; a follower, and the leader) or hung (SIGSTOP): the client's stream sees no error, no second `created`, header
//! revisions that never go back, and exactly the events etcd recorded — checked against a
//! direct watch of the same range from the same revision once the writes are done. A lease
//! keepalive stream, with its member killed: every keepalive is answered, none fails. An
//! APISIX-style HTTP/JSON watch, with its member killed: the chunks go on, no error line. The
//! cache's own watch, with its member hung and the probes too slow to see it: it moves.

mod common;

use std::time::Duration;

use etcdgate_proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
    watch_request::RequestUnion, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, StatusRequest, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use etcdgate_testkit::{Cluster, EtcdVersion};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use common::{metric, Etcdgate};

const PREFIX: &[u8] = b"/wf/";
const RANGE_END: &[u8] = b"/wf0";
const WRITES: usize = 60;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL the member under the watch, a follower or the leader as balancing gave.
    Kill,
    /// SIGKILL the member under the watch, which is the leader: the cluster elects anew.
    KillLeader,
    Pause,
}

async fn open_watch(url: String, start_revision: i64) -> (mpsc::Sender<WatchRequest>, Streaming<WatchResponse>) {
    let (requests, receiver) = mpsc::channel(4);
    let create = WatchCreateRequest { key: PREFIX.to_vec(), range_end: RANGE_END.to_vec(), start_revision, ..Default::default() };
    requests.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let responses = WatchClient::connect(url).await.unwrap().watch(ReceiverStream::new(receiver)).await.unwrap().into_inner();
    (requests, responses)
}

/// (key, mod_revision, value) of every event, until `count` events arrived.
async fn collect_events(responses: &mut Streaming<WatchResponse>, count: usize) -> (Vec<(Vec<u8>, i64, Vec<u8>)>, Vec<WatchResponse>) {
    let mut events = Vec::new();
    let mut messages = Vec::new();
    while events.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(60), responses.next())
            .await
            .expect("watch went silent")
            .expect("watch stream ended")
            .unwrap_or_else(|status| panic!("client saw an error: {status:?}"));
        for event in &message.events {
            let kv = event.kv.clone().unwrap();
            events.push((kv.key, kv.mod_revision, kv.value));
        }
        messages.push(message);
    }
    (events, messages)
}

async fn member_index(cluster: &Cluster, member_id: u64) -> usize {
    for (i, url) in cluster.client_urls().into_iter().enumerate() {
        let mut maintenance = MaintenanceClient::connect(url).await.unwrap();
        if maintenance.status(StatusRequest {}).await.unwrap().into_inner().header.unwrap().member_id == member_id {
            return i;
        }
    }
    panic!("no member has id {member_id:x}");
}

/// Puts through a member other than `avoid`, retrying (a retried put may apply twice; the
/// check compares against etcd's own record, so that is fine).
async fn write(cluster: &Cluster, avoid: usize, i: usize) {
    let url = cluster.client_url((avoid + 1) % cluster.member_count());
    for _ in 0..50 {
        let put = PutRequest { key: format!("/wf/{i:03}").into_bytes(), value: format!("v{i}").into_bytes(), ..Default::default() };
        let Ok(mut kv) = KvClient::connect(url.clone()).await else { continue };
        let mut request = tonic::Request::new(put);
        request.set_timeout(Duration::from_secs(5));
        if kv.put(request).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("write {i} never succeeded");
}

async fn survives(version: EtcdVersion, fault: Fault) {
    let mut cluster = Cluster::start(version, 3).await.unwrap();
    let gateway = Etcdgate::start(&cluster.endpoints());
    let leader = cluster.wait_leader(Duration::from_secs(30)).await.unwrap();
    // Balancing spreads new streams over the members: open until one is on the leader.
    let (_keep_open, mut through_gateway, created, victim) = loop {
        let (keep_open, mut stream) = open_watch(gateway.url(), 0).await;
        let created = stream.next().await.unwrap().unwrap();
        assert!(created.created);
        let member = member_index(&cluster, created.header.as_ref().unwrap().member_id).await;
        if !matches!(fault, Fault::KillLeader) || member == leader {
            break (keep_open, stream, created, member);
        }
    };
    let start_revision = created.header.as_ref().unwrap().revision + 1;

    for i in 0..WRITES / 3 {
        write(&cluster, victim, i).await;
    }
    match fault {
        Fault::Kill | Fault::KillLeader => cluster.kill(victim),
        Fault::Pause => cluster.pause(victim).unwrap(),
    }
    for i in WRITES / 3..WRITES {
        write(&cluster, victim, i).await;
    }

    let survivor = cluster.client_url((victim + 1) % 3);
    let (_keep, mut direct) = open_watch(survivor, start_revision).await;
    let expected_count = {
        let mut kv = KvClient::connect(cluster.client_url((victim + 1) % 3)).await.unwrap();
        let now = kv.range(etcdgate_proto::etcdserverpb::RangeRequest { key: b"/".to_vec(), ..Default::default() }).await.unwrap();
        (now.into_inner().header.unwrap().revision - start_revision + 1) as usize
    };
    let (expected, _) = collect_events(&mut direct, expected_count).await;
    let (got, messages) = collect_events(&mut through_gateway, expected_count).await;
    assert_eq!(got, expected, "{version} {fault:?}: events through etcdgate differ from etcd's record");

    let mut last_revision = 0;
    for message in &messages {
        assert!(!message.created && !message.canceled, "{version} {fault:?}: unexpected {message:?}");
        let revision = message.header.as_ref().unwrap().revision;
        assert!(revision >= last_revision, "{version} {fault:?}: header revision went back");
        last_revision = revision;
    }
    if let Fault::Pause = fault {
        cluster.resume(victim).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_survives_a_killed_member() {
    for version in EtcdVersion::all() {
        survives(version, Fault::Kill).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_survives_a_killed_leader() {
    for version in EtcdVersion::all() {
        survives(version, Fault::KillLeader).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_survives_a_hung_member() {
    for version in EtcdVersion::all() {
        survives(version, Fault::Pause).await;
    }
}

/// etcd's count of watchers on each member (`etcd_debugging_mvcc_watcher_total`).
fn etcd_watchers(cluster: &Cluster) -> Vec<u64> {
    let addrs: Vec<String> = cluster.client_urls().iter().map(|url| url.trim_start_matches("http://").to_string()).collect();
    addrs.iter().map(|addr| metric(addr, "etcd_debugging_mvcc_watcher_total").unwrap_or(0)).collect()
}

/// The cache's upstream watch sits on a member that hangs (SIGSTOP), with probes every ten
/// minutes so that only the feed itself can notice: a write acknowledged through etcdgate
/// does not arrive — or, for a write made straight to etcd, a read waits for it in vain and
/// the member does not answer a progress request at the cluster's revision — so the feed
/// calls its watch stalled, the member suspect, and moves the watch. A client watch served
/// from the cache gets the write.
async fn cached_watch_leaves_a_silent_member(version: EtcdVersion, write_through_etcdgate: bool) {
    let mut cluster = Cluster::start(version, 3).await.unwrap();
    let leader = cluster.wait_leader(Duration::from_secs(30)).await.unwrap();
    let args = ["--cache-prefix", "/wf/", "--probe-interval-ms", "600000", "--probe-timeout-ms", "600000"];
    // Balancing puts the cache's watch on any member; writes must reach the leader, so start
    // etcdgate until the watch is on a follower.
    let (gateway, victim) = loop {
        let gateway = Etcdgate::start_with_args(&cluster.endpoints(), &args);
        let watchers = loop {
            let watchers = etcd_watchers(&cluster);
            if metric(gateway.addr(), "etcdgate_cache_upstream_watches") == Some(1) && watchers.iter().sum::<u64>() == 1 {
                break watchers;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let member = watchers.iter().position(|&count| count == 1).unwrap();
        if member != leader {
            break (gateway, member);
        }
    };
    let (_keep_open, mut watch) = open_watch(gateway.url(), 0).await;
    let created = watch.next().await.unwrap().unwrap();
    assert!(created.created);
    assert_eq!(etcd_watchers(&cluster).iter().sum::<u64>(), 1, "{version}: the client's watch is served from the cache");

    let writer = if write_through_etcdgate { gateway.url() } else { cluster.client_url((victim + 1) % 3) };
    let mut kv = KvClient::connect(writer).await.unwrap();
    // A write the feed brings just before the pause: its connection to the victim has just
    // heard from it, so HTTP/2 keep-alive would not notice the pause for seconds.
    let put = PutRequest { key: b"/wf/before-pause".to_vec(), value: b"v".to_vec(), ..Default::default() };
    kv.put(put).await.unwrap();
    collect_events(&mut watch, 1).await;

    cluster.pause(victim).unwrap();
    let put = PutRequest { key: b"/wf/after-pause".to_vec(), value: b"v".to_vec(), ..Default::default() };
    let revision = kv.put(put).await.unwrap().into_inner().header.unwrap().revision;
    if !write_through_etcdgate {
        // A linearizable read through etcdgate waits for the cache in vain, and has the
        // feed check its member.
        let mut reader = KvClient::connect(gateway.url()).await.unwrap();
        reader.range(etcdgate_proto::etcdserverpb::RangeRequest { key: b"/wf/after-pause".to_vec(), ..Default::default() }).await.unwrap();
    }
    let (events, _) = collect_events(&mut watch, 1).await;
    assert_eq!(events, vec![(b"/wf/after-pause".to_vec(), revision, b"v".to_vec())], "{version}");
    let stalls = metric(gateway.addr(), "etcdgate_cache_feed_stalls_total").unwrap_or(0);
    let suspect = format!("etcdgate_member_state{{member=\"{}\",state=\"suspect\"}}", cluster.client_url(victim));
    let victim_suspect = metric(gateway.addr(), &suspect);
    cluster.resume(victim).unwrap();
    let how = if write_through_etcdgate { "written through etcdgate" } else { "written straight to etcd" };
    assert!(stalls >= 1, "{version}, {how}: the cache's watch was not found stalled");
    assert_eq!(victim_suspect, Some(1), "{version}, {how}: the stall made the member suspect (not a keep-alive timeout, hung)");
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_watch_leaves_a_member_that_goes_silent() {
    for version in EtcdVersion::all() {
        cached_watch_leaves_a_silent_member(version, true).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_watch_leaves_a_member_that_goes_silent_with_writes_made_past_etcdgate() {
    for version in EtcdVersion::all() {
        cached_watch_leaves_a_silent_member(version, false).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_keepalive_survives_a_killed_member() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 3).await.unwrap();
        let gateway = Etcdgate::start(&cluster.endpoints());
        let mut leases = LeaseClient::connect(gateway.url()).await.unwrap();
        let lease = leases.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await.unwrap().into_inner().id;

        let (requests, receiver) = mpsc::channel(4);
        requests.send(LeaseKeepAliveRequest { id: lease }).await.unwrap();
        let mut answers = leases.lease_keep_alive(ReceiverStream::new(receiver)).await.unwrap().into_inner();
        let first = answers.next().await.unwrap().unwrap();
        assert_eq!((first.id, first.ttl), (lease, 60));
        let victim = member_index(&cluster, first.header.unwrap().member_id).await;
        cluster.kill(victim);

        for round in 0..5 {
            requests.send(LeaseKeepAliveRequest { id: lease }).await.unwrap();
            let answer = tokio::time::timeout(Duration::from_secs(60), answers.next())
                .await
                .expect("keepalive went unanswered")
                .expect("keepalive stream ended")
                .unwrap_or_else(|status| panic!("{version} round {round}: client saw an error: {status:?}"));
            assert_eq!(answer.id, lease);
            assert!(answer.ttl > 0, "{version} round {round}: lease lost: {answer:?}");
        }
    }
}

/// The `{"result":...}` lines of a chunked HTTP watch response, as APISIX reads them.
struct HttpWatch {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::TcpStream>>,
}

impl HttpWatch {
    async fn open(addr: &str, body: &str) -> HttpWatch {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        HttpWatch { lines: tokio::io::BufReader::new(stream).lines() }
    }

    /// The next JSON message (chunk sizes and headers skipped).
    async fn next(&mut self) -> serde_json::Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
                .await
                .expect("HTTP watch went silent")
                .unwrap()
                .expect("HTTP watch ended");
            if line.starts_with('{') {
                return serde_json::from_str(&line).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_watch_survives_a_killed_member() {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 3).await.unwrap();
        let gateway = Etcdgate::start(&cluster.endpoints());
        let body = format!(r#"{{"create_request":{{"key":"{}","range_end":"{}"}}}}"#, b64(PREFIX), b64(RANGE_END));
        let mut watch = HttpWatch::open(gateway.addr(), &body).await;
        let created = watch.next().await;
        assert_eq!(created["result"]["created"], true, "{created}");
        let member_id: u64 = created["result"]["header"]["member_id"].as_str().unwrap().parse().unwrap();
        let victim = member_index(&cluster, member_id).await;
        cluster.kill(victim);

        for i in 0..20 {
            write(&cluster, victim, i).await;
        }
        let mut revisions = Vec::new();
        while revisions.len() < 20 {
            let message = watch.next().await;
            assert!(message.get("error").is_none(), "{version}: error line through etcdgate: {message}");
            let result = &message["result"];
            assert!(result.get("created").is_none() && result.get("canceled").is_none(), "{version}: {message}");
            for event in result["events"].as_array().into_iter().flatten() {
                revisions.push(event["kv"]["mod_revision"].as_str().unwrap().parse::<i64>().unwrap());
            }
        }
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{version}: events out of order or repeated: {revisions:?}");
    }
}
