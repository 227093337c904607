//! `GET /version` and `GET /health`, which etcd serves over plain HTTP rather than gRPC:
//! answered by the first member that responds, with its status code, type and body.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use etcdgate_upstream::member_http::HttpAnswer;
use http::{header, StatusCode};

use super::errors::json_response;
use super::HttpState;

/// GETs `path` from the members in turn; the first answer wins.
pub async fn get_from_members(state: &HttpState, path: &str) -> Option<HttpAnswer> {
    for member in state.gateway.pool().members() {
        if let Some(answer) = state.member_http.get(member.url(), path, Duration::from_secs(5)).await {
            return Some(answer);
        }
    }
    None
}

fn passthrough((status, content_type, body): HttpAnswer) -> Response {
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
