//! `etcdgate bench logins`: an Authenticate storm. Every APISIX instance (each nginx worker) logs in with the same user
//! and password at start, every 3 minutes after (lua-resty-etcd renews on a timer) and whenever every token became invalid
//! (a restart of etcd 3.5.1 loses simple tokens; any auth change makes JWT tokens old), and etcd spends a bcrypt hash on
//! each login.
//!
//! This module owns that run: one cluster with auth on (user `app` reading `/apisix`, `root`), the targets (direct, etcd
//! gateway, grpc-proxy, etcdgate as a child process with `--user root`), and per transport and target `rounds` rounds:
//! `clients` connections opened first, then all their Authenticates released at once. Per round: the time until the
//! last client had its token, per-call latency, distinct tokens handed out and whether each works directly on etcd, the
//! Authenticates etcd served (raft proposals committed: each Authenticate is one), etcd's CPU, and the latency of a
//! linearizable read made directly on etcd every 10 ms meanwhile (what the storm does to other clients).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use etcdgate_proto::authpb::{permission::Type as PermissionType, Permission};
use etcdgate_proto::etcdserverpb::{auth_client::AuthClient, kv_client::KvClient, AuthenticateRequest, PutRequest, RangeRequest};
use etcdgate_testkit::workload::error_chain;
use etcdgate_testkit::{Cluster, EtcdVersion};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use super::gate::EtcdgateProcess;
use super::report::TargetKind;
use super::watchers::{ms, observe};
use super::{add_users_and_enable_auth, login, parse_env, parse_version, password, start_etcd_proxies, CpuSample, CpuTotals, Target};

/// The user every client logs in as (APISIX's `deployment.etcd.user`), allowed to read `/apisix`.
const APP_USER: &str = "app";
/// The key the probe reads (linearizable, directly on etcd) during each round.
const PROBE_KEY: &[u8] = b"/apisix/routes/1";
/// What each token is checked with afterwards: a serializable Range of `/apisix/` as a prefix.
const CHECK_KEY: &[u8] = b"/apisix/";
const CHECK_RANGE_END: &[u8] = b"/apisix0";
/// The probe's period.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Pause before each round, so that the previous one (or a proxy's start) has settled.
const ROUND_PAUSE: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An Authenticate or probe read slower than this counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// etcd's raft proposals committed (the commit index): each Authenticate is one proposal.
const PROPOSALS_METRIC: &str = "etcd_server_proposals_committed_total";
/// Histogram bounds, µs.
const HIST_MAX_US: u64 = 600_000_000;

/// How the clients log in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// `POST /v3/auth/authenticate` with `{"name":..,"password":..}`, each client on an HTTP/1.1 connection of its own
    /// (as lua-resty-etcd).
    Http,
    /// `Auth.Authenticate`, each client on a gRPC channel (HTTP/2 connection) of its own.
    Grpc,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Grpc => "grpc",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct LoginsArgs {
    /// Clients per round, each on a connection of its own opened before the round, all logging in at once.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Rounds per transport and target.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// etcd cluster size.
    #[arg(long, default_value_t = 1)]
    pub members: usize,
    /// etcd release line to run: 3.4 or 3.5.
    #[arg(long, default_value = "3.5", value_parser = parse_version)]
    pub etcd_version: EtcdVersion,
    /// Targets, comma-separated: direct, etcd-gateway, grpc-proxy (gRPC only), etcdgate.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = TargetKind::parse,
        default_value = "direct,etcd-gateway,grpc-proxy,etcdgate"
    )]
    pub targets: Vec<TargetKind>,
    /// Transports, comma-separated: http, grpc.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "http,grpc")]
    pub transports: Vec<Transport>,
    /// Environment for the etcdgate child process, `KEY=VALUE`, repeatable.
    #[arg(long = "etcdgate-env", value_parser = parse_env)]
    pub etcdgate_env: Vec<(String, String)>,
    /// Also write the results (every round) as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// What one round measured.
struct Round {
    /// Clients that got a token.
    ok: usize,
    /// Clients that could not connect, failed or timed out.
    errors: usize,
    first_error: Option<String>,
    /// From the release until the last client had its token, µs.
    last_token_us: Option<u64>,
    /// Latency of each successful Authenticate, µs.
    calls: Histogram<u64>,
    distinct_tokens: usize,
    /// Distinct tokens with which a serializable Range directly on etcd succeeded.
    valid_tokens: usize,
    /// Raft proposals etcd committed during the round (the largest delta over members).
    etcd_authenticates: Option<u64>,
    /// CPU from the release until the last answer.
    cpu: CpuTotals,
    /// Latency of the probe's reads during the round, µs.
    probe: Histogram<u64>,
    probe_errors: u64,
}

