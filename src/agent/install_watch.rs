//! Installed software, live: the install roots are watched (inotify through the `notify` crate),
//! changes are debounced per package folder, and each banned package or binary is reported once
//! (`installed_detected`), with `installed_removed` when it goes away. A full rescan runs at
//! start-up, every `rescan_interval_s`, after every policy change, and at once when the watcher
//! reports an overflow or a lost watch, so that nothing missed while watching is missed for good.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use interdict_event::{EventKind, FileRef, Outcome, ProcessRef};
use notify::Watcher;

use super::judge;
use super::metrics::inc;
use super::state::Shared;
use crate::installed::{self, Found, Progress};

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
fn roots_now(shared: &Shared) -> Vec<PathBuf> {
    let roots = if shared.config.install_roots.is_empty() {
        installed::default_roots(&crate::host::Accounts::load())
    } else {
        shared.config.install_roots.clone()
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
}

fn reported_path(shared: &Shared) -> PathBuf {
    shared.config.state_dir.join("installs.json")
}

/// What earlier runs reported; nothing when there is no record (a first run) or it is damaged
/// (then everything found is reported again, which loses nothing).
fn load_known(shared: &Shared) -> Known {
    let path = reported_path(shared);
    let list: Vec<Reported> = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(
                "{}: {e}; what is installed will be reported again",
                path.display()
            );
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    Known {
        earlier: list
            .into_iter()
            .map(|r| ((r.rule.id.clone(), r.canonical.clone()), r))
            .collect(),
        unqueued: HashSet::new(),
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
fn save_reported(shared: &Shared, seen: &Seen, known: &Known) -> bool {
    if !writer_caught_up(shared) {
        return false;
    }
    let active = shared.active.load_full();
    let policy = &active.loaded.policy;
    let mut list: Vec<&Reported> = known.earlier.values().collect();
    let now: Vec<Reported> = seen
        .iter()
        .filter(|(k, _)| !known.unqueued.contains(*k))
        .map(|(_, f)| f)
        .filter(|f| f.decision.action != interdict_policy::Action::Allow)
        .map(|f| Reported {
            rule: judge::rule_ref(policy, &f.decision, &f.facts),
            canonical: f.canonical.clone(),
            file: file_of(f, None),
            owner: owner_of(shared, f),
        })
        .collect();
    list.extend(now.iter());
    let bytes = serde_json::to_vec(&list).expect("serializable");
    if let Err(e) = crate::fsutil::write_atomic(&reported_path(shared), &bytes, 0o600) {
        tracing::warn!("{}: {e}", reported_path(shared).display());
    }
    true
}

/// Report gone what earlier runs reported and the first full rescan did not find.
fn report_known_gone(shared: &Shared, known: &mut Known) {
    for (_, r) in known.earlier.drain() {
        let mut e = shared.event(EventKind::InstalledRemoved);
        e.outcome = Some(Outcome::Reported);
        e.sensor = Some(interdict_event::INSTALL_SCAN.into());
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
    guard: Option<super::fanotify::ScriptMarker>,
) -> Result<std::sync::mpsc::Sender<WatchMsg>, String> {
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
    .map_err(|e| format!("inotify: {e}"))?;
    let mut watched = 0;
    for r in &roots {
        if watcher.watch(r, notify::RecursiveMode::Recursive).is_ok() {
            watched += 1;
        }
    }
    shared.set_sensor(
        "install_watch",
        "running",
        format!(
            "{watched} install root(s) watched, rescan every {} s",
            shared.config.rescan_interval_s
        ),
    );
    let s = shared.clone();
    std::thread::Builder::new()
        .name("install-watch".into())
        .spawn(move || run(s, rx, roots, watcher, guard))
        .map_err(|e| e.to_string())?;
    let _ = tx.send(WatchMsg::Rescan("start-up"));
    Ok(tx)
}

/// Changes waiting for the debounce, and the files still being written.
struct Pending {
    units: HashSet<PathBuf>,
    /// Files created or written to and not closed since.
    writing: HashSet<PathBuf>,
    last_change: Instant,
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
        self.last_change = Instant::now();
    }

    /// Take in every change already queued (a rescan is running anyway, so queued rescan
    /// requests are served by it).
    fn absorb(&mut self, rx: &Receiver<WatchMsg>) {
        while let Ok(m) = rx.try_recv() {
            if let WatchMsg::Changed(p, w) = m {
                self.note(p, w);
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
    guard: Option<super::fanotify::ScriptMarker>,
) {
    let guard = guard.as_ref();
    let debounce = Duration::from_millis(shared.config.install_debounce_ms);
    let rescan_every = Duration::from_secs(shared.config.rescan_interval_s.max(1));
    let mut seen: Seen = HashMap::new();
    let mut known = load_known(&shared);
    // What the watcher changed is recorded at most every 2 s (a rescan records at once).
    let mut unsaved: Option<Instant> = None;
    let mut pending = Pending {
        units: HashSet::new(),
        writing: HashSet::new(),
        last_change: Instant::now(),
    };
    let mut deferred: HashMap<PathBuf, u32> = HashMap::new();
    let mut next_rescan = Instant::now() + rescan_every;
    // A full rescan: changes queued before and during the walk are taken in, so that a file
    // still being written is left to the watcher rather than reported half-written.
    let full = |why: &str,
                roots: &mut Vec<PathBuf>,
                watcher: &mut notify::RecommendedWatcher,
                seen: &mut Seen,
                known: &mut Known,
                pending: &mut Pending| {
        if why == "watcher overflow" || why == "watch error" {
            // Closes may have been lost with the rest.
            pending.writing.clear();
        }
        pending.absorb(&rx);
        watch_new_roots(&shared, roots, watcher);
        let started = Instant::now();
        let found = scan_paths(&shared, roots);
        pending.absorb(&rx);
        let again = rescan(
            &shared,
            found,
            (seen, known),
            why,
            (&pending.writing, debounce),
            started,
            guard,
        );
        pending.retry(again);
    };
    loop {
        if shared.shutdown.is_triggered() {
            if unsaved.is_some() {
                save_reported(&shared, &seen, &known);
            }
            shared.set_sensor("install_watch", "stopped", "shut down");
            return;
        }
        if unsaved.is_some_and(|t| t.elapsed() >= Duration::from_secs(2))
            && save_reported(&shared, &seen, &known)
        {
            unsaved = None;
        }
        let wait = if pending.units.is_empty() {
            Duration::from_millis(500).min(next_rescan.saturating_duration_since(Instant::now()))
        } else {
            debounce.saturating_sub(pending.last_change.elapsed())
        };
        match rx.recv_timeout(wait) {
            Ok(WatchMsg::Changed(p, w)) => {
                pending.note(p, w);
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
            let again = examine(
                &shared,
                &units,
                (&mut seen, &mut known),
                &mut deferred,
                (&pending.writing, debounce),
                guard,
            );
            unsaved.get_or_insert_with(Instant::now);
            pending.retry(again);
        }
        if Instant::now() >= next_rescan {
            full(
                "periodic",
                &mut roots,
                &mut watcher,
                &mut seen,
                &mut known,
                &mut pending,
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
) {
    for r in roots_now(shared) {
        if !roots.contains(&r) && watcher.watch(&r, notify::RecursiveMode::Recursive).is_ok() {
            roots.push(r);
        }
    }
}

fn scan_paths(shared: &Shared, paths: &[PathBuf]) -> Vec<Found> {
    let active = shared.active.load_full();
    let progress = Progress::default();
    let existing: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .cloned()
        .collect();
    let found = installed::scan(
        &active.loaded.policy,
        &existing,
        &shared.accounts,
        &shared.origin.hostname,
        &shared.memo,
        &progress,
    );
    shared.metrics.c.install_hashed_bytes.fetch_add(
        progress
            .hashed_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        std::sync::atomic::Ordering::Relaxed,
    );
    found.found
}

/// A file still open for writing (created or written to, no close seen yet) or written to within
/// the debounce is still being written (npm, an installer): its digest would be that of a part.
/// Such a file is looked at again after the next quiet period, for at most `DEFER_ROUNDS`
/// rounds (30 s with the default debounce); one still being written after that is reported as
/// it is, and reported again with its new digest once it changes.
const DEFER_ROUNDS: u32 = 60;

fn settling(f: &Found, (writing, settle): (&HashSet<PathBuf>, Duration)) -> bool {
    if f.package.is_some() {
        return false;
    }
    if writing.contains(&f.path) || writing.contains(&f.canonical) {
        return true;
    }
    std::fs::metadata(&f.canonical)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().map_or(true, |age| age < settle))
        .unwrap_or(false)
}

fn digest_of(f: &Found) -> Option<interdict_policy::Sha256> {
    f.facts.exe_sha256.or(f.facts.script_sha256)
}

/// Re-examine changed package folders: report what is new, and what is gone. Returns the units
/// to look at again (files still being written).
fn examine(
    shared: &Shared,
    units: &[PathBuf],
    (seen, known): (&mut Seen, &mut Known),
    deferred: &mut HashMap<PathBuf, u32>,
    settle: (&HashSet<PathBuf>, Duration),
    guard: Option<&super::fanotify::ScriptMarker>,
) -> Vec<PathBuf> {
    let found = scan_paths(shared, units);
    let mut now: HashSet<(String, PathBuf)> = HashSet::new();
    let mut again: HashSet<PathBuf> = HashSet::new();
    for f in found {
        let key = key_of(shared, &f);
        now.insert(key.clone());
        let unit = units.iter().find(|u| f.path.starts_with(u)).cloned();
        if let Some(u) = &unit {
            if settling(&f, settle) && deferred.get(u).copied().unwrap_or(0) < DEFER_ROUNDS {
                again.insert(u.clone());
                continue;
            }
        }
        if is_news(seen, known, &key, &f) {
            if detected(shared, &f, guard, "install_watch") {
                known.unqueued.remove(&key);
            } else {
                known.unqueued.insert(key.clone());
            }
            seen.insert(key, f);
        } else {
            // Reported before, by this run or (unchanged) an earlier one.
            seen.entry(key).or_insert(f);
        }
    }
    for u in units {
        if again.contains(u) {
            *deferred.entry(u.clone()).or_insert(0) += 1;
        } else {
            deferred.remove(u);
        }
    }
    // Anything reported under these folders that is no longer found has gone.
    report_gone(shared, seen, "install_watch", |k| {
        units.iter().any(|u| k.1.starts_with(u)) && !now.contains(k)
    });
    again.into_iter().collect()
}

/// A full rescan of every root.
fn rescan(
    shared: &Shared,
    found: Vec<Found>,
    (seen, known): (&mut Seen, &mut Known),
    why: &str,
    settle: (&HashSet<PathBuf>, Duration),
    started: Instant,
    guard: Option<&super::fanotify::ScriptMarker>,
) -> Vec<PathBuf> {
    tracing::debug!("install rescan ({why})");
    let mut now: HashMap<(String, PathBuf), Found> = HashMap::new();
    let mut again = HashSet::new();
    for f in found {
        let key = key_of(shared, &f);
        if settling(&f, settle) {
            // Still being written: looked at by the watcher once it is done. What was reported
            // before under this key stays reported meanwhile.
            again.insert(unit_of(&f.path));
            // Reported by an earlier run: the watcher decides once it is written.
            known.earlier.remove(&key);
            if let Some(old) = seen.remove(&key) {
                now.insert(key, old);
            }
            continue;
        }
        now.insert(key, f);
    }
    let scan = interdict_event::INSTALL_SCAN;
    for (k, f) in &now {
        if is_news(seen, known, k, f) {
            if detected(shared, f, guard, scan) {
                known.unqueued.remove(k);
            } else {
                known.unqueued.insert(k.clone());
            }
        }
    }
    report_gone(shared, seen, scan, |k| !now.contains_key(k));
    // What earlier runs reported and is not there any more went while the agent was stopped.
    report_known_gone(shared, known);
    *seen = now;
    if !save_reported(shared, seen, known) {
        tracing::debug!("installs record not written yet: the event writer lags");
    }
    save_hash_cache(shared);
    shared.metrics.last_rescan_us.store(
        started.elapsed().as_micros() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    // Counted when done: a reader of `install_rescans` sees the rescan's results.
    inc(&shared.metrics.c.install_rescans);
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

/// Report a banned install, and guard it when it is a script.
fn detected(
    shared: &Shared,
    f: &Found,
    guard: Option<&super::fanotify::ScriptMarker>,
    sensor: &str,
) -> bool {
    let queued = report(shared, f, EventKind::InstalledDetected, sensor);
    mark_script(f, guard);
    queued
}

/// Report as removed, and forget, what was reported under the keys that are `gone`.
fn report_gone(
    shared: &Shared,
    seen: &mut Seen,
    sensor: &str,
    gone: impl Fn(&(String, PathBuf)) -> bool,
) {
    let gone: Vec<_> = seen.keys().filter(|k| gone(k)).cloned().collect();
    for k in gone {
        if let Some(f) = seen.remove(&k) {
            report(shared, &f, EventKind::InstalledRemoved, sensor);
        }
    }
}

/// A banned interpreter script found installed: deny its opens from now on.
fn mark_script(f: &Found, guard: Option<&super::fanotify::ScriptMarker>) {
    if let (Some(g), Some(script)) = (guard, &f.facts.script_path) {
        if f.decision.action != interdict_policy::Action::Allow && f.package.is_none() {
            let _ = g.mark(script);
        }
    }
}

/// Where the persistent hash cache lives.
pub fn hash_cache_path(shared: &Shared) -> PathBuf {
    shared.config.state_dir.join("hashcache.bin")
}

/// Write the digests known so far to the persistent cache.
pub fn save_hash_cache(shared: &Shared) {
    if let Err(e) = crate::hash_cache::save(&hash_cache_path(shared), &shared.memo.entries()) {
        tracing::warn!("hash cache not saved: {e}");
    }
}

/// Load the persistent cache into the shared memo; a damaged one is counted and ignored.
pub fn load_hash_cache(shared: &Shared) {
    match crate::hash_cache::load(&hash_cache_path(shared)) {
        Ok(entries) => shared.memo.preload(entries),
        Err(crate::hash_cache::CacheError::Missing) => {}
        Err(e) => {
            inc(&shared.metrics.c.hash_cache_rejected);
            tracing::warn!("{e}; it will be rebuilt");
        }
    }
}

fn key_of(shared: &Shared, f: &Found) -> (String, PathBuf) {
    let active = shared.active.load();
    (
        active.loaded.policy.rule(&f.decision).id.clone(),
        f.canonical.clone(),
    )
}

/// The file of a find, for an event.
fn file_of(f: &Found, size: Option<u64>) -> FileRef {
    FileRef {
        path: crate::path_text(&f.path),
        sha256: digest_of(f).map(|h| h.to_string()),
        size,
    }
}

/// The owner of a find (read again; the name the scan saw when the file is gone).
fn owner_of(shared: &Shared, f: &Found) -> Option<ProcessRef> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::symlink_metadata(&f.path)
        .ok()
        .map(|m| m.uid())
        .or_else(|| {
            f.facts
                .user
                .as_deref()
                .and_then(|u| shared.accounts.uid_of(u))
        })?;
    Some(ProcessRef {
        uid: Some(uid),
        user: Some(shared.accounts.user_name(uid)),
        ..ProcessRef::default()
    })
}

/// Report a find; whether its event was queued.
fn report(shared: &Shared, f: &Found, kind: EventKind, sensor: &str) -> bool {
    let active = shared.active.load_full();
    let policy = &active.loaded.policy;
    if f.decision.action == interdict_policy::Action::Allow {
        return true;
    }
    let j = judge::Judged {
        policy,
        decision: &f.decision,
        facts: &f.facts,
    };
    let mut e = shared.event(kind);
    e.outcome = Some(Outcome::Reported);
    e.sensor = Some(sensor.into());
    e.rule = Some(judge::rule_ref(policy, &f.decision, &f.facts));
    // A package folder's size says nothing.
    let size = if f.package.is_some() {
        None
    } else {
        std::fs::metadata(&f.canonical).ok().map(|m| m.len())
    };
    e.file = Some(file_of(f, size));
    if let Some(p) = &f.package {
        e.message = Some(match &p.version {
            Some(v) => format!("package {} {v}", p.package),
            None => format!("package {}", p.package),
        });
    }
    e.process = owner_of(shared, f);
    let owner = e.process.as_ref().and_then(|p| p.uid);
    let queued = shared.emit(e);
    match kind {
        EventKind::InstalledDetected => inc(&shared.metrics.c.installs_detected),
        _ => inc(&shared.metrics.c.installs_removed),
    }
    if kind != EventKind::InstalledDetected {
        return queued;
    }
    // A file matched by a path or script glob: learn its digest, so that a renamed copy of it is
    // caught by hash. (Names are too weak to learn from; package markers are folders.)
    use interdict_policy::SelectorKind;
    if matches!(
        f.decision.selector,
        SelectorKind::Path | SelectorKind::Script
    ) && f.package.is_none()
    {
        let digest = f
            .facts
            .exe_sha256
            .or(f.facts.script_sha256)
            .or_else(|| shared.memo.hash_path(&f.canonical, false).ok());
        if let Some(d) = digest {
            shared.learn(
                &policy.rule(&f.decision).id,
                d,
                &f.canonical,
                f.decision.selector.as_str(),
            );
        }
    }
    let told = match quarantine_if_asked(shared, f) {
        Some(Ok(entry)) => {
            let mut q = shared.event(EventKind::InstalledQuarantined);
            q.outcome = Some(Outcome::Quarantined);
            q.sensor = Some(sensor.into());
            q.rule = Some(judge::rule_ref(policy, &f.decision, &f.facts));
            q.process = owner_of(shared, f);
            q.file = Some(FileRef {
                path: crate::path_text(&entry.original_path),
                sha256: Some(entry.sha256.clone()),
                size: Some(entry.size),
            });
            q.message = Some(format!("quarantine entry {}", entry.id));
            shared.emit(q);
            inc(&shared.metrics.c.installs_quarantined);
            crate::notify::NoticeKind::Quarantined
        }
        Some(Err(e)) => {
            let mut q = shared.event(EventKind::InstalledQuarantined);
            q.outcome = Some(Outcome::QuarantineFailed);
            q.sensor = Some(sensor.into());
            q.rule = Some(judge::rule_ref(policy, &f.decision, &f.facts));
            q.process = owner_of(shared, f);
            q.file = Some(file_of(f, None));
            q.message = Some(e.to_string());
            shared.emit(q);
            crate::notify::NoticeKind::Installed
        }
        None => crate::notify::NoticeKind::Installed,
    };
    if let Some(uid) = owner {
        let info = crate::procs::ProcessInfo {
            pid: 0,
            ppid: None,
            comm: Default::default(),
            exe: None,
            argv: Vec::new(),
            cwd: None,
            uid: Some(uid),
            start_time: 0,
            start_ticks: None,
            tty_nr: None,
        };
        judge::tell(shared, j, &info, told);
    }
    queued
}

/// Quarantine a found file when its rule says so and the policy enforces today. `None` when
/// the rule does not ask for it (or the find is a package folder, which is reported only).
fn quarantine_if_asked(
    shared: &Shared,
    f: &Found,
) -> Option<Result<crate::quarantine::Entry, crate::quarantine::QuarantineError>> {
    let active = shared.active.load_full();
    let policy = &active.loaded.policy;
    let rule = policy.rule(&f.decision);
    if rule.on_install != interdict_policy::OnInstall::Quarantine || f.package.is_some() {
        return None;
    }
    // Monitor mode and a future enforce_from change nothing on disk.
    let today = shared.today();
    if policy.info().mode == interdict_policy::Mode::Monitor
        || rule.enforce_from.is_some_and(|d| today < d)
    {
        return None;
    }
    let roots = roots_now(shared);
    let system = (!rule.allow_system_files)
        .then(|| crate::quarantine::SystemFiles::load(Path::new("/var/lib/dpkg/info")));
    Some(
        crate::quarantine::Store::open(&shared.config.state_dir)
            .and_then(|s| s.quarantine(&f.canonical, &roots, &rule.id, system.as_ref())),
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
