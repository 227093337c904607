//! Verified backups: a snapshot streamed from a member (Maintenance.Snapshot, as `etcdctl
//! snapshot save` takes it) is kept only once it is proven whole and true — its sha256 trailer
//! matches, every page of its data reads (see [`crate::snapshot`]), and the hash of its data
//! equals the member's own HashKV at the snapshot's revision. Each kept snapshot has a JSON
//! record beside it; the newest `keep` are kept, older ones removed.
//!
//! Files: `DIR/etcd-<cluster>-<UTC time>-r<revision>.db` and `.db.json`; a snapshot being
//! written or checked is `DIR/.partial-*.db` and never counts as a backup.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcdgate_proto::etcdserverpb::{maintenance_client::MaintenanceClient, HashKvRequest, SnapshotRequest, StatusRequest};
use etcdgate_upstream::login::Login;
use etcdgate_upstream::Pool;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::calls::{as_gateway, status_message, with_token};
use crate::inspect::hex;
use crate::snapshot::{read_snapshot, Checksum, SnapshotSummary};

/// Deadline of the Status asked of the member before its snapshot.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// Where backups go and how many stay.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub dir: PathBuf,
    /// The newest this many verified backups are kept (at least 1).
    pub keep: usize,
    /// A snapshot that has not arrived whole after this long is given up.
    pub timeout: Duration,
}

/// The record kept beside each backup (`.db.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The snapshot's file name, in the same directory.
    pub file: String,
    pub taken_at_unix_ms: u64,
    pub took_ms: u64,
    pub cluster_id: String,
    /// The member it was streamed from: its ID in hex, and the client URL.
    pub member: String,
    pub member_url: String,
    pub size_bytes: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub keys: u64,
    /// The data's hash (what HashKV answers at `revision`).
    pub hash: u32,
    /// How the data was checked against the member: `HashKV matched at revision R`, or why
    /// it could not be (compacted since).
    pub verified: String,
}

/// Streams a snapshot from a member into `options.dir`, verifies it, keeps it, and removes
/// backups beyond `options.keep`. Members are tried in the pool's order (healthy ones first);
/// the first that delivers a snapshot that verifies wins.
pub async fn take_backup(pool: &Pool, login: Option<&Login>, options: &BackupOptions) -> Result<BackupRecord, String> {
    tokio::fs::create_dir_all(&options.dir).await.map_err(|e| format!("creating {}: {e}", options.dir.display()))?;
    let mut failures = Vec::new();
    for member in pool.members() {
        match backup_from(pool, login, member.url(), options).await {
            Ok(record) => {
                prune(&options.dir, options.keep.max(1));
                return Ok(record);
            }
            Err(error) => failures.push(format!("{}: {error}", member.url())),
        }
    }
    if failures.is_empty() {
        return Err("no etcd member to take a snapshot from".into());
    }
    Err(failures.join("; "))
}

