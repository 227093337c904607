//! One look at the etcd cluster: what every member says about itself (Status, its quota from
//! `/metrics`), the member list, alarms, and whether the members hold the same data (HashKV
//! at one revision on every member), turned into findings an operator can act on.
//!
//! Gathering ([`inspect`]) and judging ([`judge`]) are apart: the judgement is pure and unit
//! tested; the gathering is tested against real etcd. Every member is asked on a connection of
//! its own, whatever state etcdgate's pool gives it, so a member the pool avoids is still seen.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcdgate_proto::etcdserverpb::{
    alarm_request::AlarmAction, cluster_client::ClusterClient, maintenance_client::MaintenanceClient, AlarmRequest,
    AlarmType, HashKvRequest, MemberListRequest, StatusRequest, StatusResponse,
};
use etcdgate_upstream::login::Login;
use etcdgate_upstream::member_http::MemberHttpClient;
use etcdgate_upstream::{MemberConnection, Pool, RetryPolicy, Target, Timing};

use crate::backup::BackupRecord;
use crate::calls::{as_gateway, status_message, with_token};
use serde::Serialize;

/// How an inspection asks, and where its judgement draws lines.
#[derive(Clone, Debug)]
pub struct InspectOptions {
    /// Deadline of each Status, MemberList, Alarm and `/metrics` call.
    pub call_timeout: Duration,
    /// Deadline of each HashKV (a member reads its whole database to answer).
    pub hash_timeout: Duration,
    /// Whether to compare the members' data by HashKV.
    pub check_consistency: bool,
    /// A member whose raft applied index trails the best one's by more than this lags.
    pub lag_threshold: u64,
    /// More revisions than this since the last compaction is a finding.
    pub uncompacted_revisions: i64,
}

impl Default for InspectOptions {
    fn default() -> Self {
        InspectOptions {
            call_timeout: Duration::from_secs(3),
            hash_timeout: Duration::from_secs(60),
            check_consistency: true,
            lag_threshold: 1000,
            uncompacted_revisions: 1_000_000,
        }
    }
}

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing is wrong.
    Info,
    /// Something is wrong or one step from wrong; clients are still served.
    Warning,
    /// Clients are refused (no quorum, no space) or data is at risk (members disagree).
    Critical,
}

/// One thing an operator should know, about the cluster or one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// `cluster`, or the member's name (its ID when it has none).
    pub subject: String,
    pub text: String,
}

/// What one member said about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    /// The client URL that answered.
    pub url: String,
    pub version: String,
    pub db_size: i64,
    pub db_size_in_use: i64,
    /// The leader's member ID in hex, `0` when the member has none.
    pub leader: String,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    /// The member's current revision.
    pub revision: i64,
    pub errors: Vec<String>,
    pub answered_ms: u64,
}

/// A member's HashKV answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberHash {
    pub revision: i64,
    pub compact_revision: i64,
    pub hash: u32,
}

/// One member as the inspection saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemberReport {
    /// Member ID in hex as etcdctl prints it; empty when no member list was read.
    pub id: String,
    pub name: String,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
    /// `None` when no client URL answered Status: see `error`.
    pub status: Option<MemberStatus>,
    pub error: Option<String>,
    /// Its backend quota in bytes (`etcd_server_quota_backend_bytes`).
    pub quota_bytes: Option<i64>,
    pub hash: Option<MemberHash>,
    /// Why the member has no hash, when it was asked for one.
    pub hash_error: Option<String>,
    /// How etcdgate's pool rates the member (`healthy`, `hung`, ...), and why.
    pub gateway_state: Option<String>,
    pub gateway_evidence: Option<String>,
}

impl MemberReport {
    /// Name, or ID when it has none (a member added but not started yet), or first URL.
    pub fn label(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        if !self.id.is_empty() {
            return self.id.clone();
        }
        self.client_urls.first().cloned().unwrap_or_default()
    }
}

/// An alarm raised on a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alarm {
    pub member_id: String,
    /// `NOSPACE` or `CORRUPT`.
    pub alarm: String,
}

/// The backups etcdgate takes (`serve --backup-dir`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BackupsView {
    pub dir: String,
    /// Seconds between scheduled backups.
    pub interval_secs: u64,
    /// Verified backups kept, newest first.
    pub kept: Vec<BackupRecord>,
    /// The latest attempt's failure, if it failed.
    pub last_error: Option<String>,
}

