//! `POST /v3/watch` over plain HTTP/1.1, as APISIX uses it: the same bytes from etcdgate as
//! from etcd (apart from header ids), and every message in a chunk of its own ending in `\n`.
//!
//! etcd's gateway starts a stream only once the request body is complete, so every watch
//! here sends its whole body (one or more JSON requests) and then reads; later events come
//! from writes made through the same side.

mod common;

use common::{b64, HttpStream, Pair, Side};
use serde_json::json;

fn create(key: &str, extra: serde_json::Value) -> String {
    let mut request = json!({"key": b64(key)});
    request.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({"create_request": request}).to_string()
}

/// Opens a watch whose body is `requests`, and returns it with its response head.
async fn open_watch(side: &Side, requests: &[String]) -> (HttpStream, String) {
    let mut stream = side.http_stream("/v3/watch").await;
    for request in requests {
        stream.send(request.clone()).await;
    }
    stream.close_input();
    let head = format!("{:?}", stream.head().await);
    (stream, head)
}

/// Reads `n` messages, each required to be one chunk ending in `\n`.
async fn read(stream: &mut HttpStream, n: usize) -> Vec<String> {
    let mut messages = Vec::new();
    for _ in 0..n {
        messages.push(stream.next_message().await.expect("watch response ended early"));
    }
    messages
}

async fn write(side: &Side, path: &str, body: String) {
    let reply = side.post(path, body).await;
    assert_eq!(reply.status, 200, "{:?}: {path}: {}", side.which, reply.raw());
}

/// History from a start revision with prev_kv, then live puts and deletes.
async fn events_scenario(side: Side) -> Vec<String> {
    write(&side, "/v3/kv/put", json!({"key": b64("a"), "value": b64("1")}).to_string()).await;
    write(&side, "/v3/kv/put", json!({"key": b64("a"), "value": b64("2")}).to_string()).await;
    write(&side, "/v3/kv/deleterange", json!({"key": b64("a")}).to_string()).await;

    let (mut stream, head) = open_watch(&side, &[create("a", json!({"start_revision": "2", "prev_kv": true}))]).await;
    let mut transcript = vec![head];
    transcript.extend(read(&mut stream, 2).await);
    write(&side, "/v3/kv/put", json!({"key": b64("a"), "value": b64("3")}).to_string()).await;
    transcript.extend(read(&mut stream, 1).await);
    write(&side, "/v3/kv/deleterange", json!({"key": b64("a"), "prev_kv": true}).to_string()).await;
    transcript.extend(read(&mut stream, 1).await);

    // A prefix watch filtering out deletes, with progress, in one body.
    let prefix = create("p/", json!({"range_end": b64("p0"), "filters": ["NODELETE"]}));
    let (mut stream, head) = open_watch(&side, &[prefix, r#"{"progress_request":{}}"#.to_string()]).await;
    transcript.push(head);
    transcript.extend(read(&mut stream, 2).await);
    write(&side, "/v3/kv/put", json!({"key": b64("p/1"), "value": b64("x")}).to_string()).await;
    write(&side, "/v3/kv/deleterange", json!({"key": b64("p/1")}).to_string()).await;
    write(&side, "/v3/kv/put", json!({"key": b64("p/2"), "value": b64("y")}).to_string()).await;
    transcript.extend(read(&mut stream, 2).await);

    // Create and cancel in one body; then a watch with an id of its own.
    let cancel = json!({"cancel_request": {"watch_id": "0"}}).to_string();
    let (mut stream, head) = open_watch(&side, &[create("c", json!({})), cancel]).await;
    transcript.push(head);
    transcript.extend(read(&mut stream, 2).await);
    let (mut stream, head) = open_watch(&side, &[create("d", json!({"watch_id": "7"}))]).await;
    transcript.push(head);
    transcript.extend(read(&mut stream, 1).await);
    transcript
}

/// A watch from a compacted revision is created, then cancelled with the compact revision.
async fn compaction_scenario(side: Side) -> Vec<String> {
    for value in ["1", "2", "3", "4"] {
        write(&side, "/v3/kv/put", json!({"key": b64("k"), "value": b64(value)}).to_string()).await;
    }
    write(&side, "/v3/kv/compaction", json!({"revision": "4"}).to_string()).await;
    let (mut stream, head) = open_watch(&side, &[create("k", json!({"start_revision": "2"}))]).await;
    let mut transcript = vec![head];
    transcript.extend(read(&mut stream, 2).await);
    let (mut stream, head) = open_watch(&side, &[create("k", json!({"start_revision": "4"}))]).await;
    transcript.push(head);
    transcript.extend(read(&mut stream, 2).await);
    transcript
}

#[tokio::test]
async fn watch_events() {
    Pair::each_version(|p| async move {
        p.same("watch events", events_scenario).await;
    })
    .await;
}

#[tokio::test]
async fn watch_compaction_cancel() {
    Pair::each_version(|p| async move {
        if common::cache_everything() {
            // etcd has compacted revisions 2 and 3; the watch cache still holds them.
            let [etcd, gateway] = p.both(compaction_scenario).await;
            assert!(etcd[2].contains(r#""compact_revision":"4""#), "{etcd:?}");
            let served = &gateway[2];
            for revision in 2..=5 {
                assert!(served.contains(&format!(r#""mod_revision":"{revision}""#)), "{gateway:?}");
            }
            assert_eq!(etcd[3..], gateway[3..], "a watch from a revision etcd still has");
            return;
        }
        let transcript = p.same("watch after compaction", compaction_scenario).await;
        assert!(transcript[2].contains(r#""compact_revision":"4""#), "{transcript:?}");
    })
    .await;
}

/// A watch body whose first request is bad fails as a whole (etcd: 500, code 2); a bad
/// request after a good one ends the input there and the watch goes on.
#[tokio::test]
async fn watch_bad_requests() {
    Pair::each_version(|p| async move {
        p.same("bad later request", |side| async move {
            let (mut stream, head) = open_watch(&side, &[create("a", json!({})), "{oops".to_string()]).await;
            let mut transcript = vec![head];
            transcript.extend(read(&mut stream, 1).await);
            write(&side, "/v3/kv/put", json!({"key": b64("a"), "value": b64("1")}).to_string()).await;
            transcript.extend(read(&mut stream, 1).await);
            transcript
        })
        .await;
        let [etcd, gateway] = p.post_both("/v3/watch", r#"{"create_request":{"key":5}}"#).await;
        assert_eq!(etcd.status, 500, "{}", etcd.raw());
        gateway.assert_json_error(500, tonic::Code::Unknown);
        p.http("/v3/watch", r#"{"create_request":{"key":"YQ=="#).await;
    })
    .await;
}
