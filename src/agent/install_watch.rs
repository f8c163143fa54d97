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
    /// Something changed at this path.
    Changed(PathBuf),
    /// Events were lost: rescan everything.
    Rescan(&'static str),
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
            for p in ev.paths {
                let _ = wtx.send(WatchMsg::Changed(p));
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
    let mut pending: HashSet<PathBuf> = HashSet::new();
    let mut last_change = Instant::now();
    let mut next_rescan = Instant::now() + rescan_every;
    loop {
        if shared.shutdown.is_triggered() {
            shared.set_sensor("install_watch", "stopped", "shut down");
            return;
        }
        let wait = if pending.is_empty() {
            Duration::from_millis(500).min(next_rescan.saturating_duration_since(Instant::now()))
        } else {
            debounce.saturating_sub(last_change.elapsed())
        };
        match rx.recv_timeout(wait) {
            Ok(WatchMsg::Changed(p)) => {
                // Installs write thousands of files: collect them per package folder.
                pending.insert(unit_of(&p));
                last_change = Instant::now();
                continue;
            }
            Ok(WatchMsg::Rescan(why)) => {
                watch_new_roots(&shared, &mut roots, &mut watcher);
                rescan(&shared, &roots, &mut seen, why, guard);
                next_rescan = Instant::now() + rescan_every;
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !pending.is_empty() && last_change.elapsed() >= debounce {
            let units: Vec<PathBuf> = pending
                .drain()
                .filter_map(|u| real_unit(&u, &roots))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            examine(&shared, &units, &mut seen, guard);
        }
        if Instant::now() >= next_rescan {
            watch_new_roots(&shared, &mut roots, &mut watcher);
            rescan(&shared, &roots, &mut seen, "periodic", guard);
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

/// Re-examine changed package folders: report what is new, and what is gone.
fn examine(
    shared: &Shared,
    units: &[PathBuf],
    seen: &mut Seen,
    guard: Option<&super::fanotify::ScriptMarker>,
) {
    let found = scan_paths(shared, units);
    let mut now: HashSet<(String, PathBuf)> = HashSet::new();
    for f in found {
        let key = key_of(shared, &f);
        now.insert(key.clone());
        if let std::collections::hash_map::Entry::Vacant(v) = seen.entry(key) {
            report(shared, &f, EventKind::InstalledDetected);
            mark_script(&f, guard);
            v.insert(f);
        }
    }
    // Anything reported under these folders that is no longer found has gone.
    let gone: Vec<(String, PathBuf)> = seen
        .keys()
        .filter(|(_, p)| units.iter().any(|u| p.starts_with(u)))
        .filter(|k| !now.contains(*k))
        .cloned()
        .collect();
    for k in gone {
        if let Some(f) = seen.remove(&k) {
            report(shared, &f, EventKind::InstalledRemoved);
        }
    }
}

/// A full rescan of every root.
fn rescan(
    shared: &Shared,
    roots: &[PathBuf],
    seen: &mut Seen,
    why: &str,
    guard: Option<&super::fanotify::ScriptMarker>,
) {
    tracing::debug!("install rescan ({why})");
    let started = Instant::now();
    let found = scan_paths(shared, roots);
    let mut now: HashMap<(String, PathBuf), Found> = HashMap::new();
    for f in found {
        now.insert(key_of(shared, &f), f);
    }
    for (k, f) in &now {
        if !seen.contains_key(k) {
            report(shared, f, EventKind::InstalledDetected);
            mark_script(f, guard);
        }
    }
    let gone: Vec<_> = seen
        .keys()
        .filter(|k| !now.contains_key(*k))
        .cloned()
        .collect();
    for k in gone {
        if let Some(f) = seen.remove(&k) {
            report(shared, &f, EventKind::InstalledRemoved);
        }
    }
    *seen = now;
    save_hash_cache(shared);
    shared.metrics.last_rescan_us.store(
        started.elapsed().as_micros() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    // Counted when done: a reader of `install_rescans` sees the rescan's results.
    inc(&shared.metrics.c.install_rescans);
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

fn report(shared: &Shared, f: &Found, kind: EventKind) {
    let active = shared.active.load_full();
    let policy = &active.loaded.policy;
    if f.decision.action == interdict_policy::Action::Allow {
        return;
    }
    let j = judge::Judged {
        policy,
        decision: &f.decision,
        facts: &f.facts,
    };
    let mut e = shared.event(kind);
    e.outcome = Some(Outcome::Reported);
    e.sensor = Some("install_watch".into());
    e.rule = Some(judge::rule_ref(policy, &f.decision, &f.facts));
    let size = std::fs::metadata(&f.canonical).ok().map(|m| m.len());
    e.file = Some(FileRef {
        path: crate::path_text(&f.path),
        sha256: f
            .facts
            .exe_sha256
            .or(f.facts.script_sha256)
            .map(|h| h.to_string()),
        size,
    });
    if let Some(p) = &f.package {
        e.message = Some(match &p.version {
            Some(v) => format!("package {} {v}", p.package),
            None => format!("package {}", p.package),
        });
    }
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&f.path).ok().map(|m| m.uid())
    };
    e.process = owner.map(|uid| ProcessRef {
        uid: Some(uid),
        user: Some(shared.accounts.user_name(uid)),
        ..ProcessRef::default()
    });
    shared.emit(e);
    match kind {
        EventKind::InstalledDetected => inc(&shared.metrics.c.installs_detected),
        _ => inc(&shared.metrics.c.installs_removed),
    }
    if kind != EventKind::InstalledDetected {
        return;
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
            q.sensor = Some("install_watch".into());
            q.rule = Some(judge::rule_ref(policy, &f.decision, &f.facts));
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
            q.sensor = Some("install_watch".into());
            q.rule = Some(judge::rule_ref(policy, &f.decision, &f.facts));
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
