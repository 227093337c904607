//! `snapshot` against real etcd 3.4 and 3.5: what it reads from a snapshot (revision, compact
//! revision, live keys, KV hash) is what the member that wrote it answers (Status, Range,
//! HashKV), after a history with overflow values, branch pages, deletions, a txn and a physical
//! compaction; and a damaged or cut snapshot is refused with a clear error.

use std::path::Path;

use etcdgate_console::snapshot::{read_snapshot, summarize, Checksum, SnapshotError, SnapshotSummary};
use etcdgate_proto::etcdserverpb::{
    compare, kv_client::KvClient, maintenance_client::MaintenanceClient, request_op, Compare, CompactionRequest,
    DeleteRangeRequest, HashKvRequest, PutRequest, RangeRequest, RequestOp, SnapshotRequest, StatusRequest,
    TxnRequest,
};
use etcdgate_testkit::{Cluster, EtcdVersion};
use futures::{stream, StreamExt};
use tonic::transport::Channel;

/// Keys written in the first phase: enough for the `key` bucket to need branch pages.
const KEYS: usize = 2000;
/// Every this many keys, a value of 10 KiB (overflow pages).
const BIG_EVERY: usize = 97;

struct Member {
    kv: KvClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
}

impl Member {
    async fn connect(cluster: &Cluster) -> Member {
        let url = cluster.client_url(0);
        Member {
            kv: KvClient::connect(url.clone()).await.expect("connect KV"),
            maintenance: MaintenanceClient::connect(url).await.expect("connect Maintenance"),
        }
    }

    /// Puts `key = value`, returning the revision it was written at.
    async fn put(&mut self, key: &str, value: Vec<u8>) -> i64 {
        let put = PutRequest { key: key.into(), value, ..Default::default() };
        self.kv.put(put).await.expect("put").into_inner().header.expect("header").revision
    }

    /// Deletes `[key, range_end)` (just `key` if `range_end` is empty), returning the revision.
    async fn delete(&mut self, key: &str, range_end: &str) -> i64 {
        let delete = DeleteRangeRequest { key: key.into(), range_end: range_end.into(), ..Default::default() };
        let response = self.kv.delete_range(delete).await.expect("delete").into_inner();
        assert!(response.deleted > 0, "nothing deleted at {key:?}");
        response.header.expect("header").revision
    }

    async fn txn(&mut self, txn: TxnRequest) -> i64 {
        let response = self.kv.txn(txn).await.expect("txn").into_inner();
        assert!(response.succeeded, "txn failed");
        response.header.expect("header").revision
    }

    async fn compact(&mut self, revision: i64) {
        self.kv.compact(CompactionRequest { revision, physical: true }).await.expect("compact");
    }

    /// The snapshot stream, as `etcdctl snapshot save` writes it.
    async fn snapshot(&mut self, path: &Path) {
        let mut stream = self.maintenance.snapshot(SnapshotRequest {}).await.expect("snapshot").into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend(chunk.expect("snapshot chunk").blob);
        }
        std::fs::write(path, bytes).expect("write snapshot");
    }

    /// Checks `summary` against what the member answers now (nothing written since the
    /// snapshot): its revision, live key count and HashKV.
    async fn check(&mut self, summary: &SnapshotSummary, compact_revision: i64) {
        let status = self.maintenance.status(StatusRequest {}).await.expect("status").into_inner();
        let revision = status.header.expect("header").revision;
        let count = RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() };
        let count = self.kv.range(count).await.expect("count").into_inner();
        assert_eq!(summary.checksum, Checksum::Sha256Verified);
        assert_eq!(summary.revision, revision, "{summary:?}");
        assert_eq!(count.header.expect("header").revision, revision);
        assert_eq!(summary.compact_revision, compact_revision, "{summary:?}");
        assert_eq!(summary.keys, count.count as u64, "{summary:?}");
        assert!(summary.revisions >= summary.keys, "{summary:?}");
        assert!(summary.consistent_index <= status.raft_index, "{summary:?} {}", status.raft_index);

        let hash = self.maintenance.hash_kv(HashKvRequest { revision }).await.expect("HashKV").into_inner();
        assert_eq!(summary.hash, hash.hash, "HashKV({revision}) of the member");
        // -1: never compacted.
        assert_eq!(summary.compact_revision, hash.compact_revision.max(0));
        let current = self.maintenance.hash_kv(HashKvRequest { revision: 0 }).await.expect("HashKV(0)").into_inner();
        assert_eq!(summary.hash, current.hash, "HashKV(0) of the member");
    }
}

fn key(i: usize) -> String {
    format!("k/{i:04}")
}

fn value(i: usize, round: u8) -> Vec<u8> {
    if i.is_multiple_of(BIG_EVERY) {
        vec![b'a' + round; 10 * 1024]
    } else {
        format!("value {i} of round {round}").into_bytes()
    }
}

fn put_op(key: String, value: Vec<u8>) -> RequestOp {
    let put = PutRequest { key: key.into(), value, ..Default::default() };
    RequestOp { request: Some(request_op::Request::RequestPut(put)) }
}

