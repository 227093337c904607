//! Membership changes that cannot take the cluster down: a member joins as a learner (it
//! counts for no quorum while it catches up) and is promoted only once it has caught up; a
//! voter is removed only if the voters left that answer still make a quorum; the leader hands
//! its leadership to a caught-up follower before it is removed. Each change is checked against
//! a fresh inspection and sent to the raft leader directly (a follower forwards membership
//! requests over the peer port, which has failed there where the leader would not).
//!
//! The cluster is looked at with etcdgate's own login (member list, status, alarms: what the
//! console shows anyone); the change itself carries the credentials `change_as` says — the
//! command line's user, or the token of whoever asked the console, so that etcd's auth
//! decides who may change the membership (with auth on: the root role).

use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::{
    cluster_client::ClusterClient, maintenance_client::MaintenanceClient, Member, MemberAddRequest, MemberPromoteRequest,
    MemberRemoveRequest, MoveLeaderRequest,
};
use etcdgate_upstream::login::Login;
use etcdgate_upstream::{Pool, RetryPolicy, Target, Timing};
use serde::Serialize;
use tonic::Status;

use crate::calls::{call_as, status_message, with_token, Credentials};
use crate::inspect::{hex, inspect, InspectOptions, Inspection, MemberReport};

/// What a new member needs to start: etcd's flags, with every member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Added {
    /// The new member's ID in hex.
    pub id: String,
    pub name: String,
    /// `--name`, `--initial-advertise-peer-urls`, `--initial-cluster`, `--initial-cluster-state`.
    pub etcd_flags: Vec<String>,
}

/// A done change, in a sentence (and the steps taken to get there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Done {
    pub steps: Vec<String>,
}

/// The members, leader and states now; no hashes (they are not needed here).
async fn look(pool: &Pool, login: Option<&Login>) -> Result<Inspection, String> {
    let options = InspectOptions { check_consistency: false, ..InspectOptions::default() };
    let inspection = inspect(pool, login, &options).await;
    if let Some(error) = &inspection.member_list_error {
        return Err(format!("the member list cannot be read: {error}"));
    }
    Ok(inspection)
}

/// The member's ID as etcd takes it.
fn raw_id(member: &MemberReport) -> Result<u64, String> {
    u64::from_str_radix(&member.id, 16).map_err(|e| format!("member ID {:?}: {e}", member.id))
}

/// The member with this ID (hex, as etcdctl prints it) or name.
fn find<'a>(inspection: &'a Inspection, member: &str) -> Result<&'a MemberReport, String> {
    let wanted = member.trim_start_matches("0x").to_ascii_lowercase();
    inspection
        .members
        .iter()
        .find(|m| m.id == wanted || (!m.name.is_empty() && m.name == member))
        .ok_or_else(|| format!("no member {member:?} in the cluster (give its ID in hex, as `etcdctl member list` prints it, or its name)"))
}

/// The leader's member ID, as the members that answer agree on it.
fn leader(inspection: &Inspection) -> Result<String, String> {
    let mut leaders = inspection.members.iter().filter_map(|m| m.status.as_ref()).map(|s| s.leader.clone()).filter(|l| l != "0");
    let first = leaders.next().ok_or("no member answers with a leader: the cluster cannot change its membership now")?;
    if leaders.any(|l| l != first) {
        return Err("the members disagree on the leader (an election is under way): try again in a moment".into());
    }
    Ok(first)
}

/// etcd refuses membership changes for a while after a member (re)connects to its peers
/// (`--strict-reconfig-check`: all must have been connected for 5 s); the change is not made,
/// so it is asked again, for at most this long.
const UNHEALTHY_WAIT: Duration = Duration::from_secs(15);

