//! Requests that crash etcd members, refused before they leave etcdgate.
//!
//! etcd 3.4 and 3.5 (measured on 3.4.23 and 3.5.1) pass these requests through their own
//! checks and then panic serving them. Sent to etcd directly, one request kills one member
//! (a read) or every member at once (a write: each applies it; etcd 3.4 panics again at
//! every restart on an alarm `ACTIVATE` of `NONE`). Through a proxy that retries reads on
//! the next member when their member drops the connection, one read would kill them all.
//! Each is refused here with the error a later etcd release gives, or a clear one of
//! etcdgate's where etcd has none:
//!
//! | request | crashes | answer |
//! |---|---|---|
//! | Range, or a range in a Txn at any depth, with a sort target or order etcd does not know | 3.4, 3.5.0–3.5.1 (etcd-io/etcd#13554; order: refused since) | `etcdserver: invalid sort option` |
//! | Alarm with an action etcd does not know | 3.4, 3.5 | `etcdgate: unknown alarm action N` |
//! | Alarm `ACTIVATE` of `NONE` (3.5 ignores it) or of a type etcd does not know | 3.4 / 3.5 | `etcdgate: ...` |
//! | RoleGrantPermission without a permission | 3.4 (3.5 refuses it) | `etcdserver: permission not given` |
//!
//! Requests etcd refuses on its own anyway (an empty key before the bad sort option, say)
//! are left for etcd to answer, so that the error is the one etcd gives.
//!
//! Requests of death not known yet: a read that two members failed in transit while serving
//! it, both found down right after, is not sent to a third (see
//! `etcdgate_upstream::CUT_TWICE`), and the same client request (same RPC, same bytes) is
//! then held back for [`HOLD`], long enough for a supervisor to restart the members: a client
//! that retries it cannot kill them again as they come back. The request reached two members
//! at most, so once more than two have gone down since it was sent, something else is taking
//! them down (the whole cluster being stopped or restarted, at once or one after the other):
//! then it is not held back, or is let go, since holding it would only refuse a harmless
//! request once the members are back. A member that was down before it was sent does not
//! count: a request that kills the two members left is held back.
//! etcdgate's own reads (the cache's loads and barriers) are never held back.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::alarm_request::AlarmAction;
use etcdgate_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcdgate_proto::etcdserverpb::{request_op, AlarmRequest, AlarmType, AuthRoleGrantPermissionRequest, RangeRequest, TxnRequest};
use etcdgate_upstream::Pool;
use tonic::Status;

/// What checking a request found.
enum Found {
    /// Nothing that crashes etcd.
    Nothing,
    /// Something etcd refuses itself before it gets to what would crash it.
    RefusedByEtcd,
    /// A request of death, and the answer to give instead.
    Refuse(Status),
}

fn invalid_sort_option() -> Status {
    Status::invalid_argument("etcdserver: invalid sort option")
}

fn check_range(request: &RangeRequest) -> Found {
    if request.key.is_empty() {
        return Found::RefusedByEtcd;
    }
    if SortOrder::try_from(request.sort_order).is_err() || SortTarget::try_from(request.sort_target).is_err() {
        return Found::Refuse(invalid_sort_option());
    }
    Found::Nothing
}

/// A Txn's compares and operations in the order etcd checks them.
fn check_txn(request: &TxnRequest) -> Found {
    if request.compare.iter().any(|compare| compare.key.is_empty()) {
        return Found::RefusedByEtcd;
    }
    for op in request.success.iter().chain(&request.failure) {
        let found = match &op.request {
            Some(request_op::Request::RequestRange(range)) => check_range(range),
            Some(request_op::Request::RequestPut(put)) if put.key.is_empty() => Found::RefusedByEtcd,
            Some(request_op::Request::RequestDeleteRange(delete)) if delete.key.is_empty() => Found::RefusedByEtcd,
            Some(request_op::Request::RequestTxn(txn)) => check_txn(txn),
            _ => Found::Nothing,
        };
        if !matches!(found, Found::Nothing) {
            return found;
        }
    }
    Found::Nothing
}

fn refused(found: Found) -> Option<Status> {
    match found {
        Found::Refuse(status) => Some(status),
        Found::Nothing | Found::RefusedByEtcd => None,
    }
}

/// The refusal of a Range etcd would crash on.
pub fn range(request: &RangeRequest) -> Option<Status> {
    refused(check_range(request))
}

/// The refusal of a Txn etcd would crash on.
pub fn txn(request: &TxnRequest) -> Option<Status> {
    refused(check_txn(request))
}

