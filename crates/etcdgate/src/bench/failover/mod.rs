//! `etcdgate bench failover`: what one etcd member's failure does to clients, direct to etcd
//! (every member listed, as APISIX lists them), through etcd's `etcd gateway`, and through
//! etcdgate, in one run.
//!
//! Every (fault, target) cell gets a fresh cluster, so that no cell inherits another's
//! elections, restarted members or blacklists. A cell: start the cluster and preload it;
//! start what is in front of it; start the [`workload`]'s watchers, choose the victim
//! follower where they are ([`fault`]; this may move leadership, which is why readers and the
//! writer start only afterwards); run the readers and the writer until `--before-secs`;
//! inject the fault for `--fault-secs`; recover; run `--after-secs` more; stop the readers
//! and the writer, let the watchers catch up (bounded), stop them. Meanwhile [`traffic`] notes when the victim was last sent anything.
//! Afterwards [`analysis`] reads the cell's log, [`report`] prints the summary table (and
//! JSON), and [`plot`] draws every cell's throughput, watch deliveries and errors over time
//! into one PNG.

mod analysis;
mod fault;
mod metrics;
mod plot;
mod report;
mod traffic;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, PutRequest};
use etcdgate_testkit::{Cluster, EtcdVersion, ProxyProcess};
use serde_json::json;

use super::gate::EtcdgateProcess;
use analysis::Phases;
use fault::Fault;
use report::{Cell, Measured};
use traffic::{Sampler, Source};
use workload::{Recorder, Workload, WorkloadConfig};

/// When, after the watchers started, the victim is chosen (watches are open by then).
const VICTIM_CHOICE_AT: Duration = Duration::from_secs(1);
/// Longest wait at the end for every watcher to receive the last write.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A cache prefix that holds none of the workload's keys, for `etcdgate-uncached`.
const UNUSED_CACHE_PREFIX: &str = "/etcdgate-failbench-uncached";

#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Faults to inject, comma-separated: kill (SIGKILL, then restart), hang (SIGSTOP, then
    /// SIGCONT), partition (iptables between the victim and its peers, then healed; root).
    #[arg(long, value_delimiter = ',', value_parser = Fault::parse, default_value = "kill,hang,partition")]
    pub faults: Vec<Fault>,
    /// Targets, comma-separated: direct, etcd-gateway, etcdgate, etcdgate-uncached (etcdgate
    /// with the workload's keys outside its watch cache: every call forwarded).
    #[arg(long, value_delimiter = ',', value_parser = Target::parse, default_value = "direct,etcd-gateway,etcdgate")]
    pub targets: Vec<Target>,
    /// Seconds of workload before the fault.
    #[arg(long, default_value_t = 10)]
    pub before_secs: u64,
    /// Seconds the fault lasts.
    #[arg(long, default_value_t = 15)]
    pub fault_secs: u64,
    /// Seconds of workload after recovery began.
    #[arg(long, default_value_t = 5)]
    pub after_secs: u64,
    /// etcd cluster size (at least 3: the cluster must keep a quorum without the victim).
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// etcd release line to run: 3.4 or 3.5.
    #[arg(long, default_value = "3.5", value_parser = super::parse_version)]
    pub etcd_version: EtcdVersion,
    /// HTTP/JSON readers (`/v3/kv/range` of a 10-key prefix, linearizable).
    #[arg(long, default_value_t = 4)]
    pub http_readers: usize,
    /// gRPC readers (`KV.Range` of one key, linearizable).
    #[arg(long, default_value_t = 4)]
    pub grpc_readers: usize,
    /// HTTP/JSON watchers of `/apisix/` (APISIX's long watch).
    #[arg(long, default_value_t = 6)]
    pub watchers: usize,
    /// Milliseconds between two reads of one reader.
    #[arg(long, default_value_t = 10)]
    pub read_interval_ms: u64,
    /// Milliseconds between two writes of each writer.
    #[arg(long, default_value_t = 20)]
    pub write_interval_ms: u64,
    /// Milliseconds a read, write or watch open may take before the client gives up.
    #[arg(long, default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Seconds a client skips a member after a call to it failed (`direct` only; APISIX's
    /// etcd `health_check_timeout`).
    #[arg(long, default_value_t = 10)]
    pub direct_fail_timeout_secs: u64,
    /// Width of a timeline bucket, milliseconds.
    #[arg(long, default_value_t = 250)]
    pub bucket_ms: u64,
    /// Environment for the etcdgate child process, `KEY=VALUE`, repeatable.
    #[arg(long = "etcdgate-env", value_parser = super::parse_env)]
    pub etcdgate_env: Vec<(String, String)>,
    /// Where to write the PNG plot.
    #[arg(long, default_value = "bench/failover.png")]
    pub plot: PathBuf,
    /// Also write the results (with timelines) as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// What the workload talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every member's client URL; clients balance over them.
    Direct,
    /// `etcd gateway start` over every member.
    EtcdGateway,
    /// etcdgate over every member, with its default watch cache (`/apisix`).
    Etcdgate,
    /// etcdgate whose cache holds none of the workload's keys.
    EtcdgateUncached,
}