/// The whole look.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Inspection {
    pub taken_at_unix_ms: u64,
    pub took_ms: u64,
    /// Cluster ID in hex, from the member list.
    pub cluster_id: String,
    /// Why the member list could not be read (members are then the endpoints etcdgate knows).
    pub member_list_error: Option<String>,
    pub members: Vec<MemberReport>,
    /// Alarms, or `None` if they could not be read (`alarm_error` says why).
    pub alarms: Option<Vec<Alarm>>,
    pub alarm_error: Option<String>,
    /// The revision the members' hashes were taken at.
    pub hashed_revision: Option<i64>,
    pub backups: Option<BackupsView>,
    pub findings: Vec<Finding>,
}

impl Inspection {
    /// How many raft entries `member` has applied fewer than the most advanced member; `None`
    /// if it did not answer.
    pub fn applied_lag(&self, member: &MemberReport) -> Option<u64> {
        let best = self.members.iter().filter_map(|m| m.status.as_ref()).map(|s| s.raft_applied_index).max()?;
        Some(best.saturating_sub(member.status.as_ref()?.raft_applied_index))
    }

    /// The members' hashes by compact revision, then by hash: the labels of the members that
    /// have each.
    pub fn hashes_by_compaction(&self) -> BTreeMap<i64, BTreeMap<u32, Vec<String>>> {
        let mut by_compaction: BTreeMap<i64, BTreeMap<u32, Vec<String>>> = BTreeMap::new();
        for member in &self.members {
            if let Some(hash) = &member.hash {
                by_compaction.entry(hash.compact_revision).or_default().entry(hash.hash).or_default().push(member.label());
            }
        }
        by_compaction
    }

    /// The label of the member with this ID (the ID itself if it is not listed).
    pub fn label_of(&self, id: &str) -> String {
        self.members.iter().find(|m| m.id == id).map_or_else(|| id.to_string(), MemberReport::label)
    }

    /// The most severe finding's severity, `None` when there is nothing to report.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// For a terminal: members, then findings.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "cluster {}  ({} members, inspected in {} ms)", self.cluster_id, self.members.len(), self.took_ms);
        let _ = writeln!(
            out,
            "{:<12} {:<16} {:<8} {:<8} {:>8} {:>10} {:>12} {:>10} {:>11} {:>10}  GATEWAY",
            "NAME", "ID", "VERSION", "ROLE", "DB MiB", "IN USE MiB", "QUOTA USED", "APPLIED", "REVISION", "HASH"
        );
        for member in &self.members {
            let role = match (&member.status, member.is_learner) {
                (_, true) => "learner",
                (Some(status), false) if status.leader == member.id && !member.id.is_empty() => "leader",
                (Some(_), false) => "follower",
                (None, false) => "-",
            };
            let mib = |bytes: i64| format!("{:.1}", bytes as f64 / (1024.0 * 1024.0));
            let (version, db, in_use, quota, applied, revision) = match &member.status {
                Some(s) => (
                    s.version.clone(),
                    mib(s.db_size),
                    mib(s.db_size_in_use),
                    member.quota_bytes.filter(|q| *q > 0).map_or("-".into(), |q| format!("{:.1}%", 100.0 * s.db_size as f64 / q as f64)),
                    s.raft_applied_index.to_string(),
                    s.revision.to_string(),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
            };
            let hash = member.hash.as_ref().map_or("-".into(), |h| format!("{:08x}", h.hash));
            let _ = writeln!(
                out,
                "{:<12} {:<16} {:<8} {:<8} {:>8} {:>10} {:>12} {:>10} {:>11} {:>10}  {}",
                member.label(),
                member.id,
                version,
                role,
                db,
                in_use,
                quota,
                applied,
                revision,
                hash,
                member.gateway_state.as_deref().unwrap_or("-"),
            );
        }
        if let Some(revision) = self.hashed_revision {
            let _ = writeln!(out, "hashes taken at revision {revision}");
        }
        if let Some(backups) = &self.backups {
            match backups.kept.first() {
                Some(latest) => {
                    let _ = writeln!(
                        out,
                        "latest of {} backups in {}: {} (revision {}, {} keys, {})",
                        backups.kept.len(),
                        backups.dir,
                        latest.file,
                        latest.revision,
                        latest.keys,
                        latest.verified
                    );
                }
                None => {
                    let _ = writeln!(out, "no backup in {}", backups.dir);
                }
            }
        }
        if self.findings.is_empty() {
            let _ = writeln!(out, "\nno findings: every member answers, agrees on the leader and the data, no alarm");
        } else {
            let _ = writeln!(out);
            for finding in &self.findings {
                let severity = match finding.severity {
                    Severity::Info => "INFO",
                    Severity::Warning => "WARNING",
                    Severity::Critical => "CRITICAL",
                };
                let _ = writeln!(out, "{severity:<8} {}: {}", finding.subject, finding.text);
            }
        }
        out
    }
}

