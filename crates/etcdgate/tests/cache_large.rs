//! APISIX's full read of a large configuration from the watch cache: 50k routes (~37 MiB of
//! JSON) read whole over HTTP/JSON through etcdgate, as APISIX reads `/apisix` at start.
//! What etcd's own HTTP gateway answers to the same read is printed for the record.

mod common;

use std::io::{Read, Write};

use base64::Engine;
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, request_op, PutRequest, RequestOp, TxnRequest};
use etcdgate_testkit::{Cluster, EtcdVersion};
use serde_json::Value;

use common::Etcdgate;

const ROUTES: usize = 50_000;
const VALUE_BYTES: usize = 512;
const PUTS_PER_TXN: usize = 100;

/// `POST path body` with `Connection: close`; (status line, body).
fn post(addr: &str, path: &str, body: &str) -> (String, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    (head.lines().next().unwrap_or_default().to_string(), response[split + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_thousand_routes_read_whole_from_the_cache() {
    let version = EtcdVersion::V3_5;
    let cluster = Cluster::start(version, 1).await.unwrap();
    let gateway = Etcdgate::start(&cluster.endpoints());

    let mut kv = KvClient::connect(cluster.client_url(0)).await.unwrap();
    let value = vec![b'r'; VALUE_BYTES];
    for batch in 0..ROUTES / PUTS_PER_TXN {
        let success = (0..PUTS_PER_TXN)
            .map(|i| {
                let key = format!("/apisix/routes/{:05}", batch * PUTS_PER_TXN + i).into_bytes();
                RequestOp { request: Some(request_op::Request::RequestPut(PutRequest { key, value: value.clone(), ..Default::default() })) }
            })
            .collect();
        kv.txn(TxnRequest { success, ..Default::default() }).await.unwrap();
    }

    let b64 = base64::engine::general_purpose::STANDARD;
    let full_read = format!(r#"{{"key":"{}","range_end":"{}"}}"#, b64.encode("/apisix"), b64.encode("/apisiy"));
    let (status, body) = post(gateway.addr(), "/v3/kv/range", &full_read);
    assert!(status.contains("200"), "{status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["count"], ROUTES.to_string());
    assert_eq!(answer["kvs"].as_array().map(Vec::len), Some(ROUTES));
    assert_eq!(answer["kvs"][ROUTES - 1]["key"], b64.encode(format!("/apisix/routes/{:05}", ROUTES - 1)));

    let direct = cluster.client_url(0).trim_start_matches("http://").to_string();
    let (etcd_status, etcd_body) = post(&direct, "/v3/kv/range", &full_read);
    eprintln!(
        "{version}: {ROUTES} routes, {} MiB of JSON through etcdgate; etcd's own gateway: {etcd_status} {}",
        body.len() >> 20,
        String::from_utf8_lossy(&etcd_body[..etcd_body.len().min(160)])
    );
}
