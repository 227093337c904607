//! `GET /version` and `GET /health`, which etcd serves over plain HTTP rather than gRPC:
//! answered by the first member that responds, with its status code, type and body.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use etcdgate_upstream::MemberTls;
use http::{header, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::errors::json_response;
use super::HttpState;

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

    async fn get(&self, uri: http::Uri) -> Option<http::Response<hyper::body::Incoming>> {
        match (&self.tls, uri.scheme() == Some(&http::uri::Scheme::HTTPS)) {
            (Some(tls), true) => tls.get(uri).await.ok(),
            (None, true) => None,
            (_, false) => self.plain.get(uri).await.ok(),
        }
    }
}

/// GETs `path` from the members in turn; the first answer wins.
pub async fn get_from_members(state: &HttpState, path: &str) -> Option<(StatusCode, Option<http::HeaderValue>, Bytes)> {
    for member in state.gateway.pool().members() {
        let Ok(uri) = format!("{}{}", member.url(), path).parse::<http::Uri>() else { continue };
        let attempt = async {
            let response = state.member_http.get(uri).await?;
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, content_type, body))
        };
        if let Ok(Some(answer)) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
            return Some(answer);
        }
    }
    None
}

fn passthrough((status, content_type, body): (StatusCode, Option<http::HeaderValue>, Bytes)) -> Response {
    let mut response = (status, Body::from(body)).into_response();
    if let Some(content_type) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    response
}

pub async fn version(State(state): State<std::sync::Arc<HttpState>>) -> Response {
    match get_from_members(&state, "/version").await {
        Some(answer) => {
            if let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(&answer.2) {
                if let Some(server) = parsed.get("etcdserver").and_then(|v| v.as_str()) {
                    state.errors.set_cluster_version(server);
                }
            }
            passthrough(answer)
        }
        None => state.errors.response(&tonic::Status::unavailable("etcdgate: no etcd member reachable")),
    }
}

pub async fn health(State(state): State<std::sync::Arc<HttpState>>) -> Response {
    match get_from_members(&state, "/health").await {
        Some(answer) => passthrough(answer),
        None => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"health":"false","reason":"etcdgate: no etcd member reachable"}"#.to_vec(),
        ),
    }
}
