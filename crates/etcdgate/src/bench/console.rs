//! `etcdgate bench console`: what the console's jobs cost on a cluster holding an APISIX configuration of many
//! routes, next to etcd's own tool doing the nearest thing (etcdctl, a process per command, as an operator runs it):
//!
//! - an inspection (member list, Status and `/metrics` of every member, alarms, HashKV on every voter) against
//!   `etcdctl endpoint status --cluster` + `endpoint hashkv --cluster` + `alarm list`;
//! - a verified backup (snapshot stream, sha256, every page read, data hash against the member's HashKV) against
//!   `etcdctl snapshot save` (which checks nothing), and the verification alone against `etcdctl snapshot status`
//!   (which reads the file with bbolt and hashes it);
//! - the key browser (every key under `/apisix/` in pages at one revision, judged) against
//!   `etcdctl get /apisix/ --prefix`.
//!
//! Each operation runs `rounds` times, etcdgate's and etcdctl's alternating; the table shows medians.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use etcdgate_console::apisix::{analyze, read_prefix};
use etcdgate_console::backup::{take_backup, BackupOptions};
use etcdgate_console::inspect::{inspect, InspectOptions};
use etcdgate_console::snapshot::read_snapshot;
use etcdgate_console::Credentials;
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, request_op, PutRequest, RequestOp, TxnRequest};
use etcdgate_testkit::{etcdctl_ok, Cluster, EtcdVersion};
use etcdgate_upstream::{Pool, PoolOptions};

use super::parse_version;

/// One line of the table: the operation, its etcdctl equivalent, their times, a note.
struct Row {
    what: &'static str,
    equivalent: &'static str,
    ours: Vec<Duration>,
    theirs: Vec<Duration>,
    note: String,
}

/// Puts per Txn while loading (etcd's default `--max-txn-ops` is 128).
const LOAD_BATCH: usize = 100;

#[derive(Args, Debug, Clone)]
pub struct ConsoleArgs {
    /// Routes in the APISIX configuration (plus one upstream per 100 routes and a service per 1000).
    #[arg(long, default_value_t = 50_000)]
    pub routes: usize,
    /// etcd cluster size.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Times each operation runs (the table shows medians).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// etcd release line to run: 3.4 or 3.5.
    #[arg(long, default_value = "3.5", value_parser = parse_version)]
    pub etcd_version: EtcdVersion,
}

/// An APISIX route as the Admin API writes it (about 300 bytes).
fn route(i: usize) -> String {
    format!(
        r#"{{"id":"{i}","name":"route-{i}","uri":"/api/v1/service-{i}/*","methods":["GET","POST","PUT"],"hosts":["api-{}.example.com"],"upstream_id":"{}","plugins":{{"limit-count":{{"count":100,"time_window":60,"key":"remote_addr","rejected_code":429}}}},"status":1,"priority":0,"create_time":1700000000,"update_time":1700000000}}"#,
        i % 10,
        i / 100
    )
}

