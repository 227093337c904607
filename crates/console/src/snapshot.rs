//! Reads an etcd v3 snapshot without etcd: the file `etcdctl snapshot save` writes (a bbolt
//! database followed by the sha256 of its bytes) or a plain copy of a member's `member/snap/db`.
//! This module owns its integrity checks (sha256 trailer, bbolt meta checksums, every page of the
//! `key` and `meta` buckets) and what it says the snapshot holds: revision, compaction, live keys
//! and the hash `Maintenance.HashKV` answers for the same data, so every backup can be verified.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};

use etcdgate_proto::mvccpb::KeyValue;
use memmap2::Mmap;
use prost::Message;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// What a snapshot holds, as etcd would see it after restoring it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotSummary {
    /// Size of the whole file, trailer included.
    pub size_bytes: u64,
    /// Whether a sha256 trailer was there (it always matched: a mismatch is an error).
    pub checksum: Checksum,
    /// The bbolt page size of the database.
    pub page_size: u32,
    /// The revision etcd restores as its current one: the highest main revision in the `key`
    /// bucket, or the finished compaction's revision if that is higher (1 for an empty store).
    pub revision: i64,
    /// The last finished compaction (`finishedCompactRev` in the `meta` bucket; 0 if none, where
    /// `HashKV` says -1). A compaction scheduled but not finished is not counted: etcd finishes
    /// it on restore.
    pub compact_revision: i64,
    /// The raft index the data was last written at (`consistent_index` in `meta`; 0 if absent).
    pub consistent_index: u64,
    /// Keys that exist at `revision` (their latest revision is not a deletion).
    pub keys: u64,
    /// Entries in the `key` bucket: every revision of every key kept since the last compaction.
    pub revisions: u64,
    /// What `Maintenance.HashKV` at `revision` answers on a member holding the same data and
    /// compact revision (etcd 3.4 and 3.5: CRC-32C over the `key` bucket as mvcc's `kvHasher`
    /// reads it). Where `revision == compact_revision`, compare with `HashKV(0)`: older members
    /// refuse `HashKV` at the compact revision, and 3.5 since 3.5.5 may answer the hash it stored
    /// when compacting, which covers other entries.
    pub hash: u32,
}

/// Whether a snapshot carried etcd's sha256 trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Checksum {
    /// The trailer was there and matched the database bytes.
    Sha256Verified,
    /// No trailer: a plain copy of a member's `member/snap/db` (nothing to check it against).
    Absent,
}

