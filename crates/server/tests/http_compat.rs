//! The HTTP/JSON gateway against etcd's own: every path etcdgate serves, sent the same
//! requests as a real etcd of the same version, must answer with the same status, content
//! type and body (key order included) once cluster-specific header ids are removed.

mod common;

use common::{b64, HttpReply, Pair, Which, MALFORMED_BODIES};
use etcdgate_proto::etcdserverpb::{maintenance_client::MaintenanceClient, HashKvRequest};
use etcdgate_testkit::EtcdVersion;
use serde_json::{json, Value};

/// `{"key": b64(key), "value": b64(value)}`
fn kv(key: &str, value: &str) -> String {
    json!({"key": b64(key), "value": b64(value)}).to_string()
}

fn key(key: &str) -> String {
    json!({"key": b64(key)}).to_string()
}

#[tokio::test]
async fn kv_paths() {
    Pair::each_version(|p| async move {
        for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d/1", "x"), ("d/2", "y")] {
            p.http("/v3/kv/put", kv(k, v)).await;
        }
        p.http("/v3/kv/put", json!({"key": b64("a"), "value": b64("10"), "prev_kv": true}).to_string()).await;
        p.http("/v3/kv/put", json!({"key": b64("b"), "ignore_value": true}).to_string()).await;
        p.http("/v3/kv/range", key("a")).await;
        p.http("/v3/kv/range", key("nope")).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "range_end": b64("d")}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("d/"), "range_end": b64("d0")}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("\0"), "range_end": b64("\0"), "limit": 2}).to_string()).await;
        p.http(
            "/v3/kv/range",
            json!({"key": b64("a"), "range_end": b64("z"), "sort_order": "DESCEND", "sort_target": "MOD"}).to_string(),
        )
        .await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "range_end": b64("z"), "keys_only": true}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "range_end": b64("z"), "count_only": true}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "revision": "2"}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "serializable": true}).to_string()).await;
        p.http(
            "/v3/kv/range",
            json!({"key": b64("a"), "range_end": b64("z"), "min_mod_revision": "3", "max_create_revision": "4"}).to_string(),
        )
        .await;
        p.http("/v3/kv/deleterange", json!({"key": b64("d/"), "range_end": b64("d0"), "prev_kv": true}).to_string()).await;
        p.http("/v3/kv/deleterange", key("nope")).await;

        let txn = json!({
            "compare": [{"key": b64("a"), "target": "VALUE", "result": "EQUAL", "value": b64("10")}],
            "success": [
                {"request_put": {"key": b64("t"), "value": b64("yes")}},
                {"request_range": {"key": b64("a")}},
                {"request_delete_range": {"key": b64("c")}},
                {"request_txn": {"success": [{"request_range": {"key": b64("t")}}]}}
            ],
            "failure": [{"request_put": {"key": b64("t"), "value": b64("no")}}]
        });
        let answer = p.http("/v3/kv/txn", txn.to_string()).await;
        assert_eq!(answer["succeeded"], true, "{answer}");
        let failing = json!({
            "compare": [{"key": b64("a"), "target": "VERSION", "result": "GREATER", "version": "100"}],
            "success": [{"request_put": {"key": b64("t"), "value": b64("yes")}}],
            "failure": [{"request_range": {"key": b64("t")}}]
        });
        p.http("/v3/kv/txn", failing.to_string()).await;
        p.http("/v3/kv/txn", "{}").await;

        // Compaction, then reads below it and above the head.
        p.http("/v3/kv/compaction", json!({"revision": "4", "physical": true}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "revision": "3"}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "revision": "4"}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "revision": "1000"}).to_string()).await;
        p.http("/v3/kv/compaction", json!({"revision": "2"}).to_string()).await;
        p.http("/v3/kv/compaction", json!({"revision": "1000"}).to_string()).await;
    })
    .await;
}

