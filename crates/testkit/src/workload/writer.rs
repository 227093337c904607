//! The one writer: a known sequence of puts and deletes under `/apisix`, one at a time, each
//! value carrying its sequence number (see [`crate::workload::schema`]). Every outcome is
//! recorded — acknowledged with its revision, or the error — and never retried, so etcd's
//! history must hold each write at most once.
//!
//! The sequence creates keys with ids never used before, updates live ones and deletes some;
//! a key is deleted at most once and never written again, which is what lets the checker tie
//! a delete event to its write.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::{kv_client::KvClient, DeleteRangeRequest, PutRequest};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::history::{Header, Write, WriteOp, WriteOutcome};
use crate::workload::record::{Call, Recorder};
use crate::workload::schema::{key, value, Rng, RESOURCES};

/// Live keys the sequence keeps at least (creates win until there are this many).
const MIN_LIVE_KEYS: usize = 30;

/// A write and when its outcome came back.
#[derive(Clone, Debug)]
pub struct TimedWrite {
    pub write: Write,
    pub finished: Instant,
}

/// The sequence of writes a seed gives.
struct Plan {
    rng: Rng,
    live: Vec<(&'static str, u64)>,
    next_id: u64,
}

impl Plan {
    fn new(seed: u64) -> Plan {
        Plan { rng: Rng::new(seed), live: Vec::new(), next_id: 1 }
    }

    fn next(&mut self, seq: u64) -> WriteOp {
        let roll = self.rng.below(100);
        if self.live.len() < MIN_LIVE_KEYS || roll < 40 {
            let resource = RESOURCES[self.rng.below(RESOURCES.len() as u64) as usize];
            let id = self.next_id;
            self.next_id += 1;
            self.live.push((resource, id));
            WriteOp::Put { key: key(resource, id), value: value(resource, id, seq) }
        } else if roll < 85 {
            let (resource, id) = self.live[self.rng.below(self.live.len() as u64) as usize];
            WriteOp::Put { key: key(resource, id), value: value(resource, id, seq) }
        } else {
            let (resource, id) = self.live.swap_remove(self.rng.below(self.live.len() as u64) as usize);
            WriteOp::Delete { key: key(resource, id) }
        }
    }
}

pub struct Writer {
    pub recorder: Recorder,
    pub channel: Channel,
    pub pause: Duration,
    pub call_timeout: Duration,
    pub seed: u64,
    pub stop: watch::Receiver<bool>,
    pub writes: Arc<Mutex<Vec<TimedWrite>>>,
    /// The highest revision a write was acknowledged at.
    pub latest_revision: Arc<AtomicI64>,
}

impl Writer {
    pub async fn run(mut self) {
        let mut kv = KvClient::new(self.channel.clone());
        let mut plan = Plan::new(self.seed);
        let mut seq = 0;
        while !*self.stop.borrow() {
            seq += 1;
            let op = plan.next(seq);
            let started = Instant::now();
            let (call, answer) = self.apply(&mut kv, &op).await;
            let outcome = match answer {
                Ok((header, deleted)) => {
                    self.recorder.header(header);
                    self.latest_revision.fetch_max(header.revision, Ordering::Relaxed);
                    WriteOutcome::Ok { revision: header.revision, deleted }
                }
                Err(message) => {
                    self.recorder.error(call, started, format!("write {seq}: {message}"));
                    WriteOutcome::Failed(message)
                }
            };
            let write = TimedWrite { write: Write { seq, op, outcome }, finished: Instant::now() };
            self.writes.lock().unwrap_or_else(|e| e.into_inner()).push(write);
            let _ = tokio::time::timeout(self.pause, self.stop.wait_for(|stop| *stop)).await;
        }
    }

    /// Sends one write: its answer's header and deleted count, or the error.
    async fn apply(&self, kv: &mut KvClient<Channel>, op: &WriteOp) -> (Call, Result<(Header, i64), String>) {
        let deadline = self.call_timeout + Duration::from_secs(1);
        let (call, answer) = match op {
            WriteOp::Put { key, value } => {
                let mut request = tonic::Request::new(PutRequest { key: key.clone(), value: value.clone(), ..Default::default() });
                request.set_timeout(self.call_timeout);
                let answer = tokio::time::timeout(deadline, kv.put(request)).await;
                (Call::Put, answer.map(|r| r.map(|a| (Header::from_proto(a.get_ref().header.as_ref()), 0))))
            }
            WriteOp::Delete { key } => {
                let mut request = tonic::Request::new(DeleteRangeRequest { key: key.clone(), ..Default::default() });
                request.set_timeout(self.call_timeout);
                let answer = tokio::time::timeout(deadline, kv.delete_range(request)).await;
                (Call::Delete, answer.map(|r| r.map(|a| (Header::from_proto(a.get_ref().header.as_ref()), a.get_ref().deleted))))
            }
        };
        let answer = match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(status)) => Err(status.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.call_timeout)),
        };
        (call, answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_never_touches_a_deleted_key_again() {
        let mut plan = Plan::new(7);
        let mut deleted = std::collections::HashSet::new();
        let (mut puts, mut deletes) = (0, 0);
        for seq in 1..=5000 {
            match plan.next(seq) {
                WriteOp::Put { key, value } => {
                    assert!(!deleted.contains(&key), "seq {seq} writes a deleted key");
                    assert_eq!(crate::workload::schema::seq_of(&value), Some(seq));
                    puts += 1;
                }
                WriteOp::Delete { key } => {
                    assert!(deleted.insert(key), "seq {seq} deletes a key twice");
                    deletes += 1;
                }
            }
        }
        assert!(puts > 0 && deletes > 0);
    }

    #[test]
    fn a_seed_replays_the_same_plan() {
        let (mut a, mut b) = (Plan::new(3), Plan::new(3));
        for seq in 1..100 {
            assert_eq!(a.next(seq), b.next(seq));
        }
    }
}
