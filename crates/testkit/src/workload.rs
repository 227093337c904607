//! An APISIX-like workload against etcdgate (or the members directly, as APISIX lists them),
//! and its verdict against etcd's own history.
//!
//! [`Workload::start`] runs, until [`Workload::finish`]:
//!
//! - N APISIX instances × W workers ([`apisix`]), each syncing `/apisix` over HTTP/JSON: a full
//!   range of every resource prefix, then a long watch from the next revision, re-reading on
//!   compaction;
//! - gRPC watchers ([`watcher`]) of sub-ranges of `/apisix`, each from its own start revision;
//! - gRPC readers ([`reader`]), serializable and linearizable `Range` in turn;
//! - one writer ([`writer`]) with a known sequence of puts and deletes.
//!
//! [`Workload::finish`] stops the writer and readers, reads etcd's history directly from a
//! member, lets every open watch catch up with it (bounded), stops the watches, and checks
//! every record with [`crate::history`]: the [`Report`] lists client errors (with when they
//! happened) and every problem found.

mod apisix;
mod http;
mod reader;
mod record;
pub mod schema;
mod watcher;
mod writer;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, RangeRequest};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::grpc::endpoint;
use crate::history::{check_revisions, check_watch, check_writes, History, Problem};
pub use http::{b64, error_chain, int, JsonClient, JsonLines};
pub use record::{Call, ClientError};
use record::Recorder;
use schema::{key, resource_range, Rng, PREFIX, PREFIX_END, RESOURCES};
use writer::TimedWrite;

/// Longest wait in [`Workload::finish`] for the watches to catch up with the history.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the workload's clients send their requests.
#[derive(Clone, Debug)]
pub enum Target {
    /// One address (etcdgate): `http://host:port`.
    Gateway(String),
    /// Every member's client URL, as APISIX lists them: gRPC clients balance over them,
    /// HTTP clients move to the next one after an error.
    Members(Vec<String>),
}

impl Target {
    fn urls(&self) -> Vec<String> {
        match self {
            Target::Gateway(url) => vec![url.clone()],
            Target::Members(urls) => urls.clone(),
        }
    }

    /// A channel of its own for one client.
    async fn channel(&self, timeout: Duration) -> anyhow::Result<Channel> {
        match self {
            Target::Gateway(url) => endpoint(url, timeout)?.connect().await.with_context(|| format!("connect {url}")),
            Target::Members(urls) => {
                let endpoints = urls.iter().map(|url| endpoint(url, timeout)).collect::<anyhow::Result<Vec<_>>>()?;
                Ok(Channel::balance_list(endpoints.into_iter()))
            }
        }
    }
}

/// What to run; [`WorkloadConfig::new`] gives a light mix for a 2-core machine.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub target: Target,
    /// APISIX instances...
    pub instances: usize,
    /// ...and worker processes in each: every worker syncs on its own.
    pub workers: usize,
    pub grpc_watchers: usize,
    pub grpc_readers: usize,
    /// Pause after each write of the writer.
    pub write_pause: Duration,
    /// Pause after each read of a reader.
    pub read_pause: Duration,
    /// Readers alternate serializable and linearizable `Range`; linearizable only when false.
    /// (Serializable reads answered by different members can go back in revision: etcd
    /// promises nothing across members, etcdgate promises it never happens.)
    pub serializable_reads: bool,
    /// gRPC watcher k starts k × this after the others (and from a start revision of its own).
    pub watcher_stagger: Duration,
    /// Deadline of every unary call (and of opening a watch).
    pub call_timeout: Duration,
    /// Seeds the writer's sequence, the readers and the watchers' ranges.
    pub seed: u64,
}

impl WorkloadConfig {
    /// 2 instances × 2 workers, 4 gRPC watchers, 2 readers, one writer, a 10 s call deadline,
    /// seeded from the clock (printed in the report, to replay a run).
    pub fn new(target: Target) -> WorkloadConfig {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        WorkloadConfig {
            target,
            instances: 2,
            workers: 2,
            grpc_watchers: 4,
            grpc_readers: 2,
            write_pause: Duration::from_millis(25),
            read_pause: Duration::from_millis(25),
            serializable_reads: true,
            watcher_stagger: Duration::from_millis(500),
            call_timeout: Duration::from_secs(10),
            seed,
        }
    }
}

