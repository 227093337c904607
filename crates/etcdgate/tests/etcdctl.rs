//! `etcdctl` (the real one, 3.4 and 3.5) pointed at the `etcdgate` binary behaves as it does
//! pointed at etcd: the same commands print the same output, apart from lease IDs and the
//! endpoint address, which are normalised.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use etcdgate_testkit::{Cluster, EtcdVersion};

mod common;
use common::Etcdgate;

fn etcdctl(version: EtcdVersion, endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(version.etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// stdout of a command that must succeed, with hex lease IDs replaced by `<lease>`.
fn ok_output(version: EtcdVersion, endpoint: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = etcdctl(version, endpoint, args, stdin);
    assert!(
        out.status.success(),
        "etcdctl {args:?} against {endpoint} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    normalize(&String::from_utf8_lossy(&out.stdout))
}

fn normalize(text: &str) -> String {
    text.split_inclusive(|c: char| !c.is_ascii_hexdigit())
        .map(|piece| {
            let digits = piece.trim_end_matches(|c: char| !c.is_ascii_hexdigit());
            if digits.len() >= 12 && digits.chars().any(|c| c.is_ascii_alphabetic()) {
                piece.replacen(digits, "<lease>", 1)
            } else {
                piece.to_string()
            }
        })
        .collect()
}

/// Runs `args` against etcd directly and through etcdgate; both must print the same.
fn same(version: EtcdVersion, direct: &str, gateway: &str, args: &[&str], stdin: Option<&str>) -> String {
    let expected = ok_output(version, direct, args, stdin);
    let got = ok_output(version, gateway, args, stdin);
    assert_eq!(got, expected, "etcdctl {args:?} differs through etcdgate");
    got
}

/// Starts `etcdctl args` in the background, runs `trigger`, then returns what it printed
/// within `wait`.
fn background_output(version: EtcdVersion, endpoint: &str, args: &[&str], trigger: impl FnOnce(), wait: Duration) -> String {
    let mut child = Command::new(version.etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    trigger();
    std::thread::sleep(wait);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    normalize(&String::from_utf8_lossy(&out.stdout))
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_through_etcdgate_matches_etcd() {
    for version in EtcdVersion::all() {
        let cluster = Cluster::start(version, 3).await.unwrap();
        let gateway = Etcdgate::start(&cluster.endpoints());
        let direct = cluster.client_urls()[0].clone();
        let gw = gateway.addr().to_string();
        let v = version;

        assert_eq!(same(v, &direct, &gw, &["put", "/k1", "v1"], None), "OK\n");
        assert_eq!(same(v, &direct, &gw, &["get", "/k1"], None), "/k1\nv1\n");
        same(v, &direct, &gw, &["get", "/", "--prefix", "--keys-only"], None);
        assert_eq!(ok_output(v, &gw, &["put", "/k2", "v2"], None), "OK\n");
        assert_eq!(ok_output(v, &direct, &["del", "/k2"], None), "1\n");
        assert_eq!(ok_output(v, &gw, &["del", "/k2"], None), "0\n");

        let txn = "value(\"/k1\") = \"v1\"\n\nput /k3 yes\n\nput /k3 no\n\n";
        assert_eq!(ok_output(v, &gw, &["txn"], Some(txn)), "SUCCESS\n\nOK\n");
        assert_eq!(ok_output(v, &direct, &["get", "/k3", "--print-value-only"], None), "yes\n");

        let watched = background_output(v, &gw, &["watch", "/w"], || {
            ok_output(v, &direct, &["put", "/w", "hello"], None);
        }, Duration::from_millis(700));
        assert_eq!(watched, "PUT\n/w\nhello\n");

        let granted = ok_output(v, &gw, &["lease", "grant", "60"], None);
        assert_eq!(granted, "lease <lease> granted with TTL(60s)\n");
        let id = etcdctl(v, &gw, &["lease", "list"], None);
        let id = String::from_utf8_lossy(&id.stdout).lines().nth(1).unwrap_or_default().trim().to_string();
        assert!(!id.is_empty(), "lease list shows the granted lease");
        assert_eq!(ok_output(v, &gw, &["lease", "keep-alive", "--once", &id], None).trim(), "lease <lease> keepalived with TTL(60)");
        assert!(ok_output(v, &gw, &["lease", "timetolive", &id], None).starts_with("lease <lease> granted with TTL(60s)"));
        assert_eq!(ok_output(v, &gw, &["lease", "revoke", &id], None), "lease <lease> revoked\n");

        same(v, &direct, &gw, &["member", "list"], None);
        let status = ok_output(v, &gw, &["endpoint", "status"], None);
        assert!(status.starts_with(&format!("{gw}, ")), "endpoint status names the gateway: {status}");
        assert!(status.contains(&format!(", {}.", version.label())), "endpoint status reports the etcd version: {status}");
        let health = etcdctl(v, &gw, &["endpoint", "health"], None);
        let health = format!("{}{}", String::from_utf8_lossy(&health.stdout), String::from_utf8_lossy(&health.stderr));
        assert!(health.contains(&format!("{gw} is healthy")), "endpoint health printed {health:?}");

        assert_eq!(ok_output(v, &gw, &["lock", "mylock", "echo", "locked"], None), "locked\n");
        let elected = background_output(v, &gw, &["elect", "myelection", "p1"], || {}, Duration::from_millis(500));
        assert!(elected.starts_with("myelection/<lease>\np1\n"), "elect printed {elected:?}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snap.db");
        let file = file.to_str().unwrap();
        let saved = ok_output(v, &gw, &["snapshot", "save", file], None);
        assert!(saved.contains(&format!("Snapshot saved at {file}")), "snapshot save printed {saved:?}");
        assert!(std::fs::metadata(file).unwrap().len() > 0);
    }
}
