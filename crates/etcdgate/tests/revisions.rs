//! Monotonic revisions: a client never sees `header.revision` lower than one it already saw
//! through the same connection, although its reads are spread over members that apply each
//! write a little after one another. A put and then a serializable read of the key, again
//! and again, over one gRPC connection and over one HTTP/1.1 keep-alive connection: every
//! read sees the put (its revision at least the put's) and revisions never go back — for keys
//! served by members and for keys served from the watch cache (read-your-writes). Inside
//! the watch cache that holds across connections too, as APISIX's HTTP/1.1 client needs: a
//! put on one connection, then a serializable read and a new watch each on a connection of
//! its own, both at the put's revision or later. And linearizable cached reads from many
//! clients at once see puts made straight to etcd just before them. Keeping header
//! revisions monotonic never makes a watch "from now" claim a revision its first events
//! predate: under a stream of writes, each such watch's first event comes after the
//! revision of its `created` answer, as from etcd, inside the cache and outside it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use etcdgate_proto::etcdserverpb::{kv_client::KvClient, watch_client::WatchClient, PutRequest, RangeRequest};
use futures::StreamExt;
use etcdgate_testkit::{Cluster, EtcdVersion};
use serde_json::Value;

use common::{http_get, Etcdgate};

const ROUNDS: usize = 100;