/// Member ID as etcdctl prints it.
pub(crate) fn hex(id: u64) -> String {
    format!("{id:x}")
}

/// Inspects the cluster behind `pool`: [`gather`], then [`judge`]. `login` is etcdgate's own
/// (`--user`), sent where etcd's auth asks for it (HashKV needs the root role).
pub async fn inspect(pool: &Pool, login: Option<&Login>, options: &InspectOptions) -> Inspection {
    let mut inspection = gather(pool, login, options).await;
    inspection.findings = judge(&inspection, options);
    inspection
}

/// The facts of an inspection, without findings.
pub async fn gather(pool: &Pool, login: Option<&Login>, options: &InspectOptions) -> Inspection {
    let started = Instant::now();
    let mut inspection = Inspection {
        taken_at_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        ..Inspection::default()
    };
    list_members(pool, options, &mut inspection).await;
    let http = MemberHttpClient::new(pool.options().tls.as_ref());
    let connections = Connections::new(pool, &inspection.members);
    futures::future::join_all(inspection.members.iter_mut().map(|member| ask_member(&connections, &http, options, member))).await;
    read_alarms(pool, login, options, &mut inspection).await;
    if options.check_consistency {
        compare_hashes(pool, &connections, login, options, &mut inspection).await;
    }
    let gateway_states = pool.member_states();
    for member in &mut inspection.members {
        let seen = gateway_states.iter().find(|(url, id, ..)| {
            (*id != 0 && hex(*id) == member.id) || member.client_urls.iter().any(|u| u.trim_end_matches('/') == url)
        });
        if let Some((_, _, state, evidence)) = seen {
            member.gateway_state = Some(state.to_string());
            member.gateway_evidence = Some(evidence.clone());
        }
    }
    inspection.took_ms = started.elapsed().as_millis() as u64;
    inspection
}

/// The member list, read through the pool (linearizable on etcd 3.5: a follower's own list
/// may lag a change just made; 3.4 answers from the member asked; a member's own list when
/// there is no leader); without it, the members are the endpoints the pool knows.
async fn list_members(pool: &Pool, options: &InspectOptions, inspection: &mut Inspection) {
    let list = |linearizable| {
        let call = pool.call(&Target::Any, RetryPolicy::Read, Timing::Unmeasured, move |connection| async move {
            ClusterClient::new(connection).member_list(MemberListRequest { linearizable }).await
        });
        tokio::time::timeout(options.call_timeout, call)
    };
    // Without a leader, a linearizable read fails: then a member's own list is better than none.
    let listed = match list(true).await {
        Ok(Ok(answer)) => Ok(Ok(answer)),
        _ => list(false).await,
    };
    match listed {
        Ok(Ok(answer)) => {
            let answer = answer.into_inner();
            inspection.cluster_id = answer.header.map(|h| hex(h.cluster_id)).unwrap_or_default();
            inspection.members = answer
                .members
                .into_iter()
                .map(|m| MemberReport {
                    id: hex(m.id),
                    name: m.name,
                    client_urls: m.client_ur_ls,
                    peer_urls: m.peer_ur_ls,
                    is_learner: m.is_learner,
                    ..MemberReport::default()
                })
                .collect();
            inspection.members.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        }
        failed => {
            inspection.member_list_error = Some(match failed {
                Ok(Err(status)) => status.message().to_string(),
                _ => format!("no answer within {:?}", options.call_timeout),
            });
            inspection.members = pool
                .member_states()
                .into_iter()
                .filter(|(_, _, state, _)| *state != etcdgate_upstream::State::Removed)
                .map(|(url, id, ..)| MemberReport {
                    id: if id == 0 { String::new() } else { hex(id) },
                    client_urls: vec![url],
                    ..MemberReport::default()
                })
                .collect();
        }
    }
}