/// A running workload. Dropping it stops its clients without checking anything.
pub struct Workload {
    config: WorkloadConfig,
    started: Instant,
    start_revision: i64,
    load_stop: watch::Sender<bool>,
    watch_stop: watch::Sender<bool>,
    load_tasks: Vec<JoinHandle<()>>,
    watch_tasks: Vec<JoinHandle<()>>,
    clients: Vec<Recorder>,
    writes: Arc<Mutex<Vec<TimedWrite>>>,
}

impl Workload {
    /// Starts every client. The history checked later starts at the revision after the
    /// current one (asked through the target).
    pub async fn start(config: WorkloadConfig) -> anyhow::Result<Workload> {
        let current = current_revision(config.target.channel(config.call_timeout).await?, config.call_timeout)
            .await
            .context("read the current revision through the target")?;
        let start_revision = current + 1;
        let (load_stop, load_stopped) = watch::channel(false);
        let (watch_stop, watch_stopped) = watch::channel(false);
        let mut workload = Workload {
            started: Instant::now(),
            start_revision,
            load_stop,
            watch_stop,
            load_tasks: Vec::new(),
            watch_tasks: Vec::new(),
            clients: Vec::new(),
            writes: Arc::default(),
            config: config.clone(),
        };
        let latest_revision = Arc::new(AtomicI64::new(current));
        let call_timeout = config.call_timeout;

        let recorder = workload.recorder("writer");
        let writer = writer::Writer {
            recorder,
            channel: config.target.channel(call_timeout).await?,
            pause: config.write_pause,
            call_timeout,
            seed: config.seed,
            stop: load_stopped.clone(),
            writes: workload.writes.clone(),
            latest_revision: latest_revision.clone(),
        };
        workload.load_tasks.push(tokio::spawn(writer.run()));

        for i in 0..config.grpc_readers {
            let reader = reader::GrpcReader {
                recorder: workload.recorder(format!("grpc-reader-{i}")),
                channel: config.target.channel(call_timeout).await?,
                pause: config.read_pause,
                call_timeout,
                seed: config.seed.wrapping_add(1000 + i as u64),
                serializable_reads: config.serializable_reads,
                stop: load_stopped.clone(),
            };
            workload.load_tasks.push(tokio::spawn(reader.run()));
        }

        let urls = config.target.urls();
        for instance in 0..config.instances {
            for worker in 0..config.workers {
                let apisix = apisix::ApisixWorker {
                    recorder: workload.recorder(format!("apisix-{instance}/worker-{worker}")),
                    endpoints: urls.clone(),
                    first_endpoint: instance * config.workers + worker,
                    call_timeout,
                    stop: watch_stopped.clone(),
                };
                workload.watch_tasks.push(tokio::spawn(apisix.run()));
            }
        }

        let mut rng = Rng::new(config.seed.wrapping_add(2000));
        for i in 0..config.grpc_watchers {
            let (key, range_end) = watch_range(i, &mut rng);
            let recorder = workload.recorder(format!("grpc-watcher-{i} [{}, {})", String::from_utf8_lossy(&key), String::from_utf8_lossy(&range_end)));
            let channel = config.target.channel(call_timeout).await?;
            let delay = config.watcher_stagger * i as u32;
            let pick = rng.next_u64();
            let latest_revision = latest_revision.clone();
            let stop = watch_stopped.clone();
            workload.watch_tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                // From anywhere between the run's start and the latest write: some replay history.
                let latest = latest_revision.load(Ordering::Relaxed).max(start_revision - 1);
                let start = start_revision + (pick % (latest + 2 - start_revision) as u64) as i64;
                let watcher = watcher::GrpcWatcher { recorder, channel, key, range_end, start_revision: start, call_timeout, stop };
                watcher.run().await;
            }));
        }
        Ok(workload)
    }

    fn recorder(&mut self, name: impl Into<String>) -> Recorder {
        let recorder = Recorder::new(name);
        self.clients.push(recorder.clone());
        recorder
    }

    /// When the workload started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The first revision of the history the workload checks.
    pub fn start_revision(&self) -> i64 {
        self.start_revision
    }

    /// Stops the workload and checks it against the history read from `history_member`
    /// (a member's client URL, asked directly).
    pub async fn finish(mut self, history_member: &str) -> anyhow::Result<Report> {
        let _ = self.load_stop.send(true);
        let join_bound = self.config.call_timeout + Duration::from_secs(5);
        for task in self.load_tasks.drain(..) {
            join_bounded(task, join_bound).await;
        }
        let load_stopped = Instant::now();

        let member = endpoint(history_member, self.config.call_timeout)?.connect().await.with_context(|| format!("connect {history_member}"))?;
        let end_revision = current_revision(member, self.config.call_timeout).await.context("read the end revision from the member")?;
        let history = History::read(history_member, self.start_revision, end_revision).await?;

        let drained = self.drain(&history).await;
        let drain_took = load_stopped.elapsed();
        let _ = self.watch_stop.send(true);
        for task in self.watch_tasks.drain(..) {
            join_bounded(task, Duration::from_secs(10)).await;
        }

        let mut report = Report {
            seed: self.config.seed,
            elapsed: self.started.elapsed(),
            started: self.started,
            start_revision: self.start_revision,
            end_revision,
            history_events: history.range(PREFIX.as_bytes(), PREFIX_END.as_bytes(), self.start_revision).count(),
            drained,
            drain_took,
            ..Report::default()
        };
        let writes: Vec<TimedWrite> = self.writes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let acknowledged: HashMap<i64, Instant> = writes
            .iter()
            .filter_map(|w| match w.write.outcome {
                crate::history::WriteOutcome::Ok { revision, .. } => Some((revision, w.finished)),
                crate::history::WriteOutcome::Failed(_) => None,
            })
            .collect();
        for client in &self.clients {
            let log = client.snapshot();
            report.errors.extend(log.errors);
            report.reads += log.reads;
            report.rereads += log.rereads;
            report.revisions_checked += log.headers.len();
            report.problems.extend(check_revisions(client.name(), &log.headers));
            for watch in &log.watches {
                report.watches += 1;
                let (problems, matched) = check_watch(&history, client.name(), &watch.segment);
                report.problems.extend(problems);
                report.events_checked += matched;
                for (event, arrived) in watch.segment.events.iter().zip(&watch.arrivals) {
                    if let Some(acked) = acknowledged.get(&event.revision) {
                        let delay = arrived.saturating_duration_since(*acked);
                        report.max_event_delay = report.max_event_delay.max(Some(delay));
                    }
                }
            }
        }
        let plain: Vec<crate::history::Write> = writes.into_iter().map(|w| w.write).collect();
        let check = check_writes(&history, PREFIX.as_bytes(), PREFIX_END.as_bytes(), &plain);
        report.problems.extend(check.problems);
        report.writes_ok = check.ok;
        report.writes_failed = check.failed;
        report.writes_failed_but_applied = check.failed_but_applied;
        report.errors.sort_by_key(|e| e.failed);
        Ok(report)
    }

    /// Waits (up to [`DRAIN_TIMEOUT`]) until every client's latest watch is open and holds
    /// the last event of its range in `history`; false if the bound passed first.
    async fn drain(&self, history: &History) -> bool {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let caught_up = self.clients.iter().all(|client| {
                match client.open_watch_progress() {
                    // Not a watching client, or one that never got to open its watch.
                    None => client.watch_count() == 0,
                    Some(open) => {
                        let last_due = history.range(&open.key, &open.range_end, open.start_revision).last().map(|e| e.revision);
                        last_due.is_none_or(|due| open.last_revision.is_some_and(|got| got >= due))
                    }
                }
            });
            if caught_up {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.load_stop.send(true);
        let _ = self.watch_stop.send(true);
        for task in self.load_tasks.iter().chain(&self.watch_tasks) {
            task.abort();
        }
    }
}