async fn busy_member(version: EtcdVersion) {
    let cluster = Cluster::start(version, 1).await.expect("start cluster");
    let mut member = Member::connect(&cluster).await;
    let dir = tempfile::tempdir().expect("temp dir");

    // 2000 keys in txns of 100 puts (one main revision each, sub revisions 0..99), then 300
    // overwrites, 8 in flight.
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
        let success = chunk.iter().map(|&i| put_op(key(i), value(i, 0))).collect();
        member.txn(TxnRequest { success, ..Default::default() }).await;
    }
    let kv = member.kv.clone();
    stream::iter((0..KEYS).step_by(7).take(300))
        .for_each_concurrent(8, |i| {
            let mut kv = kv.clone();
            async move {
                kv.put(PutRequest { key: key(i).into(), value: value(i, 1), ..Default::default() }).await.expect("put");
            }
        })
        .await;
    // Deletions: a range of 100 keys (100 tombstones at one revision), then single keys.
    member.delete(&key(100), &key(200)).await;
    for i in [3, 5, 300, 301] {
        member.delete(&key(i), "").await;
    }
    // A txn: compare, then a put, a delete and an overwrite.
    let compare = Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Version as i32,
        key: key(0).into(),
        target_union: Some(compare::TargetUnion::Version(0)),
        ..Default::default()
    };
    let delete = DeleteRangeRequest { key: key(400).into(), ..Default::default() };
    let delete = RequestOp { request: Some(request_op::Request::RequestDeleteRange(delete)) };
    let success = vec![put_op("txn/new".into(), b"new".to_vec()), delete, put_op(key(0), value(0, 2))];
    member.txn(TxnRequest { compare: vec![compare], success, ..Default::default() }).await;
    // Compaction at a deletion's revision, in the middle of the history.
    let compact_revision = member.delete(&key(500), "").await;
    member.put(&key(501), value(501, 3)).await;
    member.compact(compact_revision).await;
    // After it: overwrites of keys last written before it, new keys, a deletion of a key last
    // written before it, a deletion of a key written after it.
    for i in [0, 1, 2, BIG_EVERY, 501, 1999] {
        member.put(&key(i), value(i, 4)).await;
    }
    for i in 0..10 {
        member.put(&format!("after/{i}"), value(i, 5)).await;
    }
    member.delete(&key(600), "").await;
    member.delete("after/3", "").await;

    let path = dir.path().join("snapshot.db");
    member.snapshot(&path).await;
    let summary = read_snapshot(&path).expect("read snapshot");
    member.check(&summary, compact_revision).await;
    assert!(summary.keys > 1000 && summary.revisions > summary.keys && summary.consistent_index > 0, "{summary:?}");
    let bytes = std::fs::read(&path).expect("read back");
    assert_eq!(summary.size_bytes, bytes.len() as u64);
    let page_size = summary.page_size as usize;
    // 73 leaf pages under a branch page, 23 of them with overflow pages, when this was written.
    assert!(bytes.len() - 32 > 100 * page_size, "too small for branch and overflow pages: {summary:?}");

    // Without the trailer: a copy of member/snap/db, same data.
    let db = &bytes[..bytes.len() - 32];
    let plain = summarize(db).expect("summarize without trailer");
    let expected = SnapshotSummary { size_bytes: db.len() as u64, checksum: Checksum::Absent, ..summary.clone() };
    assert_eq!(plain, expected);

    // One byte flipped in the middle: the trailer catches it.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    let flipped_path = dir.path().join("flipped.db");
    std::fs::write(&flipped_path, &flipped).expect("write flipped");
    let err = read_snapshot(&flipped_path).expect_err("flipped byte accepted");
    assert!(matches!(err, SnapshotError::Sha256Mismatch { .. }), "{err}");
    assert!(err.to_string().starts_with("sha256 mismatch: the snapshot's trailer says "), "{err}");

    // Cut at a page boundary mid-file (no trailer then): the meta page counts more pages.
    let cut = db.len() / 2 / page_size * page_size;
    let err = summarize(&db[..cut]).expect_err("truncated snapshot accepted");
    assert!(matches!(err, SnapshotError::Truncated { .. }), "{err}");
    // Cut anywhere, with or without trailer: an error, never a panic.
    for cut in [1, 100, 4096, 4097, cut + 32, db.len() - 1, bytes.len() - 1] {
        assert!(summarize(&bytes[..cut]).is_err(), "cut at {cut} accepted");
    }

    let err = read_snapshot(&dir.path().join("missing.db")).expect_err("missing file read");
    assert!(matches!(err, SnapshotError::Io { .. }), "{err}");
}

async fn fresh_member(version: EtcdVersion) {
    let cluster = Cluster::start(version, 1).await.expect("start cluster");
    let mut member = Member::connect(&cluster).await;
    let dir = tempfile::tempdir().expect("temp dir");

    // No key at all, saved by etcdctl.
    let path = dir.path().join("empty.db");
    let out = cluster.etcdctl(&["snapshot", "save", path.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "etcdctl snapshot save: {}", String::from_utf8_lossy(&out.stderr));
    let summary = read_snapshot(&path).expect("read empty snapshot");
    assert_eq!((summary.revision, summary.keys, summary.revisions), (1, 0, 0), "{summary:?}");
    member.check(&summary, 0).await;

    // Then no live key after a compaction: etcd hashes the compacted revisions it kept.
    member.put("x", b"2".to_vec()).await;
    let compact_revision = member.put("x", b"3".to_vec()).await;
    member.compact(compact_revision).await;
    member.delete("x", "").await;
    let path = dir.path().join("deleted.db");
    member.snapshot(&path).await;
    let summary = read_snapshot(&path).expect("read snapshot");
    assert_eq!((summary.keys, summary.revisions), (0, 2), "{summary:?}");
    member.check(&summary, compact_revision).await;
}

#[tokio::test]
async fn v34_busy_member() {
    busy_member(EtcdVersion::V3_4).await;
}

#[tokio::test]
async fn v35_busy_member() {
    busy_member(EtcdVersion::V3_5).await;
}

#[tokio::test]
async fn v34_fresh_member() {
    fresh_member(EtcdVersion::V3_4).await;
}

#[tokio::test]
async fn v35_fresh_member() {
    fresh_member(EtcdVersion::V3_5).await;
}