/// Why a snapshot cannot be trusted or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be opened or mapped.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The snapshot file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Smaller than two bbolt meta pages of the smallest page size.
    #[error("{size} bytes is too small to be an etcd snapshot")]
    TooSmall {
        /// Size of the file.
        size: u64,
    },
    /// The sha256 trailer does not match the database bytes before it.
    #[error("sha256 mismatch: the snapshot's trailer says {expected} but its database hashes to {actual}")]
    Sha256Mismatch {
        /// The trailer, in hex.
        expected: String,
        /// The sha256 of the database bytes, in hex.
        actual: String,
    },
    /// The first meta page does not start with bbolt's magic number.
    #[error("not a bbolt database: magic {magic:#010x} where {MAGIC:#010x} was expected")]
    NotBbolt {
        /// The number found.
        magic: u32,
    },
    /// The first meta page has bbolt's magic but a format version other than 2.
    #[error("unsupported bbolt format version {version} (only {VERSION} is known)")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// Neither meta page passes its checks (bbolt refuses to open such a file).
    #[error("both bbolt meta pages are invalid: page 0: {meta0}; page 1: {meta1}")]
    MetaInvalid {
        /// What is wrong with meta page 0.
        meta0: String,
        /// What is wrong with meta page 1.
        meta1: String,
    },
    /// The meta page gives a page size bbolt never writes.
    #[error("unusable bbolt page size {page_size} (expected {MIN_PAGE_SIZE} bytes to 16 MiB)")]
    BadPageSize {
        /// The page size found.
        page_size: u32,
    },
    /// The meta page counts more pages than the file has.
    #[error(
        "database truncated: its meta page counts {pages} pages of {page_size} bytes but only {actual} bytes are there"
    )]
    Truncated {
        /// Pages the meta page counts (its high-water mark).
        pages: u64,
        /// The page size.
        page_size: u32,
        /// Bytes of database there are (trailer excluded).
        actual: u64,
    },
    /// The database is not a whole number of pages, as bbolt always writes it: a cut or padded
    /// copy (or a trailer that is not etcd's).
    #[error("database size {size} is not a whole number of {page_size}-byte pages")]
    PartialPage {
        /// Bytes of database there are (trailer excluded).
        size: u64,
        /// The page size.
        page_size: u32,
    },
    /// A B+tree points at a page beyond the database's high-water mark (or at a meta page).
    #[error("page {pgid} is out of range: tree pages are 2 to {}", pages.saturating_sub(1))]
    PageOutOfRange {
        /// The page pointed at.
        pgid: u64,
        /// Pages the meta page counts.
        pages: u64,
    },
    /// A page's header or elements are inconsistent.
    #[error("corrupt bbolt {page}: {reason}")]
    CorruptPage {
        /// Which page (`page 7`, or the inline page of a bucket).
        page: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A B+tree reaches the same page twice.
    #[error("B+tree cycle: page {pgid} is reached twice")]
    Cycle {
        /// The page reached again.
        pgid: u64,
    },
    /// A B+tree is deeper than any real one can be.
    #[error("B+tree deeper than {MAX_DEPTH} levels at page {pgid}")]
    TooDeep {
        /// The page beyond the limit.
        pgid: u64,
    },
    /// A bucket etcd always creates is not there: not an etcd v3 backend.
    #[error("the database has no `{0}` bucket: not an etcd v3 backend")]
    MissingBucket(&'static str),
    /// An entry of the `key` or `meta` bucket is not what etcd writes.
    #[error("undecodable entry in the `{bucket}` bucket (key {key}): {reason}")]
    BadEntry {
        /// `key` or `meta`.
        bucket: &'static str,
        /// The entry's key, in hex (cut after 64 bytes).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads the snapshot at `path` (memory-mapped, read-only) and summarizes it, see [`summarize`].
pub fn read_snapshot(path: &Path) -> Result<SnapshotSummary, SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size < MIN_SIZE as u64 {
        return Err(SnapshotError::TooSmall { size });
    }
    // SAFETY: the map is read-only and only read through bounds-checked slices. The file must not
    // change while it is mapped (a truncation would fault): a backup is complete before it is
    // verified, and nothing writes it afterwards.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    summarize(&map)
}

/// Checks a whole snapshot held in memory (or mapped) and says what it holds: the sha256
/// trailer if there is one, then the bbolt structure of the `key` and `meta` buckets, every
/// entry of which is decoded. Never panics, whatever the bytes.
pub fn summarize(bytes: &[u8]) -> Result<SnapshotSummary, SnapshotError> {
    let size_bytes = bytes.len() as u64;
    if bytes.len() < MIN_SIZE {
        return Err(SnapshotError::TooSmall { size: size_bytes });
    }
    let (data, checksum) = split_trailer(bytes)?;
    let db = Db::open(data)?;
    let (key_bucket, meta_bucket) = db.etcd_buckets()?;
    let (compact_revision, consistent_index) = read_meta_bucket(&db, meta_bucket)?;

    // First pass: every revision, and the latest one of each key.
    let mut latest: HashMap<Vec<u8>, Rev> = HashMap::new();
    let mut revisions = 0u64;
    let mut last_main = 1i64;
    db.for_each("key", key_bucket, &mut |k, v, is_bucket| {
        let rev = key_entry_rev(k, is_bucket)?;
        let kv = KeyValue::decode(v).map_err(|e| bad_entry("key", k, format!("value is not an mvccpb.KeyValue: {e}")))?;
        revisions += 1;
        last_main = last_main.max(rev.main);
        latest.insert(kv.key, rev);
        Ok(())
    })?;
    let revision = last_main.max(compact_revision);
    let keys = latest.values().filter(|r| !r.tombstone).count() as u64;
    // The compacted part that HashKV still reads: the live keys whose latest revision is in it.
    let kept: HashSet<(i64, i64)> = latest
        .values()
        .filter(|r| !r.tombstone && r.main <= compact_revision)
        .map(|r| (r.main, r.sub))
        .collect();
    drop(latest);

    // Second pass: the hash, in the `key` bucket's order as etcd reads it.
    let mut hash = crc32c::crc32c_append(0, b"key");
    db.for_each("key", key_bucket, &mut |k, v, is_bucket| {
        if hashed(key_entry_rev(k, is_bucket)?, compact_revision, keys > 0, &kept) {
            hash = crc32c::crc32c_append(hash, k);
            hash = crc32c::crc32c_append(hash, v);
        }
        Ok(())
    })?;

    Ok(SnapshotSummary {
        size_bytes,
        checksum,
        page_size: db.page_size as u32,
        revision,
        compact_revision,
        consistent_index,
        keys,
        revisions,
        hash,
    })
}

/// Whether mvcc's `kvHasher` (etcd 3.4 and 3.5, `HashKV` at the current revision) writes the
/// entry at `rev`. Entries after the compaction are all written; at or before it, only those
/// `keep(current revision)` holds — the latest revision of each live key — unless no key is live
/// (then `keep` is empty and etcd skips nothing). A deletion at exactly the compact revision is
/// skipped: etcd after 3.4.33 / 3.5.15 keeps it in the database where older ones removed it.
fn hashed(rev: Rev, compact_revision: i64, any_live: bool, kept: &HashSet<(i64, i64)>) -> bool {
    let compacted = (rev.main, rev.sub) < (compact_revision.saturating_add(1), 0);
    if compacted && any_live && !kept.contains(&(rev.main, rev.sub)) {
        return false;
    }
    !(rev.tombstone && rev.main == compact_revision)
}

/// Length of etcd's sha256 trailer.
const TRAILER: usize = 32;

/// Splits off and checks etcd's sha256 trailer, present when `len % 512 == 32` (etcd's rule on
/// restore: a bbolt database is a whole number of pages).
fn split_trailer(bytes: &[u8]) -> Result<(&[u8], Checksum), SnapshotError> {
    if bytes.len() % 512 != TRAILER {
        return Ok((bytes, Checksum::Absent));
    }
    let (data, trailer) = bytes.split_at(bytes.len() - TRAILER);
    let actual = Sha256::digest(data);
    if actual.as_slice() != trailer {
        return Err(SnapshotError::Sha256Mismatch { expected: hex(trailer), actual: hex(&actual) });
    }
    Ok((data, Checksum::Sha256Verified))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

// ---------------------------------------------------------------------------------------------
// bbolt's on-disk format (go.etcd.io/bbolt: internal/common/page.go, meta.go, bucket.go).

/// bbolt's magic number, first in the meta struct.
const MAGIC: u32 = 0xED0C_DAED;
/// The only bbolt data format version.
const VERSION: u32 = 2;
/// Page header: id u64, flags u16, count u16, overflow u32.
const PAGE_HEADER: usize = 16;
/// Meta struct after the page header: magic, version, pageSize, flags (u32 each), root bucket
/// (root pgid, sequence), freelist pgid, pgid (high-water mark), txid, checksum (u64 each).
const META_LEN: usize = 64;
/// Offset of the checksum in the meta struct: FNV-1a 64 of the bytes before it.
const META_CHECKSUM: usize = 56;
/// Leaf elements (flags, pos, ksize, vsize: u32 each) and branch elements (pos, ksize: u32,
/// pgid: u64) are both 16 bytes; `pos` counts from the element's own address.
const ELEMENT: usize = 16;
/// A bucket's value starts with its root pgid and sequence; root 0 means an inline bucket, whose
/// leaf page follows in the value.
const BUCKET_HEADER: usize = 16;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
/// Leaf element flag: the value is a bucket.
const BUCKET_LEAF: u32 = 0x01;
/// bbolt looks for the second meta page from 1 KiB to 16 MiB; smaller or larger page sizes are
/// never written.
const MIN_PAGE_SIZE: usize = 1024;
const MAX_PAGE_SIZE: usize = 16 << 20;
const MIN_SIZE: usize = 2 * MIN_PAGE_SIZE;
/// Deeper than any B+tree can be (each branch page has at least 2 children, and pgids are u64).
const MAX_DEPTH: usize = 64;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

/// The fields of a valid meta page this reader uses.
struct Meta {
    page_size: u32,
    root: u64,
    pages: u64,
    txid: u64,
}

/// Reads and validates the meta page at `offset` as bbolt's `Meta.Validate` does.
fn read_meta(data: &[u8], offset: usize) -> Result<Meta, MetaProblem> {
    let m = data.get(offset + PAGE_HEADER..offset + PAGE_HEADER + META_LEN).ok_or(MetaProblem::Missing)?;
    let field = |off| u64_at(m, off).unwrap_or_default();
    let magic = u32_at(m, 0).unwrap_or_default();
    let version = u32_at(m, 4).unwrap_or_default();
    if magic != MAGIC {
        return Err(MetaProblem::Magic(magic));
    }
    if version != VERSION {
        return Err(MetaProblem::Version(version));
    }
    if fnv1a(&m[..META_CHECKSUM]) != field(META_CHECKSUM) {
        return Err(MetaProblem::Checksum);
    }
    Ok(Meta { page_size: u32_at(m, 8).unwrap_or_default(), root: field(16), pages: field(40), txid: field(48) })
}

/// FNV-1a 64, bbolt's meta page checksum.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Why a meta page is not usable.
enum MetaProblem {
    Missing,
    Magic(u32),
    Version(u32),
    Checksum,
}

impl MetaProblem {
    fn describe(&self) -> String {
        match self {
            MetaProblem::Missing => "not there (the file is too short)".into(),
            MetaProblem::Magic(m) => format!("magic {m:#010x} instead of {MAGIC:#010x}"),
            MetaProblem::Version(v) => format!("format version {v} instead of {VERSION}"),
            MetaProblem::Checksum => "checksum mismatch".into(),
        }
    }
}

/// An open bbolt database: its bytes (trailer excluded) and the meta page in force.
struct Db<'a> {
    data: &'a [u8],
    page_size: usize,
    /// The high-water mark: pages `0..pages` exist.
    pages: u64,
    root: u64,
}

/// Where a bucket's B+tree starts.
#[derive(Clone, Copy)]
enum BucketRoot<'a> {
    Page(u64),
    /// An inline bucket's leaf page, inside the bucket's value.
    Inline(&'a [u8]),
}

/// A page (with its overflow pages) or an inline bucket's page.
struct Page<'a> {
    /// `page N`, or the inline page of a bucket: for error messages.
    name: String,
    flags: u16,
    count: usize,
    bytes: &'a [u8],
}

impl<'a> Db<'a> {
    /// Finds the page size as bbolt does (meta page 0, else the second meta page at 1 KiB to 16
    /// MiB), then uses the valid meta page with the higher transaction id.
    fn open(data: &'a [u8]) -> Result<Db<'a>, SnapshotError> {
        let first = read_meta(data, 0);
        let page_size = match &first {
            Ok(m) => m.page_size,
            Err(problem) => {
                // The first candidate with bbolt's magic is where page 1 is, valid or not.
                let second = (0..=14)
                    .map(|i| read_meta(data, MIN_PAGE_SIZE << i))
                    .find(|m| !matches!(m, Err(MetaProblem::Missing | MetaProblem::Magic(_))));
                match (second, problem) {
                    (Some(Ok(m)), _) => m.page_size,
                    (_, MetaProblem::Magic(magic)) => return Err(SnapshotError::NotBbolt { magic: *magic }),
                    (_, MetaProblem::Version(v)) => return Err(SnapshotError::UnsupportedVersion { version: *v }),
                    (second, problem) => {
                        let meta1 = match second {
                            Some(Err(p1)) => p1.describe(),
                            _ => "no meta page with bbolt's magic at any page size from 1 KiB to 16 MiB".into(),
                        };
                        return Err(SnapshotError::MetaInvalid { meta0: problem.describe(), meta1 });
                    }
                }
            }
        };
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&(page_size as usize)) {
            return Err(SnapshotError::BadPageSize { page_size });
        }
        let ps = page_size as usize;
        let second = read_meta(data, ps);
        let meta = match (first, second) {
            (Ok(m0), Ok(m1)) => if m1.txid > m0.txid { m1 } else { m0 },
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(p0), Err(p1)) => return Err(SnapshotError::MetaInvalid { meta0: p0.describe(), meta1: p1.describe() }),
        };
        let truncated = SnapshotError::Truncated { pages: meta.pages, page_size, actual: data.len() as u64 };
        match meta.pages.checked_mul(ps as u64) {
            Some(needed) if needed <= data.len() as u64 && meta.pages >= 2 => {}
            _ => return Err(truncated),
        }
        if !data.len().is_multiple_of(ps) {
            return Err(SnapshotError::PartialPage { size: data.len() as u64, page_size });
        }
        Ok(Db { data, page_size: ps, pages: meta.pages, root: meta.root })
    }

    /// Page `pgid` with its overflow pages, after checking its header.
    fn page(&self, pgid: u64) -> Result<Page<'a>, SnapshotError> {
        if pgid < 2 || pgid >= self.pages {
            return Err(SnapshotError::PageOutOfRange { pgid, pages: self.pages });
        }
        let name = format!("page {pgid}");
        let corrupt = |reason: String| SnapshotError::CorruptPage { page: name.clone(), reason };
        // pgid < pages and pages * page_size <= data.len(): no overflow, in bounds.
        let start = pgid as usize * self.page_size;
        let header = &self.data[start..start + PAGE_HEADER];
        let id = u64_at(header, 0).unwrap_or_default();
        if id != pgid {
            return Err(corrupt(format!("its header says page {id}")));
        }
        let overflow = u64::from(u32_at(header, 12).unwrap_or_default());
        let end = pgid + 1 + overflow;
        if end > self.pages {
            return Err(corrupt(format!("its {overflow} overflow pages run past the last page {}", self.pages - 1)));
        }
        let page = Page {
            flags: u16_at(header, 8).unwrap_or_default(),
            count: usize::from(u16_at(header, 10).unwrap_or_default()),
            bytes: &self.data[start..end as usize * self.page_size],
            name,
        };
        page.check_count()?;
        Ok(page)
    }

    /// The `key` and `meta` buckets from the root bucket.
    fn etcd_buckets(&self) -> Result<(BucketRoot<'a>, BucketRoot<'a>), SnapshotError> {
        let (mut key, mut meta) = (None, None);
        self.for_each("root", BucketRoot::Page(self.root), &mut |k, v, is_bucket| {
            let slot = match k {
                b"key" => &mut key,
                b"meta" => &mut meta,
                _ => return Ok(()),
            };
            if is_bucket {
                let short = || bad_entry("root", k, "bucket value shorter than its header".into());
                *slot = Some(bucket_root(v).ok_or_else(short)?);
            }
            Ok(())
        })?;
        Ok((key.ok_or(SnapshotError::MissingBucket("key"))?, meta.ok_or(SnapshotError::MissingBucket("meta"))?))
    }

    /// Calls `f(key, value, is_bucket)` for every entry of a bucket in key order, checking every
    /// page on the way and that keys strictly increase.
    fn for_each(
        &self,
        bucket: &'static str,
        root: BucketRoot<'a>,
        f: &mut dyn FnMut(&'a [u8], &'a [u8], bool) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let mut walk = Walk { db: self, visited: HashSet::new(), last_key: None, f };
        match root {
            BucketRoot::Page(pgid) => {
                let page = self.page(pgid)?;
                walk.visited.insert(pgid);
                walk.page(page, 1)
            }
            BucketRoot::Inline(bytes) => {
                let name = format!("inline page of bucket `{bucket}`");
                let header = bytes.get(..PAGE_HEADER).ok_or_else(|| SnapshotError::CorruptPage {
                    page: name.clone(),
                    reason: format!("{} bytes is shorter than a page header", bytes.len()),
                })?;
                let page = Page {
                    flags: u16_at(header, 8).unwrap_or_default(),
                    count: usize::from(u16_at(header, 10).unwrap_or_default()),
                    bytes,
                    name,
                };
                page.check_count()?;
                if page.flags != LEAF_PAGE {
                    let reason = format!("an inline bucket must be one leaf page, not flags {:#x}", page.flags);
                    return Err(page.corrupt(reason));
                }
                walk.page(page, 1)
            }
        }
    }
}

