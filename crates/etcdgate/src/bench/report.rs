//! Turning measured cells into the markdown table, the per-workload verdict against the
//! targets (etcdgate ≥ 0.9× direct etcd throughput, ≥ 1.0× grpc-proxy on gRPC, p50 overhead
//! ≤ 100 µs), and the optional JSON file.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::load::{CellResult, Workload};

/// Throughput etcdgate must reach, as a fraction of direct etcd.
pub const MIN_RATIO_VS_DIRECT: f64 = 0.9;
/// Throughput etcdgate must reach, as a fraction of etcd's grpc-proxy (gRPC workloads).
pub const MIN_RATIO_VS_GRPC_PROXY: f64 = 1.0;
/// Largest p50 latency etcdgate may add over direct etcd, µs.
pub const MAX_P50_OVERHEAD_US: i64 = 100;

/// Where a cell's requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// The members' client URLs, round-robin.
    Direct,
    /// `etcd gateway start` (L4 TCP splice).
    EtcdGateway,
    /// `etcd grpc-proxy start` (gRPC only).
    GrpcProxy,
    /// etcdgate, as a child process (caching only its default prefix, `/apisix`).
    Etcdgate,
    /// etcdgate caching the benchmark's keys too (`--cache-prefix /`): its reads against
    /// grpc-proxy's cached ones.
    EtcdgateCached,
}

impl TargetKind {
    /// The targets of the watcher benchmarks (where etcdgate always caches what is watched).
    pub const ALL: [TargetKind; 4] =
        [TargetKind::Direct, TargetKind::EtcdGateway, TargetKind::GrpcProxy, TargetKind::Etcdgate];
    /// The targets of the pass-through benchmark.
    pub const PASS_THROUGH: [TargetKind; 5] = [
        TargetKind::Direct,
        TargetKind::EtcdGateway,
        TargetKind::GrpcProxy,
        TargetKind::Etcdgate,
        TargetKind::EtcdgateCached,
    ];

    pub fn parse(s: &str) -> Result<TargetKind, String> {
        TargetKind::PASS_THROUGH.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<_> = TargetKind::PASS_THROUGH.iter().map(|t| t.name()).collect();
            format!("unknown target {s:?}; one of {}", names.join(", "))
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::EtcdGateway => "etcd-gateway",
            TargetKind::GrpcProxy => "grpc-proxy",
            TargetKind::Etcdgate => "etcdgate",
            TargetKind::EtcdgateCached => "etcdgate-cached",
        }
    }

    /// Whether this target can serve `workload` (grpc-proxy has no HTTP/JSON gateway).
    pub fn serves(self, workload: Workload) -> bool {
        workload.is_grpc() || self != TargetKind::GrpcProxy
    }
}

/// CPU time spent during a cell's measured window, µs per successful request.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuPerRequest {
    /// All etcd members together.
    pub etcd: Option<f64>,
    /// The proxy in the path (etcd gateway, grpc-proxy or etcdgate); `None` for direct.
    pub proxy: Option<f64>,
    /// This process: the load generator.
    pub loadgen: Option<f64>,
}

/// One cell's numbers.
pub struct Measured {
    pub ok: u64,
    pub errors: u64,
    pub warmup_errors: u64,
    pub first_error: Option<String>,
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub mean_us: f64,
    pub max_us: u64,
    pub cpu: CpuPerRequest,
}

impl Measured {
    pub fn new(result: &CellResult, cpu: CpuPerRequest) -> Measured {
        let h = &result.hist;
        let (p50_us, p99_us, mean_us, max_us) = if h.is_empty() {
            (0, 0, 0.0, 0)
        } else {
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.mean(), h.max())
        };
        Measured {
            ok: result.ok,
            errors: result.errors,
            warmup_errors: result.warmup_errors,
            first_error: result.first_error.clone(),
            rps: result.rps(),
            p50_us,
            p99_us,
            mean_us,
            max_us,
            cpu,
        }
    }

    fn usable(&self) -> bool {
        self.ok > 0
    }
}

