//! One APISIX worker's configuration sync over HTTP/JSON, as lua-resty-etcd does it: a full
//! `range` of every resource prefix under `/apisix`, then one long `watch` of `/apisix/` from
//! the revision after the read; a full re-read when the watch is cancelled for compaction or
//! header revisions go backwards; after a watch error, a new watch from the next revision it
//! has not seen.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::history::{Event, EventKind};
use crate::workload::http::{b64, header, int, unb64, JsonClient};
use crate::workload::record::{Call, Recorder};
use crate::workload::schema::{resource_range, PREFIX, PREFIX_END, RESOURCES};

/// Pause after a failed call before the next attempt (APISIX waits too).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

pub struct ApisixWorker {
    pub recorder: Recorder,
    /// Base URLs (`http://host:port`); the worker moves to the next one after an error.
    pub endpoints: Vec<String>,
    pub first_endpoint: usize,
    pub call_timeout: Duration,
    pub stop: watch::Receiver<bool>,
}

/// How a watch ended.
enum WatchEnd {
    /// The run is over.
    Stopped,
    /// Compacted, or header revisions went backwards: read everything again.
    Reread,
    /// An error; watch again from this revision.
    Failed { next_revision: i64 },
}

impl ApisixWorker {
    pub async fn run(mut self) {
        let http = JsonClient::new();
        let mut endpoint = self.first_endpoint;
        let mut first_read = true;
        'sync: while !*self.stop.borrow() {
            let Some(read_revision) = self.full_read(&http, &mut endpoint).await else {
                self.pause().await;
                continue;
            };
            if !first_read {
                self.recorder.reread();
            }
            first_read = false;
            let mut next_revision = read_revision + 1;
            loop {
                match self.watch(&http, &mut endpoint, next_revision).await {
                    WatchEnd::Stopped => return,
                    WatchEnd::Reread => continue 'sync,
                    WatchEnd::Failed { next_revision: next } => {
                        next_revision = next;
                        self.pause().await;
                    }
                }
                if *self.stop.borrow() {
                    return;
                }
            }
        }
    }

    async fn pause(&mut self) {
        let _ = tokio::time::timeout(RETRY_PAUSE, self.stop.wait_for(|stop| *stop)).await;
    }

    fn endpoint(&self, index: usize) -> &str {
        &self.endpoints[index % self.endpoints.len()]
    }

    /// Ranges every resource prefix; returns the first answer's revision (the watch starts
    /// after it, so nothing written during the read is missed). `None` after an error.
    async fn full_read(&mut self, http: &JsonClient, endpoint: &mut usize) -> Option<i64> {
        let mut first_revision = None;
        for resource in RESOURCES {
            let (key, range_end) = resource_range(resource);
            let body = json!({ "key": b64(&key), "range_end": b64(&range_end) });
            let started = Instant::now();
            let answer = http.post(self.endpoint(*endpoint), "/v3/kv/range", &body, self.call_timeout).await;
            match answer.and_then(|answer| header(&answer)) {
                Ok(header) => {
                    self.recorder.read(header);
                    first_revision.get_or_insert(header.revision);
                }
                Err(message) => {
                    self.recorder.error(Call::HttpRange, started, format!("range {resource}: {message}"));
                    *endpoint += 1;
                    return None;
                }
            }
        }
        first_revision
    }

    async fn watch(&mut self, http: &JsonClient, endpoint: &mut usize, start_revision: i64) -> WatchEnd {
        let body = json!({ "create_request": {
            "key": b64(PREFIX.as_bytes()),
            "range_end": b64(PREFIX_END.as_bytes()),
            "start_revision": start_revision.to_string(),
        }});
        let started = Instant::now();
        let watch = self.recorder.open_watch(PREFIX.as_bytes(), PREFIX_END.as_bytes(), start_revision);
        let mut next_revision = start_revision;
        let failed = |recorder: &Recorder, next_revision, message: String| {
            recorder.error(Call::HttpWatch, started, message);
            recorder.close_watch(watch);
            WatchEnd::Failed { next_revision }
        };
        let mut lines = match http.stream(self.endpoint(*endpoint), "/v3/watch", &body, self.call_timeout).await {
            Ok(lines) => lines,
            Err(message) => {
                *endpoint += 1;
                return failed(&self.recorder, next_revision, format!("open: {message}"));
            }
        };
        let mut highest_revision = i64::MIN;
        let mut created = false;
        loop {
            let message = tokio::select! {
                _ = self.stop.wait_for(|stop| *stop) => return WatchEnd::Stopped,
                message = lines.next_result() => message,
            };
            let result = match message {
                Ok(result) => result,
                Err(message) => {
                    *endpoint += 1;
                    return failed(&self.recorder, next_revision, message);
                }
            };
            let revision = match header(&result) {
                Ok(header) => {
                    self.recorder.header(header);
                    header.revision
                }
                Err(message) => return failed(&self.recorder, next_revision, format!("{message} in {result}")),
            };
            if result["canceled"] == Value::Bool(true) {
                self.recorder.close_watch(watch);
                if int(&result["compact_revision"]).unwrap_or(0) > 0 {
                    return WatchEnd::Reread;
                }
                return failed(&self.recorder, next_revision, format!("cancelled: {result}"));
            }
            if revision < highest_revision {
                // APISIX reads everything again when the revision goes back (the checker
                // reports it as well).
                self.recorder.close_watch(watch);
                return WatchEnd::Reread;
            }
            highest_revision = revision;
            if !created {
                if result["created"] != Value::Bool(true) {
                    return failed(&self.recorder, next_revision, format!("first message is not `created`: {result}"));
                }
                created = true;
            }
            let events = match parse_events(&result) {
                Ok(events) => events,
                Err(message) => return failed(&self.recorder, next_revision, message),
            };
            if let Some(last) = events.last() {
                next_revision = last.revision + 1;
            }
            self.recorder.events(watch, events);
        }
    }
}

/// The events of a watch `result` object.
fn parse_events(result: &Value) -> Result<Vec<Event>, String> {
    let Some(events) = result.get("events") else { return Ok(Vec::new()) };
    let events = events.as_array().ok_or_else(|| format!("events is not a list: {result}"))?;
    events
        .iter()
        .map(|event| {
            let kv = &event["kv"];
            let kind = match event.get("type").and_then(Value::as_str) {
                None | Some("PUT") => EventKind::Put,
                Some("DELETE") => EventKind::Delete,
                Some(other) => return Err(format!("unknown event type {other:?}")),
            };
            Ok(Event { revision: int(&kv["mod_revision"])?, key: unb64(&kv["key"])?, kind, value: unb64(&kv["value"])? })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_from_the_gateway_json() {
        let result: Value = serde_json::from_str(
            r#"{"header":{"revision":"9"},"events":[
                {"kv":{"key":"L2FwaXNpeC9h","mod_revision":"8","value":"MQ=="}},
                {"type":"DELETE","kv":{"key":"L2FwaXNpeC9h","mod_revision":"9"}}]}"#,
        )
        .unwrap();
        let events = parse_events(&result).unwrap();
        assert_eq!(
            events,
            vec![
                Event { revision: 8, key: b"/apisix/a".to_vec(), kind: EventKind::Put, value: b"1".to_vec() },
                Event { revision: 9, key: b"/apisix/a".to_vec(), kind: EventKind::Delete, value: Vec::new() },
            ]
        );
        assert_eq!(parse_events(&serde_json::json!({"header":{}})), Ok(vec![]));
    }
}
