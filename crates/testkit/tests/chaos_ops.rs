//! The test kit's chaos operations against real etcd 3.4 and 3.5: a partitioned member (the
//! leader) loses leadership and reports no leader while its client port still answers, and
//! rejoins after heal; partition rules go away on heal, on drop, and when their test process
//! was killed; a removed member stops; the whole cluster stops and comes back with its data.

use std::process::Output;
use std::time::{Duration, Instant};

use etcdgate_testkit::{check_health, run_etcdctl, sweep_dead_partitions, Cluster, EtcdVersion};

const WAIT: Duration = Duration::from_secs(30);

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "etcdctl failed ({}):\nstdout: {stdout}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

/// `iptables -S OUTPUT` lines tagged by this test process for the member with `peer_port`.
fn rules_for(peer_port: u16) -> Vec<String> {
    rules_of(std::process::id(), peer_port)
}

fn rules_of(pid: u32, peer_port: u16) -> Vec<String> {
    let out = std::process::Command::new("iptables").args(["-w", "-S", "OUTPUT"]).output().expect("run iptables");
    let tag = format!("etcdgate-testkit:{pid}:p{peer_port}\"");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&tag)).map(String::from).collect()
}

fn peer_port(cluster: &Cluster, i: usize) -> u16 {
    cluster.peer_url(i).rsplit(':').next().unwrap().parse().unwrap()
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after [`WAIT`].
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn partitioned_leader_loses_leadership_until_healed(version: EtcdVersion) {
    let mut cluster = Cluster::start(version, 3).await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let leader_id = cluster.member_id(leader).await.unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    let started = Instant::now();
    cluster.partition(leader).unwrap();
    assert!(cluster.is_partitioned(leader));
    assert!(!rules_for(peer_port(&cluster, leader)).is_empty(), "no iptables rules while partitioned");

    // The others elect a new leader among themselves...
    let new_leader_id = wait_for("the other members elect no new leader", || async {
        let status = cluster.status(others[0]).await.ok()?;
        (status.leader != 0 && status.leader != leader_id).then_some(status.leader)
    })
    .await;
    let elected = started.elapsed();
    // ...while the cut-off member's client port still answers Status, reporting no leader.
    wait_for("the partitioned member still reports a leader", || async {
        let status = cluster.status(leader).await.ok()?;
        (status.leader == 0).then_some(())
    })
    .await;
    let leaderless = started.elapsed();
    ok(run_etcdctl(version, &cluster.client_url(others[1]), &["put", "during-partition", "1"]));

    cluster.heal(leader).unwrap();
    assert!(!cluster.is_partitioned(leader));
    assert!(rules_for(peer_port(&cluster, leader)).is_empty(), "rules left after heal");
    let healed = Instant::now();
    wait_for("the healed member does not follow the cluster's leader", || async {
        let status = cluster.status(leader).await.ok()?;
        let others_leader = cluster.status(others[0]).await.ok()?.leader;
        (status.leader != 0 && status.leader == others_leader).then_some(())
    })
    .await;
    let rejoined = healed.elapsed();
    let got = wait_for("the healed member never caught up", || async {
        let out = run_etcdctl(version, &cluster.client_url(leader), &["get", "during-partition", "--print-value-only", "--consistency=s"]);
        let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!value.is_empty()).then_some(value)
    })
    .await;
    assert_eq!(got, "1");
    eprintln!(
        "{version}: partitioned leader m{leader}: new leader {new_leader_id:x} after {elected:?}, \
         it reported no leader after {leaderless:?}; after heal it followed the leader again in {rejoined:?}"
    );

    // Dropping a cluster heals what is still partitioned.
    let follower = others[0];
    cluster.partition(follower).unwrap();
    let port = peer_port(&cluster, follower);
    assert!(!rules_for(port).is_empty());
    drop(cluster);
    assert!(rules_for(port).is_empty(), "rules left after the cluster was dropped");
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_partitioned_leader_loses_leadership_until_healed() {
    partitioned_leader_loses_leadership_until_healed(EtcdVersion::V3_5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v34_partitioned_leader_loses_leadership_until_healed() {
    partitioned_leader_loses_leadership_until_healed(EtcdVersion::V3_4).await;
}

/// Not a test on its own: run by `rules_of_a_killed_test_process_are_swept` in a child
/// process, which it SIGKILLs while a member is partitioned.
#[test]
#[ignore = "helper process for rules_of_a_killed_test_process_are_swept"]
fn partition_helper() {
    if std::env::var_os("ETCDGATE_TESTKIT_PARTITION_HELPER").is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cluster = rt.block_on(Cluster::start(EtcdVersion::V3_5, 1)).expect("start cluster");
    cluster.partition(0).unwrap();
    println!("PARTITIONED {} {}", peer_port(&cluster, 0), cluster.data_dir().display());
    std::thread::sleep(Duration::from_secs(60));
}

/// A test process killed outright runs no Drop: its rules stay until the next sweep, which
/// deletes them because their process is gone.
#[test]
fn rules_of_a_killed_test_process_are_swept() {
    use std::io::BufRead;
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "partition_helper", "--ignored", "--nocapture", "--test-threads=1"])
        .env("ETCDGATE_TESTKIT_PARTITION_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(helper.stdout.take().unwrap());
    let (port, dir) = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            let (_, rest) = line.split_once("PARTITIONED ")?;
            let (port, dir) = rest.trim().split_once(' ')?;
            Some((port.parse::<u16>().ok()?, std::path::PathBuf::from(dir)))
        })
        .expect("helper printed its partitioned member's peer port");
    let pid = helper.id();
    assert!(!rules_of(pid, port).is_empty(), "the helper's rules are in place");
    helper.kill().unwrap();
    helper.wait().unwrap();
    assert!(!rules_of(pid, port).is_empty(), "a killed process removes nothing itself");

    let deleted = sweep_dead_partitions().unwrap();
    assert!(rules_of(pid, port).is_empty(), "the dead helper's rules survived the sweep");
    assert!(deleted >= rules_of(pid, port).len());
    // The killed helper could not remove its temp dir.
    let _ = std::fs::remove_dir_all(&dir);
}