async fn load(cluster: &Cluster, routes: usize) -> anyhow::Result<usize> {
    let mut kv = KvClient::connect(cluster.client_url(0)).await.context("connecting to etcd")?;
    let mut data: Vec<(String, String)> = (0..routes).map(|i| (format!("/apisix/routes/{i}"), route(i))).collect();
    for u in 0..routes.div_ceil(100) {
        let nodes = format!(r#"{{"10.0.{}.{}:8080":1,"10.0.{}.{}:8080":1}}"#, u / 250, u % 250, u / 250, u % 250 + 1);
        data.push((format!("/apisix/upstreams/{u}"), format!(r#"{{"id":"{u}","type":"roundrobin","nodes":{nodes}}}"#)));
    }
    for s in 0..routes.div_ceil(1000) {
        data.push((format!("/apisix/services/{s}"), format!(r#"{{"id":"{s}","name":"service-{s}","upstream_id":"{s}"}}"#)));
    }
    data.extend(crate::dev::placeholders());
    let bytes = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    for batch in data.chunks(LOAD_BATCH) {
        let success = batch
            .iter()
            .map(|(key, value)| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    ..Default::default()
                })),
            })
            .collect();
        kv.txn(TxnRequest { success, ..Default::default() }).await.context("loading the configuration")?;
    }
    Ok(bytes)
}

/// The median of `samples`, in ms.
fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples.get(samples.len() / 2).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// Runs etcdctl and fails on a failed command.
fn etcdctl(version: EtcdVersion, endpoints: &str, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    etcdctl_ok(version, endpoints, args).map_err(anyhow::Error::msg)
}

pub async fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    let version = args.etcd_version;
    let rounds = args.rounds.max(1);
    eprintln!("starting {} etcd {} members ...", args.members, version);
    let cluster = Cluster::builder(version).members(args.members).start().await?;
    let loading = Instant::now();
    let bytes = load(&cluster, args.routes).await?;
    eprintln!("loaded {} routes ({:.1} MiB of keys and values) in {:.1} s", args.routes, bytes as f64 / 1048576.0, loading.elapsed().as_secs_f64());
    let pool = Pool::new(&cluster.client_urls(), PoolOptions::default()).map_err(anyhow::Error::msg)?;
    let endpoints = cluster.client_url(0);
    let all = cluster.client_urls().join(",");
    let dir = tempfile::tempdir()?;
    let options = BackupOptions { dir: dir.path().join("backups"), keep: 1, timeout: Duration::from_secs(600) };
    let etcdctl_file = dir.path().join("etcdctl.db");
    let etcdctl_file = etcdctl_file.to_str().context("temporary path")?.to_string();

    let mut rows: Vec<Row> = Vec::new();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut note = String::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let inspection = inspect(&pool, None, &InspectOptions::default()).await;
        ours.push(started.elapsed());
        if inspection.members.iter().filter(|m| m.hash.is_some()).count() != args.members {
            bail!("the inspection hashed fewer members than there are: {:?}", inspection.findings);
        }
        let db = inspection.members.first().and_then(|m| m.status.as_ref()).map_or(0, |s| s.db_size);
        note = format!("{} members hashed, {:.1} MiB db each", args.members, db as f64 / 1048576.0);
        let started = Instant::now();
        etcdctl(version, &all, &["endpoint", "status", "--cluster"])?;
        etcdctl(version, &all, &["endpoint", "hashkv", "--cluster"])?;
        etcdctl(version, &all, &["alarm", "list"])?;
        theirs.push(started.elapsed());
    }
    rows.push(Row { what: "inspection", equivalent: "etcdctl endpoint status + endpoint hashkv --cluster + alarm list", ours, theirs, note });

    let (mut ours, mut theirs, mut verify_ours, mut verify_theirs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut note = String::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let record = take_backup(&pool, None, &options).await.map_err(anyhow::Error::msg)?;
        ours.push(started.elapsed());
        note = format!("{:.1} MiB, {} keys, {}", record.size_bytes as f64 / 1048576.0, record.keys, record.verified);
        let started = Instant::now();
        etcdctl(version, &endpoints, &["snapshot", "save", &etcdctl_file])?;
        theirs.push(started.elapsed());
        let file = options.dir.join(&record.file);
        let started = Instant::now();
        let summary = tokio::task::spawn_blocking(move || read_snapshot(&file)).await??;
        verify_ours.push(started.elapsed());
        if summary.hash != record.hash {
            bail!("the backup reads differently the second time");
        }
        let started = Instant::now();
        etcdctl(version, &endpoints, &["snapshot", "status", &etcdctl_file])?;
        verify_theirs.push(started.elapsed());
    }
    rows.push(Row { what: "verified backup", equivalent: "etcdctl snapshot save", ours, theirs, note });
    let note = "every page, sha256, KV hash".to_string();
    rows.push(Row { what: "snapshot check alone", equivalent: "etcdctl snapshot status", ours: verify_ours, theirs: verify_theirs, note });

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut note = String::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let read = read_prefix(&pool, Credentials::Token(None), b"/apisix/").await.map_err(anyhow::Error::msg)?;
        let read_in = started.elapsed();
        let report = analyze("/apisix", &read.kvs);
        ours.push(started.elapsed());
        let problems = &report.totals.problems;
        note = format!(
            "{} keys read in {} ms (pages at one revision), judged in {} ms; {} problems",
            report.totals.keys,
            read_in.as_millis(),
            (started.elapsed() - read_in).as_millis(),
            problems.info + problems.warning + problems.critical
        );
        let started = Instant::now();
        etcdctl(version, &endpoints, &["get", "/apisix/", "--prefix"])?;
        theirs.push(started.elapsed());
    }
    rows.push(Row { what: "key browser (read + judge /apisix)", equivalent: "etcdctl get /apisix/ --prefix", ours, theirs, note });

    let mut table = String::new();
    let _ = writeln!(table, "\n{version}, {} members, {} routes; medians of {rounds} rounds\n", args.members, args.routes);
    let _ = writeln!(table, "| operation | etcdgate ms | etcdctl equivalent | etcdctl ms | ratio | notes |");
    let _ = writeln!(table, "|---|---:|---|---:|---:|---|");
    for Row { what, equivalent, ours, theirs, note } in rows {
        let (ours, theirs) = (median(ours), median(theirs));
        let _ = writeln!(table, "| {what} | {ours:.0} | `{equivalent}` | {theirs:.0} | {:.2}× | {note} |", ours / theirs);
    }
    println!("{table}");
    Ok(())
}
