//! The fanotify guard: exec permission events (`FAN_OPEN_EXEC_PERM`) on the configured mounts,
//! and open permission events (`FAN_OPEN_PERM`) on the banned interpreter scripts themselves.
//!
//! Threads and what they may wait on:
//! - the **reader** reads events and answers cache hits and the agent's own opens at once; a miss
//!   goes to the workers through a bounded queue (when full: answered at once per `fail_mode`,
//!   counted as `queue_drops`). It never logs, never touches the disk, never takes a lock held
//!   by slow work (the cache lock is only held for a lookup or an insert);
//! - **workers** decide misses: path rules on the descriptor's path, SHA-256 through the event's
//!   own descriptor (never reopened by path), shared between concurrent execs of one file, and
//!   family signatures in that same read, only for files whose format and size a family rule
//!   could match (without family rules nothing is read for them);
//! - the **deadline** thread answers, per `fail_mode`, every event still unanswered after
//!   `deadline_ms`; if the late decision turns out to be a block, the worker kills what started.
//!
//! Each event is answered exactly once (an atomic flag decides who answers). On a fatal error the
//! reader stops and the fanotify descriptor is closed as soon as the workers let go of it; the
//! kernel then lets pending events through.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use interdict_event::{EventKind, FileRef};

use super::cache::{Access, Cached};
use super::{Part, PartState, StartError};
use crate::agent::config::FailMode;
use crate::agent::metrics::inc;
use crate::agent::shared::Shared;
use crate::agent::verdict::{self, Plan};
use crate::inventory::facts::FactsBuilder;
use crate::inventory::hash::{read_head, search_file, FileKey};

const FAN_ALLOW: u32 = 0x01;
const FAN_DENY: u32 = 0x02;

/// One permission event waiting for its answer.
struct Pending {
    /// The event's descriptor: open on the file being executed (or the script being opened).
    fd: OwnedFd,
    pid: u32,
    key: FileKey,
    /// `Open` for `FAN_OPEN_PERM` on a banned script, `Exec` for an exec.
    access: Access,
    answered: AtomicBool,
    /// The process, read before a cached deny is answered (it is gone soon after).
    info: Option<crate::inventory::procs::ProcessInfo>,
    /// Set when the deadline answered first.
    expired: AtomicBool,
    start: Instant,
}

impl Pending {
    fn new(
        fd: OwnedFd,
        pid: u32,
        key: FileKey,
        access: Access,
        start: Instant,
        answered: bool,
        info: Option<crate::inventory::procs::ProcessInfo>,
    ) -> Arc<Pending> {
        Arc::new(Pending {
            fd,
            pid,
            key,
            access,
            answered: AtomicBool::new(answered),
            info,
            expired: AtomicBool::new(false),
            start,
        })
    }
}

struct Guard {
    fan: OwnedFd,
    shared: Arc<Shared>,
    fail: u32,
    /// Device and inode of the agent's own binary: `interdict scan` may read banned files.
    own_exe: Option<(u64, u64)>,
}

impl Guard {
    fn respond(&self, fd: RawFd, answer: u32) {
        // `struct fanotify_response { __s32 fd; __u32 response; }`, in native byte order.
        let mut r = [0u8; 8];
        r[..4].copy_from_slice(&fd.to_ne_bytes());
        r[4..].copy_from_slice(&answer.to_ne_bytes());
        // A failed write means the event is gone (the process died); nothing to do.
        let _ = rustix::io::write(&self.fan, &r);
    }

    /// Answer once: true if this call answered.
    fn answer_once(&self, p: &Pending, answer: u32) -> bool {
        if p.answered.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.respond(p.fd.as_raw_fd(), answer);
        true
    }
}

/// A running guard: mark more files and filesystems through it.
#[derive(Clone)]
pub struct Handle {
    fan: Arc<Guard>,
    /// Mount points marked, for status.
    marked: Arc<Mutex<Vec<String>>>,
}

