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
use etcdgate_console::inspect::InspectOptions;
use etcdgate_console::backup::BackupOptions;
use etcdgate_console::web::{BackupSchedule, Console};
use etcdgate_upstream::login::Login;
use etcdgate_upstream::{Pool, PoolOptions};

use crate::cluster_args::ClusterArgs;
use tokio::net::TcpListener;

/// A snapshot that has not arrived whole after this long is given up (etcd streams a few
/// hundred MiB/s; the default quota is 2 GiB, the largest 8 GiB).
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Parser, Clone, Debug)]
pub struct ServeArgs {
    /// YAML file of settings, keyed by these flags' names (`listen-addr: 0.0.0.0:23790`,
    /// `endpoints: [http://10.0.0.1:2379, ...]`, `no-console: true`); a flag or its environment
    /// variable wins over the file.
    #[arg(long, env = crate::config_file::ENV)]
    pub config_file: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Address to serve gRPC and HTTP/JSON on.
    #[arg(long, env = "ETCDGATE_LISTEN_ADDR", default_value = "127.0.0.1:23790")]
    pub listen_addr: SocketAddr,
    /// Largest request a client may send, as etcd's --max-request-bytes.
    #[arg(long, env = "ETCDGATE_MAX_REQUEST_BYTES", default_value_t = ServerConfig::default().max_request_bytes)]
    pub max_request_bytes: usize,
    /// Seconds a unary HTTP request body may take to arrive.
    #[arg(long, env = "ETCDGATE_HTTP_BODY_TIMEOUT", default_value_t = ServerConfig::default().http_body_timeout.as_secs())]
    pub http_body_timeout: u64,
    /// Seconds a stop (SIGTERM, Ctrl-C) waits for the calls in flight to be answered, after
    /// it has stopped taking connections and asked clients to take their next calls elsewhere.
    #[arg(long, env = "ETCDGATE_SHUTDOWN_GRACE", default_value_t = ServerConfig::default().shutdown_grace.as_secs())]
    pub shutdown_grace: u64,
    /// Worker threads (default: one per CPU).
    #[arg(long, env = "ETCDGATE_THREADS")]
    pub threads: Option<usize>,
    /// Milliseconds between Status probes of each member.
    #[arg(long, env = "ETCDGATE_PROBE_INTERVAL_MS", default_value_t = 500)]
    pub probe_interval_ms: u64,
    /// Milliseconds a probe may take before its member counts as hung (an answer after half
    /// of it makes the member suspect).
    #[arg(long, env = "ETCDGATE_PROBE_TIMEOUT_MS", default_value_t = 1000)]
    pub probe_timeout_ms: u64,
    /// Seconds between reads of the member list.
    #[arg(long, env = "ETCDGATE_MEMBER_SYNC_INTERVAL", default_value_t = 30)]
    pub member_sync_interval: u64,
    /// Raft applied-index lead over a member beyond which it counts as lagging.
    #[arg(long, env = "ETCDGATE_LAG_THRESHOLD", default_value_t = 1000)]
    pub lag_threshold: u64,
    /// Milliseconds after the start of a call beyond which a failed attempt is not tried on
    /// another member (a client's grpc-timeout bounds the whole call as well).
    #[arg(long, env = "ETCDGATE_RETRY_BUDGET_MS", default_value_t = 10_000)]
    pub retry_budget_ms: u64,
    /// Key prefix whose reads and watches are served from the watch cache (repeatable or
    /// comma-separated; `""` for the whole keyspace).
    #[arg(long = "cache-prefix", env = "ETCDGATE_CACHE_PREFIX", value_delimiter = ',', default_value = "/apisix")]
    pub cache_prefixes: Vec<String>,
    /// Serve nothing from a cache: forward every read and watch.
    #[arg(long, env = "ETCDGATE_NO_CACHE")]
    pub no_cache: bool,
    /// Events each cached prefix's history keeps at most.
    #[arg(long, env = "ETCDGATE_CACHE_HISTORY_EVENTS", default_value_t = HistoryLimits::default().max_events)]
    pub cache_history_events: usize,
    /// Bytes of events each cached prefix's history keeps at most.
    #[arg(long, env = "ETCDGATE_CACHE_HISTORY_BYTES", default_value_t = HistoryLimits::default().max_bytes)]
    pub cache_history_bytes: usize,
    /// Serve no operations console (`/console`) and take no inspections.
    #[arg(long, env = "ETCDGATE_NO_CONSOLE")]
    pub no_console: bool,
    /// Seconds between the console's inspections of the cluster (each has every member hash
    /// its database: HashKV).
    #[arg(long, env = "ETCDGATE_INSPECT_INTERVAL", default_value_t = 60)]
    pub inspect_interval: u64,
    /// Take a verified snapshot of etcd into this directory every --backup-interval (kept only
    /// once its checksum, pages and data hash check out; see the README's Backups).
    #[arg(long, env = "ETCDGATE_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Seconds between backups (counted from the newest one kept).
    #[arg(long, env = "ETCDGATE_BACKUP_INTERVAL", default_value_t = 3600)]
    pub backup_interval: u64,
    /// How many verified backups to keep.
    #[arg(long, env = "ETCDGATE_BACKUP_KEEP", default_value_t = 24)]
    pub backup_keep: usize,
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
    #[arg(long, env = "ETCDGATE_CLIENT_CERT_AUTH", requires_all = ["trusted_ca_file", "cert_file"])]
    pub client_cert_auth: bool,
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
        Ok(ServerConfig {
            max_request_bytes: self.max_request_bytes,
            http_body_timeout: Duration::from_secs(self.http_body_timeout),
            tls,
            extra_routes: None,
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
        })
    }

    fn cache_config(&self, login: &Option<Arc<Login>>) -> Option<CacheConfig> {
        (!self.no_cache).then(|| CacheConfig {
            prefixes: self.cache_prefixes.iter().map(|p| p.as_bytes().to_vec()).collect(),
            limits: HistoryLimits { max_events: self.cache_history_events.max(1), max_bytes: self.cache_history_bytes.max(1) },
            max_request_bytes: self.max_request_bytes,
            login: login.clone(),
        })
    }

    /// etcdgate's own login to etcd (`--user`), shared by the cache and the console.
    fn login(&self) -> anyhow::Result<Option<Arc<Login>>> {
        Ok(self.cluster.login()?.map(|(name, password)| Arc::new(Login::new(name, password))))
    }

    /// The console on the current runtime (the pool's), inspecting every --inspect-interval and
    /// taking backups if --backup-dir is given.
    fn console(&self, pool: &Arc<Pool>, login: &Option<Arc<Login>>) -> Option<Arc<Console>> {
        if self.no_console {
            return None;
        }
        let options = InspectOptions { lag_threshold: self.lag_threshold, ..InspectOptions::default() };
        let backups = self.backup_dir.as_ref().map(|dir| BackupSchedule {
            options: BackupOptions { dir: dir.clone(), keep: self.backup_keep.max(1), timeout: BACKUP_TIMEOUT },
            interval: Duration::from_secs(self.backup_interval.max(1)),
        });
        let console = Console::new(pool.clone(), login.clone(), options, backups);
        console.start(Duration::from_secs(self.inspect_interval.max(1)));
        etcdgate_server::add_metrics(etcdgate_console::metrics::register);
        Some(console)
    }

    /// The gateway of one worker.
    fn gateway(&self, pool: Arc<Pool>, caches: &Option<Arc<Caches>>) -> Arc<Gateway> {
        Arc::new(match caches {
            Some(caches) => Gateway::with_caches(pool, caches.clone()),
            None => Gateway::new(pool),
        })
    }

    fn pool(&self) -> anyhow::Result<Pool> {
        let options = PoolOptions {
            probe_interval: Duration::from_millis(self.probe_interval_ms.max(1)),
            probe_timeout: Duration::from_millis(self.probe_timeout_ms.max(1)),
            member_sync_interval: Duration::from_secs(self.member_sync_interval.max(1)),
            lag_threshold: self.lag_threshold,
            retry_budget: Duration::from_millis(self.retry_budget_ms),
            ..PoolOptions::default()
        };
        self.cluster.pool(options)
    }
}

