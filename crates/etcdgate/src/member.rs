//! `etcdgate member`: membership changes that cannot take the cluster down (see
//! `etcdgate_console::membership`): `add` (as a learner, printing the new member's etcd
//! flags), `promote` (once caught up), `remove` (only while a quorum stays).

use std::time::Duration;

use clap::{Args, Subcommand};
use etcdgate_console::membership::{add_learner, promote, remove};
use etcdgate_console::Credentials;
use etcdgate_upstream::login::Login;
use etcdgate_upstream::PoolOptions;

use crate::cluster_args::ClusterArgs;

#[derive(Args, Clone, Debug)]
pub struct MemberArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub action: MemberAction,
}

#[derive(Subcommand, Clone, Debug)]
pub enum MemberAction {
    /// Add a member as a learner (it counts for no quorum while it catches up) and print the
    /// flags to start it with; promote it once it has caught up.
    Add {
        /// The new member's name (its etcd --name).
        name: String,
        /// Its peer URLs, comma-separated (its --initial-advertise-peer-urls).
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
    /// Promote a learner to voter once its applied index is within --lag-threshold of the
    /// leader's, waiting up to --wait seconds for that.
    Promote {
        /// The learner's ID (hex, as `etcdctl member list` prints it) or name.
        member: String,
        #[arg(long, default_value_t = 1000)]
        lag_threshold: u64,
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Remove a member, unless the voting members left that answer would not make a quorum;
    /// the leader hands its leadership to a caught-up follower first.
    Remove {
        /// The member's ID (hex) or name.
        member: String,
        /// Remove it even if the cluster would lose its quorum.
        #[arg(long)]
        force: bool,
    },
}

/// Runs the change; returns the process exit status.
pub async fn run(args: MemberArgs) -> anyhow::Result<i32> {
    let pool = args.cluster.pool(PoolOptions::default())?;
    let login = args.cluster.login()?.map(|(name, password)| Login::new(name, password));
    let login = login.as_ref();
    let change_as = Credentials::Gateway(login);
    let done = match args.action {
        MemberAction::Add { name, peer_urls } => add_learner(&pool, login, change_as, &name, &peer_urls).await.map(|added| {
            format!(
                "added {} ({}) as a learner; start it with:\n  etcd {}\nthen: etcdgate member promote {}",
                added.name,
                added.id,
                added.etcd_flags.join(" \\\n    "),
                added.id
            )
        }),
        MemberAction::Promote { member, lag_threshold, wait } => {
            promote(&pool, login, change_as, &member, lag_threshold, Duration::from_secs(wait)).await.map(|done| done.steps.join("\n"))
        }
        MemberAction::Remove { member, force } => remove(&pool, login, change_as, &member, force).await.map(|done| done.steps.join("\n")),
    };
    match done {
        Ok(text) => {
            println!("{text}");
            Ok(0)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(1)
        }
    }
}