/// The former name of [`Handle`], for the script guard's callers.
pub type ScriptMarker = Handle;

/// A [`Handle`] that does not keep the guard (and through it the shared state) alive: what the
/// shared state itself holds.
#[derive(Clone)]
pub struct WeakHandle {
    fan: std::sync::Weak<Guard>,
    marked: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for WeakHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fanotify::WeakHandle")
    }
}

impl WeakHandle {
    /// The mount points of the filesystems marked so far.
    pub fn marked(&self) -> Vec<String> {
        self.marked.lock().expect("marked poisoned").clone()
    }

    /// The handle, while the guard runs.
    pub fn upgrade(&self) -> Option<Handle> {
        Some(Handle {
            fan: self.fan.upgrade()?,
            marked: self.marked.clone(),
        })
    }
}

impl Handle {
    /// Deny every open of `path` until the agent decides (`FAN_OPEN_PERM` on that file only):
    /// banned scripts (the script guard), and banned programs already found, so that neither
    /// the dynamic loader nor a copy can read them. The file is remembered as guarded: its runs
    /// are the guard's to report.
    pub fn mark(&self, path: &Path) -> std::io::Result<()> {
        mark(
            self.fan.fan.as_raw_fd(),
            libc::FAN_MARK_ADD,
            libc::FAN_OPEN_PERM,
            path,
        )?;
        if let Ok(m) = std::fs::metadata(path) {
            use std::os::unix::fs::MetadataExt;
            self.fan
                .shared
                .guarded_scripts
                .lock()
                .expect("guarded scripts poisoned")
                .insert((m.dev(), m.ino()));
        }
        Ok(())
    }

    /// Guard execs on the whole filesystem that `path` is on (`FAN_MARK_FILESYSTEM`: every
    /// mount of it, bind mounts and copies in other mount namespaces included). `path` may be
    /// `/proc/PID/exe`, which reaches a filesystem mounted in another namespace. Falls back to
    /// marking the mount where the kernel refuses a filesystem mark (a btrfs subvolume).
    /// Returns true when the filesystem was not marked before.
    pub fn mark_filesystem(&self, shared: &Shared, path: &Path) -> std::io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(path)?.dev();
        if shared.is_marked_dev(dev) {
            return Ok(false);
        }
        let fan = self.fan.fan.as_raw_fd();
        let add = libc::FAN_MARK_ADD;
        match mark(
            fan,
            add | libc::FAN_MARK_FILESYSTEM,
            libc::FAN_OPEN_EXEC_PERM,
            path,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => mark(
                fan,
                add | libc::FAN_MARK_MOUNT,
                libc::FAN_OPEN_EXEC_PERM,
                path,
            )?,
            r => r?,
        }
        shared
            .marked_devs
            .lock()
            .expect("marked devices poisoned")
            .insert(dev);
        let mut marked = self.marked.lock().expect("marked poisoned");
        marked.push(crate::path_text(path));
        shared.parts.set(
            Part::Fanotify,
            PartState::Running,
            format!(
                "exec guard on {} filesystem(s): {}",
                marked.len(),
                marked.join(", ")
            ),
        );
        Ok(true)
    }

    /// Find the banned interpreter scripts under the script roots (`[exec] script_roots`, or
    /// the default install roots) and mark each. Returns how many were marked; a failed mark is
    /// counted (`script_mark_failures`).
    pub fn mark_banned_scripts(&self, shared: &Shared) -> usize {
        let active = shared.policy.active();
        let policy = &active.loaded.policy;
        if !policy.has_scripts() {
            return 0;
        }
        let roots = if shared.config.exec.script_roots.is_empty() {
            crate::inventory::installed::default_roots(&shared.accounts)
        } else {
            shared.config.exec.script_roots.clone()
        };
        let (roots, _) = crate::inventory::installed::normalize_roots(&roots, false);
        let mut n = 0;
        for root in roots {
            for entry in walkdir::WalkDir::new(root)
                .follow_links(false)
                .into_iter()
                .flatten()
            {
                if entry.file_type().is_file() && policy.is_script_path(entry.path()) {
                    match self.mark(entry.path()) {
                        Ok(()) => n += 1,
                        Err(_) => inc(&shared.metrics.c.script_mark_failures),
                    }
                }
            }
        }
        n
    }
}