async fn backup_from(pool: &Pool, login: Option<&Login>, url: &str, options: &BackupOptions) -> Result<BackupRecord, String> {
    let started = Instant::now();
    let taken_at = SystemTime::now();
    let partial = options.dir.join(format!(".partial-{}.db", taken_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())));
    let result = async {
        let connection = pool.direct_connection(url)?;
        let mut maintenance = MaintenanceClient::new(connection);
        // Which cluster and member: the snapshot stream's header has no IDs on etcd 3.5.1.
        let header = tokio::time::timeout(STATUS_TIMEOUT, maintenance.status(StatusRequest {}))
            .await
            .map_err(|_| format!("no answer to Status within {STATUS_TIMEOUT:?}"))?
            .map_err(|status| format!("Status failed: {}", status.message()))?
            .into_inner()
            .header
            .unwrap_or_default();
        let size = tokio::time::timeout(options.timeout, save(pool, login, &maintenance, &partial))
            .await
            .map_err(|_| format!("the snapshot did not arrive whole within {:?}", options.timeout))??;
        let checked = partial.clone();
        let summary = tokio::task::spawn_blocking(move || read_snapshot(&checked))
            .await
            .map_err(|e| format!("checking the snapshot: {e}"))?
            .map_err(|e| format!("the snapshot is damaged: {e}"))?;
        if summary.checksum != Checksum::Sha256Verified {
            return Err("the snapshot came without etcd's sha256 trailer".to_string());
        }
        if summary.size_bytes != size {
            return Err(format!("wrote {size} bytes but the file has {}", summary.size_bytes));
        }
        let verified = compare_with_member(pool, login, &maintenance, &summary).await?;
        let cluster_id = hex(header.cluster_id);
        let file = format!("etcd-{cluster_id}-{}-r{}.db", utc_stamp(taken_at), summary.revision);
        let record = BackupRecord {
            file: file.clone(),
            taken_at_unix_ms: taken_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            took_ms: started.elapsed().as_millis() as u64,
            cluster_id,
            member: hex(header.member_id),
            member_url: url.to_string(),
            size_bytes: summary.size_bytes,
            revision: summary.revision,
            compact_revision: summary.compact_revision,
            keys: summary.keys,
            hash: summary.hash,
            verified,
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
        let record_path = options.dir.join(format!("{file}.json"));
        tokio::fs::write(&record_path, json).await.map_err(|e| format!("writing {}: {e}", record_path.display()))?;
        tokio::fs::rename(&partial, options.dir.join(&file)).await.map_err(|e| format!("renaming the snapshot: {e}"))?;
        if let Ok(dir) = tokio::fs::File::open(&options.dir).await {
            let _ = dir.sync_all().await;
        }
        Ok(record)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result
}

/// Streams the member's snapshot into `path` (fsynced); the bytes written.
async fn save(
    pool: &Pool,
    login: Option<&Login>,
    maintenance: &MaintenanceClient<etcdgate_upstream::MemberConnection>,
    path: &Path,
) -> Result<u64, String> {
    let started = as_gateway(pool, login, |token| {
        let mut maintenance = maintenance.clone();
        async move { maintenance.snapshot(with_token(SnapshotRequest {}, &token)).await }
    });
    let mut stream = started.await.map_err(|status| format!("Snapshot refused: {}", status_message(&status)))?.into_inner();
    let mut file = tokio::fs::File::create(path).await.map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut written = 0u64;
    while let Some(message) = stream.next().await {
        let message = message.map_err(|status| format!("the snapshot stream broke after {written} bytes: {}", status.message()))?;
        file.write_all(&message.blob).await.map_err(|e| format!("writing {}: {e}", path.display()))?;
        written += message.blob.len() as u64;
    }
    file.sync_all().await.map_err(|e| format!("syncing {}: {e}", path.display()))?;
    Ok(written)
}

/// The member's HashKV at the snapshot's revision must equal the snapshot's own hash, unless
/// the member compacted past it since (then the hashes are of different data).
async fn compare_with_member(
    pool: &Pool,
    login: Option<&Login>,
    maintenance: &MaintenanceClient<etcdgate_upstream::MemberConnection>,
    summary: &SnapshotSummary,
) -> Result<String, String> {
    let revision = summary.revision;
    let asked = as_gateway(pool, login, |token| {
        let mut maintenance = maintenance.clone();
        async move { maintenance.hash_kv(with_token(HashKvRequest { revision }, &token)).await }
    });
    let answer = match asked.await {
        Ok(answer) => answer.into_inner(),
        Err(status) if status.message().contains("required revision has been compacted") => {
            return Ok(format!("not compared: the member compacted past revision {revision} since"));
        }
        Err(status) => return Err(format!("HashKV at revision {revision} failed: {}", status_message(&status))),
    };
    if answer.compact_revision.max(0) != summary.compact_revision {
        return Ok(format!(
            "not compared: the member compacted at revision {} since the snapshot (at {})",
            answer.compact_revision, summary.compact_revision
        ));
    }
    if answer.hash != summary.hash {
        return Err(format!(
            "the snapshot's data hash {:08x} differs from the member's HashKV {:08x} at revision {revision}",
            summary.hash, answer.hash
        ));
    }
    Ok(format!("HashKV matched at revision {revision}"))
}

/// `YYYYmmddTHHMMSSZ` in UTC.
fn utc_stamp(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// The backups in `dir`, newest first: every snapshot with its record beside it.
pub fn list_backups(dir: &Path) -> Vec<BackupRecord> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut records: Vec<BackupRecord> = entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".db.json"))
        .filter_map(|entry| serde_json::from_slice::<BackupRecord>(&std::fs::read(entry.path()).ok()?).ok())
        .filter(|record| !record.file.contains('/') && dir.join(&record.file).is_file())
        .collect();
    records.sort_by(|a, b| b.taken_at_unix_ms.cmp(&a.taken_at_unix_ms).then_with(|| b.file.cmp(&a.file)));
    records
}

/// Removes the backups beyond the newest `keep`, and snapshots left half-written.
fn prune(dir: &Path, keep: usize) {
    for record in list_backups(dir).iter().skip(keep) {
        let _ = std::fs::remove_file(dir.join(&record.file));
        let _ = std::fs::remove_file(dir.join(format!("{}.json", record.file)));
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|m| m.elapsed().ok()).is_some_and(|age| age > Duration::from_secs(86_400));
        if name.starts_with(".partial-") && stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_are_civil_dates() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(utc_stamp(UNIX_EPOCH + Duration::from_secs(951_782_400)), "20000229T000000Z");
        assert_eq!(utc_stamp(UNIX_EPOCH + Duration::from_secs(1_796_666_310)), "20261207T175830Z");
    }
}
