//! B6, watchers behind a compaction. After a reconnect, APISIX watches from the revision after
//! the last one it saw; when etcd has compacted that revision meanwhile, the watch is canceled
//! with `compact_revision` and APISIX reads everything again (on every instance at once).
//!
//! Per target: a full read of `/apisix/` through it over HTTP/JSON (revision R), `writes` puts
//! under `/apisix/routes/` straight to etcd, a compaction at the last one's revision, then
//! `watchers` APISIX-like HTTP/JSON watches through the target from R+1, opened at once. Each
//! either gets `compact_revision` (a full re-read needed) or exactly the `writes` events, in
//! order (caught up from the target's event history).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use bytes::Bytes;
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, CompactionRequest, PutRequest};
use hdrhistogram::Histogram;

use super::observe;
use super::watch_conn::{http_create_body, WatchConn};
use super::{host_port, ms, RunningTarget, WATCH_KEY, WATCH_RANGE_END};
use crate::bench::report::{met, TargetKind};

/// How long a watcher may take to be told it is compacted or to catch up.
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// Value of each write (an APISIX route is a few hundred bytes of JSON).
const VALUE_BYTES: usize = 256;

#[derive(Clone, Debug)]
pub struct BehindConfig {
    pub watchers: usize,
    pub writes: usize,
}

/// One target's numbers.
pub struct BehindCell {
    pub target: TargetKind,
    pub watchers: usize,
    /// The revision the watchers asked to start from (R+1).
    pub watched_from: i64,
    pub compacted_at: i64,
    /// Watchers canceled with `compact_revision`: each needs a full re-read.
    pub rereads: usize,
    /// Watchers that got every write, exactly once, in order.
    pub caught_up: usize,
    /// Watchers that failed, timed out, or got events other than the writes.
    pub failed: usize,
    pub first_error: Option<String>,
    /// From opening until the watcher knew it was compacted or had caught up, µs.
    pub outcome_p50_us: Option<u64>,
    pub outcome_p99_us: Option<u64>,
}

/// What one watcher ended with.
enum Outcome {
    Compacted,
    CaughtUp,
    Failed(String),
}

/// Runs the scenario on `target`; writes and the compaction go to etcd at `etcd_url`.
pub async fn run(target: &RunningTarget, etcd_url: &str, config: &BehindConfig) -> anyhow::Result<BehindCell> {
    let addr: SocketAddr = host_port(&target.url).parse().with_context(|| format!("address of {}", target.url))?;
    let read_revision = full_read(&target.url).await?;
    let mut kv = KvClient::connect(etcd_url.to_string()).await.with_context(|| format!("connecting to {etcd_url}"))?;
    let mut written = Vec::with_capacity(config.writes);
    for j in 0..config.writes {
        let request = PutRequest {
            key: format!("/apisix/routes/behind-{j:04}").into_bytes(),
            value: vec![b'r'; VALUE_BYTES],
            ..Default::default()
        };
        let response = kv.put(request).await.context("put")?.into_inner();
        written.push(response.header.map_or(0, |h| h.revision));
    }
    let compacted_at = written.last().copied().unwrap_or(read_revision);
    if written.first().is_some_and(|&first| first != read_revision + 1) {
        bail!("something else wrote between the full read at {read_revision} and the first write at {written:?}");
    }
    kv.compact(CompactionRequest { revision: compacted_at, physical: true }).await.context("compact")?;

    let body = http_create_body(WATCH_KEY, WATCH_RANGE_END, read_revision + 1);
    let written = Arc::new(written);
    let watchers: Vec<_> = (0..config.watchers)
        .map(|_| {
            let (body, written) = (body.clone(), written.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = tokio::time::timeout(OUTCOME_TIMEOUT, follow(addr, body, &written))
                    .await
                    .unwrap_or_else(|_| Outcome::Failed(format!("no outcome within {OUTCOME_TIMEOUT:?}")));
                (outcome, started.elapsed())
            })
        })
        .collect();
    let mut cell = BehindCell {
        target: target.kind,
        watchers: config.watchers,
        watched_from: read_revision + 1,
        compacted_at,
        rereads: 0,
        caught_up: 0,
        failed: 0,
        first_error: None,
        outcome_p50_us: None,
        outcome_p99_us: None,
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
    for watcher in watchers {
        let (outcome, took) = watcher.await.unwrap_or_else(|e| (Outcome::Failed(format!("task: {e}")), Duration::ZERO));
        match outcome {
            Outcome::Compacted => cell.rereads += 1,
            Outcome::CaughtUp => cell.caught_up += 1,
            Outcome::Failed(e) => {
                cell.failed += 1;
                cell.first_error.get_or_insert(e);
                continue;
            }
        }
        hist.saturating_record((took.as_micros() as u64).max(1));
    }
    if !hist.is_empty() {
        cell.outcome_p50_us = Some(hist.value_at_quantile(0.5));
        cell.outcome_p99_us = Some(hist.value_at_quantile(0.99));
    }
    Ok(cell)
}