fn mark(fan: RawFd, flags: libc::c_uint, mask: u64, path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; `fan` is a fanotify
    // descriptor; the kernel copies the path and keeps no pointer.
    let r = unsafe { libc::fanotify_mark(fan, flags, mask, libc::AT_FDCWD, c.as_ptr()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Mark the filesystems that mounts bring in after start-up (`[exec] follow_mounts`): the mount
/// table is watched (`POLLPRI` on `/proc/self/mountinfo`, and a look every 5 s), and every new
/// filesystem that can hold programs, mounted under `follow_mounts_under`, is marked at once.
fn follow_mounts(shared: Arc<Shared>, handle: Handle) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let under = shared.config.exec.follow_mounts_under.clone();
    let Ok(table) = std::fs::File::open("/proc/self/mountinfo") else {
        return;
    };
    let mut buf = Vec::new();
    let five = Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    while !shared.shutdown.is_triggered() {
        // Reading the file to its end arms the next POLLPRI.
        buf.clear();
        let _ = std::io::Read::read_to_end(&mut &table, &mut buf);
        let _ = rustix::fs::seek(&table, rustix::fs::SeekFrom::Start(0));
        for m in super::mounts::parse(&String::from_utf8_lossy(&buf)) {
            if !m.holds_programs() || !super::mounts::under(&m.point, &under) {
                continue;
            }
            match m.dev() {
                Some(dev) if !shared.is_marked_dev(dev) => {}
                _ => continue,
            }
            match handle.mark_filesystem(&shared, &m.point) {
                Ok(true) => tracing::info!(
                    "exec guard: marked {} ({}), mounted after start-up",
                    m.point.display(),
                    m.fstype
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    "exec guard: cannot mark {} ({}): {}",
                    m.point.display(),
                    m.fstype,
                    crate::io_reason(&e)
                ),
            }
        }
        let mut fds = [
            PollFd::new(&table, PollFlags::PRI),
            PollFd::new(&*shared.shutdown, PollFlags::IN),
        ];
        let _ = poll(&mut fds, Some(&five));
    }
}

/// Start the guard (`[exec]` configuration). Returns its handle, or why it could not start.
pub fn start(shared: Arc<Shared>) -> Result<Handle, StartError> {
    let cfg = &shared.config.exec;
    // SAFETY: fanotify_init takes two flag words and returns a new descriptor or -1; no
    // pointers are involved.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => StartError::NotPermitted("root / CAP_SYS_ADMIN"),
            Some(libc::ENOSYS) => StartError::Unsupported("kernel without fanotify"),
            _ => StartError::Io {
                what: "fanotify_init",
                source: e,
            },
        });
    }
    // SAFETY: `fd` is a descriptor fanotify_init just returned; nothing else owns it.
    let fan = unsafe { OwnedFd::from_raw_fd(fd) };
    let guard = Arc::new(Guard {
        fan,
        shared: shared.clone(),
        fail: match cfg.fail_mode {
            FailMode::Open => FAN_ALLOW,
            FailMode::Closed => FAN_DENY,
        },
        own_exe: {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self/exe")
                .ok()
                .map(|m| (m.dev(), m.ino()))
        },
    });
    let handle = Handle {
        fan: guard.clone(),
        marked: Arc::new(Mutex::new(Vec::new())),
    };
    let mounts: Vec<PathBuf> = if cfg.mounts.is_empty() {
        super::mounts::current()
            .into_iter()
            .filter(|m| m.holds_programs())
            .map(|m| m.point)
            .collect()
    } else {
        cfg.mounts.clone()
    };
    let mut failed = Vec::new();
    for m in &mounts {
        if let Err(e) = handle.mark_filesystem(&shared, m) {
            failed.push(format!("{}: {}", m.display(), crate::io_reason(&e)));
        }
    }
    if handle.marked.lock().expect("marked poisoned").is_empty() {
        return Err(StartError::NothingCovered(format!(
            "no filesystem could be marked ({})",
            failed.join("; ")
        )));
    }
    for f in &failed {
        tracing::warn!("exec guard: not marked: {f}");
    }

    let (work_tx, work_rx) = sync_channel::<Arc<Pending>>(cfg.queue);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (dl_tx, dl_rx) = std::sync::mpsc::channel::<Arc<Pending>>();
    let deadline = Duration::from_millis(cfg.deadline_ms);
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name)
            .spawn(f)
            .map(|_| ())
            .map_err(StartError::io("fanotify thread"))
    };
    for i in 0..cfg.workers {
        let (g, rx) = (guard.clone(), work_rx.clone());
        spawn(format!("fan-worker-{i}"), Box::new(move || worker(g, rx)))?;
    }
    let g = guard.clone();
    spawn(
        "fan-deadline".into(),
        Box::new(move || deadline_loop(g, dl_rx, deadline)),
    )?;
    let g = guard.clone();
    spawn(
        "fan-reader".into(),
        Box::new(move || reader(g, work_tx, dl_tx)),
    )?;
    let _ = shared.guard.set(WeakHandle {
        fan: Arc::downgrade(&handle.fan),
        marked: handle.marked.clone(),
    });
    if cfg.follow_mounts {
        let (s, h) = (shared.clone(), handle.clone());
        spawn("fan-mounts".into(), Box::new(move || follow_mounts(s, h)))?;
    }
    Ok(handle)
}

