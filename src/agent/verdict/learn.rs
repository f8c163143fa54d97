//! Learned hashes, with guard rails. When a path or script rule matches a file (at a launch, or
//! found installed), its SHA-256 becomes a digest of that rule, so that a renamed copy is caught
//! by hash. A digest that names the wrong file would ban it on this host (and, shared, on every
//! host), so the learner thread — never a thread that answers the kernel — refuses to learn
//! from a file that:
//! - a package owns (dpkg's lists; rpm where present), or that the agent protects;
//! - is smaller than the rule's `learn_min_size` (an installer's placeholder, a wrapper);
//! - changed while it was hashed, or since it was judged (still being written);
//! - has the same content as a file in the system directories (`/usr`, `/bin`, `/sbin`,
//!   `/lib*`): the walkthrough's `cp /bin/true ~/.local/share/claude/versions/...`.
//!
//! A learned digest that matches a file in the system directories or owned by a package is
//! never applied to it (see [`crate::policy::learned::misfires`]); the learner then drops the
//! digest and reports it (`learned_hash_dropped`). Digests learned by an earlier version are
//! checked the same way when the agent starts. `interdict hashes forget` removes digests.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use interdict_event::{EventKind, FileRef};
use interdict_policy::{SelectorKind, Sha256};

use crate::agent::metrics::{inc, Metrics};
use crate::agent::sensors::{Part, PartState, StartError};
use crate::agent::shared::Shared;
use crate::inventory::hash::{open_regular, FileKey};
use crate::inventory::packages::PackageFiles;
use crate::policy::learned::{Forget, Learned, LearnedSet, SYSTEM_DIRS};

/// Where a learned file was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// At a launch (fanotify, the proc connector, a sweep).
    Exec,
    /// Found installed (the install watcher).
    Install,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Exec => "exec",
            Source::Install => "install",
        }
    }
}

/// A file a path or script rule matched, to learn the digest of.
#[derive(Debug, Clone)]
pub struct LearnRequest {
    /// The rule that matched.
    pub rule_id: String,
    /// The file (a real path, from the kernel, `/proc` or the install scan).
    pub path: PathBuf,
    /// The selector that matched (`path` or `script`).
    pub selector: SelectorKind,
    /// The digest the decision was made with, when it computed one.
    pub digest: Option<Sha256>,
    /// Where it was seen.
    pub source: Source,
}

enum Job {
    Learn(LearnRequest),
    /// A learned digest matched a file it must never apply to.
    Misfire {
        digest: Sha256,
        path: PathBuf,
    },
    /// Forget digests (from the control socket), then answer with how many went.
    Forget(Forget, std::sync::mpsc::Sender<usize>),
}

