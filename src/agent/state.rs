//! State shared by every sensor: the policy in force (swapped atomically), metrics, the event
//! sink, the shutdown signal, the protected files and the guarded killer.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use interdict_event::{Event, EventKind, Origin, PolicyRef};
use interdict_policy::{Date, CRITICAL_PATHS};
use serde::{Deserialize, Serialize};

use super::config::AgentConfig;
use super::metrics::{inc, Metrics};
use crate::hash::HashMemo;
use crate::host::Accounts;
use crate::policy_file::LoadedPolicy;

/// The policy in force, with the generation that invalidates cached decisions when it changes.
#[derive(Debug)]
pub struct Active {
    /// The loaded policy.
    pub loaded: LoadedPolicy,
    /// Increases with every policy applied.
    pub generation: u64,
}

impl Active {
    /// The policy's identity for events.
    pub fn policy_ref(&self) -> PolicyRef {
        let info = self.loaded.policy.info();
        PolicyRef {
            name: info.name.clone(),
            version: info.version.clone(),
            sha256: self.loaded.sha256.clone(),
            mode: info.mode.to_string(),
        }
    }
}

/// A signal every loop watches: an eventfd for `poll(2)` in sensor threads, a `Notify` for
/// async tasks.
#[derive(Debug)]
pub struct Shutdown {
    flag: AtomicBool,
    efd: OwnedFd,
    notify: tokio::sync::Notify,
}

impl Shutdown {
    /// A new, untriggered signal.
    pub fn new() -> std::io::Result<Shutdown> {
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Shutdown {
            flag: AtomicBool::new(false),
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
            notify: tokio::sync::Notify::new(),
        })
    }

    /// Ask every loop to stop.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        self.notify.notify_waiters();
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Readable once triggered: put it in a `poll(2)` set.
    pub fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Block until `fd` is readable (`Ok(true)`) or shutdown is triggered (`Ok(false)`).
    pub fn wait_readable(&self, fd: RawFd) -> std::io::Result<bool> {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            return Ok(!self.is_triggered());
        }
    }

    /// Wait until triggered.
    pub async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            if self.is_triggered() {
                return;
            }
            n.await;
        }
    }
}

/// Where events go: a bounded queue to the event log writer. When it is full the event is
/// dropped and counted (`event_drops`): sensors never wait for the disk.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: tokio::sync::mpsc::Sender<Event>,
}

impl EventSink {
    /// A sink and the receiving end for the writer.
    pub fn new(capacity: usize) -> (EventSink, tokio::sync::mpsc::Receiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        (EventSink { tx }, rx)
    }

    /// Queue an event without waiting; count it when it cannot be queued. Whether it was.
    pub fn send(&self, event: Event, metrics: &Metrics) -> bool {
        if self.tx.try_send(event).is_err() {
            inc(&metrics.c.event_drops);
            false
        } else {
            inc(&metrics.c.events_queued);
            true
        }
    }
}

/// Where notices for employees go: a bounded queue to the notifier thread; when full (or when
/// notifications are off) a notice is dropped and counted.
#[derive(Debug, Clone)]
pub struct NoticeSink {
    tx: Option<std::sync::mpsc::SyncSender<crate::notify::Notice>>,
}

impl NoticeSink {
    /// A sink and its receiving end; `enabled = false` gives a sink that drops silently.
    pub fn new(
        enabled: bool,
        capacity: usize,
    ) -> (
        NoticeSink,
        Option<std::sync::mpsc::Receiver<crate::notify::Notice>>,
    ) {
        if !enabled {
            return (NoticeSink { tx: None }, None);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        (NoticeSink { tx: Some(tx) }, Some(rx))
    }

    /// Queue a notice without waiting.
    pub fn send(&self, n: crate::notify::Notice, metrics: &Metrics) {
        if let Some(tx) = &self.tx {
            if tx.try_send(n).is_err() {
                inc(&metrics.c.notices_dropped);
            }
        }
    }
}

/// State of one sensor, for `status` and the start-up line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorState {
    /// Sensor name.
    pub name: String,
    /// running, disabled, failed, stopped.
    pub state: String,
    /// Why it is not running, or what it covers.
    pub detail: String,
}

/// Files the agent never blocks or kills, whatever the policy says: its own binary, PID 1's
/// executable and the critical system programs (by device and inode).
#[derive(Debug, Default)]
pub struct Protected {
    ids: HashSet<(u64, u64)>,
}

impl Protected {
    /// Collect the protected files present on this machine.
    pub fn discover() -> Protected {
        let mut ids = HashSet::new();
        let mut paths: Vec<PathBuf> = vec!["/proc/self/exe".into(), "/proc/1/exe".into()];
        paths.extend(CRITICAL_PATHS.iter().map(PathBuf::from));
        for p in paths {
            if let Ok(m) = std::fs::metadata(&p) {
                ids.insert((m.dev(), m.ino()));
            }
        }
        Protected { ids }
    }

