//! etcdgate under test, as a child process: `<this binary> serve --endpoints ... --listen-addr
//! 127.0.0.1:PORT`, so the gateway has its own process and runtime and does not share CPU
//! scheduling with the load generator. Its output goes to a log in a temp dir (the tail is
//! shown when it fails to start); it is SIGKILLed on drop, and by the kernel if this process
//! dies first (`PR_SET_PDEATHSIG`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, RangeRequest};
use tempfile::TempDir;

use super::watchers::observe;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long etcdgate may take to load its cached prefixes after it answers.
const CACHE_LOAD_TIMEOUT: Duration = Duration::from_secs(30);

pub struct EtcdgateProcess {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl EtcdgateProcess {
    /// Starts etcdgate in front of `endpoints`, with `args` after its own and `env` added to its environment, and waits until its port accepts connections and
    /// a serializable Range of `probe_key` succeeds through it.
    ///
    /// Must be called from a thread that outlives the child (the `PR_SET_PDEATHSIG` signal
    /// fires when the forking *thread* exits): `etcdgate bench` calls it from the main thread.
    pub async fn start(
        endpoints: &[String],
        args: &[&str],
        env: &[(String, String)],
        probe_key: &[u8],
    ) -> anyhow::Result<EtcdgateProcess> {
        let exe = std::env::current_exe().context("locating the etcdgate binary")?;
        let dir = tempfile::Builder::new().prefix("etcdgate-bench-").tempdir().context("create temp dir")?;
        let log = dir.path().join("etcdgate.log");
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let port = etcdgate_testkit::free_port();
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .arg("--listen-addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env_remove("ETCDGATE_ENDPOINTS")
            .env_remove("ETCDGATE_LISTEN_ADDR")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("spawn {} serve", exe.display()))?;
        let mut gate = EtcdgateProcess { child: Some(child), port, log, _dir: dir };
        gate.wait_ready(probe_key).await?;
        Ok(gate)
    }

    async fn wait_ready(&mut self, probe_key: &[u8]) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    bail!(
                        "etcdgate exited during startup ({status})\n--- {} ---\n{}",
                        self.log.display(),
                        self.log_tail()
                    );
                }
            }
            let last = match self.probe(probe_key).await {
                Ok(()) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "etcdgate at {} not ready after {READY_TIMEOUT:?}: {last}\n--- {} ---\n{}",
                    self.url(),
                    self.log.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn probe(&self, probe_key: &[u8]) -> anyhow::Result<()> {
        tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.context("TCP connect")?;
        let mut kv = KvClient::connect(self.url()).await.context("gRPC connect")?;
        let request = RangeRequest { key: probe_key.to_vec(), serializable: true, ..Default::default() };
        match tokio::time::timeout(Duration::from_secs(2), kv.range(request)).await.context("range timed out")? {
            // etcd answered through etcdgate: its auth is on (`etcdgate bench --auth`).
            Err(status) if status.message() == "etcdserver: user name is empty" => Ok(()),
            answer => answer.map(drop).context("range"),
        }
    }

    /// Waits until its `/metrics` says its cached prefix was loaded (with one prefix: every
    /// event from then on is in its history).
    pub async fn wait_cache_loaded(&self) -> anyhow::Result<()> {
        let url = self.url();
        let deadline = Instant::now() + CACHE_LOAD_TIMEOUT;
        loop {
            let page = observe::metrics_page(&url).await.unwrap_or_default();
            if observe::metric(&page, "etcdgate_cache_loads_total").is_some_and(|loads| loads >= 1.0) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("etcdgate at {url} has not loaded its cache after {CACHE_LOAD_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last 4 KiB of its log.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(len.saturating_sub(4096)));
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for EtcdgateProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
