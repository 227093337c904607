//! APISIX's configuration read from real etcd (3.4 and 3.5): every key under the prefix exactly
//! once, across pages, at one revision even while APISIX's keys change; and the judgement finds
//! exactly the problems planted in it, on the items they were planted in.

use etcdgate_console::apisix::{analyze, read_prefix, ApisixReport, ProblemKind, ReadPrefix};
use etcdgate_console::inspect::Severity;
use etcdgate_console::Credentials;
use etcdgate_proto::etcdserverpb::{
    kv_client::KvClient, request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use etcdgate_testkit::{Cluster, EtcdVersion};
use etcdgate_upstream::{Pool, PoolOptions};
use tonic::transport::Channel;

const ROUTES: usize = 2500;

/// An APISIX data set: 3.x placeholders, upstreams, a service, a consumer, 2500 routes (more
/// than two pages), and two problems: a route whose upstream does not exist, an upstream whose
/// value is not JSON.
fn data_set() -> Vec<(String, String)> {
    let mut data = Vec::new();
    let dirs = [
        "routes", "upstreams", "services", "consumers", "ssls", "global_rules", "plugin_metadata", "protos", "stream_routes",
        "plugin_configs", "consumer_groups", "secrets", "plugins",
    ];
    for dir in dirs {
        data.push((format!("/apisix/{dir}/"), "init_dir".to_string()));
    }
    for i in 1..=3 {
        let upstream = format!(r#"{{"id":"{i}","type":"roundrobin","nodes":{{"127.0.0.1:{}":1}}}}"#, 8080 + i);
        data.push((format!("/apisix/upstreams/{i}"), upstream));
    }
    data.push(("/apisix/upstreams/broken".into(), r#"{"id":"broken","nodes":{"#.into()));
    data.push(("/apisix/services/1".into(), r#"{"id":"1","name":"web","upstream_id":1}"#.into()));
    data.push(("/apisix/consumers/jack".into(), r#"{"username":"jack","plugins":{"key-auth":{"key":"k"}}}"#.into()));
    data.push(("/apisix/plugins".into(), r#"[{"name":"key-auth"},{"name":"proxy-rewrite"}]"#.into()));
    for i in 0..ROUTES {
        let route = format!(r#"{{"id":"r{i:05}","uri":"/api/{i}/*","methods":["GET"],"upstream_id":"{}"}}"#, i % 3 + 1);
        data.push((format!("/apisix/routes/r{i:05}"), route));
    }
    data.push(("/apisix/routes/dangling".into(), r#"{"id":"dangling","uri":"/lost","upstream_id":"404"}"#.into()));
    data
}

/// Puts in transactions of 100 (etcd's default --max-txn-ops is 128); the revision after.
async fn put_all(kv: &mut KvClient<Channel>, data: &[(String, String)]) -> i64 {
    let mut revision = 0;
    for batch in data.chunks(100) {
        let success = batch
            .iter()
            .map(|(key, value)| {
                let put = PutRequest { key: key.clone().into_bytes(), value: value.clone().into_bytes(), ..Default::default() };
                RequestOp { request: Some(request_op::Request::RequestPut(put)) }
            })
            .collect();
        let answer = kv.txn(TxnRequest { success, ..Default::default() }).await.unwrap().into_inner();
        revision = answer.header.unwrap().revision;
    }
    revision
}

/// Keys and values as etcd holds them under `prefix` at `revision`, in one call.
async fn direct(kv: &KvClient<Channel>, prefix: &str, revision: i64) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let request = RangeRequest { key: prefix.as_bytes().to_vec(), range_end: end, revision, ..Default::default() };
    let answer = kv.clone().max_decoding_message_size(usize::MAX).range(request).await.unwrap().into_inner();
    answer.kvs.into_iter().map(|kv| (kv.key, kv.value, kv.mod_revision)).collect()
}

fn seen(read: &ReadPrefix) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
    read.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone(), kv.mod_revision)).collect()
}

/// Every problem as (type, item id or `*`, kind, severity).
fn problems(report: &ApisixReport) -> Vec<(String, String, ProblemKind, Severity)> {
    let mut all = Vec::new();
    for kind in &report.types {
        all.extend(kind.problems.iter().map(|p| (kind.name.clone(), "*".to_string(), p.kind, p.severity)));
        for item in &kind.items {
            all.extend(item.problems.iter().map(|p| (kind.name.clone(), item.id.clone(), p.kind, p.severity)));
        }
    }
    all
}

#[tokio::test]
async fn apisix_configuration_is_read_in_pages_at_one_revision_and_judged() {
    for version in EtcdVersion::all() {
        let cluster = Cluster::start(version, 1).await.unwrap();
        let pool = Pool::new(&cluster.client_urls(), PoolOptions::default()).unwrap();
        let mut kv = KvClient::connect(cluster.client_url(0)).await.unwrap();
        let data = data_set();
        // Neighbours of the tree: another APISIX's prefix, and keys just before and after it.
        let neighbours = [("/apisix-dev/routes/1", "{}"), ("/apisix0", "x"), ("/apisiw", "x"), ("/apisix", "")];
        let neighbours: Vec<(String, String)> = neighbours.map(|(k, v)| (k.into(), v.into())).into();
        put_all(&mut kv, &neighbours).await;
        let written = put_all(&mut kv, &data).await;

        // Every key under `/apisix/` once, in key order, as written, at the latest revision.
        let read = read_prefix(&pool, Credentials::Token(None), b"/apisix/").await.unwrap();
        assert_eq!(read.revision, written, "{version}");
        let keys: Vec<&[u8]> = read.kvs.iter().map(|kv| kv.key.as_slice()).collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "{version}: keys in order, each once");
        let mut expected: Vec<(Vec<u8>, Vec<u8>)> = data.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect();
        expected.sort();
        let got: Vec<(Vec<u8>, Vec<u8>)> = read.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
        assert_eq!(got.len(), data.len(), "{version}");
        assert!(got == expected, "{version}: the keys read are not the keys written");

        // Exactly the planted problems, on the items they were planted in.
        let report = analyze("/apisix", &read.kvs);
        let mut found = problems(&report);
        found.sort();
        assert_eq!(
            found,
            vec![
                ("routes".into(), "dangling".into(), ProblemKind::DanglingReference, Severity::Critical),
                ("upstreams".into(), "broken".into(), ProblemKind::InvalidJson, Severity::Critical),
            ],
            "{version}"
        );
        let routes = report.types.iter().find(|t| t.name == "routes").unwrap();
        assert_eq!((routes.count, routes.placeholder, routes.newest_mod_revision), (ROUTES as u64 + 1, true, written), "{version}");
        assert_eq!(routes.items.len() as u64 + routes.truncated, routes.count, "{version}");
        assert_eq!(routes.items.iter().filter(|i| i.id == "dangling").count(), 1, "{version}: the troubled route is listed");
        assert_eq!((report.totals.keys, report.totals.placeholders, report.totals.outside), (data.len() as u64, 13, 0), "{version}");
        assert_eq!((report.totals.problems.critical, report.totals.problems.warning, report.totals.problems.info), (2, 0, 0), "{version}");

        // Read as `/apisix`, the neighbours that start with it are counted as outside the tree.
        let wide = read_prefix(&pool, Credentials::Token(None), b"/apisix").await.unwrap();
        assert_eq!(wide.kvs.len(), data.len() + 3, "{version}");
        assert_eq!(analyze("/apisix", &wide.kvs).totals.outside, 3, "{version}");

        // Keys changing while they are read: the pages still show one revision, whole.
        let writer = {
            let mut kv = kv.clone();
            tokio::spawn(async move {
                for round in 0..20 {
                    let changed: Vec<(String, String)> = (0..100)
                        .map(|i| {
                            let id = (round * 125 + i) % ROUTES;
                            (format!("/apisix/routes/r{id:05}"), format!(r#"{{"uri":"/changed/{round}/{id}","upstream_id":"1"}}"#))
                        })
                        .collect();
                    put_all(&mut kv, &changed).await;
                    let gone = format!("/apisix/routes/r{:05}", round * 7);
                    kv.delete_range(DeleteRangeRequest { key: gone.into_bytes(), ..Default::default() }).await.unwrap();
                }
            })
        };
        let mut revisions = Vec::new();
        while revisions.is_empty() || !writer.is_finished() {
            let during = read_prefix(&pool, Credentials::Token(None), b"/apisix/").await.unwrap();
            assert_eq!(seen(&during), direct(&kv, "/apisix/", during.revision).await, "{version}: read at {}", during.revision);
            revisions.push(during.revision);
        }
        writer.await.unwrap();
        assert!(revisions.windows(2).all(|pair| pair[0] <= pair[1]), "{version}: {revisions:?}");
        let after = read_prefix(&pool, Credentials::Token(None), b"/apisix/").await.unwrap();
        assert_eq!(seen(&after), direct(&kv, "/apisix/", after.revision).await, "{version}");
        assert_eq!(after.kvs.len(), data.len() - 20, "{version}: 20 routes deleted");
    }
}
