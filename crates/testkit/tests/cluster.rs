//! The testkit against real etcd 3.4 and 3.5: clusters start, serve etcdctl, survive a member
//! kill + restart, and leave no process behind when dropped (also on panic).

use std::process::Output;
use std::time::Duration;

use etcdgate_testkit::{check_health, run_etcdctl, Cluster, EtcdVersion, ProxyProcess};

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "etcdctl failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// True while `pid` is an etcd process (checks /proc, so pid reuse by another program is not
/// mistaken for a leftover etcd).
fn etcd_alive(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => String::from_utf8_lossy(&cmd).contains("etcd"),
        Err(_) => false,
    }
}

fn endpoint_status_count(version: EtcdVersion, endpoints: &str) -> usize {
    let out = ok(run_etcdctl(
        version,
        endpoints,
        &["endpoint", "status", "--cluster", "-w", "json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).expect("endpoint status json");
    v.as_array().expect("array").len()
}

async fn single_member(version: EtcdVersion) {
    let cluster = Cluster::builder(version)
        .arg("--max-request-bytes=4096")
        .start()
        .await
        .expect("start cluster");
    assert_eq!(cluster.version(), version);
    assert_eq!(cluster.member_count(), 1);
    assert!(cluster.data_dir().is_dir());
    assert_eq!(cluster.endpoints(), cluster.client_urls()[0]);
    assert!(cluster.client_urls()[0].starts_with("http://127.0.0.1:"));
    ok(run_etcdctl(
        version,
        &cluster.endpoints(),
        &["put", "a", "1"],
    ));
    let got = ok(run_etcdctl(
        version,
        &cluster.endpoints(),
        &["get", "a", "--print-value-only"],
    ));
    assert_eq!(got.trim(), "1");
    assert_eq!(endpoint_status_count(version, &cluster.endpoints()), 1);

    // Builder args reach etcd: a value over --max-request-bytes is refused.
    let big = "x".repeat(8192);
    let out = run_etcdctl(version, &cluster.endpoints(), &["put", "big", &big]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("request is too large"));

    let ctl = run_etcdctl(version, &cluster.endpoints(), &["version"]);
    assert!(String::from_utf8_lossy(&ctl.stdout)
        .contains(&format!("etcdctl version: {}.", version.label())));

    let pid = cluster.pid(0).unwrap();
    let dir = cluster.data_dir().to_path_buf();
    drop(cluster);
    assert!(!etcd_alive(pid), "etcd {pid} survived Drop");
    assert!(!dir.exists(), "{} survived Drop", dir.display());
}

async fn three_members(version: EtcdVersion) {
    let mut cluster = Cluster::start(version, 3).await.expect("start cluster");
    assert_eq!(cluster.member_count(), 3);
    assert_eq!(cluster.endpoints().split(',').count(), 3);
    ok(run_etcdctl(
        version,
        &cluster.endpoints(),
        &["put", "a", "1"],
    ));
    assert_eq!(endpoint_status_count(version, &cluster.endpoints()), 3);
    let leader = cluster.leader().await.expect("a leader");

    // Kill the leader: the other two still serve writes.
    let victim_pid = cluster.pid(leader).unwrap();
    cluster.kill(leader);
    assert!(!etcd_alive(victim_pid));
    assert!(!cluster.is_running(leader));
    assert!(cluster.pid(leader).is_none());
    assert!(check_health(&cluster.client_url(leader)).await.is_err());
    let new_leader = cluster
        .wait_leader(Duration::from_secs(20))
        .await
        .expect("new leader");
    assert_ne!(new_leader, leader);
    ok(cluster.etcdctl(&["put", "b", "2"]));

    // Same data dir and ports: it comes back, catches up, and has the write made meanwhile.
    cluster.restart(leader).await.expect("restart");
    assert!(cluster.is_running(leader));
    let got = ok(run_etcdctl(
        version,
        &cluster.client_url(leader),
        &["get", "b", "--print-value-only", "--consistency=s"],
    ));
    assert_eq!(got.trim(), "2");
    let health = run_etcdctl(
        version,
        &cluster.endpoints(),
        &["endpoint", "health", "--cluster"],
    );
    ok(health);
    assert!(
        cluster.restart(leader).await.is_err(),
        "restarting a running member must fail"
    );

    // A paused member keeps its port but stops answering.
    let other = (leader + 1) % 3;
    cluster.pause(other).unwrap();
    let paused_url = cluster.client_url(other);
    let probe = tokio::time::timeout(Duration::from_millis(500), check_health(&paused_url));
    assert!(
        !matches!(probe.await, Ok(Ok(()))),
        "a paused member answered /health"
    );
    cluster.resume(other).unwrap();
    cluster
        .wait_member_ready(other, Duration::from_secs(30))
        .await
        .unwrap();

    let pids: Vec<u32> = (0..3).map(|i| cluster.pid(i).unwrap()).collect();
    drop(cluster);
    for pid in pids {
        assert!(!etcd_alive(pid), "etcd {pid} survived Drop");
    }
}

async fn proxies(version: EtcdVersion) {
    let cluster = Cluster::start(version, 3).await.expect("start cluster");
    let gw = ProxyProcess::etcd_gateway(version, &cluster.client_urls()).expect("gateway");
    ok(run_etcdctl(
        version,
        &gw.url(),
        &["put", "via-gateway", "1"],
    ));
    let grpc = ProxyProcess::grpc_proxy(version, &cluster.client_urls()).expect("grpc-proxy");
    ok(run_etcdctl(
        version,
        &grpc.url(),
        &["put", "via-grpc-proxy", "1"],
    ));
    let got = ok(run_etcdctl(
        version,
        &grpc.url(),
        &["get", "via-gateway", "--print-value-only"],
    ));
    assert_eq!(got.trim(), "1");
    let pids = [gw.pid().unwrap(), grpc.pid().unwrap()];
    drop(gw);
    drop(grpc);
    for pid in pids {
        assert!(!etcd_alive(pid), "proxy {pid} survived Drop");
    }
}

#[tokio::test]
async fn v34_single_member() {
    single_member(EtcdVersion::V3_4).await;
}

#[tokio::test]
async fn v35_single_member() {
    single_member(EtcdVersion::V3_5).await;
}

#[tokio::test]
async fn v34_three_members_kill_restart() {
    three_members(EtcdVersion::V3_4).await;
}

#[tokio::test]
async fn v35_three_members_kill_restart() {
    three_members(EtcdVersion::V3_5).await;
}

#[tokio::test]
async fn v34_gateway_and_grpc_proxy() {
    proxies(EtcdVersion::V3_4).await;
}

#[tokio::test]
async fn v35_gateway_and_grpc_proxy() {
    proxies(EtcdVersion::V3_5).await;
}

/// A panicking test still kills its cluster: Drop runs during unwinding.
#[test]
fn drop_on_panic_kills_members() {
    let pids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let pids2 = pids.clone();
    let joined = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let cluster = Cluster::start(EtcdVersion::V3_5, 1)
                .await
                .expect("start cluster");
            pids2.lock().unwrap().push(cluster.pid(0).unwrap());
            panic!("deliberate panic with a live cluster");
        })
    })
    .join();
    assert!(joined.is_err(), "the thread was meant to panic");
    let pids = pids.lock().unwrap();
    assert_eq!(pids.len(), 1);
    assert!(
        !etcd_alive(pids[0]),
        "etcd {} survived a panicking test",
        pids[0]
    );
}

