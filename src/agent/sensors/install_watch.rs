//! Installed software, live: the install roots are watched (inotify through the `notify` crate),
//! changes are debounced per package folder, and each banned package or binary is reported once
//! (`installed_detected`), with `installed_removed` when it goes away. A full rescan runs at
//! start-up, every `rescan_interval_s`, after every policy change, and at once when the watcher
//! reports an overflow or a lost watch, so that nothing missed while watching is missed for good.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use interdict_event::{EventKind, FileRef, Outcome, ProcessRef};
use notify::Watcher;

use super::fanotify::ScriptMarker;
use super::{Part, PartState, StartError};
use crate::agent::metrics::inc;
use crate::agent::shared::Shared;
use crate::agent::verdict;
use crate::inventory::hash::FileKey;
use crate::inventory::installed::{self, Found, Pass, Progress};
use crate::inventory::walk_state::WalkState;

/// True for the rescan requests that say the watcher lost events.
fn loses_events(why: &str) -> bool {
    why == "watcher overflow" || why == "watch error"
}

/// A request to the watcher thread.
#[derive(Debug)]
pub enum WatchMsg {
    /// Something changed at this path; `writing` when it is a file being written (created or
    /// modified, not yet closed), `closed` when a writer closed it.
    Changed(PathBuf, Write),
    /// Events were lost: rescan everything.
    Rescan(&'static str),
}

/// What a change says about a file's writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Created or written to: a writer may still have it open.
    Writing,
    /// A writer closed it.
    Closed,
    /// Anything else (rename, removal, attributes).
    Other,
}

/// The folder to re-examine for a changed path: the package it belongs to (`node_modules/<pkg>`,
/// `node_modules/@scope/<pkg>`, `<name>.dist-info`, an editor extension folder), else the path.
pub fn unit_of(path: &Path) -> PathBuf {
    let comps: Vec<_> = path.components().collect();
    for (i, c) in comps.iter().enumerate().rev() {
        let name = c.as_os_str().to_string_lossy();
        if name == "node_modules" && i + 1 < comps.len() {
            let first = comps[i + 1].as_os_str().to_string_lossy();
            let take = if first.starts_with('@') { i + 3 } else { i + 2 };
            return comps[..take.min(comps.len())].iter().collect();
        }
        if name.ends_with(".dist-info") || (i > 0 && comps[i - 1].as_os_str() == "extensions") {
            return comps[..=i].iter().collect();
        }
    }
    path.to_path_buf()
}

/// A changed unit as it really lies: its folder resolved (a path reported through a symlinked
/// folder names the same files twice), and dropped when that is outside every root. A unit whose
/// folder is gone stays as it is, so that its removal is seen.
fn real_unit(unit: &Path, roots: &[PathBuf]) -> Option<PathBuf> {
    let (Some(parent), Some(name)) = (unit.parent(), unit.file_name()) else {
        return Some(unit.to_path_buf());
    };
    match std::fs::canonicalize(parent) {
        Ok(real) if real == parent => Some(unit.to_path_buf()),
        Ok(real) => roots
            .iter()
            .any(|r| real.starts_with(r))
            .then(|| real.join(name)),
        Err(_) => Some(unit.to_path_buf()),
    }
}

/// The install roots that exist now (new homes appear, new prefixes get created).
pub fn roots_now(shared: &Shared) -> Vec<PathBuf> {
    let roots = if shared.config.install.roots.is_empty() {
        installed::default_roots(&crate::inventory::host::Accounts::load())
    } else {
        shared.config.install.roots.clone()
    };
    installed::normalize_roots(&roots, false).0
}

/// What has been reported as installed: (rule id, canonical path or package folder).
type Seen = HashMap<(String, PathBuf), Found>;

/// What was reported as installed, kept across restarts in `STATE_DIR/installs.json`, so that a
/// restart does not report again, as new, what is still there unchanged; and so that what went
/// away while the agent was stopped is reported gone.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Reported {
    /// The rule, as the event said.
    rule: interdict_event::RuleRef,
    /// The canonical file or package folder (the key, with the rule id).
    #[serde(with = "crate::fsutil::any_path")]
    canonical: PathBuf,
    /// The path reported.
    file: FileRef,
    /// The owner.
    owner: Option<ProcessRef>,
}

/// What the record of reported installs is made from, besides what this run reports.
#[derive(Debug, Default)]
struct Known {
    /// What earlier runs reported and this run has not looked at yet.
    earlier: HashMap<(String, PathBuf), Reported>,
    /// Finds whose event could not be queued (the event queue was full; counted in
    /// `event_drops`): left out of the record, so that the next run reports them.
    unqueued: HashSet<(String, PathBuf)>,
    /// The SHA-256 of the record as last written: an unchanged record is not written again.
    written: Option<[u8; 32]>,
}

fn reported_path(shared: &Shared) -> PathBuf {
    shared.config.agent.state_dir.join("installs.json")
}

/// What earlier runs reported; nothing when there is no record (a first run) or it is damaged
/// (then everything found is reported again, which loses nothing).
fn load_known(shared: &Shared) -> Known {
    use sha2::Digest as _;
    let path = reported_path(shared);
    let mut written = None;
    let list: Vec<Reported> = match std::fs::read(&path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(list) => {
                written = Some(sha2::Sha256::digest(&b).into());
                list
            }
            Err(e) => {
                tracing::warn!(
                    "{}: {e}; what is installed will be reported again",
                    path.display()
                );
                Vec::new()
            }
        },
        Err(_) => Vec::new(),
    };
    Known {
        earlier: list
            .into_iter()
            .map(|r| ((r.rule.id.clone(), r.canonical.clone()), r))
            .collect(),
        unqueued: HashSet::new(),
        written,
    }
}