#[tokio::test]
async fn kv_errors() {
    Pair::each_version(|p| async move {
        p.http("/v3/kv/put", json!({"value": b64("v")}).to_string()).await;
        p.http("/v3/kv/range", "{}").await;
        p.http("/v3/kv/deleterange", "{}").await;
        p.http("/v3/kv/put", json!({"key": b64("k"), "lease": "12345"}).to_string()).await;
        p.http("/v3/kv/put", json!({"key": b64("k"), "ignore_value": true}).to_string()).await;
        p.http("/v3/kv/put", json!({"key": b64("k"), "value": b64("v"), "ignore_lease": true, "lease": "5"}).to_string()).await;

        let puts = |n: usize| -> Vec<Value> {
            (0..n).map(|i| json!({"request_put": {"key": b64(format!("k{i}")), "value": b64("v")}})).collect()
        };
        p.http("/v3/kv/txn", json!({"success": puts(128)}).to_string()).await;
        p.http("/v3/kv/txn", json!({"success": puts(129)}).to_string()).await;
        let duplicate = json!({"success": [
            {"request_put": {"key": b64("dup"), "value": b64("1")}},
            {"request_put": {"key": b64("dup"), "value": b64("2")}}
        ]});
        p.http("/v3/kv/txn", duplicate.to_string()).await;
        let overlapping = json!({"success": [
            {"request_delete_range": {"key": b64("a"), "range_end": b64("z")}},
            {"request_put": {"key": b64("m"), "value": b64("2")}}
        ]});
        p.http("/v3/kv/txn", overlapping.to_string()).await;

        // Over etcd's --max-request-bytes (1.5 MiB) but under gRPC's limit, then over both.
        for size in [1600 * 1024, 2 * 1024 * 1024] {
            p.http("/v3/kv/put", kv("big", &"x".repeat(size))).await;
        }
        assert_eq!(p.revision(Which::Etcd).await, p.revision(Which::Gateway).await);
    })
    .await;
}

/// Field names in either case, numbers as numbers or strings, enums by name or number,
/// unknown fields ignored: every form etcd's gateway accepts is accepted alike.
#[tokio::test]
async fn json_input_forms() {
    Pair::each_version(|p| async move {
        for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
            p.http("/v3/kv/put", kv(k, v)).await;
        }
        p.http("/v3/kv/put", json!({"key": b64("a"), "value": b64("4"), "prevKv": true, "whatever": [1, 2]}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "rangeEnd": b64("z"), "keysOnly": true}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "range_end": b64("z"), "limit": 1}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "range_end": b64("z"), "limit": "1"}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "range_end": b64("z"), "sortOrder": 2, "sortTarget": 4}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "range_end": b64("z"), "sort_order": "ASCEND", "sort_target": "VALUE"}).to_string())
            .await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "revision": 2}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "unknown": {"nested": true}}).to_string()).await;
        let txn = json!({
            "compare": [{"key": b64("b"), "target": 1, "result": "LESS", "createRevision": 100}],
            "success": [{"requestPut": {"key": b64("t"), "value": b64("camel")}}],
            "failure": [{"requestRange": {"key": b64("t")}}]
        });
        p.http("/v3/kv/txn", txn.to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("t")}).to_string()).await;
        p.http("/v3/kv/range", json!({"key": b64("a"), "limit": null, "revision": null}).to_string()).await;
        // Go reads bytes from an array of byte values too.
        p.http("/v3/kv/range", json!({"key": [97], "range_end": [122]}).to_string()).await;

        // Malformed input. etcd's own message exists for a truncated body ("unexpected EOF");
        // for the others etcdgate words the error as serde does (a documented difference):
        // same status and JSON shape, and nothing written.
        p.http("/v3/kv/put", r#"{"key":"YQ=="#).await;
        p.http("/v3/kv/put", "").await;
        let before = p.revision(Which::Gateway).await;
        for body in MALFORMED_BODIES {
            compare_status_and_shape(&p, "/v3/kv/put", body).await;
        }
        compare_status_and_shape(&p, "/v3/kv/range", r#"{"key":"YQ==","sort_order":"SIDEWAYS"}"#).await;
        assert_eq!(p.revision(Which::Gateway).await, before, "a malformed request wrote something");
    })
    .await;
}

