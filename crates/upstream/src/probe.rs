//! The prober of a pool family: one task, started by `Pool::new` on its runtime and aborted
//! when the family's last pool is dropped, with one probe loop per member under it.
//!
//! - **Status probes.** Each member gets Maintenance.Status every probe interval (500 ms) on
//!   the prober's own connection to it, with a deadline (1 s); the answer, or its absence,
//!   goes through the member's state machine ([`crate::health`]). A member whose probes keep
//!   failing is re-probed after 250 ms, doubling up to 30 s. A probe past its deadline marks
//!   the member hung but is left open (up to 30 s, or until a call on the member succeeds
//!   elsewhere): a member that was only paused answers it the moment it runs again, so it is
//!   suspect within one round trip of resuming, however long it was stopped, and back in
//!   rotation at the next probe, sent at once, if that one is answered promptly. Every answer
//!   within the deadline is also a latency sample for balancing (see [`crate::balance`]).
//! - **Member list sync.** MemberList (asked of the healthiest member that answers) once the
//!   first probes are in, then every member sync interval (30 s), and at once after a
//!   leader-routed call (membership changes): new voters join (and get client traffic once a
//!   probe finds them healthy), learners are tracked, removed members leave.

use std::collections::HashMap;
use std::sync::Arc;

use etcdgate_proto::etcdserverpb::{
    cluster_client::ClusterClient, maintenance_client::MaintenanceClient, MemberListRequest, StatusRequest,
};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tonic::Status;

use crate::connection::{MemberConnection, NOT_SENT};
use crate::health::{ProbeFailure, State, StatusReport, MAX_BACKOFF, MIN_BACKOFF};
use crate::pool::{Entry, Family};
use crate::retry::{classify, Failure};

/// The family's prober: probe loops for its members, and member list sync.
pub(crate) async fn run(family: Arc<Family>) {
    let mut tasks = JoinSet::new();
    let mut probes: HashMap<usize, (Arc<Entry>, AbortHandle)> = HashMap::new();
    let mut list_connections: HashMap<String, MemberConnection> = HashMap::new();
    reconcile(&family, &mut tasks, &mut probes);
    first_probes(&family).await;
    let mut next_sync = Instant::now();
    let mut sync_failures = 0u32;
    loop {
        reconcile(&family, &mut tasks, &mut probes);
        tokio::select! {
            () = tokio::time::sleep_until(next_sync) => {}
            () = family.resync.notified() => {}
            () = family.membership.notified() => continue,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        }
        match sync_members(&family, &mut list_connections).await {
            Ok(()) => {
                sync_failures = 0;
                next_sync = Instant::now() + family.options.member_sync_interval;
            }
            Err(error) => {
                sync_failures = sync_failures.saturating_add(1);
                let retry = MIN_BACKOFF.saturating_mul(1 << (sync_failures - 1).min(10)).min(family.options.member_sync_interval);
                tracing::warn!(%error, ?retry, "member list sync failed");
                next_sync = Instant::now() + retry;
            }
        }
    }
}

/// Starts a probe loop for every member that has none, stops those of removed members.
fn reconcile(family: &Arc<Family>, tasks: &mut JoinSet<()>, probes: &mut HashMap<usize, (Arc<Entry>, AbortHandle)>) {
    let live: Vec<Arc<Entry>> = family.entries().into_iter().filter(|e| e.state() != State::Removed).collect();
    probes.retain(|_, (entry, task)| {
        let keep = live.iter().any(|e| Arc::ptr_eq(e, entry));
        if !keep {
            task.abort();
        }
        keep
    });
    for entry in live {
        probes
            .entry(Arc::as_ptr(&entry) as usize)
            .or_insert_with(|| (entry.clone(), tasks.spawn(probe_member(family.clone(), entry))));
    }
}

/// Waits (up to two probe deadlines) until every member has had its first probe, so that the
/// first member list sync can match members by ID.
async fn first_probes(family: &Family) {
    let deadline = Instant::now() + family.options.probe_timeout * 2;
    loop {
        let changed = family.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if !family.entries().iter().any(|e| e.state() == State::New) {
            return;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return;
        }
    }
}

/// One member's probe loop.
async fn probe_member(family: Arc<Family>, entry: Arc<Entry>) {
    let options = family.options.clone();
    let Ok(mut connection) = MemberConnection::with_options(&entry.url, options.probe_connection()) else {
        return;
    };
    loop {
        let mut client = MaintenanceClient::new(connection.clone());
        let asked = Instant::now();
        let status = client.status(StatusRequest {});
        tokio::pin!(status);
        let answer = match tokio::time::timeout(options.probe_timeout, &mut status).await {
            Ok(answer) => Some(answer),
            Err(_) => {
                family.probe_failed(&entry, ProbeFailure::TimedOut(options.probe_timeout));
                // Left open: a paused member answers the moment it runs again.
                tokio::select! {
                    answer = &mut status => Some(answer),
                    () = tokio::time::sleep(MAX_BACKOFF) => None,
                    () = entry.wake.notified() => None,
                }
            }
        };
        match answer {
            Some(Ok(response)) => family.probe_answered(&entry, StatusReport::from_response(response.get_ref(), asked.elapsed())),
            Some(Err(status)) => family.probe_failed(&entry, probe_failure(&status)),
            None => {
                // Given up on this connection (black hole?): the next probe makes a new one.
                connection = connection.fresh();
                continue;
            }
        }
        let delay = entry.next_probe_in(options.probe_interval);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = entry.wake.notified() => {}
        }
    }
}

fn probe_failure(status: &Status) -> ProbeFailure {
    match classify(status) {
        Failure::Answer | Failure::Rejected => ProbeFailure::Error(status.message().to_string()),
        Failure::NotSent | Failure::Transport => {
            ProbeFailure::Unreachable(status.message().trim_start_matches(NOT_SENT).to_string())
        }
    }
}

/// Reads MemberList from the best member that answers and applies it.
async fn sync_members(family: &Family, connections: &mut HashMap<String, MemberConnection>) -> Result<(), String> {
    let mut entries: Vec<Arc<Entry>> =
        family.entries().into_iter().filter(|e| e.state().fallback_rank().is_some()).collect();
    entries.sort_by_key(|e| e.state().fallback_rank());
    connections.retain(|url, _| entries.iter().any(|e| &e.url == url));
    let timeout = family.options.probe_timeout;
    let mut errors = Vec::new();
    for entry in entries {
        let connection = match connections.get(&entry.url) {
            Some(connection) => connection.clone(),
            None => {
                let Ok(connection) = MemberConnection::with_options(&entry.url, family.options.probe_connection()) else {
                    continue;
                };
                connections.insert(entry.url.clone(), connection.clone());
                connection
            }
        };
        let mut client = ClusterClient::new(connection);
        match tokio::time::timeout(timeout, client.member_list(MemberListRequest { linearizable: false })).await {
            Ok(Ok(response)) => {
                family.apply_member_list(&response.into_inner().members);
                return Ok(());
            }
            Ok(Err(status)) => errors.push(format!("{}: {}", entry.url, status.message())),
            Err(_) => {
                errors.push(format!("{}: no answer within {timeout:?}", entry.url));
                connections.remove(&entry.url);
            }
        }
    }
    Err(if errors.is_empty() { "no member to ask".into() } else { errors.join("; ") })
}
