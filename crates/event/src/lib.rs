//! The interdict event schema.
//!
//! One [`Event`] type for everything the agent reports: a denied exec, a killed process, a policy
//! applied or rejected, the agent starting and stopping. Events are serialized as one JSON object
//! per line (JSONL). Identifiers are UUIDv7 (time-ordered); command lines are bounded
//! ([`MAX_ARGV_BYTES`]) and values that look like secrets are redacted before an event is built.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::Digest;

pub mod ecs;
pub mod ocsf;
mod redact;
pub use redact::{bound_argv, bound_argv_to, redact_argv, MAX_ARGV_BYTES, REDACTED, TRUNCATED};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An exec was denied before it ran (fanotify).
    ExecDenied,
    /// A running process was killed.
    ProcessKilled,
    /// An exec matched a rule and was reported (report action, monitor mode, not yet enforced,
    /// or a block that could not be carried out).
    ExecReported,
    /// A script open was denied (script guard).
    ScriptDenied,
    /// A policy was validated and put in force.
    PolicyApplied,
    /// A policy was rejected; the previous one stays in force.
    PolicyRejected,
    /// The agent started.
    AgentStarted,
    /// The agent stopped.
    AgentStopped,
    /// A sensor could not start or stopped working.
    SensorDegraded,
    /// A banned package or binary was found installed.
    InstalledDetected,
    /// A banned package or binary reported before is gone.
    InstalledRemoved,
    /// A banned file was moved into the quarantine store.
    InstalledQuarantined,
    /// Events were refused because the agent's spool was full; `message` says how many.
    EventsDropped,
    /// The agent's periodic sign of life: version, policy, mode, sensors and counters in
    /// `message` (JSON).
    Heartbeat,
    /// A digest was learned: a path or script rule matched a file, and the file's SHA-256 now
    /// identifies renamed copies (`rule`, `file` with the digest and size, `message` says where
    /// it was seen).
    HashLearned,
    /// A learned digest was dropped: it matched a file that a package owns or that lies in the
    /// system directories (`message` says which), or an admin forgot it.
    LearnedHashDropped,
    /// A list of digests reviewers approved fleet-wide (signed by the collector's hash-list
    /// key) was applied: `message` says which list and what it added.
    HashListApplied,
    /// A list of approved digests, or one of its entries, was refused (bad signature, an older
    /// list, an entry for an allow rule or an unknown rule, a removal): `message` says why.
    HashListRejected,
    /// A user asked for an exception (`rule`, `process` with the user as the agent identified
    /// them, `message` with the request id, days and reason as JSON).
    ExceptionRequested,
    /// A signed exception was accepted: the user may run what the rule bans until it ends
    /// (`message` says until when).
    ExceptionGranted,
    /// A reviewer denied an exception request.
    ExceptionDenied,
    /// A signed exception was refused (bad signature, another host, too long, the rule forbids
    /// exceptions): `message` says why.
    ExceptionRejected,
    /// An exception ends soon; its user was told.
    ExceptionEnding,
    /// An exception ended: the rule applies to its user again.
    ExceptionExpired,
    /// An AI agent's configuration file that a `configs` rule names was found (install
    /// watcher): `file` is the configuration file, `message` lists the MCP servers it declares
    /// (secrets redacted). Configuration files are only ever reported.
    ConfigDetected,
}

/// What the agent did about a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The exec or open failed with EPERM.
    Denied,
    /// The process was killed.
    Killed,
    /// The process could not be killed (gone already, or not permitted).
    KillFailed,
    /// Only reported, as the rule says.
    Reported,
    /// Would have been blocked or killed; monitor mode or `enforce_from` in the future.
    WouldEnforce,
    /// Allowed because the decision missed its deadline (fail-open); see `message`.
    AllowedOnDeadline,
    /// Denied because the decision missed its deadline (fail-closed).
    DeniedOnDeadline,
    /// Not enforced: the target is protected (the agent itself, PID 1, a critical binary).
    Protected,
    /// Moved into the quarantine store.
    Quarantined,
    /// Quarantine was refused or failed; see `message`.
    QuarantineFailed,
}

