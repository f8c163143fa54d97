//! Events as OCSF 1.3 records, for SIEMs that speak the Open Cybersecurity Schema Framework
//! (Splunk, Amazon Security Lake, ...). Every record validates against the OCSF 1.3.0 schema with
//! the profiles it declares in `metadata.profiles`, and carries every attribute 1.3 requires.
//!
//! - **Launches and kills** are **Process Activity** (1007). A launch refused before it ran
//!   (fanotify) is `activity_id` 1 Launch with `action_id` 2 Denied, `disposition_id` 2 Blocked
//!   and `status_id` 2 Failure. The caller is the actor and the refused program is the process,
//!   as the standard models it: at the moment of the decision `/proc/PID` still shows the image
//!   that called `execve`, so `actor.process` is that caller (its file, command line and parent)
//!   and `process` is the program that was refused (`process.file` with its name and SHA-256;
//!   no `cmd_line`, which the refused program never had). A launch seen after it happened (the
//!   proc connector, a sweep) has the program as `process` and its parent as `actor.process`. A
//!   kill is `activity_id` 2 Terminate, with interdict as the actor.
//! - **Script denials** are **File System Activity** (1001) `activity_id` 14 Open, denied: the
//!   interpreter that opened the script is `actor.process`, the script is `file`.
//! - **Installed software** is File System Activity: seen appearing by the watcher, `Create`;
//!   found by a full rescan (at start-up, periodically, after a policy change), when it got there
//!   is unknown: `Other` with `activity_name` "Present"; gone, `Delete`; moved into quarantine,
//!   `Rename`. The file's owner is `file.owner` and `actor.user` (the watcher sees files, not
//!   who wrote them; a quarantine's actor is interdict).
//! - **The agent's own life** (start, stop, policies applied or rejected, sensors degraded,
//!   events dropped, heartbeats) is **Application Lifecycle** (6002), `app` being interdict.
//!
//! Profiles: `security_control` (for `action_id`/`disposition_id`) on detections, `host` on the
//! Application Lifecycle records (for `device` and `actor`). `status_id` says whether what the
//! event describes happened: Failure for a refused launch or open, a failed kill or quarantine,
//! a rejected policy, a degraded sensor, dropped events. The policy is in `authorizations`; the
//! rule and the fields OCSF has no place for are under `unmapped`. Hashes are
//! `{algorithm_id: 3, algorithm: "SHA-256", value}`.

use serde_json::{json, Value};

use crate::{base_name, failed, file_is_folder, prune, snake, Event, EventKind, Outcome};

/// The OCSF schema version written in `metadata.version`.
pub const OCSF_VERSION: &str = "1.3.0";

fn millis(time: &str) -> Value {
    crate::parse_rfc3339_millis(time).map_or(Value::Null, Value::from)
}

fn hashes(sha256: Option<&String>) -> Value {
    match sha256 {
        Some(h) => json!([{ "algorithm_id": 3, "algorithm": "SHA-256", "value": h }]),
        None => Value::Null,
    }
}

fn severity(e: &Event) -> (u8, &'static str) {
    match e.rule.as_ref().map(|r| r.risk.as_str()) {
        Some("critical") => (5, "Critical"),
        Some("high") => (4, "High"),
        Some("medium") => (3, "Medium"),
        Some("low") => (2, "Low"),
        _ => match e.kind {
            EventKind::PolicyRejected
            | EventKind::SensorDegraded
            | EventKind::HashListRejected
            | EventKind::ExceptionRejected => (3, "Medium"),
            EventKind::EventsDropped => (4, "High"),
            _ => (1, "Informational"),
        },
    }
}

