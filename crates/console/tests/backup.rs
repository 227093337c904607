//! Verified backups against real etcd 3.4 and 3.5: a backup is kept with its record only once
//! its data's hash equals the member's HashKV; the newest `keep` stay; a backup taken while
//! the cluster is written to still verifies; and with no member reachable nothing is kept.

use std::time::Duration;

use etcdgate_console::backup::{list_backups, take_backup, BackupOptions};
use etcdgate_console::snapshot::{read_snapshot, Checksum};
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, CompactionRequest, DeleteRangeRequest, PutRequest};
use etcdgate_testkit::{Cluster, EtcdVersion};
use etcdgate_upstream::{Pool, PoolOptions};

#[tokio::test]
async fn backups_are_kept_only_verified_and_the_newest_stay() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 1).await.unwrap();
        let pool = Pool::new(&cluster.client_urls(), PoolOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let options = BackupOptions { dir: dir.path().to_path_buf(), keep: 2, timeout: Duration::from_secs(60) };
        let mut kv = KvClient::connect(cluster.client_url(0)).await.unwrap();
        for i in 0..300 {
            let put = PutRequest { key: format!("/apisix/routes/{i:04}").into_bytes(), value: vec![b'v'; 512], ..Default::default() };
            kv.put(put).await.unwrap();
        }
        let deleted = DeleteRangeRequest { key: b"/apisix/routes/0000".to_vec(), range_end: b"/apisix/routes/0100".to_vec(), ..Default::default() };
        let compact_at = kv.delete_range(deleted).await.unwrap().into_inner().header.unwrap().revision;
        kv.compact(CompactionRequest { revision: compact_at - 50, physical: true }).await.unwrap();

        let first = take_backup(&pool, None, &options).await.unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(first.verified, format!("HashKV matched at revision {}", first.revision), "{version}: {first:?}");
        let cluster_id = format!("{:x}", cluster.status(0).await.unwrap().header.unwrap().cluster_id);
        assert!(first.file.starts_with(&format!("etcd-{cluster_id}-")) && first.cluster_id == cluster_id, "{version}: {first:?}");
        assert_eq!((first.keys, first.revision, first.compact_revision), (200, compact_at, compact_at - 50), "{version}: {first:?}");
        let summary = read_snapshot(&dir.path().join(&first.file)).unwrap();
        assert_eq!((summary.checksum, summary.hash, summary.size_bytes), (Checksum::Sha256Verified, first.hash, first.size_bytes));

        // Backups taken while the keyspace is being written verify too; the oldest go.
        let writer = {
            let mut kv = kv.clone();
            tokio::spawn(async move {
                for i in 0..400 {
                    let put = PutRequest { key: format!("/apisix/upstreams/{i}").into_bytes(), value: vec![b'u'; 256], ..Default::default() };
                    kv.put(put).await.unwrap();
                }
            })
        };
        let mut taken = vec![first];
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            taken.push(take_backup(&pool, None, &options).await.unwrap_or_else(|e| panic!("{version}: {e}")));
        }
        writer.await.unwrap();
        let kept = list_backups(dir.path());
        let newest: Vec<&str> = taken[1..].iter().rev().map(|r| r.file.as_str()).collect();
        assert_eq!(kept.iter().map(|r| r.file.as_str()).collect::<Vec<_>>(), newest, "{version}");
        assert!(!dir.path().join(&taken[0].file).exists(), "{version}: the oldest backup was not removed");
        for record in &kept {
            assert!(record.verified.starts_with("HashKV matched"), "{version}: {record:?}");
        }
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !kept.iter().any(|r| *name == r.file || *name == format!("{}.json", r.file)))
            .collect();
        assert!(leftovers.is_empty(), "{version}: {leftovers:?}");

        // No member: an error, and nothing kept or left half-written.
        cluster.kill(0);
        let error = take_backup(&pool, None, &options).await.expect_err("no member to back up from");
        assert!(!error.is_empty(), "{version}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4, "{version}: {error}");
    }
}
