//! The flags that say how to reach the etcd cluster (endpoints, TLS to members, etcdgate's
//! own etcd user), shared by `serve`, `inspect` and `backup`.

use std::path::PathBuf;

use clap::Args;
use etcdgate_upstream::{MemberTls, Pool, PoolOptions, TlsFiles};

#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// etcd client URLs to start from, comma-separated (`http://127.0.0.1:2379,...`).
    #[arg(long, env = "ETCDGATE_ENDPOINTS", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// etcdgate's own etcd user, `name[:password]` (as etcdctl's --user), for its own calls
    /// while etcd's auth is on: `serve` follows the cached prefixes with it (it needs read
    /// access to them; clients are still served only what etcd lets their own credentials
    /// read); inspections and backups need the root role.
    #[arg(long, env = "ETCDGATE_USER", hide_env_values = true)]
    pub user: Option<String>,
    /// The password of --user (if --user has none).
    #[arg(long, env = "ETCDGATE_PASSWORD", hide_env_values = true, requires = "user")]
    pub password: Option<String>,
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
    #[arg(long, env = "ETCDGATE_INSECURE_SKIP_TLS_VERIFY")]
    pub insecure_skip_tls_verify: bool,
}

impl ClusterArgs {
    /// User name and password from --user and --password.
    pub fn login(&self) -> anyhow::Result<Option<(String, String)>> {
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

    /// The member pool, with these endpoints and TLS settings on top of `options`; must be
    /// called on a tokio runtime (its prober starts there).
    pub fn pool(&self, options: PoolOptions) -> anyhow::Result<Pool> {
        let options = PoolOptions { tls: self.member_tls()?, ..options };
        Pool::new(&self.endpoints, options).map_err(anyhow::Error::msg)
    }
}
