//! `etcdgate serve`: flags, the member pool, and the listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use etcdgate_server::{Gateway, ServerConfig};
use etcdgate_upstream::{Pool, PoolOptions};
use tokio::net::TcpListener;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// etcd client URLs to start from, comma-separated (`http://127.0.0.1:2379,...`).
    #[arg(long, env = "ETCDGATE_ENDPOINTS", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// Address to serve gRPC and HTTP/JSON on.
    #[arg(long, env = "ETCDGATE_LISTEN_ADDR", default_value = "127.0.0.1:23790")]
    pub listen_addr: SocketAddr,
    /// Largest request a client may send, as etcd's --max-request-bytes.
    #[arg(long, default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Seconds a unary HTTP request body may take to arrive.
    #[arg(long, default_value_t = 10)]
    pub http_body_timeout: u64,
}

/// Builds the gateway for `args` and serves on `listener` until `shutdown` resolves.
pub async fn serve_on(
    listener: TcpListener,
    args: &ServeArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let pool = Pool::new(&args.endpoints, PoolOptions::default()).map_err(anyhow::Error::msg)?;
    let gateway = Arc::new(Gateway::new(Arc::new(pool)));
    let config = ServerConfig {
        max_request_bytes: args.max_request_bytes,
        http_body_timeout: Duration::from_secs(args.http_body_timeout),
    };
    etcdgate_server::serve(listener, gateway, config, shutdown).await?;
    Ok(())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen_addr).await.with_context(|| format!("listening on {}", args.listen_addr))?;
    tracing::info!(listen = %args.listen_addr, endpoints = ?args.endpoints, "etcdgate serving gRPC and HTTP/JSON");
    serve_on(listener, &args, shutdown_signal()).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(term) => { term.recv().await; } None => std::future::pending().await } } => {}
    }
}
