//! An N-member etcd cluster on 127.0.0.1 in a temporary directory.
//!
//! Layout of the directory: `m{i}/` is member i's `--data-dir`, `m{i}.log` its stdout+stderr
//! (appended to across restarts). Ports are picked with [`free_port`] and kept for the
//! cluster's lifetime, so a restarted member comes back at the same URLs.
//!
//! The faults a chaos test injects are methods here: kill (SIGKILL), pause/resume
//! (SIGSTOP/SIGCONT), partition/heal (iptables, see [`crate::partition`]), remove a member,
//! add a learner, stop the whole cluster and start it again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tempfile::TempDir;

use etcdgate_proto::etcdserverpb::{MemberListRequest, MemberRemoveRequest, StatusRequest, StatusResponse};

use crate::grpc::{cluster_client, maintenance_client};
use crate::health::{check_health, http_get};
use crate::partition::{member_gid, partition, sweep_dead_partitions_once, PartitionRules, PeerSide};
use crate::port::free_port;
use crate::process::{kill_and_reap, log_tail, signal, spawn_logged, terminate_and_reap, wait_stopped};
use crate::tls::ClusterTls;
use crate::version::{run_etcdctl, EtcdVersion};

const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 40;

/// Configures a [`Cluster`] before starting it: `Cluster::builder(v).members(3).arg("..").start()`.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    version: EtcdVersion,
    members: usize,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    ready_timeout: Duration,
    binary: Option<PathBuf>,
    tls: bool,
}

impl ClusterBuilder {
    /// Members serve clients over TLS only, and ask them for a certificate (etcd's
    /// `--client-cert-auth`); the CA and certificates are made for the cluster, see
    /// [`Cluster::tls`]. [`Cluster::client_url`] is then `https://`.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Runs this `etcd` binary instead of the version's own (`etcdgate dev` uses the one on
    /// PATH). Its reported version is then not checked against the builder's.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Number of members (default 1).
    pub fn members(mut self, n: usize) -> Self {
        self.members = n;
        self
    }

    /// An extra flag for every member, e.g. `"--auto-compaction-retention=1"`. Added after the
    /// flags this crate sets, so it wins over them (etcd takes the last value of a flag).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Several extra flags for every member, see [`ClusterBuilder::arg`].
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for every member. (Inherited `ETCD_*` variables are removed.)
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// How long `start` and `restart` wait for members to report healthy (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts all members concurrently and waits until every one answers `/health` with
    /// `"health":"true"` and reports the expected server version.
    pub async fn start(self) -> anyhow::Result<Cluster> {
        if self.members == 0 {
            bail!("a cluster needs at least one member");
        }
        if self.binary.is_none() {
            self.version.check_installed()?;
        }
        // Rules a killed test left behind could block this cluster's ports.
        sweep_dead_partitions_once();
        let dir = tempfile::Builder::new()
            .prefix("etcdgate-cluster-")
            .tempdir()
            .context("create cluster temp dir")?;
        let members: Vec<Member> = (0..self.members)
            .map(|i| Member::new(dir.path(), format!("m{i}"), free_port(), None, self.tls))
            .collect();
        let tls = if self.tls { Some(ClusterTls::create(dir.path())?) } else { None };
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            version: self.version,
            members,
            initial_cluster,
            token: unique_token(),
            args: self.args,
            envs: self.envs,
            ready_timeout: self.ready_timeout,
            binary: self.binary.clone().unwrap_or_else(|| self.version.etcd_bin()),
            tls,
            dir,
        };
        // On any error below, dropping `cluster` kills what was started.
        for i in 0..cluster.members.len() {
            cluster.spawn_member(i)?;
        }
        let all: Vec<usize> = (0..cluster.members.len()).collect();
        cluster
            .wait_members_ready(&all, cluster.ready_timeout)
            .await?;
        if self.binary.is_none() {
            cluster.check_server_version().await?;
        }
        Ok(cluster)
    }
}

