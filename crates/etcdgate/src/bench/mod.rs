//! `etcdgate bench`: measures etcdgate against direct etcd and etcd's own proxies, in one run
//! on one cluster, and prints throughput, p50/p99 and the ratios against the targets of the
//! project (etcdgate ≥ 0.9× direct etcd throughput, ≥ 1.0× `etcd grpc-proxy` on gRPC, p50
//! overhead ≤ 100 µs).
//!
//! This module owns the run: start one cluster (testkit), preload `/bench/key/000000..000999`,
//! start the three things under comparison (`etcd gateway`, `etcd grpc-proxy`, and etcdgate as
//! a child process of this binary), then for each workload measure every target in turn, so
//! that machine noise hits all of them alike. Everything it started is killed on the way out.
//!
//! - [`load`]: the closed-loop load generator (gRPC and HTTP/1.1 clients, hdrhistogram).
//! - [`gate`]: etcdgate as a child process.
//! - [`report`]: the markdown table, the verdicts and the JSON file.
//! - [`watchers`]: `etcdgate bench watchers`, the watch cache's benchmarks (its own run).
//! - [`failover`]: `etcdgate bench failover`, member failures as clients see them (its own run).
//! - [`logins`]: `etcdgate bench logins`, a storm of identical Authenticates (its own run).
//! - [`console`]: `etcdgate bench console`, what the console's jobs cost next to etcdctl (its own run).

mod console;
mod failover;
mod gate;
mod load;
mod logins;
mod report;
mod watchers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use etcdgate_proto::authpb::{permission::Type as PermissionType, Permission};
use etcdgate_proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest, PutRequest,
};
use etcdgate_testkit::{Cluster, EtcdVersion, ProxyProcess};
use futures::StreamExt;
use serde_json::json;

use gate::EtcdgateProcess;
use load::{CellConfig, CellResult, Client, Keyspace, Workload};
use report::{Cell, CpuPerRequest, Measured, Report, TargetKind};

/// Number of keys preloaded and read or overwritten at random.
const PRELOAD_KEYS: usize = 1000;

#[derive(Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// A scenario with its own run and flags instead of the request workloads.
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
    /// Measured seconds per cell (after a warm-up that is not counted).
    #[arg(long, default_value_t = 5)]
    pub duration_secs: u64,
    /// Warm-up seconds per cell, not counted.
    #[arg(long, default_value_t = 1)]
    pub warmup_secs: u64,
    /// Requests in flight at once (closed loop: each worker sends its next request when the
    /// previous one is answered).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// gRPC channels (HTTP/2 connections) per cell, spread over the target's URLs. HTTP/1.1
    /// cells keep one keep-alive connection per request in flight instead.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// etcd cluster size (1 keeps the noise down on a small machine).
    #[arg(long, default_value_t = 1)]
    pub members: usize,
    /// Value size in bytes of the preloaded keys and of every Put.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// etcd release line to run: 3.4 or 3.5.
    #[arg(long, default_value = "3.5", value_parser = parse_version)]
    pub etcd_version: EtcdVersion,
    /// Workloads to run, comma-separated (default: all of range-serializable,
    /// range-linearizable, http-range, apisix-read-serializable, apisix-read-linearizable,
    /// apisix-read-earlier, put — the writes last, so that every read cell finds the caches as the preload left
    /// them).
    #[arg(long, value_delimiter = ',', value_parser = Workload::parse)]
    pub workloads: Vec<Workload>,
    /// Targets to measure, comma-separated (default: all of direct, etcd-gateway,
    /// grpc-proxy, etcdgate, etcdgate-cached — the latter caching every key under `/`, the
    /// benchmark's as well as `/apisix`). Ratios need `direct` / `grpc-proxy` in the run.
    #[arg(long, value_delimiter = ',', value_parser = TargetKind::parse)]
    pub targets: Vec<TargetKind>,
    /// Turn etcd's auth on after the preload: every request carries the token of a user
    /// allowed to read and write under `/` (as APISIX's `deployment.etcd.user`), and
    /// etcdgate follows its cached prefixes as a user of its own (`--user`).
    #[arg(long)]
    pub auth: bool,
    /// Environment for the etcdgate child process, `KEY=VALUE`, repeatable (e.g.
    /// `TOKIO_WORKER_THREADS=1`, `RUST_LOG=debug`).
    #[arg(long = "etcdgate-env", value_parser = parse_env)]
    pub etcdgate_env: Vec<(String, String)>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// The watch cache: B4 (10k watchers of one prefix, HTTP/JSON and gRPC: delivery latency,
    /// etcd's watcher count, memory per watcher) and B6 (watchers back from a compacted
    /// revision: full re-reads needed).
    Watchers(watchers::WatchersArgs),
    /// A member killed, hung and partitioned under an APISIX-like workload, direct to etcd,
    /// through `etcd gateway` and through etcdgate: errors, traffic to the bad member,
    /// throughput and watch delays over time (markdown, JSON, PNG).
    Failover(failover::FailoverArgs),
    /// An Authenticate storm: many clients logging in with the same user and password at
    /// once (as every APISIX worker does at start and after any auth change), direct, through
    /// etcd's proxies and through etcdgate: time until all have a token, password hashes etcd
    /// spent, what it does to other clients' reads.
    Logins(logins::LoginsArgs),
    /// The operations console's jobs on a cluster holding a large APISIX configuration: an
    /// inspection, a verified backup, the snapshot check alone, the key browser — each next to
    /// the etcdctl commands that come nearest.
    Console(console::ConsoleArgs),
}