/// The refusal of an Alarm request etcd would crash on.
pub fn alarm(request: &AlarmRequest) -> Option<Status> {
    let Ok(action) = AlarmAction::try_from(request.action) else {
        return Some(Status::invalid_argument(format!("etcdgate: unknown alarm action {}", request.action)));
    };
    if action != AlarmAction::Activate {
        return None;
    }
    match AlarmType::try_from(request.alarm) {
        Ok(AlarmType::None) => Some(Status::invalid_argument(
            "etcdgate: an alarm to activate needs a type, NOSPACE or CORRUPT (etcd 3.4 crashes on NONE)",
        )),
        Ok(_) => None,
        Err(_) => Some(Status::invalid_argument(format!("etcdgate: unknown alarm type {}", request.alarm))),
    }
}

/// The refusal of a RoleGrantPermission without a permission, in etcd 3.5's words.
pub fn role_grant_permission(request: &AuthRoleGrantPermissionRequest) -> Option<Status> {
    request.perm.is_none().then(|| Status::invalid_argument("etcdserver: permission not given"))
}

/// How long a request two members failed while serving it is held back.
pub const HOLD: Duration = Duration::from_secs(30);
/// Requests held back at most (the oldest is let go first).
const MAX_HELD: usize = 64;
/// How often a held request looks for other members down (see the module doc).
const OTHERS_DOWN_CHECK: Duration = Duration::from_millis(100);

/// Requests held back: their fingerprints and until when.
static HELD: Mutex<VecDeque<(u64, Instant)>> = Mutex::new(VecDeque::new());
/// How many there are, read without the lock on every call.
static HELD_COUNT: AtomicUsize = AtomicUsize::new(0);

fn fingerprint<M: prost::Message>(rpc: &str, message: &M) -> u64 {
    let mut hasher = DefaultHasher::new();
    rpc.hash(&mut hasher);
    message.encode_to_vec().hash(&mut hasher);
    hasher.finish()
}

fn with_held<T>(f: impl FnOnce(&mut VecDeque<(u64, Instant)>) -> T) -> T {
    let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
    let now = Instant::now();
    held.retain(|(_, until)| *until > now);
    let result = f(&mut held);
    HELD_COUNT.store(held.len(), Ordering::Relaxed);
    result
}

/// Whether more members have gone down since `sent_at` than a request sent then can have
/// reached (see the module doc).
fn others_went_down(pool: &Pool, sent_at: Instant) -> bool {
    pool.gone_down_since(sent_at) > 2
}

/// Holds back `message` (an `rpc` call sent at `sent_at`) for [`HOLD`]: two members failed
/// while serving it. Unless, or until, members it never reached go down (see the module doc).
pub fn hold_back<M: prost::Message>(rpc: &'static str, message: &M, pool: Arc<Pool>, sent_at: Instant) {
    if others_went_down(&pool, sent_at) {
        tracing::info!(rpc, "two etcd members failed while serving a request, and others went down too: not holding it back");
        return;
    }
    let fingerprint = fingerprint(rpc, message);
    tokio::spawn(let_go_when_others_go_down(pool, rpc, fingerprint, sent_at));
    tracing::warn!(rpc, hold_secs = HOLD.as_secs(), "two etcd members failed while serving the same request: holding it back");
    crate::metrics::held_back(rpc);
    with_held(|held| {
        held.retain(|(held, _)| *held != fingerprint);
        if held.len() == MAX_HELD {
            held.pop_front();
        }
        held.push_back((fingerprint, Instant::now() + HOLD));
    });
}

async fn let_go_when_others_go_down(pool: Arc<Pool>, rpc: &'static str, fingerprint: u64, sent_at: Instant) {
    let until = Instant::now() + HOLD;
    while Instant::now() < until {
        tokio::time::sleep(OTHERS_DOWN_CHECK).await;
        if others_went_down(&pool, sent_at) {
            let held = with_held(|held| {
                let before = held.len();
                held.retain(|(held, _)| *held != fingerprint);
                held.len() < before
            });
            if held {
                tracing::info!(rpc, "another etcd member went down, one the held request never reached; letting it go");
            }
            return;
        }
    }
}

