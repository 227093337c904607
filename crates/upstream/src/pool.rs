//! The member pool: one lazily made HTTP/2 connection per etcd member, round-robin over the
//! members that are not known to be down, and simple failover.
//!
//! A member whose connection is refused is skipped for a backoff period that doubles on each
//! consecutive failure (250 ms up to 30 s) and is tried again after it; any successful call
//! puts it back at once. The health-aware pool (probes, hung and partitioned members,
//! latency-weighted balancing) builds on this type.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcdgate_proto::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
use tokio::time::Instant;
use tonic::Status;

use crate::connection::MemberConnection;
use crate::retry::{classify, RetryPolicy};

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Connection settings for every member.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    pub connect_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions { connect_timeout: Duration::from_secs(2) }
    }
}

/// Whether a member is in rotation, shared by every pool built with [`Pool::sibling`].
#[derive(Debug, Default)]
struct Health {
    /// Consecutive failed calls; 0 when the member is in rotation.
    consecutive_failures: AtomicU32,
    /// Skipped until this many milliseconds after the pool's epoch.
    skip_until_ms: AtomicU64,
}

/// One etcd member: its client URL, this pool's connection to it, and its shared health.
#[derive(Debug)]
pub struct Member {
    url: String,
    connection: MemberConnection,
    health: Arc<Health>,
}

impl Member {
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This pool's connection to the member, for tonic clients.
    pub fn connection(&self) -> MemberConnection {
        self.connection.clone()
    }

    fn available(&self, now_ms: u64) -> bool {
        now_ms >= self.health.skip_until_ms.load(Ordering::Relaxed)
    }

    fn mark_failed(&self, now_ms: u64) {
        let failures = self.health.consecutive_failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let backoff = MIN_BACKOFF.saturating_mul(1u32 << failures.min(8).saturating_sub(1)).min(MAX_BACKOFF);
        self.health.skip_until_ms.store(now_ms + backoff.as_millis() as u64, Ordering::Relaxed);
        tracing::warn!(member = %self.url, failures, ?backoff, "member unreachable, skipped");
    }

    fn mark_ok(&self) {
        if self.health.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.health.consecutive_failures.store(0, Ordering::Relaxed);
            self.health.skip_until_ms.store(0, Ordering::Relaxed);
            tracing::info!(member = %self.url, "member reachable again");
        }
    }
}

/// Which member a call must reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Any member; fails over according to the retry policy.
    Any,
    /// The current raft leader (membership changes, promote, move-leader).
    Leader,
    /// A member chosen by the client, by client URL or hex member ID.
    Named(String),
}

/// The members behind the gateway.
#[derive(Debug)]
pub struct Pool {
    members: Vec<Arc<Member>>,
    next: AtomicUsize,
    options: PoolOptions,
    epoch: Instant,
}

/// Accepts `host:port` as well as `http://host:port`.
fn normalize_url(raw: &str) -> String {
    let raw = raw.trim().trim_end_matches('/');
    if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    }
}

impl Pool {
    /// Builds the pool; connections are made on first use. Must be called on a tokio runtime,
    /// which then carries the pool's connections.
    pub fn new(endpoints: &[String], options: PoolOptions) -> Result<Pool, String> {
        let mut members = Vec::new();
        for raw in endpoints.iter().filter(|e| !e.trim().is_empty()) {
            let url = normalize_url(raw);
            if url.starts_with("https://") {
                return Err(format!("endpoint {url}: TLS to members is not supported yet"));
            }
            let connection = MemberConnection::new(&url, options.connect_timeout)?;
            members.push(Arc::new(Member { url, connection, health: Arc::default() }));
        }
        if members.is_empty() {
            return Err("no etcd endpoints given".into());
        }
        Ok(Pool { members, next: AtomicUsize::new(0), options, epoch: Instant::now() })
    }

    /// A pool over the same members with its own connections, sharing this pool's view of
    /// which members are down (one pool per worker thread).
    pub fn sibling(&self) -> Pool {
        let members = self
            .members
            .iter()
            .map(|m| {
                Arc::new(Member {
                    url: m.url.clone(),
                    connection: m.connection.fresh(),
                    health: m.health.clone(),
                })
            })
            .collect();
        Pool { members, next: AtomicUsize::new(0), options: self.options.clone(), epoch: self.epoch }
    }

