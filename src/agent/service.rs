//! The agent as a system service: one agent per state folder (a lock), a record of each run (so
//! that the next run can say the last one was killed), the `sd_notify` protocol (`READY`,
//! `STATUS`, `STOPPING`) and the systemd watchdog, pinged only while the fanotify guard answers.
//!
//! **The watchdog.** systemd passes `WATCHDOG_USEC` (from `WatchdogSec=`); the agent must send
//! `WATCHDOG=1` more often than that or be killed and restarted. The pings come from a thread
//! of their own, but only while the fanotify guard is alive: its reader and its deadline thread
//! each bump a counter in [`Liveness`] on every turn of their loops (a batch of events read, a
//! deadline answered, or an idle wake-up every [`Liveness::idle_wake`]), and a ping is sent only
//! when both counters moved since the previous ping. A reader stuck anywhere (a wedged read of
//! `/proc`, a lock, the kernel) stops the pings, systemd restarts the agent, and the kernel lets
//! every pending exec through when the old descriptor closes (fail-open). Without a watchdog
//! (not under systemd) nothing wakes up idly and nothing is sent.
//!
//! The protocol is a datagram of `KEY=VALUE` lines to the Unix socket named by `NOTIFY_SOCKET`
//! (a path, or `@name` for the abstract namespace); see `sd_notify(3)`.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sensors::{Part, PartState};
use super::shared::Shared;

/// A connection to the service manager's notification socket (`NOTIFY_SOCKET`).
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
    /// How the address was given, for messages.
    name: String,
}

impl Notifier {
    /// The socket named by `NOTIFY_SOCKET`, or `None` when the variable is unset or empty (not
    /// started by a service manager that listens). An address that cannot be used is an error.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(v) if !v.is_empty() => Notifier::new(&v.to_string_lossy()).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier sending to `name`: an absolute path, or `@name` (abstract namespace).
    pub fn new(name: &str) -> io::Result<Notifier> {
        use std::os::linux::net::SocketAddrExt;
        let addr = if let Some(abs) = name.strip_prefix('@') {
            std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes())?
        } else if name.starts_with('/') {
            std::os::unix::net::SocketAddr::from_pathname(name)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET={name}: neither an absolute path nor @abstract"),
            ));
        };
        let sock = UnixDatagram::unbound()?;
        Ok(Notifier {
            sock,
            addr,
            name: name.to_string(),
        })
    }

    /// Send one message: `KEY=VALUE` lines. A `STATUS` value is kept to one line.
    pub fn send(&self, msg: &str) -> io::Result<()> {
        self.sock
            .send_to_addr(msg.as_bytes(), &self.addr)
            .map(|_| ())
    }

    /// Send, logging a failure once per kind of message (the manager may be gone at shutdown).
    pub fn send_or_log(&self, msg: &str) {
        if let Err(e) = self.send(msg) {
            tracing::warn!("sd_notify to {}: {e} (message: {msg:?})", self.name);
        }
    }

    /// `STATUS=...`, one line.
    pub fn status(&self, text: &str) {
        self.send_or_log(&format!("STATUS={}", one_line(text)));
    }
}

/// `text` on one line (newlines end a `KEY=VALUE` pair), at most 1,000 bytes.
fn one_line(text: &str) -> String {
    let mut s: String = text.replace(['\n', '\r'], " ");
    if s.len() > 1000 {
        let mut cut = 1000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), when it is meant for this process
/// (`WATCHDOG_PID` unset or equal to our PID).
pub fn watchdog_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Proof of life from the fanotify guard's answering threads, for the watchdog.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Turns of the reader's loop.
    reader: AtomicU64,
    /// Turns of the deadline thread's loop.
    deadline: AtomicU64,
    /// How often an idle answering thread wakes up to show it is alive, in nanoseconds; 0 =
    /// never (no watchdog: the threads block until there is work).
    idle_wake_ns: AtomicU64,
}

impl Liveness {
    /// The reader finished a turn (read a batch, or woke up idle).
    pub fn reader_beat(&self) {
        self.reader.fetch_add(1, Ordering::Relaxed);
    }