/// (action_id, action, disposition_id, disposition) for what the agent did.
fn action(o: Option<Outcome>) -> (u8, &'static str, u8, &'static str) {
    match o {
        Some(Outcome::Denied | Outcome::DeniedOnDeadline | Outcome::Killed) => {
            (2, "Denied", 2, "Blocked")
        }
        Some(Outcome::Quarantined) => (2, "Denied", 3, "Quarantined"),
        Some(Outcome::KillFailed | Outcome::QuarantineFailed) => (1, "Allowed", 27, "Error"),
        Some(Outcome::Reported | Outcome::WouldEnforce) => (1, "Allowed", 15, "Detected"),
        Some(Outcome::AllowedOnDeadline | Outcome::Protected) => (1, "Allowed", 1, "Allowed"),
        None => (0, "Unknown", 0, "Unknown"),
    }
}

/// A class of the mapping.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Process,
    FileSystem,
    App,
}

impl Class {
    /// (class_uid, class_name, category_uid, category_name).
    fn ids(self) -> (u32, &'static str, u32, &'static str) {
        match self {
            Class::Process => (1007, "Process Activity", 1, "System Activity"),
            Class::FileSystem => (1001, "File System Activity", 1, "System Activity"),
            Class::App => (6002, "Application Lifecycle", 6, "Application Activity"),
        }
    }
}

/// (class, activity_id, activity_name). Events that lack what their class requires (a process
/// event without a process, a file event without a file) are recorded as the agent's own
/// activity rather than as an invalid record.
fn class(e: &Event) -> (Class, u32, &'static str) {
    let has_process = e.process.is_some();
    let has_file = e.file.is_some();
    match e.kind {
        EventKind::ExecDenied | EventKind::ExecReported if has_process => {
            (Class::Process, 1, "Launch")
        }
        EventKind::ProcessKilled if has_process => (Class::Process, 2, "Terminate"),
        EventKind::ScriptDenied if has_file => (Class::FileSystem, 14, "Open"),
        EventKind::InstalledDetected if has_file => {
            if e.sensor.as_deref() == Some(crate::INSTALL_SCAN) {
                (Class::FileSystem, 99, "Present")
            } else {
                (Class::FileSystem, 1, "Create")
            }
        }
        EventKind::InstalledRemoved if has_file => (Class::FileSystem, 4, "Delete"),
        EventKind::ConfigDetected if has_file => (Class::FileSystem, 99, "Present"),
        EventKind::InstalledQuarantined if has_file => (Class::FileSystem, 5, "Rename"),
        EventKind::AgentStarted => (Class::App, 3, "Start"),
        EventKind::AgentStopped => (Class::App, 4, "Stop"),
        EventKind::PolicyApplied => (Class::App, 99, "Policy Applied"),
        EventKind::PolicyRejected => (Class::App, 99, "Policy Rejected"),
        EventKind::SensorDegraded => (Class::App, 99, "Sensor Degraded"),
        EventKind::EventsDropped => (Class::App, 99, "Events Dropped"),
        EventKind::Heartbeat => (Class::App, 99, "Heartbeat"),
        EventKind::HashLearned => (Class::App, 99, "Hash Learned"),
        EventKind::LearnedHashDropped => (Class::App, 99, "Learned Hash Dropped"),
        EventKind::HashListApplied => (Class::App, 99, "Hash List Applied"),
        EventKind::HashListRejected => (Class::App, 99, "Hash List Rejected"),
        EventKind::ExceptionRequested => (Class::App, 99, "Exception Requested"),
        EventKind::ExceptionGranted => (Class::App, 99, "Exception Granted"),
        EventKind::ExceptionDenied => (Class::App, 99, "Exception Denied"),
        EventKind::ExceptionRejected => (Class::App, 99, "Exception Rejected"),
        EventKind::ExceptionEnding => (Class::App, 99, "Exception Ending"),
        EventKind::ExceptionExpired => (Class::App, 99, "Exception Expired"),
        // A rule refused on a protected file, a detection missing its process or file.
        _ => (Class::App, 99, "Other"),
    }
}

fn user(uid: Option<u32>, name: Option<&String>) -> Value {
    if uid.is_none() && name.is_none() {
        return Value::Null;
    }
    json!({ "name": name, "uid": uid.map(|u| u.to_string()) })
}