#[test]
fn binaries_are_the_right_versions() {
    for v in EtcdVersion::all() {
        v.check_installed().unwrap();
        assert!(
            v.etcd_bin().is_absolute(),
            "{v}: {}",
            v.etcd_bin().display()
        );
        let out = std::process::Command::new(v.etcd_bin())
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("etcd Version: {}.", v.label())),
            "{v}: {text}"
        );
    }
}

#[tokio::test]
async fn failed_start_reports_member_log() {
    let err = Cluster::builder(EtcdVersion::V3_4)
        .arg("--no-such-flag")
        .start()
        .await
        .expect_err("bad flag must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("exited during startup"), "{msg}");
    assert!(msg.contains("no-such-flag"), "{msg}");
}

/// Not a test on its own: run by `killed_test_process_takes_etcd_with_it` in a child process,
/// which it SIGKILLs while the cluster is up.
#[test]
#[ignore = "helper process for killed_test_process_takes_etcd_with_it"]
fn orphan_helper() {
    if std::env::var_os("ETCDGATE_TESTKIT_ORPHAN_HELPER").is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt
        .block_on(Cluster::start(EtcdVersion::V3_4, 1))
        .expect("start cluster");
    println!(
        "ETCD-PID {} {}",
        cluster.pid(0).unwrap(),
        cluster.data_dir().display()
    );
    std::thread::sleep(Duration::from_secs(60));
}

/// A test process killed outright (nextest timeout, Ctrl-C) runs no Drop; PR_SET_PDEATHSIG
/// must still take its etcd processes down.
#[test]
fn killed_test_process_takes_etcd_with_it() {
    use std::io::BufRead;
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "orphan_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ETCDGATE_TESTKIT_ORPHAN_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(helper.stdout.take().unwrap());
    let mut found = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        // libtest prints "test orphan_helper ... " on the same line first.
        if let Some((_, rest)) = line.split_once("ETCD-PID ") {
            let (pid, dir) = rest.trim().split_once(' ').unwrap();
            found = Some((pid.parse::<u32>().unwrap(), std::path::PathBuf::from(dir)));
            break;
        }
    }
    let (pid, dir) = found.expect("helper printed its etcd pid");
    assert!(etcd_alive(pid));
    helper.kill().unwrap();
    helper.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while etcd_alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "etcd {pid} outlived its killed test process"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The killed helper could not remove its temp dir.
    std::fs::remove_dir_all(&dir).unwrap();
}
