//! The chaos matrix (issue 3): each fault under the APISIX-like workload of the test kit
//! (HTTP/JSON config sync, gRPC watchers, readers, one writer with a known sequence), all of
//! it through one etcdgate in front of a 3-member cluster. The workload runs ~10 s, the
//! fault is injected, it lasts ~12 s, the cluster recovers where that applies, ~5 s more,
//! then the workload stops and is checked against etcd's history, read directly from a
//! member:
//!
//! - no client saw an error on a read or a watch (writes may fail; when the whole cluster
//!   is stopped, reads and writes under way while it is down may fail, nothing else);
//! - every watch got exactly the events etcd recorded for its range, in order, no gap, no
//!   duplicate; every write was applied at most once, every acknowledged one exactly once;
//!   header revisions never went back for any client;
//! - a learner got no client request (etcd's own `grpc_server_*` counters on it show nothing
//!   but the `Status` probes and `MemberList` syncs).
//!
//! Each case prints its figures, when the fault and the recovery happened, and etcdgate's
//! member state changes.
//!
//! Every case runs twice: with etcdgate's defaults, where reads and watches of `/apisix`
//! (everything the workload touches) are served from its watch cache, and `_forwarded`,
//! with `--no-cache`, where every read and watch goes to a member (as for keys outside the
//! cache prefixes, or with auth on).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use etcdgate_testkit::{Cluster, EtcdVersion, Report, Target, Workload, WorkloadConfig};

use common::{http_get, Etcdgate};

/// Workload before the fault.
const BEFORE_FAULT: Duration = Duration::from_secs(10);
/// How long the fault lasts before recovery (a stopped cluster stays down for less).
const DURING_FAULT: Duration = Duration::from_secs(12);
const CLUSTER_DOWN: Duration = Duration::from_secs(5);
/// Workload after recovery.
const AFTER_RECOVERY: Duration = Duration::from_secs(5);
/// Longest wait for the cluster to get a leader or a member to be ready again.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGKILL a follower; restarted later.
    KillFollower,
    /// SIGKILL the leader; restarted later.
    KillLeader,
    /// SIGSTOP a follower; SIGCONT later.
    PauseFollower,
    /// SIGSTOP the leader; SIGCONT later.
    PauseLeader,
    /// Cut a follower off from its peers (its client port stays reachable); healed later.
    PartitionFollower,
    /// Cut the leader off from its peers; healed later.
    PartitionLeader,
    /// A learner that is never promoted, listed in etcdgate's `--endpoints`, the whole run;
    /// the fault is a follower killed (so only two voters are healthy), restarted later.
    Learner,
    /// `MemberRemove` of a follower; it stays removed.
    RemoveFollower,
    /// Every member stopped (SIGTERM), then started again with the same data.
    StopCluster,
}

impl Fault {
    fn hits_leader(self) -> bool {
        matches!(self, Fault::KillLeader | Fault::PauseLeader | Fault::PartitionLeader)
    }
}

/// How etcdgate answers the workload's reads and watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Serving {
    /// From its watch cache (the default for `/apisix`).
    Cached,
    /// Forwarded to a member (`--no-cache`).
    Forwarded,
}