/// One (transport, target) row; `rounds` is empty when the target does not serve the transport.
struct Cell {
    transport: Transport,
    target: TargetKind,
    rounds: Vec<Round>,
}

/// The cluster's side of a run: members, their pids, one KV client per member (probe, token checks).
struct Etcd {
    urls: Vec<String>,
    pids: Vec<u32>,
    kvs: Vec<KvClient<Channel>>,
}

/// A client's connection, opened before the round.
enum Conn {
    Http { sender: http1::SendRequest<Full<Bytes>>, authority: String },
    Grpc(AuthClient<Channel>),
}

pub async fn run(args: LoginsArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.rounds == 0 || args.members == 0 {
        bail!("--clients, --rounds and --members must be at least 1");
    }
    if args.targets.contains(&TargetKind::EtcdgateCached) {
        bail!("etcdgate-cached is not a target of bench logins (etcdgate's cache plays no part in logins)");
    }
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    if cfg!(debug_assertions) {
        eprintln!("bench: WARNING: this is a debug build; measure with `cargo run --release -p etcdgate -- bench logins`");
    }
    let version = args.etcd_version;
    eprintln!("bench: starting {} member(s) of {version} ...", args.members);
    let cluster = Cluster::builder(version).members(args.members).start().await?;
    let urls = cluster.client_urls();
    let mut kv = KvClient::connect(urls[0].clone()).await.with_context(|| format!("connecting to {}", urls[0]))?;
    kv.put(PutRequest { key: PROBE_KEY.to_vec(), value: b"{}".to_vec(), ..Default::default() }).await.context("preload")?;

    let wanted = |kind: TargetKind| args.targets.contains(&kind);
    let (etcd_gateway, grpc_proxy) = start_etcd_proxies(version, &urls, wanted)?;
    // After etcd's proxies (their readiness checks carry no credentials), before etcdgate (which logs in).
    let read_apisix =
        Permission { perm_type: PermissionType::Read as i32, key: b"/apisix".to_vec(), range_end: b"/apisiy".to_vec() };
    add_users_and_enable_auth(&urls[0], &[("root", None), (APP_USER, Some(read_apisix))]).await.context("turning auth on")?;
    let etcdgate = if wanted(TargetKind::Etcdgate) {
        let user = format!("root:{}", password("root"));
        Some(
            EtcdgateProcess::start(&urls, &["--user", &user], &args.etcdgate_env, PROBE_KEY)
                .await
                .context("starting etcdgate")?,
        )
    } else {
        None
    };

    let mut targets = Vec::new();
    for kind in &args.targets {
        let (urls, proxy_pid) = match kind {
            TargetKind::Direct => (urls.clone(), None),
            TargetKind::EtcdGateway => etcd_gateway.as_ref().map(|p| (vec![p.url()], p.pid())).expect("started when wanted"),
            TargetKind::GrpcProxy => grpc_proxy.as_ref().map(|p| (vec![p.url()], p.pid())).expect("started when wanted"),
            TargetKind::Etcdgate => etcdgate.as_ref().map(|p| (vec![p.url()], p.pid())).expect("started when wanted"),
            TargetKind::EtcdgateCached => unreachable!("refused above"),
        };
        targets.push(Target { kind: *kind, urls, proxy_pid });
    }
    let mut kvs = Vec::new();
    for url in &urls {
        kvs.push(KvClient::connect(url.clone()).await.with_context(|| format!("connecting to {url}"))?);
    }
    let etcd = Etcd { urls, pids: (0..cluster.member_count()).filter_map(|i| cluster.pid(i)).collect(), kvs };

    let mut cells = Vec::new();
    for &transport in &args.transports {
        for target in &targets {
            let mut cell = Cell { transport, target: target.kind, rounds: Vec::new() };
            if transport == Transport::Http && target.kind == TargetKind::GrpcProxy {
                cells.push(cell);
                continue;
            }
            for r in 0..args.rounds {
                let round = round(transport, target, args.clients, &etcd).await?;
                eprintln!(
                    "bench: logins {:<4} via {:<12} round {}: {}/{} tokens, the last after {} ms, {} distinct ({} valid), \
                     etcd served {} Authenticates, etcd CPU {} ms, probe max {} ms",
                    transport.name(),
                    target.kind.name(),
                    r + 1,
                    round.ok,
                    args.clients,
                    round.last_token_us.map_or("-".into(), ms),
                    round.distinct_tokens,
                    round.valid_tokens,
                    round.etcd_authenticates.map_or("?".into(), |n| n.to_string()),
                    micros(round.cpu.etcd).map_or("?".into(), ms),
                    if round.probe.is_empty() { "-".into() } else { ms(round.probe.max()) },
                );
                cell.rounds.push(round);
            }
            cells.push(cell);
        }
    }

    println!(
        "etcdgate bench logins: {version}, {} member(s), {} clients logging in at once as `{APP_USER}`, {} rounds per row, \
         {build} build\n",
        args.members, args.clients, args.rounds
    );
    print!("{}", markdown(&cells));
    if let Some(path) = &args.json_out {
        let config = json!({
            "etcd_version": version.label(),
            "members": args.members,
            "clients": args.clients,
            "rounds": args.rounds,
            "build": build,
            "etcdgate_env": args.etcdgate_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        });
        let cells: Vec<Value> = cells.iter().map(cell_json).collect();
        let text = serde_json::to_string_pretty(&json!({ "config": config, "cells": cells }))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: results written to {}", path.display());
    }
    drop(etcdgate);
    drop(grpc_proxy);
    drop(etcd_gateway);
    drop(cluster);
    Ok(())
}