    /// The deadline thread finished a turn.
    pub fn deadline_beat(&self) {
        self.deadline.fetch_add(1, Ordering::Relaxed);
    }

    /// How long an idle answering thread may block before it shows it is alive; `None`: as long
    /// as it likes.
    pub fn idle_wake(&self) -> Option<Duration> {
        match self.idle_wake_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Set [`Liveness::idle_wake`] (before the guard starts).
    pub fn set_idle_wake(&self, d: Duration) {
        self.idle_wake_ns
            .store(d.as_nanos().max(1) as u64, Ordering::Relaxed);
    }

    fn beats(&self) -> (u64, u64) {
        (
            self.reader.load(Ordering::Relaxed),
            self.deadline.load(Ordering::Relaxed),
        )
    }
}

/// How often to ping for a watchdog interval: half of it, as `sd_watchdog_enabled(3)` advises.
pub fn ping_every(watchdog: Duration) -> Duration {
    watchdog / 2
}

/// How often the answering threads wake up when idle, for a watchdog interval: four times per
/// ping, between 50 ms and 5 s.
pub fn idle_wake_for(watchdog: Duration) -> Duration {
    (ping_every(watchdog) / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// Start the watchdog thread: every [`ping_every`] it sends `WATCHDOG=1` when the fanotify
/// guard showed life since the last ping (or when no guard runs: then the agent's liveness is
/// that of this thread). When the guard stops showing life it sends a `STATUS` saying so once,
/// logs it, and sends nothing more until the guard comes back; systemd then restarts the agent.
pub fn start_watchdog(
    shared: Arc<Shared>,
    notifier: Arc<Notifier>,
    watchdog: Duration,
) -> io::Result<()> {
    let every = ping_every(watchdog);
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut last = shared.liveness.beats();
            let mut stalled_since: Option<std::time::Instant> = None;
            loop {
                if shared.shutdown.sleep(every) {
                    return;
                }
                let now = shared.liveness.beats();
                let (reader_moved, deadline_moved) = (now.0 != last.0, now.1 != last.1);
                last = now;
                // The guard is watched while it runs; a guard that never started (disabled,
                // not permitted) leaves nothing to watch but this thread.
                let guarded = shared.guard.get().is_some();
                let alive = !guarded || (reader_moved && deadline_moved);
                if alive {
                    match stalled_since.take() {
                        None => notifier.send_or_log("WATCHDOG=1"),
                        Some(t) => {
                            let msg = format!(
                                "the fanotify guard answers again (it had stalled for {} ms)",
                                t.elapsed().as_millis()
                            );
                            tracing::warn!("watchdog: {msg}");
                            notifier.send_or_log(&format!("WATCHDOG=1\nSTATUS={}", one_line(&msg)));
                        }
                    }
                } else if stalled_since.is_none() {
                    stalled_since = Some(std::time::Instant::now());
                    let which = match (reader_moved, deadline_moved) {
                        (false, false) => "reader and deadline thread",
                        (false, true) => "reader",
                        _ => "deadline thread",
                    };
                    let state = shared
                        .parts
                        .state(Part::Fanotify)
                        .map_or("unknown", PartState::as_str);
                    let msg = format!(
                        "the fanotify guard's {which} has not answered for {} ms (state {state}): no more watchdog pings; systemd restarts the agent after WatchdogSec",
                        every.as_millis()
                    );
                    tracing::error!("watchdog: {msg}");
                    notifier.status(&msg);
                }
            }
        })
        .map(|_| ())
}

/// The lock that keeps a second agent off a state folder: `flock` on the folder itself (which
/// cannot be removed while it holds the agent's state), held until the process exits.
#[derive(Debug)]
pub struct StateLock {
    _dir: std::fs::File,
    record: PathBuf,
}

/// What [`StateLock::acquire`] says when another agent holds the folder.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another agent runs.
    #[error(
        "another interdict agent{} already runs with the state folder {dir}; stop it first (systemctl stop interdict), or give this one a state folder of its own ([agent] state_dir)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held {
        /// The folder.
        dir: String,
        /// Its PID, from the run record.
        pid: Option<u32>,
    },
    /// The folder could not be opened or locked.
    #[error("cannot lock the state folder {dir}: {}", crate::io_reason(source))]
    Io {
        /// The folder.
        dir: String,
        /// The error.
        source: io::Error,
    },
}