async fn chaos(version: EtcdVersion, fault: Fault, serving: Serving) {
    let case_started = Instant::now();
    let mut cluster = Cluster::start(version, 3).await.unwrap();
    let learner = match fault {
        Fault::Learner => Some(cluster.add_learner().await.unwrap()),
        _ => None,
    };
    let mut members = Vec::new();
    for i in 0..cluster.member_count() {
        members.push(format!("m{i}={:x}", cluster.member_id(i).await.unwrap()));
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("etcdgate.log");
    let flags: &[&str] = match serving {
        Serving::Cached => &[],
        Serving::Forwarded => &["--no-cache"],
    };
    let gateway = Etcdgate::start_logged_with_args(&cluster.endpoints(), &log, flags);
    let workload = Workload::start(WorkloadConfig::new(Target::Gateway(gateway.url()))).await.unwrap();
    let workload_started = workload.started();
    let since_start = |at: Instant| at.saturating_duration_since(workload_started);
    tokio::time::sleep(BEFORE_FAULT).await;

    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let victim = if fault.hits_leader() { leader } else { (leader + 1) % 3 };
    let fault_began = Instant::now();
    match fault {
        Fault::KillFollower | Fault::KillLeader | Fault::Learner => cluster.kill(victim),
        Fault::PauseFollower | Fault::PauseLeader => cluster.pause(victim).unwrap(),
        Fault::PartitionFollower | Fault::PartitionLeader => cluster.partition(victim).unwrap(),
        Fault::RemoveFollower => cluster.remove_member(victim).await.unwrap(),
        Fault::StopCluster => cluster.stop_all(),
    }
    let fault_done = Instant::now();
    tokio::time::sleep(if fault == Fault::StopCluster { CLUSTER_DOWN } else { DURING_FAULT }).await;

    let recovery_began = Instant::now();
    match fault {
        Fault::KillFollower | Fault::KillLeader | Fault::Learner => cluster.restart(victim).await.unwrap(),
        Fault::PauseFollower | Fault::PauseLeader => {
            cluster.resume(victim).unwrap();
            cluster.wait_member_ready(victim, WAIT).await.unwrap();
        }
        Fault::PartitionFollower | Fault::PartitionLeader => {
            cluster.heal(victim).unwrap();
            cluster.wait_member_ready(victim, WAIT).await.unwrap();
        }
        Fault::RemoveFollower => {}
        Fault::StopCluster => cluster.start_all().await.unwrap(),
    }
    let recovered = Instant::now();
    tokio::time::sleep(AFTER_RECOVERY).await;

    let history_member = (0..3).find(|&i| cluster.is_running(i) && !cluster.is_removed(i)).unwrap();
    let report = workload.finish(&cluster.client_url(history_member)).await.unwrap();
    let errors_between = match (report.errors.first(), report.errors.last()) {
        (Some(first), Some(last)) => format!("errors between +{:.1?} and +{:.1?}", since_start(first.failed), since_start(last.failed)),
        _ => "no errors".to_string(),
    };
    let what = match fault {
        Fault::StopCluster => "all members".to_string(),
        _ => format!("m{victim} ({})", if victim == leader { "leader" } else { "follower" }),
    };
    eprintln!(
        "chaos {version} {fault:?} {serving:?}: {what}: fault at +{:.1?} (took {:.1?}), recovery at +{:.1?} (took {:.1?}); {errors_between}; case took {:.1?}\n  members {}\n  {}",
        since_start(fault_began),
        fault_done - fault_began,
        since_start(recovery_began),
        recovered - recovery_began,
        case_started.elapsed(),
        members.join(" "),
        report.summary(),
    );
    print_member_log(&log);

    check(&report, fault, fault_began, recovered, &log);
    if let Some(learner) = learner {
        check_learner_untouched(&cluster, learner);
    }
}

/// The pass criteria of every case.
fn check(report: &Report, fault: Fault, fault_began: Instant, recovered: Instant, log: &Path) {
    let context = || format!("{fault:?}:\n{report}\n--- etcdgate log ---\n{}", std::fs::read_to_string(log).unwrap_or_default());
    assert!(report.problems.is_empty(), "problems found against etcd's history in {}", context());
    assert!(report.drained, "watches never caught up with etcd's history in {}", context());
    assert!(report.writes_ok > 0 && report.events_checked > 0 && report.reads > 0, "the workload did nothing in {}", context());
    let unexpected: Vec<_> = match fault {
        // Calls under way while the cluster is down may fail; watches must not.
        Fault::StopCluster => report.errors.iter().filter(|e| !e.call.is_unary() || !e.overlaps(fault_began, recovered)).collect(),
        _ => report.read_and_watch_errors(),
    };
    assert!(unexpected.is_empty(), "{} client errors not allowed in {}", unexpected.len(), context());
}

/// etcd's own counters on the learner: only `Status` (etcdgate's probes) and `MemberList`
/// (its member sync) may have reached it.
fn check_learner_untouched(cluster: &Cluster, learner: usize) {
    let url = cluster.client_url(learner);
    let metrics = http_get(url.trim_start_matches("http://"), "/metrics");
    let calls: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("grpc_server_handled_total{") || line.starts_with("grpc_server_started_total{"))
        .filter(|line| line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()).is_some_and(|n| n > 0.0))
        .collect();
    let method = |line: &str| line.split("grpc_method=\"").nth(1).and_then(|rest| rest.split('"').next()).map(str::to_string);
    let other: Vec<&&str> = calls.iter().filter(|line| !matches!(method(line).as_deref(), Some("Status" | "MemberList"))).collect();
    eprintln!("  learner m{learner}: gRPC calls it served: {calls:?}");
    assert!(!calls.is_empty(), "no gRPC counter on the learner at all (was it probed?):\n{metrics}");
    assert!(other.is_empty(), "the learner served client requests: {other:?}");
}