/// Wait (at most 5 s) until the event log writer has taken every event queued so far: what is
/// recorded as reported must have reached the event log and the spool, or a crash right after
/// the record would lose it for good. False when it has not.
fn writer_caught_up(shared: &Shared) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &shared.metrics.c;
    let queued = c.events_queued.load(Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if c.events_written.load(Relaxed) + c.event_write_errors.load(Relaxed) >= queued {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Record what is reported as installed now (with what earlier runs reported and this run has
/// not looked at yet), once the events saying so are written. False when it was not recorded.
fn save_reported(shared: &Shared, seen: &Seen, known: &mut Known) -> bool {
    let active = shared.policy.active();
    let policy = &active.loaded.policy;
    let mut list: Vec<&Reported> = known.earlier.values().collect();
    let now: Vec<Reported> = seen
        .iter()
        .filter(|(k, _)| !known.unqueued.contains(*k))
        .map(|(_, f)| f)
        .filter(|f| f.decision.action != interdict_policy::Action::Allow)
        .map(|f| Reported {
            rule: verdict::rule_ref(policy, &f.decision, &f.facts),
            canonical: f.canonical.clone(),
            file: verdict::file_of(f, None),
            owner: verdict::owner_of(shared, f),
        })
        .collect();
    list.extend(now.iter());
    // (In a stable order, so that an unchanged record is seen to be unchanged.)
    list.sort_by(|a, b| (&a.rule.id, &a.canonical).cmp(&(&b.rule.id, &b.canonical)));
    let bytes = match serde_json::to_vec(&list) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("{}: {e}", reported_path(shared).display());
            return true;
        }
    };
    use sha2::Digest as _;
    let sum: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    if known.written == Some(sum) {
        // Unchanged: no event needs to be written before it.
        return true;
    }
    if !writer_caught_up(shared) {
        return false;
    }
    match crate::fsutil::write_atomic(&reported_path(shared), &bytes, 0o600) {
        Ok(()) => known.written = Some(sum),
        Err(e) => tracing::warn!("{}: {e}", reported_path(shared).display()),
    }
    true
}

/// Report gone what earlier runs reported and the first full rescan did not find.
fn report_known_gone(shared: &Shared, known: &mut Known) {
    for (_, r) in known.earlier.drain() {
        let mut e = shared.event(EventKind::InstalledRemoved);
        e.outcome = Some(Outcome::Reported);
        e.sensor = Some(Part::InstallScan.as_str().into());
        e.rule = Some(r.rule);
        e.file = Some(r.file);
        e.process = r.owner;
        shared.emit(e);
        inc(&shared.metrics.c.installs_removed);
    }
}

/// Start the watcher. Returns a sender for rescan requests (policy changes).
/// With `guard`, every banned script file found is marked for the script guard at once.
pub fn start(
    shared: Arc<Shared>,
    guard: Option<ScriptMarker>,
) -> Result<std::sync::mpsc::Sender<WatchMsg>, StartError> {
    let roots = roots_now(&shared);
    let (tx, rx) = channel::<WatchMsg>();
    let wtx = tx.clone();
    // No open or read-close events: with them, every read of any file under a watched root
    // (our own rescans included) would be queued to us. Creates, removes, renames, writes,
    // attribute changes (chmod +x) and the close of a written file are all we need.
    let kinds = notify::EventKindMask::CORE | notify::EventKindMask::ACCESS_CLOSE;
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => {
            if ev.need_rescan() {
                let _ = wtx.send(WatchMsg::Rescan("watcher overflow"));
            }
            if matches!(
                ev.kind,
                notify::EventKind::Access(
                    notify::event::AccessKind::Open(_)
                        | notify::event::AccessKind::Read
                        | notify::event::AccessKind::Close(notify::event::AccessMode::Read)
                )
            ) {
                return;
            }
            use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
            let w = match ev.kind {
                notify::EventKind::Create(CreateKind::File)
                | notify::EventKind::Modify(ModifyKind::Data(_)) => Write::Writing,
                notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => Write::Closed,
                _ => Write::Other,
            };
            for p in ev.paths {
                let _ = wtx.send(WatchMsg::Changed(p, w));
            }
        }
        Err(_) => {
            let _ = wtx.send(WatchMsg::Rescan("watch error"));
        }
    };
    let mut watcher = <notify::RecommendedWatcher as notify::Watcher>::new(
        handler,
        // Never into a symlinked folder: what it points at is not an install root, and would be
        // reported again under a second name.
        notify::Config::default()
            .with_event_kinds(kinds)
            .with_follow_symlinks(false),
    )
    .map_err(|e| StartError::Io {
        what: "inotify",
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut watched = 0;
    let mut blind = Blind::default();
    for r in &roots {
        let id = identity(r);
        if watcher.watch(r, notify::RecursiveMode::Recursive).is_ok() {
            watched += 1;
            blind.watched.insert(r.clone(), id);
        } else {
            blind.unwatched = true;
        }
    }
    shared.parts.set(
        Part::InstallWatch,
        PartState::Running,
        format!(
            "{watched} install root(s) watched, rescan every {} s",
            shared.config.install.rescan_interval_s
        ),
    );
    let s = shared.clone();
    std::thread::Builder::new()
        .name("install-watch".into())
        .spawn(move || run(s, rx, roots, watcher, guard, blind))
        .map_err(StartError::io("install watcher thread"))?;
    let _ = tx.send(WatchMsg::Rescan("start-up"));
    Ok(tx)
}

/// Changes waiting for the debounce, and the files still being written.
struct Pending {
    units: HashSet<PathBuf>,
    /// Files created or written to and not closed since.
    writing: HashSet<PathBuf>,
    last_change: Instant,
    /// Every path changed since the last rescan began: the folders holding them are read again
    /// by the next quick one.
    touched: HashSet<PathBuf>,
    /// The watcher lost events (overflow, a watch that failed) since the last full rescan began.
    lost: bool,
    /// A watch failed: some folder may never be watched.
    watch_failed: bool,
}

impl Pending {
    fn note(&mut self, p: PathBuf, w: Write) {
        match w {
            Write::Writing => {
                self.writing.insert(p.clone());
            }
            Write::Closed | Write::Other => {
                self.writing.remove(&p);
            }
        }
        // Installs write thousands of files: collect them per package folder.
        self.units.insert(unit_of(&p));
        self.touched.insert(p);
        self.last_change = Instant::now();
    }

    /// Take in every change already queued (a rescan is running anyway, so queued rescan
    /// requests are served by it; lost events are remembered, so that the next rescan is full).
    fn absorb(&mut self, rx: &Receiver<WatchMsg>) {
        while let Ok(m) = rx.try_recv() {
            match m {
                WatchMsg::Changed(p, w) => self.note(p, w),
                WatchMsg::Rescan(why) => {
                    self.lost |= loses_events(why);
                    self.watch_failed |= why == "watch error";
                }
            }
        }
    }

    fn retry(&mut self, again: Vec<PathBuf>) {
        if !again.is_empty() {
            self.units.extend(again);
            self.last_change = Instant::now();
        }
    }
}

fn run(
    shared: Arc<Shared>,
    rx: Receiver<WatchMsg>,
    mut roots: Vec<PathBuf>,
    mut watcher: notify::RecommendedWatcher,
    guard: Option<ScriptMarker>,
    blind: Blind,
) {
    let guard = guard.as_ref();
    let debounce = Duration::from_millis(shared.config.install.debounce_ms);
    let rescan_every = Duration::from_secs(shared.config.install.rescan_interval_s.max(1));
    let mut seen: Seen = HashMap::new();
    let mut known = load_known(&shared);
    let mut configs = load_configs(&shared);
    // What the watcher changed is recorded at most every 2 s (a rescan records at once).
    let mut unsaved: Option<Instant> = None;
    let mut pending = Pending {
        units: HashSet::new(),
        writing: HashSet::new(),
        last_change: Instant::now(),
        touched: HashSet::new(),
        lost: false,
        watch_failed: false,
    };
    let mut deferred: Deferred = HashMap::new();
    let mut next_rescan = Instant::now() + rescan_every;
    let mut walks = Walks::new(&shared, blind);
    // A rescan: changes queued before and during the walk are taken in, so that a file still
    // being written is left to the watcher rather than reported half-written. A quick one at
    // start-up is followed at once by a full one: what changed in place while the agent was
    // stopped is seen only by that.
    let mut full = |why: &str,
                    roots: &mut Vec<PathBuf>,
                    watcher: &mut notify::RecommendedWatcher,
                    seen: &mut Seen,
                    known: &mut Known,
                    pending: &mut Pending,
                    configs: &mut ConfigsSeen| {
        let mut why = why;
        loop {
            if loses_events(why) {
                // Closes may have been lost with the rest.
                pending.writing.clear();
                pending.lost = true;
                pending.watch_failed |= why == "watch error";
            }
            pending.absorb(&rx);
            watch_new_roots(&shared, roots, watcher, &mut walks.blind);
            let started = Instant::now();
            let pass = walks.begin(&shared, why, pending);
            let hashed_before = shared.metrics.c.install_hashed_bytes.load(Relaxed);
            let found = scan_paths(&shared, roots, Some(walks.request(pass)));
            pending.absorb(&rx);
            let settle = Settle {
                writing: &pending.writing,
                quiet: debounce,
                installing: std::cell::OnceCell::new(),
            };
            let again = rescan(&shared, found, (seen, known), why, &settle, guard);
            let hashed = shared.metrics.c.install_hashed_bytes.load(Relaxed) - hashed_before;
            walks.finish(&shared, pass, hashed, started);
            pending.retry(again);
            report_configs(&shared, configs, watcher, roots);
            if why != "start-up" || pass == Pass::Full {
                return;
            }
            why = "start-up verification";
        }
    };
    loop {
        if shared.shutdown.is_triggered() {
            if unsaved.is_some() {
                save_reported(&shared, &seen, &mut known);
            }
            // (Digests remembered since the last full pass.)
            save_hash_cache(&shared);
            shared
                .parts
                .set(Part::InstallWatch, PartState::Stopped, "shut down");
            return;
        }
        if unsaved.is_some_and(|t| t.elapsed() >= Duration::from_secs(2))
            && save_reported(&shared, &seen, &mut known)
        {
            unsaved = None;
        }
        let mut wait = if pending.units.is_empty() {
            Duration::from_millis(500).min(next_rescan.saturating_duration_since(Instant::now()))
        } else {
            debounce.saturating_sub(pending.last_change.elapsed())
        };
        if let Some(t) = configs.last_change {
            wait = wait.min(debounce.saturating_sub(t.elapsed()));
        }
        match rx.recv_timeout(wait) {
            Ok(WatchMsg::Changed(p, w)) => {
                if !configs.note(&p, &roots) {
                    pending.note(p, w);
                }
                continue;
            }
            Ok(WatchMsg::Rescan(why)) => {
                full(
                    why,
                    &mut roots,
                    &mut watcher,
                    &mut seen,
                    &mut known,
                    &mut pending,
                    &mut configs,
                );
                // (Recorded by the rescan; again later should the writer have lagged.)
                unsaved.get_or_insert_with(Instant::now);
                next_rescan = Instant::now() + rescan_every;
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !pending.units.is_empty() && pending.last_change.elapsed() >= debounce {
            let units: Vec<PathBuf> = pending
                .units
                .drain()
                .filter_map(|u| real_unit(&u, &roots))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            // (A close we never saw, lost in an overflow, leaves a path in `writing`: bounded by
            // the deferral rounds, and the set is emptied when events were lost.)
            let settle = Settle {
                writing: &pending.writing,
                quiet: debounce,
                installing: std::cell::OnceCell::new(),
            };
            let again = examine(
                &shared,
                &units,
                (&mut seen, &mut known),
                &mut deferred,
                &settle,
                guard,
            );
            unsaved.get_or_insert_with(Instant::now);
            pending.retry(again);
        }
        if configs.last_change.is_some_and(|t| t.elapsed() >= debounce) {
            configs.last_change = None;
            let due: Vec<PathBuf> = configs.due.drain().collect();
            report_config_files(&shared, &mut configs, &due);
        }
        if Instant::now() >= next_rescan {
            full(
                "periodic",
                &mut roots,
                &mut watcher,
                &mut seen,
                &mut known,
                &mut pending,
                &mut configs,
            );
            unsaved.get_or_insert_with(Instant::now);
            next_rescan = Instant::now() + rescan_every;
        }
    }
}

/// Roots that appeared since (a new user's home, a new prefix) are watched too.
fn watch_new_roots(
    shared: &Shared,
    roots: &mut Vec<PathBuf>,
    watcher: &mut notify::RecommendedWatcher,
    blind: &mut Blind,
) {
    for r in roots_now(shared) {
        if !roots.contains(&r) {
            let id = identity(&r);
            if watcher.watch(&r, notify::RecursiveMode::Recursive).is_ok() {
                blind.watched.insert(r.clone(), id);
                roots.push(r);
            }
        }
    }
}

/// A folder's device and inode.
fn identity(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Where the watcher cannot be trusted to have seen every write.
#[derive(Debug, Default)]
struct Blind {
    /// Each root as it was when its watch was set up: a root that is another folder now (a
    /// filesystem mounted over it, a folder renamed into its place) is watched no more.
    watched: HashMap<PathBuf, Option<(u64, u64)>>,
    /// Some root could not be watched at start-up.
    unwatched: bool,
}

impl Blind {
    /// Roots that a quick pass walks in full.
    fn roots(&self) -> Vec<PathBuf> {
        self.watched
            .iter()
            .filter(|(r, id)| id.is_none() || identity(r) != **id)
            .map(|(r, _)| r.clone())
            .collect()
    }
}

/// The install roots' walk state (`STATE_DIR/walkstate.bin`) and what decides whether a rescan
/// may be a quick one ([`Pass::Quick`]): after a restart (the state of the run before, made
/// under the same policy; a full pass follows at once), and between full passes while the
/// watcher has lost nothing (those come at least every `full_rescan_interval_s`). Every other
/// rescan is full: the first ever, after lost events, after a policy change.
struct Walks {
    state: WalkState,
    /// The digest of what the state file holds, so that an unchanged state is not written again.
    saved: Option<u64>,
    /// When the last full pass began.
    last_full: Option<Instant>,
    full_every: Duration,
    blind: Blind,
    /// Roots a quick pass walks in full (found at the start of each pass).
    full_under: Vec<PathBuf>,
    fingerprint: [u8; 32],
    /// The hash memo's change count when the hash cache was last written.
    cache_saved: Option<u64>,
}

impl Walks {
    /// The state the run before left (read at start-up, like the hash cache).
    fn new(shared: &Shared, blind: Blind) -> Walks {
        let state = match WalkState::load(&Self::path(shared)) {
            Ok(s) => Some(s),
            Err(crate::inventory::walk_state::StateError::Missing) => None,
            Err(e) => {
                tracing::warn!("{e}; the first rescan is a full one");
                None
            }
        };
        Walks {
            saved: state.as_ref().map(WalkState::digest),
            state: state.unwrap_or_default(),
            last_full: None,
            full_every: Duration::from_secs(shared.config.install.full_rescan_interval_s.max(1)),
            blind,
            full_under: Vec::new(),
            fingerprint: [0; 32],
            cache_saved: Some(shared.memo.changes()),
        }
    }

    fn path(shared: &Shared) -> PathBuf {
        shared.config.agent.state_dir.join("walkstate.bin")
    }

    /// Store the hash cache when the memo has learned anything since it was last stored.
    fn save_cache(&mut self, shared: &Shared) {
        let changes = shared.memo.changes();
        if self.cache_saved != Some(changes) {
            save_hash_cache(shared);
            self.cache_saved = Some(changes);
        }
    }

    /// Choose the pass for a rescan asked for because of `why`, and make the state ready for it.
    fn begin(&mut self, shared: &Shared, why: &str, pending: &mut Pending) -> Pass {
        for p in pending.touched.drain() {
            self.state.invalidate(&p);
        }
        // A folder whose watch failed is never watched: no quick periodic rescan any more.
        self.blind.unwatched |= std::mem::take(&mut pending.watch_failed);
        self.fingerprint = policy_fingerprint(shared);
        self.full_under = self.blind.roots();
        let same_policy = self.state.fingerprint == self.fingerprint && !self.state.dirs.is_empty();
        let quick = same_policy
            && match why {
                "start-up" => true,
                "periodic" => {
                    !pending.lost
                        && !self.blind.unwatched
                        && self
                            .last_full
                            .is_some_and(|t| t.elapsed() < self.full_every)
                }
                _ => false,
            };
        if quick {
            Pass::Quick
        } else {
            // From here on, the watcher's reports are what a later quick pass relies on.
            pending.lost = false;
            self.last_full = Some(Instant::now());
            Pass::Full
        }
    }

    fn request(&mut self, pass: Pass) -> installed::WalkRequest<'_> {
        installed::WalkRequest {
            state: &mut self.state,
            pass,
            fingerprint: self.fingerprint,
            full_under: &self.full_under,
        }
    }

    /// A rescan is done: record its time, and store the walk state and the hash cache when
    /// they changed.
    fn finish(&mut self, shared: &Shared, pass: Pass, hashed: u64, started: Instant) {
        let digest = self.state.digest();
        if self.saved != Some(digest) {
            let bytes = self.state.encode();
            match crate::fsutil::write_atomic(&Self::path(shared), &bytes, 0o600) {
                Ok(()) => self.saved = Some(digest),
                Err(e) => tracing::warn!("{}: {e}", Self::path(shared).display()),
            }
        }
        // Digests the other sensors remember are stored with the next full pass (or at
        // shutdown): a quick pass writes the cache only for what it read itself.
        if pass == Pass::Full || hashed > 0 {
            self.save_cache(shared);
        }
        let us = started.elapsed().as_micros() as u64;
        let m = &shared.metrics;
        use std::sync::atomic::Ordering::Relaxed;
        m.last_rescan_us.store(us, Relaxed);
        match pass {
            Pass::Full => m.last_full_rescan_us.store(us, Relaxed),
            Pass::Quick => {
                m.last_quick_rescan_us.store(us, Relaxed);
                inc(&m.c.install_quick_rescans);
            }
        }
        // Counted when done: a reader of `install_rescans` sees the rescan's results.
        inc(&m.c.install_rescans);
    }
}

/// Identifies what the install scan's findings depend on: this build, the policy text and its
/// hash lists, the learned digests and the exceptions granted.
fn policy_fingerprint(shared: &Shared) -> [u8; 32] {
    use sha2::Digest as _;
    let active = shared.policy.active();
    let mut h = sha2::Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(active.base.content_sha256.as_bytes());
    h.update(serde_json::to_vec(&shared.learner.set()).unwrap_or_default());
    h.update(serde_json::to_vec(&shared.policy.exceptions()).unwrap_or_default());
    h.finalize().into()
}

/// Look at `paths` (whole trees); with a walk state, a rescan of the roots (see
/// [`installed::Pass`]).
fn scan_paths(
    shared: &Shared,
    paths: &[PathBuf],
    walk: Option<installed::WalkRequest<'_>>,
) -> Vec<Found> {
    let active = shared.policy.active();
    let progress = Progress::default();
    let existing: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .cloned()
        .collect();
    let policy = &active.loaded.policy;
    let (accounts, host) = (&shared.accounts, &shared.origin.hostname);
    let found = match walk {
        Some(w) => installed::scan_walk(
            policy,
            &existing,
            w,
            accounts,
            host,
            &shared.memo,
            &progress,
        ),
        None => installed::scan(policy, &existing, accounts, host, &shared.memo, &progress),
    };
    shared.metrics.c.install_hashed_bytes.fetch_add(
        progress
            .hashed_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        std::sync::atomic::Ordering::Relaxed,
    );
    // A digest learned on this host never names a system or package-owned file.
    let packages = shared.learner.packages();
    let policy = &active.loaded.policy;
    found
        .found
        .into_iter()
        .filter(|f| {
            let misfire =
                crate::policy::learned::misfires(policy, &f.decision, &f.canonical, &packages);
            if let (true, Some(d)) = (misfire, digest_of(f)) {
                shared
                    .learner
                    .misfired(d, f.canonical.clone(), &shared.metrics);
            }
            !misfire
        })
        .collect()
}

/// A file still open for writing (created or written to, no close seen yet) or written to within
/// the debounce is still being written (npm, an installer): its digest would be that of a part.
/// Such a file is looked at again after the next quiet period, for at most `DEFER_ROUNDS`
/// rounds (30 s with the default debounce); one still being written after that is reported as
/// it is, and reported again with its new digest once it changes.
const DEFER_ROUNDS: u32 = 60;

/// A file inside a package folder while a package manager is installing is part of an install
/// that is not finished (npm lays down a placeholder `bin/claude.exe` and replaces it in the
/// package's postinstall, seconds later): it waits until the installer is done, for at most
/// this long (a process that only pretends to install cannot hide a file for longer).
const INSTALLER_WAIT: Duration = Duration::from_secs(600);

/// What makes a found file wait: files being written, and installers at work.
struct Settle<'a> {
    writing: &'a HashSet<PathBuf>,
    quiet: Duration,
    /// Whether a package manager is installing now: looked up once, when first asked.
    installing: std::cell::OnceCell<bool>,
}

impl Settle<'_> {
    /// Still being written (by any writer).
    fn writing(&self, f: &Found) -> bool {
        if f.package.is_some() {
            return false;
        }
        // A symlink is whole once it exists (its creation is never followed by a close): only
        // what it points at can be half-written.
        let link = std::fs::symlink_metadata(&f.path).is_ok_and(|m| m.file_type().is_symlink());
        if (!link && self.writing.contains(&f.path)) || self.writing.contains(&f.canonical) {
            return true;
        }
        std::fs::metadata(&f.canonical)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().map_or(true, |age| age < self.quiet))
            .unwrap_or(false)
    }

    /// Part of a package an installer is still laying down.
    fn installing(&self, f: &Found) -> bool {
        f.package.is_none()
            && unit_of(&f.path) != f.path
            && *self.installing.get_or_init(installer_running)
    }
}

/// True when a package manager is installing something now: a process whose command line
/// names npm, pnpm, yarn, bun, pip, uv or pipx followed by an installing verb (npm sets its
/// process title to `npm install ...`).
pub fn installer_running() -> bool {
    const MANAGERS: &[&str] = &[
        "npm",
        "npm-cli.js",
        "pnpm",
        "pnpm.cjs",
        "yarn",
        "yarn.js",
        "bun",
        "pip",
        "pip3",
        "uv",
        "pipx",
    ];
    const VERBS: &[&str] = &[
        "install", "i", "add", "ci", "update", "up", "upgrade", "exec", "x", "dlx", "sync",
    ];
    super::sweep::all_pids().into_iter().any(|pid| {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let text = String::from_utf8_lossy(&raw);
        let words: Vec<&str> = text
            .split(['\0', ' '])
            .filter(|w| !w.is_empty())
            .take(6)
            .collect();
        words.iter().enumerate().any(|(i, w)| {
            let name = w.rsplit('/').next().unwrap_or(w);
            MANAGERS.contains(&name) && words[i + 1..].iter().any(|v| VERBS.contains(v))
        })
    })
}

fn digest_of(f: &Found) -> Option<interdict_policy::Sha256> {
    f.facts.exe_sha256.or(f.facts.script_sha256)
}

/// The size that belongs to the digest found: the file must still be the one that was hashed
/// (its identity is the one the digest was remembered for). `Err` when it changed since — it
/// is looked at again rather than reported with a digest and a size of two different files.
fn size_of(shared: &Shared, f: &Found) -> Result<Option<u64>, ()> {
    if f.package.is_some() {
        return Ok(None);
    }
    let Ok(meta) = std::fs::metadata(&f.canonical) else {
        return Ok(None);
    };
    match digest_of(f) {
        None => Ok(Some(meta.len())),
        Some(d) if shared.memo.get(&FileKey::of(&meta)) == Some(d) => Ok(Some(meta.len())),
        Some(_) => Err(()),
    }
}

/// How long each unit has waited, and since when.
type Deferred = HashMap<PathBuf, (u32, Instant)>;

/// Re-examine changed package folders: report what is new, and what is gone. Returns the units
/// to look at again (files still being written, installs not finished).
fn examine(
    shared: &Shared,
    units: &[PathBuf],
    (seen, known): (&mut Seen, &mut Known),
    deferred: &mut Deferred,
    settle: &Settle<'_>,
    guard: Option<&ScriptMarker>,
) -> Vec<PathBuf> {
    let found = scan_paths(shared, units, None);
    let mut now: HashSet<(String, PathBuf)> = HashSet::new();
    let mut again: HashSet<PathBuf> = HashSet::new();
    for f in found {
        let key = key_of(shared, &f);
        now.insert(key.clone());
        let unit = units.iter().find(|u| f.path.starts_with(u)).cloned();
        if let Some(u) = &unit {
            let (rounds, since) = deferred.get(u).copied().unwrap_or((0, Instant::now()));
            let wait = (settle.writing(&f) && rounds < DEFER_ROUNDS)
                || (settle.installing(&f) && since.elapsed() < INSTALLER_WAIT);
            if wait {
                again.insert(u.clone());
                continue;
            }
        }
        if is_news(seen, known, &key, &f) {
            match detected(shared, &f, guard, Part::InstallWatch) {
                Err(()) => {
                    if let Some(u) = unit {
                        again.insert(u);
                    }
                    continue;
                }
                Ok(true) => {
                    known.unqueued.remove(&key);
                }
                Ok(false) => {
                    known.unqueued.insert(key.clone());
                }
            }
            seen.insert(key, f);
        } else {
            // Reported before, by this run or (unchanged) an earlier one.
            seen.entry(key).or_insert(f);
        }
    }
    for u in units {
        if again.contains(u) {
            let e = deferred.entry(u.clone()).or_insert((0, Instant::now()));
            e.0 += 1;
        } else {
            deferred.remove(u);
        }
    }
    // Anything reported under these folders that is no longer found has gone.
    report_gone(shared, seen, Part::InstallWatch, |k| {
        units.iter().any(|u| k.1.starts_with(u)) && !now.contains(k)
    });
    again.into_iter().collect()
}

/// AI-agent configuration files reported (by this run or an earlier one): canonical path → what
/// they declared (the JSON of the event's message).
#[derive(Debug, Default)]
struct ConfigsSeen {
    reported: HashMap<PathBuf, String>,
    /// Reported since the record was last written.
    unsaved: bool,
    /// Folders watched (not recursively) for changes to configuration files: the homes searched
    /// and the folder of every configuration file found.
    watched: HashSet<PathBuf>,
    /// Files changed in those folders, looked at after the debounce.
    due: HashSet<PathBuf>,
    last_change: Option<Instant>,
}

impl ConfigsSeen {
    /// A change in a watched configuration folder (outside the install roots): looked at after
    /// the debounce. False for any other path.
    fn note(&mut self, p: &Path, roots: &[PathBuf]) -> bool {
        let watched = p.parent().is_some_and(|d| self.watched.contains(d));
        if !watched || roots.iter().any(|r| p.starts_with(r)) {
            return false;
        }
        self.due.insert(p.to_path_buf());
        self.last_change = Some(Instant::now());
        true
    }
}

/// The AI-agent configuration files the policy's `configs` name, looked for at start-up and at
/// each rescan in the homes of `[install] config_homes` (unset: every user's home and the
/// absolute globs): a `config_detected` for each one not reported before (by this run or, as
/// recorded in `STATE_DIR/configs.json`, an earlier one) or whose declarations changed (not for
/// a file rewritten with the same servers, as `~/.claude.json` is all the time). Between
/// rescans, the homes searched and the folder of each file found are watched (not recursively):
/// a change there is looked at after the debounce; a file in a new project folder waits for the
/// next rescan.
fn report_configs(
    shared: &Shared,
    reported: &mut ConfigsSeen,
    watcher: &mut notify::RecommendedWatcher,
    roots: &[PathBuf],
) {
    let active = shared.policy.active();
    let policy = &active.loaded.policy;
    if !policy.has_configs() {
        return;
    }
    let (accounts, scope) = config_scope(shared);
    let found = installed::scan_with(
        policy,
        &[],
        Some(&scope),
        &accounts,
        &shared.origin.hostname,
        &shared.memo,
        &Progress::default(),
    );
    // Changes to these files are seen between rescans: their folders, and the homes (where
    // `~/.claude.json` and its like are created), are watched.
    let mut folders: Vec<PathBuf> = scope.search.clone();
    folders.extend(
        found
            .configs
            .iter()
            .filter_map(|c| c.path.parent().map(Path::to_path_buf)),
    );
    for d in folders {
        let under_root = roots.iter().any(|r| d.starts_with(r));
        if !under_root
            && !reported.watched.contains(&d)
            && watcher
                .watch(&d, notify::RecursiveMode::NonRecursive)
                .is_ok()
        {
            reported.watched.insert(d);
        }
    }
    record_configs(shared, reported, found.configs);
}

/// The accounts, and where configuration files are looked for.
fn config_scope(shared: &Shared) -> (crate::inventory::host::Accounts, installed::ConfigScope) {
    let accounts = crate::inventory::host::Accounts::load();
    let (search, absolute) = match &shared.config.install.config_homes {
        Some(h) => (h.clone(), false),
        None => (accounts.homes(), true),
    };
    let mut homes = accounts.homes();
    homes.extend(search.iter().cloned());
    let scope = installed::ConfigScope {
        homes,
        search,
        absolute,
    };
    (accounts, scope)
}

/// Configuration files that changed in a watched folder: each reported if it is one the
/// policy's `configs` name and what it declares is new.
fn report_config_files(shared: &Shared, reported: &mut ConfigsSeen, paths: &[PathBuf]) {
    let active = shared.policy.active();
    let policy = &active.loaded.policy;
    let (accounts, scope) = config_scope(shared);
    let found = paths
        .iter()
        .filter_map(|p| {
            installed::config_file(policy, p, &scope, &accounts, &shared.origin.hostname)
                .ok()
                .flatten()
        })
        .collect();
    record_configs(shared, reported, found);
}

/// Report each configuration file not reported before with what it declares now, and record
/// what was reported.
fn record_configs(shared: &Shared, reported: &mut ConfigsSeen, found: Vec<installed::ConfigFound>) {
    for c in found {
        let declared = serde_json::to_string(&c.config).unwrap_or_default();
        if reported.reported.get(&c.canonical) == Some(&declared) {
            continue;
        }
        let meta = std::fs::metadata(&c.canonical).ok();
        let file = FileRef {
            path: crate::path_text(&c.path),
            sha256: shared
                .memo
                .hash_path(&c.canonical, false)
                .ok()
                .map(|d| d.to_string()),
            size: meta.map(|m| m.len()),
        };
        if verdict::config_detected(shared, &c, file, Part::InstallScan) {
            reported.reported.insert(c.canonical.clone(), declared);
            reported.unsaved = true;
        }
    }
    // (Recorded once the events saying so are written; else at the next rescan.)
    if reported.unsaved && writer_caught_up(shared) {
        reported.unsaved = false;
        let list: Vec<ConfigRecord> = reported
            .reported
            .iter()
            .map(|(path, declared)| ConfigRecord {
                path: path.clone(),
                declared: declared.clone(),
            })
            .collect();
        let written = serde_json::to_vec(&list)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::fsutil::write_atomic(&configs_path(shared), &b, 0o600));
        if let Err(e) = written {
            tracing::warn!("{}: {e}", configs_path(shared).display());
        }
    }
}