fn reader(
    g: Arc<Guard>,
    work: SyncSender<Arc<Pending>>,
    deadlines: std::sync::mpsc::Sender<Arc<Pending>>,
) {
    let shared = g.shared.clone();
    let me = std::process::id();
    let mut buf = vec![0u8; 64 * 1024];
    let meta_len = std::mem::size_of::<libc::fanotify_event_metadata>();
    let fatal = loop {
        // Each turn shows the watchdog that the reader is alive; when idle it wakes up for that
        // alone, and only under a watchdog (`Liveness::idle_wake`).
        shared.liveness.reader_beat();
        match shared
            .shutdown
            .wait_readable_for(&g.fan, shared.liveness.idle_wake())
        {
            Ok(true) => {}
            Ok(false) if shared.shutdown.is_triggered() => break None,
            Ok(false) => continue,
            Err(e) => break Some(format!("poll: {e}")),
        }
        let n = match rustix::io::read(&g.fan, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => continue,
            Err(e) => break Some(format!("read: {e}")),
        };
        let mut off = 0;
        while off + meta_len <= n {
            // SAFETY: at least `meta_len` bytes from `off` were read from the kernel, which
            // writes whole `fanotify_event_metadata` records; read_unaligned copies one out of
            // the byte buffer whatever its alignment.
            let m: libc::fanotify_event_metadata =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            if m.vers != libc::FANOTIFY_METADATA_VERSION {
                // Not a layout we understand: answer nothing more, close the descriptor.
                return finish(&g, Some("fanotify metadata version mismatch".into()));
            }
            off += (m.event_len as usize).max(meta_len);
            if m.mask & libc::FAN_Q_OVERFLOW != 0 {
                inc(&shared.metrics.c.fanotify_overflows);
            }
            if m.fd < 0 {
                continue;
            }
            // SAFETY: the kernel opened `m.fd` for this event and handed it to us; we own it
            // from here and close it once the event is answered.
            let fd = unsafe { OwnedFd::from_raw_fd(m.fd) };
            let access = if m.mask & libc::FAN_OPEN_PERM != 0 {
                Access::Open
            } else {
                inc(&shared.metrics.c.execs_seen);
                Access::Exec
            };
            handle(&g, fd, m.pid as u32, access, me, &work, &deadlines);
        }
    };
    finish(&g, fatal);
}