    pub fn options(&self) -> &PoolOptions {
        &self.options
    }

    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Members in the order a call should try them: available ones round-robin first, then
    /// the skipped ones (so a call still has somewhere to go when all look down).
    fn candidates(&self) -> impl Iterator<Item = &Arc<Member>> {
        let now = self.now_ms();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.members.len();
        let rotated = move || (0..n).map(move |i| &self.members[(start + i) % n]);
        rotated().filter(move |m| m.available(now)).chain(rotated().filter(move |m| !m.available(now)))
    }

    /// Runs `call` on a member chosen for `target`, failing over as `policy` allows.
    pub async fn call<T, F, Fut>(&self, target: &Target, policy: RetryPolicy, mut call: F) -> Result<T, Status>
    where
        F: FnMut(MemberConnection) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let pinned;
        let members: Box<dyn Iterator<Item = &Arc<Member>> + Send> = match target {
            Target::Any => Box::new(self.candidates()),
            Target::Leader => {
                pinned = self.leader().await?;
                Box::new(std::iter::once(&pinned))
            }
            Target::Named(name) => {
                pinned = self.named(name).await?;
                Box::new(std::iter::once(&pinned))
            }
        };
        let mut last_error = None;
        for member in members {
            match call(member.connection()).await {
                Ok(value) => {
                    member.mark_ok();
                    return Ok(value);
                }
                Err(status) => {
                    let failure = classify(&status);
                    if failure.member_unhealthy() {
                        member.mark_failed(self.now_ms());
                    }
                    if !failure.may_retry(policy) {
                        return Err(status);
                    }
                    tracing::debug!(member = %member.url, error = %status.message(), "failing over");
                    last_error = Some(status);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Status::unavailable("etcdgate: no etcd member available")))
    }

    /// Asks each member for its status; returns (member, its id, the leader it reports).
    async fn statuses(&self) -> Vec<(Arc<Member>, u64, u64)> {
        let probes = self.members.iter().map(|member| {
            let member = member.clone();
            async move {
                let mut request = tonic::Request::new(StatusRequest {});
                request.set_timeout(self.options.connect_timeout);
                let response = MaintenanceClient::new(member.connection()).status(request).await.ok()?;
                let status = response.into_inner();
                let id = status.header.as_ref().map(|h| h.member_id).unwrap_or_default();
                Some((member, id, status.leader))
            }
        });
        futures::future::join_all(probes).await.into_iter().flatten().collect()
    }

    /// The member that is currently raft leader.
    pub async fn leader(&self) -> Result<Arc<Member>, Status> {
        let statuses = self.statuses().await;
        statuses
            .iter()
            .find(|(_, id, leader)| *leader != 0 && id == leader)
            .map(|(member, _, _)| member.clone())
            .ok_or_else(|| Status::unavailable("etcdserver: no leader"))
    }

    /// The member a client named, by client URL (`http://127.0.0.1:2379` or `127.0.0.1:2379`)
    /// or by member ID in hex as etcdctl prints it.
    pub async fn named(&self, name: &str) -> Result<Arc<Member>, Status> {
        let url = normalize_url(name);
        if let Some(member) = self.members.iter().find(|m| m.url == url) {
            return Ok(member.clone());
        }
        let wanted = u64::from_str_radix(name.trim_start_matches("0x"), 16)
            .map_err(|_| Status::invalid_argument(format!("etcdgate: unknown member {name:?}")))?;
        self.statuses()
            .await
            .into_iter()
            .find(|(_, id, _)| *id == wanted)
            .map(|(member, _, _)| member)
            .ok_or_else(|| Status::not_found(format!("etcdgate: member {name} is not reachable through this gateway")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized_and_empty_lists_refused() {
        assert_eq!(normalize_url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(normalize_url(" http://127.0.0.1:2379/ "), "http://127.0.0.1:2379");
        assert!(Pool::new(&[], PoolOptions::default()).is_err());
    }

    #[tokio::test]
    async fn failed_members_are_skipped_until_their_backoff_ends() {
        let pool = Pool::new(&["127.0.0.1:1".into(), "127.0.0.1:2".into()], PoolOptions::default()).unwrap();
        pool.members[0].mark_failed(pool.now_ms());
        for _ in 0..4 {
            assert_eq!(pool.candidates().next().unwrap().url, "http://127.0.0.1:2");
            assert_eq!(pool.candidates().count(), 2, "skipped members are still tried last");
        }
        let sibling = pool.sibling();
        assert_eq!(sibling.candidates().next().unwrap().url, "http://127.0.0.1:2", "siblings share health");
        pool.members[0].mark_ok();
        let firsts: Vec<_> = (0..2).map(|_| pool.candidates().next().unwrap().url.clone()).collect();
        assert!(firsts.contains(&"http://127.0.0.1:1".to_string()));
    }
}