/// One configuration file reported, as recorded in `STATE_DIR/configs.json`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ConfigRecord {
    /// The canonical file.
    #[serde(with = "crate::fsutil::any_path")]
    path: PathBuf,
    /// What it declared (the event's message).
    declared: String,
}

fn configs_path(shared: &Shared) -> PathBuf {
    shared.config.agent.state_dir.join("configs.json")
}

/// The configuration files earlier runs reported, with what they declared; nothing when there is
/// no record or it is damaged (then they are reported again, which loses nothing).
fn load_configs(shared: &Shared) -> ConfigsSeen {
    let path = configs_path(shared);
    let Ok(bytes) = std::fs::read(&path) else {
        return ConfigsSeen::default();
    };
    match serde_json::from_slice::<Vec<ConfigRecord>>(&bytes) {
        Ok(list) => ConfigsSeen {
            reported: list.into_iter().map(|r| (r.path, r.declared)).collect(),
            ..ConfigsSeen::default()
        },
        Err(e) => {
            tracing::warn!(
                "{}: {e}; configuration files will be reported again",
                path.display()
            );
            ConfigsSeen::default()
        }
    }
}

/// A full rescan of every root.
fn rescan(
    shared: &Shared,
    found: Vec<Found>,
    (seen, known): (&mut Seen, &mut Known),
    why: &str,
    settle: &Settle<'_>,
    guard: Option<&ScriptMarker>,
) -> Vec<PathBuf> {
    tracing::debug!("install rescan ({why})");
    let mut now: HashMap<(String, PathBuf), Found> = HashMap::new();
    let mut again = HashSet::new();
    for f in found {
        let key = key_of(shared, &f);
        if settle.writing(&f) || settle.installing(&f) {
            // Still being written: looked at by the watcher once it is done. What was reported
            // before under this key stays reported meanwhile (and is no news).
            again.insert(unit_of(&f.path));
            // Reported by an earlier run: the watcher decides once it is written.
            known.earlier.remove(&key);
            if let Some(old) = seen.get(&key) {
                now.insert(key, old.clone());
            }
            continue;
        }
        now.insert(key, f);
    }
    let mut changed = Vec::new();
    for (k, f) in &now {
        if !is_news(seen, known, k, f) {
            continue;
        }
        match detected(shared, f, guard, Part::InstallScan) {
            Err(()) => {
                again.insert(unit_of(&f.path));
                changed.push(k.clone());
            }
            Ok(true) => {
                known.unqueued.remove(k);
            }
            Ok(false) => {
                known.unqueued.insert(k.clone());
            }
        }
    }
    for k in changed {
        // Not reported (it changed since it was hashed): keep what was reported before.
        now.remove(&k);
        if let Some(old) = seen.get(&k) {
            now.insert(k, old.clone());
        }
    }
    report_gone(shared, seen, Part::InstallScan, |k| !now.contains_key(k));
    // What earlier runs reported and is not there any more went while the agent was stopped.
    report_known_gone(shared, known);
    *seen = now;
    if !save_reported(shared, seen, known) {
        tracing::debug!("installs record not written yet: the event writer lags");
    }
    again.into_iter().collect()
}