fn finish(g: &Guard, fatal: Option<String>) {
    if let Some(why) = fatal {
        g.shared.parts.set(
            Part::Fanotify,
            PartState::Failed,
            format!("stopped: {why}; descriptor closed"),
        );
        let mut e = g.shared.event(EventKind::SensorDegraded);
        e.sensor = Some(Part::Fanotify.as_str().into());
        e.message = Some(why);
        g.shared.emit(e);
    } else {
        g.shared
            .parts
            .set(Part::Fanotify, PartState::Stopped, "shut down");
    }
}

/// The reader's part of an event: the agent's own opens, protected files and cache hits are
/// answered here at once; misses go to the workers.
fn handle(
    g: &Arc<Guard>,
    fd: OwnedFd,
    pid: u32,
    access: Access,
    me: u32,
    work: &SyncSender<Arc<Pending>>,
    deadlines: &std::sync::mpsc::Sender<Arc<Pending>>,
) {
    let start = Instant::now();
    let shared = &g.shared;
    // The agent's own opens and execs are always allowed; so are reads of a guarded file by
    // interdict itself (`interdict scan` hashing it).
    if pid == me || (access == Access::Open && runs_own_binary(g, pid)) {
        g.respond(fd.as_raw_fd(), FAN_ALLOW);
        return;
    }
    let Some(key) = FileKey::of_fd(&fd) else {
        g.respond(fd.as_raw_fd(), g.fail);
        return;
    };
    if shared.protected.contains(key.dev, key.ino) {
        g.respond(fd.as_raw_fd(), FAN_ALLOW);
        return;
    }
    let generation = shared.policy.generation();
    if let Some(c) = shared.decisions.get(key, access, generation) {
        inc(&shared.metrics.c.cache_hits);
        match c {
            Cached::Allow => g.respond(fd.as_raw_fd(), FAN_ALLOW),
            Cached::Deny => {
                // Read the process while it still waits in exec (memory, not disk): the event
                // needs it, and it exits right after the deny.
                let info = crate::inventory::procs::read_proc(pid);
                g.respond(fd.as_raw_fd(), FAN_DENY);
                count_deny(shared, access);
                // The event (with the evidence) is built off this thread; with every worker
                // busy and the queue full it cannot be, and is counted as dropped.
                if work
                    .try_send(Pending::new(fd, pid, key, access, start, true, info))
                    .is_err()
                {
                    inc(&shared.metrics.c.event_drops);
                }
            }
        }
        shared
            .metrics
            .latency
            .record(start.elapsed().as_nanos() as u64);
        return;
    }
    inc(&shared.metrics.c.cache_misses);
    let p = Pending::new(fd, pid, key, access, start, false, None);
    match work.try_send(p.clone()) {
        Ok(()) => {
            let _ = deadlines.send(p);
        }
        Err(TrySendError::Full(p)) | Err(TrySendError::Disconnected(p)) => {
            inc(&shared.metrics.c.queue_drops);
            g.answer_once(&p, g.fail);
            if g.fail == FAN_DENY {
                count_deny(shared, access);
            }
        }
    }
}

/// True when process `pid` runs the agent's own binary (one `stat` of `/proc/PID/exe`, for
/// opens of the few files marked for open permission only).
fn runs_own_binary(g: &Guard, pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    g.own_exe.is_some_and(|own| {
        std::fs::metadata(format!("/proc/{pid}/exe")).is_ok_and(|m| (m.dev(), m.ino()) == own)
    })
}

fn count_deny(shared: &Shared, access: Access) {
    match access {
        Access::Open => inc(&shared.metrics.c.scripts_denied),
        Access::Exec => inc(&shared.metrics.c.denied),
    }
}

