//! Readiness probes: `GET /health` over a hand-written HTTP/1.0 request on a tokio TcpStream
//! (no HTTP client dependency), and a blocking TCP-connect wait for proxies.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `host:port` of an `http://host:port[/...]` URL (a bare `host:port` is accepted too).
pub(crate) fn host_port(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// One plain-HTTP GET of `path` on `client_url`; returns (status code, body).
pub(crate) async fn http_get(client_url: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let addr = host_port(client_url);
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.take(1 << 20).read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| anyhow!("malformed HTTP response from {addr}: {head:?}"))?;
        Ok::<_, anyhow::Error>((status, body.to_string()))
    };
    tokio::time::timeout(PROBE_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("GET {client_url}{path}: no answer within {PROBE_TIMEOUT:?}"))?
}

/// One health probe: `Ok` iff `GET {client_url}/health` answers 200 with `"health":"true"`.
pub async fn check_health(client_url: &str) -> anyhow::Result<()> {
    let (status, body) = http_get(client_url, "/health").await?;
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    if status == 200 && compact.contains(r#""health":"true""#) {
        Ok(())
    } else {
        bail!("GET {client_url}/health: {status} {}", body.trim())
    }
}

/// Polls `GET {client_url}/health` until it reports `"health":"true"` or `timeout` passes;
/// the error carries the last probe's failure.
pub async fn wait_ready(client_url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match check_health(client_url).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(err.context(format!("{client_url} not healthy after {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Blocking: true once a TCP connection to `addr` succeeds.
pub(crate) fn tcp_connects(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(mut addrs) = addr.to_socket_addrs() else {
        return false;
    };
    addrs.any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

/// Blocking variant of [`check_health`] for synchronous callers (proxy startup).
pub(crate) fn check_health_blocking(client_url: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let addr = host_port(client_url);
    let sock = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {addr}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, PROBE_TIMEOUT)
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))?;
    s.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        s,
        "GET /health HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(1 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    if head.starts_with("HTTP/1.")
        && head.split_whitespace().nth(1) == Some("200")
        && compact.contains(r#""health":"true""#)
    {
        Ok(())
    } else {
        bail!(
            "GET {client_url}/health: {} {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        )
    }
}