/// A file object for a path: OCSF 1.3 requires `name` and `type_id` (1, a regular file).
fn file_object(path: &str, sha256: Option<&String>, size: Option<u64>) -> Value {
    json!({
        "path": path,
        "name": base_name(path),
        "type_id": 1,
        "type": "Regular File",
        "size": size,
        "hashes": hashes(sha256),
    })
}

/// The event's file: a regular file, or the folder a package rule matched (`type_id` 2).
fn event_file(e: &Event, f: &crate::FileRef) -> Value {
    if file_is_folder(e) {
        json!({ "path": f.path, "name": base_name(&f.path), "type_id": 2, "type": "Folder" })
    } else {
        file_object(&f.path, f.sha256.as_ref(), f.size)
    }
}

fn cmd_line(argv: &[String]) -> Value {
    if argv.is_empty() {
        Value::Null
    } else {
        Value::from(argv.join(" "))
    }
}

/// The parent of the native event's process, as an OCSF process.
fn parent(p: &crate::ProcessRef) -> Value {
    match p.ppid {
        Some(pp) => json!({
            "pid": pp,
            "name": p.parent_exe.as_deref().map(base_name),
            "file": p.parent_exe.as_deref().map(|x| file_object(x, None, None)),
        }),
        None => Value::Null,
    }
}

