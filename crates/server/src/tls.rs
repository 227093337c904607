//! TLS on etcdgate's own port, configured as etcd's client port is (`--cert-file`,
//! `--key-file`, and with `--client-cert-auth` the `--trusted-ca-file` that must have signed
//! every client's certificate). ALPN offers HTTP/2 (gRPC, which clients require over TLS)
//! and HTTP/1.1 (the JSON gateway).

use std::path::PathBuf;
use std::sync::Arc;

use etcdgate_upstream::{crypto_provider, read_certificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The files TLS on etcdgate's port is configured from, named as etcd names them.
#[derive(Clone, Debug, Default)]
pub struct ServerTlsFiles {
    /// PEM certificate (chain) etcdgate presents to clients.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// With it, clients must present a certificate signed by one of these CAs (etcd's
    /// `--client-cert-auth` with `--trusted-ca-file`).
    pub client_ca: Option<PathBuf>,
}

/// Reads the files into a rustls server configuration; every problem names its file.
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(ca)? {
                roots.add(certificate).map_err(|e| format!("TLS client CA {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("TLS client CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = read_certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| format!("TLS key {}: {e}", files.key.display()))?;
    let mut config = builder.with_single_cert(chain, key).map_err(|e| format!("TLS certificate {}: {e}", files.cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
