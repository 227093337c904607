//! When the victim last got traffic from the thing in front of it, sampled while the cell runs.
//!
//! Each target is observed where it can be:
//!
//! - `direct`: the workload's own call log says which member every call went to (exact);
//! - `etcd gateway`: the gateway has no notion of requests, only of connections it splices,
//!   so the sockets connected to the victim's client port are read with `ss -tin` every
//!   [`SAMPLE_INTERVAL`]: each one's `lastsnd` (ms since it last sent data) dates the last
//!   bytes sent to the victim. Nothing else talks to the members' client ports in that cell;
//! - `etcdgate`: its `/metrics` counter `etcdgate_member_requests_total{member=...}` (client
//!   calls sent to the member, failed attempts included; its own health probes are not
//!   counted) is read every [`SAMPLE_INTERVAL`]; a sample that grew dates a call to at most
//!   that sample's time.
//!
//! A sampler yields the times (since the cell's start) at which traffic to the victim was
//! seen; the report takes the last one inside the fault window.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics;

/// Time between two samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// How long one etcdgate `/metrics` read may take.
const METRICS_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the victim's traffic is read from.
#[derive(Clone, Debug)]
pub enum Source {
    /// etcdgate's per-member call counter.
    EtcdgateCounter { gate_url: String, member_url: String },
    /// The sockets connected to the victim's client port.
    Sockets { port: u16 },
}

/// A running sampler; [`Sampler::finish`] stops it and returns what it saw.
pub struct Sampler {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<Vec<Duration>, String>>,
}

impl Sampler {
    pub fn start(source: Source, origin: Instant) -> Sampler {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(sample(source, origin, stopped));
        Sampler { stop, task }
    }

    /// Times at which traffic to the victim was seen, or why it could not be observed.
    pub async fn finish(self) -> Result<Vec<Duration>, String> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_else(|e| Err(format!("sampler failed: {e}")))
    }
}

async fn sample(source: Source, origin: Instant, mut stop: watch::Receiver<bool>) -> Result<Vec<Duration>, String> {
    let mut seen = Vec::new();
    let mut last_count = None;
    let mut sends = HashSet::new();
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return Ok(seen),
        }
        match &source {
            Source::EtcdgateCounter { gate_url, member_url } => {
                // A failed read (etcdgate busy) just leaves a longer interval.
                let Ok(page) = metrics::fetch(gate_url, METRICS_TIMEOUT).await else { continue };
                let series = format!("etcdgate_member_requests_total{{member=\"{member_url}\"}}");
                let count = metrics::sum(&page, &series).unwrap_or(0.0);
                let now = origin.elapsed();
                if last_count.is_some_and(|last| count > last) {
                    seen.push(now);
                }
                last_count = Some(count);
            }
            Source::Sockets { port } => {
                let output = tokio::process::Command::new("ss")
                    .args(["-tinH", "dst", &format!("127.0.0.1:{port}")])
                    .output()
                    .await
                    .map_err(|e| format!("running ss: {e}"))?;
                if !output.status.success() {
                    return Err(format!("ss: {}", String::from_utf8_lossy(&output.stderr).trim()));
                }
                let now = origin.elapsed();
                for (socket, since_last_send) in last_sends(&String::from_utf8_lossy(&output.stdout)) {
                    let sent = now.saturating_sub(since_last_send);
                    // The same send seen by several samples differs by rounding only.
                    if sends.insert((socket, sent.as_millis() / 10)) {
                        seen.push(sent);
                    }
                }
            }
        }
    }
}

/// From `ss -tinH` output: each socket that has sent data (its local address), and the time
/// since it last did.
fn last_sends(output: &str) -> Vec<(String, Duration)> {
    let mut found = Vec::new();
    let mut socket: Option<String> = None;
    for line in output.lines() {
        if !line.starts_with(char::is_whitespace) {
            // State, Recv-Q, Send-Q, local address, peer address.
            socket = line.split_whitespace().nth(3).map(str::to_string);
            continue;
        }
        let Some(local) = socket.take() else { continue };
        let field = |name: &str| {
            line.split_whitespace().find_map(|f| f.strip_prefix(name)?.strip_prefix(':')?.parse::<u64>().ok())
        };
        if let (Some(data_segments), Some(last_send_ms)) = (field("data_segs_out"), field("lastsnd")) {
            if data_segments > 0 {
                found.push((local, Duration::from_millis(last_send_ms)));
            }
        }
    }
    found
}

/// The last of `seen` inside `[from, to)`, as time since `from`.
pub fn last_within(seen: &[Duration], from: Duration, to: Duration) -> Option<Duration> {
    seen.iter().filter(|&&t| t >= from && t < to).max().map(|&t| t - from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_output_gives_each_sockets_last_send() {
        let output = "ESTAB 0 0 127.0.0.1:42734 127.0.0.1:2379\n\
            \t bbr wscale:10,10 rto:204 bytes_sent:27 data_segs_out:1 data_segs_in:2 lastsnd:928 lastrcv:924 lastack:924\n\
            ESTAB 0 0 127.0.0.1:42736 127.0.0.1:2379\n\
            \t bbr wscale:10,10 rto:204 bytes_sent:0 data_segs_in:2 lastsnd:5000 lastrcv:924\n\
            SYN-SENT 0 1 127.0.0.1:42738 127.0.0.1:2379\n";
        assert_eq!(last_sends(output), vec![("127.0.0.1:42734".to_string(), Duration::from_millis(928))]);
        assert_eq!(last_sends(""), vec![]);
    }

    #[test]
    fn the_last_sighting_inside_the_window_counts() {
        let s = Duration::from_secs;
        let seen = [s(1), s(12), s(14), s(31)];
        assert_eq!(last_within(&seen, s(10), s(25)), Some(s(4)));
        assert_eq!(last_within(&seen, s(15), s(25)), None);
    }
}
