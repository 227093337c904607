//! The watch cache: for each cached prefix, the current key-values at a revision ([`Store`])
//! and the recent events with their previous values ([`History`]), kept in a [`Hub`] that one
//! upstream watch feeds and that any number of client reads and watches are served from.
//!
//! This crate holds no connections: whoever follows etcd (the server's cache feed) calls
//! [`Hub::reset`], [`Hub::apply`] and [`Hub::progress`]; readers call [`Hub::range`] and
//! follow events with a [`Watcher`], which reads the history at its own pace (a slow client
//! holds a position, not a buffer) and is canceled with `compact_revision` only if it falls
//! out of the history.

mod history;
mod hub;
mod keys;
mod reply;
mod store;
mod watcher;

pub use history::{History, HistoryLimits};
pub use hub::{Hub, HubStats};
pub use keys::KeyRange;
pub use reply::{Batch, SharedEvents, WatchReply};
pub use store::Store;
pub use watcher::Watcher;
