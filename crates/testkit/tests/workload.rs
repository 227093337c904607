//! The workload against real etcd members directly (as APISIX lists them), no fault: every
//! client works without an error and the checker finds nothing. A write from outside the
//! workload is caught by the checker.
//!
//! Readers read linearizable only here: serializable reads answered by different members
//! can go back in revision, which etcd does not promise against.

use std::time::Duration;

use etcdgate_testkit::history::Problem;
use etcdgate_testkit::{run_etcdctl, Cluster, EtcdVersion, Target, Workload, WorkloadConfig};

async fn run(version: EtcdVersion, foreign_write: bool) -> etcdgate_testkit::Report {
    let cluster = Cluster::start(version, 3).await.unwrap();
    let config = WorkloadConfig { serializable_reads: false, ..WorkloadConfig::new(Target::Members(cluster.client_urls())) };
    let workload = Workload::start(config).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    if foreign_write {
        let out = run_etcdctl(version, &cluster.endpoints(), &["put", "/apisix/routes/foreign", "{}"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = workload.finish(&cluster.client_url(0)).await.unwrap();
    eprintln!("{version}: {report}");
    assert!(report.errors.is_empty(), "{version}: client errors:\n{report}");
    assert!(report.drained, "{version}: watches did not catch up:\n{report}");
    assert!(report.writes_ok > 0 && report.reads > 0 && report.events_checked > 0, "{version}: the workload did nothing:\n{report}");
    assert_eq!(report.writes_failed, 0);
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_workload_against_the_members_is_clean() {
    let report = run(EtcdVersion::V3_5, false).await;
    assert!(report.problems.is_empty(), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn v34_workload_against_the_members_is_clean() {
    let report = run(EtcdVersion::V3_4, false).await;
    assert!(report.problems.is_empty(), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_from_outside_the_workload_is_reported() {
    let report = run(EtcdVersion::V3_5, true).await;
    assert!(
        matches!(&report.problems[..], [Problem::UnexplainedEvent { key, .. }] if key == "/apisix/routes/foreign"),
        "{report}"
    );
}
