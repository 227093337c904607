//! etcd client libraries besides etcdctl, pointed at etcdgate, see what they see pointed at
//! etcd: python-etcd3 (gRPC), etcd3gw (OpenStack's client of the HTTP/JSON gateway) and
//! node's etcd3 (gRPC through grpc-js). Each runs a script from `tests/clients/` (puts, every
//! Range option the library has, txns, leases, watches from a start revision with prev_kv,
//! locks, elections, members, status and etcd's errors) once against a member and once
//! through etcdgate, each with a key prefix of its own, inside the cached prefix `/apisix`
//! and outside it, on etcd 3.4 and 3.5. The two outputs must be the same once the prefixes
//! are named alike. The libraries come from `scripts/install-clients.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use etcdgate_testkit::{Cluster, EtcdVersion};

mod common;
use common::Etcdgate;

/// A client library's script and how to run it.
#[derive(Clone, Copy, Debug)]
enum Client {
    PythonEtcd3,
    PythonEtcd3gw,
    NodeEtcd3,
}

impl Client {
    const ALL: [Client; 3] = [Client::PythonEtcd3, Client::PythonEtcd3gw, Client::NodeEtcd3];

    fn script(self) -> &'static str {
        match self {
            Client::PythonEtcd3 => "python_etcd3.py",
            Client::PythonEtcd3gw => "python_etcd3gw.py",
            Client::NodeEtcd3 => "node_etcd3.js",
        }
    }

    fn command(self, libraries: &Path) -> Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients").join(self.script());
        let mut command = match self {
            Client::PythonEtcd3 | Client::PythonEtcd3gw => Command::new(libraries.join("venv/bin/python")),
            Client::NodeEtcd3 => {
                let mut node = Command::new("node");
                node.env("NODE_PATH", libraries.join("node_modules"));
                node
            }
        };
        command.arg(script);
        command
    }

    /// What the script printed against `endpoint` (`host:port`) with its keys under
    /// `prefix`, with `prefix` written as `<prefix>`.
    fn run(self, libraries: &Path, endpoint: &str, prefix: &str) -> String {
        let output = self.command(libraries).args([endpoint, prefix]).output().expect("run the client script");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{} against {endpoint} failed ({}):\n{stdout}\n{}",
            self.script(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout.replace(prefix, "<prefix>")
    }
}

/// Where `scripts/install-clients.sh` put the libraries.
fn libraries() -> PathBuf {
    let dir = match std::env::var_os("ETCDGATE_CLIENTS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/etcdgate-clients"),
    };
    assert!(
        dir.join("venv/bin/python").exists() && dir.join("node_modules/etcd3").exists(),
        "the client libraries are not installed in {}: run scripts/install-clients.sh",
        dir.display()
    );
    dir
}

/// The line of python-etcd3's output for its watch from a revision etcd has compacted.
const WATCH_COMPACTED: &str = "watch compacted ";

async fn clients_see_through_etcdgate_what_they_see_on_etcd(version: EtcdVersion) {
    let libraries = libraries();
    let cluster = Cluster::start(version, 3).await.unwrap();
    let gateway = Etcdgate::start(&cluster.endpoints());
    let direct = cluster.client_url(0).trim_start_matches("http://").to_string();
    for client in Client::ALL {
        for (place, cached) in [("/clients", false), ("/apisix/clients", true)] {
            let name = format!("{client:?}").to_lowercase();
            let expected = client.run(&libraries, &direct, &format!("{place}/direct-{name}"));
            let got = client.run(&libraries, gateway.addr(), &format!("{place}/etcdgate-{name}"));
            let (expected, got) = if cached { without_watch_compacted(&expected, &got) } else { (expected, got) };
            assert_eq!(got, expected, "{} through etcdgate, keys under {place}, etcd {}", client.script(), version.label());
        }
    }
}

/// The outputs without python-etcd3's watch from a compacted revision, which etcd cancels
/// and etcdgate serves from its history when the keys are cached (checked here).
fn without_watch_compacted(expected: &str, got: &str) -> (String, String) {
    let line = |output: &str| output.lines().find(|line| line.starts_with(WATCH_COMPACTED)).map(str::to_string);
    if let (Some(direct), Some(through)) = (line(expected), line(got)) {
        assert!(direct.contains("RevisionCompactedError"), "etcd cancels the watch: {direct}");
        assert!(through.contains("PutEvent"), "etcdgate serves the watch from its history: {through}");
    }
    let drop_line = |output: &str| output.lines().filter(|line| !line.starts_with(WATCH_COMPACTED)).collect::<Vec<_>>().join("\n");
    (drop_line(expected), drop_line(got))
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_on_etcd_3_4() {
    clients_see_through_etcdgate_what_they_see_on_etcd(EtcdVersion::V3_4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_on_etcd_3_5() {
    clients_see_through_etcdgate_what_they_see_on_etcd(EtcdVersion::V3_5).await;
}