/// New under this key, or reported before with other content (reported while still being
/// written, or rewritten in place since): worth an `installed_detected`. What an earlier run
/// reported and is still there unchanged is not news.
fn is_news(seen: &Seen, known: &mut Known, key: &(String, PathBuf), f: &Found) -> bool {
    match seen.get(key) {
        None => match known.earlier.remove(key) {
            Some(r) => r.file.sha256 != digest_of(f).map(|d| d.to_string()),
            None => true,
        },
        Some(old) => digest_of(f).is_some() && digest_of(f) != digest_of(old),
    }
}

/// A banned install found: guard it first when it is a script (so that the event announcing
/// it means it is guarded), then hand it to the verdict. `Err` when the file changed since it
/// was hashed (looked at again later).
fn detected(
    shared: &Shared,
    f: &Found,
    guard: Option<&ScriptMarker>,
    sensor: Part,
) -> Result<bool, ()> {
    let size = size_of(shared, f)?;
    mark_banned(shared, f, guard);
    Ok(verdict::installed(shared, f, size, false, sensor))
}

/// Report as removed, and forget, what was reported under the keys that are `gone`.
fn report_gone(
    shared: &Shared,
    seen: &mut Seen,
    sensor: Part,
    gone: impl Fn(&(String, PathBuf)) -> bool,
) {
    let gone: Vec<_> = seen.keys().filter(|k| gone(k)).cloned().collect();
    for k in gone {
        if let Some(f) = seen.remove(&k) {
            verdict::installed(shared, &f, None, true, sensor);
        }
    }
}