/// One run of the agent, kept in `STATE_DIR/agent.run` (0600).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The agent's PID.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started: String,
    /// The agent's version.
    pub version: String,
    /// How it stopped (`SIGTERM`, `SIGINT`); `None` while it runs, and forever after a kill, a
    /// crash or a power loss.
    pub stopped: Option<String>,
}

impl StateLock {
    /// The name of the run record in the state folder.
    pub const RECORD: &'static str = "agent.run";

    /// Lock `state_dir` (which must exist). Fails with [`LockError::Held`] when another process
    /// holds it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        use rustix::fs::{flock, FlockOperation};
        let dir = crate::path_text(state_dir);
        let f = std::fs::File::open(state_dir).map_err(|source| LockError::Io {
            dir: dir.clone(),
            source,
        })?;
        let record = state_dir.join(Self::RECORD);
        match flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(StateLock { _dir: f, record }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::Held {
                dir,
                pid: read_record(&record).map(|r| r.pid),
            }),
            Err(e) => Err(LockError::Io {
                dir,
                source: e.into(),
            }),
        }
    }

    /// The previous run's record, if one was left.
    pub fn previous(&self) -> Option<RunRecord> {
        read_record(&self.record)
    }

    /// Record this run as started (replacing the previous record).
    pub fn record_start(&self) -> io::Result<RunRecord> {
        let r = RunRecord {
            pid: std::process::id(),
            started: interdict_event::rfc3339(std::time::SystemTime::now()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            stopped: None,
        };
        self.write(&r)?;
        Ok(r)
    }

    /// Record that this run stopped cleanly, and why.
    pub fn record_stop(&self, run: &RunRecord, why: &str) -> io::Result<()> {
        let mut r = run.clone();
        r.stopped = Some(why.to_string());
        self.write(&r)
    }

    fn write(&self, r: &RunRecord) -> io::Result<()> {
        let bytes = serde_json::to_vec(r).expect("run records serialize");
        crate::fsutil::write_atomic(&self.record, &bytes, 0o600)
    }
}

fn read_record(path: &Path) -> Option<RunRecord> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// What the `agent_stopped` event for a run that did not stop cleanly says.
pub fn unclean_stop_message(prev: &RunRecord) -> String {
    format!(
        "the previous agent (pid {}, version {}, started {}) did not stop cleanly: it was killed (e.g. SIGKILL), crashed, was restarted by the watchdog, or the machine lost power",
        prev.pid, prev.version, prev.started
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifier_sends_datagrams_to_a_path_and_to_an_abstract_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify.sock");
        let rx = UnixDatagram::bind(&p).unwrap();
        let n = Notifier::new(p.to_str().unwrap()).unwrap();
        n.send("READY=1\nSTATUS=up").unwrap();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");

        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "interdict-test-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(&format!("@{name}")).unwrap();
        n.status("two\nlines");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=two lines");

        assert!(Notifier::new("relative/path").is_err());
    }

    #[test]
    fn idle_wake_is_a_fraction_of_the_ping_interval_within_bounds() {
        assert_eq!(ping_every(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(
            idle_wake_for(Duration::from_secs(30)),
            Duration::from_secs(3750) / 1000
        );
        assert_eq!(
            idle_wake_for(Duration::from_secs(600)),
            Duration::from_secs(5)
        );
        assert_eq!(
            idle_wake_for(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn a_second_lock_on_a_state_folder_is_refused_with_the_holders_pid() {
        let d = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(d.path()).unwrap();
        assert_eq!(first.previous(), None);
        let run = first.record_start().unwrap();
        // flock locks belong to the open file description: a second open in this very process
        // conflicts like another process would.
        match StateLock::acquire(d.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        first.record_stop(&run, "SIGTERM").unwrap();
        drop(first);
        let second = StateLock::acquire(d.path()).unwrap();
        assert_eq!(
            second.previous().unwrap().stopped.as_deref(),
            Some("SIGTERM")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join(StateLock::RECORD))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
