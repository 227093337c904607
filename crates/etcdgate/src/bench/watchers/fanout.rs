//! B4, watch fan-out. On one target: watches of `/apisix/`, HTTP/JSON long watches as APISIX
//! opens them (one HTTP/1.1 connection each) and gRPC ones (one Watch stream each, spread
//! over `grpc_channels` shared HTTP/2 connections), half and half by default. Once all are open, `puts`
//! puts of keys under `/apisix/routes/` go straight to etcd, `put_interval` apart, each value
//! carrying the put's number, and every watcher notes when each put reaches it.
//!
//! Measured: from a put's send to its arrival at the *last* watcher (p50/p99 over puts) and
//! at each watcher (p50/p99 over all deliveries); missed, duplicate and out-of-order events;
//! etcd's watcher and watch-stream gauges with every watcher open; resident memory of the
//! proxy and of etcd before opening and after the puts, per watcher; CPU per put.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, watch_client::WatchClient, PutRequest, WatchCreateRequest};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use super::observe::{self, metric};
use super::watch_conn::{expect_created, http_create_body, WatchConn};
use super::{host_port, ms, serves_http, RunningTarget, WATCH_KEY, WATCH_RANGE_END};
use crate::bench::cpu_ticks;
use crate::bench::report::{met, TargetKind};

/// Target of the issue: p99 from put to the last watcher.
const MAX_P99_TO_LAST_MS: f64 = 50.0;
/// Target of the issue: proxy memory per watcher.
const MAX_RSS_PER_WATCHER: f64 = 4096.0;
/// Pause before memory and gauges are read, so that the last opens and sends have settled.
const SETTLE: Duration = Duration::from_secs(1);
/// After the last put, the watchers are waited for until all have everything, or nothing has
/// arrived for this long (what is still missing then counts as missed) ...
const DELIVERY_STALL: Duration = Duration::from_secs(5);
/// ... or this long at most.
const DELIVERY_CAP: Duration = Duration::from_secs(300);
/// Digits of the put's number at the start of each value.
const NUMBER_DIGITS: usize = 8;
/// A delivery not (yet) received.
const MISSING: u32 = u32::MAX;

#[derive(Clone, Debug)]
pub struct FanoutConfig {
    /// HTTP/JSON watchers (none on a target without the HTTP gateway).
    pub http_watchers: usize,
    pub grpc_watchers: usize,
    pub grpc_channels: usize,
    pub puts: usize,
    pub put_interval: Duration,
    pub value_size: usize,
    pub open_concurrency: usize,
}

/// p50 / p99 / max, µs.
#[derive(Clone, Copy, Debug)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    fn of(hist: &Histogram<u64>) -> Option<Percentiles> {
        (!hist.is_empty()).then(|| Percentiles {
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            max_us: hist.max(),
        })
    }
}

/// Resident memory of one process at the three moments of a cell, bytes.
#[derive(Clone, Copy, Debug)]
pub struct Rss {
    pub before: u64,
    pub opened: u64,
    pub after_puts: u64,
}

/// One target's fan-out numbers.
pub struct FanoutCell {
    pub target: TargetKind,
    pub http_watchers: usize,
    pub grpc_watchers: usize,
    pub open_failures: usize,
    pub open_secs: f64,
    pub first_error: Option<String>,
    /// etcd's `etcd_debugging_mvcc_watcher_total` / `..._watch_stream_total` with every
    /// watcher open.
    pub etcd_watchers: Option<f64>,
    pub etcd_watch_streams: Option<f64>,
    /// etcdgate's `etcdgate_cache_watchers` (watches served from its hub).
    pub hub_watchers: Option<f64>,
    /// Puts etcd failed (their events are not expected).
    pub put_failures: usize,
    pub to_last: Option<Percentiles>,
    pub per_event: Option<Percentiles>,
    pub missed: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Events no put of this cell made.
    pub foreign: u64,
    /// Watches that ended or failed before the end.
    pub broken: u64,
    pub proxy_rss: Option<Rss>,
    pub etcd_rss: Option<Rss>,
    /// CPU ms per put (from the first put until every watcher had everything): the proxy,
    /// etcd, this process.
    pub cpu_ms_per_put: [Option<f64>; 3],
}

impl FanoutCell {
    fn watchers(&self) -> usize {
        self.http_watchers + self.grpc_watchers
    }

