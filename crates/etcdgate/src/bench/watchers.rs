//! `etcdgate bench watchers`: the watch cache's benchmarks (B4 and B6 of issue 4), on one etcd
//! member with keys under `/apisix/`, against direct etcd, `etcd gateway`, `etcd grpc-proxy`
//! and etcdgate. Each proxy is started fresh for its cell and stopped after it, so that its
//! memory and etcd's watcher gauges belong to that cell alone.
//!
//! - [`fanout`] (B4): thousands of watchers of one prefix, HTTP/JSON and gRPC; put-to-delivery
//!   latency, etcd's watcher count, memory per watcher.
//! - [`behind`] (B6): APISIX-like watchers coming back from a revision etcd has compacted:
//!   how many need a full re-read.
//! - [`watch_conn`]: one client watch over HTTP/JSON or gRPC.
//! - [`observe`]: process memory, `/metrics` gauges, the open-file limit.

mod behind;
mod fanout;
pub(super) mod observe;
mod watch_conn;

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, PutRequest};
use etcdgate_testkit::{Cluster, EtcdVersion, ProxyProcess};

use super::gate::EtcdgateProcess;
use super::report::TargetKind;
use super::{parse_env, parse_version};
use behind::BehindConfig;
use fanout::FanoutConfig;

/// The range every watcher watches, as APISIX does: `/apisix/` as a prefix.
const WATCH_KEY: &[u8] = b"/apisix/";
const WATCH_RANGE_END: &[u8] = b"/apisix0";
/// APISIX-like routes written before anything is measured (what a full read returns).
const PRELOAD_ROUTES: usize = 100;
/// How long etcd may take to drop the watches of the previous cell.
const ETCD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors this process needs besides the watchers' connections.
const SPARE_FILES: u64 = 512;

/// One of the scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// B4.
    FanOut,
    /// B6.
    BehindCompaction,
}

impl Scenario {
    const ALL: [Scenario; 2] = [Scenario::FanOut, Scenario::BehindCompaction];

    fn name(self) -> &'static str {
        match self {
            Scenario::FanOut => "fan-out",
            Scenario::BehindCompaction => "behind-compaction",
        }
    }

    fn parse(s: &str) -> Result<Scenario, String> {
        Scenario::ALL.into_iter().find(|x| x.name() == s).ok_or_else(|| {
            let names: Vec<_> = Scenario::ALL.iter().map(|x| x.name()).collect();
            format!("unknown scenario {s:?}; one of {}", names.join(", "))
        })
    }
}

/// Which watchers fan-out opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// Half HTTP/JSON, half gRPC.
    Both,
    Http,
    Grpc,
}

#[derive(Args, Debug, Clone)]
pub struct WatchersArgs {
    /// Scenarios to run, comma-separated: fan-out (B4), behind-compaction (B6). Default: both.
    #[arg(long, value_delimiter = ',', value_parser = Scenario::parse)]
    pub scenarios: Vec<Scenario>,
    /// Targets, comma-separated (default: all of direct, etcd-gateway, grpc-proxy, etcdgate).
    /// grpc-proxy has no HTTP/JSON gateway: it gets the gRPC half of fan-out only, and no
    /// behind-compaction cell.
    #[arg(long, value_delimiter = ',', value_parser = TargetKind::parse)]
    pub targets: Vec<TargetKind>,
    /// Fan-out: watchers of `/apisix/`.
    #[arg(long, default_value_t = 10_000)]
    pub watchers: usize,
    /// Fan-out: HTTP/JSON watchers (one connection each), gRPC watchers, or half of each.
    #[arg(long, value_enum, default_value_t = Transport::Both)]
    pub transport: Transport,
    /// Fan-out: gRPC channels (HTTP/2 connections) the gRPC watchers share, each watcher on
    /// its own Watch stream.
    #[arg(long, default_value_t = 50)]
    pub grpc_channels: usize,
    /// Fan-out: puts made once every watcher is open.
    #[arg(long, default_value_t = 100)]
    pub puts: usize,
    /// Fan-out: milliseconds between puts (5 puts/s, a busy control plane; at 50 ms the
    /// fan-outs of successive puts overlap on a 2-core machine and queue behind each other).
    #[arg(long, default_value_t = 200)]
    pub put_interval_ms: u64,
    /// Fan-out: bytes per put value (at least 8: the put's number).
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Fan-out: watches being opened at the same time.
    #[arg(long, default_value_t = 200)]
    pub open_concurrency: usize,
    /// Behind-compaction: HTTP/JSON watchers coming back from a compacted revision.
    #[arg(long, default_value_t = 100)]
    pub behind_watchers: usize,
    /// Behind-compaction: writes between their full read and the compaction.
    #[arg(long, default_value_t = 100)]
    pub behind_writes: usize,
    /// etcd release line to run: 3.4 or 3.5.
    #[arg(long, default_value = "3.5", value_parser = parse_version)]
    pub etcd_version: EtcdVersion,
    /// Environment for the etcdgate child process, `KEY=VALUE`, repeatable.
    #[arg(long = "etcdgate-env", value_parser = parse_env)]
    pub etcdgate_env: Vec<(String, String)>,
}