/// The learned digests of this host and the learner's queue. The queue is bounded (256); when
/// full a request is dropped and counted (`learn_drops`): a later launch asks again.
#[derive(Debug)]
pub struct Learner {
    state_dir: PathBuf,
    set: Mutex<LearnedSet>,
    packages: ArcSwap<PackageFiles>,
    tx: SyncSender<Job>,
    rx: Mutex<Option<Receiver<Job>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Learner {
    /// The digests learned before (`STATE_DIR/learned.json`; a damaged file is reported and
    /// replaced by an empty set at the next change).
    pub fn new(state_dir: &Path) -> Learner {
        let set = LearnedSet::load(state_dir).unwrap_or_else(|e| {
            tracing::warn!("learned hashes unreadable, starting afresh: {e}");
            LearnedSet::default()
        });
        let (tx, rx) = sync_channel(256);
        Learner {
            state_dir: state_dir.to_path_buf(),
            set: Mutex::new(set),
            // Read before any sensor starts: the quarantine and the guard rails rely on it.
            packages: ArcSwap::from_pointee(PackageFiles::load_system()),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// A copy of the learned set.
    pub fn set(&self) -> LearnedSet {
        self.set.lock().expect("learned poisoned").clone()
    }

    /// The package-owned files (re-read every few minutes by the learner thread).
    pub fn packages(&self) -> Arc<PackageFiles> {
        self.packages.load_full()
    }

    /// Ask the learner to learn from a file; never blocks.
    pub fn request(&self, req: LearnRequest, metrics: &Metrics) {
        if self.tx.try_send(Job::Learn(req)).is_err() {
            inc(&metrics.c.learn_drops);
        }
    }

    /// A learned digest matched a file it must not apply to: have it dropped; never blocks.
    pub fn misfired(&self, digest: Sha256, path: PathBuf, metrics: &Metrics) {
        if self.tx.try_send(Job::Misfire { digest, path }).is_err() {
            inc(&metrics.c.learn_drops);
        }
    }

    /// Forget digests (the agent applies it at once); returns how many were removed.
    pub fn forget(&self, what: Forget) -> Option<usize> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx.send(Job::Forget(what, tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(30)).ok()
    }

    fn save(&self, set: &LearnedSet) {
        if let Err(e) = set.save(&self.state_dir) {
            tracing::warn!("learned hashes not saved: {e}");
        }
    }
}

/// Start the learner thread.
pub fn start(shared: &Arc<Shared>) -> Result<(), StartError> {
    let Some(rx) = shared.learner.rx.lock().expect("learner poisoned").take() else {
        return Ok(());
    };
    let s = shared.clone();
    std::thread::Builder::new()
        .name("learner".into())
        .spawn(move || run(s, rx))
        .map_err(StartError::io("learner thread"))?;
    Ok(())
}

/// The sizes of the regular files in the system directories, to find a candidate's twin
/// without hashing them all. Built when first needed (a walk of /usr takes a second or more),
/// rebuilt when older than ten minutes.
#[derive(Default)]
struct SystemSizes {
    sizes: BTreeSet<u64>,
    built: Option<Instant>,
}

const SYSTEM_SIZES_TTL: Duration = Duration::from_secs(600);

fn system_files() -> impl Iterator<Item = walkdir::DirEntry> {
    SYSTEM_DIRS.iter().flat_map(|d| {
        walkdir::WalkDir::new(d)
            .follow_links(false)
            .same_file_system(true)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
    })
}

impl SystemSizes {
    fn build() -> SystemSizes {
        let sizes = system_files()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .collect();
        SystemSizes {
            sizes,
            built: Some(Instant::now()),
        }
    }

    /// A file in the system directories with this size and digest, if any.
    fn twin(
        &mut self,
        size: u64,
        digest: Sha256,
        memo: &crate::inventory::hash::HashMemo,
    ) -> Option<PathBuf> {
        if self.built.is_none_or(|t| t.elapsed() > SYSTEM_SIZES_TTL) {
            *self = SystemSizes::build();
        }
        if !self.sizes.contains(&size) {
            return None;
        }
        system_files()
            .filter(|e| e.metadata().is_ok_and(|m| m.len() == size))
            .find(|e| memo.hash_path(e.path(), false).ok() == Some(digest))
            .map(|e| e.into_path())
    }
}

/// How often the package managers' file lists are read again.
const PACKAGES_TTL: Duration = Duration::from_secs(300);

fn run(shared: Arc<Shared>, rx: Receiver<Job>) {
    let mut system = SystemSizes::default();
    recheck(&shared, &mut system);
    let mut packages_read = Instant::now();
    while !shared.shutdown.is_triggered() {
        if packages_read.elapsed() > PACKAGES_TTL {
            shared
                .learner
                .packages
                .store(Arc::new(PackageFiles::load_system()));
            packages_read = Instant::now();
        }
        let job = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match job {
            Job::Learn(req) => learn(&shared, &mut system, req),
            Job::Misfire { digest, path } => {
                let why = format!(
                    "it matched {}, a file in the system directories or owned by a package",
                    crate::path_text(&path)
                );
                drop_digests(&shared, &Forget::Digest(digest.to_string()), &why);
            }
            Job::Forget(what, reply) => {
                let n = drop_digests(
                    &shared,
                    &what,
                    "an admin forgot it (interdict hashes forget)",
                );
                let _ = reply.send(n);
            }
        }
    }
}

/// Digests learned before (by an earlier version, without these guard rails) that collide
/// with a system file are dropped at start-up.
fn recheck(shared: &Shared, system: &mut SystemSizes) {
    let set = shared.learner.set();
    for e in &set.entries {
        let (Some(size), Some(d)) = (e.size, Sha256::from_hex(&e.sha256)) else {
            continue;
        };
        if let Some(twin) = system.twin(size, d, &shared.memo) {
            let why = format!("it is the digest of {}", crate::path_text(&twin));
            drop_digests(shared, &Forget::Digest(e.sha256.clone()), &why);
        }
    }
}

/// Why a file must not be learned from, if it must not.
fn refusal(
    shared: &Shared,
    system: &mut SystemSizes,
    req: &LearnRequest,
) -> Result<(Sha256, u64), String> {
    use std::os::unix::fs::MetadataExt;
    let active = shared.policy.active();
    let policy = &active.loaded.policy;
    let Some(rule) = policy.rules().iter().find(|r| r.id == req.rule_id) else {
        return Err("the rule is gone".into());
    };
    let (file, meta) = open_regular(&req.path, true).map_err(|e| crate::io_reason(&e))?;
    if shared.protected.contains(meta.dev(), meta.ino()) {
        return Err("a program the agent protects".into());
    }
    if shared.learner.packages().owns(&req.path) {
        return Err("owned by a package".into());
    }
    if meta.len() < rule.learn_min_size {
        return Err(format!(
            "{} bytes, below the rule's learn_min_size ({})",
            meta.len(),
            rule.learn_min_size
        ));
    }
    let (digest, _) = shared
        .memo
        .hash_file(&file, &meta)
        .map_err(|e| crate::io_reason(&e))?;
    let after = file.metadata().map_err(|e| crate::io_reason(&e))?;
    if FileKey::of(&after) != FileKey::of(&meta) {
        return Err("it changed while it was hashed (still being written)".into());
    }
    if req.digest.is_some_and(|d| d != digest) {
        return Err("it changed since it was judged".into());
    }
    if let Some(twin) = system.twin(meta.len(), digest, &shared.memo) {
        return Err(format!("same content as {}", crate::path_text(&twin)));
    }
    Ok((digest, meta.len()))
}

fn learn(shared: &Shared, system: &mut SystemSizes, req: LearnRequest) {
    let (digest, size) = match refusal(shared, system, &req) {
        Ok(x) => x,
        Err(why) => {
            inc(&shared.metrics.c.learn_refused);
            tracing::info!(
                "not learning the digest of {} for rule `{}`: {why}",
                crate::path_text(&req.path),
                req.rule_id
            );
            return;
        }
    };
    let entry = Learned {
        rule_id: req.rule_id.clone(),
        sha256: digest.to_string(),
        first_seen: interdict_event::rfc3339(std::time::SystemTime::now()),
        path: req.path.clone(),
        selector: req.selector.as_str().to_string(),
        size: Some(size),
        source: Some(req.source.as_str().to_string()),
    };
    {
        let mut set = shared.learner.set.lock().expect("learned poisoned");
        if !set.add_entry(entry) {
            return;
        }
        shared.learner.save(&set);
    }
    if shared.policy.learn(&req.rule_id, digest, size) {
        inc(&shared.metrics.c.hashes_learned);
    }
    let mut e = shared.event(EventKind::HashLearned);
    e.sensor = Some(Part::Learner.as_str().into());
    e.file = Some(FileRef {
        path: crate::path_text(&req.path),
        sha256: Some(digest.to_string()),
        size: Some(size),
    });
    e.message = Some(format!(
        "learned for rule `{}` from a file its {} selector matched ({})",
        req.rule_id,
        req.selector.as_str(),
        req.source.as_str()
    ));
    shared.emit(e);
}

/// Remove learned digests, put the smaller set in force, and report each one dropped.
fn drop_digests(shared: &Shared, what: &Forget, why: &str) -> usize {
    let gone = {
        let mut set = shared.learner.set.lock().expect("learned poisoned");
        let gone = set.forget(what);
        if gone.is_empty() {
            return 0;
        }
        shared.learner.save(&set);
        shared.policy.relearn(&set);
        gone
    };
    let mut by_digest: HashMap<&str, Vec<&str>> = HashMap::new();
    for g in &gone {
        by_digest.entry(&g.sha256).or_default().push(&g.rule_id);
    }
    for (digest, rules) in by_digest {
        inc(&shared.metrics.c.learned_dropped);
        tracing::warn!(
            "learned digest {digest} (rule {}) dropped: {why}",
            rules.join(", ")
        );
        let mut e = shared.event(EventKind::LearnedHashDropped);
        e.sensor = Some(Part::Learner.as_str().into());
        e.file = Some(FileRef {
            path: String::new(),
            sha256: Some(digest.to_string()),
            size: None,
        });
        e.message = Some(format!("rule {}: {why}", rules.join(", ")));
        shared.emit(e);
    }
    gone.len()
}

/// Record the learner in the status table.
pub fn report_started(shared: &Shared) {
    shared.parts.set(
        Part::Learner,
        PartState::Running,
        format!(
            "{} learned digest(s); never from package-owned, protected, small or system-identical files",
            shared.learner.set().entries.len()
        ),
    );
}