    /// True for a protected file.
    pub fn contains(&self, dev: u64, ino: u64) -> bool {
        self.ids.contains(&(dev, ino))
    }
}

/// The result of a guarded kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillResult {
    /// SIGKILL was delivered.
    Killed,
    /// Already killed once (by this or another sensor): not sent again.
    AlreadyKilled,
    /// Refused: the agent itself or PID 1.
    Protected,
    /// The process is gone, or its pid now names another process.
    Gone,
    /// The kernel refused.
    Failed(i32),
}

/// Kills by pidfd, at most once per process, never the agent or PID 1, never a recycled pid.
#[derive(Debug, Default)]
pub struct Killer {
    done: Mutex<HashSet<(u32, u64)>>,
}

impl Killer {
    /// Kill `pid` if it still is the process that started at `start_ticks`.
    pub fn kill(&self, pid: u32, start_ticks: u64) -> KillResult {
        if pid <= 1 || pid == std::process::id() {
            return KillResult::Protected;
        }
        {
            let mut done = self.done.lock().expect("killer poisoned");
            if done.len() > 100_000 {
                done.clear();
            }
            if !done.insert((pid, start_ticks)) {
                return KillResult::AlreadyKilled;
            }
        }
        // Open the pidfd first, then check the start time: if it matches, the pidfd names the
        // process we judged, and a signal through it cannot reach a newcomer with that pid.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
        if fd < 0 {
            return KillResult::Gone;
        }
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        match crate::procs::read_stat(pid) {
            Some((_, start)) if start == start_ticks => {}
            _ => return KillResult::Gone,
        }
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r == 0 {
            KillResult::Killed
        } else {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::ESRCH) => KillResult::Gone,
                e => KillResult::Failed(e.unwrap_or(0)),
            }
        }
    }
}

/// A decision remembered for a file identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// Nothing to do: nothing (or an `allow` rule) matched the file itself.
    Allow,
    /// The exec (or script open) is denied.
    Deny,
}

/// Decision cache keyed by file identity, kind of event and policy generation. Allow entries live
/// until the policy changes; the whole cache is dropped past its size cap.
#[derive(Debug, Default)]
pub struct DecisionCache {
    map: Mutex<HashMap<(crate::hash::FileKey, bool), (u64, Cached)>>,
}

const CACHE_CAP: usize = 65_536;

impl DecisionCache {
    /// The decision for `key` under policy `generation`, if cached.
    pub fn get(&self, key: &(crate::hash::FileKey, bool), generation: u64) -> Option<Cached> {
        let map = self.map.lock().expect("cache poisoned");
        match map.get(key) {
            Some((g, c)) if *g == generation => Some(*c),
            _ => None,
        }
    }

    /// Remember a decision.
    pub fn put(&self, key: (crate::hash::FileKey, bool), generation: u64, c: Cached) {
        let mut map = self.map.lock().expect("cache poisoned");
        if map.len() >= CACHE_CAP {
            map.clear();
        }
        map.insert(key, (generation, c));
    }
}

/// Everything the sensors share.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: AgentConfig,
    /// The policy file (for reloads).
    pub policy_path: PathBuf,
    /// The policy in force.
    pub active: ArcSwap<Active>,
    /// Counters and latency (shared with the event log writer).
    pub metrics: Arc<Metrics>,
    /// Host identity stamped on events.
    pub origin: Origin,
    /// Where events go.
    pub events: EventSink,
    /// Where notices for employees go.
    pub notices: NoticeSink,
    /// Stop signal.
    pub shutdown: Shutdown,
    /// Never blocked, never killed.
    pub protected: Protected,
    /// Guarded kills.
    pub killer: Killer,
    /// Digests learned on this host (persisted in the state folder).
    pub learned: Mutex<crate::learned::LearnedSet>,
    /// Files matched by a path or script rule at exec time, to hash and learn off the answering
    /// path. Bounded (256); when full the request is dropped and counted (`learn_drops`).
    pub learn_tx: std::sync::mpsc::SyncSender<LearnRequest>,
    /// The receiving end, taken by the learner thread.
    pub learn_rx: Mutex<Option<std::sync::mpsc::Receiver<LearnRequest>>>,
    /// Decisions by file identity, from the fanotify guard (the proc connector reads them).
    pub decisions: DecisionCache,
    /// Digests by file identity, shared by every sensor.
    pub memo: HashMemo,
    /// Users and groups.
    pub accounts: Accounts,
    /// Sensor states.
    pub sensors: Mutex<Vec<SensorState>>,
    /// True while the proc connector runs.
    pub proc_connector_running: AtomicBool,
    /// Devices of the mounts the fanotify guard marks: execs there are judged and reported by
    /// fanotify (which sees them even when they exit at once), not again by the proc connector.
    pub fanotify_devs: Mutex<HashSet<u64>>,
}

