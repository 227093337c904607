//! The operations console as users reach it, against real etcd: `etcdgate inspect` (table,
//! JSON, exit status), `etcdgate backup` (take, verify, list), and what `etcdgate serve` serves
//! beside etcd's API (`/console`, its JSON API, the inspection's figures in `/metrics`,
//! scheduled backups), and its settings taken from the environment.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{http_get, metric, Etcdgate};
use etcdgate_testkit::{Cluster, EtcdVersion};

fn etcdgate(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_etcdgate")).args(args).output().expect("run etcdgate");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn inspect(endpoints: &str, extra: &[&str]) -> (i32, String) {
    etcdgate(&[&["inspect", "--endpoints", endpoints, "--timeout", "2"], extra].concat())
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn inspect_command_and_console_report_the_cluster() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 3).await.unwrap();
        let endpoints = cluster.endpoints();

        // `etcdgate inspect` on a healthy cluster: status 0, every member, nothing to report.
        let (status, text) = inspect(&endpoints, &[]);
        assert_eq!(status, 0, "{version}: {text}");
        assert!(text.contains("no findings"), "{version}: {text}");
        for i in 0..3 {
            assert!(text.contains(cluster.member_name(i)), "{version}: {text}");
        }
        let (status, json) = inspect(&endpoints, &["--json"]);
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("inspect --json prints JSON");
        assert_eq!((status, parsed["members"].as_array().map(Vec::len)), (0, Some(3)), "{version}: {json}");

        // `etcdgate backup`: take one, verify it, list it.
        let dir = tempfile::tempdir().unwrap();
        let dir_arg = dir.path().to_str().unwrap();
        let (status, taken) = etcdgate(&["backup", "take", "--endpoints", &endpoints, "--dir", dir_arg]);
        assert_eq!(status, 0, "{version}: {taken}");
        let taken: serde_json::Value = serde_json::from_str(&taken).expect("backup take prints its record");
        assert!(taken["verified"].as_str().unwrap().starts_with("HashKV matched"), "{version}: {taken}");
        let file = dir.path().join(taken["file"].as_str().unwrap());
        let (status, verified) = etcdgate(&["backup", "verify", file.to_str().unwrap()]);
        assert_eq!(status, 0, "{version}: {verified}");
        assert!(verified.contains("\"checksum\": \"sha256_verified\"") && verified.contains(&format!("\"hash\": {}", taken["hash"])), "{verified}");
        let (status, listed) = etcdgate(&["backup", "list", "--dir", dir_arg]);
        assert_eq!((status, serde_json::from_str::<serde_json::Value>(&listed).unwrap()), (0, serde_json::json!([taken])), "{version}");
        let damaged = dir.path().join("damaged.db");
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&damaged, bytes).unwrap();
        let (status, refused) = etcdgate(&["backup", "verify", damaged.to_str().unwrap()]);
        assert!(status == 1 && refused.contains("sha256"), "{version}: {refused}");

        // `etcdgate serve` serves the page, the inspection and its metrics, and takes backups.
        let scheduled = tempfile::tempdir().unwrap();
        let gateway = Etcdgate::start_with_args(
            &endpoints,
            &["--inspect-interval", "1", "--backup-dir", scheduled.path().to_str().unwrap(), "--backup-interval", "3600"],
        );
        let page = http_get(gateway.addr(), "/console");
        assert!(page.starts_with("HTTP/1.1 200") && page.contains("text/html") && page.contains("etcdgate console"), "{page}");
        let served = http_get(gateway.addr(), "/console/api/inspect");
        let served: serde_json::Value = serde_json::from_str(body(&served)).expect("the console's API answers JSON");
        assert_eq!(served["members"].as_array().map(Vec::len), Some(3), "{version}: {served}");
        assert_eq!(served["findings"], serde_json::json!([]), "{version}: {served}");
        let names: Vec<String> = (0..3).map(|i| cluster.member_name(i).to_string()).collect();
        let up = |i: usize| metric(gateway.addr(), &format!("etcdgate_etcd_member_up{{member=\"{}\"}}", names[i]));
        assert_eq!((up(0), up(1), up(2)), (Some(1), Some(1), Some(1)), "{version}");
        assert_eq!(metric(gateway.addr(), "etcdgate_etcd_members_consistent"), Some(1), "{version}");
        // The key browser: APISIX's configuration, with a route whose upstream does not exist.
        for (key, value) in [
            ("/apisix/upstreams/1", r#"{"id":"1","type":"roundrobin","nodes":{"127.0.0.1:8080":1}}"#),
            ("/apisix/routes/1", r#"{"id":"1","uri":"/a","upstream_id":"1"}"#),
            ("/apisix/routes/2", r#"{"id":"2","uri":"/b","upstream_id":"9"}"#),
        ] {
            let out = cluster.etcdctl(&["put", key, value]);
            assert!(out.status.success(), "{version}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let browsed = http_get(gateway.addr(), "/console/api/apisix?prefix=/apisix");
        let browsed: serde_json::Value = serde_json::from_str(body(&browsed)).expect("the key browser answers JSON");
        assert_eq!(browsed["totals"]["items"], 3, "{version}: {browsed}");
        assert_eq!(browsed["totals"]["problems"]["critical"], 1, "{version}: {browsed}");
        assert!(browsed.to_string().contains("routes/2"), "{version}: {browsed}");

        let deadline = Instant::now() + Duration::from_secs(30);
        let backups = loop {
            let backups: serde_json::Value = serde_json::from_str(body(&http_get(gateway.addr(), "/console/api/backups"))).unwrap();
            if backups["kept"].as_array().is_some_and(|kept| !kept.is_empty()) {
                break backups;
            }
            assert!(Instant::now() < deadline, "{version}: no scheduled backup: {backups}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(backups["kept"][0]["verified"].as_str().unwrap().starts_with("HashKV matched"), "{version}: {backups}");
        assert!(backups["last_error"].is_null(), "{version}: {backups}");

        // A member killed: the command exits 1 and names it; the console and metrics follow.
        cluster.kill(2);
        let victim = &names[2];
        let (status, text) = inspect(&endpoints, &[]);
        assert_eq!(status, 1, "{version}: {text}");
        assert!(text.contains(&format!("WARNING  {victim}: does not answer")) && text.contains("one more failure"), "{version}: {text}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let served = http_get(gateway.addr(), "/console/api/inspect?fresh=1");
            let served: serde_json::Value = serde_json::from_str(body(&served)).expect("JSON");
            let down = served["members"].as_array().into_iter().flatten().any(|m| m["name"] == victim.as_str() && m["status"].is_null());
            if down && up(2) == Some(0) {
                assert!(served["findings"].to_string().contains("one more failure"), "{version}: {served}");
                break;
            }
            assert!(Instant::now() < deadline, "{version}: the console never saw {victim} down: {served}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test]
async fn serve_takes_every_setting_from_the_environment_too() {
    let (status, help) = etcdgate(&["serve", "--help"]);
    assert_eq!(status, 0, "{help}");
    // Each flag on a line of its own, described on the next.
    let lines: Vec<&str> = help.lines().map(str::trim).collect();
    let flags: Vec<(&str, &str)> =
        lines.windows(2).filter(|pair| pair[0].starts_with("--") && pair[0] != "--help").map(|pair| (pair[0], pair[1])).collect();
    assert!(flags.len() > 20, "{help}");
    for (flag, described) in flags {
        let name = flag.split_whitespace().next().unwrap().trim_start_matches("--");
        let env = format!("[env: ETCDGATE_{}", name.replace('-', "_").to_uppercase());
        // `NAME=value`, or `NAME` alone where the value is hidden (a password).
        assert!(described.contains(&format!("{env}=")) || described.contains(&format!("{env}]")), "--{name} has no {env}: {help}");
    }

    let cluster = Cluster::start(EtcdVersion::V3_5, 1).await.unwrap();
    let addr = format!("127.0.0.1:{}", etcdgate_testkit::free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_etcdgate"));
    command
        .arg("serve")
        .env("ETCDGATE_ENDPOINTS", cluster.endpoints())
        .env("ETCDGATE_LISTEN_ADDR", &addr)
        .env("ETCDGATE_NO_CONSOLE", "true")
        .stderr(std::process::Stdio::null());
    let gateway = Etcdgate::serving(command, addr);
    let (status, answer) = common::http_post(gateway.addr(), "/v3/kv/put", r#"{"key":"ZW52","value":"MQ=="}"#);
    assert_eq!(status, 200, "{answer}");
    assert!(http_get(gateway.addr(), "/console").starts_with("HTTP/1.1 404"), "ETCDGATE_NO_CONSOLE=true serves no console");
    drop(gateway);

    let hidden = Command::new(env!("CARGO_BIN_EXE_etcdgate"))
        .args(["serve", "--help"])
        .env("ETCDGATE_PASSWORD", "never-shown")
        .env("ETCDGATE_USER", "nobody:never-shown")
        .output()
        .expect("run etcdgate");
    assert!(!String::from_utf8_lossy(&hidden.stdout).contains("never-shown"), "the help shows no password from the environment");

    let bad = Command::new(env!("CARGO_BIN_EXE_etcdgate"))
        .arg("serve")
        .env("ETCDGATE_ENDPOINTS", cluster.endpoints())
        .env("ETCDGATE_PROBE_INTERVAL_MS", "soon")
        .output()
        .expect("run etcdgate");
    let said = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{said}");
    assert!(said.contains("invalid value 'soon' for '--probe-interval-ms"), "{said}");
}

/// `serve --config-file`: a YAML file of serve's flag names alone is enough to serve; a flag
/// on the command line, and an environment variable, win over the file; a bad file gets an
/// error that names it and serves nothing; `serve --help` works whatever the file holds.
#[tokio::test]
async fn serve_takes_its_settings_from_a_config_file() {
    let cluster = Cluster::start(EtcdVersion::V3_5, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcdgate.yaml");
    let free_addr = || format!("127.0.0.1:{}", etcdgate_testkit::free_port());
    let in_file = free_addr();
    let endpoints: Vec<String> = cluster.endpoints().split(',').map(|e| format!("  - {e}")).collect();
    std::fs::write(
        &file,
        format!("# etcdgate serve's settings\nendpoints:\n{}\nlisten-addr: {in_file}\nno-console: true\ncache-prefix: [/apisix, /conf]\nprobe-interval-ms: 200\n", endpoints.join("\n")),
    )
    .unwrap();
    let serve = |extra: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_etcdgate"));
        command.args(["serve", "--config-file", file.to_str().unwrap()]).args(extra).envs(env.iter().copied()).stderr(std::process::Stdio::null());
        command
    };

    let gateway = Etcdgate::serving(serve(&[], &[]), in_file.clone());
    let (status, answer) = common::http_post(gateway.addr(), "/v3/kv/put", r#"{"key":"L2NvbmYvYQ==","value":"MQ=="}"#);
    assert_eq!(status, 200, "the endpoints come from the file: {answer}");
    assert!(http_get(gateway.addr(), "/console").starts_with("HTTP/1.1 404"), "no-console: true serves no console");
    drop(gateway);

    let on_command_line = free_addr();
    let gateway = Etcdgate::serving(serve(&["--listen-addr", &on_command_line], &[]), on_command_line);
    let (status, answer) = common::http_post(gateway.addr(), "/v3/kv/range", r#"{"key":"L2NvbmYvYQ=="}"#);
    assert_eq!(status, 200, "the flag wins over the file: {answer}");
    drop(gateway);

    let in_environment = free_addr();
    let gateway = Etcdgate::serving(serve(&[], &[("ETCDGATE_LISTEN_ADDR", &in_environment)]), in_environment);
    let (status, answer) = common::http_post(gateway.addr(), "/v3/kv/range", r#"{"key":"L2NvbmYvYQ=="}"#);
    assert_eq!(status, 200, "the environment wins over the file: {answer}");
    drop(gateway);

    for (content, said) in [
        ("listen-adress: 127.0.0.1:1\n", "unknown setting `listen-adress`"),
        ("probe-interval-ms: soon\n", "invalid value 'soon' for '--probe-interval-ms"),
        ("no-console: maybe\n", "`no-console` is a switch"),
        ("endpoints: [http://127.0.0.1:1\n", "not YAML"),
        ("- listen-addr\n", "must be a mapping"),
    ] {
        std::fs::write(&file, content).unwrap();
        let (status, output) = etcdgate(&["serve", "--config-file", file.to_str().unwrap()]);
        assert_eq!(status, 2, "{content}: {output}");
        assert!(output.contains(said) && output.contains(file.to_str().unwrap()), "{content}: {output}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_etcdgate")).args(["serve", "--help"]).env("ETCDGATE_CONFIG_FILE", &file).output().unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--config-file"), "{help:?}");
}

/// `POST path` with a body, `Content-Type` and, if any, the `Authorization` token: the
/// status code and the JSON answer.
fn post_as(addr: &str, path: &str, sent: &str, content_type: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut headers = vec![("Content-Type", content_type)];
    headers.extend(token.map(|token| ("Authorization", token)));
    let (status, answer) = common::http_post_with(addr, path, &headers, sent);
    (status, serde_json::from_str(&answer).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}")))
}

/// The console's membership changes carry the asker's token, so that etcd's auth decides:
/// refused without one or without the root role, made with root's; its own checks (quorum)
/// hold as on the command line; bodies that are not JSON changes are refused.
#[tokio::test]
async fn the_console_changes_members_with_the_askers_credentials() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 3).await.unwrap();
        let learner = cluster.add_learner().await.unwrap();
        let learner_name = cluster.member_name(learner).to_string();
        for args in [
            &["user", "add", "root:rootpw"][..],
            &["user", "grant-role", "root", "root"],
            &["user", "add", "reader:readerpw"],
            &["auth", "enable"],
        ] {
            etcdgate_testkit::etcdctl_ok(version, &cluster.client_url(0), args).unwrap_or_else(|e| panic!("{version}: {e}"));
        }
        let gateway = Etcdgate::start(&cluster.endpoints());
        let token = |name: &str| {
            let (status, answer) = common::http_post(gateway.addr(), "/v3/auth/authenticate", &format!(r#"{{"name":"{name}","password":"{name}pw"}}"#));
            let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(status, 200, "{version}: {answer}");
            answer["token"].as_str().unwrap().to_string()
        };
        let (root, reader) = (token("root"), token("reader"));
        let change = |body: &str, token: Option<&str>| post_as(gateway.addr(), "/console/api/members", body, "application/json", token);
        let promote = format!(r#"{{"action":"promote","member":"{learner_name}"}}"#);

        let (status, answer) = post_as(gateway.addr(), "/console/api/members", &promote, "text/plain", Some(&root));
        assert_eq!(status, 415, "{version}: a form another site could post: {answer}");
        let (status, answer) = change(r#"{"action":"explode"}"#, Some(&root));
        assert!(status == 400 && answer["error"].as_str().unwrap().starts_with("not a membership change"), "{version}: {answer}");
        for token in [None, Some(reader.as_str())] {
            let (status, answer) = change(&promote, token);
            assert_eq!(status, 409, "{version}: {answer}");
            assert!(answer["error"].as_str().unwrap().starts_with(&format!("etcd refused to promote {learner_name}")), "{version}: {answer}");
        }
        let (status, answer) = change(&promote, Some(&root));
        assert_eq!(status, 200, "{version}: {answer}");
        assert!(answer["steps"][0].as_str().unwrap().starts_with(&format!("promoted {learner_name}")), "{version}: {answer}");
        let listed = etcdgate_testkit::etcdctl_ok(version, &cluster.client_url(0), &["--user", "root:rootpw", "member", "list"]);
        let listed = String::from_utf8_lossy(&listed.unwrap_or_else(|e| panic!("{version}: {e}"))).into_owned();
        assert!(listed.lines().all(|line| line.contains(", false")), "{version}: no learner left: {listed}");

        // Two of four voters down: removing a third that answers would leave one of three.
        cluster.kill(1);
        cluster.kill(2);
        let remove = format!(r#"{{"action":"remove","member":"{learner_name}"}}"#);
        let (status, answer) = change(&remove, Some(&root));
        assert_eq!(status, 409, "{version}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("lose its quorum"), "{version}: {answer}");
    }
}
