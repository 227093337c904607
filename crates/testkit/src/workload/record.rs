//! What each workload client saw, recorded as it happens: its errors (and when), the header
//! revision of every response, how many reads and full re-reads it did, and for watching
//! clients every watch it opened with the events it received (and when they arrived).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::history::{Event, Header, WatchSegment};

/// The kind of call a client error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// gRPC `KV.Range`.
    Range,
    /// gRPC `KV.Put` (the writer).
    Put,
    /// gRPC `KV.DeleteRange` (the writer).
    Delete,
    /// A gRPC `Watch` stream.
    Watch,
    /// `POST /v3/kv/range` (APISIX's full reads).
    HttpRange,
    /// `POST /v3/watch` (APISIX's long watch).
    HttpWatch,
}

impl Call {
    /// Unary reads and writes; everything else is a watch.
    pub fn is_unary(self) -> bool {
        !matches!(self, Call::Watch | Call::HttpWatch)
    }

    pub fn is_write(self) -> bool {
        matches!(self, Call::Put | Call::Delete)
    }
}

/// One error a client saw.
#[derive(Clone, Debug)]
pub struct ClientError {
    pub client: String,
    pub call: Call,
    /// When the failed call was made (for a watch: when the stream was opened).
    pub started: Instant,
    /// When the client saw it fail.
    pub failed: Instant,
    pub message: String,
}

impl ClientError {
    /// Whether the call was under way at some point of `[from, to]`.
    pub fn overlaps(&self, from: Instant, to: Instant) -> bool {
        self.started <= to && self.failed >= from
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} after {:?}: {}", self.client, self.call, self.failed.duration_since(self.started), self.message)
    }
}

/// One watch a client opened: what it received, and when each event arrived.
#[derive(Clone, Debug)]
pub struct WatchLog {
    pub segment: WatchSegment,
    pub arrivals: Vec<Instant>,
}

/// Everything one client recorded.
#[derive(Clone, Debug, Default)]
pub struct ClientLog {
    pub errors: Vec<ClientError>,
    /// The header of every response, in the order they came.
    pub headers: Vec<Header>,
    /// Unary reads that succeeded.
    pub reads: u64,
    /// Full re-reads after the first (APISIX: after a compaction, or revisions going back).
    pub rereads: u64,
    pub watches: Vec<WatchLog>,
}

/// Where an open watch is: see [`Recorder::open_watch_progress`].
#[derive(Clone, Debug)]
pub struct OpenWatch {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub start_revision: i64,
    pub last_revision: Option<i64>,
}

/// A client's handle on its own [`ClientLog`]; the workload keeps another to read it.
#[derive(Clone, Debug)]
pub struct Recorder {
    name: Arc<str>,
    log: Arc<Mutex<ClientLog>>,
}

impl Recorder {
    pub fn new(name: impl Into<String>) -> Recorder {
        Recorder { name: name.into().into(), log: Arc::default() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn log(&self) -> MutexGuard<'_, ClientLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn error(&self, call: Call, started: Instant, message: impl Into<String>) {
        let error = ClientError { client: self.name.to_string(), call, started, failed: Instant::now(), message: message.into() };
        self.log().errors.push(error);
    }

    pub fn header(&self, header: Header) {
        self.log().headers.push(header);
    }

    /// A successful unary read answered with `header`.
    pub fn read(&self, header: Header) {
        let mut log = self.log();
        log.reads += 1;
        log.headers.push(header);
    }

    pub fn reread(&self) {
        self.log().rereads += 1;
    }

    /// Records a new watch of `[key, range_end)` from `start_revision`; returns its index.
    pub fn open_watch(&self, key: &[u8], range_end: &[u8], start_revision: i64) -> usize {
        let segment = WatchSegment { key: key.to_vec(), range_end: range_end.to_vec(), start_revision, events: Vec::new(), open_at_end: true };
        let mut log = self.log();
        log.watches.push(WatchLog { segment, arrivals: Vec::new() });
        log.watches.len() - 1
    }

    pub fn events(&self, watch: usize, events: impl IntoIterator<Item = Event>) {
        let now = Instant::now();
        let mut log = self.log();
        let Some(watch) = log.watches.get_mut(watch) else { return };
        for event in events {
            watch.segment.events.push(event);
            watch.arrivals.push(now);
        }
    }

    /// The watch ended before the run did (cancelled, failed).
    pub fn close_watch(&self, watch: usize) {
        if let Some(watch) = self.log().watches.get_mut(watch) {
            watch.segment.open_at_end = false;
        }
    }

    /// The client's latest watch, if it is still open: its range, start and last event.
    pub fn open_watch_progress(&self) -> Option<OpenWatch> {
        let log = self.log();
        let segment = &log.watches.last().filter(|w| w.segment.open_at_end)?.segment;
        Some(OpenWatch {
            key: segment.key.clone(),
            range_end: segment.range_end.clone(),
            start_revision: segment.start_revision,
            last_revision: segment.events.last().map(|e| e.revision),
        })
    }

    /// How many watches the client opened so far.
    pub fn watch_count(&self) -> usize {
        self.log().watches.len()
    }

    pub fn snapshot(&self) -> ClientLog {
        self.log().clone()
    }
}