/// One connection of the inspection's own per client URL (made on first use), shared by the
/// member's Status and HashKV.
struct Connections(HashMap<String, Result<MemberConnection, String>>);

impl Connections {
    fn new(pool: &Pool, members: &[MemberReport]) -> Connections {
        let urls = members.iter().flat_map(|m| &m.client_urls);
        Connections(urls.map(|url| (url.clone(), pool.direct_connection(url))).collect())
    }

    fn to(&self, url: &str) -> Result<MemberConnection, String> {
        self.0.get(url).cloned().unwrap_or_else(|| Err(format!("{url} is not a client URL of the member list")))
    }
}

/// Status from the member's first client URL that answers, then its quota from the same URL.
async fn ask_member(connections: &Connections, http: &MemberHttpClient, options: &InspectOptions, member: &mut MemberReport) {
    if member.client_urls.is_empty() {
        member.error = Some("the member has not started yet (no client URL): it was added but never joined".into());
        return;
    }
    let mut errors = Vec::new();
    for url in &member.client_urls {
        match status_of(connections.to(url), url, options.call_timeout).await {
            Ok(status) => {
                if member.id.is_empty() {
                    member.id = status.0.clone();
                }
                member.quota_bytes = match status.2 {
                    0 => quota_of(http, url, options.call_timeout).await,
                    quota => Some(quota),
                };
                member.status = Some(status.1);
                member.error = None;
                return;
            }
            Err(error) => errors.push(format!("{url}: {error}")),
        }
    }
    member.error = Some(errors.join("; "));
}

/// The member's ID, status and the quota its Status reports (0 before etcd 3.6).
async fn status_of(
    connection: Result<MemberConnection, String>,
    url: &str,
    timeout: Duration,
) -> Result<(String, MemberStatus, i64), String> {
    let connection = connection?;
    let asked = Instant::now();
    let answer = tokio::time::timeout(timeout, MaintenanceClient::new(connection).status(StatusRequest {}))
        .await
        .map_err(|_| format!("no answer to Status within {timeout:?}"))?
        .map_err(|status| status_message(&status))?;
    let answer: StatusResponse = answer.into_inner();
    let header = answer.header.unwrap_or_default();
    let status = MemberStatus {
        url: url.to_string(),
        version: answer.version,
        db_size: answer.db_size,
        db_size_in_use: answer.db_size_in_use,
        leader: hex(answer.leader),
        raft_term: answer.raft_term,
        raft_index: answer.raft_index,
        raft_applied_index: answer.raft_applied_index,
        revision: header.revision,
        errors: answer.errors,
        answered_ms: asked.elapsed().as_millis() as u64,
    };
    Ok((hex(header.member_id), status, answer.db_size_quota))
}

/// `etcd_server_quota_backend_bytes` from the member's `/metrics`.
async fn quota_of(http: &MemberHttpClient, url: &str, timeout: Duration) -> Option<i64> {
    let (status, _, body) = http.get(url.trim_end_matches('/'), "/metrics", timeout).await?;
    if !status.is_success() {
        return None;
    }
    let text = std::str::from_utf8(&body).ok()?;
    let line = text.lines().find(|line| line.starts_with("etcd_server_quota_backend_bytes "))?;
    let value: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(value as i64)
}

