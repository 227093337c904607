//! `etcdgate inspect`: one look at the etcd cluster (see `etcdgate_console::inspect`), printed
//! as a table and findings, or as JSON; the exit status says how bad it is (0 nothing to
//! report or only information, 1 a warning, 2 critical), as monitoring checks expect.

use std::time::Duration;

use clap::Parser;
use etcdgate_console::inspect::{inspect, InspectOptions, Severity};
use etcdgate_upstream::login::Login;
use etcdgate_upstream::PoolOptions;

use crate::cluster_args::ClusterArgs;

#[derive(Parser, Clone, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print the inspection as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not compare the members' data by HashKV (each member reads its whole database).
    #[arg(long)]
    pub no_hash: bool,
    /// Raft applied-index lead over a member beyond which it counts as lagging.
    #[arg(long, default_value_t = 1000)]
    pub lag_threshold: u64,
    /// Revisions kept since the last compaction beyond which that is a finding.
    #[arg(long, default_value_t = 1_000_000)]
    pub uncompacted_revisions: i64,
    /// Seconds each call may take (HashKV: ten times this).
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

/// Runs the inspection; returns the process exit status.
pub async fn run(args: InspectArgs) -> anyhow::Result<i32> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    let pool = args.cluster.pool(PoolOptions { connect_timeout: timeout, ..PoolOptions::default() })?;
    let login = args.cluster.login()?.map(|(name, password)| Login::new(name, password));
    let options = InspectOptions {
        call_timeout: timeout,
        hash_timeout: timeout * 10,
        check_consistency: !args.no_hash,
        lag_threshold: args.lag_threshold,
        uncompacted_revisions: args.uncompacted_revisions,
    };
    let inspection = inspect(&pool, login.as_ref(), &options).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
    } else {
        print!("{}", inspection.render_text());
    }
    Ok(match inspection.worst() {
        Some(Severity::Critical) => 2,
        Some(Severity::Warning) => 1,
        Some(Severity::Info) | None => 0,
    })
}