struct Member {
    name: String,
    client_port: u16,
    /// A plain-HTTP client port this crate checks the member on (the client port, unless
    /// the cluster serves clients over TLS).
    admin_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// For a member added to the running cluster: its `--initial-cluster` (with
    /// `--initial-cluster-state existing`).
    joined: Option<String>,
    /// The group its processes run under (root only), which partition rules match on.
    gid: Option<u32>,
    /// Set while it is partitioned from its peers.
    partition: Option<PartitionRules>,
    /// Removed from the cluster by [`Cluster::remove_member`]: never started again.
    removed: bool,
}

impl Member {
    fn new(dir: &Path, name: String, peer_port: u16, joined: Option<String>, tls: bool) -> Member {
        let client_port = free_port();
        Member {
            admin_port: if tls { free_port() } else { client_port },
            data_dir: dir.join(&name),
            log: dir.join(format!("{name}.log")),
            name,
            client_port,
            peer_port,
            child: None,
            joined,
            gid: member_gid(client_port),
            partition: None,
            removed: false,
        }
    }

    fn peer_side(&self) -> PeerSide {
        PeerSide { peer_port: self.peer_port, gid: self.gid }
    }
}

/// A running etcd cluster. Dropping it SIGKILLs every member, reaps it and removes the
/// temporary directory (also during a panic's unwinding).
pub struct Cluster {
    version: EtcdVersion,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    ready_timeout: Duration,
    binary: PathBuf,
    tls: Option<ClusterTls>,
    dir: TempDir,
}

impl Cluster {
    /// Starts a cluster of `members` members with default flags.
    pub async fn start(version: EtcdVersion, members: usize) -> anyhow::Result<Cluster> {
        Cluster::builder(version).members(members).start().await
    }

    pub fn builder(version: EtcdVersion) -> ClusterBuilder {
        ClusterBuilder {
            version,
            members: 1,
            args: Vec::new(),
            envs: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            binary: None,
            tls: false,
        }
    }

    pub fn version(&self) -> EtcdVersion {
        self.version
    }