/// The refusal of a request that is held back.
pub fn held_back<M: prost::Message>(rpc: &str, message: &M) -> Option<Status> {
    if HELD_COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let fingerprint = fingerprint(rpc, message);
    let until = with_held(|held| held.iter().find(|(held, _)| *held == fingerprint).map(|(_, until)| *until))?;
    Some(Status::unavailable(format!(
        "etcdgate: request held back for {}s more: two etcd members failed while serving it",
        until.saturating_duration_since(Instant::now()).as_secs() + 1
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdgate_proto::etcdserverpb::{Compare, PutRequest, RequestOp};

    fn sorted(key: &str, order: i32, target: i32) -> RangeRequest {
        RangeRequest { key: key.into(), sort_order: order, sort_target: target, ..Default::default() }
    }

    fn op(request: request_op::Request) -> RequestOp {
        RequestOp { request: Some(request) }
    }

    #[test]
    fn ranges_with_a_sort_etcd_does_not_know_are_refused_in_its_words() {
        assert!(range(&sorted("a", 2, 4)).is_none());
        assert!(range(&sorted("a", 0, 0)).is_none());
        for (order, target) in [(1, 99), (0, 5), (3, 0), (-1, 0), (0, -1)] {
            let status = range(&sorted("a", order, target)).expect("refused");
            assert_eq!((status.code(), status.message()), (tonic::Code::InvalidArgument, "etcdserver: invalid sort option"));
        }
        assert!(range(&sorted("", 1, 99)).is_none(), "etcd refuses an empty key first");
    }

    #[test]
    fn txns_are_checked_at_every_depth_in_etcds_order() {
        let bad = op(request_op::Request::RequestRange(sorted("a", 1, 99)));
        let put = |key: &str| op(request_op::Request::RequestPut(PutRequest { key: key.into(), ..Default::default() }));
        let nested = TxnRequest { failure: vec![bad.clone()], ..Default::default() };
        assert!(txn(&TxnRequest { success: vec![put("w"), bad.clone()], ..Default::default() }).is_some());
        assert!(txn(&TxnRequest { success: vec![op(request_op::Request::RequestTxn(nested))], ..Default::default() }).is_some());
        assert!(txn(&TxnRequest { success: vec![put(""), bad.clone()], ..Default::default() }).is_none());
        let empty_compare = Compare { key: Vec::new(), ..Default::default() };
        assert!(txn(&TxnRequest { compare: vec![empty_compare], failure: vec![bad], ..Default::default() }).is_none());
        assert!(txn(&TxnRequest { success: vec![put("w"), RequestOp::default()], ..Default::default() }).is_none());
    }

    /// A pool of the members at `urls`.
    fn pool(urls: &[String]) -> Arc<Pool> {
        Arc::new(Pool::new(urls, etcdgate_upstream::PoolOptions::default()).expect("pool"))
    }

    /// A URL where nothing listens (a member found down at once).
    fn dead_url() -> String {
        format!("http://127.0.0.1:{}", etcdgate_testkit::free_port())
    }

    /// Waits until `pool` has `count` members down.
    async fn until_down(pool: &Pool, count: usize) {
        let down = || pool.member_states().iter().filter(|(_, _, state, _)| *state == etcdgate_upstream::State::Down).count();
        while down() < count {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_request_held_back_is_refused_and_others_are_not() {
        let request = sorted("/held", 1, 1);
        assert!(held_back("Range", &request).is_none());
        let pool = pool(&[dead_url(), dead_url(), dead_url()]);
        until_down(&pool, 3).await;
        hold_back("Range", &request, pool, Instant::now());
        let refused = held_back("Range", &request).expect("held back");
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(held_back("Range", &sorted("/held", 1, 2)).is_none(), "another request");
        assert!(held_back("DeleteRange", &request).is_none(), "another RPC");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(held_back("Range", &request).is_some(), "no other member went down: still held");
    }

    #[tokio::test]
    async fn a_held_request_is_let_go_when_another_member_goes_down() {
        let request = sorted("/held-then-let-go", 1, 1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let alive = format!("http://{}", listener.local_addr().unwrap());
        let sent_at = Instant::now();
        let pool = pool(&[dead_url(), dead_url(), alive]);
        until_down(&pool, 2).await;
        hold_back("Range", &request, pool.clone(), sent_at);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(held_back("Range", &request).is_some(), "only the two it reached are down");
        drop(listener);
        until_down(&pool, 3).await;
        for _ in 0..100 {
            if held_back("Range", &request).is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("a member the request never reached went down, and the request is still held back");
    }

    #[tokio::test]
    async fn a_request_is_not_held_back_when_more_members_went_down_than_it_reached() {
        let request = sorted("/all-stopped", 1, 1);
        let sent_at = Instant::now();
        let pool = pool(&[dead_url(), dead_url(), dead_url()]);
        until_down(&pool, 3).await;
        hold_back("Range", &request, pool, sent_at);
        assert!(held_back("Range", &request).is_none(), "the whole cluster went down: not the request's doing");
    }

    #[test]
    fn alarms_etcd_crashes_on_are_refused() {
        let alarm_request = |action: i32, alarm: i32| AlarmRequest { action, alarm, member_id: 0 };
        assert!(alarm(&alarm_request(0, 0)).is_none(), "GET");
        assert!(alarm(&alarm_request(1, 1)).is_none(), "ACTIVATE NOSPACE");
        assert!(alarm(&alarm_request(2, 0)).is_none(), "DEACTIVATE NONE");
        for (action, kind) in [(3, 0), (99, 1), (1, 0), (1, 3), (1, -1)] {
            assert_eq!(alarm(&alarm_request(action, kind)).expect("refused").code(), tonic::Code::InvalidArgument);
        }
    }
}
