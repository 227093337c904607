//! A gRPC watcher: one `Watch` stream with one watch of a key range from a start revision,
//! recording every event. After an error (which it records) it watches again from the next
//! revision it has not seen, as clientv3 does.

use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::{watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::history::{Event, Header, MAX_MESSAGE_BYTES};
use crate::workload::record::{Call, Recorder};

const RETRY_PAUSE: Duration = Duration::from_millis(200);

pub struct GrpcWatcher {
    pub recorder: Recorder,
    pub channel: Channel,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub start_revision: i64,
    pub call_timeout: Duration,
    pub stop: watch::Receiver<bool>,
}

impl GrpcWatcher {
    pub async fn run(mut self) {
        let mut next_revision = self.start_revision;
        while !*self.stop.borrow() {
            let started = Instant::now();
            let watch = self.recorder.open_watch(&self.key, &self.range_end, next_revision);
            match self.watch(watch, &mut next_revision).await {
                Ok(()) => return,
                Err(message) => {
                    self.recorder.error(Call::Watch, started, message);
                    self.recorder.close_watch(watch);
                    let _ = tokio::time::timeout(RETRY_PAUSE, self.stop.wait_for(|stop| *stop)).await;
                }
            }
        }
    }

    /// Watches until the run stops (`Ok`) or the watch fails; keeps `next_revision` at the
    /// first revision not received yet.
    async fn watch(&mut self, watch: usize, next_revision: &mut i64) -> Result<(), String> {
        let (requests, receiver) = mpsc::channel(1);
        let create = WatchCreateRequest {
            key: self.key.clone(),
            range_end: self.range_end.clone(),
            start_revision: *next_revision,
            ..Default::default()
        };
        requests
            .send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) })
            .await
            .map_err(|_| "request stream closed".to_string())?;
        let mut client = WatchClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let open = tokio::time::timeout(self.call_timeout, client.watch(ReceiverStream::new(receiver)));
        let mut responses = match open.await {
            Err(_) => return Err(format!("open: no answer within {:?}", self.call_timeout)),
            Ok(Err(status)) => return Err(format!("open: {status}")),
            Ok(Ok(responses)) => responses.into_inner(),
        };
        let mut created = false;
        loop {
            let message: WatchResponse = tokio::select! {
                _ = self.stop.wait_for(|stop| *stop) => return Ok(()),
                message = responses.message() => match message {
                    Ok(Some(message)) => message,
                    Ok(None) => return Err("stream ended".to_string()),
                    Err(status) => return Err(status.to_string()),
                },
            };
            self.recorder.header(Header::from_proto(message.header.as_ref()));
            if message.canceled {
                return Err(format!("cancelled: {:?} (compact revision {})", message.cancel_reason, message.compact_revision));
            }
            if message.created {
                if created {
                    return Err("a second `created`".to_string());
                }
                created = true;
            } else if !created {
                return Err(format!("first message is not `created`: {message:?}"));
            }
            let events: Vec<Event> = message.events.iter().filter_map(Event::from_proto).collect();
            if let Some(last) = events.last() {
                *next_revision = last.revision + 1;
            }
            self.recorder.events(watch, events);
        }
    }
}
