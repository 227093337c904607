//! What the watcher benchmarks read about the processes under test and about this one:
//! resident memory from `/proc/<pid>/status`, gauges from a Prometheus `/metrics` page (etcd's
//! watcher counts, etcdgate's cache counters), one-off HTTP calls, and the open-file limit
//! raised so that this process and its children can hold thousands of connections.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::TokioExecutor;

/// How long a one-off HTTP call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// VmRSS of a process, bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Raises this process's RLIMIT_NOFILE (children inherit it) to `wanted` open files, the hard
/// limit too when allowed (root), else the soft limit up to the hard one; returns the new
/// soft limit.
pub fn raise_open_files_limit(wanted: u64) -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit to write to.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max.max(wanted) };
    // SAFETY: `raised` is a valid rlimit; the kernel refuses (EPERM) what is not allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(wanted);
    }
    let within_hard = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
    // SAFETY: as above; a soft limit up to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &within_hard) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit.rlim_max)
}

/// The sum of every sample of metric `name` (any labels) in a Prometheus text page, if any.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let value = match rest.chars().next() {
            Some(' ') => rest,
            Some('{') => match rest.find('}') {
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

/// `GET {base_url}/metrics`.
pub async fn metrics_page(base_url: &str) -> Result<String, String> {
    let body = call(http::Method::GET, base_url, "/metrics", Bytes::new()).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// One HTTP/1.1 request on a fresh connection; the body of a 200 answer.
pub async fn call(method: http::Method, base_url: &str, path: &str, body: Bytes) -> Result<Bytes, String> {
    let client: LegacyClient<_, Full<Bytes>> = LegacyClient::builder(TokioExecutor::new()).build_http();
    let uri = format!("{}{path}", base_url.trim_end_matches('/'));
    let request = http::Request::builder()
        .method(method.clone())
        .uri(&uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| format!("{method} {uri}: {e}"))?;
    let answer = async {
        let response = client.request(request).await.map_err(|e| format!("{method} {uri}: {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("{method} {uri}: body: {e}"))?.to_bytes();
        if status != http::StatusCode::OK {
            return Err(format!("{method} {uri}: HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)])));
        }
        Ok(body)
    };
    tokio::time::timeout(CALL_TIMEOUT, answer).await.map_err(|_| format!("{method} {uri}: no answer in {CALL_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_samples_of_one_name() {
        let page = "# HELP etcd_debugging_mvcc_watcher_total Total number of watchers.\n\
                    # TYPE etcd_debugging_mvcc_watcher_total gauge\n\
                    etcd_debugging_mvcc_watcher_total 3\n\
                    etcd_debugging_mvcc_watcher_total_extra 100\n\
                    etcdgate_cache_watchers{prefix=\"a\"} 2\n\
                    etcdgate_cache_watchers{prefix=\"b\"} 5 1700000000\n";
        assert_eq!(metric(page, "etcd_debugging_mvcc_watcher_total"), Some(3.0));
        assert_eq!(metric(page, "etcdgate_cache_watchers"), Some(7.0));
        assert_eq!(metric(page, "etcd_debugging_mvcc_watch_stream_total"), None);
    }

    #[test]
    fn rss_of_this_process_is_read() {
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