async fn read_alarms(pool: &Pool, login: Option<&Login>, options: &InspectOptions, inspection: &mut Inspection) {
    let read = as_gateway(pool, login, |token| async move {
        let request = AlarmRequest { action: AlarmAction::Get as i32, member_id: 0, alarm: AlarmType::None as i32 };
        pool.call(&Target::Any, RetryPolicy::Read, Timing::Unmeasured, |connection| {
            let request = with_token(request, &token);
            async move { MaintenanceClient::new(connection).alarm(request).await }
        })
        .await
    });
    match tokio::time::timeout(options.call_timeout, read).await {
        Ok(Ok(answer)) => {
            inspection.alarms = Some(
                answer
                    .into_inner()
                    .alarms
                    .into_iter()
                    .map(|a| Alarm {
                        member_id: hex(a.member_id),
                        alarm: AlarmType::try_from(a.alarm).map_or_else(|_| a.alarm.to_string(), |t| t.as_str_name().to_string()),
                    })
                    .collect(),
            )
        }
        Ok(Err(status)) => inspection.alarm_error = Some(status_message(&status)),
        Err(_) => inspection.alarm_error = Some(format!("no answer to Alarm within {:?}", options.call_timeout)),
    }
}

/// HashKV on every voter that answered Status (learners refuse it), at the lowest revision any
/// of them is at (all have it); once more at a new revision if a compaction overtook the first
/// round.
async fn compare_hashes(
    pool: &Pool,
    connections: &Connections,
    login: Option<&Login>,
    options: &InspectOptions,
    inspection: &mut Inspection,
) {
    for round in 0..2 {
        let voters = || inspection.members.iter().filter(|m| !m.is_learner);
        let Some(revision) = voters().filter_map(|m| m.status.as_ref()).map(|s| s.revision).min() else {
            return;
        };
        inspection.hashed_revision = Some(revision);
        let hashes = inspection.members.iter().map(|member| async move {
            if member.is_learner {
                return None;
            }
            let connection = match connections.to(&member.status.as_ref()?.url) {
                Ok(connection) => connection,
                Err(error) => return Some(Err(error)),
            };
            let call = as_gateway(pool, login, |token| {
                let mut client = MaintenanceClient::new(connection.clone());
                async move { client.hash_kv(with_token(HashKvRequest { revision }, &token)).await }
            });
            Some(match tokio::time::timeout(options.hash_timeout, call).await {
                Ok(Ok(answer)) => {
                    let answer = answer.into_inner();
                    Ok(MemberHash { revision, compact_revision: answer.compact_revision, hash: answer.hash })
                }
                Ok(Err(status)) => Err(status_message(&status)),
                Err(_) => Err(format!("no answer to HashKV within {:?}", options.hash_timeout)),
            })
        });
        let results = futures::future::join_all(hashes).await;
        let overtaken = results.iter().flatten().any(|r| r.as_ref().is_err_and(|e| e.contains("required revision has been compacted")));
        for (member, result) in inspection.members.iter_mut().zip(results) {
            (member.hash, member.hash_error) = match result {
                Some(Ok(hash)) => (Some(hash), None),
                Some(Err(error)) => (None, Some(error)),
                None => (None, None),
            };
        }
        if !overtaken || round == 1 {
            return;
        }
    }
}

