//! etcd's Watch gRPC service, written out instead of tonic's generated server for two
//! reasons: its responses are [`WatchReply`]s (events encoded once for all watchers of a
//! revision, see `etcdgate_cache`), and each stream's codec buffers start small and grow
//! only as far as its messages need (tonic's default of 8 KiB each way per stream was most
//! of what ten thousand idle gRPC watchers cost).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use etcdgate_cache::WatchReply;
use etcdgate_proto::etcdserverpb::WatchRequest;
use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::context::CallContext;
use crate::gateway::{Gateway, ResponseStream};

/// Initial size of a stream's encode buffer (about one event of a typical watch; a larger
/// message grows it as far as it needs) ...
const ENCODE_BUFFER_BYTES: usize = 512;
/// ... and of its decode buffer (a watch request is tens of bytes).
const DECODE_BUFFER_BYTES: usize = 64;
/// tonic's default: how much encoded output a stream writes before it yields.
const YIELD_BYTES: usize = 32 * 1024;

/// The Watch service.
#[derive(Clone)]
pub struct WatchService {
    gateway: Arc<Gateway>,
    max_decoding_bytes: usize,
}

impl WatchService {
    pub fn new(gateway: Arc<Gateway>, max_decoding_bytes: usize) -> WatchService {
        WatchService { gateway, max_decoding_bytes }
    }
}

impl NamedService for WatchService {
    const NAME: &'static str = "etcdserverpb.Watch";
}

impl<B> tower::Service<http::Request<B>> for WatchService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if request.uri().path() != "/etcdserverpb.Watch/Watch" {
                return Ok(Status::unimplemented("").into_http());
            }
            let mut grpc = Grpc::new(WatchCodec).max_decoding_message_size(this.max_decoding_bytes).max_encoding_message_size(usize::MAX);
            Ok(grpc.streaming(WatchCall(this.gateway), request).await)
        })
    }
}

struct WatchCall(Arc<Gateway>);

impl StreamingService<WatchRequest> for WatchCall {
    type Response = WatchReply;
    type ResponseStream = ResponseStream<WatchReply>;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<WatchRequest>>) -> Self::Future {
        let gateway = self.0.clone();
        Box::pin(async move {
            let ctx = CallContext::from_grpc(&request);
            gateway.watch(&ctx, crate::grpc::client_input(request.into_inner())).await.map(Response::new)
        })
    }
}

/// Protobuf both ways, with small starting buffers.
#[derive(Clone, Copy, Default)]
struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = WatchReply;
    type Decode = WatchRequest;
    type Encoder = <ProstCodec<WatchReply, WatchRequest> as Codec>::Encoder;
    type Decoder = <ProstCodec<WatchReply, WatchRequest> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<WatchReply, WatchRequest>::raw_encoder(BufferSettings::new(ENCODE_BUFFER_BYTES, YIELD_BYTES))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<WatchReply, WatchRequest>::raw_decoder(BufferSettings::new(DECODE_BUFFER_BYTES, YIELD_BYTES))
    }
}