/// etcdgate's member state changes (for the record).
fn print_member_log(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    for line in text.lines().filter(|l| l.contains("member state changed")) {
        eprintln!("    {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_kill_follower() {
    chaos(EtcdVersion::V3_5, Fault::KillFollower, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_kill_follower_forwarded() {
    chaos(EtcdVersion::V3_5, Fault::KillFollower, Serving::Forwarded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_kill_leader() {
    chaos(EtcdVersion::V3_5, Fault::KillLeader, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_kill_leader_forwarded() {
    chaos(EtcdVersion::V3_5, Fault::KillLeader, Serving::Forwarded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_pause_follower() {
    chaos(EtcdVersion::V3_5, Fault::PauseFollower, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_pause_follower_forwarded() {
    chaos(EtcdVersion::V3_5, Fault::PauseFollower, Serving::Forwarded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_pause_leader() {
    chaos(EtcdVersion::V3_5, Fault::PauseLeader, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_pause_leader_forwarded() {
    chaos(EtcdVersion::V3_5, Fault::PauseLeader, Serving::Forwarded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_partition_follower() {
    chaos(EtcdVersion::V3_5, Fault::PartitionFollower, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_partition_follower_forwarded() {
    chaos(EtcdVersion::V3_5, Fault::PartitionFollower, Serving::Forwarded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_partition_leader() {
    chaos(EtcdVersion::V3_5, Fault::PartitionLeader, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_partition_leader_forwarded() {
    chaos(EtcdVersion::V3_5, Fault::PartitionLeader, Serving::Forwarded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_learner_never_promoted() {
    chaos(EtcdVersion::V3_5, Fault::Learner, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_learner_never_promoted_forwarded() {
    chaos(EtcdVersion::V3_5, Fault::Learner, Serving::Forwarded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_remove_follower() {
    chaos(EtcdVersion::V3_5, Fault::RemoveFollower, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_remove_follower_forwarded() {
    chaos(EtcdVersion::V3_5, Fault::RemoveFollower, Serving::Forwarded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_stop_and_start_cluster() {
    chaos(EtcdVersion::V3_5, Fault::StopCluster, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_stop_and_start_cluster_forwarded() {
    chaos(EtcdVersion::V3_5, Fault::StopCluster, Serving::Forwarded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v34_kill_follower() {
    chaos(EtcdVersion::V3_4, Fault::KillFollower, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v34_kill_follower_forwarded() {
    chaos(EtcdVersion::V3_4, Fault::KillFollower, Serving::Forwarded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v34_kill_leader() {
    chaos(EtcdVersion::V3_4, Fault::KillLeader, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v34_kill_leader_forwarded() {
    chaos(EtcdVersion::V3_4, Fault::KillLeader, Serving::Forwarded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v34_partition_follower() {
    chaos(EtcdVersion::V3_4, Fault::PartitionFollower, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v34_partition_follower_forwarded() {
    chaos(EtcdVersion::V3_4, Fault::PartitionFollower, Serving::Forwarded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v34_partition_leader() {
    chaos(EtcdVersion::V3_4, Fault::PartitionLeader, Serving::Cached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v34_partition_leader_forwarded() {
    chaos(EtcdVersion::V3_4, Fault::PartitionLeader, Serving::Forwarded).await;
}