impl Shared {
    /// Remember `digest` as a hash of `rule_id` (a file its path, script or package selector
    /// matched) and put it in force at once: a renamed copy is then caught by hash.
    pub fn learn(
        &self,
        rule_id: &str,
        digest: interdict_policy::Sha256,
        path: &std::path::Path,
        selector: &str,
    ) {
        {
            let mut set = self.learned.lock().expect("learned poisoned");
            if !set.add(rule_id, digest, path, selector) {
                return;
            }
            if let Err(e) = set.save(&self.config.state_dir) {
                tracing::warn!("learned hashes not saved: {e}");
            }
        }
        let current = self.active.load_full();
        let mut loaded = current.loaded.clone();
        if loaded.policy.learn(rule_id, digest) {
            self.active.store(Arc::new(Active {
                loaded,
                generation: current.generation + 1,
            }));
            inc(&self.metrics.c.hashes_learned);
        }
    }

    /// Ask the learner thread to learn the digest of a file a path or script rule matched (the
    /// digest when known, else it hashes the file). Never blocks.
    pub fn learn_later(&self, req: LearnRequest) {
        if self.learn_tx.try_send(req).is_err() {
            inc(&self.metrics.c.learn_drops);
        }
    }

    /// A new event stamped with this host and the policy in force.
    pub fn event(&self, kind: EventKind) -> Event {
        let mut e = self.origin.event(kind);
        e.policy = Some(self.active.load().policy_ref());
        e
    }

    /// Queue an event.
    pub fn emit(&self, e: Event) -> bool {
        self.events.send(e, &self.metrics)
    }

    /// Record a sensor's state (replacing an earlier one of the same name).
    pub fn set_sensor(&self, name: &str, state: &str, detail: impl Into<String>) {
        let mut s = self.sensors.lock().expect("sensors poisoned");
        s.retain(|x| x.name != name);
        s.push(SensorState {
            name: name.to_string(),
            state: state.to_string(),
            detail: detail.into(),
        });
    }

    /// Today, for `enforce_from`.
    pub fn today(&self) -> Date {
        crate::host::today()
    }
}

/// A file to learn the digest of.
#[derive(Debug, Clone)]
pub struct LearnRequest {
    /// The rule that matched.
    pub rule_id: String,
    /// The file (a real path, from the kernel or /proc).
    pub path: PathBuf,
    /// `path` or `script`.
    pub selector: &'static str,
    /// The digest, when the decision computed it.
    pub digest: Option<interdict_policy::Sha256>,
}

/// Build the shared state.
pub fn shared(
    config: AgentConfig,
    policy_path: PathBuf,
    mut loaded: LoadedPolicy,
    origin: Origin,
    events: EventSink,
    notices: NoticeSink,
) -> std::io::Result<Arc<Shared>> {
    let learned = crate::learned::LearnedSet::load(&config.state_dir).unwrap_or_else(|e| {
        tracing::warn!("learned hashes unreadable, starting afresh: {e}");
        crate::learned::LearnedSet::default()
    });
    learned.apply(&mut loaded.policy);
    let (learn_tx, learn_rx) = std::sync::mpsc::sync_channel(256);
    Ok(Arc::new(Shared {
        learned: Mutex::new(learned),
        learn_tx,
        learn_rx: Mutex::new(Some(learn_rx)),
        config,
        policy_path,
        active: ArcSwap::from_pointee(Active {
            loaded,
            generation: 1,
        }),
        metrics: Arc::new(Metrics::default()),
        origin,
        events,
        notices,
        shutdown: Shutdown::new()?,
        protected: Protected::discover(),
        killer: Killer::default(),
        decisions: DecisionCache::default(),
        memo: HashMemo::default(),
        accounts: Accounts::load(),
        sensors: Mutex::new(Vec::new()),
        proc_connector_running: AtomicBool::new(false),
        fanotify_devs: Mutex::new(HashSet::new()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn killer_kills_once_and_refuses_itself_and_init() {
        let k = Killer::default();
        assert_eq!(k.kill(1, 0), KillResult::Protected);
        assert_eq!(k.kill(std::process::id(), 0), KillResult::Protected);
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let (_, start) = crate::procs::read_stat(pid).unwrap();
        // A wrong start time means the pid names another process: nothing is sent.
        assert_eq!(k.kill(pid, start + 1), KillResult::Gone);
        assert_eq!(k.kill(pid, start), KillResult::Killed);
        assert_eq!(k.kill(pid, start), KillResult::AlreadyKilled);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn shutdown_wakes_poll() {
        let s = Shutdown::new().unwrap();
        let mut pfd = libc::pollfd {
            fd: s.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 0);
        s.trigger();
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 1);
        assert!(s.is_triggered());
    }
}