/// For inputs whose error wording is serde's: both sides fail with the same status and an
/// `{"error","code","message"}` body with the same code.
async fn compare_status_and_shape(p: &Pair, path: &str, body: &str) {
    let [etcd, gateway] = p.post_both(path, body.to_string()).await;
    assert_eq!(etcd.status, gateway.status, "{}: {body}: etcd {} vs etcdgate {}", p.version, etcd.raw(), gateway.raw());
    let code = serde_json::from_slice::<Value>(&etcd.body).expect("etcd error is JSON")["code"].as_i64().expect("code");
    gateway.assert_json_error(etcd.status, tonic::Code::from_i32(code as i32));
}

#[tokio::test]
async fn lease_paths() {
    Pair::each_version(|p| async move {
        p.http("/v3/lease/grant", json!({"TTL": "600", "ID": "1000"}).to_string()).await;
        p.http("/v3/lease/grant", json!({"TTL": 300, "ID": 2000}).to_string()).await;
        p.http("/v3/lease/grant", json!({"TTL": "600", "ID": "1000"}).to_string()).await;
        p.http("/v3/kv/put", json!({"key": b64("leased"), "value": b64("v"), "lease": "1000"}).to_string()).await;
        for prefix in ["/v3/lease", "/v3/kv/lease"] {
            p.http_masked(&format!("{prefix}/timetolive"), json!({"ID": "1000", "keys": true}).to_string(), &["TTL"]).await;
            p.http_masked(&format!("{prefix}/timetolive"), json!({"ID": "2000"}).to_string(), &["TTL"]).await;
            p.http(&format!("{prefix}/timetolive"), json!({"ID": "999"}).to_string()).await;
            p.http(&format!("{prefix}/leases"), "{}").await;
        }
        p.http("/v3/lease/revoke", json!({"ID": "2000"}).to_string()).await;
        p.http("/v3/kv/lease/revoke", json!({"ID": "1000"}).to_string()).await;
        p.http("/v3/kv/lease/revoke", json!({"ID": "1000"}).to_string()).await;
        p.http("/v3/kv/range", key("leased")).await;
        p.http("/v3/lease/leases", "{}").await;
        p.http("/v3/lease/grant", json!({"TTL": "600", "ID": "-5"}).to_string()).await;
        p.http("/v3/lease/grant", json!({"ID": "9"}).to_string()).await;
        p.http_masked("/v3/lease/timetolive", json!({"ID": "9"}).to_string(), &["TTL"]).await;
    })
    .await;
}