fn parse_version(s: &str) -> Result<EtcdVersion, String> {
    EtcdVersion::all()
        .into_iter()
        .find(|v| v.label() == s.trim_start_matches('v'))
        .ok_or_else(|| format!("unsupported etcd version {s:?}: 3.4 or 3.5"))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The URLs a target is reached at, and the pid of the proxy process in the path.
struct Target {
    kind: TargetKind,
    urls: Vec<String>,
    proxy_pid: Option<u32>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.scenario.clone() {
        Some(Scenario::Watchers(watchers)) => return watchers::run(watchers).await,
        Some(Scenario::Failover(failover)) => return failover::run(failover).await,
        Some(Scenario::Logins(logins)) => return logins::run(logins).await,
        Some(Scenario::Console(console)) => return console::run(console).await,
        None => {}
    }
    if args.duration_secs == 0 || args.concurrency == 0 || args.connections == 0 || args.members == 0 {
        bail!("--duration-secs, --concurrency, --connections and --members must be at least 1");
    }
    let workloads = if args.workloads.is_empty() { Workload::ALL.to_vec() } else { args.workloads.clone() };
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    if cfg!(debug_assertions) {
        eprintln!("bench: WARNING: this is a debug build; measure with `cargo run --release -p etcdgate -- bench`");
    }
    let version = args.etcd_version;
    let config = CellConfig {
        warmup: Duration::from_secs(args.warmup_secs),
        duration: Duration::from_secs(args.duration_secs),
        concurrency: args.concurrency,
    };
    let mut keys = Keyspace::new(PRELOAD_KEYS, args.value_size);

    eprintln!("bench: starting {} member(s) of {version} ...", args.members);
    let cluster = Cluster::builder(version).members(args.members).start().await?;
    let member_urls = cluster.client_urls();
    preload(&member_urls, &keys).await.context("preloading keys")?;
    if workloads.iter().any(|w| w.reads_apisix()) {
        preload_apisix(&member_urls).await.context("preloading /apisix")?;
    }
    eprintln!("bench: preloaded {PRELOAD_KEYS} keys of {} bytes; starting proxies ...", args.value_size);
    let wanted = |kind: TargetKind| args.targets.is_empty() || args.targets.contains(&kind);
    let (etcd_gateway, grpc_proxy) = start_etcd_proxies(version, &member_urls, wanted)?;
    // After etcd's proxies: their readiness checks (`/health`) carry no credentials.
    if args.auth {
        keys.token = Some(enable_auth(&member_urls[0]).await.context("turning auth on")?);
    }
    let login: &[&str] = if args.auth { &["--user", "etcdgate:etcdgatepw"] } else { &[] };
    let etcdgate = if wanted(TargetKind::Etcdgate) {
        Some(
            EtcdgateProcess::start(&member_urls, login, &args.etcdgate_env, &keys.keys[0])
                .await
                .context("starting etcdgate")?,
        )
    } else {
        None
    };
    let etcdgate_cached = if wanted(TargetKind::EtcdgateCached) {
        // One prefix holding both key sets: a write to one of two cached prefixes moves etcd's
        // revision past what the other hub has seen, and its linearizable reads would go to
        // etcd until its next event (see the README's watch cache section).
        let cache_args = [&["--cache-prefix", "/"], login].concat();
        Some(
            EtcdgateProcess::start(&member_urls, &cache_args, &args.etcdgate_env, &keys.keys[0])
                .await
                .context("starting etcdgate with the benchmark's keys cached")?,
        )
    } else {
        None
    };
    if workloads.contains(&Workload::ApisixReadEarlier) {
        // Once every etcdgate follows its prefix, so that its history holds the rewrites.
        for gate in etcdgate.iter().chain(&etcdgate_cached) {
            gate.wait_cache_loaded().await?;
        }
        keys.earlier_revision = rewrite_apisix(&member_urls, &keys).await.context("writing /apisix again")?;
    }
    let keys = Arc::new(keys);
    let etcd_pids: Vec<u32> = (0..cluster.member_count()).filter_map(|i| cluster.pid(i)).collect();

    let mut targets = Vec::new();
    if wanted(TargetKind::Direct) {
        targets.push(Target { kind: TargetKind::Direct, urls: member_urls.clone(), proxy_pid: None });
    }
    if let Some(p) = &etcd_gateway {
        targets.push(Target { kind: TargetKind::EtcdGateway, urls: vec![p.url()], proxy_pid: p.pid() });
    }
    if let Some(p) = &grpc_proxy {
        targets.push(Target { kind: TargetKind::GrpcProxy, urls: vec![p.url()], proxy_pid: p.pid() });
    }
    if let Some(p) = &etcdgate {
        targets.push(Target { kind: TargetKind::Etcdgate, urls: vec![p.url()], proxy_pid: p.pid() });
    }
    if let Some(p) = &etcdgate_cached {
        targets.push(Target { kind: TargetKind::EtcdgateCached, urls: vec![p.url()], proxy_pid: p.pid() });
    }
    let total_cells: usize = workloads.iter().map(|w| targets.iter().filter(|t| t.kind.serves(*w)).count()).sum();
    eprintln!(
        "bench: {total_cells} cells of {}+{} s each (~{} s)",
        args.warmup_secs,
        args.duration_secs,
        total_cells as u64 * (args.warmup_secs + args.duration_secs)
    );

    let mut cells = Vec::new();
    for &workload in &workloads {
        for target in &targets {
            if !target.kind.serves(workload) {
                cells.push(Cell { workload, target: target.kind, measured: None });
                continue;
            }
            let measured = measure(workload, target, &keys, config, &args, &etcd_pids).await;
            eprintln!(
                "bench: {:<20} {:<13} {:>8.0} req/s  p50 {:>6} µs  p99 {:>6} µs  errors {}",
                workload.name(),
                target.kind.name(),
                measured.rps,
                measured.p50_us,
                measured.p99_us,
                measured.errors
            );
            cells.push(Cell { workload, target: target.kind, measured: Some(measured) });
        }
    }

    let report = Report { cells };
    println!(
        "etcdgate bench: {version}, {} member(s), {} s per cell after {} s warm-up, concurrency {}, \
         {} gRPC channels, {} B values, {PRELOAD_KEYS} keys, {build} build{}\n",
        args.members,
        args.duration_secs,
        args.warmup_secs,
        args.concurrency,
        args.connections,
        args.value_size,
        if args.auth { ", etcd's auth on (every request with a token)" } else { "" }
    );
    print!("{}", report.markdown());

    if let Some(path) = &args.json_out {
        let config = json!({
            "etcd_version": version.label(),
            "members": args.members,
            "duration_secs": args.duration_secs,
            "warmup_secs": args.warmup_secs,
            "concurrency": args.concurrency,
            "connections": args.connections,
            "value_size": args.value_size,
            "keys": PRELOAD_KEYS,
            "auth": args.auth,
            "build": build,
            "etcdgate_env": args.etcdgate_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&report.json(config))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: results written to {}", path.display());
    }

    // Stop what was started, in reverse order (each also stops on drop if we returned early).
    drop(etcdgate_cached);
    drop(etcdgate);
    drop(grpc_proxy);
    drop(etcd_gateway);
    drop(cluster);
    Ok(())
}

/// One cell: fresh connections, warm-up, measured window, CPU time of the processes involved.
async fn measure(
    workload: Workload,
    target: &Target,
    keys: &Arc<Keyspace>,
    config: CellConfig,
    args: &BenchArgs,
    etcd_pids: &[u32],
) -> Measured {
    let client = if workload.is_grpc() {
        Client::grpc(&target.urls, args.connections).await
    } else {
        // HTTP/1.1 has one request per connection at a time: keep one per worker alive.
        Client::http(&target.urls, args.concurrency)
    };
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            let failed = CellResult {
                ok: 0,
                errors: 1,
                warmup_errors: 0,
                first_error: Some(format!("connecting: {e:#}")),
                hist: hdrhistogram::Histogram::new(3).expect("valid histogram"),
                window: config.duration,
            };
            return Measured::new(&failed, CpuPerRequest::default());
        }
    };
    let start = Instant::now();
    let (from, to) = config.window(start);
    let (result, cpu) = tokio::join!(
        load::run_cell(&client, workload, keys, config, start),
        cpu_during(etcd_pids, target.proxy_pid, from, to)
    );
    let per_request = |us: Option<f64>| us.filter(|_| result.ok > 0).map(|us| us / result.ok as f64);
    let cpu =
        CpuPerRequest { etcd: per_request(cpu.etcd), proxy: per_request(cpu.proxy), loadgen: per_request(cpu.loadgen) };
    Measured::new(&result, cpu)
}