/// A banned file found installed: deny its opens from now on — an interpreter script (any rule
/// but `allow`: the script guard), or a program a rule stops (so that neither the dynamic
/// loader nor a copy can read it). A mark that fails is counted (`script_mark_failures`).
fn mark_banned(shared: &Shared, f: &Found, guard: Option<&ScriptMarker>) {
    let Some(g) = guard else { return };
    if f.package.is_some() || f.decision.action == interdict_policy::Action::Allow {
        return;
    }
    let target = if f.facts.script_path.is_some() {
        Some(&f.canonical)
    } else {
        let active = shared.policy.active();
        let plan = verdict::plan(&active.loaded.policy, Some(&f.decision), shared.today());
        (plan == verdict::Plan::Stop).then_some(&f.canonical)
    };
    if let Some(t) = target {
        if g.mark(t).is_err() {
            inc(&shared.metrics.c.script_mark_failures);
        }
    }
}

/// Where the persistent hash cache lives.
pub fn hash_cache_path(shared: &Shared) -> PathBuf {
    shared.config.agent.state_dir.join("hashcache.bin")
}

/// Write the digests known so far to the persistent cache.
pub fn save_hash_cache(shared: &Shared) {
    if let Err(e) =
        crate::inventory::hash_cache::save(&hash_cache_path(shared), &shared.memo.entries())
    {
        tracing::warn!("hash cache not saved: {e}");
    }
}

