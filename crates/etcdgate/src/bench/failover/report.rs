//! The failover benchmark's outputs besides the plot: the markdown summary (one row per fault
//! and target, then each cell's victim and errors by cause) and the JSON file (the same
//! figures plus the timelines).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use super::analysis::{Analysis, Delays};
use super::fault::{Fault, Victim};
use super::workload::CallKind;
use super::Target;

/// One measured cell.
pub struct Measured {
    pub victim: Victim,
    pub victim_name: String,
    pub phases: super::analysis::Phases,
    /// How long recovery took (a killed member's restart until healthy).
    pub recovery_took: Duration,
    pub analysis: Analysis,
    /// Last traffic to the victim after the fault began (`None`: none seen), or why it
    /// could not be observed.
    pub victim_traffic: Result<Option<Duration>, String>,
}

/// One (fault, target) cell.
pub struct Cell {
    pub fault: Fault,
    pub target: Target,
    pub outcome: Result<Measured, String>,
}

const READS: [CallKind; 2] = [CallKind::HttpRange, CallKind::GrpcRange];

/// The summary table, then notes per cell.
pub fn markdown(cells: &[Cell]) -> String {
    let mut out = String::new();
    out.push_str(
        "| fault | target | errors from the fault on: reads / puts / watches | victim traffic after fault start | req/s before → during (worst 1 s) \
         | watch delay p50 / p99 before | watch delay p50 / p99 during | longest watch stall (watchers > 1 s) | events missed |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for cell in cells {
        let m = match &cell.outcome {
            Ok(m) => m,
            Err(error) => {
                let _ = writeln!(out, "| {} | {} | failed: {} | | | | | | |", cell.fault.name(), cell.target.name(), one_line(error));
                continue;
            }
        };
        let a = &m.analysis;
        let errors = format!(
            "{} / {} / {}",
            a.errors_of(&READS),
            a.errors_of(&[CallKind::Put]),
            a.errors_of(&[CallKind::Watch])
        );
        let errors = if a.total_errors() > 0 { format!("**{errors}**") } else { errors };
        let traffic = match &m.victim_traffic {
            Ok(None) => "none".to_string(),
            Ok(Some(last)) => format!("until +{:.1} s", last.as_secs_f64()),
            Err(error) => format!("n/a ({})", one_line(error)),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {errors} | {traffic} | {:.0} → {:.0} ({:.0}) | {} | {} | {:.1} s ({}/{}) | {} |",
            cell.fault.name(),
            cell.target.name(),
            a.rps_before,
            a.rps_fault,
            a.rps_fault_min,
            delays(&a.delay_before),
            delays(&a.delay_fault),
            a.longest_stall.as_secs_f64(),
            a.stalled_watchers,
            a.watchers,
            a.missing_events,
        );
    }
    out.push('\n');
    for cell in cells {
        let Ok(m) = &cell.outcome else { continue };
        let _ = write!(
            out,
            "- {} / {}: victim {} (watchers per member {:?}{}), fault at +{:.1} s, recovery at +{:.1} s (took {:.1} s)",
            cell.fault.name(),
            cell.target.name(),
            m.victim_name,
            m.victim.watchers,
            if m.victim.moved_leader { "; leadership moved off it first" } else { "" },
            m.phases.fault_at.as_secs_f64(),
            m.phases.recover_at.as_secs_f64(),
            m.recovery_took.as_secs_f64(),
        );
        let causes: Vec<String> = m
            .analysis
            .causes
            .iter()
            .map(|(cause, by_kind)| {
                let kinds: Vec<String> = by_kind.iter().map(|(kind, n)| format!("{} {n}", kind.name())).collect();
                format!("{cause} ×{} ({})", by_kind.values().sum::<u64>(), kinds.join(", "))
            })
            .collect();
        if causes.is_empty() {
            out.push_str("; no errors");
        } else {
            let _ = write!(out, "; errors: {}", causes.join("; "));
        }
        let before: Vec<String> = m.analysis.causes_before.iter().map(|(cause, n)| format!("{cause} ×{n}")).collect();
        if !before.is_empty() {
            let _ = write!(out, "; before the fault (not counted above): {}", before.join("; "));
        }
        if m.analysis.reference_write_failures > 0 {
            let _ = write!(out, "; reference writer (to the leader): {} failed puts", m.analysis.reference_write_failures);
        }
        out.push('\n');
    }
    out
}

fn delays(d: &Delays) -> String {
    match (d.p50, d.p99) {
        (Some(p50), Some(p99)) => format!("{} / {}", millis(p50), millis(p99)),
        _ => "-".to_string(),
    }
}

fn millis(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else if d >= Duration::from_millis(100) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").replace('|', "/");
    line.chars().take(120).collect()
}

