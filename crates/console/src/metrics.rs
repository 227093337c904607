//! The latest inspection's figures for Prometheus: per member whether it answers, how far it
//! trails, its database against its quota; alarms; whether the members' data agree; findings
//! by severity. Members gone from the cluster leave the gauges with the next inspection.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::inspect::{Inspection, Severity};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabel {
    member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlarmLabels {
    member: String,
    alarm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeverityLabel {
    severity: &'static str,
}

#[derive(Default)]
struct ConsoleMetrics {
    up: Family<MemberLabel, Gauge>,
    lag: Family<MemberLabel, Gauge>,
    db_size: Family<MemberLabel, Gauge>,
    db_in_use: Family<MemberLabel, Gauge>,
    quota: Family<MemberLabel, Gauge>,
    alarms: Family<AlarmLabels, Gauge>,
    consistent: Gauge,
    findings: Family<SeverityLabel, Gauge>,
    inspected_at: Gauge,
}

fn metrics() -> &'static ConsoleMetrics {
    static METRICS: OnceLock<ConsoleMetrics> = OnceLock::new();
    METRICS.get_or_init(ConsoleMetrics::default)
}

/// Sets the gauges from `inspection`.
pub fn inspected(inspection: &Inspection) {
    let metrics = metrics();
    for family in [&metrics.up, &metrics.lag, &metrics.db_size, &metrics.db_in_use, &metrics.quota] {
        family.clear();
    }
    metrics.alarms.clear();
    for member in &inspection.members {
        let label = MemberLabel { member: member.label() };
        metrics.up.get_or_create(&label).set(i64::from(member.status.is_some()));
        if let (Some(status), Some(lag)) = (&member.status, inspection.applied_lag(member)) {
            metrics.lag.get_or_create(&label).set(lag as i64);
            metrics.db_size.get_or_create(&label).set(status.db_size);
            metrics.db_in_use.get_or_create(&label).set(status.db_size_in_use);
        }
        if let Some(quota) = member.quota_bytes {
            metrics.quota.get_or_create(&label).set(quota);
        }
    }
    for alarm in inspection.alarms.iter().flatten() {
        let member = inspection.label_of(&alarm.member_id);
        metrics.alarms.get_or_create(&AlarmLabels { member, alarm: alarm.alarm.clone() }).set(1);
    }
    let by_compaction = inspection.hashes_by_compaction();
    let disagree = by_compaction.values().any(|hashes| hashes.len() > 1);
    let compared = inspection.members.iter().filter(|m| m.hash.is_some()).count() > 1;
    metrics.consistent.set(match (compared, disagree) {
        (_, true) => 0,
        (true, false) => 1,
        (false, false) => -1,
    });
    for (severity, name) in [(Severity::Info, "info"), (Severity::Warning, "warning"), (Severity::Critical, "critical")] {
        let count = inspection.findings.iter().filter(|f| f.severity == severity).count();
        metrics.findings.get_or_create(&SeverityLabel { severity: name }).set(count as i64);
    }
    metrics.inspected_at.set((inspection.taken_at_unix_ms / 1000) as i64);
}

/// Adds the console's metrics to `registry`.
pub fn register(registry: &mut Registry) {
    let metrics = metrics();
    registry.register("etcdgate_etcd_member_up", "1 if the member answered the latest inspection's Status", metrics.up.clone());
    registry.register("etcdgate_etcd_member_applied_lag", "Raft entries the member has applied fewer than the most advanced member", metrics.lag.clone());
    registry.register("etcdgate_etcd_member_db_size_bytes", "Size of the member's database file", metrics.db_size.clone());
    registry.register("etcdgate_etcd_member_db_in_use_bytes", "Bytes of the member's database in use (the rest is freed by defragmenting)", metrics.db_in_use.clone());
    registry.register("etcdgate_etcd_member_quota_bytes", "The member's backend quota (writes stop with NOSPACE beyond it)", metrics.quota.clone());
    registry.register("etcdgate_etcd_alarms", "1 for each alarm raised on a member", metrics.alarms.clone());
    registry.register(
        "etcdgate_etcd_members_consistent",
        "1 if the members' HashKV agree at one revision, 0 if they differ, -1 if fewer than two could be compared",
        metrics.consistent.clone(),
    );
    registry.register("etcdgate_inspection_findings", "Findings of the latest inspection by severity", metrics.findings.clone());
    registry.register("etcdgate_inspection_timestamp_seconds", "When the latest inspection was taken (Unix time)", metrics.inspected_at.clone());
}