/// One (workload, target) cell; `measured` is `None` when the target cannot serve it.
pub struct Cell {
    pub workload: Workload,
    pub target: TargetKind,
    pub measured: Option<Measured>,
}

/// How etcdgate did on one workload against the targets.
pub struct Verdict {
    pub workload: Workload,
    /// `etcdgate` or `etcdgate-cached`.
    pub target: TargetKind,
    pub ratio_vs_direct: Option<f64>,
    pub ratio_vs_grpc_proxy: Option<f64>,
    pub p50_overhead_us: Option<i64>,
    pub errors: u64,
}

impl Verdict {
    pub fn meets_direct(&self) -> Option<bool> {
        self.ratio_vs_direct.map(|r| r >= MIN_RATIO_VS_DIRECT)
    }
    pub fn meets_grpc_proxy(&self) -> Option<bool> {
        self.ratio_vs_grpc_proxy.map(|r| r >= MIN_RATIO_VS_GRPC_PROXY)
    }
    pub fn meets_p50(&self) -> Option<bool> {
        self.p50_overhead_us.map(|o| o <= MAX_P50_OVERHEAD_US)
    }
}

pub struct Report {
    pub cells: Vec<Cell>,
}

impl Report {
    fn find(&self, workload: Workload, target: TargetKind) -> Option<&Measured> {
        self.cells
            .iter()
            .find(|c| c.workload == workload && c.target == target)
            .and_then(|c| c.measured.as_ref())
            .filter(|m| m.usable())
    }

    fn workloads(&self) -> Vec<Workload> {
        let mut out: Vec<Workload> = Vec::new();
        for cell in &self.cells {
            if !out.contains(&cell.workload) {
                out.push(cell.workload);
            }
        }
        out
    }

    fn ratio_vs(&self, cell: &Cell, base: TargetKind) -> Option<f64> {
        let m = cell.measured.as_ref()?;
        let b = self.find(cell.workload, base)?;
        Some(m.rps / b.rps)
    }

