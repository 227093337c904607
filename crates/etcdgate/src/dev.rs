//! `etcdgate dev`: a local playground. Starts a 3-member etcd cluster from the `etcd` binary
//! on PATH (free loopback ports, data in a temp dir removed on exit), etcdgate in front of
//! it, loads a small APISIX-shaped data set through the gateway, prints how to use it, and
//! stops everything on Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser};
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, PutRequest};
use etcdgate_testkit::{Cluster, EtcdVersion};
use tokio::net::TcpListener;

use crate::serve::{serve_on, shutdown_signal, ServeArgs};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Address etcdgate listens on.
    #[arg(long, default_value = "127.0.0.1:23790")]
    pub listen_addr: SocketAddr,
    /// etcd binary to run (default: `etcd` on PATH).
    #[arg(long)]
    pub etcd: Option<PathBuf>,
    /// Number of etcd members.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
}

/// A few resources shaped the way APISIX stores them under /apisix.
fn sample_data() -> Vec<(String, String)> {
    let mut data = Vec::new();
    for i in 1..=3 {
        data.push((
            format!("/apisix/upstreams/{i}"),
            format!(r#"{{"id":"{i}","type":"roundrobin","nodes":{{"127.0.0.1:{}":1}},"create_time":1700000000,"update_time":1700000000}}"#, 8080 + i),
        ));
    }
    for i in 1..=5 {
        data.push((
            format!("/apisix/routes/{i}"),
            format!(r#"{{"id":"{i}","uri":"/api/v{i}/*","methods":["GET","POST"],"upstream_id":"{}","status":1,"priority":0}}"#, (i % 3) + 1),
        ));
    }
    data.push(("/apisix/services/1".into(), r#"{"id":"1","name":"web","upstream_id":"1"}"#.into()));
    data.push(("/apisix/consumers/jack".into(), r#"{"username":"jack","plugins":{"key-auth":{"key":"auth-one"}}}"#.into()));
    data.push(("/apisix/global_rules/1".into(), r#"{"id":"1","plugins":{"prometheus":{}}}"#.into()));
    data.push(("/apisix/plugin_metadata/log-rotate".into(), r#"{"id":"log-rotate","interval":3600}"#.into()));
    data.extend(placeholders());
    data
}

/// The `init_dir` placeholders `apisix init` writes at `/apisix/<dir>/` for the directories
/// APISIX watches (here, those of the sample data and the benchmarks).
pub fn placeholders() -> impl Iterator<Item = (String, String)> {
    ["routes", "upstreams", "services", "consumers", "ssls", "global_rules", "plugin_metadata", "protos", "stream_routes", "plugin_configs", "consumer_groups"]
        .into_iter()
        .map(|dir| (format!("/apisix/{dir}/"), "init_dir".to_string()))
}

fn etcd_on_path() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .context("no `etcd` on PATH: install it (`apt-get install etcd-server`) or pass --etcd /path/to/etcd")
}

/// Which etcd release line a binary is, from `etcd --version`.
fn version_of(etcd: &PathBuf) -> anyhow::Result<EtcdVersion> {
    let out = std::process::Command::new(etcd).arg("--version").output().with_context(|| format!("running {} --version", etcd.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(if text.contains("Version: 3.4.") { EtcdVersion::V3_4 } else { EtcdVersion::V3_5 })
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let etcd = match args.etcd {
        Some(path) => path,
        None => etcd_on_path()?,
    };
    let listener = TcpListener::bind(args.listen_addr).await.with_context(|| format!("listening on {}", args.listen_addr))?;
    eprintln!("starting {} etcd members from {} ...", args.members, etcd.display());
    let cluster = Cluster::builder(version_of(&etcd)?).binary(etcd).members(args.members).start().await?;
    let mut serve_args = ServeArgs::parse_from(["serve", "--endpoints", &cluster.endpoints()]);
    serve_args.listen_addr = args.listen_addr;
    let gateway = tokio::spawn(async move { serve_on(listener, &serve_args, shutdown_signal()).await });

    let url = format!("http://{}", args.listen_addr);
    let mut kv = KvClient::connect(url.clone()).await.context("connecting to etcdgate")?;
    for (key, value) in sample_data() {
        kv.put(PutRequest { key: key.into_bytes(), value: value.into_bytes(), ..Default::default() }).await?;
    }

    println!("etcd members:  {}", cluster.endpoints());
    println!("etcdgate:      {url}  (gRPC and HTTP/JSON)");
    println!("console:       {url}/console");
    println!();
    println!("try:");
    println!("  ETCDCTL_API=3 etcdctl --endpoints={url} get /apisix/routes --prefix");
    println!("  curl -s {url}/v3/kv/range -d '{{\"key\":\"L2FwaXNpeC9yb3V0ZXMv\",\"range_end\":\"L2FwaXNpeC9yb3V0ZXMw\"}}'");
    println!();
    println!("Ctrl-C stops etcdgate and the cluster and removes its data.");
    let result = gateway.await.context("gateway task")?;
    drop(cluster);
    eprintln!("stopped; cluster data removed");
    result
}
