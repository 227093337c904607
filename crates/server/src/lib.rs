//! etcdgate's serving side: the etcd v3 gRPC services and the HTTP/JSON gateway on one port
//! (as etcd serves them on its client port), and the [`Gateway`] router both call into.
//! It decides where a request goes — the watch cache or a member — never how a member is
//! chosen (that is `upstream`).

mod cache;
mod context;
mod drain;
mod gateway;
mod grpc;
mod grpc_watch;
mod guard;
mod http;
mod hub_watch;
mod keepalive;
mod metrics;
mod rpc;
mod resume;
mod rewind;
mod serve;
mod shared_calls;
mod tls;
mod watch;

pub use cache::{CacheConfig, Caches};
pub use context::{CallContext, MEMBER_KEY};
pub use gateway::{Gateway, ResponseStream};
pub use http::chunked;
pub use metrics::add_metrics;
pub use serve::{serve, ServerConfig};
pub use tls::{server_config as tls_server_config, ServerTlsFiles};
