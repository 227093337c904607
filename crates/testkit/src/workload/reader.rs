//! A gRPC reader: `Range` calls one after another over the resource prefixes (serializable
//! and linearizable in turn, or linearizable only), each with a deadline; records every
//! answer's header and every error.

use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::{kv_client::KvClient, RangeRequest};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::history::Header;
use crate::workload::record::{Call, Recorder};
use crate::workload::schema::{resource_range, Rng, RESOURCES};

pub struct GrpcReader {
    pub recorder: Recorder,
    pub channel: Channel,
    pub pause: Duration,
    pub call_timeout: Duration,
    pub seed: u64,
    /// Alternate serializable and linearizable reads; linearizable only when false.
    pub serializable_reads: bool,
    pub stop: watch::Receiver<bool>,
}

impl GrpcReader {
    pub async fn run(mut self) {
        let mut kv = KvClient::new(self.channel.clone());
        let mut rng = Rng::new(self.seed);
        let mut serializable = false;
        while !*self.stop.borrow() {
            let resource = RESOURCES[rng.below(RESOURCES.len() as u64) as usize];
            let (key, range_end) = resource_range(resource);
            serializable = self.serializable_reads && !serializable;
            let mut request = tonic::Request::new(RangeRequest { key, range_end, serializable, ..Default::default() });
            request.set_timeout(self.call_timeout);
            let started = Instant::now();
            let kind = if serializable { "serializable" } else { "linearizable" };
            match tokio::time::timeout(self.call_timeout + Duration::from_secs(1), kv.range(request)).await {
                Ok(Ok(answer)) => self.recorder.read(Header::from_proto(answer.get_ref().header.as_ref())),
                Ok(Err(status)) => self.recorder.error(Call::Range, started, format!("{kind} range {resource}: {status}")),
                Err(_) => self.recorder.error(Call::Range, started, format!("{kind} range {resource}: no answer within {:?}", self.call_timeout)),
            }
            let _ = tokio::time::timeout(self.pause, self.stop.wait_for(|stop| *stop)).await;
        }
    }
}