/// `/v3/lease/keepalive` streams one `{"result":...}` line per request, each its own chunk.
#[tokio::test]
async fn lease_keepalive_stream() {
    Pair::each_version(|p| async move {
        p.http("/v3/lease/grant", json!({"TTL": "600", "ID": "77"}).to_string()).await;
        // etcd's gateway starts a stream only once the request body is complete, so every
        // stream here is sent whole; each answer must still be its own chunk.
        p.same("keepalive", |side| async move {
            let mut stream = side.http_stream("/v3/lease/keepalive").await;
            for id in ["77", "77", "77", "78"] {
                stream.send(format!(r#"{{"ID":"{id}"}}"#)).await;
            }
            stream.close_input();
            let mut transcript = vec![format!("{:?}", stream.head().await)];
            while let Some(message) = stream.next_message().await {
                transcript.push(message);
            }
            transcript
        })
        .await;
        // Whole bodies with several requests, and a body ending in garbage.
        for body in [r#"{"ID":"77"}{"ID":"77"}"#, "", r#"{"ID":"77"} {oops"#] {
            p.same(&format!("keepalive body {body:?}"), |side| async move { side.post("/v3/lease/keepalive", body).await.normalized() })
                .await;
        }
    })
    .await;
}

#[tokio::test]
async fn cluster_paths() {
    Pair::each_version(|p| async move {
        let ids = ["ID", "peerURLs", "clientURLs"];
        p.http_masked("/v3/cluster/member/list", "{}", &ids).await;
        p.http_masked("/v3/cluster/member/list", json!({"linearizable": true}).to_string(), &ids).await;
        // Membership changes go through raft (etcd 3.5 proposes even unknown ids): each is
        // followed by `settle` so that the next one is not dropped by raft (see there).
        p.http("/v3/cluster/member/remove", json!({"ID": "12345"}).to_string()).await;
        p.settle().await;
        p.http("/v3/cluster/member/update", json!({"ID": "12345", "peerURLs": ["http://127.0.0.1:1"]}).to_string()).await;
        p.settle().await;
        p.http("/v3/cluster/member/promote", json!({"ID": "12345"}).to_string()).await;
        p.settle().await;
        p.http("/v3/cluster/member/add", json!({"peerURLs": ["not a url"]}).to_string()).await;
        p.settle().await;

        // A learner is added, cannot be promoted (it never started), and is removed.
        let learner = "http://127.0.0.1:9";
        let transcripts = p
            .same("learner add/promote/remove", |side| async move {
                let added = side.post("/v3/cluster/member/add", json!({"peerURLs": [learner], "isLearner": true}).to_string()).await;
                let id = added.json()["member"]["ID"].as_str().expect("new member id").to_string();
                side.settle().await;
                let mut transcript = vec![members_sorted(&added, &ids)];
                transcript.push(members_sorted(&side.post("/v3/cluster/member/list", "{}").await, &ids));
                // (Another URL set, as etcd derives ids from the URLs and the current second.)
                let overlapping = json!({"peerURLs": [learner, "http://127.0.0.1:10"], "isLearner": true});
                let again = side.post("/v3/cluster/member/add", overlapping.to_string());
                transcript.push(again.await.raw());
                side.settle().await;
                let by_id = json!({"ID": id}).to_string();
                transcript.push(side.post("/v3/cluster/member/promote", by_id.clone()).await.raw());
                side.settle().await;
                transcript.push(side.post("/v3/cluster/member/remove", by_id.clone()).await.normalized_masked(&ids));
                side.settle().await;
                transcript.push(side.post("/v3/cluster/member/remove", by_id).await.raw());
                transcript
            })
            .await;
        assert!(transcripts[0].starts_with("200 "), "{transcripts:?}");
    })
    .await;
}

/// A member list answer with ids and URLs masked and members in a stable order (etcd lists
/// them by id, and ids are random per cluster).
fn members_sorted(reply: &HttpReply, masked: &[&str]) -> String {
    let mut value = reply.json();
    common::normalize(&mut value, masked);
    if let Some(Value::Array(members)) = value.get_mut("members") {
        members.sort_by_key(|m| m.to_string());
    }
    format!("{} {:?} {value}", reply.status, reply.content_type)
}

/// A path etcd 3.4's gateway does not serve (its gRPC API has the call, or not): etcd 3.4
/// answers 404 in plain text, etcdgate serves it or fails with a JSON error. On 3.5 both
/// must answer alike.
async fn http_since_35(p: &Pair, path: &str, body: &str) -> Option<HttpReply> {
    if p.version != EtcdVersion::V3_4 {
        p.http(path, body).await;
        return None;
    }
    let [etcd, gateway] = p.post_both(path, body.to_string()).await;
    assert_eq!((etcd.status, etcd.content_type.as_deref()), (404, Some("text/plain; charset=utf-8")), "{}", etcd.raw());
    assert_eq!(gateway.content_type.as_deref(), Some("application/json"), "{}", gateway.raw());
    Some(gateway)
}

#[tokio::test]
async fn maintenance_paths() {
    Pair::each_version(|p| async move {
        p.http("/v3/kv/put", kv("a", "1")).await;
        // Fields such as dbSize, raftIndex or the leader's id differ between two clusters:
        // compare the layout and the fields that must agree.
        let stable = |reply: HttpReply, fields: &[&str]| {
            let value = reply.json();
            let keys: Vec<String> = value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
            let picked: Vec<Value> = fields.iter().map(|f| value.pointer(f).cloned().unwrap_or(Value::Null)).collect();
            (reply.status, reply.content_type, keys, picked)
        };
        p.same("status", |side| async move {
            let reply = side.post("/v3/maintenance/status", "{}").await;
            stable(reply, &["/header/revision", "/version", "/errors", "/isLearner", "/dbSizeQuota", "/storageVersion"])
        })
        .await;
        p.same("hash", |side| async move { stable(side.post("/v3/maintenance/hash", "{}").await, &["/header/revision"]) }).await;
        // etcd's gateway has no HashKV path; etcdgate serves it, answering as etcd's gRPC does.
        for revision in [0, 2, 100] {
            let body = json!({"revision": revision.to_string()}).to_string();
            let [etcd, gateway] = p.post_both("/v3/maintenance/hashkv", body).await;
            assert_eq!((etcd.status, etcd.content_type.as_deref()), (404, Some("text/plain; charset=utf-8")), "{}", etcd.raw());
            let grpc = p
                .grpc(HashKvRequest { revision }, |ch, r| async move { MaintenanceClient::new(ch).hash_kv(r).await })
                .await;
            let expected = match grpc.0 {
                Ok(json) => format!("200 Some(\"application/json\")\n{json}"),
                Err((code, message)) => format!("{} {message}", code as i32),
            };
            let got = match gateway.status {
                200 => format!("200 {:?}\n{}", gateway.content_type, common::normalize_body(&gateway.body, &[])),
                _ => format!("{} {}", gateway.json()["code"], gateway.json()["message"].as_str().unwrap_or_default()),
            };
            assert_eq!(got, expected, "{}: hashkv at {revision}", p.version);
        }
        p.http("/v3/maintenance/alarm", "{}").await;
        p.http("/v3/maintenance/alarm", json!({"action": "GET"}).to_string()).await;
        p.http("/v3/maintenance/alarm", json!({"action": "DEACTIVATE", "memberID": "1", "alarm": "NOSPACE"}).to_string()).await;
        p.http("/v3/maintenance/defragment", "{}").await;
        // A snapshot's bytes differ between clusters: compare its framing.
        p.same("snapshot", |side| async move {
            let reply = side.post("/v3/maintenance/snapshot", "{}").await;
            let text = String::from_utf8_lossy(&reply.body).into_owned();
            let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("snapshot line is JSON")).collect();
            let keys = |v: &Value| v["result"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
            let last = lines.last().expect("a snapshot chunk");
            (reply.status, reply.content_type, text.ends_with('\n'), keys(&lines[0]), last["result"]["remaining_bytes"].clone())
        })
        .await;
    })
    .await;
}

/// `/v3/auth/status` came with etcd 3.5: a 3.4 member answers the gateway `Unimplemented`.
async fn auth_status(p: &Pair) {
    if let Some(gateway) = http_since_35(p, "/v3/auth/status", "{}").await {
        gateway.assert_json_error(501, tonic::Code::Unimplemented);
    }
}

#[tokio::test]
async fn auth_paths() {
    Pair::each_version(|p| async move {
        auth_status(&p).await;
        p.http("/v3/auth/enable", "{}").await;
        p.http("/v3/auth/authenticate", json!({"name": "root", "password": "pw"}).to_string()).await;
        p.http("/v3/auth/user/add", json!({"name": "root", "password": "rootpw"}).to_string()).await;
        p.http("/v3/auth/user/add", json!({"name": "root", "password": "rootpw"}).to_string()).await;
        p.http("/v3/auth/user/add", json!({"name": "", "password": "x"}).to_string()).await;
        p.http("/v3/auth/user/add", json!({"name": "app", "password": "apppw"}).to_string()).await;
        p.http("/v3/auth/user/add", json!({"name": "nopw", "options": {"no_password": true}}).to_string()).await;
        p.http("/v3/auth/role/add", json!({"name": "root"}).to_string()).await;
        p.http("/v3/auth/role/add", json!({"name": "app-role"}).to_string()).await;
        p.http("/v3/auth/role/add", json!({"name": "app-role"}).to_string()).await;
        p.http("/v3/auth/user/grant", json!({"user": "root", "role": "root"}).to_string()).await;
        p.http("/v3/auth/user/grant", json!({"user": "app", "role": "app-role"}).to_string()).await;
        p.http("/v3/auth/user/grant", json!({"user": "ghost", "role": "app-role"}).to_string()).await;
        let perm = json!({"name": "app-role", "perm": {"permType": "READWRITE", "key": b64("app/"), "range_end": b64("app0")}});
        p.http("/v3/auth/role/grant", perm.to_string()).await;
        let read = json!({"name": "app-role", "perm": {"permType": 0, "key": b64("shared")}});
        p.http("/v3/auth/role/grant", read.to_string()).await;
        p.http("/v3/auth/role/get", json!({"role": "app-role"}).to_string()).await;
        p.http("/v3/auth/role/get", json!({"role": "ghost"}).to_string()).await;
        p.http("/v3/auth/role/list", "{}").await;
        p.http("/v3/auth/user/get", json!({"name": "app"}).to_string()).await;
        p.http("/v3/auth/user/get", json!({"name": "ghost"}).to_string()).await;
        p.http("/v3/auth/user/list", "{}").await;
        p.http("/v3/auth/user/changepw", json!({"name": "app", "password": "apppw2"}).to_string()).await;
        p.http("/v3/kv/put", kv("shared", "s")).await;

        p.http("/v3/auth/enable", "{}").await;
        auth_status(&p).await;
        p.http("/v3/kv/range", key("app/x")).await;
        p.http("/v3/auth/authenticate", json!({"name": "app", "password": "wrong"}).to_string()).await;
        p.http("/v3/kv/put", kv("app/x", "1")).await;

        p.login("app", "apppw2").await;
        p.http("/v3/kv/put", kv("app/x", "1")).await;
        p.http("/v3/kv/range", json!({"key": b64("app/"), "range_end": b64("app0")}).to_string()).await;
        p.http("/v3/kv/range", key("shared")).await;
        p.http("/v3/kv/put", kv("shared", "no")).await;
        p.http("/v3/kv/put", kv("other", "no")).await;
        p.http("/v3/kv/range", json!({"key": b64("\0"), "range_end": b64("\0")}).to_string()).await;
        p.http("/v3/auth/user/list", "{}").await;
        p.http("/v3/auth/disable", "{}").await;
        p.http("/v3/maintenance/snapshot", "{}").await;

        p.set_tokens([Some("garbage.1".into()), Some("garbage.1".into())]);
        p.http("/v3/kv/range", key("app/x")).await;

        p.login("root", "rootpw").await;
        p.http("/v3/auth/user/revoke", json!({"name": "app", "role": "app-role"}).to_string()).await;
        p.http("/v3/auth/role/revoke", json!({"role": "app-role", "key": b64("shared")}).to_string()).await;
        p.http("/v3/auth/role/revoke", json!({"role": "app-role", "key": b64("never")}).to_string()).await;
        p.http("/v3/auth/user/delete", json!({"name": "nopw"}).to_string()).await;
        p.http("/v3/auth/role/delete", json!({"role": "app-role"}).to_string()).await;
        p.http("/v3/auth/role/delete", json!({"role": "root"}).to_string()).await;
        p.http("/v3/auth/user/revoke", json!({"name": "root", "role": "root"}).to_string()).await;
        p.http("/v3/auth/disable", "{}").await;
        p.set_tokens([None, None]);
        auth_status(&p).await;
        p.http("/v3/kv/range", key("app/x")).await;
    })
    .await;
}

#[tokio::test]
async fn lock_and_election_paths() {
    Pair::each_version(|p| async move {
        p.http("/v3/lease/grant", json!({"TTL": "600", "ID": "4096"}).to_string()).await;
        let lock = p.http("/v3/lock/lock", json!({"name": b64("mylock"), "lease": "4096"}).to_string()).await;
        p.http("/v3/lock/lock", json!({"name": b64("other"), "lease": "31337"}).to_string()).await;
        p.http("/v3/lock/unlock", json!({"key": lock["key"]}).to_string()).await;
        p.http("/v3/lock/unlock", json!({"key": b64("never-locked")}).to_string()).await;

        p.http("/v3/election/leader", json!({"name": b64("elect")}).to_string()).await;
        let campaign = p
            .http("/v3/election/campaign", json!({"name": b64("elect"), "lease": "4096", "value": b64("me")}).to_string())
            .await;
        p.http("/v3/election/campaign", json!({"name": b64("elect"), "lease": "31337", "value": b64("me")}).to_string()).await;
        let leader = campaign["leader"].clone();
        p.http("/v3/election/leader", json!({"name": b64("elect")}).to_string()).await;
        p.http("/v3/election/proclaim", json!({"leader": leader, "value": b64("me again")}).to_string()).await;
        p.same("observe", |side| async move {
            let mut stream = side.http_stream("/v3/election/observe").await;
            stream.send(json!({"name": b64("elect")}).to_string()).await;
            stream.close_input();
            let first = stream.next_message().await;
            (stream.head().await, first)
        })
        .await;
        p.http("/v3/election/resign", json!({"leader": leader}).to_string()).await;
        p.http("/v3/election/leader", json!({"name": b64("elect")}).to_string()).await;
        let stale = json!({"leader": {"name": b64("elect"), "key": b64("elect/gone"), "rev": "2", "lease": "4096"}, "value": b64("x")});
        p.http("/v3/election/proclaim", stale.to_string()).await;
        p.http("/v3/election/resign", json!({"leader": stale["leader"]}).to_string()).await;
    })
    .await;
}

/// `/v3beta/` is etcd's older spelling of `/v3/`; `/version` and `/health` come from the member.
#[tokio::test]
async fn prefixes_version_and_health() {
    Pair::each_version(|p| async move {
        p.http("/v3beta/kv/put", kv("beta", "1")).await;
        p.http("/v3beta/kv/range", key("beta")).await;
        p.http("/v3beta/lease/grant", json!({"TTL": "60", "ID": "5"}).to_string()).await;
        http_since_35(&p, "/v3beta/auth/status", "{}").await;
        p.same("GET /version", |side| async move { side.get("/version").await.raw() }).await;
        p.same("GET /health", |side| async move { side.get("/health").await.raw() }).await;

        // Documented differences: etcdgate also serves /v3alpha/, and answers unknown paths
        // and wrong methods with a JSON error where etcd writes plain text.
        let [etcd, gateway] = p.post_both("/v3alpha/kv/range", key("beta")).await;
        assert_eq!(etcd.status, 404, "{}", etcd.raw());
        assert_eq!(gateway.status, 200, "{}", gateway.raw());
        assert_eq!(gateway.json()["count"], "1");
        // Every answer carries etcd's CORS headers; a preflight is an empty 200.
        for (method, path) in [("POST", "/v3/kv/range"), ("POST", "/v3/kv/put"), ("OPTIONS", "/v3/kv/range"), ("GET", "/version")] {
            let method: http::Method = method.parse().unwrap();
            let [etcd, gateway] = p.both(|side| {
                let method = method.clone();
                async move { side.send(method, path, "{}".into(), &[]).await }
            })
            .await;
            let cors = |r: &HttpReply| (r.status, r.headers_named("access-control-"));
            assert_eq!(cors(&etcd), cors(&gateway), "{}: {method} {path}", p.version);
            assert!(!cors(&etcd).1.is_empty());
        }
        let [etcd, gateway] = p.both(|side| async move { side.send(http::Method::OPTIONS, "/v3/kv/put", "".into(), &[]).await }).await;
        assert_eq!(etcd.body, gateway.body);
        for (method, path) in [("POST", "/v3/nope"), ("POST", "/nope"), ("GET", "/v3/kv/range"), ("PUT", "/v3/kv/put")] {
            let method: http::Method = method.parse().unwrap();
            let [etcd, gateway] = p.both(|side| {
                let method = method.clone();
                async move { side.send(method, path, "{}".into(), &[]).await }
            })
            .await;
            let code = if gateway.status == 404 { tonic::Code::NotFound } else { tonic::Code::Unimplemented };
            gateway.assert_json_error(etcd.status, code);
        }
    })
    .await;
}