/// APISIX's full read, `POST /v3/kv/range` of the watched range; the revision it was read at.
async fn full_read(url: &str) -> anyhow::Result<i64> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = format!(r#"{{"key":"{}","range_end":"{}"}}"#, b64.encode(WATCH_KEY), b64.encode(WATCH_RANGE_END));
    let answer = observe::call(http::Method::POST, url, "/v3/kv/range", Bytes::from(body))
        .await
        .map_err(anyhow::Error::msg)
        .context("full read")?;
    let answer: serde_json::Value = serde_json::from_slice(&answer).context("full read answer")?;
    let revision = &answer["header"]["revision"];
    revision
        .as_str()
        .and_then(|r| r.parse().ok())
        .or_else(|| revision.as_i64())
        .with_context(|| format!("full read answer without header.revision: {answer}"))
}

/// One watcher from R+1: compacted, or every write in `written` exactly once and in order.
async fn follow(addr: SocketAddr, body: Bytes, written: &[i64]) -> Outcome {
    let (mut conn, mut message) = match WatchConn::open_http(addr, body).await {
        Ok(opened) => opened,
        Err(e) => return Outcome::Failed(e),
    };
    let mut seen = 0;
    loop {
        if message.compact_revision > 0 {
            return Outcome::Compacted;
        }
        for kv in message.events.iter().filter_map(|event| event.kv.as_ref()) {
            if written.get(seen) != Some(&kv.mod_revision) {
                return Outcome::Failed(format!(
                    "event at revision {} where revision {:?} was expected",
                    kv.mod_revision,
                    written.get(seen)
                ));
            }
            seen += 1;
        }
        if seen == written.len() {
            return Outcome::CaughtUp;
        }
        if message.canceled {
            return Outcome::Failed(format!("canceled: {:?}", message.cancel_reason));
        }
        message = match conn.next().await {
            Ok(Some(message)) => message,
            Ok(None) => return Outcome::Failed(format!("stream ended after {seen} events")),
            Err(e) => return Outcome::Failed(e),
        };
    }
}

/// The table, etcdgate's verdict and any errors.
pub fn markdown(cells: &[Result<BehindCell, (TargetKind, String)>]) -> String {
    let mut out = String::new();
    out.push_str(
        "| target | watchers | watched from revision | compacted at | full re-reads needed | caught up from history | \
         failed | outcome p50 ms | outcome p99 ms |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for cell in cells {
        let cell = match cell {
            Ok(cell) => cell,
            Err((target, e)) => {
                let _ = writeln!(out, "| {} | {e} | | | | | | | |", target.name());
                continue;
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell.target.name(),
            cell.watchers,
            cell.watched_from,
            cell.compacted_at,
            cell.rereads,
            cell.caught_up,
            if cell.failed == 0 { "0".to_string() } else { format!("**{}**", cell.failed) },
            cell.outcome_p50_us.map_or("-".into(), ms),
            cell.outcome_p99_us.map_or("-".into(), ms),
        );
    }
    out.push('\n');
    if let Some(gate) = cells.iter().flatten().find(|c| c.target == TargetKind::Etcdgate) {
        let _ = writeln!(
            out,
            "- etcdgate: {} of {} watchers behind the compaction need a full re-read (target 0: {})",
            gate.rereads,
            gate.watchers,
            met(Some(gate.rereads == 0 && gate.failed == 0)),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_counts_rereads_and_gives_the_verdict() {
        let cell = |target, rereads, caught_up| BehindCell {
            target,
            watchers: 100,
            watched_from: 11,
            compacted_at: 110,
            rereads,
            caught_up,
            failed: 0,
            first_error: None,
            outcome_p50_us: Some(1500),
            outcome_p99_us: Some(4000),
        };
        let text = markdown(&[Ok(cell(TargetKind::Direct, 100, 0)), Ok(cell(TargetKind::Etcdgate, 0, 100))]);
        assert!(text.contains("| direct | 100 | 11 | 110 | 100 | 0 | 0 | 1.5 | 4.0 |"), "{text}");
        assert!(text.contains("| etcdgate | 100 | 11 | 110 | 0 | 100 | 0 |"), "{text}");
        assert!(text.contains("0 of 100 watchers behind the compaction need a full re-read (target 0: met)"), "{text}");
    }
}