    /// `http://127.0.0.1:PORT` of every member, in member order (dead members included).
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.client_url(i))
            .collect()
    }

    /// `http://127.0.0.1:PORT` of member `i` (`https://` for a TLS cluster).
    pub fn client_url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// The CA and certificates of a cluster started with [`ClusterBuilder::tls`].
    pub fn tls(&self) -> Option<&ClusterTls> {
        self.tls.as_ref()
    }

    /// Plain-HTTP URL this crate checks and manages member `i` by.
    fn admin_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].admin_port)
    }

    /// `http://127.0.0.1:PORT` of member `i`'s peer listener.
    pub fn peer_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].peer_port)
    }

    /// Comma-joined [`Cluster::client_urls`], as `--endpoints` wants them.
    pub fn endpoints(&self) -> String {
        self.client_urls().join(",")
    }

    /// Comma-joined URLs of the members whose process is currently running (plain HTTP
    /// ones for a TLS cluster), for [`Cluster::etcdctl`].
    fn live_endpoints(&self) -> String {
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .map(|i| self.admin_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// `--name` of member `i` (`m{i}`).
    pub fn member_name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// The cluster's temporary directory (holds `m{i}/` data dirs and `m{i}.log`).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Member `i`'s `--data-dir`.
    pub fn member_data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }

    /// Member `i`'s log file (stdout and stderr).
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log
    }

    /// The last `lines` lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        log_tail(&self.members[i].log, lines)
    }

    /// Pid of member `i`, or `None` if it was killed (and not restarted).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Whether member `i` was removed by [`Cluster::remove_member`].
    pub fn is_removed(&self, i: usize) -> bool {
        self.members[i].removed
    }

    /// Whether member `i`'s process is running (a paused member counts as running).
    pub fn is_running(&mut self, i: usize) -> bool {
        let m = &mut self.members[i];
        match m.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                m.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGKILLs member `i` and reaps it. No-op if it is not running.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// SIGSTOPs member `i` and waits until all its threads are stopped: it keeps its sockets
    /// open (connects still succeed) but answers nothing, like a hung member.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        let child = m
            .child
            .as_mut()
            .with_context(|| format!("member {} is not running", m.name))?;
        signal(child, libc::SIGSTOP).with_context(|| format!("SIGSTOP member {}", m.name))?;
        wait_stopped(child.id(), true).with_context(|| format!("pause member {}", m.name))
    }

    /// SIGCONTs member `i` after [`Cluster::pause`] and waits until it runs again (it may
    /// need a moment to rejoin; see [`Cluster::wait_member_ready`]).
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        let child = m
            .child
            .as_mut()
            .with_context(|| format!("member {} is not running", m.name))?;
        signal(child, libc::SIGCONT).with_context(|| format!("SIGCONT member {}", m.name))?;
        wait_stopped(child.id(), false).with_context(|| format!("resume member {}", m.name))
    }

    /// Starts a killed member again with the same data dir, ports and flags, and waits until
    /// it is healthy (which needs a quorum of members running).
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.respawn(i)?;
        self.wait_members_ready(&[i], self.ready_timeout).await
    }

    /// Starts a killed member again without waiting for it (e.g. to bring back several members
    /// of a cluster that lost quorum), see [`Cluster::wait_member_ready`].
    pub fn respawn(&mut self, i: usize) -> anyhow::Result<()> {
        if self.is_running(i) {
            bail!(
                "member {} is still running; kill it before restarting",
                self.members[i].name
            );
        }
        self.spawn_member(i)
    }

    /// Waits until member `i` reports healthy; fails early, with its log, if it exits.
    pub async fn wait_member_ready(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_members_ready(&[i], timeout).await
    }

    /// Index of the member that currently reports `etcd_server_is_leader 1` in `/metrics`.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            if let Ok((200, body)) = http_get(&self.admin_url(i), "/metrics").await {
                if body.lines().any(|l| l.trim() == "etcd_server_is_leader 1") {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits until some running member reports being leader, and returns its index. After
    /// the leader is killed, writes hang (then time out) until this succeeds.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader().await {
                return Ok(i);
            }
            if Instant::now() >= deadline {
                bail!("{} cluster has no leader after {timeout:?}", self.version);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Adds a raft learner: `etcdctl member add m{n} --learner` against the running members,
    /// then starts it (`--initial-cluster-state existing`) and waits until it reports healthy.
    /// Returns its index; it is killed, paused and restarted like any other member, and is
    /// listed by [`Cluster::client_urls`]. It stays a learner unless promoted.
    pub async fn add_learner(&mut self) -> anyhow::Result<usize> {
        let i = self.members.len();
        let name = format!("m{i}");
        let peer_port = free_port();
        let peer = format!("http://127.0.0.1:{peer_port}");
        // etcd refuses membership changes ("unhealthy cluster") until every member has been
        // connected to its peers for 5 s, e.g. just after the cluster started.
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            let out = self.etcdctl(&["member", "add", &name, "--learner", &format!("--peer-urls={peer}")]);
            if out.status.success() {
                break;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.contains("unhealthy cluster") || Instant::now() >= deadline {
                bail!("{} member add {name} --learner: {}{stderr}", self.version, String::from_utf8_lossy(&out.stdout));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .chain([format!("{name}={peer}")])
            .collect::<Vec<_>>()
            .join(",");
        self.members.push(Member::new(self.dir.path(), name, peer_port, Some(initial_cluster), self.tls.is_some()));
        self.spawn_member(i)?;
        self.wait_members_ready(&[i], self.ready_timeout).await?;
        Ok(i)
    }

    /// Cuts member `i` off from the other members' peer ports (both ways) while its client
    /// port stays reachable, until [`Cluster::heal`] (or the cluster's drop). Needs root and
    /// iptables. Members added afterwards are not cut off from it. No-op if it already is.
    pub fn partition(&mut self, i: usize) -> anyhow::Result<()> {
        if self.members[i].partition.is_some() {
            return Ok(());
        }
        let peers: Vec<PeerSide> =
            self.members.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, m)| m.peer_side()).collect();
        let rules = partition(self.members[i].peer_side(), &peers)
            .with_context(|| format!("{} partition member {}", self.version, self.members[i].name))?;
        self.members[i].partition = Some(rules);
        Ok(())
    }

    /// Ends [`Cluster::partition`] of member `i`. No-op if it is not partitioned.
    pub fn heal(&mut self, i: usize) -> anyhow::Result<()> {
        match self.members[i].partition.take() {
            Some(mut rules) => {
                rules.remove().with_context(|| format!("{} heal member {}", self.version, self.members[i].name))
            }
            None => Ok(()),
        }
    }

    pub fn is_partitioned(&self, i: usize) -> bool {
        self.members[i].partition.is_some()
    }

    /// `Maintenance.Status` of member `i`, asked of it directly (2 s deadline).
    pub async fn status(&self, i: usize) -> anyhow::Result<StatusResponse> {
        let url = self.admin_url(i);
        let mut maintenance = maintenance_client(&url).await?;
        let status = maintenance.status(StatusRequest {}).await.with_context(|| format!("Status of {url}"))?;
        Ok(status.into_inner())
    }

    /// Member `i`'s raft member ID, as its own Status reports it.
    pub async fn member_id(&self, i: usize) -> anyhow::Result<u64> {
        let status = self.status(i).await?;
        status.header.map(|h| h.member_id).context("Status answer without a header")
    }

    /// Removes member `i` from the cluster (`MemberRemove` through another running member,
    /// retried while etcd refuses it as unsafe, e.g. just after a start), then waits up to
    /// 10 s for the removed member to stop itself, and kills it if it has not. It cannot be
    /// restarted; it stays listed by [`Cluster::client_urls`].
    pub async fn remove_member(&mut self, i: usize) -> anyhow::Result<()> {
        let name = self.members[i].name.clone();
        let through = (0..self.members.len())
            .filter(|&j| j != i)
            .find(|&j| self.is_running(j))
            .with_context(|| format!("no running member to remove {name} through"))?;
        let url = self.admin_url(through);
        let deadline = Instant::now() + self.ready_timeout;
        let mut attempted = false;
        loop {
            let result = async {
                let mut cluster = cluster_client(&url).await?;
                let members = cluster.member_list(MemberListRequest::default()).await?.into_inner().members;
                let Some(member) = members.iter().find(|m| m.name == name) else {
                    return anyhow::Ok(false);
                };
                cluster.member_remove(MemberRemoveRequest { id: member.id }).await?;
                Ok(true)
            }
            .await;
            match result {
                Ok(true) => break,
                // Gone from the list: an earlier attempt went through after all.
                Ok(false) if attempted => break,
                Ok(false) => bail!("{} member {name} is not in the member list", self.version),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("{} remove member {name} through {url}", self.version)))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
            attempted = true;
        }
        let stop_deadline = Instant::now() + Duration::from_secs(10);
        while self.is_running(i) && Instant::now() < stop_deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill(i);
        self.members[i].removed = true;
        Ok(())
    }

    /// Stops every member, as an operator stopping the cluster would: SIGTERM to all at once
    /// (and SIGCONT, for paused ones), SIGKILL to any still running 10 s later.
    pub fn stop_all(&mut self) {
        let children: Vec<&mut Child> = self.members.iter_mut().filter_map(|m| m.child.as_mut()).collect();
        terminate_and_reap(children, Duration::from_secs(10));
        for m in &mut self.members {
            m.child = None;
        }
    }

    /// Starts every member that is not running (except removed ones) with its data dir,
    /// ports and flags, and waits until all of them are healthy.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        let members: Vec<usize> = (0..self.members.len()).filter(|&i| !self.members[i].removed).collect();
        for &i in &members {
            if !self.is_running(i) {
                self.spawn_member(i)?;
            }
        }
        self.wait_members_ready(&members, self.ready_timeout).await
    }

    /// `etcdctl` of the cluster's version against the running members, see [`run_etcdctl`].
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        run_etcdctl(self.version, &self.live_endpoints(), args)
    }

    fn spawn_member(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        if m.removed {
            bail!("member {} was removed from the cluster", m.name);
        }
        let (client, listen) = match &self.tls {
            Some(_) => {
                let client = format!("https://127.0.0.1:{}", m.client_port);
                let listen = format!("{client},http://127.0.0.1:{}", m.admin_port);
                (client, listen)
            }
            None => {
                let client = format!("http://127.0.0.1:{}", m.client_port);
                (client.clone(), client)
            }
        };
        let tls_args = self.tls.as_ref().map(ClusterTls::member_args).unwrap_or_default();
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args([
                "--listen-client-urls",
                &listen,
                "--advertise-client-urls",
                &client,
            ])
            .args(&tls_args)
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", m.joined.as_deref().unwrap_or(&self.initial_cluster)])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", if m.joined.is_some() { "existing" } else { "new" }])
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path());
        if let Some(gid) = m.gid {
            use std::os::unix::process::CommandExt;
            cmd.gid(gid);
        }
        let child = spawn_logged(cmd, &m.log).with_context(|| {
            format!(
                "spawn {} ({}) for member {}",
                self.binary.display(),
                self.version,
                m.name
            )
        })?;
        self.members[i].child = Some(child);
        Ok(())
    }

    async fn wait_members_ready(
        &mut self,
        which: &[usize],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<(usize, String)> = which.iter().map(|&i| (i, String::new())).collect();
        loop {
            let mut still = Vec::new();
            for (i, _) in pending {
                let url = self.admin_url(i);
                let m = &mut self.members[i];
                let Some(child) = m.child.as_mut() else {
                    bail!("{} member {} is not running", self.version, m.name);
                };
                if let Ok(Some(status)) = child.try_wait() {
                    m.child = None;
                    bail!(
                        "{} member {} exited during startup ({status})\n--- tail of {} ---\n{}",
                        self.version,
                        m.name,
                        m.log.display(),
                        log_tail(&m.log, LOG_TAIL_LINES)
                    );
                }
                if let Err(e) = check_health(&url).await {
                    still.push((i, format!("{e:#}")));
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut msg = format!("{} cluster not healthy after {timeout:?}:", self.version);
                for (i, err) in &still {
                    let m = &self.members[*i];
                    msg.push_str(&format!(
                        "\nmember {} (http://127.0.0.1:{}): {err}\n--- tail of {} ---\n{}",
                        m.name,
                        m.client_port,
                        m.log.display(),
                        log_tail(&m.log, LOG_TAIL_LINES)
                    ));
                }
                bail!(msg);
            }
            pending = still;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Guards against a wrong binary (PATH shims, bad overrides): `/version` must say 3.4.x / 3.5.x.
    async fn check_server_version(&self) -> anyhow::Result<()> {
        let url = self.admin_url(0);
        let (_, body) = http_get(&url, "/version").await?;
        let want = format!(r#""etcdserver":"{}."#, self.version.label());
        if !body.contains(&want) {
            bail!(
                "{} from {} reports {}; wrong binary? (set {})",
                self.version,
                self.binary.display(),
                body.trim(),
                self.version.env_hint()
            );
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut rules) = m.partition.take() {
                if let Err(e) = rules.remove() {
                    eprintln!("etcdgate-testkit: heal member {} on drop: {e:#}", m.name);
                }
            }
            if let Some(mut child) = m.child.take() {
                kill_and_reap(&mut child);
            }
        }
        if std::env::var_os("ETCDGATE_KEEP_TMP").is_some_and(|v| !v.is_empty() && v != "0") {
            self.dir.disable_cleanup(true);
            eprintln!(
                "etcdgate-testkit: keeping cluster dir {}",
                self.dir.path().display()
            );
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("version", &self.version)
            .field("endpoints", &self.endpoints())
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn unique_token() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "etcdgate-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
