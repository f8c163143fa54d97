//! The agent's sensors: each watches one source, builds [`Facts`](interdict_policy::Facts) with
//! the inventory's [`FactsBuilder`](crate::inventory::facts::FactsBuilder) and hands an
//! observation to the [`verdict`](crate::agent::verdict); no sensor builds events itself.
//!
//! - [`fanotify`]: pre-exec denial on the marked filesystems, and the script guard;
//! - [`proc_connector`]: every exec on the machine, after the fact (kills what got through);
//! - [`sweep`]: every running process (start-up, policy changes, overflows, polling);
//! - [`install_watch`]: installed software, live.
//!
//! [`Part`] names every part of the agent that `interdict status` reports (sensors and sinks),
//! [`PartState`] its state, and [`Board`] keeps the table.

pub mod cache;
pub mod fanotify;
pub mod install_watch;
pub mod mounts;
pub mod proc_connector;
pub mod sweep;

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A part of the agent with a state of its own in `interdict status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The pre-exec guard ([`fanotify`]).
    Fanotify,
    /// Open-permission marks on banned scripts (part of [`fanotify`]).
    ScriptGuard,
    /// The netlink exec sensor ([`proc_connector`]).
    ProcConnector,
    /// Periodic process sweeps ([`sweep`]).
    Poll,
    /// The install watcher ([`install_watch`]).
    InstallWatch,
    /// Notices for employees.
    Notifier,
    /// The collector shipper.
    Shipper,
    /// The syslog sink.
    Syslog,
    /// The learner (hashes of files that path and script rules matched).
    Learner,
    /// A one-time sweep of every process (start-up, policy changes); named in events only.
    Sweep,
    /// A full rescan of the install roots (start-up, periodic, after an overflow): what it
    /// finds was already there, not seen appearing. Named in events only.
    InstallScan,
}

impl Part {
    /// The name used in status, events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Fanotify => "fanotify",
            Part::ScriptGuard => "script_guard",
            Part::ProcConnector => "proc_connector",
            Part::Poll => "poll",
            Part::InstallWatch => "install_watch",
            Part::Notifier => "notifier",
            Part::Shipper => "shipper",
            Part::Syslog => "syslog",
            Part::Learner => "learner",
            Part::Sweep => "sweep",
            Part::InstallScan => "install_scan",
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a part stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartState {
    /// Working.
    Running,
    /// Configured, but with nothing to do until an event asks for it (e.g. sweeps only at
    /// start-up and after policy changes).
    Idle,
    /// Switched off in the configuration.
    Disabled,
    /// Running, but its last attempt failed (a sink that cannot reach its receiver; the
    /// detail says why).
    Failing,
    /// Could not start, or stopped on an error (the detail says why).
    Failed,
    /// Stopped at shutdown.
    Stopped,
}

impl PartState {
    /// The word shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            PartState::Running => "running",
            PartState::Idle => "idle",
            PartState::Disabled => "disabled",
            PartState::Failing => "failing",
            PartState::Failed => "failed",
            PartState::Stopped => "stopped",
        }
    }
}

/// One row of the status table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartStatus {
    /// Which part.
    pub name: Part,
    /// Its state.
    pub state: PartState,
    /// What it covers, or why it is not running.
    pub detail: String,
}

/// Why a sensor could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The process lacks a privilege.
    #[error("not permitted (needs {0})")]
    NotPermitted(&'static str),
    /// The kernel does not offer the mechanism.
    #[error("{0}")]
    Unsupported(&'static str),
    /// Nothing could be covered.
    #[error("{0}")]
    NothingCovered(String),
    /// A system call or thread start failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Needs another part that is not running.
    #[error("needs {0}")]
    Needs(Part),
}

impl StartError {
    /// An I/O error while doing `what`.
    pub fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
        move |source| StartError::Io { what, source }
    }
}

/// The status table: one row per part, replaced as the part's state changes.
#[derive(Debug, Default)]
pub struct Board {
    rows: Mutex<Vec<PartStatus>>,
}

impl Board {
    /// Record a part's state (replacing its earlier row).
    pub fn set(&self, name: Part, state: PartState, detail: impl Into<String>) {
        let mut rows = self.rows.lock().expect("board poisoned");
        rows.retain(|x| x.name != name);
        rows.push(PartStatus {
            name,
            state,
            detail: detail.into(),
        });
    }

    /// Every row, sorted by part.
    pub fn rows(&self) -> Vec<PartStatus> {
        let mut rows = self.rows.lock().expect("board poisoned").clone();
        rows.sort_by_key(|r| r.name);
        rows
    }

    /// The state of one part, if it has a row.
    pub fn state(&self, name: Part) -> Option<PartState> {
        self.rows
            .lock()
            .expect("board poisoned")
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.state)
    }

    /// True while `name` runs.
    pub fn is_running(&self, name: Part) -> bool {
        self.state(name) == Some(PartState::Running)
    }

    /// One line for the start-up log: `name=state (detail); ...`, in the order set.
    pub fn summary(&self) -> String {
        self.rows
            .lock()
            .expect("board poisoned")
            .iter()
            .map(|x| format!("{}={} ({})", x.name, x.state.as_str(), x.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}