/// Runs a Cluster call on the leader, with `change_as`'s credentials; asked again while etcd
/// says the cluster is not ready for a change.
async fn on_leader<T, F, Fut>(pool: &Pool, change_as: Credentials<'_>, call: F) -> Result<T, Status>
where
    F: Fn(ClusterClient<etcdgate_upstream::MemberConnection>, Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    let call = &call;
    let give_up_at = Instant::now() + UNHEALTHY_WAIT;
    loop {
        let answer = call_as(pool, change_as, |token| async move {
            let leader = |connection| call(ClusterClient::new(connection), token.clone());
            pool.call(&Target::Leader, RetryPolicy::Write, Timing::Unmeasured, leader).await
        });
        match answer.await {
            Err(status) if status.message() == "etcdserver: unhealthy cluster" && Instant::now() < give_up_at => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            answer => {
                pool.resync_members();
                return answer.map(tonic::Response::into_inner);
            }
        }
    }
}

/// Adds a member as a learner with these peer URLs; it must then be started with the flags
/// returned, and promoted once it has caught up ([`promote`]).
pub async fn add_learner(
    pool: &Pool,
    login: Option<&Login>,
    change_as: Credentials<'_>,
    name: &str,
    peer_urls: &[String],
) -> Result<Added, String> {
    if name.is_empty() || name.contains([',', '=']) {
        return Err(format!("{name:?} cannot be a member name (it goes into --initial-cluster as name=url)"));
    }
    if peer_urls.is_empty() || peer_urls.iter().any(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
        return Err("give the new member's peer URLs as http://host:port (its --initial-advertise-peer-urls)".into());
    }
    let inspection = look(pool, login).await?;
    leader(&inspection)?;
    if let Some(taken) = inspection.members.iter().find(|m| m.name == name) {
        return Err(format!("the cluster already has a member named {name} ({})", taken.id));
    }
    if let Some(unstarted) = inspection.members.iter().find(|m| m.name.is_empty()) {
        return Err(format!(
            "member {} was added but never started: start it (or remove it) before adding another",
            unstarted.id
        ));
    }
    let request = MemberAddRequest { peer_ur_ls: peer_urls.to_vec(), is_learner: true };
    let answer = on_leader(pool, change_as, |mut cluster, token| {
        let request = with_token(request.clone(), &token);
        async move { cluster.member_add(request).await }
    })
    .await
    .map_err(|status| format!("etcd refused to add the member: {}", status_message(&status)))?;
    let added = answer.member.unwrap_or_default();
    let initial_cluster: Vec<String> = answer
        .members
        .iter()
        .flat_map(|m: &Member| {
            let member_name = if m.id == added.id { name.to_string() } else { m.name.clone() };
            m.peer_ur_ls.iter().map(move |url| format!("{member_name}={url}"))
        })
        .collect();
    Ok(Added {
        id: hex(added.id),
        name: name.to_string(),
        etcd_flags: vec![
            format!("--name={name}"),
            format!("--initial-advertise-peer-urls={}", peer_urls.join(",")),
            format!("--initial-cluster={}", initial_cluster.join(",")),
            "--initial-cluster-state=existing".to_string(),
        ],
    })
}

/// Promotes a learner to voter once it has caught up (its applied index within `lag_threshold`
/// of the leader's), waiting up to `wait` for that.
pub async fn promote(
    pool: &Pool,
    login: Option<&Login>,
    change_as: Credentials<'_>,
    member: &str,
    lag_threshold: u64,
    wait: Duration,
) -> Result<Done, String> {
    let give_up_at = Instant::now() + wait;
    loop {
        let inspection = look(pool, login).await?;
        let learner = find(&inspection, member)?;
        if !learner.is_learner {
            return Err(format!("member {} is not a learner: it votes already", learner.label()));
        }
        if learner.name.is_empty() {
            return Err(format!("learner {} was added but never started: start it first", learner.id));
        }
        let leader_id = leader(&inspection)?;
        let leader = find(&inspection, &leader_id)?;
        let lag = match (&learner.status, &leader.status) {
            (Some(learner), Some(leader)) => Some(leader.raft_applied_index.saturating_sub(learner.raft_applied_index)),
            _ => None,
        };
        match lag {
            Some(lag) if lag <= lag_threshold => {
                let id = raw_id(learner)?;
                on_leader(pool, change_as, |mut cluster, token| {
                    let request = with_token(MemberPromoteRequest { id }, &token);
                    async move { cluster.member_promote(request).await }
                })
                .await
                .map_err(|status| format!("etcd refused to promote {}: {}", learner.label(), status_message(&status)))?;
                return Ok(Done {
                    steps: vec![format!("promoted {} ({}): {lag} raft entries behind the leader {}", learner.label(), learner.id, leader.label())],
                });
            }
            _ if Instant::now() >= give_up_at => {
                let why = match lag {
                    Some(lag) => format!("it is {lag} raft entries behind the leader (at most {lag_threshold} to promote)"),
                    None => format!("it does not answer: {}", learner.error.as_deref().unwrap_or("no status")),
                };
                return Err(format!("learner {} is not promoted: {why}", learner.label()));
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Removes a member, unless the voters left that answer would not make a quorum (`force`
/// removes it anyway). A leader first hands its leadership to the follower that applied the
/// most.
pub async fn remove(pool: &Pool, login: Option<&Login>, change_as: Credentials<'_>, member: &str, force: bool) -> Result<Done, String> {
    let inspection = look(pool, login).await?;
    let target = find(&inspection, member)?;
    let id = raw_id(target)?;
    let mut steps = Vec::new();
    if !target.is_learner {
        let voters_left: Vec<&MemberReport> = inspection.members.iter().filter(|m| !m.is_learner && m.id != target.id).collect();
        if voters_left.is_empty() {
            return Err(format!("{} is the last voting member: removing it would end the cluster", target.label()));
        }
        let answering = voters_left.iter().filter(|m| m.status.as_ref().is_some_and(|s| s.leader != "0")).count();
        let quorum = voters_left.len() / 2 + 1;
        if answering < quorum && !force {
            return Err(format!(
                "removing {} leaves {} voting members of which {answering} answer, {quorum} needed: the cluster would lose its \
                 quorum and refuse writes; bring members back first (or --force)",
                target.label(),
                voters_left.len()
            ));
        }
        let leader_id = leader(&inspection)?;
        if leader_id == target.id {
            let successor = voters_left
                .iter()
                .filter_map(|m| Some((m, m.status.as_ref()?)))
                .filter(|(_, status)| status.leader != "0")
                .max_by_key(|(_, status)| status.raft_applied_index)
                .map(|(m, _)| *m)
                .ok_or("no follower answers to take over the leadership")?;
            let successor_id = raw_id(successor)?;
            let moved = call_as(pool, change_as, |token| async move {
                let leader = |connection| {
                    let request = with_token(MoveLeaderRequest { target_id: successor_id }, &token);
                    async move { MaintenanceClient::new(connection).move_leader(request).await }
                };
                pool.call(&Target::Leader, RetryPolicy::Write, Timing::Unmeasured, leader).await
            });
            moved.await.map_err(|status| format!("moving the leadership to {} failed: {}", successor.label(), status_message(&status)))?;
            steps.push(format!("moved the leadership from {} to {}", target.label(), successor.label()));
        }
    }
    on_leader(pool, change_as, |mut cluster, token| {
        let request = with_token(MemberRemoveRequest { id }, &token);
        async move { cluster.member_remove(request).await }
    })
    .await
    .map_err(|status| format!("etcd refused to remove {}: {}", target.label(), status_message(&status)))?;
    steps.push(format!("removed {} ({})", target.label(), target.id));
    Ok(Done { steps })
}