impl Target {
    const ALL: [Target; 4] = [Target::Direct, Target::EtcdGateway, Target::Etcdgate, Target::EtcdgateUncached];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::EtcdGateway => "etcd-gateway",
            Target::Etcdgate => "etcdgate",
            Target::EtcdgateUncached => "etcdgate-uncached",
        }
    }

    fn parse(s: &str) -> Result<Target, String> {
        Target::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<_> = Target::ALL.iter().map(|t| t.name()).collect();
            format!("unknown target {s:?}; one of {}", names.join(", "))
        })
    }
}

/// The process in front of the cluster, if any; stopped on drop.
enum Front {
    Direct,
    EtcdGateway(ProxyProcess),
    Etcdgate(EtcdgateProcess),
}

impl Front {
    /// Must run on the thread that runs the bench (see [`EtcdgateProcess::start`]).
    async fn start(target: Target, cluster: &Cluster, args: &FailoverArgs) -> anyhow::Result<Front> {
        let members = cluster.client_urls();
        let mut env = args.etcdgate_env.clone();
        Ok(match target {
            Target::Direct => Front::Direct,
            Target::EtcdGateway => Front::EtcdGateway(ProxyProcess::etcd_gateway(cluster.version(), &members).context("starting etcd gateway")?),
            Target::Etcdgate | Target::EtcdgateUncached => {
                if target == Target::EtcdgateUncached {
                    env.push(("ETCDGATE_CACHE_PREFIX".into(), UNUSED_CACHE_PREFIX.into()));
                }
                let probe_key = workload::route_key(0).into_bytes();
                Front::Etcdgate(EtcdgateProcess::start(&members, &[], &env, &probe_key).await.context("starting etcdgate")?)
            }
        })
    }

    /// The URLs the workload's clients use.
    fn urls(&self, members: &[String]) -> Vec<String> {
        match self {
            Front::Direct => members.to_vec(),
            Front::EtcdGateway(proxy) => vec![proxy.url()],
            Front::Etcdgate(gate) => vec![gate.url()],
        }
    }

    /// Where the victim's traffic is read from; `None`: from the workload's own log.
    fn traffic_source(&self, victim_url: &str) -> anyhow::Result<Option<Source>> {
        Ok(match self {
            Front::Direct => None,
            Front::EtcdGateway(_) => {
                let port = victim_url.rsplit(':').next().and_then(|p| p.parse().ok()).with_context(|| format!("no port in {victim_url}"))?;
                Some(Source::Sockets { port })
            }
            Front::Etcdgate(gate) => Some(Source::EtcdgateCounter { gate_url: gate.url(), member_url: victim_url.to_string() }),
        })
    }
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    if args.members < 3 {
        bail!("--members must be at least 3 (the cluster keeps a quorum without the victim)");
    }
    if args.before_secs < VICTIM_CHOICE_AT.as_secs() + 3 || args.fault_secs == 0 || args.bucket_ms < 10 {
        bail!("--before-secs must be at least {}, --fault-secs at least 1, --bucket-ms at least 10", VICTIM_CHOICE_AT.as_secs() + 3);
    }
    if args.read_interval_ms == 0 || args.write_interval_ms == 0 || args.request_timeout_ms == 0 {
        bail!("--read-interval-ms, --write-interval-ms and --request-timeout-ms must be at least 1");
    }
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    if cfg!(debug_assertions) {
        eprintln!("bench failover: WARNING: this is a debug build; measure with `cargo run --release -p etcdgate -- bench failover`");
    }
    let cell_secs = args.before_secs + args.fault_secs + args.after_secs;
    let cells_total = args.faults.len() * args.targets.len();
    eprintln!("bench failover: {cells_total} cells of {cell_secs} s of workload each, plus setup (~{} s)", cells_total as u64 * (cell_secs + 6));