/// One round: a probe token, a pause, every client's connection, then all Authenticates released at once while the probe
/// reads; afterwards every distinct token is checked on etcd.
async fn round(transport: Transport, target: &Target, clients: usize, etcd: &Etcd) -> anyhow::Result<Round> {
    let probe_token: MetadataValue<_> =
        login(&etcd.urls[0], APP_USER).await.context("probe login")?.parse().context("probe token")?;
    tokio::time::sleep(ROUND_PAUSE).await;
    let body = Bytes::from(json!({ "name": APP_USER, "password": password(APP_USER) }).to_string());
    let opened = futures::future::join_all((0..clients).map(|i| connect(transport, &target.urls[i % target.urls.len()]))).await;

    let (release, released) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut errors = Vec::new();
    for conn in opened {
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let (mut released, body) = (released.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let _ = released.wait_for(|&go| go).await;
            let started = Instant::now();
            let token = tokio::time::timeout(CALL_TIMEOUT, authenticate(&mut conn, &body))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")));
            (started, Instant::now(), token, conn)
        }));
    }
    let proposals_before = proposals(&etcd.urls).await;
    let cpu_before = CpuSample::take(&etcd.pids, target.proxy_pid);
    let (stop_probe, stopped) = oneshot::channel();
    let probe = tokio::spawn(probe(etcd.kvs[0].clone(), probe_token, stopped));
    let start = Instant::now();
    let _ = release.send(true);

    let mut calls = Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds");
    let mut tokens = HashSet::new();
    let mut last = None;
    let mut conns = Vec::new();
    for task in tasks {
        match task.await {
            Ok((started, ended, Ok(token), conn)) => {
                calls.saturating_record(((ended - started).as_micros() as u64).max(1));
                last = last.max(Some(ended));
                tokens.insert(token);
                conns.push(conn);
            }
            Ok((_, _, Err(e), conn)) => {
                errors.push(e);
                conns.push(conn);
            }
            Err(e) => errors.push(format!("client task: {e}")),
        }
    }
    let cpu = CpuSample::take(&etcd.pids, target.proxy_pid).since(&cpu_before);
    let proposals_after = proposals(&etcd.urls).await;
    let _ = stop_probe.send(());
    let (probe, probe_errors, probe_error) = probe.await.context("probe task")?;
    drop(conns);

    let (valid_tokens, check_error) = check_tokens(&etcd.kvs, &tokens).await;
    let etcd_authenticates = proposals_before
        .iter()
        .zip(&proposals_after)
        .map(|(before, after)| Some(after.as_ref()?.saturating_sub(*before.as_ref()?)))
        .collect::<Option<Vec<u64>>>()
        .and_then(|deltas| deltas.into_iter().max());
    let first_error = errors.first().cloned().or(probe_error.map(|e| format!("probe: {e}"))).or(check_error);
    Ok(Round {
        ok: calls.len() as usize,
        errors: errors.len(),
        first_error,
        last_token_us: last.map(|last| (last - start).as_micros() as u64),
        calls,
        distinct_tokens: tokens.len(),
        valid_tokens,
        etcd_authenticates,
        cpu,
        probe,
        probe_errors,
    })
}