async fn remove_member_then_stop_and_start_the_cluster(version: EtcdVersion) {
    let mut cluster = Cluster::start(version, 3).await.unwrap();
    ok(cluster.etcdctl(&["put", "before-stop", "1"]));
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let removed = (leader + 1) % 3;
    cluster.remove_member(removed).await.unwrap();
    assert!(cluster.is_removed(removed));
    assert!(!cluster.is_running(removed));
    let members = ok(cluster.etcdctl(&["member", "list"]));
    assert_eq!(members.lines().count(), 2, "{members}");
    assert!(!members.contains(&format!(", {}, ", cluster.member_name(removed))), "{members}");
    assert!(cluster.restart(removed).await.is_err(), "a removed member must not start again");

    let stopped = Instant::now();
    cluster.stop_all();
    let stop_took = stopped.elapsed();
    for i in 0..3 {
        assert!(!cluster.is_running(i));
        assert!(check_health(&cluster.client_url(i)).await.is_err());
    }
    let started = Instant::now();
    cluster.start_all().await.unwrap();
    let start_took = started.elapsed();
    assert!(!cluster.is_running(removed), "start_all started a removed member");
    let got = ok(cluster.etcdctl(&["get", "before-stop", "--print-value-only"]));
    assert_eq!(got.trim(), "1");
    ok(cluster.etcdctl(&["put", "after-start", "1"]));
    eprintln!("{version}: removed m{removed}; stop_all took {stop_took:?}, start_all {start_took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn v35_remove_member_then_stop_and_start_the_cluster() {
    remove_member_then_stop_and_start_the_cluster(EtcdVersion::V3_5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v34_remove_member_then_stop_and_start_the_cluster() {
    remove_member_then_stop_and_start_the_cluster(EtcdVersion::V3_4).await;
}