/// The rule that matched, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// Rule id.
    pub id: String,
    /// Rule name (the tool).
    pub name: String,
    /// low, medium, high or critical.
    pub risk: String,
    /// The configured action.
    pub action: String,
    /// The selector kind that matched.
    pub selector: String,
    /// The rule's value that matched (glob, name, package, digest).
    pub pattern: String,
    /// The fact that matched it.
    pub matched: String,
}

/// The process involved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// Executable path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Arguments, redacted and bounded.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub argv: Vec<String>,
    /// Working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// User name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22): with the pid, a unique
    /// process identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// The parent's executable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_exe: Option<String>,
}

/// The file involved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Path.
    pub path: String,
    /// SHA-256, hex, when computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// The policy in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// Policy name.
    pub name: String,
    /// Policy version.
    pub version: String,
    /// SHA-256 of the policy file.
    pub sha256: String,
    /// enforce or monitor.
    pub mode: String,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// UUIDv7.
    pub id: String,
    /// RFC 3339 UTC time with milliseconds.
    pub time: String,
    /// Stable host id (`/etc/machine-id`).
    pub host_id: String,
    /// Host name.
    pub hostname: String,
    /// What happened.
    pub kind: EventKind,
    /// What the agent did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// The sensor that saw it (fanotify, proc_connector, poll, script_guard).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensor: Option<String>,
    /// The matching rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// The process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessRef>,
    /// The file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileRef>,
    /// The policy in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    /// Free text: diagnostics of a rejected policy, why a sensor degraded, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Per-host sequence number, 1 for the host's first event, assigned by the agent's spool.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seq: Option<u64>,
    /// SHA-256 (hex) of the host's previous event record ([`Event::record_hash`]); 64 zeros for
    /// the first. Assigned with `seq`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prev_hash: Option<String>,
}

/// Who is reporting: the host's identity, stamped on every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// Stable host id.
    pub host_id: String,
    /// Host name.
    pub hostname: String,
}

impl Origin {
    /// A new event of `kind`, stamped now with a fresh UUIDv7.
    pub fn event(&self, kind: EventKind) -> Event {
        let now = SystemTime::now();
        Event {
            id: uuid::Uuid::now_v7().to_string(),
            time: rfc3339(now),
            host_id: self.host_id.clone(),
            hostname: self.hostname.clone(),
            kind,
            outcome: None,
            sensor: None,
            rule: None,
            process: None,
            file: None,
            policy: None,
            message: None,
            seq: None,
            prev_hash: None,
        }
    }
}

impl Event {
    /// Whether `process` is the program's *caller* rather than the program: a launch decided
    /// before it happened (fanotify's permission event, sensor `fanotify`) finds `/proc/PID`
    /// still showing the image that called `execve`; the program itself is `file`.
    pub fn process_is_caller(&self) -> bool {
        match self.kind {
            EventKind::ExecDenied => true,
            EventKind::ExecReported => self.sensor.as_deref() == Some("fanotify"),
            _ => false,
        }
    }

    /// One line of JSON, without the newline.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("events always serialize")
    }

    /// The hash that links the next record to this one: SHA-256 (hex) of this event's JSON line,
    /// `seq` and `prev_hash` included. Anyone holding the events recomputes it.
    pub fn record_hash(&self) -> String {
        sha256_hex(self.to_json_line().as_bytes())
    }
}

/// The sensor name of installs found by a full rescan of the install roots (at start-up,
/// periodically, after a policy change or lost watcher events) rather than seen appearing by
/// the watcher (`install_watch`): when such a file got there is not known.
pub const INSTALL_SCAN: &str = "install_scan";

/// Whether what the event describes failed or was refused: a denied launch or open, a failed
/// kill or quarantine, a rejected policy, a degraded sensor, dropped events. OCSF `status_id`
/// 2 (Failure) and ECS `event.outcome: failure`.
pub(crate) fn failed(e: &Event) -> bool {
    matches!(
        e.outcome,
        Some(
            Outcome::Denied
                | Outcome::DeniedOnDeadline
                | Outcome::KillFailed
                | Outcome::QuarantineFailed
        )
    ) || matches!(
        e.kind,
        EventKind::PolicyRejected
            | EventKind::SensorDegraded
            | EventKind::EventsDropped
            | EventKind::HashListRejected
            | EventKind::ExceptionDenied
            | EventKind::ExceptionRejected
    )
}

