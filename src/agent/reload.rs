//! The policy in force and how it changes: reloads (SIGHUP, `interdict reload`, the policy file
//! changing), signed bundles from the collector ([`super::fleet`]), learned digests added and
//! forgotten, exceptions granted and ended. A policy that does not validate is rejected with the
//! last good one kept in force. Every change starts a new generation, which empties the decision
//! cache, and a new base policy is followed by re-marking the banned scripts, a process sweep and
//! an install rescan.
//!
//! While a signed bundle is in force, the policy file is the fallback only: reloads of the file
//! are refused (the bundle is what IT signed), until the bundle is removed from the state
//! folder.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use interdict_event::{EventKind, PolicyRef};
use tokio::sync::mpsc;

use super::control::ReloadReply;
use super::metrics::inc;
use super::sensors::fanotify::ScriptMarker;
use super::sensors::install_watch::WatchMsg;
use super::sensors::{sweep, Part, PartState};
use super::shared::Shared;
use crate::policy::learned::LearnedSet;
use crate::policy::LoadedPolicy;
use interdict_policy::Exception;

/// Where the base policy came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PolicySource {
    /// The policy file given with `--policy`.
    File {
        /// Its path.
        path: String,
    },
    /// A bundle signed with IT's policy key, from the collector (or kept in the state folder).
    Bundle {
        /// The bundle version.
        version: u64,
        /// When it was signed.
        created: String,
        /// The key that signed it.
        key: String,
    },
}

impl Default for PolicySource {
    fn default() -> Self {
        PolicySource::File {
            path: String::new(),
        }
    }
}

impl PolicySource {
    /// The bundle version, for a bundle.
    pub fn bundle_version(&self) -> Option<u64> {
        match self {
            PolicySource::Bundle { version, .. } => Some(*version),
            PolicySource::File { .. } => None,
        }
    }

    /// For people: `file PATH` or `signed bundle version N (...)`.
    pub fn describe(&self) -> String {
        match self {
            PolicySource::File { path } => format!("file {path}"),
            PolicySource::Bundle {
                version,
                created,
                key,
            } => format!(
                "signed bundle version {version} (signed {created} by key {})",
                key.get(..16).unwrap_or(key)
            ),
        }
    }
}

/// The policy in force, with the generation that invalidates cached decisions when it changes.
#[derive(Debug)]
pub struct Active {
    /// The base policy (from its file or a bundle), without learned digests or exceptions.
    pub base: LoadedPolicy,
    /// The policy applied: `base` plus the digests learned on this host (and approved for the
    /// fleet), plus the exceptions granted.
    pub loaded: LoadedPolicy,
    /// Increases with every change.
    pub generation: u64,
    /// Where `base` came from.
    pub source: PolicySource,
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

/// The policy file and the policy in force. Readers never wait (an atomic swap); writers are
/// serialized so that a reload and a learned digest cannot undo each other.
#[derive(Debug)]
pub struct PolicyInForce {
    /// The policy file (for reloads).
    pub path: PathBuf,
    active: ArcSwap<Active>,
    /// The exceptions granted (applied to every new base; those it refuses are left out).
    exceptions: Mutex<Vec<Exception>>,
    write: Mutex<()>,
}

/// `base` with every digest of `learned` added to its rules and every exception it accepts
/// granted.
fn with_learned(
    base: &LoadedPolicy,
    learned: &LearnedSet,
    exceptions: &[Exception],
) -> LoadedPolicy {
    let mut l = base.clone();
    learned.apply(&mut l.policy);
    for e in exceptions {
        if let Err(why) = l.policy.grant(e.clone()) {
            tracing::debug!("exception {} not applied: {why}", e.id);
        }
    }
    l
}

impl PolicyInForce {
    /// The policy loaded at start-up, with the digests learned before.
    pub fn new(
        path: PathBuf,
        base: LoadedPolicy,
        learned: &LearnedSet,
        source: PolicySource,
    ) -> PolicyInForce {
        let loaded = with_learned(&base, learned, &[]);
        PolicyInForce {
            path,
            active: ArcSwap::from_pointee(Active {
                base,
                loaded,
                generation: 1,
                source,
            }),
            exceptions: Mutex::new(Vec::new()),
            write: Mutex::new(()),
        }
    }

    /// The exceptions granted now.
    pub fn exceptions(&self) -> Vec<Exception> {
        self.granted()
    }

    fn granted(&self) -> Vec<Exception> {
        self.exceptions.lock().expect("exceptions poisoned").clone()
    }

    /// Put these exceptions in force (replacing those before); returns the new generation.
    pub fn set_exceptions(&self, exceptions: Vec<Exception>, learned: &LearnedSet) -> u64 {
        let _w = self.write.lock().expect("policy writer poisoned");
        *self.exceptions.lock().expect("exceptions poisoned") = exceptions;
        let current = self.active.load_full();
        let generation = current.generation + 1;
        self.active.store(Arc::new(Active {
            base: current.base.clone(),
            loaded: with_learned(&current.base, learned, &self.granted()),
            generation,
            source: current.source.clone(),
        }));
        generation
    }

    /// The policy in force now.
    pub fn active(&self) -> Arc<Active> {
        self.active.load_full()
    }

    /// The generation in force now (cheap: for the answering thread).
    pub fn generation(&self) -> u64 {
        self.active.load().generation
    }

    /// Put a new base policy in force (with the learned digests and the exceptions it
    /// accepts); returns the new generation.
    pub fn replace_base(
        &self,
        base: LoadedPolicy,
        learned: &LearnedSet,
        source: PolicySource,
    ) -> u64 {
        let _w = self.write.lock().expect("policy writer poisoned");
        let generation = self.active.load().generation + 1;
        let loaded = with_learned(&base, learned, &self.granted());
        self.active.store(Arc::new(Active {
            base,
            loaded,
            generation,
            source,
        }));
        generation
    }

