//! The faults injected into one member (the victim), and how the victim is chosen.
//!
//! The victim must be a follower (a leader failure is an election, a different story) that
//! carries the target's watch streams and client calls. Just before the fault window opens,
//! every member's etcd `/metrics` is read: `etcd_debugging_mvcc_watcher_total` says how many
//! watchers it serves (the workload's HTTP watches, direct or spliced through `etcd gateway`;
//! for etcdgate, its own upstream watches) and `etcd_server_is_leader` which one leads. The
//! victim is the follower with the most watchers. When the leader holds more watchers than
//! any follower (etcdgate's single cache watch may sit on it), leadership is moved to the
//! follower with the fewest (`Maintenance.MoveLeader`), so that the member with the watches
//! becomes a follower, and that member is the victim. Readers and the writer spread their
//! calls over every member (round-robin direct, random per connection through `etcd
//! gateway`, balanced by etcdgate), so the victim carries calls as well.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use etcdgate_proto::etcdserverpb::{maintenance_client::MaintenanceClient, MoveLeaderRequest};
use etcdgate_testkit::Cluster;

use super::metrics;

/// How long reading one member's metrics may take.
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a leadership move may take to show.
const MOVE_LEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What happens to the victim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL; recovery restarts it with its data.
    Kill,
    /// SIGSTOP: connections still open, nothing answered; recovery is SIGCONT.
    Hang,
    /// Cut off from its peers (iptables, root only) while its client port stays reachable;
    /// recovery removes the rules.
    Partition,
}

impl Fault {
    pub const ALL: [Fault; 3] = [Fault::Kill, Fault::Hang, Fault::Partition];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Hang => "hang",
            Fault::Partition => "partition",
        }
    }

    /// How it is done, for the plot's title.
    pub fn how(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9, restart",
            Fault::Hang => "SIGSTOP, SIGCONT",
            Fault::Partition => "cut off from its peers, healed",
        }
    }

    pub fn parse(s: &str) -> Result<Fault, String> {
        Fault::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| format!("unknown fault {s:?}; one of kill, hang, partition"))
    }

    pub fn inject(self, cluster: &mut Cluster, victim: usize) -> anyhow::Result<()> {
        match self {
            Fault::Kill => {
                cluster.kill(victim);
                Ok(())
            }
            Fault::Hang => cluster.pause(victim),
            Fault::Partition => cluster.partition(victim),
        }
    }

    /// Undoes the fault; a killed member is restarted and waited for until healthy.
    pub async fn recover(self, cluster: &mut Cluster, victim: usize) -> anyhow::Result<()> {
        match self {
            Fault::Kill => cluster.restart(victim).await,
            Fault::Hang => cluster.resume(victim),
            Fault::Partition => cluster.heal(victim),
        }
    }
}

/// The chosen victim and why.
#[derive(Clone, Debug)]
pub struct Victim {
    pub index: usize,
    /// Watchers each member served when the victim was chosen.
    pub watchers: Vec<u64>,
    /// The leader was the member with the watches and was asked to hand leadership over.
    pub moved_leader: bool,
}

/// Chooses the victim as the module explains (moving leadership if needed).
pub async fn choose_victim(cluster: &Cluster) -> anyhow::Result<Victim> {
    let (watchers, leader) = watchers_and_leader(cluster).await?;
    let followers: Vec<usize> = (0..watchers.len()).filter(|&i| i != leader).collect();
    let Some(&busiest_follower) = followers.iter().max_by_key(|&&i| (watchers[i], std::cmp::Reverse(i))) else {
        bail!("a failover benchmark needs at least 2 members");
    };
    if watchers[leader] <= watchers[busiest_follower] {
        return Ok(Victim { index: busiest_follower, watchers, moved_leader: false });
    }
    let quietest_follower = followers.iter().copied().min_by_key(|&i| (watchers[i], i)).unwrap_or(busiest_follower);
    move_leader(cluster, leader, quietest_follower).await?;
    Ok(Victim { index: leader, watchers, moved_leader: true })
}

/// Each member's watcher gauge, and the leader's index.
async fn watchers_and_leader(cluster: &Cluster) -> anyhow::Result<(Vec<u64>, usize)> {
    let mut watchers = Vec::new();
    let mut leader = None;
    for (i, url) in cluster.client_urls().iter().enumerate() {
        let page = metrics::fetch(url, METRICS_TIMEOUT).await.map_err(anyhow::Error::msg)?;
        let count = metrics::sum(&page, "etcd_debugging_mvcc_watcher_total")
            .with_context(|| format!("{url}/metrics has no etcd_debugging_mvcc_watcher_total"))?;
        watchers.push(count as u64);
        if metrics::sum(&page, "etcd_server_is_leader") == Some(1.0) {
            leader = Some(i);
        }
    }
    Ok((watchers, leader.context("no member reports being the leader")?))
}

/// Asks the leader to hand leadership to member `to`, and waits until it has.
async fn move_leader(cluster: &Cluster, leader: usize, to: usize) -> anyhow::Result<()> {
    let target_id = cluster.member_id(to).await?;
    let mut maintenance = MaintenanceClient::connect(cluster.client_url(leader)).await.context("connecting to the leader")?;
    let mut request = tonic::Request::new(MoveLeaderRequest { target_id });
    request.set_timeout(MOVE_LEADER_TIMEOUT);
    maintenance.move_leader(request).await.with_context(|| format!("MoveLeader from member {leader} to member {to}"))?;
    let deadline = Instant::now() + MOVE_LEADER_TIMEOUT;
    while cluster.leader().await != Some(to) {
        if Instant::now() >= deadline {
            bail!("member {to} did not become leader within {MOVE_LEADER_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