/// Writes `/apisix/routes/0000..` ([`load::APISIX_KEYS`] keys of [`load::APISIX_VALUE_BYTES`]).
async fn preload_apisix(urls: &[String]) -> anyhow::Result<()> {
    let mut kv = KvClient::connect(urls[0].clone()).await?;
    let value = vec![b'r'; load::APISIX_VALUE_BYTES];
    for i in 0..load::APISIX_KEYS {
        let key = format!("/apisix/routes/{i:04}").into_bytes();
        kv.put(PutRequest { key, value: value.clone(), ..Default::default() }).await?;
    }
    Ok(())
}

/// Writes the first [`load::APISIX_REWRITES`] keys under `/apisix/routes/` again (same
/// size, another value); returns the revision before.
async fn rewrite_apisix(urls: &[String], keys: &Keyspace) -> anyhow::Result<i64> {
    let mut kv = KvClient::connect(urls[0].clone()).await?;
    let value = vec![b'R'; load::APISIX_VALUE_BYTES];
    let mut before = 0;
    for i in 0..load::APISIX_REWRITES {
        let key = format!("/apisix/routes/{i:04}").into_bytes();
        let request = PutRequest { key, value: value.clone(), ..Default::default() };
        let revision = kv.put(load::with_token(request, keys)).await?.into_inner().header.map_or(0, |h| h.revision);
        if i == 0 {
            before = revision - 1;
        }
    }
    Ok(before)
}

