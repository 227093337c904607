//! Progress answers on a stream whose watches are served partly by the watch cache and
//! partly by etcd (as a client gets that shares one stream among watches of several
//! prefixes, and asks for progress to know it has seen everything up to a revision): an
//! answer at revision R comes after every event up to R of every watch of the stream, as
//! from etcd. Under a stream of writes to both watches' keys, with progress asked for every
//! few milliseconds, no event may arrive at or below a progress revision already answered;
//! and after writes the cache never hears of (outside its keys), progress is still answered.

mod common;

use std::time::Duration;

use etcdgate_proto::etcdserverpb::{watch_client::WatchClient, watch_request::RequestUnion, WatchProgressRequest, WatchRequest, WatchResponse};
use etcdgate_testkit::{Cluster, EtcdVersion};
use futures::StreamExt;

use common::{watch_prefix, Etcdgate};

const WRITES: usize = 2000;
/// Bound on waits that must end for the test to pass (never a measure of speed).
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn progress_answers_come_after_the_events_they_cover() {
    let cluster = Cluster::start(EtcdVersion::V3_5, 1).await.unwrap();
    // Caches `/apisix` (the default): `/outside/` is etcd's.
    let gateway = Etcdgate::start(&cluster.endpoints());
    let (requests, input) = tokio::sync::mpsc::channel(8);
    requests.send(watch_prefix(b"/outside/")).await.unwrap();
    requests.send(watch_prefix(b"/apisix/")).await.unwrap();
    let mut responses =
        WatchClient::connect(gateway.url()).await.unwrap().watch(tokio_stream::wrappers::ReceiverStream::new(input)).await.unwrap().into_inner();
    for _ in 0..2 {
        let created = next(&mut responses).await;
        assert!(created.created, "{created:?}");
    }
    // Every write comes after both watches were created: the watches get every one.
    let writing = common::spawn_alternating_writes(gateway.url(), WRITES);
    let asking = tokio::spawn({
        let requests = requests.clone();
        async move {
            while requests.send(progress()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    });

    let (mut answered, mut answers, mut events, mut early) = (0, 0, 0, Vec::new());
    while events < WRITES {
        let response = next(&mut responses).await;
        if response.watch_id == -1 && response.events.is_empty() {
            answers += 1;
            answered = answered.max(response.header.map_or(0, |h| h.revision));
            continue;
        }
        for event in &response.events {
            events += 1;
            let revision = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            if revision <= answered {
                early.push(format!("watch {}: event at {revision} after a progress answer at {answered}", response.watch_id));
            }
        }
    }
    asking.abort();
    writing.await.unwrap();
    eprintln!("{events} events, {answers} progress answers");
    assert!(answers > 0, "no progress request was answered");
    assert!(early.is_empty(), "{} progress answers came before events they cover: {:?}", early.len(), &early[..early.len().min(10)]);

    // The last write was outside the cache's keys, so the cache never hears of its revision:
    // a progress request is still answered, at that revision (at least), as etcd answers it.
    let last = i64::try_from(WRITES).unwrap() + 1;
    requests.send(progress()).await.unwrap();
    loop {
        let response = next(&mut responses).await;
        let revision = response.header.map_or(0, |h| h.revision);
        assert!(response.watch_id == -1 && response.events.is_empty(), "an event after the last write's: {:?}", response.events);
        if revision >= last {
            break;
        }
    }
}

fn progress() -> WatchRequest {
    WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) }
}

/// The stream's next response, within [`PATIENCE`].
async fn next(responses: &mut tonic::Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(PATIENCE, responses.next()).await.expect("a response in time").expect("the stream open").expect("a response")
}
