//! Free TCP ports on 127.0.0.1 that stay free long enough for a child process to bind them.
//!
//! Two hazards with the usual "bind :0, read the port, close" trick:
//! - the port comes from the kernel's ephemeral range, so an outgoing connection (etcd peers
//!   dial each other) can grab it before the child binds it;
//! - nextest runs every test in its own process, so a per-process "already handed out" set
//!   does not stop two tests from picking the same port.
//!
//! So ports are drawn at random from *below* the ephemeral range, and each one is reserved
//! across processes by an open-file-description lock (`F_OFD_SETLK`) on byte `port` of the
//! one file `$TMPDIR/etcdgate-testkit-ports.lock`, held until this process exits (the kernel
//! drops it then, even on SIGKILL). A port is handed out at most once per process. If the lock
//! file is unusable, or the ephemeral range starts too low, this falls back to in-process
//! uniqueness only (plus bind-:0 in the second case).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const RANGE_START: u16 = 15000;

struct Ports {
    /// Every port handed out by this process.
    given: HashSet<u16>,
    rng: u64,
    /// Kept open for the process lifetime: closing it would drop every reservation.
    lock_file: Option<File>,
    range_end: u16,
}

static PORTS: Mutex<Option<Ports>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that is free right now, not handed out before by this process,
/// and (best effort) not handed out to another process using this crate at the same time.
pub fn free_port() -> u16 {
    let mut guard = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let ports = guard.get_or_insert_with(Ports::new);
    if ports.range_end > RANGE_START + 1000 {
        for _ in 0..2000 {
            let span = u64::from(ports.range_end - RANGE_START);
            let port = RANGE_START + (ports.next_rand() % span) as u16;
            if ports.given.contains(&port) || !ports.try_reserve(port) {
                continue;
            }
            // Reserved now (a port that is busy stays reserved by us: no harm).
            ports.given.insert(port);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    // Fallback: the kernel's choice.
    for _ in 0..1000 {
        let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        if ports.given.insert(port) {
            return port;
        }
    }
    panic!("free_port: no free port found");
}

impl Ports {
    fn new() -> Ports {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        let range_end = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|x| x.parse::<u16>().ok())
            })
            .unwrap_or(32768);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(std::env::temp_dir().join("etcdgate-testkit-ports.lock"))
            .ok();
        Ports {
            given: HashSet::new(),
            rng: seed | 1,
            lock_file,
            range_end,
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Takes the cross-process reservation of `port`; false if another process holds it.
    /// Without a usable lock file every port counts as reservable.
    fn try_reserve(&self, port: u16) -> bool {
        let Some(file) = &self.lock_file else {
            return true;
        };
        // SAFETY: a zeroed flock is a valid value; fcntl on a descriptor we own.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as _;
        lock.l_whence = libc::SEEK_SET as _;
        lock.l_start = libc::off_t::from(port);
        lock.l_len = 1;
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
        if rc == 0 {
            return true;
        }
        let err = std::io::Error::last_os_error().raw_os_error();
        // EAGAIN/EACCES: held by someone else. Anything else (no OFD locks): don't block on it.
        !matches!(err, Some(libc::EAGAIN) | Some(libc::EACCES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_and_bindable() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let p = free_port();
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        let p = free_port();
        TcpListener::bind(("127.0.0.1", p)).expect("free port is bindable");
    }

    #[test]
    fn handed_out_ports_are_reserved_against_other_lock_holders() {
        let p = free_port();
        // Another open file description stands in for another process.
        let other = Ports {
            lock_file: None,
            ..Ports::new()
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(std::env::temp_dir().join("etcdgate-testkit-ports.lock"))
            .expect("lock file exists");
        let other = Ports {
            lock_file: Some(file),
            ..other
        };
        assert!(!other.try_reserve(p), "port {p} reservable twice");
    }
}