    fn p50_overhead(&self, cell: &Cell) -> Option<i64> {
        let m = cell.measured.as_ref().filter(|m| m.usable())?;
        let b = self.find(cell.workload, TargetKind::Direct)?;
        Some(m.p50_us as i64 - b.p50_us as i64)
    }

    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut out = Vec::new();
        for target in [TargetKind::Etcdgate, TargetKind::EtcdgateCached] {
            for workload in self.workloads() {
                let Some(cell) = self.cells.iter().find(|c| c.workload == workload && c.target == target) else {
                    continue;
                };
                out.push(Verdict {
                    workload,
                    target,
                    ratio_vs_direct: self.ratio_vs(cell, TargetKind::Direct),
                    ratio_vs_grpc_proxy: if workload.is_grpc() {
                        self.ratio_vs(cell, TargetKind::GrpcProxy)
                    } else {
                        None
                    },
                    p50_overhead_us: self.p50_overhead(cell),
                    errors: cell.measured.as_ref().map_or(0, |m| m.errors),
                });
            }
        }
        out
    }

    /// The markdown table, the verdict lines and any error messages.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| workload | target | req/s | p50 µs | p99 µs | errors | ratio vs direct (req/s) | ratio vs grpc-proxy | p50 overhead vs direct µs | CPU µs/req etcd | CPU µs/req proxy | CPU µs/req loadgen |\n",
        );
        out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for cell in &self.cells {
            let Some(m) = &cell.measured else {
                let _ = writeln!(
                    out,
                    "| {} | {} | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |",
                    cell.workload.name(),
                    cell.target.name()
                );
                continue;
            };
            let errors = if m.warmup_errors > 0 {
                format!("**{}** (+{} in warm-up)", m.errors, m.warmup_errors)
            } else if m.errors > 0 {
                format!("**{}**", m.errors)
            } else {
                "0".to_string()
            };
            let vs_proxy =
                if cell.workload.is_grpc() { ratio(self.ratio_vs(cell, TargetKind::GrpcProxy)) } else { "n/a".into() };
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell.workload.name(),
                cell.target.name(),
                m.rps,
                m.p50_us,
                m.p99_us,
                errors,
                ratio(self.ratio_vs(cell, TargetKind::Direct)),
                vs_proxy,
                self.p50_overhead(cell).map_or("n/a".into(), |o| format!("{o:+}")),
                cpu(m.cpu.etcd),
                cpu(m.cpu.proxy),
                cpu(m.cpu.loadgen),
            );
        }
        out.push('\n');
        for v in self.verdicts() {
            let mut parts = Vec::new();
            parts.push(match v.ratio_vs_direct {
                Some(r) => format!("{r:.2}× direct (≥{MIN_RATIO_VS_DIRECT}×: {})", met(v.meets_direct())),
                None => "vs direct: n/a (no usable measurement)".into(),
            });
            if v.workload.is_grpc() {
                parts.push(match v.ratio_vs_grpc_proxy {
                    Some(r) => {
                        format!("{r:.2}× grpc-proxy (≥{MIN_RATIO_VS_GRPC_PROXY:.1}×: {})", met(v.meets_grpc_proxy()))
                    }
                    None => "vs grpc-proxy: n/a (no usable measurement)".into(),
                });
            }
            parts.push(match v.p50_overhead_us {
                Some(o) => format!("p50 overhead {o:+} µs (≤{MAX_P50_OVERHEAD_US} µs: {})", met(v.meets_p50())),
                None => "p50 overhead: n/a".into(),
            });
            if v.errors > 0 {
                parts.push(format!("**{} errors**", v.errors));
            }
            let _ = writeln!(out, "- {} on **{}**: {}", v.target.name(), v.workload.name(), parts.join("; "));
        }
        let cached = self.cells.iter().any(|c| {
            c.workload == Workload::RangeSerializable && c.target == TargetKind::GrpcProxy && c.measured.is_some()
        });
        if cached {
            out.push_str(
                "\nNote: grpc-proxy answers serializable Range from its own cache (see its etcd CPU column), \
                 so range-serializable compares etcdgate's pass-through with a cache hit; etcdgate-cached \
                 answers it from etcdgate's watch cache.\n",
            );
        }
        let failing: Vec<&Cell> =
            self.cells.iter().filter(|c| c.measured.as_ref().is_some_and(|m| m.first_error.is_some())).collect();
        if !failing.is_empty() {
            out.push_str("\nErrors (first message per cell):\n");
            for cell in failing {
                let m = cell.measured.as_ref().expect("filtered on measured");
                let _ = writeln!(
                    out,
                    "- {} via {}: {}",
                    cell.workload.name(),
                    cell.target.name(),
                    m.first_error.as_deref().unwrap_or_default()
                );
            }
        }
        out
    }

    /// Everything in the table, machine-readable.
    pub fn json(&self, config: Value) -> Value {
        let cells: Vec<Value> = self
            .cells
            .iter()
            .map(|cell| match &cell.measured {
                None => json!({
                    "workload": cell.workload.name(),
                    "target": cell.target.name(),
                    "skipped": true,
                }),
                Some(m) => json!({
                    "workload": cell.workload.name(),
                    "target": cell.target.name(),
                    "skipped": false,
                    "ok": m.ok,
                    "errors": m.errors,
                    "warmup_errors": m.warmup_errors,
                    "first_error": m.first_error,
                    "rps": m.rps,
                    "p50_us": m.p50_us,
                    "p99_us": m.p99_us,
                    "mean_us": m.mean_us,
                    "max_us": m.max_us,
                    "ratio_vs_direct": self.ratio_vs(cell, TargetKind::Direct),
                    "ratio_vs_grpc_proxy": if cell.workload.is_grpc() { self.ratio_vs(cell, TargetKind::GrpcProxy) } else { None },
                    "p50_overhead_us": self.p50_overhead(cell),
                    "cpu_us_per_req": {
                        "etcd": m.cpu.etcd,
                        "proxy": m.cpu.proxy,
                        "loadgen": m.cpu.loadgen,
                    },
                }),
            })
            .collect();
        let verdicts: Vec<Value> = self
            .verdicts()
            .iter()
            .map(|v| {
                json!({
                    "workload": v.workload.name(),
                    "ratio_vs_direct": v.ratio_vs_direct,
                    "meets_ratio_vs_direct": v.meets_direct(),
                    "ratio_vs_grpc_proxy": v.ratio_vs_grpc_proxy,
                    "meets_ratio_vs_grpc_proxy": v.meets_grpc_proxy(),
                    "p50_overhead_us": v.p50_overhead_us,
                    "meets_p50_overhead": v.meets_p50(),
                    "errors": v.errors,
                })
            })
            .collect();
        json!({
            "config": config,
            "targets": {
                "min_ratio_vs_direct": MIN_RATIO_VS_DIRECT,
                "min_ratio_vs_grpc_proxy": MIN_RATIO_VS_GRPC_PROXY,
                "max_p50_overhead_us": MAX_P50_OVERHEAD_US,
            },
            "cells": cells,
            "verdicts": verdicts,
        })
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("{r:.2}"))
}