/// One HTTP/1.1 request on a kept-alive connection; returns the JSON body.
fn post(reader: &mut BufReader<TcpStream>, path: &str, body: &str) -> Value {
    let stream = reader.get_mut();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: etcdgate\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// One request on a connection of its own.
fn post_alone(addr: &str, path: &str, body: &str) -> Value {
    post(&mut BufReader::new(TcpStream::connect(addr).unwrap()), path, body)
}

/// Opens an HTTP watch with `create` on a connection of its own; its first message.
fn watch_created(addr: &str, create: &str) -> Value {
    let mut reader = BufReader::new(TcpStream::connect(addr).unwrap());
    let body = format!(r#"{{"create_request":{create}}}"#);
    write!(reader.get_mut(), "POST /v3/watch HTTP/1.1\r\nHost: etcdgate\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "watch ended before its first message");
        if line.starts_with('{') {
            return serde_json::from_str(&line).unwrap();
        }
    }
}

fn revision(answer: &Value) -> i64 {
    answer["header"]["revision"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_never_go_behind_what_the_connection_has_seen() {
    for version in EtcdVersion::all() {
        let cluster = Cluster::start(version, 3).await.unwrap();
        let gateway = Etcdgate::start(&cluster.endpoints());

        // Outside the watch cache, then inside it (etcdgate caches /apisix by default).
        for prefix in ["/revisions", "/apisix/revisions"] {
            let mut kv = KvClient::connect(gateway.url()).await.unwrap();
            let mut last = 0;
            for i in 0..ROUNDS {
                let key = format!("{prefix}/grpc/{i}").into_bytes();
                let put = kv.put(PutRequest { key: key.clone(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
                let put_revision = put.into_inner().header.unwrap().revision;
                let read = kv.range(RangeRequest { key, serializable: true, ..Default::default() }).await.unwrap().into_inner();
                let read_revision = read.header.unwrap().revision;
                assert!(read_revision >= put_revision, "{version} round {i}: read at {read_revision} after a put at {put_revision}");
                assert_eq!(read.kvs.len(), 1, "{version} round {i}: the read sees the put");
                assert!(read_revision >= last, "{version} round {i}: revision went back from {last} to {read_revision}");
                last = read_revision;
            }

            let mut http = BufReader::new(TcpStream::connect(gateway.addr()).unwrap());
            for i in 0..ROUNDS {
                use base64::Engine;
                let key = base64::engine::general_purpose::STANDARD.encode(format!("{prefix}/http/{i}"));
                let put = post(&mut http, "/v3/kv/put", &format!(r#"{{"key":"{key}","value":"dg=="}}"#));
                let read = post(&mut http, "/v3/kv/range", &format!(r#"{{"key":"{key}","serializable":true}}"#));
                assert!(revision(&read) >= revision(&put), "{version} round {i}: HTTP read behind the put: {read} after {put}");
                assert_eq!(read["count"], "1", "{version} round {i}: {read}");
                assert!(revision(&read) >= last, "{version} round {i}: HTTP revision went back from {last}: {read}");
                last = revision(&read);
            }
        }

        let metrics = http_get(gateway.addr(), "/metrics");
        let asked_again: Vec<&str> = metrics.lines().filter(|l| l.starts_with("etcdgate_reads_behind_total") || l.starts_with("etcdgate_cache_reads_total")).collect();
        eprintln!("{version}: reads asked again because their member was behind, and cache reads: {asked_again:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_reads_and_watches_see_writes_made_on_other_connections() {
    use base64::Engine;
    for version in EtcdVersion::all() {
        let cluster = Cluster::start(version, 3).await.unwrap();
        let gateway = Etcdgate::start(&cluster.endpoints());
        for i in 0..ROUNDS {
            let key = base64::engine::general_purpose::STANDARD.encode(format!("/apisix/elsewhere/{i}"));
            let put = post_alone(gateway.addr(), "/v3/kv/put", &format!(r#"{{"key":"{key}","value":"dg=="}}"#));
            let read = post_alone(gateway.addr(), "/v3/kv/range", &format!(r#"{{"key":"{key}","serializable":true}}"#));
            assert_eq!(read["count"], "1", "{version} round {i}: a read on another connection misses the put {put}: {read}");
            assert!(revision(&read) >= revision(&put), "{version} round {i}: read {read} behind the put {put}");
            let created = watch_created(gateway.addr(), &format!(r#"{{"key":"{key}"}}"#));
            assert_eq!(created["result"]["created"], true, "{version} round {i}: {created}");
            let watched_from = created["result"]["header"]["revision"].as_str().unwrap().parse::<i64>().unwrap();
            assert!(watched_from >= revision(&put), "{version} round {i}: a new watch starts at {watched_from}, before the put {put}");
        }
    }
}

/// A lease revoked through etcdgate deletes its keys: a serializable read right after, on
/// another connection, no longer finds them (the cache waits for the deletes as for any
/// write it acknowledged).
#[tokio::test(flavor = "multi_thread")]
async fn cached_reads_do_not_see_keys_of_a_lease_revoked_on_another_connection() {
    use base64::Engine;
    for version in EtcdVersion::all() {
        let cluster = Cluster::start(version, 3).await.unwrap();
        let gateway = Etcdgate::start(&cluster.endpoints());
        for i in 0..ROUNDS {
            let key = base64::engine::general_purpose::STANDARD.encode(format!("/apisix/leased/{i}"));
            let lease = post_alone(gateway.addr(), "/v3/lease/grant", r#"{"TTL":"60"}"#)["ID"].as_str().unwrap().to_string();
            post_alone(gateway.addr(), "/v3/kv/put", &format!(r#"{{"key":"{key}","value":"dg==","lease":"{lease}"}}"#));
            let leased = post_alone(gateway.addr(), "/v3/kv/range", &format!(r#"{{"key":"{key}","serializable":true}}"#));
            assert_eq!(leased["count"], "1", "{version} round {i}: {leased}");
            let revoked = post_alone(gateway.addr(), "/v3/lease/revoke", &format!(r#"{{"ID":"{lease}"}}"#));
            let read = post_alone(gateway.addr(), "/v3/kv/range", &format!(r#"{{"key":"{key}","serializable":true}}"#));
            assert!(read.get("kvs").is_none(), "{version} round {i}: a read after the revoke {revoked} still finds the key: {read}");
        }
    }
}

/// Linearizable cached reads from many clients at once, each after a put made straight to
/// etcd (so only the barrier read of etcd's revision can tell etcdgate about it): every read
/// sees its put.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_linearizable_cached_reads_see_writes_made_elsewhere() {
    for version in EtcdVersion::all() {
        let cluster = Cluster::start(version, 1).await.unwrap();
        let gateway = Etcdgate::start(&cluster.endpoints());
        let mut clients = Vec::new();
        for client in 0..8 {
            let (etcd_url, gateway_url) = (cluster.client_url(0), gateway.url());
            clients.push(tokio::spawn(async move {
                let mut etcd = KvClient::connect(etcd_url).await.unwrap();
                let mut through_gateway = KvClient::connect(gateway_url).await.unwrap();
                for i in 0..ROUNDS / 2 {
                    let key = format!("/apisix/linearizable/{client}").into_bytes();
                    let value = format!("{i}").into_bytes();
                    let put = etcd.put(PutRequest { key: key.clone(), value: value.clone(), ..Default::default() }).await.unwrap();
                    let put_revision = put.into_inner().header.unwrap().revision;
                    let read = through_gateway.range(RangeRequest { key, ..Default::default() }).await.unwrap().into_inner();
                    assert!(read.header.unwrap().revision >= put_revision, "{version} client {client} round {i}");
                    assert_eq!(read.kvs[0].value, value, "{version} client {client} round {i}: the read misses the put");
                }
            }));
        }
        for client in clients {
            client.await.unwrap();
        }
    }
}

/// Opens a watch of the prefix `prefix` from now; its `created` revision and the revision of
/// the first event it gets (within `WAIT_FOR_EVENT`, else `None`).
async fn from_now(url: String, prefix: &'static str) -> (i64, Option<i64>) {
    const WAIT_FOR_EVENT: std::time::Duration = std::time::Duration::from_secs(10);
    let (requests, input) = tokio::sync::mpsc::channel(1);
    requests.send(common::watch_prefix(prefix.as_bytes())).await.unwrap();
    let mut responses = WatchClient::connect(url).await.unwrap().watch(tokio_stream::wrappers::ReceiverStream::new(input)).await.unwrap().into_inner();
    let created = responses.next().await.unwrap().unwrap();
    assert!(created.created, "{created:?}");
    let first = match tokio::time::timeout(WAIT_FOR_EVENT, responses.next()).await {
        Ok(Some(Ok(response))) => response.events.first().and_then(|e| e.kv.as_ref()).map(|kv| kv.mod_revision),
        _ => None,
    };
    (created.header.map_or(0, |h| h.revision), first)
}

#[tokio::test(flavor = "multi_thread")]
async fn watches_from_now_get_only_events_after_their_created_revision() {
    let cluster = Cluster::start(EtcdVersion::V3_5, 1).await.unwrap();
    let gateway = Etcdgate::start(&cluster.endpoints());
    let writing = common::spawn_alternating_writes(gateway.url(), 1000);
    let (mut checked, mut wrong) = (0, Vec::new());
    while !writing.is_finished() {
        let watches: Vec<_> =
            (0..10).map(|i| tokio::spawn(from_now(gateway.url(), if i % 2 == 0 { "/apisix/" } else { "/outside/" }))).collect();
        for (i, watch) in watches.into_iter().enumerate() {
            let (created, first) = watch.await.unwrap();
            checked += 1;
            if first.is_some_and(|first| first <= created) {
                wrong.push(format!("{}: created at {created}, first event at {first:?}", if i % 2 == 0 { "cached" } else { "forwarded" }));
            }
        }
    }
    eprintln!("{checked} watches from now checked");
    assert!(wrong.is_empty(), "{} of {checked} watches got events from before their created revision: {wrong:?}", wrong.len());
}
