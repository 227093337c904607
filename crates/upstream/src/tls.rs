//! TLS to members (`https://` client URLs): the client configuration built from etcdctl's
//! three files — the CA bundle that signed the members' certificates (`--cacert`; without
//! it, the system's roots), and the certificate and key etcdgate presents to members that
//! ask for one (`--cert`, `--key`, as etcd's `--client-cert-auth` requires), or any member
//! certificate taken unverified (`--insecure-skip-tls-verify`) — and the TLS handshake of a
//! member connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The files TLS to members is configured from, as etcdctl names them.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// PEM bundle of the CAs that signed the members' certificates (none: the system's).
    pub ca: Option<PathBuf>,
    /// PEM certificate (chain) etcdgate presents to members; needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Accept any certificate a member presents (etcdctl's `--insecure-skip-tls-verify`):
    /// the connection is encrypted, but not to a member known to be the right one.
    pub insecure_skip_verify: bool,
}

/// How member connections over TLS are made: the rustls configuration, shared.
#[derive(Clone, Debug)]
pub struct MemberTls {
    config: Arc<ClientConfig>,
}

impl MemberTls {
    /// Reads the files; every problem with them is an error that names the file.
    pub fn from_files(files: &TlsFiles) -> Result<MemberTls, String> {
        let provider = crypto_provider();
        let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| format!("TLS: {e}"))?;
        let builder = if files.insecure_skip_verify {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            builder.with_root_certificates(root_store(files.ca.as_deref())?)
        };
        let mut config = match (&files.cert, &files.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("TLS key {}: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?
            }
            (Some(_), None) => return Err("TLS: a client certificate (--cert) needs its key (--key)".into()),
            (None, Some(_)) => return Err("TLS: a client key (--key) needs its certificate (--cert)".into()),
        };
        // Member connections speak gRPC: HTTP/2, which etcd's TLS listener picks by ALPN.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(MemberTls { config: Arc::new(config) })
    }

    /// The rustls configuration, e.g. for an HTTP/1.1 client (which sets its own ALPN).
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The TLS handshake over a connected `stream` to `host` (a name or an IP address, which
    /// the member's certificate must hold).
    pub(crate) async fn handshake(&self, host: &str, stream: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("TLS server name {host}: {e}"))?;
        TlsConnector::from(self.config.clone()).connect(name, stream).await.map_err(|e| format!("TLS handshake with {host}: {e}"))
    }
}

/// Takes any member certificate, still checking that the member holds its key (the
/// handshake's signatures), as Go's `InsecureSkipVerify` does.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The cryptography etcdgate's TLS uses, to members and to clients: ring, which builds with
/// a C compiler alone (aws-lc needs more). rustls marks ring's provider deprecated for
/// lacking post-quantum key exchange, which etcd's Go TLS (3.4, 3.5) does not offer either.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The PEM certificates in the file at `path` (at least one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("TLS certificates {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("TLS certificates {}: no PEM certificate in it", path.display()));
    }
    Ok(certificates)
}

fn root_store(ca: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for certificate in read_certificates(path)? {
                roots.add(certificate).map_err(|e| format!("TLS CA {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("TLS: no CA given (--cacert) and no system CA certificates found".into());
            }
        }
    }
    Ok(roots)
}
