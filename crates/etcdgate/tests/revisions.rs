//! Monotonic revisions: a client never sees `header.revision` lower than one it already saw
//! through the same connection, although its reads are spread over members that apply each
//! write a little after one another. A put and then a serializable read of the key, again
//! and again, over one gRPC connection and over one HTTP/1.1 keep-alive connection: every
//! read sees the put (its revision at least the put's) and revisions never go back.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use etcdgate_proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use etcdgate_testkit::{Cluster, EtcdVersion};
use serde_json::Value;

use common::{http_get, Etcdgate};

const ROUNDS: usize = 150;

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

fn revision(answer: &Value) -> i64 {
    answer["header"]["revision"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_never_go_behind_what_the_connection_has_seen() {
    for version in EtcdVersion::all() {
        let cluster = Cluster::start(version, 3).await.unwrap();
        let gateway = Etcdgate::start(&cluster.endpoints());

        let mut kv = KvClient::connect(gateway.url()).await.unwrap();
        let mut last = 0;
        for i in 0..ROUNDS {
            let key = format!("/revisions/grpc/{i}").into_bytes();
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
            let key = base64::engine::general_purpose::STANDARD.encode(format!("/revisions/http/{i}"));
            let put = post(&mut http, "/v3/kv/put", &format!(r#"{{"key":"{key}","value":"dg=="}}"#));
            let read = post(&mut http, "/v3/kv/range", &format!(r#"{{"key":"{key}","serializable":true}}"#));
            assert!(revision(&read) >= revision(&put), "{version} round {i}: HTTP read behind the put: {read} after {put}");
            assert_eq!(read["count"], "1", "{version} round {i}: {read}");
            assert!(revision(&read) >= last, "{version} round {i}: HTTP revision went back from {last}: {read}");
            last = revision(&read);
        }

        let metrics = http_get(gateway.addr(), "/metrics");
        let asked_again: Vec<&str> = metrics.lines().filter(|l| l.starts_with("etcdgate_reads_behind_total")).collect();
        eprintln!("{version}: reads asked again because their member was behind: {asked_again:?}");
    }
}
