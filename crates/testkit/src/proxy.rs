//! etcd's own proxies, run as baselines: the L4 `etcd gateway` and the gRPC-only
//! `etcd grpc-proxy`. Flags were checked against `start --help` of 3.4.23 and 3.5.1 (the
//! same for what is used here).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::health::{check_health_blocking, host_port, tcp_connects};
use crate::port::free_port;
use crate::process::{kill_and_reap, log_tail, spawn_logged};
use crate::version::EtcdVersion;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which of etcd's proxies a [`ProxyProcess`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// `etcd gateway start`: TCP pass-through; picks an endpoint per connection.
    Gateway,
    /// `etcd grpc-proxy start`: gRPC only (coalesced watches, cached reads); its HTTP side
    /// serves `/health` and `/metrics`, not the `/v3/*` JSON gateway.
    GrpcProxy,
}

/// A running `etcd gateway` or `etcd grpc-proxy` on 127.0.0.1; SIGKILLed on drop.
pub struct ProxyProcess {
    kind: ProxyKind,
    version: EtcdVersion,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    dir: TempDir,
}

impl ProxyProcess {
    /// `etcd gateway start --listen-addr 127.0.0.1:PORT --endpoints host:port,...`; ready once
    /// its port accepts TCP connections. `endpoints` may carry an `http://` scheme.
    pub fn etcd_gateway(
        version: EtcdVersion,
        endpoints: &[String],
    ) -> anyhow::Result<ProxyProcess> {
        ProxyProcess::start(ProxyKind::Gateway, version, endpoints, &[])
    }

    /// `etcd grpc-proxy start --listen-addr 127.0.0.1:PORT --endpoints http://...,...`; ready
    /// once its `/health` says `"health":"true"` (which needs the cluster behind it).
    pub fn grpc_proxy(version: EtcdVersion, endpoints: &[String]) -> anyhow::Result<ProxyProcess> {
        ProxyProcess::start(ProxyKind::GrpcProxy, version, endpoints, &[])
    }

    /// Like [`ProxyProcess::etcd_gateway`] / [`ProxyProcess::grpc_proxy`] with extra flags,
    /// e.g. `["--retry-delay=1s"]` for the gateway.
    pub fn start(
        kind: ProxyKind,
        version: EtcdVersion,
        endpoints: &[String],
        extra_args: &[&str],
    ) -> anyhow::Result<ProxyProcess> {
        if endpoints.is_empty() {
            bail!("{kind:?} needs at least one endpoint");
        }
        version.check_installed()?;
        let dir = tempfile::Builder::new()
            .prefix("etcdgate-proxy-")
            .tempdir()
            .context("create proxy temp dir")?;
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let bin = version.etcd_bin();
        let mut cmd = Command::new(&bin);
        match kind {
            ProxyKind::Gateway => {
                // The gateway wants host:port, no scheme.
                let eps: Vec<&str> = endpoints.iter().map(|e| host_port(e)).collect();
                cmd.args(["gateway", "start", "--listen-addr", &listen])
                    .args(["--endpoints", &eps.join(",")]);
            }
            ProxyKind::GrpcProxy => {
                let eps: Vec<String> = endpoints
                    .iter()
                    .map(|e| {
                        if e.contains("://") {
                            e.clone()
                        } else {
                            format!("http://{e}")
                        }
                    })
                    .collect();
                // --advertise-client-url: 3.5 dials it for /proxy/health (default
                // 127.0.0.1:23790, which may be someone else). --data-dir: defaults to
                // ./default.proxy.
                cmd.args(["grpc-proxy", "start", "--listen-addr", &listen])
                    .args(["--endpoints", &eps.join(",")])
                    .args(["--advertise-client-url", &listen])
                    .arg("--data-dir")
                    .arg(dir.path().join("data"));
            }
        }
        cmd.args(extra_args).current_dir(dir.path());
        let log = dir.path().join("proxy.log");
        let child = spawn_logged(cmd, &log)
            .with_context(|| format!("spawn {} {kind:?} ({version})", bin.display()))?;
        let mut proxy = ProxyProcess {
            kind,
            version,
            port,
            child: Some(child),
            log,
            dir,
        };
        proxy.wait_ready(READY_TIMEOUT)?;
        Ok(proxy)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = self.url();
        let mut last = String::from("not probed");
        loop {
            let child = self
                .child
                .as_mut()
                .expect("proxy child present while starting");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                bail!(
                    "{} {:?} exited during startup ({status})\n--- tail of {} ---\n{}",
                    self.version,
                    self.kind,
                    self.log.display(),
                    log_tail(&self.log, 40)
                );
            }
            let ready = match self.kind {
                ProxyKind::Gateway => tcp_connects(&self.addr()),
                ProxyKind::GrpcProxy => match check_health_blocking(&url) {
                    Ok(()) => true,
                    Err(e) => {
                        last = format!("{e:#}");
                        false
                    }
                },
            };
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} {:?} at {url} not ready after {timeout:?}: {last}\n--- tail of {} ---\n{}",
                    self.version,
                    self.kind,
                    self.log.display(),
                    log_tail(&self.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    pub fn version(&self) -> EtcdVersion {
        self.version
    }

    /// Pid of the proxy process, `None` once killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the proxy and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// The proxy's stdout+stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("ETCDGATE_KEEP_TMP").is_some_and(|v| !v.is_empty() && v != "0") {
            self.dir.disable_cleanup(true);
            eprintln!(
                "etcdgate-testkit: keeping proxy dir {}",
                self.dir.path().display()
            );
        }
    }
}

impl std::fmt::Debug for ProxyProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyProcess")
            .field("kind", &self.kind)
            .field("version", &self.version)
            .field("url", &self.url())
            .finish()
    }
}