/// etcd's own proxies in front of `urls`, each started if `wanted`: `etcd gateway` and
/// `etcd grpc-proxy`.
fn start_etcd_proxies(
    version: EtcdVersion,
    urls: &[String],
    wanted: impl Fn(TargetKind) -> bool,
) -> anyhow::Result<(Option<ProxyProcess>, Option<ProxyProcess>)> {
    let etcd_gateway = if wanted(TargetKind::EtcdGateway) {
        Some(ProxyProcess::etcd_gateway(version, urls).context("starting etcd gateway")?)
    } else {
        None
    };
    let grpc_proxy = if wanted(TargetKind::GrpcProxy) {
        Some(ProxyProcess::grpc_proxy(version, urls).context("starting etcd grpc-proxy")?)
    } else {
        None
    };
    Ok((etcd_gateway, grpc_proxy))
}

/// Turns etcd's auth on: `root`, `bench` (reads and writes under `/`) and `etcdgate`
/// (etcdgate's own: reads under `/`); returns a token of `bench`.
async fn enable_auth(url: &str) -> anyhow::Result<String> {
    let everything = |perm_type: PermissionType| Permission { perm_type: perm_type as i32, key: b"/".to_vec(), range_end: b"0".to_vec() };
    let users =
        [("root", None), ("bench", Some(everything(PermissionType::Readwrite))), ("etcdgate", Some(everything(PermissionType::Read)))];
    add_users_and_enable_auth(url, &users).await?;
    login(url, "bench").await
}

