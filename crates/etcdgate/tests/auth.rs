//! etcdgate with etcd's auth on.
//!
//! - The watch cache: etcdgate follows the prefix with its own login (`--user`), and serves a
//!   client from the cache only what etcd lets that client's own credentials read —
//!   everything else gets etcd's own answer. Its token going bad (a member restart) or refused
//!   on a member it moves to is replaced by a new login.
//! - Logins: identical `Authenticate` calls in flight together cost etcd one password hash,
//!   and each gets a token that works; nothing is kept once etcd has answered.

mod common;

use std::time::Duration;

use etcdgate_proto::authpb::{permission::Type as PermissionType, Permission};
use etcdgate_proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, AuthEnableRequest,
    AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, AuthenticateRequest, PutRequest,
    RangeRequest, RangeResponse, WatchCreateRequest, WatchRequest, WatchResponse,
};
use etcdgate_testkit::{Cluster, EtcdVersion};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Streaming};

use common::{metric, Etcdgate};

const HITS: &str = "etcdgate_cache_reads_total{result=\"hit\"}";

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("token", token.parse().unwrap());
    }
    request
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap()
}

async fn login(channel: &Channel, name: &str, password: &str) -> String {
    let request = AuthenticateRequest { name: name.into(), password: password.into() };
    AuthClient::new(channel.clone()).authenticate(request).await.unwrap().into_inner().token
}

/// A permission: its type, key and range end.
type Grant = (PermissionType, &'static str, &'static str);

/// Users `root`, `apisix` (read and write under `/apisix/`), `other` (reads `/other/`) and
/// `gate` (etcdgate's: reads `/apisix/`), two keys under `/apisix/`, then auth on.
async fn set_up_auth(etcd: &Channel) {
    let mut auth = AuthClient::new(etcd.clone());
    let mut kv = KvClient::new(etcd.clone());
    for i in 1..=2 {
        kv.put(PutRequest { key: format!("/apisix/routes/{i}").into(), value: format!("{{\"id\":{i}}}").into(), ..Default::default() }).await.unwrap();
    }
    let grants: [(&str, Option<Grant>); 4] = [
        ("root", None),
        ("apisix", Some((PermissionType::Readwrite, "/apisix/", "/apisix0"))),
        ("other", Some((PermissionType::Read, "/other/", "/other0"))),
        ("gate", Some((PermissionType::Read, "/apisix/", "/apisix0"))),
    ];
    for (name, grant) in grants {
        auth.user_add(AuthUserAddRequest { name: name.into(), password: format!("{name}pw"), ..Default::default() }).await.unwrap();
        auth.role_add(AuthRoleAddRequest { name: name.into() }).await.unwrap();
        auth.user_grant_role(AuthUserGrantRoleRequest { user: name.into(), role: name.into() }).await.unwrap();
        if let Some((kind, key, range_end)) = grant {
            let perm = Permission { perm_type: kind as i32, key: key.into(), range_end: range_end.into() };
            auth.role_grant_permission(AuthRoleGrantPermissionRequest { name: name.into(), perm: Some(perm) }).await.unwrap();
        }
    }
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
}

fn apisix_range(serializable: bool) -> RangeRequest {
    RangeRequest { key: b"/apisix/".to_vec(), range_end: b"/apisix0".to_vec(), serializable, ..Default::default() }
}

/// A Range's answer or error, with the member-specific header fields cleared.
async fn range(channel: &Channel, token: Option<&str>, request: RangeRequest) -> Result<RangeResponse, (tonic::Code, String)> {
    match KvClient::new(channel.clone()).range(with_token(request, token)).await {
        Ok(response) => {
            let mut response = response.into_inner();
            if let Some(header) = response.header.as_mut() {
                (header.member_id, header.raft_term) = (0, 0);
            }
            Ok(response)
        }
        Err(status) => Err((status.code(), status.message().to_string())),
    }
}

async fn open_watch(channel: &Channel, token: Option<&str>, key: &str, range_end: &str) -> (mpsc::Sender<WatchRequest>, Streaming<WatchResponse>) {
    let (requests, input) = mpsc::channel(4);
    let create = WatchCreateRequest { key: key.into(), range_end: range_end.into(), ..Default::default() };
    requests.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let responses = WatchClient::new(channel.clone()).watch(with_token(ReceiverStream::new(input), token)).await.unwrap().into_inner();
    (requests, responses)
}

