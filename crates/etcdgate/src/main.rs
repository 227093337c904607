//! The `etcdgate` command: `serve` runs the gateway in front of an etcd cluster, `dev` starts
//! a local 3-member cluster with the gateway in front and APISIX-shaped sample data, `bench`
//! measures it against etcd and etcd's own proxies. Argument parsing and wiring only.

mod backup;
mod bench;
mod cluster_args;
mod config_file;
mod dev;
mod inspect;
mod member;
mod serve;

use clap::{CommandFactory, Parser, Subcommand};

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
    /// Look at the etcd cluster: members, leader, lag, db size against quota, alarms, and
    /// whether the members hold the same data (exit status 0 fine, 1 warning, 2 critical).
    Inspect(inspect::InspectArgs),
    /// Verified backups: take one now, check a snapshot file, list a backup directory.
    Backup(backup::BackupArgs),
    /// Membership changes that cannot take the cluster down: add (as a learner), promote (once
    /// caught up), remove (only while a quorum stays).
    Member(member::MemberArgs),
    /// Measure etcdgate against direct etcd and etcd's own proxies (`bench failover`: member
    /// failures).
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let (args, config_file) = match config_file::with_settings_from_file(&Cli::command(), std::env::args_os().collect()) {
        Ok(parts) => parts,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(2)
        }
    };
    let command = match Cli::try_parse_from(args) {
        Ok(cli) => cli.command,
        Err(error) => match config_file {
            Some(file) if error.use_stderr() => {
                let _ = error.print();
                eprintln!("(the settings of --{} {} are given as flags)", config_file::FLAG, file.display());
                std::process::exit(error.exit_code())
            }
            _ => error.exit(),
        },
    };
    // A one-shot command's output is its report; the member pool's state changes are noise there.
    let default_filter = if matches!(command, Command::Inspect(_) | Command::Backup(_) | Command::Member(_)) { "error" } else { "etcdgate=info,warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()))
        .with_writer(std::io::stderr)
        .init();
    match command {
        // Builds its own runtimes, one per worker thread.
        Command::Serve(args) => serve::run(args),
        Command::Dev(args) => tokio::runtime::Runtime::new()?.block_on(dev::run(args)),
        Command::Inspect(args) => {
            let status = tokio::runtime::Runtime::new()?.block_on(inspect::run(args))?;
            std::process::exit(status)
        }
        Command::Backup(args) => {
            let status = tokio::runtime::Runtime::new()?.block_on(backup::run(args))?;
            std::process::exit(status)
        }
        Command::Member(args) => {
            let status = tokio::runtime::Runtime::new()?.block_on(member::run(args))?;
            std::process::exit(status)
        }
        Command::Bench(args) => tokio::runtime::Runtime::new()?.block_on(bench::run(args)),
    }
}