/// Whether the event's file is a folder: what a `package` rule matches (an npm package folder, a
/// Python `*.dist-info`, an editor extension folder).
pub(crate) fn file_is_folder(e: &Event) -> bool {
    e.rule.as_ref().is_some_and(|r| r.selector == "package")
}

/// The last component of a path (the whole string when it has no `/`).
pub(crate) fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The wire name of a kind or an outcome (`exec_denied`, `would_enforce`).
pub fn snake(v: impl Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Hex SHA-256 of `bytes` (of an event's JSON line, it is that event's [`Event::record_hash`]).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Drop nulls and the objects left empty, so that in the OCSF and ECS forms absent facts are
/// absent rather than `null`.
fn prune(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, prune(v)))
                .filter(|(_, v)| !matches!(v, Value::Object(m) if m.is_empty()))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(prune).collect()),
        v => v,
    }
}

/// `prev_hash` of a host's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`: what [`rfc3339`] writes.
const MILLIS: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);
/// `YYYY-MM-DDTHH:MM:SSZ`.
const SECONDS: &[time::format_description::BorrowedFormatItem<'_>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
/// `YYYY-MM-DD`.
const DATE: &[time::format_description::BorrowedFormatItem<'_>] =
    time::macros::format_description!("[year]-[month]-[day]");

/// Format a time as RFC 3339 in UTC with millisecond precision, e.g. `2026-11-26T20:00:13.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t.max(UNIX_EPOCH));
    t.format(MILLIS)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// Milliseconds since the Unix epoch of a UTC time as [`rfc3339`] writes it
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`), or without milliseconds (`YYYY-MM-DDTHH:MM:SSZ`), or a bare date
/// (`YYYY-MM-DD`, midnight UTC); `None` for anything else, including dates that do not exist.
pub fn parse_rfc3339_millis(t: &str) -> Option<i64> {
    let at = match t.len() {
        10 => time::Date::parse(t, DATE).ok()?.midnight(),
        20 => time::PrimitiveDateTime::parse(t, SECONDS).ok()?,
        24 => time::PrimitiveDateTime::parse(t, MILLIS).ok()?,
        _ => return None,
    };
    i64::try_from(at.assume_utc().unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_round_trips_through_millis() {
        for ms in [0i64, 1_764_180_013_123, 1_798_761_599_999, 951_782_400_000] {
            let t = super::rfc3339(super::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64));
            assert_eq!(super::parse_rfc3339_millis(&t), Some(ms), "{t}");
        }
        assert_eq!(
            super::parse_rfc3339_millis("2026-13-01T00:00:00.000Z"),
            None
        );
        assert_eq!(super::parse_rfc3339_millis("yesterday"), None);
        assert_eq!(super::parse_rfc3339_millis("2026-02-30"), None);
        assert_eq!(
            super::parse_rfc3339_millis("2026-02-28"),
            Some(1_772_236_800_000)
        );
        assert_eq!(
            super::parse_rfc3339_millis("2026-02-28T00:00:01Z"),
            Some(1_772_236_801_000)
        );
        assert_eq!(
            super::parse_rfc3339_millis("2026-02-28T00:00:01+01:00"),
            None
        );
    }

    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_utc_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_996_813_123);
        assert_eq!(rfc3339(t), "2026-11-30T00:00:13.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn ids_are_uuid_v7_and_ordered() {
        let o = Origin::default();
        let a = o.event(EventKind::AgentStarted);
        std::thread::sleep(Duration::from_millis(2));
        let b = o.event(EventKind::AgentStopped);
        assert_eq!(uuid::Uuid::parse_str(&a.id).unwrap().get_version_num(), 7);
        assert!(a.id < b.id);
    }

    #[test]
    fn json_round_trip_skips_empty_fields() {
        let mut e = Origin {
            host_id: "h".into(),
            hostname: "n".into(),
        }
        .event(EventKind::ExecDenied);
        e.outcome = Some(Outcome::Denied);
        let line = e.to_json_line();
        assert!(line.contains("\"kind\":\"exec_denied\""), "{line}");
        assert!(!line.contains("\"rule\""), "{line}");
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
    }
}