/// Opens one client's connection to `url`.
async fn connect(transport: Transport, url: &str) -> Result<Conn, String> {
    let open = async {
        match transport {
            Transport::Http => {
                let uri: http::Uri = url.parse().map_err(|e| format!("url {url}: {e}"))?;
                let authority = uri.authority().ok_or_else(|| format!("url {url} without host:port"))?.to_string();
                let stream = TcpStream::connect(&authority).await.map_err(|e| format!("connect {authority}: {e}"))?;
                stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| error_chain(&e))?;
                // Ends when `sender` is dropped.
                tokio::spawn(connection);
                Ok(Conn::Http { sender, authority })
            }
            Transport::Grpc => {
                let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| format!("url {url}: {e}"))?;
                let channel =
                    endpoint.tcp_nodelay(true).connect().await.map_err(|e| format!("connect {url}: {}", error_chain(&e)))?;
                Ok(Conn::Grpc(AuthClient::new(channel)))
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| format!("connect {url}: no connection within {CONNECT_TIMEOUT:?}"))?
}

/// One Authenticate as [`APP_USER`] on `conn`; the token.
async fn authenticate(conn: &mut Conn, body: &Bytes) -> Result<String, String> {
    match conn {
        Conn::Http { sender, authority } => {
            let request = http::Request::post("/v3/auth/authenticate")
                .header(http::header::HOST, authority.as_str())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
                .map_err(|e| format!("building the request: {e}"))?;
            let response = sender.send_request(request).await.map_err(|e| error_chain(&e))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
            let shown = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            if status != http::StatusCode::OK {
                return Err(format!("HTTP {status}: {}", shown()));
            }
            let answer: Value = serde_json::from_slice(&body).map_err(|e| format!("answer {}: {e}", shown()))?;
            let token = answer["token"].as_str().filter(|t| !t.is_empty());
            token.map(str::to_string).ok_or_else(|| format!("no token in {}", shown()))
        }
        Conn::Grpc(auth) => {
            let request = AuthenticateRequest { name: APP_USER.into(), password: password(APP_USER) };
            let answer = auth.authenticate(request).await.map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()))?;
            let token = answer.into_inner().token;
            if token.is_empty() {
                return Err("Authenticate answered without a token".into());
            }
            Ok(token)
        }
    }
}

/// Linearizable reads of [`PROBE_KEY`] with `token`, one started every [`PROBE_INTERVAL`] whether or not the earlier
/// ones were answered (so that a stalled etcd shows in the latencies rather than as fewer reads), until `stop`; then
/// waits for those in flight. Their latency (µs), the failures and the first failure's message.
async fn probe(
    kv: KvClient<Channel>,
    token: MetadataValue<tonic::metadata::Ascii>,
    mut stop: oneshot::Receiver<()>,
) -> (Histogram<u64>, u64, Option<String>) {
    let read = || {
        let (mut kv, token) = (kv.clone(), token.clone());
        async move {
            let mut request = tonic::Request::new(RangeRequest { key: PROBE_KEY.to_vec(), ..Default::default() });
            request.metadata_mut().insert("token", token);
            let started = Instant::now();
            match tokio::time::timeout(CALL_TIMEOUT, kv.range(request)).await {
                Ok(Ok(_)) => Ok(started.elapsed()),
                Ok(Err(s)) => Err(format!("gRPC {:?}: {}", s.code(), s.message())),
                Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
            }
        }
    };
    let mut hist = Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds");
    let (mut errors, mut first_error) = (0, None);
    let mut record = |result: Result<Duration, String>| match result {
        Ok(took) => hist.saturating_record((took.as_micros() as u64).max(1)),
        Err(e) => {
            errors += 1;
            first_error.get_or_insert(e);
        }
    };
    let mut in_flight = FuturesUnordered::new();
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => in_flight.push(read()),
            Some(result) = in_flight.next() => record(result),
        }
    }
    while let Some(result) = in_flight.next().await {
        record(result);
    }
    (hist, errors, first_error)
}

