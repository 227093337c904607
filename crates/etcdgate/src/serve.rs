//! `etcdgate serve`: flags, the member pool, and the listeners.
//!
//! The gateway runs thread-per-core: each worker thread has its own single-threaded runtime,
//! its own listening socket on the same address (`SO_REUSEPORT`; the kernel spreads
//! connections over them) and its own connections to the members, so a request is served
//! start to finish on one thread without cross-thread wake-ups. Workers share the view of
//! which members are down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use etcdgate_cache::HistoryLimits;
use etcdgate_server::{tls_server_config, CacheConfig, Caches, Gateway, ServerConfig, ServerTlsFiles};
use etcdgate_upstream::{MemberTls, Pool, PoolOptions, TlsFiles};
use tokio::net::TcpListener;

#[derive(Parser, Clone, Debug)]
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
    /// Worker threads (default: one per CPU).
    #[arg(long, env = "ETCDGATE_THREADS")]
    pub threads: Option<usize>,
    /// Milliseconds between Status probes of each member.
    #[arg(long, default_value_t = 500)]
    pub probe_interval_ms: u64,
    /// Milliseconds a probe may take before its member counts as hung (an answer after half
    /// of it makes the member suspect).
    #[arg(long, default_value_t = 1000)]
    pub probe_timeout_ms: u64,
    /// Seconds between reads of the member list.
    #[arg(long, default_value_t = 30)]
    pub member_sync_interval: u64,
    /// Raft applied-index lead over a member beyond which it counts as lagging.
    #[arg(long, default_value_t = 1000)]
    pub lag_threshold: u64,
    /// Milliseconds after the start of a call beyond which a failed attempt is not tried on
    /// another member (a client's grpc-timeout bounds the whole call as well).
    #[arg(long, default_value_t = 10_000)]
    pub retry_budget_ms: u64,
    /// Key prefix whose reads and watches are served from the watch cache (repeatable or
    /// comma-separated; `""` for the whole keyspace).
    #[arg(long = "cache-prefix", env = "ETCDGATE_CACHE_PREFIX", value_delimiter = ',', default_value = "/apisix")]
    pub cache_prefixes: Vec<String>,
    /// Serve nothing from a cache: forward every read and watch.
    #[arg(long)]
    pub no_cache: bool,
    /// Events each cached prefix's history keeps at most.
    #[arg(long, default_value_t = HistoryLimits::default().max_events)]
    pub cache_history_events: usize,
    /// Bytes of events each cached prefix's history keeps at most.
    #[arg(long, default_value_t = HistoryLimits::default().max_bytes)]
    pub cache_history_bytes: usize,
    /// etcdgate's own etcd user, `name[:password]` (as etcdctl's --user), with read access to
    /// the cached prefixes: the cache follows them with it while etcd's auth is on. Clients
    /// are still served only what etcd lets their own credentials read.
    #[arg(long, env = "ETCDGATE_USER")]
    pub user: Option<String>,
    /// The password of --user (if --user has none).
    #[arg(long, env = "ETCDGATE_PASSWORD", requires = "user")]
    pub password: Option<String>,
    /// TLS on etcdgate's port (as etcd's --cert-file): PEM certificate it presents to clients.
    #[arg(long, env = "ETCDGATE_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// TLS on etcdgate's port (as etcd's --key-file): PEM private key of --cert-file.
    #[arg(long, env = "ETCDGATE_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// TLS on etcdgate's port (as etcd's --trusted-ca-file): PEM bundle of the CAs that sign
    /// client certificates; with --client-cert-auth.
    #[arg(long, env = "ETCDGATE_TRUSTED_CA_FILE", requires = "client_cert_auth")]
    pub trusted_ca_file: Option<PathBuf>,
    /// TLS on etcdgate's port (as etcd's --client-cert-auth): clients must present a
    /// certificate signed by --trusted-ca-file.
    #[arg(long, requires_all = ["trusted_ca_file", "cert_file"])]
    pub client_cert_auth: bool,
    /// TLS to members: PEM bundle of the CAs that signed their certificates (default: the
    /// system's). TLS is used for `https://` endpoints and member URLs.
    #[arg(long, env = "ETCDGATE_CACERT")]
    pub cacert: Option<PathBuf>,
    /// TLS to members: PEM certificate etcdgate presents (for etcd's --client-cert-auth).
    #[arg(long, env = "ETCDGATE_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// TLS to members: PEM private key of --cert.
    #[arg(long, env = "ETCDGATE_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// TLS to members: accept any certificate they present (encrypted, but not verified).
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
}