    /// Bytes of `rss` per open watcher, idle (after opening) and after the puts.
    fn per_watcher(&self, rss: Option<Rss>) -> Option<(f64, f64)> {
        let rss = rss?;
        let n = self.watchers().max(1) as f64;
        Some((
            (rss.opened as f64 - rss.before as f64) / n,
            (rss.after_puts as f64 - rss.before as f64) / n,
        ))
    }
}

/// When each put was sent, µs since `epoch` plus one (0: not sent yet).
struct PutClock {
    epoch: Instant,
    sent: Vec<AtomicU64>,
}

impl PutClock {
    fn new(puts: usize) -> PutClock {
        PutClock { epoch: Instant::now(), sent: (0..puts).map(|_| AtomicU64::new(0)).collect() }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    fn mark_sent(&self, put: usize) {
        self.sent[put].store(self.now(), Ordering::Release);
    }

    /// µs since put `put` was sent, if it was.
    fn since_sent(&self, put: usize) -> Option<u64> {
        let sent = self.sent.get(put)?.load(Ordering::Acquire);
        (sent > 0).then(|| self.now().saturating_sub(sent))
    }
}

/// What the watchers received so far, all together.
#[derive(Default)]
struct Progress {
    /// Watchers that have every put.
    complete: AtomicUsize,
    /// Puts received, summed over the watchers.
    deliveries: AtomicU64,
}

/// What one watcher received.
struct Delivery {
    /// µs from send to arrival, per put; [`MISSING`] when it did not come.
    delays_us: Vec<u32>,
    received: usize,
    duplicates: u64,
    out_of_order: u64,
    foreign: u64,
    broken: Option<String>,
}

/// Value of put `put`: its number, then padding up to `size` bytes.
fn put_value(put: usize, size: usize) -> Vec<u8> {
    let mut value = format!("{put:0NUMBER_DIGITS$}").into_bytes();
    value.resize(size.max(NUMBER_DIGITS), b'v');
    value
}

/// The put number at the start of a value.
fn put_number(value: &[u8]) -> Option<usize> {
    let digits = value.get(..NUMBER_DIGITS)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Runs the fan-out on `target`; puts go to etcd at `etcd_url` (process `etcd_pid`).
pub async fn run(
    target: &RunningTarget,
    etcd_url: &str,
    etcd_pid: Option<u32>,
    config: &FanoutConfig,
) -> anyhow::Result<FanoutCell> {
    let addr: SocketAddr = host_port(&target.url).parse().with_context(|| format!("address of {}", target.url))?;
    let mut kv = KvClient::connect(etcd_url.to_string()).await.with_context(|| format!("connecting to {etcd_url}"))?;
    let http_count = if serves_http(target.kind) { config.http_watchers } else { 0 };
    let grpc_count = config.grpc_watchers;
    if http_count + grpc_count == 0 {
        bail!("no watcher this target can serve (it has no HTTP/JSON gateway)");
    }
    let mut channels = Vec::new();
    for _ in 0..config.grpc_channels.min(grpc_count) {
        let channel = Endpoint::from_shared(target.url.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("gRPC channel to {}", target.url))?;
        channels.push(WatchClient::new(channel));
    }

    tokio::time::sleep(SETTLE).await;
    let rss_before = (target.pid.and_then(observe::rss_bytes), etcd_pid.and_then(observe::rss_bytes));

    let clock = Arc::new(PutClock::new(config.puts));
    let progress = Arc::new(Progress::default());
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let opened = open_all(addr, &channels, http_count, grpc_count, config.open_concurrency, |conn| {
        tokio::spawn(consume(conn, clock.clone(), progress.clone(), stopped.clone()))
    })
    .await;
    let open_secs = started.elapsed().as_secs_f64();
    let mut first_error = opened.first_error;
    eprintln!(
        "bench:   {} opened {} HTTP + {} gRPC watchers in {open_secs:.1} s ({} failed)",
        target.kind.name(),
        opened.http,
        opened.grpc,
        opened.failures
    );

    tokio::time::sleep(SETTLE).await;
    let etcd_page = observe::metrics_page(etcd_url).await.unwrap_or_default();
    let hub_watchers = if target.kind == TargetKind::Etcdgate {
        observe::metrics_page(&target.url).await.ok().and_then(|page| metric(&page, "etcdgate_cache_watchers"))
    } else {
        None
    };
    let rss_opened = (target.pid.and_then(observe::rss_bytes), etcd_pid.and_then(observe::rss_bytes));

    let cpu = |pid: Option<u32>| pid.and_then(|pid| cpu_ticks(&pid.to_string()));
    let cpu_before = [cpu(target.pid), cpu(etcd_pid), cpu_ticks("self")];
    let failed_puts = put_all(&mut kv, &clock, config, &mut first_error).await;
    wait_for_deliveries(&progress, opened.consumers.len()).await;
    let cpu_after = [cpu(target.pid), cpu(etcd_pid), cpu_ticks("self")];
    let rss_after = (target.pid.and_then(observe::rss_bytes), etcd_pid.and_then(observe::rss_bytes));

    let _ = stop.send(true);
    let mut deliveries = Vec::with_capacity(opened.consumers.len());
    for consumer in opened.consumers {
        match consumer.await {
            Ok(delivery) => deliveries.push(delivery),
            Err(e) => {
                first_error.get_or_insert_with(|| format!("watcher task: {e}"));
            }
        }
    }
    drop(channels);

    // SAFETY: sysconf has no preconditions.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let per_put = |before: Option<u64>, after: Option<u64>| {
        Some(after?.saturating_sub(before?) as f64 * 1000.0 / ticks_per_sec / config.puts as f64)
    };
    let rss = |before: Option<u64>, opened: Option<u64>, after_puts: Option<u64>| {
        Some(Rss { before: before?, opened: opened?, after_puts: after_puts? })
    };
    let mut cell = FanoutCell {
        target: target.kind,
        http_watchers: opened.http,
        grpc_watchers: opened.grpc,
        open_failures: opened.failures,
        open_secs,
        first_error,
        etcd_watchers: metric(&etcd_page, "etcd_debugging_mvcc_watcher_total"),
        etcd_watch_streams: metric(&etcd_page, "etcd_debugging_mvcc_watch_stream_total"),
        hub_watchers,
        put_failures: failed_puts.iter().filter(|f| **f).count(),
        to_last: None,
        per_event: None,
        missed: 0,
        duplicates: 0,
        out_of_order: 0,
        foreign: 0,
        broken: 0,
        proxy_rss: rss(rss_before.0, rss_opened.0, rss_after.0),
        etcd_rss: rss(rss_before.1, rss_opened.1, rss_after.1),
        cpu_ms_per_put: [0, 1, 2].map(|i| per_put(cpu_before[i], cpu_after[i])),
    };
    tally(&mut cell, &deliveries, &failed_puts);
    Ok(cell)
}

/// Makes the puts, `put_interval` apart; which of them failed.
async fn put_all(
    kv: &mut KvClient<Channel>,
    clock: &PutClock,
    config: &FanoutConfig,
    first_error: &mut Option<String>,
) -> Vec<bool> {
    let mut failed_puts = vec![false; config.puts];
    let mut ticker = tokio::time::interval(config.put_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (put, failed) in failed_puts.iter_mut().enumerate() {
        ticker.tick().await;
        let request = PutRequest {
            key: format!("/apisix/routes/fanout-{:03}", put % 100).into_bytes(),
            value: put_value(put, config.value_size),
            ..Default::default()
        };
        clock.mark_sent(put);
        if let Err(status) = kv.put(request).await {
            *failed = true;
            first_error.get_or_insert_with(|| format!("put: {:?}: {}", status.code(), status.message()));
        }
    }
    failed_puts
}

/// Waits until all `watchers` have every put, or deliveries stall ([`DELIVERY_STALL`]), or
/// [`DELIVERY_CAP`] has passed.
async fn wait_for_deliveries(progress: &Progress, watchers: usize) {
    let cap = Instant::now() + DELIVERY_CAP;
    let (mut delivered, mut last_arrival) = (progress.deliveries.load(Ordering::Acquire), Instant::now());
    while progress.complete.load(Ordering::Acquire) < watchers
        && last_arrival.elapsed() < DELIVERY_STALL
        && Instant::now() < cap
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now_delivered = progress.deliveries.load(Ordering::Acquire);
        if now_delivered != delivered {
            (delivered, last_arrival) = (now_delivered, Instant::now());
        }
    }
}

/// The watchers opened by [`open_all`]: their consumer tasks, and what failed.
struct Opened {
    consumers: Vec<JoinHandle<Delivery>>,
    http: usize,
    grpc: usize,
    failures: usize,
    first_error: Option<String>,
}

/// Opens `http_count` HTTP and `grpc_count` gRPC watches (interleaved, `concurrency` at a
/// time; gRPC ones round-robin over `channels`) and hands each open one to `spawn`.
async fn open_all(
    addr: SocketAddr,
    channels: &[WatchClient<Channel>],
    http_count: usize,
    grpc_count: usize,
    concurrency: usize,
    spawn: impl Fn(WatchConn) -> JoinHandle<Delivery>,
) -> Opened {
    let http_body = http_create_body(WATCH_KEY, WATCH_RANGE_END, 0);
    let create =
        WatchCreateRequest { key: WATCH_KEY.to_vec(), range_end: WATCH_RANGE_END.to_vec(), ..Default::default() };
    // `Some(channel)` for a gRPC watcher, `None` for an HTTP one.
    let mut plan: Vec<Option<usize>> = Vec::with_capacity(http_count + grpc_count);
    for i in 0..http_count.max(grpc_count) {
        if i < http_count {
            plan.push(None);
        }
        if i < grpc_count && !channels.is_empty() {
            plan.push(Some(i % channels.len()));
        }
    }
    let mut opens = futures::stream::iter(plan)
        .map(|kind| {
            let (http_body, create) = (http_body.clone(), create.clone());
            let client = kind.map(|c| channels[c].clone());
            async move {
                let opened = match client {
                    Some(client) => WatchConn::open_grpc(client, create).await,
                    None => WatchConn::open_http(addr, http_body).await,
                };
                (kind.is_some(), expect_created(opened))
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut out = Opened { consumers: Vec::new(), http: 0, grpc: 0, failures: 0, first_error: None };
    while let Some((grpc, opened)) = opens.next().await {
        match opened {
            Ok(conn) => {
                out.consumers.push(spawn(conn));
                if grpc {
                    out.grpc += 1;
                } else {
                    out.http += 1;
                }
            }
            Err(e) => {
                out.failures += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    out
}

/// Reads one watch until `stop`, noting when each put arrives (and counting into `progress`).
async fn consume(
    mut conn: WatchConn,
    clock: Arc<PutClock>,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Delivery {
    let stopped = stop.wait_for(|stop| *stop);
    tokio::pin!(stopped);
    let puts = clock.sent.len();
    let mut delivery = Delivery {
        delays_us: vec![MISSING; puts],
        received: 0,
        duplicates: 0,
        out_of_order: 0,
        foreign: 0,
        broken: None,
    };
    let mut last_revision = 0;
    loop {
        let message = tokio::select! {
            biased;
            _ = &mut stopped => break,
            message = conn.next() => message,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                delivery.broken = Some("watch stream ended".into());
                break;
            }
            Err(e) => {
                delivery.broken = Some(e);
                break;
            }
        };
        for kv in response.events.iter().filter_map(|event| event.kv.as_ref()) {
            if kv.mod_revision <= last_revision {
                delivery.out_of_order += 1;
            }
            last_revision = last_revision.max(kv.mod_revision);
            let sent = put_number(&kv.value).and_then(|put| Some((put, clock.since_sent(put)?)));
            match sent {
                Some((put, delay_us)) if delivery.delays_us[put] == MISSING => {
                    delivery.delays_us[put] = delay_us.min(u64::from(MISSING - 1)) as u32;
                    delivery.received += 1;
                    progress.deliveries.fetch_add(1, Ordering::AcqRel);
                    if delivery.received == puts {
                        progress.complete.fetch_add(1, Ordering::AcqRel);
                    }
                }
                Some(_) => delivery.duplicates += 1,
                None => delivery.foreign += 1,
            }
        }
        if response.canceled {
            delivery.broken = Some(format!("watch canceled: {:?}", response.cancel_reason));
            break;
        }
    }
    delivery
}

/// Adds the watchers' deliveries into `cell` (puts that failed are not expected).
fn tally(cell: &mut FanoutCell, deliveries: &[Delivery], failed_puts: &[bool]) {
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
    let mut per_event = new_hist();
    let mut last_arrival = vec![None::<u32>; failed_puts.len()];
    for delivery in deliveries {
        for (put, &delay) in delivery.delays_us.iter().enumerate() {
            if failed_puts[put] {
                continue;
            }
            if delay == MISSING {
                cell.missed += 1;
                continue;
            }
            per_event.saturating_record(u64::from(delay).max(1));
            let last = &mut last_arrival[put];
            *last = Some(last.map_or(delay, |l| l.max(delay)));
        }
        cell.duplicates += delivery.duplicates;
        cell.out_of_order += delivery.out_of_order;
        cell.foreign += delivery.foreign;
        if let Some(reason) = &delivery.broken {
            cell.broken += 1;
            cell.first_error.get_or_insert_with(|| reason.clone());
        }
    }
    let mut to_last = new_hist();
    for delay in last_arrival.into_iter().flatten() {
        to_last.saturating_record(u64::from(delay).max(1));
    }
    cell.per_event = Percentiles::of(&per_event);
    cell.to_last = Percentiles::of(&to_last);
}

/// The two fan-out tables (delivery, resources), etcdgate's verdict and any errors.
pub fn markdown(cells: &[Result<FanoutCell, (TargetKind, String)>]) -> String {
    let mut out = String::new();
    out.push_str(
        "| target | watchers HTTP+gRPC | opened in s | put→last p50 ms | put→last p99 ms | put→last max ms | \
         per-event p50 ms | per-event p99 ms | missed | duplicate | out of order | unexpected | broken watches |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for cell in cells {
        let cell = match cell {
            Ok(cell) => cell,
            Err((target, e)) => {
                let _ = writeln!(out, "| {} | {e} | | | | | | | | | | | |", target.name());
                continue;
            }
        };
        let p = |p: Option<Percentiles>, f: fn(Percentiles) -> u64| p.map_or("-".into(), |p| ms(f(p)));
        let _ = writeln!(
            out,
            "| {} | {}+{}{} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell.target.name(),
            cell.http_watchers,
            cell.grpc_watchers,
            if cell.open_failures > 0 { format!(" (**{} failed**)", cell.open_failures) } else { String::new() },
            cell.open_secs,
            p(cell.to_last, |p| p.p50_us),
            p(cell.to_last, |p| p.p99_us),
            p(cell.to_last, |p| p.max_us),
            p(cell.per_event, |p| p.p50_us),
            p(cell.per_event, |p| p.p99_us),
            count(cell.missed),
            count(cell.duplicates),
            count(cell.out_of_order),
            count(cell.foreign),
            count(cell.broken),
        );
    }
    out.push('\n');
    out.push_str(
        "| target | etcd watchers | etcd watch streams | etcdgate hub watchers | proxy RSS MiB before → after puts | \
         proxy B/watcher idle | proxy B/watcher after puts | etcd B/watcher after puts | \
         CPU ms/put proxy | CPU ms/put etcd | CPU ms/put loadgen |\n",
    );
    out.push_str("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for cell in cells.iter().flatten() {
        let proxy = cell.per_watcher(cell.proxy_rss);
        let etcd = cell.per_watcher(cell.etcd_rss);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell.target.name(),
            cell_gauge(cell.etcd_watchers),
            cell_gauge(cell.etcd_watch_streams),
            cell_gauge(cell.hub_watchers),
            cell.proxy_rss.map_or("-".into(), |r| format!("{:.1} → {:.1}", mib(r.before), mib(r.after_puts))),
            proxy.map_or("-".into(), |p| format!("{:.0}", p.0)),
            proxy.map_or("-".into(), |p| format!("{:.0}", p.1)),
            etcd.map_or("-".into(), |p| format!("{:.0}", p.1)),
            cpu(cell.cpu_ms_per_put[0]),
            cpu(cell.cpu_ms_per_put[1]),
            cpu(cell.cpu_ms_per_put[2]),
        );
    }
    out.push('\n');
    if let Some(gate) = cells.iter().flatten().find(|c| c.target == TargetKind::Etcdgate) {
        let p99 = gate.to_last.map(|p| p.p99_us as f64 / 1000.0);
        let per_watcher = gate.per_watcher(gate.proxy_rss).map(|p| p.1);
        let clean = gate.missed + gate.duplicates + gate.out_of_order + gate.foreign + gate.broken == 0 && gate.open_failures == 0;
        let _ = writeln!(
            out,
            "- etcdgate with {} watchers: put→last p99 {} (<{MAX_P99_TO_LAST_MS} ms: {}); RSS/watcher {} (≤{MAX_RSS_PER_WATCHER} B: {}); \
             etcd watchers {} (1 upstream watch for the prefix: {}); every event exactly once, in order: {}",
            gate.watchers(),
            p99.map_or("-".into(), |p| format!("{p:.1} ms")),
            met(p99.map(|p| p < MAX_P99_TO_LAST_MS)),
            per_watcher.map_or("-".into(), |b| format!("{b:.0} B")),
            met(per_watcher.map(|b| b <= MAX_RSS_PER_WATCHER)),
            cell_gauge(gate.etcd_watchers),
            met(gate.etcd_watchers.map(|w| w == 1.0)),
            met(Some(clean)),
        );
    }
    for cell in cells.iter().flatten().filter(|c| c.put_failures > 0) {
        let _ = writeln!(out, "- via {}: **{} puts failed** (their events are not counted as missed)", cell.target.name(), cell.put_failures);
    }
    let errors: Vec<_> = cells.iter().flatten().filter_map(|c| Some((c.target, c.first_error.as_deref()?))).collect();
    if !errors.is_empty() {
        out.push_str("\nErrors (first message per target):\n");
        for (target, e) in errors {
            let _ = writeln!(out, "- {}: {e}", target.name());
        }
    }
    out
}

fn cell_gauge(g: Option<f64>) -> String {
    g.map_or("-".into(), |g| format!("{g:.0}"))
}

fn count(n: u64) -> String {
    if n == 0 {
        "0".into()
    } else {
        format!("**{n}**")
    }
}

fn cpu(c: Option<f64>) -> String {
    c.map_or("-".into(), |c| format!("{c:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_values_carry_their_number() {
        let value = put_value(42, 256);
        assert_eq!(value.len(), 256);
        assert_eq!(put_number(&value), Some(42));
        assert_eq!(put_number(&put_value(7, 0)), Some(7));
        assert_eq!(put_number(b"short"), None);
        assert_eq!(put_number(b"not-a-number"), None);
    }

    #[test]
    fn tally_takes_the_last_arrival_per_put_and_counts_what_went_wrong() {
        let delivery = |delays_us: Vec<u32>, duplicates| Delivery {
            received: delays_us.iter().filter(|d| **d != MISSING).count(),
            delays_us,
            duplicates,
            out_of_order: 0,
            foreign: 0,
            broken: None,
        };
        let deliveries = [delivery(vec![1000, 2000, MISSING], 0), delivery(vec![3000, 1000, MISSING], 1)];
        let mut cell = FanoutCell {
            target: TargetKind::Etcdgate,
            http_watchers: 1,
            grpc_watchers: 1,
            open_failures: 0,
            open_secs: 0.0,
            first_error: None,
            etcd_watchers: Some(1.0),
            etcd_watch_streams: Some(1.0),
            hub_watchers: Some(2.0),
            put_failures: 1,
            to_last: None,
            per_event: None,
            missed: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
            broken: 0,
            proxy_rss: Some(Rss { before: 10 << 20, opened: (10 << 20) + 2000, after_puts: (10 << 20) + 4000 }),
            etcd_rss: None,
            cpu_ms_per_put: [Some(0.5), None, None],
        };
        // The third put failed: its missing deliveries are not missed events.
        tally(&mut cell, &deliveries, &[false, false, true]);
        let to_last = cell.to_last.expect("two puts arrived");
        assert_eq!(to_last.p50_us, 2000);
        assert_eq!(to_last.max_us / 10, 300, "3000 µs within the histogram's precision");
        assert_eq!(cell.per_event.expect("four deliveries").p50_us, 1000);
        assert_eq!((cell.missed, cell.duplicates), (0, 1));
        let text = markdown(&[Ok(cell), Err((TargetKind::GrpcProxy, "failed: boom".into()))]);
        assert!(text.contains("| etcdgate | 1+1 | 0.0 | 2.0 | 3.0 | 3.0 | 1.0 |"), "{text}");
        assert!(text.contains("| grpc-proxy | failed: boom |"), "{text}");
        assert!(text.contains("| etcdgate | 1 | 1 | 2 | 10.0 → 10.0 | 1000 | 2000 | - | 0.50 | - | - |"), "{text}");
        assert!(text.contains("RSS/watcher 2000 B (≤4096 B: met)"), "{text}");
        assert!(text.contains("every event exactly once, in order: NOT met"), "{text}");
        assert!(text.contains("via etcdgate: **1 puts failed**"), "{text}");
    }
}