/// Load the persistent cache into the shared memo; a damaged one is counted and ignored.
pub fn load_hash_cache(shared: &Shared) {
    match crate::inventory::hash_cache::load(&hash_cache_path(shared)) {
        Ok(entries) => shared.memo.preload(entries),
        Err(crate::inventory::hash_cache::CacheError::Missing) => {}
        Err(e) => {
            inc(&shared.metrics.c.hash_cache_rejected);
            tracing::warn!("{e}; it will be rebuilt");
        }
    }
}

fn key_of(shared: &Shared, f: &Found) -> (String, PathBuf) {
    let active = shared.policy.active();
    (
        active.loaded.policy.rule(&f.decision).id.clone(),
        f.canonical.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_grouped_by_package_folder() {
        assert_eq!(
            unit_of(Path::new(
                "/p/lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe"
            )),
            PathBuf::from("/p/lib/node_modules/@anthropic-ai/claude-code")
        );
        assert_eq!(
            unit_of(Path::new("/p/node_modules/cline/dist/x.js")),
            PathBuf::from("/p/node_modules/cline")
        );
        assert_eq!(
            unit_of(Path::new(
                "/v/site-packages/aider_chat-0.86.1.dist-info/RECORD"
            )),
            PathBuf::from("/v/site-packages/aider_chat-0.86.1.dist-info")
        );
        assert_eq!(
            unit_of(Path::new(
                "/h/.vscode/extensions/anthropic.claude-code-2.0.1/resources/x"
            )),
            PathBuf::from("/h/.vscode/extensions/anthropic.claude-code-2.0.1")
        );
        assert_eq!(
            unit_of(Path::new("/h/.local/bin/claude")),
            PathBuf::from("/h/.local/bin/claude")
        );
    }
}