/// The password the benchmarks give etcd user `user`.
fn password(user: &str) -> String {
    format!("{user}pw")
}

/// Adds each user (password [`password`]) with a role of its own name granted its permission
/// (`root`'s role is etcd's root role: everything), then turns etcd's auth on.
async fn add_users_and_enable_auth(url: &str, users: &[(&str, Option<Permission>)]) -> anyhow::Result<()> {
    let mut auth = AuthClient::connect(url.to_string()).await?;
    for (user, permission) in users {
        auth.user_add(AuthUserAddRequest { name: user.to_string(), password: password(user), ..Default::default() }).await?;
        auth.role_add(AuthRoleAddRequest { name: user.to_string() }).await?;
        auth.user_grant_role(AuthUserGrantRoleRequest { user: user.to_string(), role: user.to_string() }).await?;
        if let Some(permission) = permission {
            let perm = Some(permission.clone());
            auth.role_grant_permission(AuthRoleGrantPermissionRequest { name: user.to_string(), perm }).await?;
        }
    }
    auth.auth_enable(AuthEnableRequest {}).await?;
    Ok(())
}

/// A token of `user` (password [`password`]), from etcd at `url` over gRPC.
async fn login(url: &str, user: &str) -> anyhow::Result<String> {
    let mut auth = AuthClient::connect(url.to_string()).await?;
    let request = AuthenticateRequest { name: user.to_string(), password: password(user) };
    Ok(auth.authenticate(request).await?.into_inner().token)
}

/// Writes every preloaded key with a value of the configured size, 16 at a time.
async fn preload(urls: &[String], keys: &Keyspace) -> anyhow::Result<()> {
    let kv = KvClient::connect(urls[0].clone()).await.with_context(|| format!("connecting to {}", urls[0]))?;
    let mut puts = futures::stream::iter(keys.keys.iter().cloned())
        .map(|key| {
            let mut kv = kv.clone();
            let value = keys.value.clone();
            async move { kv.put(PutRequest { key, value, ..Default::default() }).await }
        })
        .buffer_unordered(16);
    while let Some(result) = puts.next().await {
        result.context("put")?;
    }
    Ok(())
}

/// CPU time (user + system) spent in a window, µs.
#[derive(Default)]
struct CpuTotals {
    etcd: Option<f64>,
    proxy: Option<f64>,
    loadgen: Option<f64>,
}

/// CPU time used so far by all etcd members together, the proxy and this process (the load
/// generator), in clock ticks, from `/proc/<pid>/stat`.
struct CpuSample {
    etcd: Option<u64>,
    proxy: Option<u64>,
    loadgen: Option<u64>,
}

impl CpuSample {
    fn take(etcd_pids: &[u32], proxy_pid: Option<u32>) -> CpuSample {
        CpuSample {
            etcd: etcd_pids.iter().map(|&pid| cpu_ticks(&pid.to_string())).sum(),
            proxy: proxy_pid.and_then(|pid| cpu_ticks(&pid.to_string())),
            loadgen: cpu_ticks("self"),
        }
    }

    /// What was spent from `before` until this sample.
    fn since(&self, before: &CpuSample) -> CpuTotals {
        // SAFETY: sysconf has no preconditions.
        let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64 * 1e6 / ticks_per_sec);
        CpuTotals {
            etcd: delta(before.etcd, self.etcd),
            proxy: delta(before.proxy, self.proxy),
            loadgen: delta(before.loadgen, self.loadgen),
        }
    }
}

/// Samples `/proc/<pid>/stat` at `from` and at `to`.
async fn cpu_during(etcd_pids: &[u32], proxy_pid: Option<u32>, from: Instant, to: Instant) -> CpuTotals {
    tokio::time::sleep_until(from.into()).await;
    let before = CpuSample::take(etcd_pids, proxy_pid);
    tokio::time::sleep_until(to.into()).await;
    CpuSample::take(etcd_pids, proxy_pid).since(&before)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