/// A bucket value's root: a page, or the inline page after the header.
fn bucket_root(value: &[u8]) -> Option<BucketRoot<'_>> {
    match u64_at(value, 0)? {
        0 => value.get(BUCKET_HEADER..).map(BucketRoot::Inline),
        pgid => Some(BucketRoot::Page(pgid)),
    }
}

impl<'a> Page<'a> {
    fn corrupt(&self, reason: String) -> SnapshotError {
        SnapshotError::CorruptPage { page: self.name.clone(), reason }
    }

    fn check_count(&self) -> Result<(), SnapshotError> {
        if PAGE_HEADER + self.count * ELEMENT > self.bytes.len() {
            return Err(self.corrupt(format!("{} elements do not fit in {} bytes", self.count, self.bytes.len())));
        }
        Ok(())
    }

    /// Offset of element `i` in the page (in bounds after `check_count`).
    fn element(&self, i: usize) -> usize {
        PAGE_HEADER + i * ELEMENT
    }

    /// `len` bytes at `pos` from the element at `elem`.
    fn slice(&self, elem: usize, pos: u32, len: u32, what: &str) -> Result<&'a [u8], SnapshotError> {
        let start = elem.saturating_add(pos as usize);
        self.bytes.get(start..start.saturating_add(len as usize)).ok_or_else(|| {
            self.corrupt(format!("a {what} of {len} bytes at {start} runs past the page's {} bytes", self.bytes.len()))
        })
    }
}