/// What an inspection's facts mean, most severe first.
pub fn judge(inspection: &Inspection, options: &InspectOptions) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut add = |severity, subject: &str, text: String| findings.push(Finding { severity, subject: subject.to_string(), text });
    let cluster = "cluster";

    if let Some(error) = &inspection.member_list_error {
        add(Severity::Critical, cluster, format!("no member answered MemberList ({error}); members below are the endpoints etcdgate knows"));
    }

    // Quorum: voters that answer and have a leader.
    let voters: Vec<&MemberReport> = inspection.members.iter().filter(|m| !m.is_learner).collect();
    let serving = voters.iter().filter(|m| m.status.as_ref().is_some_and(|s| s.leader != "0")).count();
    let quorum = voters.len() / 2 + 1;
    if !voters.is_empty() {
        if serving < quorum {
            add(
                Severity::Critical,
                cluster,
                format!("only {serving} of {} voting members answer with a leader, {quorum} needed: the cluster refuses writes and linearizable reads", voters.len()),
            );
        } else if serving == quorum && serving < voters.len() {
            add(
                Severity::Warning,
                cluster,
                format!("{serving} of {} voting members answer with a leader: one more failure and the cluster refuses writes", voters.len()),
            );
        } else if serving == quorum && voters.len() > 1 {
            add(Severity::Info, cluster, format!("{} voting members tolerate no failure; 3 or 5 tolerate 1 or 2", voters.len()));
        }
    }

    for member in &inspection.members {
        let subject = member.label();
        match (&member.status, &member.error) {
            (None, Some(error)) => add(Severity::Warning, &subject, format!("does not answer: {error}")),
            (None, None) => add(Severity::Warning, &subject, "does not answer".into()),
            (Some(status), _) => {
                if status.leader == "0" && !member.is_learner {
                    add(Severity::Critical, &subject, format!("has no leader (raft term {})", status.raft_term));
                }
                for error in &status.errors {
                    add(Severity::Warning, &subject, format!("reports: {error}"));
                }
            }
        }
    }

    // Leader agreement among members that have one.
    let mut leaders: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for member in &inspection.members {
        if let Some(status) = member.status.as_ref().filter(|s| s.leader != "0") {
            leaders.entry(status.leader.as_str()).or_default().push(member.label());
        }
    }
    if leaders.len() > 1 {
        let views: Vec<String> = leaders.iter().map(|(leader, who)| format!("{} say {leader}", who.join(", "))).collect();
        add(Severity::Warning, cluster, format!("members disagree on the leader ({}): an election is under way or a member is cut off", views.join("; ")));
    } else if let Some(leader) = leaders.keys().next() {
        if inspection.member_list_error.is_none() && !inspection.members.iter().any(|m| m.id == *leader) {
            add(Severity::Warning, cluster, format!("the leader {leader} is not in the member list"));
        }
    }

    // Lag behind the member that applied the most.
    for member in &inspection.members {
        let Some(lag) = inspection.applied_lag(member) else { continue };
        let id = &member.id;
        match (member.is_learner, lag > options.lag_threshold) {
            (false, true) => add(Severity::Warning, &member.label(), format!("applied {lag} raft entries fewer than the most advanced member")),
            (true, false) => add(Severity::Info, &member.label(), format!("is a learner that has caught up: promote it with `etcdctl member promote {id}`")),
            (true, true) => add(Severity::Info, &member.label(), format!("is a learner {lag} raft entries behind; promote it once it has caught up")),
            (false, false) => {}
        }
    }

    // Versions.
    let mut versions: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for member in &inspection.members {
        if let Some(status) = &member.status {
            versions.entry(status.version.as_str()).or_default().push(member.label());
        }
    }
    if versions.len() > 1 {
        let views: Vec<String> = versions.iter().map(|(version, who)| format!("{version} on {}", who.join(", "))).collect();
        add(Severity::Warning, cluster, format!("members run different etcd versions ({}): finish the upgrade", views.join("; ")));
    }

    // Alarms.
    match (&inspection.alarms, &inspection.alarm_error) {
        (Some(alarms), _) => {
            for alarm in alarms {
                let who = inspection.label_of(&alarm.member_id);
                let text = match alarm.alarm.as_str() {
                    "NOSPACE" => "NOSPACE alarm: the database reached its quota and etcd refuses writes; compact, defragment each member, then `etcdctl alarm disarm`".to_string(),
                    "CORRUPT" => "CORRUPT alarm: etcd found this member's data differs from the others'; stop it, restore it from a healthy member, then `etcdctl alarm disarm`".to_string(),
                    other => format!("{other} alarm"),
                };
                add(Severity::Critical, &who, text);
            }
        }
        (None, Some(error)) => add(Severity::Warning, cluster, format!("alarms could not be read: {error}")),
        (None, None) => {}
    }

    // Quota and fragmentation.
    for member in &inspection.members {
        let Some(status) = &member.status else { continue };
        let mib = |bytes: i64| bytes as f64 / (1024.0 * 1024.0);
        if let Some(quota) = member.quota_bytes.filter(|q| *q > 0) {
            let used = status.db_size as f64 / quota as f64;
            let text = format!("database is {:.1} MiB, {:.0}% of its quota of {:.1} MiB", mib(status.db_size), used * 100.0, mib(quota));
            if used >= 0.95 {
                add(Severity::Critical, &member.label(), format!("{text}: writes stop at 100% (NOSPACE); compact and defragment now"));
            } else if used >= 0.8 {
                add(Severity::Warning, &member.label(), format!("{text}: compact and defragment, or raise --quota-backend-bytes"));
            }
        }
        let free = status.db_size - status.db_size_in_use;
        if status.db_size_in_use > 0 && free >= 100 * 1024 * 1024 && free * 2 >= status.db_size {
            add(Severity::Info, &member.label(), format!("defragmenting would free about {:.0} MiB of its {:.0} MiB database (`etcdctl defrag`, one member at a time)", mib(free), mib(status.db_size)));
        }
    }

    // Compaction.
    let revision = inspection.members.iter().filter_map(|m| m.status.as_ref()).map(|s| s.revision).max();
    let compacted = inspection.members.iter().filter_map(|m| m.hash.as_ref()).map(|h| h.compact_revision).max();
    if let (Some(revision), Some(compacted)) = (revision, compacted) {
        let uncompacted = revision - compacted;
        if uncompacted > options.uncompacted_revisions {
            let since = if compacted <= 0 { "never compacted".to_string() } else { format!("last compacted at revision {compacted}") };
            add(
                Severity::Warning,
                cluster,
                format!("{uncompacted} revisions kept ({since}): the database grows until compacted; is auto-compaction on (--auto-compaction-retention, off by default)?"),
            );
        }
    }

    // Consistency: hashes taken at the same compact revision must agree.
    let by_compaction = inspection.hashes_by_compaction();
    for (compacted, hashes) in &by_compaction {
        if hashes.len() > 1 {
            let views: Vec<String> = hashes.iter().map(|(hash, who)| format!("{} have {hash:08x}", who.join(", "))).collect();
            let at = inspection.hashed_revision.unwrap_or_default();
            add(
                Severity::Critical,
                cluster,
                format!("members hold different data at revision {at} (compacted at {compacted}): {}; find the odd one out and restore it from a healthy member", views.join("; ")),
            );
        }
    }
    if by_compaction.len() > 1 {
        add(Severity::Info, cluster, "members are at different compaction revisions, so not all hashes could be compared; inspect again".into());
    }
    for member in &inspection.members {
        if let Some(error) = &member.hash_error {
            let severity = if error.contains("permission denied") || error.contains("user name is empty") { Severity::Info } else { Severity::Warning };
            let hint = if severity == Severity::Info { " (HashKV needs the root role: give etcdgate's --user the root role to check consistency)" } else { "" };
            add(severity, &member.label(), format!("HashKV failed: {error}{hint}"));
        }
    }

    if let Some(backups) = &inspection.backups {
        judge_backups(backups, inspection.taken_at_unix_ms, &mut add);
    }

    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