async fn join_bounded(mut task: JoinHandle<()>, bound: Duration) {
    if tokio::time::timeout(bound, &mut task).await.is_err() {
        task.abort();
    }
}

/// `header.revision` of a linearizable range of `/apisix/`.
async fn current_revision(channel: Channel, call_timeout: Duration) -> anyhow::Result<i64> {
    let mut request = tonic::Request::new(RangeRequest {
        key: PREFIX.as_bytes().to_vec(),
        range_end: PREFIX_END.as_bytes().to_vec(),
        count_only: true,
        ..Default::default()
    });
    request.set_timeout(call_timeout);
    let answer = KvClient::new(channel).range(request).await?.into_inner();
    answer.header.map(|h| h.revision).context("Range answer without a header")
}

/// Watcher `i`'s range: all of `/apisix/`, one resource prefix, an id range in one, or one key.
fn watch_range(i: usize, rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let resource = RESOURCES[rng.below(RESOURCES.len() as u64) as usize];
    match i % 4 {
        0 => (PREFIX.as_bytes().to_vec(), PREFIX_END.as_bytes().to_vec()),
        1 => resource_range(resource),
        2 => {
            let from = 1 + rng.below(50);
            (key(resource, from), key(resource, from + 50 + rng.below(300)))
        }
        _ => (key(resource, 1 + rng.below(40)), Vec::new()),
    }
}