/// One walk over a bucket's B+tree.
struct Walk<'d, 'a, 'f> {
    db: &'d Db<'a>,
    visited: HashSet<u64>,
    last_key: Option<&'a [u8]>,
    f: &'f mut dyn FnMut(&'a [u8], &'a [u8], bool) -> Result<(), SnapshotError>,
}

impl<'a> Walk<'_, 'a, '_> {
    fn page(&mut self, page: Page<'a>, depth: usize) -> Result<(), SnapshotError> {
        match page.flags {
            LEAF_PAGE => {
                for i in 0..page.count {
                    let e = page.element(i);
                    let field = |n: usize| u32_at(page.bytes, e + 4 * n).unwrap_or_default();
                    let (flags, pos, ksize, vsize) = (field(0), field(1), field(2), field(3));
                    let key = page.slice(e, pos, ksize, "key")?;
                    let value = page.slice(e.saturating_add(ksize as usize), pos, vsize, "value")?;
                    if self.last_key.is_some_and(|last| last >= key) {
                        return Err(page.corrupt(format!("keys out of order at element {i}")));
                    }
                    self.last_key = Some(key);
                    (self.f)(key, value, flags & BUCKET_LEAF != 0)?;
                }
                Ok(())
            }
            BRANCH_PAGE => {
                for i in 0..page.count {
                    let pgid = u64_at(page.bytes, page.element(i) + 8).unwrap_or_default();
                    let child = self.db.page(pgid)?;
                    if depth >= MAX_DEPTH {
                        return Err(SnapshotError::TooDeep { pgid });
                    }
                    if !self.visited.insert(pgid) {
                        return Err(SnapshotError::Cycle { pgid });
                    }
                    self.page(child, depth + 1)?;
                }
                Ok(())
            }
            flags => Err(page.corrupt(format!("flags {flags:#x} where a branch or leaf page was expected"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// etcd's data in bbolt (server/mvcc: revision.go, kvstore.go).

/// An entry's revision in the `key` bucket: 8-byte big-endian main revision, `_`, 8-byte
/// big-endian sub revision, then `t` for a deletion (tombstone).
#[derive(Clone, Copy)]
struct Rev {
    main: i64,
    sub: i64,
    tombstone: bool,
}

fn parse_rev(k: &[u8]) -> Option<Rev> {
    if !matches!(k.len(), 17 | 18) || k[8] != b'_' || (k.len() == 18 && k[17] != b't') {
        return None;
    }
    Some(Rev {
        main: i64::from_be_bytes(k[..8].try_into().ok()?),
        sub: i64::from_be_bytes(k[9..17].try_into().ok()?),
        tombstone: k.len() == 18,
    })
}

fn key_entry_rev(k: &[u8], is_bucket: bool) -> Result<Rev, SnapshotError> {
    if is_bucket {
        return Err(bad_entry("key", k, "a nested bucket where a revision was expected".into()));
    }
    let reason = "not a revision (8-byte main, '_', 8-byte sub, optional 't')";
    parse_rev(k).ok_or_else(|| bad_entry("key", k, reason.into()))
}

/// `finishedCompactRev` (17-byte revision) and `consistent_index` (8-byte big-endian) from the
/// `meta` bucket, 0 where absent.
fn read_meta_bucket<'a>(db: &Db<'a>, meta: BucketRoot<'a>) -> Result<(i64, u64), SnapshotError> {
    let (mut compact_revision, mut consistent_index) = (0, 0);
    db.for_each("meta", meta, &mut |k, v, is_bucket| {
        match k {
            b"finishedCompactRev" if !is_bucket => match parse_rev(v) {
                Some(rev) if !rev.tombstone => compact_revision = rev.main,
                _ => return Err(bad_entry("meta", k, format!("value {} is not a revision", hex(v)))),
            },
            b"consistent_index" if !is_bucket => {
                let length = |_| bad_entry("meta", k, format!("{} bytes, not 8", v.len()));
                let bytes: [u8; 8] = v.try_into().map_err(length)?;
                consistent_index = u64::from_be_bytes(bytes);
            }
            b"finishedCompactRev" | b"consistent_index" => return Err(bad_entry("meta", k, "a nested bucket".into())),
            _ => {}
        }
        Ok(())
    })?;
    Ok((compact_revision, consistent_index))
}

fn bad_entry(bucket: &'static str, key: &[u8], reason: String) -> SnapshotError {
    let shown = &key[..key.len().min(64)];
    let key = if shown.len() < key.len() { format!("{}...", hex(shown)) } else { hex(shown) };
    SnapshotError::BadEntry { bucket, key, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page size of the databases built here (not 4096, as the reader must not assume it).
    const PS: usize = 1024;

    fn rev(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
        let mut k = main.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend(sub.to_be_bytes());
        if tombstone {
            k.push(b't');
        }
        k
    }

    fn kv(key: &str, value: &[u8], mod_revision: i64) -> Vec<u8> {
        KeyValue { key: key.into(), value: value.to_vec(), mod_revision, create_revision: 2, version: 1, lease: 0 }
            .encode_to_vec()
    }

    fn tombstone(key: &str) -> Vec<u8> {
        KeyValue { key: key.into(), ..Default::default() }.encode_to_vec()
    }

    /// A page: header, 16-byte elements, data; padded to whole pages with the overflow count set,
    /// unless it is an inline bucket's page.
    fn page(id: u64, flags: u16, count: usize, elements: Vec<u8>, data: Vec<u8>, inline: bool) -> Vec<u8> {
        let mut p = id.to_le_bytes().to_vec();
        p.extend(flags.to_le_bytes());
        p.extend((count as u16).to_le_bytes());
        p.extend(0u32.to_le_bytes());
        p.extend(elements);
        p.extend(data);
        if !inline {
            let pages = p.len().div_ceil(PS);
            p[12..16].copy_from_slice(&(pages as u32 - 1).to_le_bytes());
            p.resize(pages * PS, 0);
        }
        p
    }

    fn leaf(id: u64, entries: &[(u32, &[u8], &[u8])], inline: bool) -> Vec<u8> {
        let (mut elements, mut data) = (Vec::new(), Vec::new());
        for (i, (flags, k, v)) in entries.iter().enumerate() {
            let pos = (entries.len() - i) * ELEMENT + data.len();
            for field in [*flags, pos as u32, k.len() as u32, v.len() as u32] {
                elements.extend(field.to_le_bytes());
            }
            data.extend(*k);
            data.extend(*v);
        }
        page(id, LEAF_PAGE, entries.len(), elements, data, inline)
    }

    fn branch(id: u64, children: &[(&[u8], u64)]) -> Vec<u8> {
        let (mut elements, mut data) = (Vec::new(), Vec::new());
        for (i, (k, pgid)) in children.iter().enumerate() {
            let pos = (children.len() - i) * ELEMENT + data.len();
            elements.extend((pos as u32).to_le_bytes());
            elements.extend((k.len() as u32).to_le_bytes());
            elements.extend(pgid.to_le_bytes());
            data.extend(*k);
        }
        page(id, BRANCH_PAGE, children.len(), elements, data, false)
    }

    fn bucket(root: u64) -> Vec<u8> {
        let mut v = root.to_le_bytes().to_vec();
        v.extend(0u64.to_le_bytes());
        v
    }

    fn inline_bucket(entries: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
        let mut v = bucket(0);
        v.extend(leaf(0, entries, true));
        v
    }

    fn meta_page(id: u64, txid: u64, root: u64, pages: u64) -> Vec<u8> {
        let mut m = Vec::new();
        for field in [MAGIC, VERSION, PS as u32, 0] {
            m.extend(field.to_le_bytes());
        }
        for field in [root, 0, 2, pages, txid] {
            m.extend(field.to_le_bytes());
        }
        m.extend(fnv1a(&m).to_le_bytes());
        page(id, 0x04, 0, m, Vec::new(), false)
    }

    /// A database whose page 3 is the root bucket's leaf, then `pages` from page 4 on.
    fn db(root_entries: &[(u32, &[u8], &[u8])], pages: Vec<Vec<u8>>) -> Vec<u8> {
        let rest: Vec<u8> = pages.concat();
        let count = 4 + (rest.len() / PS) as u64;
        let mut bytes = meta_page(0, 4, 3, count);
        bytes.extend(meta_page(1, 5, 3, count));
        bytes.extend(page(2, 0x10, 0, Vec::new(), Vec::new(), false));
        bytes.extend(leaf(3, root_entries, false));
        bytes.extend(rest);
        bytes
    }

    fn meta_bucket() -> Vec<u8> {
        inline_bucket(&[
            (0, b"consistent_index", &42u64.to_be_bytes()),
            (0, b"finishedCompactRev", &rev(4, 0, false)),
            (0, b"scheduledCompactRev", &rev(4, 0, false)),
        ])
    }

    /// The `key` bucket's entries of the sample: put a, b; compaction at 4 (removed a@2); delete
    /// b at 5; a big c at 6 (overflow pages); a overwritten at 7.
    fn sample_entries() -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (rev(3, 0, false), kv("b", b"2", 3)),
            (rev(4, 0, false), kv("a", b"4", 4)),
            (rev(5, 0, true), tombstone("b")),
            (rev(6, 0, false), kv("c", &[7; 2500], 6)),
            (rev(7, 0, false), kv("a", b"7", 7)),
        ]
    }

    /// Pages: 4 the `key` bucket's branch, 5 and 6 (+ overflow 7, 8) its leaves.
    fn sample_db() -> Vec<u8> {
        let e = sample_entries();
        let entry = |i: usize| (0, e[i].0.as_slice(), e[i].1.as_slice());
        let meta = meta_bucket();
        let lease = inline_bucket(&[]);
        db(
            &[(BUCKET_LEAF, b"key", &bucket(4)), (BUCKET_LEAF, b"lease", &lease), (BUCKET_LEAF, b"meta", &meta)],
            vec![
                branch(4, &[(&e[0].0, 5), (&e[3].0, 6)]),
                leaf(5, &[entry(0), entry(1), entry(2)], false),
                leaf(6, &[entry(3), entry(4)], false),
            ],
        )
    }

    /// Offset of branch page 4's second child pgid in the sample.
    const SECOND_CHILD: usize = 4 * PS + PAGE_HEADER + ELEMENT + 8;

    fn with_trailer(db: &[u8]) -> Vec<u8> {
        let mut bytes = db.to_vec();
        bytes.extend(Sha256::digest(db));
        bytes
    }

    #[test]
    fn sample_summary_follows_etcds_rules() {
        let db = sample_db();
        assert_eq!(db.len(), 9 * PS);
        let summary = summarize(&db).unwrap();
        // HashKV at 7 after a compaction at 4: a@4 is superseded by a@7 and b is deleted, so only
        // the entries after the compaction are hashed.
        let mut hash = crc32c::crc32c(b"key");
        for (k, v) in &sample_entries()[2..] {
            hash = crc32c::crc32c_append(crc32c::crc32c_append(hash, k), v);
        }
        let expected = SnapshotSummary {
            size_bytes: db.len() as u64,
            checksum: Checksum::Absent,
            page_size: PS as u32,
            revision: 7,
            compact_revision: 4,
            consistent_index: 42,
            keys: 2,
            revisions: 5,
            hash,
        };
        assert_eq!(summary, expected);

        let bytes = with_trailer(&db);
        let size_bytes = bytes.len() as u64;
        let verified = SnapshotSummary { size_bytes, checksum: Checksum::Sha256Verified, ..expected };
        assert_eq!(summarize(&bytes).unwrap(), verified);
    }

    #[test]
    fn compacted_entries_are_hashed_when_no_key_is_live() {
        // put x at 2, x at 3, compaction at 3, delete x at 4: no key is live, so etcd's keep set is
        // empty and x@3 (compacted but kept) is hashed too.
        let entries = [(rev(3, 0, false), kv("x", b"3", 3)), (rev(4, 0, true), tombstone("x"))];
        let leaf_entries: Vec<_> = entries.iter().map(|(k, v)| (0, k.as_slice(), v.as_slice())).collect();
        let key = inline_bucket(&leaf_entries);
        let meta = inline_bucket(&[(0, b"finishedCompactRev", &rev(3, 0, false))]);
        let summary = summarize(&db(&[(BUCKET_LEAF, b"key", &key), (BUCKET_LEAF, b"meta", &meta)], vec![])).unwrap();
        let mut hash = crc32c::crc32c(b"key");
        for (k, v) in &entries {
            hash = crc32c::crc32c_append(crc32c::crc32c_append(hash, k), v);
        }
        assert_eq!((summary.revision, summary.compact_revision, summary.keys, summary.revisions), (4, 3, 0, 2));
        assert_eq!(summary.consistent_index, 0);
        assert_eq!(summary.hash, hash);
    }

    #[test]
    fn empty_store_is_at_revision_1() {
        let empty = inline_bucket(&[]);
        let summary = summarize(&db(&[(BUCKET_LEAF, b"key", &empty), (BUCKET_LEAF, b"meta", &empty)], vec![])).unwrap();
        assert_eq!((summary.revision, summary.keys, summary.revisions), (1, 0, 0));
        assert_eq!(summary.hash, crc32c::crc32c(b"key"));
    }

    #[test]
    fn one_valid_meta_page_is_enough() {
        let expected = summarize(&sample_db()).unwrap();
        for meta in [0, 1] {
            let mut db = sample_db();
            db[meta * PS + PAGE_HEADER + 48] ^= 1; // txid, under the checksum
            assert_eq!(summarize(&db).unwrap(), expected);
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |bytes: &[u8]| summarize(bytes).unwrap_err().to_string();
        assert_eq!(err(&[0; 100]), "100 bytes is too small to be an etcd snapshot");
        assert!(err(&[0; 4096]).starts_with("not a bbolt database: magic 0x00000000"), "{}", err(&[0; 4096]));

        let mut bad = with_trailer(&sample_db());
        bad[5 * PS] ^= 0xff;
        assert!(err(&bad).starts_with("sha256 mismatch: the snapshot's trailer says "), "{}", err(&bad));

        let mut bad = sample_db();
        bad[PAGE_HEADER + 4] = 3;
        bad[PS + PAGE_HEADER + 4] = 3;
        assert!(err(&bad).starts_with("unsupported bbolt format version 3"), "{}", err(&bad));

        let mut bad = sample_db();
        bad[PAGE_HEADER + 48] ^= 1;
        bad[PS + PAGE_HEADER + 48] ^= 1;
        let both = "both bbolt meta pages are invalid: page 0: checksum mismatch; page 1: checksum mismatch";
        assert_eq!(err(&bad), both);

        let sample = sample_db();
        let cut = err(&sample[..6 * PS]);
        assert!(cut.starts_with("database truncated: its meta page counts 9 pages"), "{cut}");

        let mut padded = sample_db();
        padded.extend([0; 7]);
        assert_eq!(err(&padded), "database size 9223 is not a whole number of 1024-byte pages");

        let mut bad = sample_db();
        bad[SECOND_CHILD] = 4;
        assert_eq!(err(&bad), "B+tree cycle: page 4 is reached twice");
        bad[SECOND_CHILD] = 100;
        assert_eq!(err(&bad), "page 100 is out of range: tree pages are 2 to 8");
        bad[SECOND_CHILD] = 7;
        // An overflow page of page 6: its "header" is part of a value.
        assert_eq!(err(&bad), format!("corrupt bbolt page 7: its header says page {}", u64::from_le_bytes([7; 8])));

        let meta = meta_bucket();
        let no_key = db(&[(BUCKET_LEAF, b"meta", &meta)], vec![]);
        assert_eq!(err(&no_key), "the database has no `key` bucket: not an etcd v3 backend");

        let key = inline_bucket(&[(0, b"not-a-revision", b"")]);
        let bad = db(&[(BUCKET_LEAF, b"key", &key), (BUCKET_LEAF, b"meta", &meta)], vec![]);
        assert!(err(&bad).starts_with("undecodable entry in the `key` bucket (key 6e6f742d612d7265766973696f6e): "));

        let key = inline_bucket(&[(0, &rev(2, 0, false), &[0xff])]);
        let bad = db(&[(BUCKET_LEAF, b"key", &key), (BUCKET_LEAF, b"meta", &meta)], vec![]);
        assert!(err(&bad).contains("value is not an mvccpb.KeyValue"), "{}", err(&bad));

        let bad = db(&[(BUCKET_LEAF, b"meta", &meta), (BUCKET_LEAF, b"key", &key)], vec![]);
        assert_eq!(err(&bad), "corrupt bbolt page 3: keys out of order at element 1");
    }

    #[test]
    fn depth_is_bounded() {
        // The `key` bucket's root is a chain of 100 branch pages with one child each.
        let mut chain: Vec<Vec<u8>> = (4..104).map(|id| branch(id, &[(b"k", id + 1)])).collect();
        chain.push(leaf(104, &[], false));
        let meta = meta_bucket();
        let bad = db(&[(BUCKET_LEAF, b"key", &bucket(4)), (BUCKET_LEAF, b"meta", &meta)], chain);
        let err = summarize(&bad).unwrap_err().to_string();
        assert_eq!(err, format!("B+tree deeper than {MAX_DEPTH} levels at page {}", 4 + MAX_DEPTH));
    }

    #[test]
    fn never_panics_on_garbage_or_corruption() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let valid = sample_db();
        let trailed = with_trailer(&valid);
        for _ in 0..500 {
            let garbage: Vec<u8> = (0..rng.usize(..4 * PS)).map(|_| rng.u8(..)).collect();
            let _ = summarize(&garbage);
        }
        let values = [0, 1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 0x7f, 0xff, 0x100, 0xffff, u32::MAX as u64, u64::MAX];
        for _ in 0..20_000 {
            let mut bytes = if rng.u8(..8) == 0 { trailed.clone() } else { valid.clone() };
            match rng.u8(..4) {
                // A few random bytes anywhere (meta pages included).
                0 => (0..rng.usize(1..8)).for_each(|_| {
                    let i = rng.usize(..bytes.len());
                    bytes[i] = rng.u8(..);
                }),
                // A header or element field of a tree page set to a small or extreme number.
                1 | 2 => (0..rng.usize(1..4)).for_each(|_| {
                    let at = rng.usize(2 * PS..bytes.len() - 8) & !3;
                    let width = [2, 4, 8][rng.usize(..3)];
                    let value = values[rng.usize(..values.len())].to_le_bytes();
                    bytes[at..at + width].copy_from_slice(&value[..width]);
                }),
                // Cut anywhere.
                _ => bytes.truncate(rng.usize(..bytes.len())),
            }
            let _ = summarize(&bytes);
        }
    }
}