/// Every cell's figures and timelines, under `config`.
pub fn json(config: Value, cells: &[Cell]) -> Value {
    let cells: Vec<Value> = cells
        .iter()
        .map(|cell| {
            let measured = match &cell.outcome {
                Err(error) => json!({ "error": error }),
                Ok(m) => {
                    let a = &m.analysis;
                    let t = &a.timeline;
                    let rates = |counts: &[u32]| counts.iter().map(|&c| t.per_second(c)).collect::<Vec<f64>>();
                    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
                    let delays = |d: &Delays| json!({ "count": d.count, "p50_ms": ms(d.p50), "p99_ms": ms(d.p99) });
                    json!({
                        "victim": m.victim_name,
                        "watchers_per_member": m.victim.watchers,
                        "moved_leader": m.victim.moved_leader,
                        "fault_at_s": m.phases.fault_at.as_secs_f64(),
                        "recover_at_s": m.phases.recover_at.as_secs_f64(),
                        "recovery_took_s": m.recovery_took.as_secs_f64(),
                        "load_end_s": m.phases.load_end.as_secs_f64(),
                        "end_s": m.phases.end.as_secs_f64(),
                        "errors_before_fault": a.causes_before,
                        "errors": a.errors.iter().map(|(k, n)| (k.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                        "errors_by_cause": a.causes.iter().map(|(cause, by_kind)| {
                            (cause.clone(), json!(by_kind.iter().map(|(k, n)| (k.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>()))
                        }).collect::<serde_json::Map<_, _>>(),
                        "victim_traffic_until_s": match &m.victim_traffic {
                            Ok(last) => json!(last.map(|d| d.as_secs_f64())),
                            Err(error) => json!({ "error": error }),
                        },
                        "rps_before": a.rps_before,
                        "rps_fault": a.rps_fault,
                        "rps_fault_worst_second": a.rps_fault_min,
                        "watch_delay_before": delays(&a.delay_before),
                        "watch_delay_fault": delays(&a.delay_fault),
                        "longest_watch_stall_s": a.longest_stall.as_secs_f64(),
                        "stalled_watchers": a.stalled_watchers,
                        "watchers": a.watchers,
                        "missed_events": a.missing_events,
                        "reference_write_failures": a.reference_write_failures,
                        "timeline": {
                            "bucket_s": t.bucket.as_secs_f64(),
                            "ok_per_s": rates(&t.ok),
                            "errors_per_s": rates(&t.errors),
                            "watch_events_per_s": rates(&t.events),
                        },
                    })
                }
            };
            json!({ "fault": cell.fault.name(), "target": cell.target.name(), "measured": measured })
        })
        .collect();
    json!({ "config": config, "cells": cells })
}

#[cfg(test)]
mod tests {
    use super::super::analysis::{Phases, Timeline};
    use super::*;

    fn measured() -> Measured {
        let s = Duration::from_secs;
        let mut analysis = Analysis { watchers: 6, rps_before: 800.0, rps_fault: 400.4, rps_fault_min: 12.0, ..Analysis::default() };
        analysis.errors.insert(CallKind::GrpcRange, 3);
        analysis.causes.entry("client timeout".into()).or_default().insert(CallKind::GrpcRange, 3);
        analysis.causes_before.insert("etcdserver: leader changed".into(), 1);
        analysis.longest_stall = Duration::from_millis(14_800);
        analysis.stalled_watchers = 2;
        analysis.delay_before = Delays { count: 10, p50: Some(Duration::from_millis(3)), p99: Some(Duration::from_millis(12)) };
        analysis.timeline = Timeline { bucket: Duration::from_millis(250), ok: vec![200], errors: vec![0], events: vec![75] };
        Measured {
            victim: Victim { index: 1, watchers: vec![2, 2, 2], moved_leader: true },
            victim_name: "m1".into(),
            phases: Phases { load_start: s(1), fault_at: s(10), recover_at: s(25), load_end: s(30), end: s(31) },
            recovery_took: Duration::from_millis(1500),
            analysis,
            victim_traffic: Ok(Some(Duration::from_millis(14_900))),
        }
    }

    #[test]
    fn the_summary_has_a_row_per_cell_and_notes() {
        let cells = [
            Cell { fault: Fault::Hang, target: Target::Direct, outcome: Ok(measured()) },
            Cell { fault: Fault::Kill, target: Target::Etcdgate, outcome: Err("cluster did not start\nmore".into()) },
        ];
        let text = markdown(&cells);
        assert!(text.contains("| hang | direct | **3 / 0 / 0** | until +14.9 s | 800 → 400 (12) | 3.0 ms / 12.0 ms | - | 14.8 s (2/6) | 0 |"), "{text}");
        assert!(text.contains("| kill | etcdgate | failed: cluster did not start | | | | | | |"), "{text}");
        assert!(text.contains("victim m1 (watchers per member [2, 2, 2]; leadership moved off it first)"), "{text}");
        assert!(text.contains("errors: client timeout ×3 (grpc-range 3); before the fault (not counted above): etcdserver: leader changed ×1\n"), "{text}");

        let value = json(json!({"members": 3}), &cells);
        assert_eq!(value["cells"][0]["measured"]["timeline"]["ok_per_s"][0], 800.0);
        assert_eq!(value["cells"][0]["measured"]["errors_by_cause"]["client timeout"]["grpc-range"], 3);
        assert_eq!(value["cells"][1]["measured"]["error"], "cluster did not start\nmore");
    }
}
