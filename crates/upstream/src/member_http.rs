//! Plain HTTP/1.1 GETs of members' client URLs, for what etcd serves there outside gRPC
//! (`/version`, `/health`, `/metrics`), over TLS for `https://` members when TLS to members
//! is configured.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::MemberTls;

/// A member's answer to a GET: status, content type and body.
pub type HttpAnswer = (StatusCode, Option<HeaderValue>, Bytes);

/// HTTP/1.1 clients for members' `http://` URLs, and for their `https://` ones when TLS to
/// members is configured.
pub struct MemberHttpClient {
    plain: Client<HttpConnector, Empty<Bytes>>,
    tls: Option<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>>,
}

impl MemberHttpClient {
    pub fn new(tls: Option<&MemberTls>) -> MemberHttpClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        let client = || Client::builder(TokioExecutor::new());
        let tls = tls.map(|tls| {
            let mut connector = connector.clone();
            connector.enforce_http(false);
            // The member connections' config, its ALPN (h2) left for the builder to set.
            let mut config = tls.config().clone();
            config.alpn_protocols.clear();
            let https = HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1();
            client().build(https.wrap_connector(connector))
        });
        MemberHttpClient { plain: client().build(connector), tls }
    }

    /// GETs `path` from the member at client URL `url`; `None` if it cannot be reached, the
    /// URL is unusable or the whole answer does not arrive within `timeout`.
    pub async fn get(&self, url: &str, path: &str, timeout: Duration) -> Option<HttpAnswer> {
        let uri = format!("{url}{path}").parse::<http::Uri>().ok()?;
        let attempt = async {
            let response = match (&self.tls, uri.scheme() == Some(&http::uri::Scheme::HTTPS)) {
                (Some(tls), true) => tls.get(uri).await.ok()?,
                (None, true) => return None,
                (_, false) => self.plain.get(uri).await.ok()?,
            };
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, content_type, body))
        };
        tokio::time::timeout(timeout, attempt).await.ok().flatten()
    }
}
