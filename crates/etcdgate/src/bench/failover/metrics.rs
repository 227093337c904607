//! Prometheus `/metrics` pages of etcd members and of etcdgate: fetching one (a plain HTTP/1.1
//! GET on a fresh connection, bounded in time, so a hung process cannot hold the bench) and
//! reading a series out of it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::TokioExecutor;

/// `GET {base_url}/metrics`, the body of a 200 answer within `timeout`.
pub async fn fetch(base_url: &str, timeout: Duration) -> Result<String, String> {
    let client: LegacyClient<_, Empty<Bytes>> = LegacyClient::builder(TokioExecutor::new()).build_http();
    let uri = format!("{}/metrics", base_url.trim_end_matches('/'));
    let call = async {
        let request = hyper::Request::get(&uri).body(Empty::new()).map_err(|e| format!("GET {uri}: {e}"))?;
        let response = client.request(request).await.map_err(|e| format!("GET {uri}: {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("GET {uri}: {e}"))?.to_bytes();
        if !status.is_success() {
            return Err(format!("GET {uri}: HTTP {status}"));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(timeout, call).await.map_err(|_| format!("GET {uri}: no answer within {timeout:?}"))?
}

/// The sum of every sample of `series` in `page`: `series` is a metric name (any labels
/// match) or a name with its labels as the page writes them (`name{label="value"}`).
pub fn sum(page: &str, series: &str) -> Option<f64> {
    let mut found = None;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(series) else { continue };
        let value = match rest.chars().next() {
            Some(' ') => rest,
            Some('{') if !series.ends_with('}') => match rest.find('}') {
                Some(end) => &rest[end + 1..],
                None => continue,
            },
            _ => continue,
        };
        if let Some(v) = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_summed_by_name_or_read_by_labels() {
        let page = "# HELP etcd_debugging_mvcc_watcher_total Total number of watchers.\n\
                    etcd_debugging_mvcc_watcher_total 3\n\
                    etcd_debugging_mvcc_watcher_total_extra 100\n\
                    etcdgate_member_requests_total{member=\"http://127.0.0.1:1\"} 12\n\
                    etcdgate_member_requests_total{member=\"http://127.0.0.1:2\"} 30\n";
        assert_eq!(sum(page, "etcd_debugging_mvcc_watcher_total"), Some(3.0));
        assert_eq!(sum(page, "etcdgate_member_requests_total"), Some(42.0));
        assert_eq!(sum(page, "etcdgate_member_requests_total{member=\"http://127.0.0.1:2\"}"), Some(30.0));
        assert_eq!(sum(page, "etcdgate_member_requests_total{member=\"http://127.0.0.1:3\"}"), None);
        assert_eq!(sum(page, "etcd_server_is_leader"), None);
        assert_eq!(sum("x{a=\"b\" 1\n", "x"), None);
    }
}