/// The event as one OCSF record.
pub fn to_ocsf(e: &Event) -> Value {
    let (class, activity_id, activity_name) = class(e);
    let (class_uid, class_name, category_uid, category_name) = class.ids();
    let (severity_id, severity_name) = severity(e);
    let failed = failed(e);
    let p = e.process.as_ref();
    let owner = p.and_then(|p| user(p.uid, p.user.as_ref()).as_object().cloned());
    let detection = e.outcome.is_some() && class != Class::App;
    let mut profiles = Vec::new();
    let mut v = json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": u64::from(class_uid) * 100 + u64::from(activity_id),
        "type_name": format!("{class_name}: {}", if activity_id == 99 { "Other" } else { activity_name }),
        "time": millis(&e.time),
        "severity_id": severity_id,
        "severity": severity_name,
        "status_id": if failed { 2 } else { 1 },
        "status": if failed { "Failure" } else { "Success" },
        "status_detail": if failed { e.message.clone() } else { None },
        "message": e.message.clone().or_else(|| summary(e)),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": e.id,
            "sequence": e.seq,
            "product": { "name": "interdict", "vendor_name": "interdict" },
            "log_name": "events",
            "log_provider": "interdict",
        },
        "device": {
            "uid": e.host_id,
            "hostname": e.hostname,
            "name": e.hostname,
            "type_id": 0,
            "type": "Unknown",
        },
        "unmapped": {
            "interdict_kind": e.kind,
            "interdict_outcome": e.outcome,
            "sensor": e.sensor,
            "rule": e.rule,
            "policy_mode": e.policy.as_ref().map(|p| p.mode.clone()),
            "prev_hash": e.prev_hash,
        },
    });
    if detection {
        profiles.push("security_control");
        let (action_id, action_name, disposition_id, disposition) = action(e.outcome);
        v["action_id"] = action_id.into();
        v["action"] = action_name.into();
        v["disposition_id"] = disposition_id.into();
        v["disposition"] = disposition.into();
        if let Some(pol) = &e.policy {
            v["authorizations"] = json!([{
                "decision": action_name,
                "policy": { "name": pol.name, "version": pol.version, "uid": pol.sha256 },
            }]);
        }
    } else if let Some(pol) = &e.policy {
        v["unmapped"]["policy"] = json!(pol);
    }
    match class {
        Class::Process => {
            let p = p.expect("a process class has a process");
            let f = e.file.as_ref();
            if e.process_is_caller() {
                // Refused (or reported) before the exec: /proc showed the caller.
                let (path, sha, size) = match f {
                    Some(f) => (Some(f.path.as_str()), f.sha256.as_ref(), f.size),
                    None => (None, None, None),
                };
                v["process"] = json!({
                    "pid": p.pid,
                    "name": path.map(base_name),
                    "file": path.map(|x| file_object(x, sha, size)),
                    "user": user(p.uid, p.user.as_ref()),
                });
                v["actor"] = json!({
                    "process": {
                        "pid": p.pid,
                        "name": p.exe.as_deref().map(base_name),
                        "file": p.exe.as_deref().map(|x| file_object(x, None, None)),
                        "cmd_line": cmd_line(&p.argv),
                        "user": user(p.uid, p.user.as_ref()),
                        "parent_process": parent(p),
                    },
                    "user": user(p.uid, p.user.as_ref()),
                });
            } else {
                let exe_is_file = f.is_some_and(|f| Some(&f.path) == p.exe.as_ref());
                let exe = p.exe.as_deref().map(|x| {
                    if exe_is_file {
                        let f = f.expect("checked");
                        file_object(x, f.sha256.as_ref(), f.size)
                    } else {
                        file_object(x, None, None)
                    }
                });
                if !exe_is_file {
                    // The script an interpreter runs: OCSF's process has no place for it.
                    v["unmapped"]["file"] = json!(f);
                }
                v["process"] = json!({
                    "pid": p.pid,
                    "name": p.exe.as_deref().map(base_name),
                    "file": exe,
                    "cmd_line": cmd_line(&p.argv),
                    "user": user(p.uid, p.user.as_ref()),
                    "parent_process": parent(p),
                });
                v["actor"] = if e.kind == EventKind::ProcessKilled {
                    json!({ "app_name": "interdict" })
                } else {
                    let mut a = json!({ "user": user(p.uid, p.user.as_ref()) });
                    if p.ppid.is_some() {
                        a["process"] = parent(p);
                    }
                    a
                };
            }
        }
        Class::FileSystem => {
            let f = e.file.as_ref().expect("a file class has a file");
            let mut file = event_file(e, f);
            if e.kind == EventKind::ScriptDenied {
                // The interpreter that opened the script.
                let p = p.cloned().unwrap_or_default();
                v["actor"] = json!({
                    "process": {
                        "pid": p.pid,
                        "name": p.exe.as_deref().map(base_name),
                        "file": p.exe.as_deref().map(|x| file_object(x, None, None)),
                        "cmd_line": cmd_line(&p.argv),
                        "user": user(p.uid, p.user.as_ref()),
                        "parent_process": parent(&p),
                    },
                    "user": user(p.uid, p.user.as_ref()),
                });
            } else {
                if let Some(o) = &owner {
                    file["owner"] = Value::Object(o.clone());
                }
                v["actor"] = match (&owner, e.kind) {
                    (_, EventKind::InstalledQuarantined) | (None, _) => {
                        json!({ "app_name": "interdict" })
                    }
                    (Some(o), _) => json!({ "user": o }),
                };
            }
            v["file"] = file;
        }
        Class::App => {
            profiles.push("host");
            v["app"] = json!({ "name": "interdict", "vendor_name": "interdict" });
            if let Some(f) = &e.file {
                v["unmapped"]["file"] = json!(f);
            }
            if let Some(p) = p {
                v["unmapped"]["process"] = json!(p);
            }
        }
    }
    v["metadata"]["profiles"] = json!(profiles);
    prune(v)
}

/// A one-line description for events that carry no message of their own.
fn summary(e: &Event) -> Option<String> {
    let what = e
        .file
        .as_ref()
        .map(|f| f.path.clone())
        .or_else(|| e.process.as_ref().and_then(|p| p.exe.clone()))?;
    let outcome = e.outcome.map(snake).unwrap_or_else(|| snake(e.kind));
    Some(match &e.rule {
        Some(r) => format!("{}: {what} ({outcome}, rule {})", snake(e.kind), r.id),
        None => format!("{}: {what} ({outcome})", snake(e.kind)),
    })
}