/// Each token once for a serializable Range of `/apisix/` directly on etcd (the members in turn): how many worked, and
/// the first failure's message.
async fn check_tokens(kvs: &[KvClient<Channel>], tokens: &HashSet<String>) -> (usize, Option<String>) {
    let checks = tokens.iter().enumerate().map(|(i, token)| {
        let mut kv = kvs[i % kvs.len()].clone();
        async move {
            let mut request = tonic::Request::new(RangeRequest {
                key: CHECK_KEY.to_vec(),
                range_end: CHECK_RANGE_END.to_vec(),
                serializable: true,
                ..Default::default()
            });
            let token = token.parse().map_err(|_| format!("token {token:?} is no valid metadata"))?;
            request.metadata_mut().insert("token", token);
            kv.range(request).await.map(drop).map_err(|s| format!("token check: gRPC {:?}: {}", s.code(), s.message()))
        }
    });
    let results: Vec<Result<(), String>> = futures::stream::iter(checks).buffer_unordered(16).collect().await;
    let valid = results.iter().filter(|r| r.is_ok()).count();
    (valid, results.into_iter().find_map(Result::err))
}

/// [`PROPOSALS_METRIC`] of each member (`None` where it could not be read).
async fn proposals(urls: &[String]) -> Vec<Option<u64>> {
    let pages = futures::future::join_all(urls.iter().map(|url| observe::metrics_page(url))).await;
    pages.iter().map(|page| Some(observe::metric(page.as_ref().ok()?, PROPOSALS_METRIC)? as u64)).collect()
}

/// µs of a CPU total, whole.
fn micros(us: Option<f64>) -> Option<u64> {
    us.map(|us| us as u64)
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty or one is unknown.
fn median(values: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    let mut values = values.into_iter().collect::<Option<Vec<u64>>>()?;
    values.sort_unstable();
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2),
    }
}

/// Every round's histograms of one kind, merged.
fn merged<'a>(hists: impl Iterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut all = Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds");
    for hist in hists {
        let _ = all.add(hist);
    }
    all
}

/// `p`-quantile of `hist` in ms, `-` when empty.
fn quantile_ms(hist: &Histogram<u64>, p: f64) -> String {
    if hist.is_empty() {
        "-".into()
    } else {
        ms(hist.value_at_quantile(p))
    }
}

/// The table, what its columns are, and the first error of each row that had any.
fn markdown(cells: &[Cell]) -> String {
    let mut out = String::new();
    out.push_str(
        "| transport | target | clients | errors | all have a token ms | per-call p50 ms | per-call p99 ms | distinct tokens | \
         etcd Authenticates | etcd CPU ms | proxy CPU ms | tokens valid | probe p99 ms | probe max ms |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for cell in cells {
        let (transport, target) = (cell.transport.name(), cell.target.name());
        let Some(first) = cell.rounds.first() else {
            let _ = writeln!(out, "| {transport} | {target} | n/a (no HTTP/JSON gateway) | | | | | | | | | | | |");
            continue;
        };
        let rounds = &cell.rounds;
        let errors: usize = rounds.iter().map(|r| r.errors).sum();
        let distinct: usize = rounds.iter().map(|r| r.distinct_tokens).sum();
        let valid: usize = rounds.iter().map(|r| r.valid_tokens).sum();
        let probe_errors: u64 = rounds.iter().map(|r| r.probe_errors).sum();
        let (calls, probe) = (merged(rounds.iter().map(|r| &r.calls)), merged(rounds.iter().map(|r| &r.probe)));
        let bold = |bad: bool, text: String| if bad { format!("**{text}**") } else { text };
        let _ = writeln!(
            out,
            "| {transport} | {target} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} | {} |",
            first.ok + first.errors,
            bold(errors > 0, errors.to_string()),
            median(rounds.iter().map(|r| r.last_token_us)).map_or("-".into(), ms),
            quantile_ms(&calls, 0.5),
            quantile_ms(&calls, 0.99),
            median(rounds.iter().map(|r| Some(r.distinct_tokens as u64))).map_or("-".into(), |n| n.to_string()),
            median(rounds.iter().map(|r| r.etcd_authenticates)).map_or("?".into(), |n| n.to_string()),
            median(rounds.iter().map(|r| micros(r.cpu.etcd))).map_or("?".into(), ms),
            median(rounds.iter().map(|r| micros(r.cpu.proxy))).map_or("-".into(), ms),
            bold(valid < distinct, format!("{valid}/{distinct}")),
            quantile_ms(&probe, 0.99),
            if probe_errors > 0 { format!(" (**{probe_errors} errors**)") } else { String::new() },
            if probe.is_empty() { "-".into() } else { ms(probe.max()) },
        );
    }
    out.push_str(
        "\n`all have a token`, `distinct tokens`, `etcd Authenticates` (raft proposals committed), `etcd CPU` and `proxy CPU` \
         (from the release until the last answer): median over the rounds. `errors` and `tokens valid` (a serializable \
         Range on etcd with each distinct token): all rounds. Per-call and probe (a linearizable read directly on etcd \
         started every 10 ms during the round, answered or not) latencies: all rounds' calls together.\n",
    );
    let failing: Vec<_> =
        cells.iter().filter_map(|c| Some((c, c.rounds.iter().find_map(|r| r.first_error.as_deref())?))).collect();
    if !failing.is_empty() {
        out.push_str("\nErrors (first message per row):\n");
        for (cell, error) in failing {
            let _ = writeln!(out, "- {} via {}: {error}", cell.transport.name(), cell.target.name());
        }
    }
    out
}

