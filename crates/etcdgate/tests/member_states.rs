//! Member states through the `etcdgate` binary, against real 3-member clusters of every etcd
//! version: a paused (SIGSTOP) follower leaves rotation and is back after SIGCONT, a learner
//! never answers a client request, a killed follower costs no client an error. Each test
//! reads etcdgate's log for the member's state changes and prints how long they took.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcdgate_proto::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, maintenance_client::MaintenanceClient, MemberListRequest,
    MemberUpdateRequest, PutRequest, RangeRequest, StatusRequest,
};
use etcdgate_testkit::{Cluster, EtcdVersion};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use common::{member_requests, Etcdgate};

/// Every client call's deadline.
const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// Longest wait for anything the test waits for (a state change, traffic coming back).
const WAIT: Duration = Duration::from_secs(30);

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    request
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// The member ID of the member at `url`, asked of it directly.
async fn member_id(url: &str) -> u64 {
    let status = MaintenanceClient::new(channel(url).await).status(request(StatusRequest {})).await.unwrap();
    status.into_inner().header.unwrap().member_id
}

/// Which members answered `calls` Status calls through etcdgate (each must succeed).
async fn member_ids_seen(url: &str, calls: usize) -> Vec<u64> {
    let mut maintenance = MaintenanceClient::new(channel(url).await);
    let mut ids = Vec::new();
    for _ in 0..calls {
        let status = maintenance.status(request(StatusRequest {})).await.expect("Status through etcdgate").into_inner();
        ids.push(status.header.unwrap().member_id);
    }
    ids.sort();
    ids.dedup();
    ids
}

