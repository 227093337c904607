//! `etcdgate backup`: take a verified snapshot now (`take`), check a snapshot file without
//! etcd (`verify`), or list the verified backups in a directory (`list`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use etcdgate_console::backup::{list_backups, take_backup, BackupOptions};
use etcdgate_console::snapshot::read_snapshot;
use etcdgate_upstream::login::Login;
use etcdgate_upstream::PoolOptions;

use crate::cluster_args::ClusterArgs;
use crate::serve::BACKUP_TIMEOUT;

#[derive(Args, Clone, Debug)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub action: BackupAction,
}

#[derive(Subcommand, Clone, Debug)]
pub enum BackupAction {
    /// Stream a snapshot from a healthy member into --dir, verify it (sha256, every page, its
    /// data's hash against the member's HashKV), keep it with a JSON record beside it, and
    /// remove the oldest beyond --keep.
    Take {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Directory of the backups.
        #[arg(long)]
        dir: PathBuf,
        /// How many verified backups to keep in --dir.
        #[arg(long, default_value_t = 24)]
        keep: usize,
    },
    /// Check a snapshot file (etcdctl's, etcdgate's, or a member's `member/snap/db`) without
    /// etcd, and say what it holds; exit status 1 if it is damaged.
    Verify {
        /// The snapshot file.
        file: PathBuf,
    },
    /// The verified backups in a directory, newest first.
    List {
        /// Directory of the backups.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Runs the action; returns the process exit status.
pub async fn run(args: BackupArgs) -> anyhow::Result<i32> {
    match args.action {
        BackupAction::Take { cluster, dir, keep } => {
            let pool = cluster.pool(PoolOptions::default())?;
            let login = cluster.login()?.map(|(name, password)| Login::new(name, password));
            let options = BackupOptions { dir, keep: keep.max(1), timeout: BACKUP_TIMEOUT };
            match take_backup(&pool, login.as_ref(), &options).await {
                Ok(record) => {
                    println!("{}", serde_json::to_string_pretty(&record)?);
                    Ok(0)
                }
                Err(error) => {
                    eprintln!("backup failed: {error}");
                    Ok(1)
                }
            }
        }
        BackupAction::Verify { file } => match tokio::task::spawn_blocking(move || read_snapshot(&file)).await? {
            Ok(summary) => {
                println!("{}", serde_json::to_string_pretty(&summary)?);
                Ok(0)
            }
            Err(error) => {
                eprintln!("damaged: {error}");
                Ok(1)
            }
        },
        BackupAction::List { dir } => {
            println!("{}", serde_json::to_string_pretty(&list_backups(&dir))?);
            Ok(0)
        }
    }
}