impl ServeArgs {
    fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let files = ServerTlsFiles { cert: cert.clone(), key: key.clone(), client_ca: self.trusted_ca_file.clone() };
                Some(tls_server_config(&files).map_err(anyhow::Error::msg)?)
            }
            _ => None,
        };
        Ok(ServerConfig { max_request_bytes: self.max_request_bytes, http_body_timeout: Duration::from_secs(self.http_body_timeout), tls })
    }

    fn cache_config(&self) -> anyhow::Result<Option<CacheConfig>> {
        let login = self.login()?;
        Ok((!self.no_cache).then(|| CacheConfig {
            prefixes: self.cache_prefixes.iter().map(|p| p.as_bytes().to_vec()).collect(),
            limits: HistoryLimits { max_events: self.cache_history_events.max(1), max_bytes: self.cache_history_bytes.max(1) },
            max_request_bytes: self.max_request_bytes,
            login,
        }))
    }

    /// User name and password from --user and --password.
    fn login(&self) -> anyhow::Result<Option<(String, String)>> {
        let Some(user) = &self.user else { return Ok(None) };
        let (name, password) = match (user.split_once(':'), &self.password) {
            (Some(_), Some(_)) => anyhow::bail!("--user has a password (name:password) and --password gives another"),
            (Some((name, password)), None) => (name, password.to_string()),
            (None, Some(password)) => (user.as_str(), password.clone()),
            (None, None) => anyhow::bail!("--user {user} needs a password: --user {user}:PASSWORD or --password"),
        };
        if name.is_empty() {
            anyhow::bail!("--user needs a user name");
        }
        Ok(Some((name.to_string(), password)))
    }

    /// The gateway of one worker.
    fn gateway(&self, pool: Arc<Pool>, caches: &Option<Arc<Caches>>) -> Arc<Gateway> {
        Arc::new(match caches {
            Some(caches) => Gateway::with_caches(pool, caches.clone()),
            None => Gateway::new(pool),
        })
    }

    /// TLS to members, if a TLS file is given or an endpoint is `https://`.
    fn member_tls(&self) -> anyhow::Result<Option<MemberTls>> {
        let files = TlsFiles {
            ca: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            insecure_skip_verify: self.insecure_skip_tls_verify,
        };
        let wanted = files.ca.is_some()
            || files.cert.is_some()
            || files.insecure_skip_verify
            || self.endpoints.iter().any(|e| e.trim().starts_with("https://"));
        if !wanted {
            return Ok(None);
        }
        MemberTls::from_files(&files).map(Some).map_err(anyhow::Error::msg)
    }

    fn pool(&self) -> anyhow::Result<Pool> {
        let options = PoolOptions {
            probe_interval: Duration::from_millis(self.probe_interval_ms.max(1)),
            probe_timeout: Duration::from_millis(self.probe_timeout_ms.max(1)),
            member_sync_interval: Duration::from_secs(self.member_sync_interval.max(1)),
            lag_threshold: self.lag_threshold,
            retry_budget: Duration::from_millis(self.retry_budget_ms),
            tls: self.member_tls()?,
            ..PoolOptions::default()
        };
        Pool::new(&self.endpoints, options).map_err(anyhow::Error::msg)
    }
}

/// Serves on `listener` in the current runtime until `shutdown` resolves (`etcdgate dev`).
pub async fn serve_on(
    listener: TcpListener,
    args: &ServeArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let pool = Arc::new(args.pool()?);
    let caches = args.cache_config()?.map(|config| Caches::start(pool.clone(), &config));
    etcdgate_server::serve(listener, args.gateway(pool, &caches), args.server_config()?, shutdown).await?;
    Ok(())
}

/// A listening socket that other workers may bind to the same address.
fn reuseport_listener(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).with_context(|| format!("listening on {addr}"))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn worker_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let first = reuseport_listener(args.listen_addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(reuseport_listener(addr)?);
    }

    let config = args.server_config()?;
    let runtime = worker_runtime()?;
    let pool = Arc::new(runtime.block_on(async { args.pool() })?);
    // The cache's feeds run on this (the first worker's) runtime.
    let cache_config = args.cache_config()?;
    let caches = runtime.block_on(async { cache_config.map(|config| Caches::start(pool.clone(), &config)) });
    let gateway = args.gateway(pool.clone(), &caches);
    let (stop, stopped) = tokio::sync::watch::channel(());
    let mut workers = Vec::new();
    for (index, listener) in listeners.drain(1..).enumerate() {
        let (pool, first, config, mut stopped) = (pool.clone(), gateway.clone(), config.clone(), stopped.clone());
        let worker = std::thread::Builder::new().name(format!("etcdgate-worker-{}", index + 1)).spawn(
            move || -> anyhow::Result<()> {
                worker_runtime()?.block_on(async move {
                    let gateway = Arc::new(first.sibling(Arc::new(pool.sibling())));
                    let listener = TcpListener::from_std(listener)?;
                    etcdgate_server::serve(listener, gateway, config, async move {
                        let _ = stopped.changed().await;
                    })
                    .await?;
                    Ok(())
                })
            },
        )?;
        workers.push(worker);
    }
    drop(stopped);

    tracing::info!(listen = %addr, tls = config.tls.is_some(), endpoints = ?args.endpoints, threads, "etcdgate serving gRPC and HTTP/JSON");
    let served = runtime.block_on(async {
        let listener = TcpListener::from_std(listeners.remove(0))?;
        etcdgate_server::serve(listener, gateway, config, async {
            shutdown_signal().await;
            let _ = stop.send(());
        })
        .await
    });
    for worker in workers {
        match worker.join() {
            Ok(result) => result?,
            Err(_) => anyhow::bail!("a worker thread panicked"),
        }
    }
    Ok(served?)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(term) => { term.recv().await; } None => std::future::pending().await } } => {}
    }
}