    let mut cells = Vec::new();
    for &fault in &args.faults {
        for &target in &args.targets {
            eprintln!("bench failover: {} / {} ...", fault.name(), target.name());
            let outcome = run_cell(fault, target, &args).await.map_err(|e| format!("{e:#}"));
            match &outcome {
                Ok(m) => eprintln!(
                    "bench failover: {} / {}: victim {}, {} errors, longest watch stall {:.1} s",
                    fault.name(),
                    target.name(),
                    m.victim_name,
                    m.analysis.total_errors(),
                    m.analysis.longest_stall.as_secs_f64()
                ),
                Err(error) => eprintln!("bench failover: {} / {} failed: {error}", fault.name(), target.name()),
            }
            cells.push(Cell { fault, target, outcome });
        }
    }

    let heading = format!(
        "etcdgate bench failover: {}, {} members; per cell {} s before the fault, {} s of fault, {} s after recovery began; \
         {} HTTP + {} gRPC readers every {} ms, 1 writer every {} ms (and 1 to the leader), {} HTTP watchers; client timeout {} ms; \
         direct clients skip a failed member for {} s; {build} build",
        args.etcd_version,
        args.members,
        args.before_secs,
        args.fault_secs,
        args.after_secs,
        args.http_readers,
        args.grpc_readers,
        args.read_interval_ms,
        args.write_interval_ms,
        args.watchers,
        args.request_timeout_ms,
        args.direct_fail_timeout_secs,
    );
    println!("{heading}\n");
    print!("{}", report::markdown(&cells));

