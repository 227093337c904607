//! etcd's HTTP/JSON gateway as APISIX's lua-resty-etcd speaks it: JSON POSTs to `/v3/...`
//! over HTTP/1.1 with keys in base64 and 64-bit integers as strings, and the long
//! `POST /v3/watch`, whose chunked response carries one JSON message per line.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::history::Header;

/// Bytes as etcd's gateway takes and gives them: standard base64.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A base64 JSON string field back to bytes (absent field: empty, as proto3 omits it).
pub fn unb64(field: &Value) -> Result<Vec<u8>, String> {
    match field.as_str() {
        None => Ok(Vec::new()),
        Some(text) => base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("bad base64 {text:?}: {e}")),
    }
}

/// A 64-bit integer field, which the gateway writes as a string (absent: 0).
pub fn int(field: &Value) -> Result<i64, String> {
    match field {
        Value::Null => Ok(0),
        Value::String(text) => text.parse().map_err(|e| format!("bad integer {text:?}: {e}")),
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("bad integer {n}")),
        other => Err(format!("bad integer {other}")),
    }
}

/// An unsigned 64-bit integer field (member IDs), written as a string (absent: 0).
pub fn uint(field: &Value) -> Result<u64, String> {
    match field {
        Value::Null => Ok(0),
        Value::String(text) => text.parse().map_err(|e| format!("bad integer {text:?}: {e}")),
        Value::Number(n) => n.as_u64().ok_or_else(|| format!("bad integer {n}")),
        other => Err(format!("bad integer {other}")),
    }
}

/// The `header` of a response object.
pub fn header(response: &Value) -> Result<Header, String> {
    let header = &response["header"];
    Ok(Header { revision: int(&header["revision"])?, member_id: uint(&header["member_id"])? })
}

/// An HTTP/1.1 client with a keep-alive pool, as lua-resty-http keeps one per worker.
#[derive(Clone)]
pub struct JsonClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for JsonClient {
    fn default() -> JsonClient {
        JsonClient::new()
    }
}

impl JsonClient {
    pub fn new() -> JsonClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        JsonClient { client: Client::builder(TokioExecutor::new()).build(connector) }
    }

    /// `POST {base}{path}` with a JSON body; the JSON answer of a 200, an error otherwise.
    pub async fn post(&self, base: &str, path: &str, body: &Value, timeout: Duration) -> Result<Value, String> {
        let call = async {
            let response = self.send(base, path, body).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
            if !status.is_success() {
                return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim()));
            }
            serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        tokio::time::timeout(timeout, call).await.map_err(|_| format!("no answer within {timeout:?}"))?
    }

    /// `POST {base}{path}` whose answer is a stream of JSON lines (a watch).
    pub async fn stream(&self, base: &str, path: &str, body: &Value, timeout: Duration) -> Result<JsonLines, String> {
        let open = async {
            let response = self.send(base, path, body).await?;
            let status = response.status();
            if !status.is_success() {
                let bytes = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim()));
            }
            Ok(JsonLines::new(response.into_body()))
        };
        tokio::time::timeout(timeout, open).await.map_err(|_| format!("no answer within {timeout:?}"))?
    }

    async fn send(&self, base: &str, path: &str, body: &Value) -> Result<hyper::Response<Incoming>, String> {
        let request = hyper::Request::post(format!("{base}{path}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("bad request: {e}"))?;
        self.client.request(request).await.map_err(|e| format!("{e:?}"))
    }
}

/// An error and its sources, `: `-separated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The JSON messages of a streamed answer, one per line, however the chunks cut them.
pub struct JsonLines {
    body: Incoming,
    pending: Vec<u8>,
}

impl JsonLines {
    /// The messages of a streamed answer's body.
    pub fn new(body: Incoming) -> JsonLines {
        JsonLines { body, pending: Vec::new() }
    }

    /// The next message's `result`; the stream's end or an `error` line is an error.
    pub async fn next_result(&mut self) -> Result<Value, String> {
        match self.next().await? {
            None => Err("stream ended".to_string()),
            Some(message) if message.get("error").is_some() => Err(format!("error line: {message}")),
            Some(mut message) => match message.get_mut("result") {
                Some(result) => Ok(result.take()),
                None => Err(format!("line without result: {message}")),
            },
        }
    }

    /// The next message; `None` when the stream ended cleanly.
    pub async fn next(&mut self) -> Result<Option<Value>, String> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| format!("line is not JSON ({e}): {}", String::from_utf8_lossy(&line)));
            }
            match self.body.frame().await {
                None if self.pending.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                None => return Err(format!("stream ended inside a line: {}", String::from_utf8_lossy(&self.pending))),
                Some(Err(e)) => return Err(format!("stream broke: {}", error_chain(&e))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_decode_as_the_gateway_writes_them() {
        let response: Value = serde_json::from_str(
            r#"{"header":{"member_id":"12345678901234567890","revision":"42"},"kvs":[{"key":"L2FwaXNpeC8=","version":"1"}]}"#,
        )
        .unwrap();
        assert_eq!(header(&response), Ok(Header { revision: 42, member_id: 12345678901234567890 }));
        assert_eq!(unb64(&response["kvs"][0]["key"]), Ok(b"/apisix/".to_vec()));
        assert_eq!(int(&response["kvs"][0]["lease"]), Ok(0));
        assert_eq!(unb64(&response["kvs"][0]["value"]), Ok(Vec::new()));
        assert_eq!(b64(b"/apisix/"), "L2FwaXNpeC8=");
        assert!(int(&Value::String("x".into())).is_err());
    }
}
