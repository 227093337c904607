//! Spawning child processes that cannot outlive the test process.
//!
//! Children get `PR_SET_PDEATHSIG = SIGKILL`. That signal fires when the *thread* that forked
//! the child exits, not the process, so all children are forked by one dedicated thread that
//! lives as long as the process (tokio worker and blocking threads come and go). Each child
//! is in a process group of its own, so that a terminal's Ctrl-C reaches only the parent,
//! which stops its children in its own order (`etcdgate dev`: etcdgate first, answering the
//! calls in flight, then the etcd members).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` with stdin closed and stdout+stderr appended to `log`, from the long-lived
/// spawner thread, with `PR_SET_PDEATHSIG = SIGKILL`. Variables `ETCD_*` / `ETCDCTL_*` of the
/// environment are removed so they cannot conflict with flags.
pub(crate) fn spawn_logged(mut cmd: Command, log: &Path) -> io::Result<Child> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    for (k, _) in std::env::vars_os() {
        let k_str = k.to_string_lossy();
        if k_str.starts_with("ETCD_") || k_str.starts_with("ETCDCTL_") {
            cmd.env_remove(&k);
        }
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    spawn_on_spawner_thread(cmd)
}

fn spawn_on_spawner_thread(cmd: Command) -> io::Result<Child> {
    static TX: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("etcdgate-testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// SIGKILL and reap. No-op if the child already exited.
pub(crate) fn kill_and_reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERMs (and SIGCONTs, so a paused one gets it) every child at once, waits up to `grace`
/// for them to exit, then SIGKILLs and reaps the rest.
pub(crate) fn terminate_and_reap(mut children: Vec<&mut Child>, grace: std::time::Duration) {
    for child in &mut children {
        let _ = signal(child, libc::SIGTERM);
        let _ = signal(child, libc::SIGCONT);
    }
    let deadline = std::time::Instant::now() + grace;
    for child in children {
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        kill_and_reap(child);
    }
}

/// Sends `sig` to the child unless it has already exited (and been reaped).
pub(crate) fn signal(child: &mut Child, sig: libc::c_int) -> io::Result<()> {
    if let Ok(Some(status)) = child.try_wait() {
        return Err(io::Error::other(format!(
            "process {} already exited: {status}",
            child.id()
        )));
    }
    // SAFETY: plain kill(2) on a pid we own and have not reaped.
    if unsafe { libc::kill(child.id() as libc::pid_t, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits (up to 2 s) until every thread of `pid` is stopped (`stopped == true`, after
/// SIGSTOP) or none is (after SIGCONT): signal delivery is asynchronous, and a process that
/// is still finishing a request right after `kill(SIGSTOP)` returns is not "paused" yet.
pub(crate) fn wait_stopped(pid: u32, stopped: bool) -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let mut all = true;
        let mut any = false;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
            // state is the first field after "(comm)"
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            let is_stopped = matches!(state, Some('T') | Some('t'));
            all &= is_stopped;
            any |= is_stopped;
        }
        if (stopped && all) || (!stopped && !any) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "process {pid} did not {} within 2s",
                if stopped { "stop" } else { "continue" }
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The last `lines` lines of a log file (reads at most the last 64 KiB).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
