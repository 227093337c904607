//! TLS, both ways.
//!
//! To members: a cluster that serves clients over TLS only and asks them for a certificate
//! (`--client-cert-auth`), behind etcdgate given etcdctl's `--cacert`, `--cert` and `--key`.
//! Clients talk plain gRPC and HTTP/JSON to etcdgate and cannot tell: reads, writes, the
//! watch cache (its prefix load and upstream watch), watches, `/version` and `/health` all
//! work; the member list keeps the members' `https://` URLs; a killed member is failed over.
//! Without a client certificate, or with a CA that did not sign the members' certificates,
//! calls fail with an error that says why (unless told to skip verifying them).
//!
//! To clients: etcdgate given etcd's `--cert-file`, `--key-file`, `--trusted-ca-file` and
//! `--client-cert-auth` serves etcdctl (gRPC) and HTTP/JSON over TLS, and refuses a client
//! without a certificate.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use etcdgate_testkit::{run_etcdctl, Cluster, ClusterTls, EtcdVersion};
use etcdgate_upstream::{MemberTls, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

    drop(gateway);

    // Nothing was written.
    let direct = cluster.etcdctl(&["get", "/tls/x", "--print-value-only"]);
    assert!(direct.status.success() && direct.stdout.is_empty(), "{direct:?}");

    // The same wrong CA, told to accept any member certificate (etcdctl's
    // --insecure-skip-tls-verify): served.
    let mut flags = tls_flags(&tls.client_cert, Some((&tls.client_cert, &tls.client_key)));
    flags.push("--insecure-skip-tls-verify".into());
    let gateway = start_etcdgate(&cluster, &flags);
    let mut kv = KvClient::connect(gateway.url()).await.unwrap();
    put(&mut kv, "/tls/x", "1").await.expect("a put with member certificates not verified");
    assert_eq!(value(&mut kv, "/tls/x", false).await.as_deref(), Some(&b"1"[..]));
}

/// etcdctl's flags for a client with `tls`'s client certificate, or with none.
fn etcdctl_tls(tls: &ClusterTls, with_certificate: bool) -> Vec<String> {
    let mut flags = vec![format!("--cacert={}", tls.ca.display())];
    if with_certificate {
        flags.extend([format!("--cert={}", tls.client_cert.display()), format!("--key={}", tls.client_key.display())]);
    }
    flags
}

/// An HTTP/1.1 connection over TLS with `tls`'s client certificate, `POST path body` sent.
async fn https_request(addr: &str, tls: &ClusterTls, path: &str, body: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let files =
        TlsFiles { ca: Some(tls.ca.clone()), cert: Some(tls.client_cert.clone()), key: Some(tls.client_key.clone()), insecure_skip_verify: false };
    let mut config = MemberTls::from_files(&files).unwrap().config().clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
    let request = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// One HTTP/1.1 POST over TLS; the whole response.
async fn https_post(addr: &str, tls: &ClusterTls, path: &str, body: &str) -> String {
    let mut stream = https_request(addr, tls, path, body).await;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}

/// Reads `stream` until what came holds `wanted` (bounded by [`WAIT`]); all that came.
async fn read_until(stream: &mut (impl tokio::io::AsyncRead + Unpin), wanted: &str) -> String {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&received).contains(wanted) {
        let mut piece = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut piece)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&piece[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_over_tls_with_client_certificates() {
    let version = EtcdVersion::V3_5;
    let cluster = Cluster::builder(version).tls().start().await.unwrap();
    let tls = cluster.tls().unwrap().clone();
    let mut flags = tls_flags(&tls.ca, Some((&tls.client_cert, &tls.client_key)));
    // The members' certificate is for 127.0.0.1 and serves etcdgate's port as well.
    for (flag, path) in [("--cert-file", &tls.server_cert), ("--key-file", &tls.server_key), ("--trusted-ca-file", &tls.ca)] {
        flags.extend([flag.to_string(), path.display().to_string()]);
    }
    flags.push("--client-cert-auth".into());
    let gateway = start_etcdgate(&cluster, &flags);
    let endpoint = format!("https://{}", gateway.addr());
    let etcdctl = |with_certificate: bool, command: &[&str]| {
        let mut args = etcdctl_tls(&tls, with_certificate);
        args.extend(command.iter().map(|s| s.to_string()));
        run_etcdctl(version, &endpoint, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // gRPC over TLS: etcdctl writes and reads, inside the cached prefix and outside it.
    for key in ["/apisix/routes/9", "/tls/outside"] {
        let put = etcdctl(true, &["put", key, "v9"]);
        assert!(put.status.success(), "etcdctl put {key} over TLS: {}", String::from_utf8_lossy(&put.stderr));
        let got = etcdctl(true, &["get", key, "--print-value-only"]);
        assert_eq!(String::from_utf8_lossy(&got.stdout), "v9\n", "{}", String::from_utf8_lossy(&got.stderr));
    }

    // HTTP/JSON over TLS.
    let range = https_post(gateway.addr(), &tls, "/v3/kv/range", r#"{"key":"L2FwaXNpeC9yb3V0ZXMvOQ=="}"#).await;
    assert!(range.starts_with("HTTP/1.1 200") && range.contains(r#""value":"djk=""#), "{range}");

    // An APISIX-style long watch over TLS: created, then the event of a later put.
    let create = r#"{"create_request":{"key":"L2FwaXNpeC8=","range_end":"L2FwaXNpeDA="}}"#;
    let mut watch = https_request(gateway.addr(), &tls, "/v3/watch", create).await;
    let created = read_until(&mut watch, r#""created":true"#).await;
    assert!(created.starts_with("HTTP/1.1 200") && created.contains(r#""created":true"#), "{created}");
    assert!(etcdctl(true, &["put", "/apisix/routes/10", "v10"]).status.success());
    let event = read_until(&mut watch, r#""events""#).await;
    assert!(event.contains(r#""key":"L2FwaXNpeC9yb3V0ZXMvMTA=""#), "{event}");

    // A client without a certificate is refused, and nothing it sent is done.
    let refused = etcdctl(false, &["put", "/tls/refused", "x"]);
    assert!(!refused.status.success(), "a client without a certificate was served");
    let direct = cluster.etcdctl(&["get", "/tls/refused", "--print-value-only"]);
    assert!(direct.status.success() && direct.stdout.is_empty(), "{direct:?}");
}