    /// Add one learned digest to a rule of the policy in force; false when the rule is gone or
    /// already has it.
    pub fn learn(&self, rule_id: &str, digest: interdict_policy::Sha256, size: u64) -> bool {
        let _w = self.write.lock().expect("policy writer poisoned");
        let current = self.active.load_full();
        let mut loaded = current.loaded.clone();
        if !loaded.policy.learn(rule_id, digest, Some(size)) {
            return false;
        }
        self.active.store(Arc::new(Active {
            base: current.base.clone(),
            loaded,
            generation: current.generation + 1,
            source: current.source.clone(),
        }));
        true
    }

    /// Rebuild the policy in force from its base and a (smaller) learned set.
    pub fn relearn(&self, learned: &LearnedSet) {
        let _w = self.write.lock().expect("policy writer poisoned");
        let current = self.active.load_full();
        self.active.store(Arc::new(Active {
            base: current.base.clone(),
            loaded: with_learned(&current.base, learned, &self.granted()),
            generation: current.generation + 1,
            source: current.source.clone(),
        }));
    }
}

/// What must be redone after the policy changes, and the parts that redo it.
#[derive(Clone)]
pub struct Reloader {
    /// The running agent.
    pub shared: Arc<Shared>,
    /// The script guard, when it runs.
    pub marker: Option<ScriptMarker>,
    /// The install watcher's request line, when it runs.
    pub install: Option<std::sync::mpsc::Sender<WatchMsg>>,
}

impl Reloader {
    /// Validate the policy file; if it is valid and different, put it in force, then re-mark
    /// scripts, sweep and rescan. The last good policy stays otherwise.
    pub async fn reload(&self, why: &str) -> ReloadReply {
        let shared = &self.shared;
        let path = shared.policy.path.clone();
        if let PolicySource::Bundle { version, .. } = shared.policy.active().source {
            let msg = format!(
                "not reloaded ({why}): signed bundle version {version} is in force; the policy file {} applies only when no bundle is (IT publishes policy changes as bundles)",
                path.display()
            );
            tracing::info!("{msg}");
            return ReloadReply {
                applied: false,
                message: msg,
            };
        }
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::policy::load(&p))
            .await
            .expect("policy load does not panic");
        let l = match loaded {
            Ok(l) => l,
            Err(err) => {
                inc(&shared.metrics.c.policies_rejected);
                let text = err.to_string();
                tracing::error!(
                    "policy rejected ({why}); the previous policy stays in force:\n{text}"
                );
                let mut e = shared.event(EventKind::PolicyRejected);
                e.message = Some(text.clone());
                shared.emit(e);
                return ReloadReply {
                    applied: false,
                    message: format!(
                        "policy rejected; the previous policy stays in force:\n{text}"
                    ),
                };
            }
        };
        if l.sha256 == shared.policy.active().base.sha256 {
            return ReloadReply {
                applied: true,
                message: format!("policy unchanged ({}); nothing to do", l.sha256),
            };
        }
        let source = PolicySource::File {
            path: crate::path_text(&path),
        };
        self.put_in_force(l, source, why)
    }

    /// Put a validated base policy in force (from the file or a bundle): a new generation,
    /// `policy_applied`, then re-mark scripts, sweep and rescan.
    pub fn put_in_force(&self, l: LoadedPolicy, source: PolicySource, why: &str) -> ReloadReply {
        let shared = &self.shared;
        for w in &l.warnings.0 {
            tracing::warn!("{w}");
        }
        let (name, version) = (
            l.policy.info().name.clone(),
            l.policy.info().version.clone(),
        );
        let from = source.describe();
        let generation = shared.policy.replace_base(l, &shared.learner.set(), source);
        let msg =
            format!("policy {name} {version} applied ({why}) from {from}; generation {generation}");
        inc(&shared.metrics.c.policies_applied);
        tracing::info!("{msg}");
        let mut e = shared.event(EventKind::PolicyApplied);
        e.message = Some(msg.clone());
        shared.emit(e);
        super::fleet::on_policy_changed(shared);
        self.after_change("policy changed");
        ReloadReply {
            applied: true,
            message: msg,
        }
    }

    /// After the policy changed (or at start-up): say which protected files the policy would
    /// hit, mark the banned scripts, sweep the running processes (off the async thread), and
    /// rescan the install roots.
    pub fn after_change(&self, why: &'static str) {
        let this = self.clone();
        std::thread::spawn(move || {
            let shared = &this.shared;
            super::verdict::warn_about_protected(shared);
            if let Some(m) = &this.marker {
                let n = m.mark_banned_scripts(shared);
                shared.parts.set(
                    Part::ScriptGuard,
                    PartState::Running,
                    format!("{n} banned script file(s) marked"),
                );
            }
            sweep::sweep(shared, Part::Poll);
        });
        if let (Some(tx), false) = (&self.install, why == "start-up") {
            let _ = tx.send(WatchMsg::Rescan(why));
        }
    }
}

/// Watch the policy file's folder (editors replace the file rather than write it in place) and
/// send a line on `tx` when the file changes. The line is bounded (1): a full line means a
/// reload is already due.
pub fn watch_policy(
    path: &Path,
    tx: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let file = path.file_name().map(|f| f.to_os_string());
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if ev.kind.is_access() {
                return;
            }
            if ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|f| f.to_os_string()) == file)
            {
                let _ = tx.try_send(());
            }
        }
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(w)
}