/// Serves on `listener` in the current runtime until `shutdown` resolves (`etcdgate dev`).
pub async fn serve_on(
    listener: TcpListener,
    args: &ServeArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let pool = Arc::new(args.pool()?);
    let login = args.login()?;
    let caches = args.cache_config(&login).map(|config| Caches::start(pool.clone(), &config));
    let console = args.console(&pool, &login);
    let config = ServerConfig { extra_routes: console.map(etcdgate_console::web::routes), ..args.server_config()? };
    etcdgate_server::serve(listener, args.gateway(pool, &caches), config, shutdown).await?;
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

    let runtime = worker_runtime()?;
    let pool = Arc::new(runtime.block_on(async { args.pool() })?);
    // The cache's feeds and the console's inspections run on this (the first worker's) runtime.
    let login = args.login()?;
    let cache_config = args.cache_config(&login);
    let caches = runtime.block_on(async { cache_config.map(|config| Caches::start(pool.clone(), &config)) });
    let console = runtime.block_on(async { args.console(&pool, &login) });
    let config = ServerConfig { extra_routes: console.map(etcdgate_console::web::routes), ..args.server_config()? };
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

    tracing::info!(listen = %addr, tls = config.tls.is_some(), endpoints = ?args.cluster.endpoints, threads, config_file = ?args.config_file, "etcdgate serving gRPC and HTTP/JSON");
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