/// A target started for one cell: where it is reached and the process in the path (kept
/// alive until this is dropped).
pub struct RunningTarget {
    pub kind: TargetKind,
    pub url: String,
    pub pid: Option<u32>,
    _proxy: Option<ProxyProcess>,
    _etcdgate: Option<EtcdgateProcess>,
}

impl RunningTarget {
    /// The end of the proxy's log (empty for direct), shown when its cell went wrong.
    fn log_tail(&self) -> String {
        match (&self._proxy, &self._etcdgate) {
            (Some(proxy), _) => proxy.log_tail(20),
            (_, Some(gate)) => gate.log_tail(),
            _ => String::new(),
        }
    }
}

/// Whether a target serves etcd's HTTP/JSON gateway.
fn serves_http(kind: TargetKind) -> bool {
    kind != TargetKind::GrpcProxy
}

pub async fn run(args: WatchersArgs) -> anyhow::Result<()> {
    if args.watchers < 2 || args.grpc_channels == 0 || args.puts == 0 || args.behind_watchers == 0 || args.behind_writes == 0
    {
        bail!("--watchers must be at least 2; --grpc-channels, --puts, --behind-watchers and --behind-writes at least 1");
    }
    let scenarios = if args.scenarios.is_empty() { Scenario::ALL.to_vec() } else { args.scenarios.clone() };
    let targets = if args.targets.is_empty() { TargetKind::ALL.to_vec() } else { args.targets.clone() };
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    if cfg!(debug_assertions) {
        eprintln!("bench: WARNING: this is a debug build; measure with `cargo run --release -p etcdgate -- bench watchers`");
    }
    // One connection per HTTP watcher here and in the target; `etcd gateway` holds six
    // descriptors per connection (both sockets and a splice pipe per direction).
    let (http_watchers, grpc_watchers) = match args.transport {
        Transport::Both => (args.watchers / 2, args.watchers - args.watchers / 2),
        Transport::Http => (args.watchers, 0),
        Transport::Grpc => (0, args.watchers),
    };
    let connections = (http_watchers + args.grpc_channels) as u64;
    let open_files = observe::raise_open_files_limit(6 * connections + SPARE_FILES).context("raising RLIMIT_NOFILE")?;
    if scenarios.contains(&Scenario::FanOut) && open_files < connections + SPARE_FILES {
        bail!(
            "{} watchers need about {} open files here, the hard limit is {open_files} (raise it: ulimit -Hn)",
            args.watchers,
            connections + SPARE_FILES
        );
    }
    // `etcd gateway` exits when it runs out of descriptors: left out of the default fan-out
    // targets when the limit is too low for it, run anyway when named.
    let gateway_fits = open_files >= 6 * connections + SPARE_FILES;

    let load_before = load_average();
    let version = args.etcd_version;
    eprintln!("bench: starting one {version} member ...");
    let cluster = Cluster::builder(version).members(1).start().await?;
    let etcd_url = cluster.client_url(0);
    let etcd_pid = cluster.pid(0);
    preload_routes(&etcd_url).await.context("preloading /apisix/routes")?;

    let mut fanout_cells = Vec::new();
    if scenarios.contains(&Scenario::FanOut) {
        let config = FanoutConfig {
            http_watchers,
            grpc_watchers,
            grpc_channels: args.grpc_channels,
            puts: args.puts,
            put_interval: Duration::from_millis(args.put_interval_ms),
            value_size: args.value_size,
            open_concurrency: args.open_concurrency,
        };
        for &kind in &targets {
            if kind == TargetKind::EtcdGateway && !gateway_fits {
                let why = format!(
                    "etcd gateway needs about {} open files for {} watchers, the limit here is {open_files}",
                    6 * connections + SPARE_FILES,
                    args.watchers
                );
                if args.targets.is_empty() {
                    eprintln!("bench: fan-out via etcd-gateway left out: {why}");
                    fanout_cells.push(Err((kind, format!("not run: {why}"))));
                    continue;
                }
                eprintln!("bench: WARNING: {why}");
            }
            if !serves_http(kind) && grpc_watchers == 0 {
                fanout_cells.push(Err((kind, "n/a: no HTTP/JSON gateway".to_string())));
                continue;
            }
            eprintln!("bench: fan-out via {} ...", kind.name());
            wait_etcd_idle(&etcd_url).await;
            let cell = match start_target(kind, &etcd_url, &args).await {
                Ok(target) => {
                    let cell = fanout::run(&target, &etcd_url, etcd_pid, &config).await;
                    if cell.as_ref().map_or(true, |c| c.first_error.is_some()) {
                        eprintln!("bench: --- end of the {} log ---\n{}", kind.name(), target.log_tail());
                    }
                    cell
                }
                Err(e) => Err(e),
            };
            fanout_cells.push(cell.map_err(|e| (kind, format!("failed: {e:#}"))));
        }
    }
    let mut behind_cells = Vec::new();
    if scenarios.contains(&Scenario::BehindCompaction) {
        let config = BehindConfig { watchers: args.behind_watchers, writes: args.behind_writes };
        for &kind in targets.iter().filter(|&&kind| serves_http(kind)) {
            eprintln!("bench: behind-compaction via {} ...", kind.name());
            wait_etcd_idle(&etcd_url).await;
            let cell = match start_target(kind, &etcd_url, &args).await {
                Ok(target) => {
                    let cell = behind::run(&target, &etcd_url, &config).await;
                    if cell.as_ref().map_or(true, |c| c.first_error.is_some()) {
                        eprintln!("bench: --- end of the {} log ---\n{}", kind.name(), target.log_tail());
                    }
                    cell
                }
                Err(e) => Err(e),
            };
            behind_cells.push(cell.map_err(|e| (kind, format!("failed: {e:#}"))));
        }
    }

    println!(
        "etcdgate bench watchers: {version}, 1 member, {build} build, {} CPUs shared by etcd, the proxy and the load \
         generator; load average {load_before} before, {} after\n",
        num_cpus(),
        load_average()
    );
    if scenarios.contains(&Scenario::FanOut) {
        let mut kinds = Vec::new();
        if http_watchers > 0 {
            kinds.push(format!("{http_watchers} HTTP/JSON, one connection each"));
        }
        if grpc_watchers > 0 {
            kinds.push(format!("{grpc_watchers} gRPC, one stream each over {} channels", args.grpc_channels.min(grpc_watchers)));
        }
        println!(
            "### B4: fan-out, {} watchers of /apisix/ ({}), {} puts {} ms apart\n",
            args.watchers,
            kinds.join("; "),
            args.puts,
            args.put_interval_ms
        );
        print!("{}", fanout::markdown(&fanout_cells));
        println!();
    }
    if scenarios.contains(&Scenario::BehindCompaction) {
        println!(
            "### B6: {} HTTP/JSON watchers from a compacted revision ({} writes after their full read, then a compaction)\n",
            args.behind_watchers, args.behind_writes
        );
        print!("{}", behind::markdown(&behind_cells));
    }
    drop(cluster);
    Ok(())
}