fn cpu(c: Option<f64>) -> String {
    c.map_or("-".into(), |c| format!("{c:.0}"))
}

pub(super) fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "n/a",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rps: f64, p50_us: u64, errors: u64, first_error: Option<&str>) -> Option<Measured> {
        Some(Measured {
            ok: (rps * 5.0) as u64,
            errors,
            warmup_errors: 0,
            first_error: first_error.map(str::to_string),
            rps,
            p50_us,
            p99_us: p50_us * 4,
            mean_us: p50_us as f64,
            max_us: p50_us * 10,
            cpu: CpuPerRequest::default(),
        })
    }

    #[test]
    fn table_shows_ratios_errors_and_verdicts() {
        let w = Workload::RangeLinearizable;
        let report = Report {
            cells: vec![
                Cell { workload: w, target: TargetKind::Direct, measured: measured(1000.0, 500, 0, None) },
                Cell { workload: w, target: TargetKind::GrpcProxy, measured: measured(400.0, 900, 0, None) },
                Cell {
                    workload: w,
                    target: TargetKind::Etcdgate,
                    measured: measured(950.0, 550, 3, Some("gRPC Unavailable: boom")),
                },
                Cell { workload: Workload::HttpRange, target: TargetKind::GrpcProxy, measured: None },
                Cell { workload: w, target: TargetKind::EtcdgateCached, measured: measured(1200.0, 450, 0, None) },
            ],
        };
        let text = report.markdown();
        assert!(text.contains("| range-linearizable | etcdgate | 950 | 550 | 2200 | **3** | 0.95 | 2.38 | +50 |"), "{text}");
        assert!(text.contains("| http-range | grpc-proxy | n/a |"), "{text}");
        assert!(text.contains("0.95× direct (≥0.9×: met)"), "{text}");
        assert!(text.contains("2.38× grpc-proxy (≥1.0×: met)"), "{text}");
        assert!(text.contains("p50 overhead +50 µs (≤100 µs: met)"), "{text}");
        assert!(text.contains("**3 errors**"), "{text}");
        assert!(text.contains("- range-linearizable via etcdgate: gRPC Unavailable: boom"), "{text}");
        assert!(text.contains("- etcdgate-cached on **range-linearizable**: 1.20× direct (≥0.9×: met); 3.00× grpc-proxy"), "{text}");
        let verdict = &report.verdicts()[0];
        assert_eq!(verdict.meets_direct(), Some(true));
        assert_eq!((verdict.target, report.verdicts()[1].target), (TargetKind::Etcdgate, TargetKind::EtcdgateCached));
        let json = report.json(serde_json::Value::Null);
        assert_eq!(json["cells"][2]["errors"], 3);
        assert_eq!(json["cells"][3]["skipped"], true);
    }
}