    if let Some(path) = &args.json_out {
        let config = json!({
            "etcd_version": args.etcd_version.label(),
            "members": args.members,
            "before_secs": args.before_secs,
            "fault_secs": args.fault_secs,
            "after_secs": args.after_secs,
            "http_readers": args.http_readers,
            "grpc_readers": args.grpc_readers,
            "watchers": args.watchers,
            "read_interval_ms": args.read_interval_ms,
            "write_interval_ms": args.write_interval_ms,
            "request_timeout_ms": args.request_timeout_ms,
            "direct_fail_timeout_secs": args.direct_fail_timeout_secs,
            "bucket_ms": args.bucket_ms,
            "build": build,
            "etcdgate_env": args.etcdgate_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&report::json(config, &cells))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench failover: results written to {}", path.display());
    }

    if let Some(parent) = args.plot.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let panels: Vec<Option<plot::Panel<'_>>> = cells
        .iter()
        .map(|cell| {
            let m = cell.outcome.as_ref().ok()?;
            Some(plot::Panel {
                title: format!(
                    "{}: {}, victim {}: {} errors, stall {:.1} s",
                    cell.fault.name(),
                    cell.target.name(),
                    m.victim_name,
                    m.analysis.total_errors(),
                    m.analysis.longest_stall.as_secs_f64()
                ),
                timeline: &m.analysis.timeline,
                fault_at: m.phases.fault_at,
                recover_at: m.phases.recover_at,
            })
        })
        .collect();
    let faults: Vec<String> = args.faults.iter().map(|f| format!("{}: {}", f.name(), f.how())).collect();
    let title = [
        format!(
            "etcdgate bench failover: {}, {} members, one follower failed per panel (shaded: the fault; {})",
            args.etcd_version,
            args.members,
            faults.join("; ")
        ),
        "blue: successful reads + writes per second;  green: watch events delivered per second (all watchers; catch-up bursts clipped);  red: errors per second (right axis)".to_string(),
    ];
    let with_text = plot::draw(&args.plot, &title, args.targets.len(), &panels)?;
    eprintln!(
        "bench failover: plot written to {}{}",
        args.plot.display(),
        if with_text { "" } else { " WITHOUT TEXT: no font found (install fonts-dejavu-core or set ETCDGATE_FONT)" }
    );
    Ok(())
}

/// One cell, on a cluster of its own; everything it started stops when it returns.
async fn run_cell(fault: Fault, target: Target, args: &FailoverArgs) -> anyhow::Result<Measured> {
    let mut cluster = Cluster::builder(args.etcd_version).members(args.members).start().await.context("starting the cluster")?;
    let members = cluster.client_urls();
    let last_preloaded = preload(&members[0]).await.context("preloading keys")?;
    let front = Front::start(target, &cluster, args).await?;
    let config = WorkloadConfig {
        http_readers: args.http_readers,
        grpc_readers: args.grpc_readers,
        watchers: args.watchers,
        read_interval: Duration::from_millis(args.read_interval_ms),
        write_interval: Duration::from_millis(args.write_interval_ms),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        fail_timeout: Duration::from_secs(args.direct_fail_timeout_secs),
    };

    let origin = Instant::now();
    let at = |offset: Duration| tokio::time::sleep_until(tokio::time::Instant::from_std(origin + offset));
    let recorder = Arc::new(Recorder::new(origin, args.watchers));
    let mut workload = Workload::start_watchers(config, &front.urls(&members), &recorder, last_preloaded + 1);

    at(VICTIM_CHOICE_AT).await;
    let victim = fault::choose_victim(&cluster).await.context("choosing the victim")?;
    let victim_url = cluster.client_url(victim.index);
    let sampler = front.traffic_source(&victim_url)?.map(|source| Sampler::start(source, origin));
    let leader = cluster.wait_leader(Duration::from_secs(5)).await?;
    workload.start_load(&cluster.client_url(leader))?;
    let load_start = origin.elapsed();

    at(Duration::from_secs(args.before_secs)).await;
    let fault_at = origin.elapsed();
    fault.inject(&mut cluster, victim.index).with_context(|| format!("injecting {}", fault.name()))?;
    at(fault_at + Duration::from_secs(args.fault_secs)).await;
    let recover_at = origin.elapsed();
    fault.recover(&mut cluster, victim.index).await.with_context(|| format!("recovering from {}", fault.name()))?;
    let recovery_took = origin.elapsed() - recover_at;
    at(recover_at + Duration::from_secs(args.after_secs)).await;

    workload.stop_load().await;
    let load_end = origin.elapsed();
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while !recorder.watchers_caught_up() && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    workload.stop_watchers().await;
    let end = origin.elapsed();

    let log = recorder.snapshot();
    let seen = match sampler {
        Some(sampler) => sampler.finish().await,
        None => Ok(log.calls.iter().filter(|c| c.endpoint == victim.index).map(|c| c.started).collect()),
    };
    let victim_traffic = seen.map(|seen| traffic::last_within(&seen, fault_at, recover_at));
    let phases = Phases { load_start, fault_at, recover_at, load_end, end };
    let analysis = analysis::analyse(&log, phases, Duration::from_millis(args.bucket_ms), args.watchers);
    let victim_name = cluster.member_name(victim.index).to_string();
    drop(front);
    drop(cluster);
    Ok(Measured { victim, victim_name, phases, recovery_took, analysis, victim_traffic })
}

/// Writes the keys the readers read and the writer's key; returns the last revision.
async fn preload(url: &str) -> anyhow::Result<i64> {
    let mut kv = KvClient::connect(url.to_string()).await.with_context(|| format!("connecting to {url}"))?;
    let value = |key: &str| {
        let mut value = format!("{{\"id\":\"{key}\",\"padding\":\"");
        value.extend(std::iter::repeat_n('x', workload::VALUE_BYTES.saturating_sub(value.len() + 2)));
        value.push_str("\"}");
        value.into_bytes()
    };
    let keys = (0..workload::UPSTREAM_KEYS)
        .map(workload::upstream_key)
        .chain((0..workload::ROUTE_KEYS).map(workload::route_key))
        .chain([workload::WRITER_KEY.to_string(), workload::REFERENCE_WRITER_KEY.to_string()]);
    let mut revision = 0;
    for key in keys {
        let request = PutRequest { value: value(&key), key: key.into_bytes(), ..Default::default() };
        let answer = kv.put(request).await?.into_inner();
        revision = answer.header.map_or(revision, |h| h.revision);
    }
    Ok(revision)
}
