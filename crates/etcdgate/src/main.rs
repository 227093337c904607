//! The `etcdgate` command: `serve` runs the gateway in front of an etcd cluster, `dev` starts
//! a local 3-member cluster with the gateway in front and APISIX-shaped sample data, `bench`
//! measures it against etcd and etcd's own proxies. Argument parsing and wiring only.

mod bench;
mod dev;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "etcdgate", version, about = "etcd v3 gateway: gRPC and HTTP/JSON on one port, in front of a real etcd cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the etcd v3 API in front of an etcd cluster.
    Serve(serve::ServeArgs),
    /// Start a local 3-member etcd cluster with etcdgate in front and sample APISIX data.
    Dev(dev::DevArgs),
    /// Measure etcdgate against direct etcd and etcd's own proxies (`bench failover`: member
    /// failures).
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "etcdgate=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        // Builds its own runtimes, one per worker thread.
        Command::Serve(args) => serve::run(args),
        Command::Dev(args) => tokio::runtime::Runtime::new()?.block_on(dev::run(args)),
        Command::Bench(args) => tokio::runtime::Runtime::new()?.block_on(bench::run(args)),
    }
}