/// No verified backup, an old one, or a failed attempt.
fn judge_backups(backups: &BackupsView, now_unix_ms: u64, add: &mut impl FnMut(Severity, &str, String)) {
    let subject = "backups";
    let dir = &backups.dir;
    match (backups.kept.first(), &backups.last_error) {
        (None, Some(error)) => add(Severity::Critical, subject, format!("no verified backup in {dir}; the latest attempt failed: {error}")),
        (None, None) => {}
        (Some(_), Some(error)) => add(Severity::Warning, subject, format!("the latest backup attempt failed: {error}")),
        (Some(latest), None) => {
            let age_secs = now_unix_ms.saturating_sub(latest.taken_at_unix_ms) / 1000;
            if age_secs > 2 * backups.interval_secs + 60 {
                add(Severity::Warning, subject, format!("the latest verified backup, {}, is {} old", latest.file, age(age_secs)));
            }
        }
    }
}

/// `3h05m`, `12m`, `40s`.
fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, id: &str, leader: &str, applied: u64, revision: i64) -> MemberReport {
        MemberReport {
            id: id.into(),
            name: name.into(),
            client_urls: vec![format!("http://127.0.0.1:{id}")],
            status: Some(MemberStatus {
                version: "3.5.1".into(),
                db_size: 20 << 20,
                db_size_in_use: 20 << 20,
                leader: leader.into(),
                raft_term: 2,
                raft_applied_index: applied,
                revision,
                ..MemberStatus::default()
            }),
            quota_bytes: Some(2 << 30),
            hash: Some(MemberHash { revision, compact_revision: 0, hash: 7 }),
            ..MemberReport::default()
        }
    }

    fn healthy() -> Inspection {
        Inspection {
            cluster_id: "c".into(),
            members: vec![member("a", "1", "1", 100, 50), member("b", "2", "1", 100, 50), member("c", "3", "1", 99, 50)],
            alarms: Some(vec![]),
            hashed_revision: Some(50),
            ..Inspection::default()
        }
    }

    fn texts(inspection: &Inspection) -> Vec<(Severity, String, String)> {
        judge(inspection, &InspectOptions::default()).into_iter().map(|f| (f.severity, f.subject, f.text)).collect()
    }

    #[test]
    fn a_healthy_cluster_has_no_findings() {
        assert_eq!(texts(&healthy()), vec![]);
    }

    #[test]
    fn a_member_down_leaves_no_failure_to_spare() {
        let mut inspection = healthy();
        inspection.members[2].status = None;
        inspection.members[2].hash = None;
        inspection.members[2].error = Some("connection refused".into());
        let found = texts(&inspection);
        assert_eq!(found[0].0, Severity::Warning);
        assert!(found.iter().any(|(_, subject, text)| subject == "cluster" && text.contains("one more failure")), "{found:?}");
        assert!(found.iter().any(|(_, subject, text)| subject == "c" && text.contains("connection refused")), "{found:?}");
    }

    #[test]
    fn two_members_down_is_lost_quorum() {
        let mut inspection = healthy();
        for i in 1..3 {
            inspection.members[i].status = None;
            inspection.members[i].hash = None;
        }
        let found = texts(&inspection);
        assert_eq!(found[0].0, Severity::Critical);
        assert!(found[0].2.contains("only 1 of 3"), "{found:?}");
    }

    #[test]
    fn different_hashes_at_one_compaction_are_critical_and_name_the_odd_one() {
        let mut inspection = healthy();
        inspection.members[1].hash.as_mut().unwrap().hash = 8;
        let found = texts(&inspection);
        assert_eq!(found[0].0, Severity::Critical);
        assert!(found[0].2.contains("b have 00000008") && found[0].2.contains("a, c have 00000007"), "{found:?}");
        // Different compactions are not compared.
        inspection.members[1].hash.as_mut().unwrap().compact_revision = 10;
        let found = texts(&inspection);
        assert!(found.iter().all(|f| f.0 == Severity::Info), "{found:?}");
    }

    #[test]
    fn lag_quota_alarms_versions_and_learners_are_reported() {
        let mut inspection = healthy();
        inspection.members[2].status.as_mut().unwrap().raft_applied_index = 10;
        inspection.members[2].status.as_mut().unwrap().raft_index = 10;
        inspection.members[0].quota_bytes = Some(21 << 20);
        inspection.members[1].status.as_mut().unwrap().version = "3.4.23".into();
        inspection.alarms = Some(vec![Alarm { member_id: "2".into(), alarm: "NOSPACE".into() }]);
        let mut learner = member("d", "4", "1", 100, 50);
        learner.is_learner = true;
        inspection.members.push(learner);
        let found = texts(&inspection);
        let has = |severity: Severity, subject: &str, part: &str| {
            found.iter().any(|(s, who, text)| *s == severity && who == subject && text.contains(part))
        };
        let options = InspectOptions { lag_threshold: 50, ..InspectOptions::default() };
        let lagging = judge(&inspection, &options);
        assert!(lagging.iter().any(|f| f.subject == "c" && f.text.contains("applied 90 raft entries fewer")), "{lagging:?}");
        assert!(has(Severity::Critical, "a", "of its quota"), "{found:?}");
        assert!(has(Severity::Critical, "b", "NOSPACE"), "{found:?}");
        assert!(has(Severity::Warning, "cluster", "3.4.23 on b"), "{found:?}");
        assert!(has(Severity::Info, "d", "member promote 4"), "{found:?}");
    }

    #[test]
    fn a_member_without_leader_and_a_long_uncompacted_history_are_reported() {
        let mut inspection = healthy();
        inspection.members[0].status.as_mut().unwrap().leader = "0".into();
        let options = InspectOptions { uncompacted_revisions: 10, ..InspectOptions::default() };
        let found = judge(&inspection, &options);
        assert!(found.iter().any(|f| f.severity == Severity::Critical && f.subject == "a" && f.text.contains("no leader")), "{found:?}");
        assert!(found.iter().any(|f| f.text.contains("50 revisions kept (never compacted)")), "{found:?}");
    }
}