fn deadline_loop(g: Arc<Guard>, rx: Receiver<Arc<Pending>>, deadline: Duration) {
    // Every event gets the same budget, so deadlines arrive in order: a queue suffices.
    let mut queue: VecDeque<Arc<Pending>> = VecDeque::new();
    let idle = g
        .shared
        .liveness
        .idle_wake()
        .unwrap_or(Duration::from_secs(3600));
    loop {
        g.shared.liveness.deadline_beat();
        let timeout = match queue.front() {
            Some(p) => (p.start + deadline).saturating_duration_since(Instant::now()),
            None => idle,
        }
        .min(idle);
        match rx.recv_timeout(timeout) {
            Ok(p) => queue.push_back(p),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // The reader stopped: answer whatever is still waiting, then leave.
                for p in queue.drain(..) {
                    g.answer_once(&p, g.fail);
                }
                return;
            }
        }
        let now = Instant::now();
        while let Some(p) = queue.front() {
            if p.answered.load(Ordering::SeqCst) {
                queue.pop_front();
                continue;
            }
            if p.start + deadline > now {
                break;
            }
            let p = queue.pop_front().expect("front exists");
            p.expired.store(true, Ordering::SeqCst);
            if g.answer_once(&p, g.fail) {
                inc(&g.shared.metrics.c.deadline_expirations);
                if g.fail == FAN_DENY {
                    count_deny(&g.shared, p.access);
                }
            }
        }
    }
}

fn worker(g: Arc<Guard>, rx: Arc<Mutex<Receiver<Arc<Pending>>>>) {
    loop {
        let next = rx.lock().expect("work queue poisoned").recv();
        let Ok(p) = next else { return };
        decide(&g, &p);
    }
}