async fn next(responses: &mut Streaming<WatchResponse>) -> WatchResponse {
    let mut response = tokio::time::timeout(Duration::from_secs(20), responses.next())
        .await
        .expect("watch went silent")
        .expect("watch stream ended")
        .unwrap_or_else(|status| panic!("watch failed: {status:?}"));
    if let Some(header) = response.header.as_mut() {
        (header.member_id, header.raft_term, header.revision) = (0, 0, 0);
    }
    response
}

async fn put(channel: &Channel, token: &str, key: &str, value: &str) -> i64 {
    let request = with_token(PutRequest { key: key.into(), value: value.into(), ..Default::default() }, Some(token));
    KvClient::new(channel.clone()).put(request).await.unwrap().into_inner().header.unwrap().revision
}

/// `POST /v3/kv/range` with `Authorization: token`: status and JSON body.
fn post_with_token(addr: &str, body: &str, token: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let head = format!("POST /v3/kv/range HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {token}\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(format!("{head}{body}").as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let mut json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"));
    if let Some(header) = json.get_mut("header").and_then(|h| h.as_object_mut()) {
        header.remove("member_id");
        header.remove("raft_term");
    }
    (status, json)
}

/// Waits until etcdgate's cache follows its prefix (loaded, one watch open).
async fn wait_following(gateway: &Etcdgate) {
    for _ in 0..200 {
        if metric(gateway.addr(), "etcdgate_cache_upstream_watches") == Some(1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the cache does not follow its prefix with auth on");
}

/// One etcd member with [`set_up_auth`]'s users, and etcdgate caching `/apisix/` as `gate`,
/// once its cache follows the prefix: the cluster, a channel to etcd, etcdgate, a channel
/// through it.
async fn start_with_auth(version: EtcdVersion) -> (Cluster, Channel, Etcdgate, Channel) {
    let cluster = Cluster::start(version, 1).await.unwrap();
    let etcd = channel(&cluster.client_url(0)).await;
    set_up_auth(&etcd).await;
    let gateway = Etcdgate::start_with_args(&cluster.endpoints(), &["--cache-prefix", "/apisix/", "--user", "gate:gatepw"]);
    let through = channel(&gateway.url()).await;
    wait_following(&gateway).await;
    (cluster, etcd, gateway, through)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_auth_on_the_cache_serves_each_client_what_etcd_lets_it_read() {
    for version in EtcdVersion::all() {
        let (mut cluster, etcd, gateway, through) = start_with_auth(version).await;

        let apisix = login(&through, "apisix", "apisixpw").await;
        let apisix_direct = login(&etcd, "apisix", "apisixpw").await;
        for serializable in [true, false] {
            let hits = metric(gateway.addr(), HITS).unwrap_or(0);
            let direct = range(&etcd, Some(&apisix_direct), apisix_range(serializable)).await.unwrap();
            let cached = range(&through, Some(&apisix), apisix_range(serializable)).await.unwrap();
            assert_eq!(cached, direct, "{version}: serializable {serializable}");
            assert_eq!(direct.kvs.len(), 2);
            assert_eq!(metric(gateway.addr(), HITS), Some(hits + 1), "{version}: served from the cache (serializable {serializable})");
        }

        // Refused the same way as by etcd, and never from the cache.
        let other = login(&through, "other", "otherpw").await;
        let hits = metric(gateway.addr(), HITS).unwrap_or(0);
        for (who, token) in [("other", Some(other.as_str())), ("nobody", None), ("a garbage token", Some("garbage.1"))] {
            for serializable in [true, false] {
                let direct = range(&etcd, token, apisix_range(serializable)).await.unwrap_err();
                let through = range(&through, token, apisix_range(serializable)).await.unwrap_err();
                assert_eq!(through, direct, "{version}: {who}, serializable {serializable}");
            }
        }
        assert_eq!(metric(gateway.addr(), HITS).unwrap_or(0), hits, "{version}: refused clients are not served from the cache");

        // Over HTTP/JSON, as APISIX reads (its token in `Authorization`).
        let body = r#"{"key":"L2FwaXNpeC8=","range_end":"L2FwaXNpeDA="}"#;
        let hits = metric(gateway.addr(), HITS).unwrap_or(0);
        let (status, json) = post_with_token(gateway.addr(), body, &apisix);
        assert_eq!((status, json["count"].as_str()), (200, Some("2")), "{version}: {json}");
        assert_eq!(metric(gateway.addr(), HITS), Some(hits + 1), "{version}: served from the cache");
        let etcd_addr = cluster.client_url(0).trim_start_matches("http://").to_string();
        let refused = post_with_token(gateway.addr(), body, &other);
        assert_eq!(refused, post_with_token(&etcd_addr, body, &login(&etcd, "other", "otherpw").await), "{version}");
        assert_eq!(refused.0, 403, "{version}: {refused:?}");

        // A watch etcd would refuse gets etcd's refusal; one it allows is the cache's.
        let (_keep, mut refused) = open_watch(&through, Some(&other), "/apisix/", "/apisix0").await;
        let (_keep_direct, mut refused_direct) = open_watch(&etcd, Some(&other), "/apisix/", "/apisix0").await;
        let refusal = next(&mut refused).await;
        assert_eq!(refusal, next(&mut refused_direct).await, "{version}");
        assert!(refusal.canceled, "{version}: {refusal:?}");
        let (_keep, mut watch) = open_watch(&through, Some(&apisix), "/apisix/", "/apisix0").await;
        assert!(next(&mut watch).await.created);
        assert_eq!(metric(gateway.addr(), "etcdgate_cache_watchers"), Some(1), "{version}: the allowed watch is the cache's");
        let revision = put(&through, &apisix, "/apisix/routes/3", "{}").await;
        let event = next(&mut watch).await;
        assert_eq!(event.events[0].kv.as_ref().unwrap().mod_revision, revision, "{version}: {event:?}");

        // A Range at an earlier revision: the cache's (rolled back through its history) for a
        // client etcd lets read it, etcd's refusal for one it does not.
        for serializable in [true, false] {
            let earlier = RangeRequest { revision: revision - 1, ..apisix_range(serializable) };
            let hits = metric(gateway.addr(), HITS).unwrap_or(0);
            let direct = range(&etcd, Some(&apisix_direct), earlier.clone()).await.unwrap();
            assert_eq!(range(&through, Some(&apisix), earlier.clone()).await.unwrap(), direct, "{version}: serializable {serializable}");
            assert_eq!(direct.kvs.len(), 2, "{version}: before /apisix/routes/3");
            assert_eq!(metric(gateway.addr(), HITS), Some(hits + 1), "{version}: served from the cache (serializable {serializable})");
            let refused = range(&through, Some(&other), earlier.clone()).await.unwrap_err();
            assert_eq!(refused, range(&etcd, Some(&other), earlier).await.unwrap_err(), "{version}: serializable {serializable}");
        }

        // An auth change, then a member restart (3.5.1 loses every simple token): etcdgate logs
        // in again for its barrier reads; and when the cache's watch is made again on the
        // restarted member with its old token (refused), the cache logs in again and follows on.
        AuthClient::new(etcd.clone())
            .user_add(with_token(AuthUserAddRequest { name: "later".into(), password: "x".into(), ..Default::default() }, Some(&login(&etcd, "root", "rootpw").await)))
            .await
            .unwrap();
        cluster.kill(0);
        cluster.restart(0).await.unwrap();
        let apisix = login(&through, "apisix", "apisixpw").await;
        let revision = put(&through, &apisix, "/apisix/routes/4", "{}").await;
        let event = next(&mut watch).await;
        assert_eq!(event.events[0].kv.as_ref().unwrap().mod_revision, revision, "{version}: the hub's watch follows on: {event:?}");
        let etcd = channel(&cluster.client_url(0)).await;
        let root = login(&etcd, "root", "rootpw").await;
        let revision = put(&etcd, &root, "/apisix/routes/5", "{}").await;
        let mut served = false;
        for _ in 0..100 {
            let hits = metric(gateway.addr(), HITS).unwrap_or(0);
            let read = range(&through, Some(&apisix), apisix_range(false)).await.unwrap();
            if metric(gateway.addr(), HITS) == Some(hits + 1) {
                assert!(read.header.unwrap().revision >= revision, "{version}");
                assert_eq!(read.kvs.len(), 5, "{version}");
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served, "{version}: linearizable reads come from the cache again after the new login");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_etcd_no_longer_lets_follow_its_prefix_cancels_its_watches_and_forwards() {
    use etcdgate_proto::etcdserverpb::AuthRoleRevokePermissionRequest;
    for version in EtcdVersion::all() {
        let (mut cluster, etcd, gateway, through) = start_with_auth(version).await;
        let apisix = login(&through, "apisix", "apisixpw").await;
        let (_keep, mut watch) = open_watch(&through, Some(&apisix), "/apisix/", "/apisix0").await;
        assert!(next(&mut watch).await.created);
        assert_eq!(metric(gateway.addr(), "etcdgate_cache_watchers"), Some(1), "{version}: the cache's");

        // etcdgate's user loses its permission; its watch is checked again on the
        // restarted member, refused, and a new login does not help.
        let root = login(&etcd, "root", "rootpw").await;
        let revoke = AuthRoleRevokePermissionRequest { role: "gate".into(), key: b"/apisix/".to_vec(), range_end: b"/apisix0".to_vec() };
        AuthClient::new(etcd.clone()).role_revoke_permission(with_token(revoke, Some(&root))).await.unwrap();
        cluster.kill(0);
        cluster.restart(0).await.unwrap();
        let canceled = next(&mut watch).await;
        assert!(canceled.canceled && canceled.compact_revision > 0, "{version}: told to read again, not left waiting: {canceled:?}");

        // Reads and watches now go to etcd, with the client's own credentials.
        let apisix = login(&through, "apisix", "apisixpw").await;
        let hits = metric(gateway.addr(), HITS).unwrap_or(0);
        let read = range(&through, Some(&apisix), apisix_range(true)).await.unwrap();
        assert_eq!(read.kvs.len(), 2, "{version}");
        assert_eq!(metric(gateway.addr(), HITS).unwrap_or(0), hits, "{version}: not from the abandoned cache");
        let (_keep, mut watch) = open_watch(&through, Some(&apisix), "/apisix/", "/apisix0").await;
        assert!(next(&mut watch).await.created);
        let revision = put(&through, &apisix, "/apisix/routes/3", "{}").await;
        let event = next(&mut watch).await;
        assert_eq!(event.events[0].kv.as_ref().unwrap().mod_revision, revision, "{version}: {event:?}");
        assert_eq!(metric(gateway.addr(), "etcdgate_cache_watchers"), Some(0), "{version}: etcd's");
    }
}

/// `Authenticate` for `name` over HTTP/JSON, as APISIX logs in: the token, or the answer.
async fn http_login(addr: &str, name: &str, password: &str) -> Result<String, (u16, String)> {
    let (addr, body) = (addr.to_string(), format!(r#"{{"name":"{name}","password":"{password}"}}"#));
    let (status, body) = tokio::task::spawn_blocking(move || common::http_post(&addr, "/v3/auth/authenticate", &body)).await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    match (status, json["token"].as_str()) {
        (200, Some(token)) => Ok(token.to_string()),
        _ => Err((status, body)),
    }
}

/// Logins through etcdgate while etcd's only member is paused, all in flight together before
/// etcd answers any: every other one over HTTP/JSON, the rest over gRPC connections of their
/// own, one in two of those carrying a token gone bad (as lua-resty-etcd logs in again with
/// its old token). Returns their answers once etcd is back.
async fn logins_while_paused(cluster: &mut Cluster, gateway: &Etcdgate, logins: &[(&'static str, &'static str)], joining: u64) -> Vec<Result<String, String>> {
    let joined = || metric(gateway.addr(), "etcdgate_calls_joined_total{rpc=\"Authenticate\"}").unwrap_or(0);
    let joined_before = joined();
    cluster.pause(0).unwrap();
    let mut calls = Vec::new();
    for (i, &(name, password)) in logins.iter().enumerate() {
        let url = gateway.url();
        let addr = gateway.addr().to_string();
        calls.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let connection = channel(&url).await;
                let request = AuthenticateRequest { name: name.into(), password: password.into() };
                let request = with_token(request, (i % 4 == 2).then_some("gone.1"));
                AuthClient::new(connection).authenticate(request).await.map(|r| r.into_inner().token).map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            } else {
                http_login(&addr, name, password).await.map_err(|(status, body)| format!("HTTP {status}: {body}"))
            }
        }));
    }
    for _ in 0..400 {
        if joined() == joined_before + joining {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(joined(), joined_before + joining, "identical logins join the one in flight");
    cluster.resume(0).unwrap();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_logins_in_flight_cost_etcd_one_password_check() {
    for version in EtcdVersion::all() {
        let (mut cluster, etcd, gateway, through) = start_with_auth(version).await;

        // 20 logins of one user (half over HTTP/JSON), one with a wrong password, one of another user.
        let mut logins = vec![("apisix", "apisixpw"); 20];
        logins.extend([("apisix", "wrong"), ("other", "otherpw")]);
        let answers = logins_while_paused(&mut cluster, &gateway, &logins, 19).await;
        let token = answers[0].clone().unwrap_or_else(|e| panic!("{version}: {e}"));
        for answer in &answers[..20] {
            assert_eq!(answer.as_ref(), Ok(&token), "{version}: every login of the storm gets the one token");
        }
        let direct = AuthClient::new(etcd.clone()).authenticate(AuthenticateRequest { name: "apisix".into(), password: "wrong".into() }).await.unwrap_err();
        assert_eq!(answers[20], Err(format!("{:?}: {}", direct.code(), direct.message())), "{version}: a wrong password gets etcd's refusal");
        let other = answers[21].clone().unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_ne!(other, token, "{version}");
        let apisix_read = range(&etcd, Some(&token), apisix_range(true)).await;
        assert_eq!(apisix_read.map(|r| r.kvs.len()), Ok(2), "{version}: the shared token works on etcd");
        assert!(range(&through, Some(&other), apisix_range(true)).await.is_err(), "{version}: and the other user's is its own");

        // Nothing is kept: a login after the storm gets a token of its own.
        let later = login(&through, "apisix", "apisixpw").await;
        assert_ne!(later, token, "{version}");

        // A login carrying a token gone bad gets a new one (etcd 3.4 itself refuses it:
        // `invalid auth token`).
        let stale = with_token(AuthenticateRequest { name: "apisix".into(), password: "apisixpw".into() }, Some("gone.1"));
        let renewed = AuthClient::new(through.clone()).authenticate(stale).await.unwrap_or_else(|s| panic!("{version}: {s:?}")).into_inner().token;
        assert_eq!(range(&etcd, Some(&renewed), apisix_range(true)).await.map(|r| r.kvs.len()), Ok(2), "{version}");

        // After an auth change (which makes JWT tokens old), the next storm gets a token of
        // its own that works.
        let root = login(&etcd, "root", "rootpw").await;
        let change = AuthUserAddRequest { name: "later".into(), password: "x".into(), ..Default::default() };
        AuthClient::new(etcd.clone()).user_add(with_token(change, Some(&root))).await.unwrap();
        let answers = logins_while_paused(&mut cluster, &gateway, &[("apisix", "apisixpw"); 6], 5).await;
        let renewed = answers[0].clone().unwrap_or_else(|e| panic!("{version}: {e}"));
        assert!(answers.iter().all(|answer| answer.as_ref() == Ok(&renewed)), "{version}: {answers:?}");
        assert!(![token.as_str(), later.as_str()].contains(&renewed.as_str()), "{version}");
        assert_eq!(range(&through, Some(&renewed), apisix_range(false)).await.map(|r| r.kvs.len()), Ok(2), "{version}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_linearizable_cached_read_sees_a_permission_revoked_just_before() {
    use etcdgate_proto::etcdserverpb::AuthRoleRevokePermissionRequest;
    for version in EtcdVersion::all() {
        let (_cluster, etcd, gateway, through) = start_with_auth(version).await;
        let apisix = login(&through, "apisix", "apisixpw").await;
        let root = login(&etcd, "root", "rootpw").await;
        for serializable in [true, false] {
            let hits = metric(gateway.addr(), HITS).unwrap_or(0);
            assert_eq!(range(&through, Some(&apisix), apisix_range(serializable)).await.map(|r| r.kvs.len()), Ok(2), "{version}");
            assert_eq!(metric(gateway.addr(), HITS), Some(hits + 1), "{version}: from the cache (serializable {serializable})");
        }

        // Revoked on etcd: the very next linearizable read is refused as etcd refuses it.
        let revoke = AuthRoleRevokePermissionRequest { role: "apisix".into(), key: b"/apisix/".to_vec(), range_end: b"/apisix0".to_vec() };
        AuthClient::new(etcd.clone()).role_revoke_permission(with_token(revoke, Some(&root))).await.unwrap();
        let hits = metric(gateway.addr(), HITS).unwrap_or(0);
        let refused = range(&through, Some(&apisix), apisix_range(false)).await.unwrap_err();
        assert_eq!(refused, range(&etcd, Some(&apisix), apisix_range(false)).await.unwrap_err(), "{version}");
        assert_eq!(metric(gateway.addr(), HITS).unwrap_or(0), hits, "{version}: not from the cache");

        // Granted again: the next linearizable read is the cache's again.
        let perm = Permission { perm_type: PermissionType::Readwrite as i32, key: b"/apisix/".to_vec(), range_end: b"/apisix0".to_vec() };
        let grant = AuthRoleGrantPermissionRequest { name: "apisix".into(), perm: Some(perm) };
        AuthClient::new(etcd.clone()).role_grant_permission(with_token(grant, Some(&root))).await.unwrap();
        assert_eq!(range(&through, Some(&apisix), apisix_range(false)).await.map(|r| r.kvs.len()), Ok(2), "{version}");
        assert_eq!(metric(gateway.addr(), HITS), Some(hits + 1), "{version}: from the cache again");
    }
}
