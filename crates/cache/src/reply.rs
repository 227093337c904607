//! What a hub watch sends its client. A [`WatchReply`] is an ordinary `WatchResponse`, or one
//! whose events are shared: the events of one revision ([`Batch`]) are encoded once — as
//! protobuf for gRPC, as etcd's gateway JSON for HTTP, with and without `prev_kv` — and every
//! watcher that gets all of them sends those bytes, instead of each copying and encoding the
//! same events again (with thousands of watchers of one prefix, that copying was most of the
//! work of a write).
//!
//! Both encodings are byte for byte what the equivalent `WatchResponse` encodes to: fields in
//! the same order, zero values left out.

use std::sync::{Arc, OnceLock};

use bytes::{Buf, BufMut};
use etcdgate_proto::etcdserverpb::{ResponseHeader, WatchResponse};
use etcdgate_proto::mvccpb::Event;
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};
use serde::ser::{Serialize, SerializeStruct, Serializer};
use serde_json::value::RawValue;

/// `WatchResponse.events`.
const EVENTS_FIELD: u32 = 11;

/// The events of one revision, as the history holds them, with their shared encodings.
#[derive(Debug)]
pub struct Batch {
    pub revision: i64,
    pub events: Vec<Event>,
    /// Encoded size of the events.
    pub(crate) bytes: usize,
    /// The events as `WatchResponse.events` fields; [without, with] `prev_kv`.
    proto: [OnceLock<Vec<u8>>; 2],
    /// Each event as JSON; [without, with] `prev_kv`.
    json: [OnceLock<Vec<Box<RawValue>>>; 2],
}

impl Batch {
    pub fn new(revision: i64, events: Vec<Event>) -> Batch {
        let bytes = events.iter().map(Message::encoded_len).sum();
        Batch { revision, events, bytes, proto: Default::default(), json: Default::default() }
    }

    /// The events as a client gets them: `prev_kv` only if it asked for it.
    fn events_for(&self, prev_kv: bool) -> impl Iterator<Item = std::borrow::Cow<'_, Event>> {
        self.events.iter().map(move |event| {
            if prev_kv || event.prev_kv.is_none() {
                std::borrow::Cow::Borrowed(event)
            } else {
                std::borrow::Cow::Owned(Event { prev_kv: None, ..event.clone() })
            }
        })
    }

    fn proto(&self, prev_kv: bool) -> &[u8] {
        self.proto[usize::from(prev_kv)].get_or_init(|| {
            let mut buf = Vec::new();
            for event in self.events_for(prev_kv) {
                prost::encoding::message::encode(EVENTS_FIELD, event.as_ref(), &mut buf);
            }
            buf
        })
    }

    fn json(&self, prev_kv: bool) -> &[Box<RawValue>] {
        self.json[usize::from(prev_kv)].get_or_init(|| {
            // An event always serializes (plain fields, no maps with non-string keys).
            self.events_for(prev_kv).filter_map(|event| serde_json::value::to_raw_value(event.as_ref()).ok()).collect()
        })
    }
}

/// A watch response whose events are whole revisions of the history, sent as they were
/// encoded once for every watcher.
#[derive(Debug, Clone)]
pub struct SharedEvents {
    pub header: Option<ResponseHeader>,
    pub watch_id: i64,
    batches: Vec<Arc<Batch>>,
    prev_kv: bool,
}

/// A response for a watch client.
#[derive(Debug)]
pub enum WatchReply {
    Message(WatchResponse),
    Shared(SharedEvents),
}

impl Default for WatchReply {
    fn default() -> Self {
        WatchReply::Message(WatchResponse::default())
    }
}

impl From<WatchResponse> for WatchReply {
    fn from(response: WatchResponse) -> Self {
        WatchReply::Message(response)
    }
}

impl WatchReply {
    /// Every event of `batches` (at least one), with `prev_kv` if asked for.
    pub(crate) fn shared(header: ResponseHeader, watch_id: i64, batches: Vec<Arc<Batch>>, prev_kv: bool) -> WatchReply {
        WatchReply::Shared(SharedEvents { header: Some(header), watch_id, batches, prev_kv })
    }

    pub fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
        match self {
            WatchReply::Message(response) => &mut response.header,
            WatchReply::Shared(shared) => &mut shared.header,
        }
    }

    pub fn watch_id(&self) -> i64 {
        match self {
            WatchReply::Message(response) => response.watch_id,
            WatchReply::Shared(shared) => shared.watch_id,
        }
    }

    pub fn canceled(&self) -> bool {
        matches!(self, WatchReply::Message(response) if response.canceled)
    }

    pub fn event_count(&self) -> usize {
        match self {
            WatchReply::Message(response) => response.events.len(),
            WatchReply::Shared(shared) => shared.batches.iter().map(|b| b.events.len()).sum(),
        }
    }

    /// As an ordinary message (the events copied).
    pub fn into_message(self) -> WatchResponse {
        match self {
            WatchReply::Message(response) => response,
            WatchReply::Shared(shared) => WatchResponse {
                header: shared.header,
                watch_id: shared.watch_id,
                events: shared.batches.iter().flat_map(|b| b.events_for(shared.prev_kv).map(|e| e.into_owned())).collect(),
                ..Default::default()
            },
        }
    }
}