/// Decide a cache miss (or describe a cached deny), answer if still unanswered, then hand the
/// rest to the verdict.
fn decide(g: &Guard, p: &Pending) {
    let shared = &g.shared;
    let active = shared.policy.active();
    let policy = &active.loaded.policy;
    let path =
        std::fs::read_link(format!("/proc/self/fd/{}", p.fd.as_raw_fd())).unwrap_or_default();
    let info = p
        .info
        .clone()
        .or_else(|| crate::inventory::procs::read_proc(p.pid));
    let mut hash_failed = false;
    // Read through the event's own descriptor: no second open by path, no race.
    let file = p.fd.try_clone().map(std::fs::File::from);
    // Family rules look into a file only when its format and size could match one (its first
    // bytes, one small read); without family rules nothing is read for them.
    let search = policy.content_searcher().filter(|_| {
        let mut head = [0u8; interdict_policy::FileFormat::MAGIC_BYTES];
        let n = file
            .as_ref()
            .ok()
            .and_then(|f| read_head(f, &mut head).ok())
            .unwrap_or(0);
        policy.may_match_content(p.key.size, &head[..n])
    });
    // No full read on the path of a program whose size no banned digest has and that no
    // family rule could identify; no hashing of one whose size no banned digest has.
    let hash = policy.may_match_size(p.key.size);
    let (mut digest, content) = if search.is_some() || hash {
        match file
            .as_ref()
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))
            .and_then(|f| {
                match (search, hash) {
                    // Searched alone: a fraction of the cost of hashing (the digest, for the
                    // event, is taken after the answer when the file is denied).
                    (Some(cs), false) => search_file(f, cs).map(|c| (None, Some(c))),
                    // Hashed and searched in the same read.
                    (Some(cs), true) => {
                        let m = f.metadata()?;
                        shared
                            .memo
                            .digest_file_with(f, &m, Some(cs.clone()))
                            .map(|(d, _)| (Some(d.sha256), d.content))
                    }
                    (None, _) => {
                        let m = f.metadata()?;
                        shared.memo.hash_file(f, &m).map(|(d, _)| (Some(d), None))
                    }
                }
            }) {
            Ok(r) => r,
            Err(_) => {
                hash_failed = true;
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    let b = FactsBuilder::new(&shared.origin.hostname)
        .name_of(&path)
        .user(info.as_ref().and_then(|i| i.uid), &shared.accounts);
    let mut facts = match p.access {
        // A marked file: a banned script, or a banned program that the dynamic loader (or a
        // copy) would read. Judged as both.
        Access::Open => b
            .exe(&path)
            .exe_digest(digest)
            .exe_content(content.clone())
            .script(&path)
            .script_digest(digest)
            .script_content(content),
        Access::Exec => b.exe(&path).exe_digest(digest).exe_content(content),
    }
    .build();
    let v = verdict::decide(shared, policy, &mut facts);
    let deny = v.plan == Plan::Stop;
    if deny && p.access == Access::Exec {
        // Before the answer: from now on its opens are denied too, since the dynamic loader
        // (`ld.so PROGRAM`) and `cp` read a program without exec'ing it. (One syscall, no I/O.)
        let own = PathBuf::from(format!("/proc/self/fd/{}", p.fd.as_raw_fd()));
        if mark(
            g.fan.as_raw_fd(),
            libc::FAN_MARK_ADD,
            libc::FAN_OPEN_PERM,
            &own,
        )
        .is_err()
        {
            inc(&shared.metrics.c.script_mark_failures);
        }
    }
    if !p.answered.load(Ordering::SeqCst) {
        let answer = if hash_failed && !deny {
            g.fail
        } else if deny {
            FAN_DENY
        } else {
            FAN_ALLOW
        };
        if g.answer_once(p, answer) {
            shared
                .metrics
                .latency
                .record(p.start.elapsed().as_nanos() as u64);
            if answer == FAN_DENY {
                count_deny(shared, p.access);
            }
        }
        // Only "nothing to do" and "deny" are cached: a report, a kill or a would-enforce must
        // be acted on at every exec.
        // Nor a decision another user would get otherwise (an exemption, an exception).
        let cacheable = matches!(v.plan, Plan::Allow | Plan::Stop) && !v.per_user;
        if cacheable && !hash_failed && FileKey::of_fd(&p.fd) == Some(p.key) {
            shared.decisions.put(
                p.key,
                p.access,
                active.generation,
                if deny { Cached::Deny } else { Cached::Allow },
            );
        }
    }
    if v.decision.is_none() {
        return;
    }
    let late = p.expired.load(Ordering::SeqCst) && g.fail == FAN_ALLOW;
    let sensor = match p.access {
        Access::Open => Part::ScriptGuard,
        Access::Exec => Part::Fanotify,
    };
    match v.plan {
        Plan::Allow => {}
        Plan::Stop if !late => {
            // Denied by a family rule without a digest (searched alone): the digest for the
            // event, now that the kernel has its answer.
            let by_family = v
                .decision
                .is_some_and(|d| d.selector == interdict_policy::SelectorKind::Contains);
            if digest.is_none() && by_family {
                if let Ok(f) = &file {
                    digest = f
                        .metadata()
                        .and_then(|m| shared.memo.hash_file(f, &m))
                        .ok()
                        .map(|(d, _)| d);
                }
            }
            let file = FileRef {
                path: crate::path_text(&path),
                sha256: digest.map(|h| h.to_string()),
                size: Some(p.key.size),
            };
            verdict::denied(
                shared,
                &v,
                p.access == Access::Open,
                p.pid,
                info.as_ref(),
                file,
            );
        }
        // Allowed by the deadline but banned, or a kill rule: kill what was started.
        Plan::Stop | Plan::Kill => {
            if let Some(i) = &info {
                let note = late.then(|| "decision missed its deadline; the exec was allowed (fail_mode = open), then killed".to_string());
                verdict::on_running(shared, sensor, i, &v, Plan::Kill, note);
            }
        }
        // Reported here, where the process is known even if it exits at once; the proc
        // connector leaves execs on marked mounts to this guard.
        Plan::Report | Plan::WouldEnforce => {
            if let Some(i) = &info {
                verdict::on_running(shared, sensor, i, &v, v.plan, None);
            }
        }
    }
}
