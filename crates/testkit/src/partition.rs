//! Network partitions of one member from its peers, with iptables on loopback.
//!
//! On 127.0.0.1 ports alone cannot tell member i's outgoing peer connections from anyone
//! else's, so every member runs with its own group id ([`member_gid`], set at spawn when the
//! test runs as root) and the rules match on it. Cutting member i off takes, in `OUTPUT`:
//!
//! 1. packets of i's processes (`--gid-owner`) to another member's peer port mark their
//!    connection (`CONNMARK`, mark = i's gid);
//! 2. every packet of a connection so marked is dropped, both ways (so the peers' replies on
//!    connections i dialed are dropped too, not only i's requests);
//! 3. packets to i's peer port and from it are dropped.
//!
//! i's client port is untouched: clients (and etcdgate's probes) still reach it. Every rule
//! carries the comment `etcdgate-testkit:<pid>:p<peer port>`; [`PartitionRules::remove`] takes
//! them out again (heal, and the cluster's drop), and [`sweep_dead_partitions`] removes the rules
//! of test processes that died without doing so, so they cannot block later tests' ports.

use std::process::Command;
use std::sync::Once;

use anyhow::{bail, Context};

const TAG: &str = "etcdgate-testkit";
/// Group ids given to members: this plus the member's client port (unique across test
/// processes, see [`crate::free_port`]).
const GID_BASE: u32 = 3_000_000;

/// The group id member processes with client port `client_port` run under, or `None` when
/// this process is not root (and cannot give its children another group).
pub(crate) fn member_gid(client_port: u16) -> Option<u32> {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } == 0).then(|| GID_BASE + u32::from(client_port))
}

/// One member's peer side, as the rules need it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerSide {
    pub peer_port: u16,
    pub gid: Option<u32>,
}

/// The iptables rules that cut one member off; removed by [`PartitionRules::remove`].
#[derive(Debug)]
pub(crate) struct PartitionRules {
    /// Each rule's arguments after the chain name, in the order they were inserted.
    rules: Vec<Vec<String>>,
}

/// Cuts `member` off from `peers` (every other member). Fails with a clear message when
/// iptables is missing, not permitted, or the member has no group of its own.
pub(crate) fn partition(member: PeerSide, peers: &[PeerSide]) -> anyhow::Result<PartitionRules> {
    let Some(gid) = member.gid else {
        bail!("partition needs the members started as root (each runs with its own group id for iptables' owner match)");
    };
    let comment = format!("{TAG}:{}:p{}", std::process::id(), member.peer_port);
    let tagged = |spec: &[&str]| -> Vec<String> {
        let mut rule: Vec<String> = spec.iter().map(|s| s.to_string()).collect();
        rule.extend(["-m", "comment", "--comment", &comment].map(String::from));
        rule
    };
    let peer_port = member.peer_port.to_string();
    let gid = gid.to_string();
    // Final order in the chain (each is inserted at the top, so they are inserted backwards).
    let mut rules: Vec<Vec<String>> = peers
        .iter()
        .map(|peer| {
            let port = peer.peer_port.to_string();
            tagged(&["-p", "tcp", "--dport", &port, "-m", "owner", "--gid-owner", &gid, "-j", "CONNMARK", "--set-mark", &gid])
        })
        .collect();
    rules.push(tagged(&["-p", "tcp", "-m", "connmark", "--mark", &gid, "-j", "DROP"]));
    rules.push(tagged(&["-p", "tcp", "--dport", &peer_port, "-j", "DROP"]));
    rules.push(tagged(&["-p", "tcp", "--sport", &peer_port, "-j", "DROP"]));

    let mut inserted = PartitionRules { rules: Vec::new() };
    for rule in rules.iter().rev() {
        let mut args = vec!["-I".to_string(), "OUTPUT".into(), "1".into()];
        args.extend(rule.iter().cloned());
        if let Err(e) = iptables(&args) {
            // Take out what is in already; the first error is the one to report.
            let _ = inserted.remove();
            return Err(e.context(format!("partition the member with peer port {peer_port}")));
        }
        inserted.rules.push(rule.clone());
    }
    Ok(inserted)
}

impl PartitionRules {
    /// Deletes every rule; tries them all and reports the first failure.
    pub(crate) fn remove(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        for rule in self.rules.drain(..) {
            let mut args = vec!["-D".to_string(), "OUTPUT".into()];
            args.extend(rule);
            if let Err(e) = iptables(&args) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Once per process, [`sweep_dead_partitions`], quietly: where iptables is missing or not
/// permitted no partition can exist.
pub(crate) fn sweep_dead_partitions_once() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        if let Err(e) = sweep_dead_partitions() {
            if !format!("{e:#}").contains("not installed") {
                eprintln!("etcdgate-testkit: {e:#}");
            }
        }
    });
}

/// Deletes the partition rules (`etcdgate-testkit:<pid>:...`) of test processes that are
/// gone, so a killed test cannot leave ports blocked for later ones; returns how many it
/// deleted. [`crate::Cluster`] does this once per process when it starts its first cluster.
pub fn sweep_dead_partitions() -> anyhow::Result<usize> {
    let listing = iptables(&["-S".to_string(), "OUTPUT".into()])?;
    let mut deleted = 0;
    for line in listing.lines() {
        let Some(pid) = owner_pid(line) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let Some(rule) = line.strip_prefix("-A OUTPUT ") else { continue };
        let mut args = vec!["-D".to_string(), "OUTPUT".into()];
        // Our comments have no spaces; iptables quotes them.
        args.extend(rule.split_whitespace().map(|word| word.trim_matches('"').to_string()));
        iptables(&args).with_context(|| format!("remove a dead test's rule `{line}`"))?;
        deleted += 1;
    }
    Ok(deleted)
}

/// The test pid in a listed rule's `etcdgate-testkit:<pid>:...` comment.
fn owner_pid(listed_rule: &str) -> Option<u32> {
    let start = listed_rule.find(&format!("\"{TAG}:"))? + TAG.len() + 2;
    listed_rule[start..].split(':').next()?.parse().ok()
}

/// Runs `iptables -w <args>`; returns its stdout.
fn iptables(args: &[String]) -> anyhow::Result<String> {
    let out = Command::new("iptables").arg("-w").args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("iptables is not installed (apt-get install -y iptables; scripts/install-etcd.sh does it)")
        } else {
            anyhow::Error::new(e).context("run iptables")
        }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("ermission denied") || stderr.contains("must be root") {
            " (partitions need root, or CAP_NET_ADMIN)"
        } else {
            ""
        };
        bail!("iptables {}: {}{hint}", args.join(" "), stderr.trim());
    }
    String::from_utf8(out.stdout).context("iptables output is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_is_read_from_the_comment() {
        let line = r#"-A OUTPUT -p tcp -m tcp --dport 15001 -m comment --comment "etcdgate-testkit:4242:p15001" -j DROP"#;
        assert_eq!(owner_pid(line), Some(4242));
        assert_eq!(owner_pid(r#"-A OUTPUT -m comment --comment "other:1" -j DROP"#), None);
        assert_eq!(owner_pid("-A OUTPUT -j DROP"), None);
    }
}
