//! Shared by the binary's integration tests: the `etcdgate serve` binary as a child process.
//! (Each test binary uses part of it.)
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcdgate_testkit::free_port;

/// The `etcdgate serve` binary as a child process, killed on drop.
pub struct Etcdgate {
    child: Child,
    addr: String,
}

impl Etcdgate {
    pub fn start(endpoints: &str) -> Etcdgate {
        Etcdgate::spawn(endpoints, |command| {
            command.stderr(Stdio::null());
        })
    }

    /// Like [`Etcdgate::start`], with extra `serve` flags.
    pub fn start_with_args(endpoints: &str, args: &[&str]) -> Etcdgate {
        Etcdgate::spawn(endpoints, |command| {
            command.args(args).stderr(Stdio::null());
        })
    }

    /// Like [`Etcdgate::start`], with etcdgate's log (stderr, `etcdgate=info`, no colours)
    /// appended to `log`, for tests that read its member state changes.
    pub fn start_logged(endpoints: &str, log: &std::path::Path) -> Etcdgate {
        Etcdgate::start_logged_with_args(endpoints, log, &[])
    }

    /// Like [`Etcdgate::start_logged`], with extra `serve` flags.
    pub fn start_logged_with_args(endpoints: &str, log: &std::path::Path, args: &[&str]) -> Etcdgate {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open etcdgate log");
        Etcdgate::spawn(endpoints, |command| {
            command.args(args).env("RUST_LOG", "etcdgate=info,warn").env("NO_COLOR", "1").stderr(file);
        })
    }

    fn spawn(endpoints: &str, configure: impl FnOnce(&mut Command)) -> Etcdgate {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_etcdgate"));
        command.args(["serve", "--endpoints", endpoints, "--listen-addr", &addr]);
        configure(&mut command);
        Etcdgate::serving(command, addr)
    }

    /// Runs `command`, an `etcdgate serve` set up (by flags or environment) to listen on
    /// `addr`, and waits until it does.
    pub fn serving(mut command: Command, addr: String) -> Etcdgate {
        let child = command.stdout(Stdio::null()).spawn().expect("start etcdgate");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "etcdgate did not start listening on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Etcdgate { child, addr }
    }

    /// Sends it `signal` (`-STOP` and `-CONT` to pause and resume it, `-TERM` to stop it as a
    /// service manager does).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {signal} {}", self.child.id());
    }

    /// Waits until it has exited: how it ended.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for etcdgate")
    }

    /// `127.0.0.1:PORT`, as etcdctl takes it.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`, as tonic takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Etcdgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with these extra `headers` on a connection of its own
/// (`Connection: close`); returns the whole response.
fn http_exchange(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let headers: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A plain HTTP/1.1 GET; returns the whole response.
pub fn http_get(addr: &str, path: &str) -> String {
    http_exchange(addr, "GET", path, &[], "")
}

/// `POST path body`: the status code and the body of the answer.
pub fn http_post(addr: &str, path: &str, body: &str) -> (u16, String) {
    http_post_with(addr, path, &[], body)
}

/// [`http_post`] with extra `headers`.
pub fn http_post_with(addr: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let response = http_exchange(addr, "POST", path, headers, body);
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of one series in etcdgate's `/metrics`, e.g.
/// `etcdgate_member_requests_total{member="http://127.0.0.1:2379"}`; `None` if it is not there.
pub fn metric(addr: &str, series: &str) -> Option<u64> {
    let prefix = format!("{series} ");
    http_get(addr, "/metrics").lines().find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

/// How many client calls etcdgate has sent to the member at `member_url` (0 before the first).
pub fn member_requests(addr: &str, member_url: &str) -> u64 {
    metric(addr, &format!("etcdgate_member_requests_total{{member=\"{member_url}\"}}")).unwrap_or(0)
}

/// A watch of every key under `prefix`, from now.
pub fn watch_prefix(prefix: &[u8]) -> etcdgate_proto::etcdserverpb::WatchRequest {
    use etcdgate_proto::etcdserverpb::{watch_request::RequestUnion, WatchCreateRequest, WatchRequest};
    let mut range_end = prefix.to_vec();
    if let Some(last) = range_end.last_mut() {
        *last += 1;
    }
    WatchRequest { request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest { key: prefix.to_vec(), range_end, ..Default::default() })) }
}

/// Puts `writes` values through etcdgate at `url`, one after the other, alternating between a
/// key it caches by default (`/apisix/routes/1`) and one it does not (`/outside/1`).
pub fn spawn_alternating_writes(url: String, writes: usize) -> tokio::task::JoinHandle<()> {
    use etcdgate_proto::etcdserverpb::{kv_client::KvClient, PutRequest};
    tokio::spawn(async move {
        let mut kv = KvClient::connect(url).await.unwrap();
        for i in 0..writes {
            let key = if i % 2 == 0 { "/apisix/routes/1" } else { "/outside/1" };
            kv.put(PutRequest { key: key.into(), value: format!("{i}").into(), ..Default::default() }).await.unwrap();
        }
    })
}