/// gRPC: encoded as the `WatchResponse` it stands for (only ever encoded, never decoded).
impl Message for WatchReply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            WatchReply::Message(response) => response.encode_raw(buf),
            WatchReply::Shared(shared) => {
                if let Some(header) = &shared.header {
                    prost::encoding::message::encode(1, header, buf);
                }
                if shared.watch_id != 0 {
                    prost::encoding::int64::encode(2, &shared.watch_id, buf);
                }
                for batch in &shared.batches {
                    buf.put_slice(batch.proto(shared.prev_kv));
                }
            }
        }
    }

    fn merge_field(&mut self, tag: u32, wire_type: WireType, buf: &mut impl Buf, ctx: DecodeContext) -> Result<(), DecodeError> {
        if let WatchReply::Shared(_) = self {
            *self = WatchReply::Message(std::mem::take(self).into_message());
        }
        match self {
            WatchReply::Message(response) => response.merge_field(tag, wire_type, buf, ctx),
            WatchReply::Shared(_) => Ok(()),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            WatchReply::Message(response) => response.encoded_len(),
            WatchReply::Shared(shared) => {
                shared.header.as_ref().map_or(0, |header| prost::encoding::message::encoded_len(1, header))
                    + if shared.watch_id != 0 { prost::encoding::int64::encoded_len(2, &shared.watch_id) } else { 0 }
                    + shared.batches.iter().map(|batch| batch.proto(shared.prev_kv).len()).sum::<usize>()
            }
        }
    }

    fn clear(&mut self) {
        *self = WatchReply::default();
    }
}

/// HTTP/JSON: serialized as the `WatchResponse` it stands for, as etcd's gateway writes it.
impl Serialize for WatchReply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let shared = match self {
            WatchReply::Message(response) => return response.serialize(serializer),
            WatchReply::Shared(shared) => shared,
        };
        let fields = 1 + usize::from(shared.header.is_some()) + usize::from(shared.watch_id != 0);
        let mut message = serializer.serialize_struct("etcdserverpb.WatchResponse", fields)?;
        if let Some(header) = &shared.header {
            message.serialize_field("header", header)?;
        }
        if shared.watch_id != 0 {
            message.serialize_field("watch_id", shared.watch_id.to_string().as_str())?;
        }
        message.serialize_field("events", &JsonEvents(shared))?;
        message.end()
    }
}

struct JsonEvents<'a>(&'a SharedEvents);

impl Serialize for JsonEvents<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let SharedEvents { batches, prev_kv, .. } = self.0;
        serializer.collect_seq(batches.iter().flat_map(|batch| batch.json(*prev_kv).iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdgate_proto::mvccpb::{event::EventType, KeyValue};

    fn kv(key: &str, value: &str, revision: i64) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), mod_revision: revision, create_revision: 2, version: 3, ..Default::default() }
    }

    fn batches() -> Vec<Arc<Batch>> {
        let put = Event { kv: Some(kv("/a", "x\"y", 7)), prev_kv: Some(kv("/a", "old", 5)), ..Default::default() };
        let delete = Event { r#type: EventType::Delete as i32, kv: Some(kv("/b", "", 7)), prev_kv: None };
        let later = Event { kv: Some(kv("/c", "z", 8)), prev_kv: Some(kv("/c", "", 6)), ..Default::default() };
        vec![Arc::new(Batch::new(7, vec![put, delete])), Arc::new(Batch::new(8, vec![later]))]
    }

    #[test]
    fn shared_events_encode_as_the_message_they_stand_for() {
        let header = ResponseHeader { cluster_id: 1, member_id: 2, revision: 8, raft_term: 3 };
        for watch_id in [0, 5] {
            for prev_kv in [false, true] {
                for take in [1, 2] {
                    let shared = WatchReply::shared(header, watch_id, batches()[..take].to_vec(), prev_kv);
                    let message = WatchReply::Message(
                        WatchReply::shared(header, watch_id, batches()[..take].to_vec(), prev_kv).into_message(),
                    );
                    assert_eq!(shared.encode_to_vec(), message.encode_to_vec(), "protobuf, id {watch_id}, prev_kv {prev_kv}");
                    assert_eq!(shared.encoded_len(), message.encoded_len());
                    assert_eq!(serde_json::to_string(&shared).unwrap(), serde_json::to_string(&message).unwrap(), "JSON");
                    let events = message.into_message().events;
                    assert_eq!(events.iter().any(|e| e.prev_kv.is_some()), prev_kv);
                    assert_eq!(events.len(), if take == 1 { 2 } else { 3 });
                }
            }
        }
    }
}