/// One row with every round, machine-readable.
fn cell_json(cell: &Cell) -> Value {
    let quantiles = |hist: &Histogram<u64>| {
        if hist.is_empty() {
            Value::Null
        } else {
            json!({ "p50": hist.value_at_quantile(0.5), "p99": hist.value_at_quantile(0.99), "max": hist.max() })
        }
    };
    let rounds: Vec<Value> = cell
        .rounds
        .iter()
        .map(|r| {
            json!({
                "ok": r.ok,
                "errors": r.errors,
                "first_error": r.first_error,
                "last_token_us": r.last_token_us,
                "call_us": quantiles(&r.calls),
                "distinct_tokens": r.distinct_tokens,
                "valid_tokens": r.valid_tokens,
                "etcd_authenticates": r.etcd_authenticates,
                "cpu_us": { "etcd": r.cpu.etcd, "proxy": r.cpu.proxy, "loadgen": r.cpu.loadgen },
                "probe_us": quantiles(&r.probe),
                "probe_reads": r.probe.len(),
                "probe_errors": r.probe_errors,
            })
        })
        .collect();
    json!({
        "transport": cell.transport.name(),
        "target": cell.target.name(),
        "skipped": cell.rounds.is_empty(),
        "rounds": rounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_rounds() {
        assert_eq!(median([Some(3), Some(1), Some(2)]), Some(2));
        assert_eq!(median([Some(4), Some(1)]), Some(2));
        assert_eq!(median([Some(4), None]), None);
        assert_eq!(median([]), None);
    }

    #[test]
    fn table_has_a_row_per_transport_and_target() {
        let mut calls = Histogram::new_with_bounds(1, HIST_MAX_US, 3).unwrap();
        calls.record(2_000).unwrap();
        let mut probe = Histogram::new_with_bounds(1, HIST_MAX_US, 3).unwrap();
        probe.record(1_500).unwrap();
        let round = |tokens: usize, valid: usize| Round {
            ok: 1,
            errors: 1,
            first_error: Some("gRPC Unavailable: boom".into()),
            last_token_us: Some(4_600_000),
            calls: calls.clone(),
            distinct_tokens: tokens,
            valid_tokens: valid,
            etcd_authenticates: Some(1),
            cpu: CpuTotals { etcd: Some(7_800_000.0), proxy: None, loadgen: Some(1_000.0) },
            probe: probe.clone(),
            probe_errors: 0,
        };
        let cells = [
            Cell { transport: Transport::Grpc, target: TargetKind::Direct, rounds: vec![round(1, 1), round(1, 0)] },
            Cell { transport: Transport::Http, target: TargetKind::GrpcProxy, rounds: Vec::new() },
        ];
        let text = markdown(&cells);
        let row = "| grpc | direct | 2 | **2** | 4600.0 | 2.0 | 2.0 | 1 | 1 | 7800.0 | - | **1/2** | 1.5 | 1.5 |";
        assert!(text.contains(row), "{text}");
        assert!(text.contains("| http | grpc-proxy | n/a"), "{text}");
        assert!(text.contains("- grpc via direct: gRPC Unavailable: boom"), "{text}");
        assert_eq!(cell_json(&cells[0])["rounds"][1]["valid_tokens"], 0);
    }
}