/// The verdict of a run: figures, client errors and problems found against etcd's history.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub started: Instant,
    pub elapsed: Duration,
    pub start_revision: i64,
    pub end_revision: i64,
    /// Events under `/apisix` in the history.
    pub history_events: usize,
    /// Events received by watches that matched the history.
    pub events_checked: usize,
    /// Watches opened (a client's watch re-opened after an error counts again).
    pub watches: usize,
    pub writes_ok: usize,
    pub writes_failed: usize,
    /// Failed writes that etcd applied anyway (once).
    pub writes_failed_but_applied: usize,
    pub reads: u64,
    pub rereads: u64,
    pub revisions_checked: usize,
    /// Longest time from a write's acknowledgement to a watch receiving its event.
    pub max_event_delay: Option<Duration>,
    /// Whether every open watch caught up with the history before the bound.
    pub drained: bool,
    /// From stopping the writer to the watches caught up (history read included).
    pub drain_took: Duration,
    /// Every client-visible error, in the order they happened.
    pub errors: Vec<ClientError>,
    pub problems: Vec<Problem>,
}

impl Default for Report {
    fn default() -> Report {
        Report {
            seed: 0,
            started: Instant::now(),
            elapsed: Duration::ZERO,
            start_revision: 0,
            end_revision: 0,
            history_events: 0,
            events_checked: 0,
            watches: 0,
            writes_ok: 0,
            writes_failed: 0,
            writes_failed_but_applied: 0,
            reads: 0,
            rereads: 0,
            revisions_checked: 0,
            max_event_delay: None,
            drained: false,
            drain_took: Duration::ZERO,
            errors: Vec::new(),
            problems: Vec::new(),
        }
    }
}

impl Report {
    /// Errors on reads and watches (everything but the writer's writes).
    pub fn read_and_watch_errors(&self) -> Vec<&ClientError> {
        self.errors.iter().filter(|e| !e.call.is_write()).collect()
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        let count = |f: fn(&ClientError) -> bool| self.errors.iter().filter(|e| f(e)).count();
        format!(
            "errors {} (reads {}, watches {}, writes {}); events checked {} in {} watches (history: {} events, revisions {}..={}); \
             writes ok {}, failed {} ({} of them applied); reads {}, re-reads {}; header revisions checked {}; \
             max event delay {:?}; drained {} in {:?}; problems {}; seed {}",
            self.errors.len(),
            count(|e| e.call.is_unary() && !e.call.is_write()),
            count(|e| !e.call.is_unary()),
            count(|e| e.call.is_write()),
            self.events_checked,
            self.watches,
            self.history_events,
            self.start_revision,
            self.end_revision,
            self.writes_ok,
            self.writes_failed,
            self.writes_failed_but_applied,
            self.reads,
            self.rereads,
            self.revisions_checked,
            self.max_event_delay.unwrap_or_default(),
            if self.drained { "yes" } else { "NO" },
            self.drain_took,
            self.problems.len(),
            self.seed,
        )
    }
}

/// The summary, then every error (with its time since the start) and every problem.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        for error in &self.errors {
            writeln!(f, "  error at +{:?}: {error}", error.failed.saturating_duration_since(self.started))?;
        }
        for problem in &self.problems {
            writeln!(f, "  problem: {problem}")?;
        }
        Ok(())
    }
}