/// Starts (or, for direct, just names) the target of one cell.
async fn start_target(kind: TargetKind, etcd_url: &str, args: &WatchersArgs) -> anyhow::Result<RunningTarget> {
    let endpoints = [etcd_url.to_string()];
    let version = args.etcd_version;
    let target = |url: String, pid, proxy, etcdgate| RunningTarget { kind, url, pid, _proxy: proxy, _etcdgate: etcdgate };
    Ok(match kind {
        TargetKind::Direct => target(etcd_url.to_string(), None, None, None),
        TargetKind::EtcdGateway | TargetKind::GrpcProxy => {
            let proxy = if kind == TargetKind::GrpcProxy {
                ProxyProcess::grpc_proxy(version, &endpoints).context("starting etcd grpc-proxy")?
            } else {
                ProxyProcess::etcd_gateway(version, &endpoints).context("starting etcd gateway")?
            };
            target(proxy.url(), proxy.pid(), Some(proxy), None)
        }
        // Here etcdgate caches what is watched either way.
        TargetKind::Etcdgate | TargetKind::EtcdgateCached => {
            let gate = EtcdgateProcess::start(&endpoints, &[], &args.etcdgate_env, WATCH_KEY).await.context("starting etcdgate")?;
            gate.wait_cache_loaded().await?;
            target(gate.url(), gate.pid(), None, Some(gate))
        }
    })
}

/// Waits until etcd has no watcher left from an earlier cell (so that each cell's gauges
/// are its own); says so if it does not come to that.
async fn wait_etcd_idle(etcd_url: &str) {
    let deadline = tokio::time::Instant::now() + ETCD_IDLE_TIMEOUT;
    loop {
        let page = observe::metrics_page(etcd_url).await.unwrap_or_default();
        let watchers = observe::metric(&page, "etcd_debugging_mvcc_watcher_total");
        if watchers == Some(0.0) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("bench: WARNING: etcd still has {watchers:?} watchers from the previous cell");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `/apisix/routes/0000..` of 1 KiB each.
async fn preload_routes(etcd_url: &str) -> anyhow::Result<()> {
    let mut kv = KvClient::connect(etcd_url.to_string()).await?;
    for i in 0..PRELOAD_ROUTES {
        let request =
            PutRequest { key: format!("/apisix/routes/{i:04}").into_bytes(), value: vec![b'r'; 1024], ..Default::default() };
        kv.put(request).await?;
    }
    Ok(())
}

/// The 1-minute load average (other work on the machine shows there).
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_string()
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `host:port` of `http://host:port`.
fn host_port(url: &str) -> &str {
    url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/')
}

/// µs as ms with one decimal.
pub(super) fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}