/// Waits until repeated Status calls through etcdgate reach member `id`.
async fn wait_for_traffic_to(url: &str, id: u64, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !member_ids_seen(url, 6).await.contains(&id) {
        assert!(Instant::now() < deadline, "{what} gets no traffic after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A follower's index.
async fn follower(cluster: &Cluster) -> usize {
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    (leader + 1) % 3
}

/// A 3-member cluster behind a logged etcdgate, and a follower that is getting traffic.
struct FollowerUnderTraffic {
    cluster: Cluster,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
    gateway: Etcdgate,
    url: String,
    victim: usize,
    victim_url: String,
    victim_id: u64,
}

impl FollowerUnderTraffic {
    async fn start(version: EtcdVersion) -> FollowerUnderTraffic {
        let cluster = Cluster::start(version, 3).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("etcdgate.log");
        let gateway = Etcdgate::start_logged(&cluster.endpoints(), &log);
        let url = gateway.url();
        let victim = follower(&cluster).await;
        let victim_url = cluster.client_url(victim);
        let victim_id = member_id(&victim_url).await;
        wait_for_traffic_to(&url, victim_id, "the follower").await;
        FollowerUnderTraffic { cluster, _dir: dir, log, gateway, url, victim, victim_url, victim_id }
    }
}

// ---------------------------------------------------------------------------------------------
// etcdgate's log: "<RFC 3339 time> LEVEL target: member state changed member=URL from=A to=B
// after_ms=N evidence=..."

#[derive(Debug)]
struct Change {
    at: SystemTime,
    from: String,
    to: String,
    evidence: String,
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-23T10:11:12.345678Z`.
fn parse_time(text: &str) -> Option<SystemTime> {
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(|p| p.parse::<i64>());
    let (h, min, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    let secs = days_from_civil(y, m, d) * 86_400 + h * 3600 + min * 60 + s;
    let nanos: u32 = format!("{:0<9}", &fraction[..fraction.len().min(9)]).parse().ok()?;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let rest = &line[line.find(&key)? + key.len()..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

/// The state changes of `member` in etcdgate's log.
fn changes(log: &Path, member: &str) -> Vec<Change> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(strip_ansi)
        .filter(|line| line.contains("member state changed") && field(line, "member") == Some(member))
        .filter_map(|line| {
            Some(Change {
                at: parse_time(line.split_whitespace().next()?)?,
                from: field(&line, "from")?.to_string(),
                to: field(&line, "to")?.to_string(),
                evidence: line.split_once(" evidence=")?.1.to_string(),
            })
        })
        .collect()
}

/// Waits for `member`'s first change to `to` logged after `since`.
async fn wait_for_change(log: &Path, member: &str, to: &str, since: SystemTime) -> Change {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(change) = changes(log, member).into_iter().find(|c| c.to == to && c.at >= since) {
            return change;
        }
        if Instant::now() >= deadline {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{member} not {to} after {WAIT:?}; etcdgate log:\n{log_text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// etcdgate's log lines about members (for the test output).
fn print_member_log(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    for line in text.lines().map(strip_ansi).filter(|l| l.contains(" member")) {
        eprintln!("    {line}");
    }
}

fn after(change: &Change, since: SystemTime) -> Duration {
    change.at.duration_since(since).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Sequential client load.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Range,
    Put,
}

/// One client doing `op` calls one after another, each with [`CALL_DEADLINE`], until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    task: JoinHandle<Vec<String>>,
}

impl Load {
    async fn start(url: &str, op: Op) -> Load {
        let mut kv = KvClient::new(channel(url).await);
        let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let task = tokio::spawn({
            let (stop, done) = (stop.clone(), done.clone());
            async move {
                let mut errors = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("/member-states/{}", i % 64).into_bytes();
                    let call = async {
                        match op {
                            Op::Range => kv.range(request(RangeRequest { key, ..Default::default() })).await.map(drop),
                            Op::Put => kv.put(request(PutRequest { key, value: i.to_string().into_bytes(), ..Default::default() })).await.map(drop),
                        }
                    };
                    match tokio::time::timeout(CALL_DEADLINE + Duration::from_secs(1), call).await {
                        Ok(Ok(())) => {}
                        Ok(Err(status)) => errors.push(format!("{op:?} {i}: {status}")),
                        Err(_) => errors.push(format!("{op:?} {i}: no answer within {CALL_DEADLINE:?}")),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                errors
            }
        });
        Load { stop, done, task }
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `n` more calls are done; false if the bound passed first.
    async fn wait_for(&self, n: usize, bound: Duration) -> bool {
        let target = self.done() + n;
        let deadline = Instant::now() + bound;
        while self.done() < target {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops the client; returns how many calls it made and its errors.
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.task.await.unwrap();
        (self.done.load(Ordering::Relaxed), errors)
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_follower_leaves_rotation_and_is_back_after_it_resumes() {
    for version in EtcdVersion::all() {
        let FollowerUnderTraffic { mut cluster, _dir, log, gateway: _gateway, url, victim, victim_url, victim_id } =
            FollowerUnderTraffic::start(version).await;

        let reads = Load::start(&url, Op::Range).await;
        let writes = Load::start(&url, Op::Put).await;
        assert!(reads.wait_for(20, WAIT).await && writes.wait_for(20, WAIT).await, "{version}: no progress before the pause");

        let paused = SystemTime::now();
        let reads_before = reads.done();
        cluster.pause(victim).unwrap();
        let hung = wait_for_change(&log, &victim_url, "hung", paused).await;
        assert!(!member_ids_seen(&url, 9).await.contains(&victim_id), "{version}: a hung member gets no calls");
        // Hundreds of calls while it is stopped. Bounded: a write that reached the member before
        // it was found hung waits for its answer, which must come within its deadline.
        reads.wait_for(300, Duration::from_secs(5)).await;
        let reads_during = reads.done() - reads_before;

        let resumed = SystemTime::now();
        cluster.resume(victim).unwrap();
        let back = wait_for_change(&log, &victim_url, "healthy", resumed).await;
        wait_for_traffic_to(&url, victim_id, "the resumed follower").await;
        let writes_during = writes.done();
        let (read_count, read_errors) = reads.finish().await;
        let (write_count, write_errors) = writes.finish().await;
        assert!(read_errors.is_empty(), "{version}: reads failed: {read_errors:?}");
        assert!(write_errors.is_empty(), "{version}: writes failed: {write_errors:?}");
        eprintln!(
            "{version}: paused follower {victim_url}: {} -> hung {:?} after SIGSTOP ({}); {} -> healthy {:?} after SIGCONT ({}); \
             {reads_during} reads during the pause, {read_count} reads and {write_count} writes in all ({writes_during} writes before traffic returned), no errors",
            hung.from,
            after(&hung, paused),
            hung.evidence,
            back.from,
            after(&back, resumed),
            back.evidence,
        );
        print_member_log(&log);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_learner_never_answers_a_client_request() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 3).await.unwrap();
        let learner = cluster.add_learner().await.unwrap();
        let learner_url = cluster.client_url(learner);
        let learner_id = member_id(&learner_url).await;
        let voters: Vec<String> = (0..3).map(|i| cluster.client_url(i)).collect();
        let mut voter_ids = Vec::new();
        for url in &voters {
            voter_ids.push(member_id(url).await);
        }
        voter_ids.sort();

        // One etcdgate is given the learner's URL, the other finds it in MemberList.
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("listed in --endpoints", cluster.endpoints(), dir.path().join("configured.log")),
            ("found in MemberList", voters.join(","), dir.path().join("discovered.log")),
        ];
        for (how, endpoints, log) in cases {
            let started = SystemTime::now();
            let gateway = Etcdgate::start_logged(&endpoints, &log);
            let url = gateway.url();
            let change = wait_for_change(&log, &learner_url, "learner", started).await;
            let seen = member_ids_seen(&url, 60).await;
            assert!(!seen.is_empty() && seen.iter().all(|id| voter_ids.contains(id)), "{version}, learner {how}: Status only from voters: {seen:?}");

            // A learner refuses linearizable reads and MemberList ("rpc not supported for
            // learner"): every one succeeding means none went there.
            let (mut kv, mut cluster_api) = (KvClient::new(channel(&url).await), ClusterClient::new(channel(&url).await));
            for i in 0..30 {
                kv.range(request(RangeRequest { key: b"/member-states/x".to_vec(), ..Default::default() }))
                    .await
                    .unwrap_or_else(|e| panic!("{version}, learner {how}: range {i}: {e}"));
                cluster_api
                    .member_list(request(MemberListRequest::default()))
                    .await
                    .unwrap_or_else(|e| panic!("{version}, learner {how}: member list {i}: {e}"));
            }
            // Leader-routed calls: a no-op MemberUpdate of a voter, which a learner would refuse.
            let members = cluster_api.member_list(request(MemberListRequest::default())).await.unwrap().into_inner().members;
            let voter = members.iter().find(|m| !m.is_learner).unwrap();
            for i in 0..3 {
                cluster_api
                    .member_update(request(MemberUpdateRequest { id: voter.id, peer_ur_ls: voter.peer_ur_ls.clone() }))
                    .await
                    .unwrap_or_else(|e| panic!("{version}, learner {how}: member update {i}: {e}"));
            }
            assert!(members.iter().any(|m| m.id == learner_id && m.is_learner), "{version}: still a learner");
            assert_eq!(member_requests(gateway.addr(), &learner_url), 0, "{version}, learner {how}: no call was sent to it");
            eprintln!(
                "{version}: learner {learner_url} {how}: {} -> learner {:?} after etcdgate started ({}); \
                 60 Status, 30 Range, 30 MemberList, 3 MemberUpdate through etcdgate, none to it",
                change.from,
                after(&change, started),
                change.evidence
            );
            print_member_log(&log);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_follower_costs_no_client_error() {
    for version in EtcdVersion::all() {
        let FollowerUnderTraffic { mut cluster, _dir, log, gateway: _gateway, url, victim, victim_url, victim_id } =
            FollowerUnderTraffic::start(version).await;

        let mut kv = KvClient::new(channel(&url).await);
        let killed = SystemTime::now();
        cluster.kill(victim);
        for i in 0..200 {
            let key = format!("/member-states/kill/{i}").into_bytes();
            kv.put(request(PutRequest { key: key.clone(), value: b"v".to_vec(), ..Default::default() }))
                .await
                .unwrap_or_else(|e| panic!("{version}: put {i} after kill -9 of a follower: {e}"));
            let got = kv
                .range(request(RangeRequest { key, ..Default::default() }))
                .await
                .unwrap_or_else(|e| panic!("{version}: range {i} after kill -9 of a follower: {e}"))
                .into_inner();
            assert_eq!(got.kvs.len(), 1);
        }
        let down = wait_for_change(&log, &victim_url, "down", killed).await;
        assert!(!member_ids_seen(&url, 9).await.contains(&victim_id), "{version}: a down member gets no calls");

        let restarted = SystemTime::now();
        cluster.restart(victim).await.unwrap();
        let ready = SystemTime::now();
        let back = wait_for_change(&log, &victim_url, "healthy", restarted).await;
        wait_for_traffic_to(&url, victim_id, "the restarted follower").await;
        eprintln!(
            "{version}: killed follower {victim_url}: {} -> down {:?} after SIGKILL ({}); 200 puts + 200 ranges, no errors; \
             restarted, healthy (/health) after {:?}, {} -> healthy in etcdgate {:?} after restart began ({})",
            down.from,
            after(&down, killed),
            down.evidence,
            ready.duration_since(restarted).unwrap_or_default(),
            back.from,
            after(&back, restarted),
            back.evidence
        );
        print_member_log(&log);
    }
}
