//! Events as OCSF 1.3 records, for SIEMs that speak the Open Cybersecurity Schema Framework.
//!
//! Process events (an exec denied, reported or killed; a script open denied) are **Process
//! Activity** (`class_uid` 1007): a blocked launch is `activity_id` 1 (Launch) with `action_id` 2
//! (Denied) and `disposition_id` 2 (Blocked); a kill is `activity_id` 2 (Terminate). Installed
//! software is **File System Activity** (1001); the agent's own life (start, stop, policies,
//! sensors) is **Application Lifecycle** (6002). The rule and chain fields that OCSF has no place
//! for go under `unmapped`. File hashes are `{algorithm_id: 3, algorithm: "SHA-256", value}`.

use serde_json::{json, Value};

use crate::{prune, Event, EventKind, Outcome};

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
            EventKind::PolicyRejected | EventKind::SensorDegraded => (3, "Medium"),
            EventKind::EventsDropped => (4, "High"),
            _ => (1, "Informational"),
        },
    }
}

/// (action_id, action, disposition_id, disposition) for what the agent did.
fn action(o: Option<Outcome>) -> (u8, &'static str, u8, &'static str) {
    match o {
        Some(Outcome::Denied) | Some(Outcome::DeniedOnDeadline) | Some(Outcome::Killed) => {
            (2, "Denied", 2, "Blocked")
        }
        Some(Outcome::Quarantined) => (2, "Denied", 3, "Quarantined"),
        Some(Outcome::KillFailed) | Some(Outcome::QuarantineFailed) => (1, "Allowed", 27, "Error"),
        Some(Outcome::Reported) | Some(Outcome::WouldEnforce) => (1, "Allowed", 15, "Detected"),
        Some(Outcome::AllowedOnDeadline) | Some(Outcome::Protected) => (1, "Allowed", 1, "Allowed"),
        None => (0, "Unknown", 0, "Unknown"),
    }
}

/// (class_uid, class_name, category_uid, category_name, activity_id, activity_name).
fn class(kind: EventKind) -> (u32, &'static str, u32, &'static str, u32, &'static str) {
    const PROC: (u32, &str, u32, &str) = (1007, "Process Activity", 1, "System Activity");
    const FS: (u32, &str, u32, &str) = (1001, "File System Activity", 1, "System Activity");
    const APP: (u32, &str, u32, &str) = (6002, "Application Lifecycle", 6, "Application Activity");
    let (c, a, an) = match kind {
        EventKind::ExecDenied | EventKind::ExecReported => (PROC, 1, "Launch"),
        EventKind::ProcessKilled => (PROC, 2, "Terminate"),
        EventKind::ScriptDenied => (PROC, 99, "Other"),
        EventKind::InstalledDetected => (FS, 1, "Create"),
        EventKind::InstalledRemoved => (FS, 4, "Delete"),
        EventKind::InstalledQuarantined => (FS, 5, "Rename"),
        EventKind::AgentStarted => (APP, 3, "Start"),
        EventKind::AgentStopped => (APP, 4, "Stop"),
        EventKind::PolicyApplied
        | EventKind::PolicyRejected
        | EventKind::SensorDegraded
        | EventKind::EventsDropped
        | EventKind::Heartbeat
        | EventKind::HashLearned
        | EventKind::LearnedHashDropped => (APP, 99, "Other"),
    };
    (c.0, c.1, c.2, c.3, a, an)
}

/// The event as one OCSF record.
pub fn to_ocsf(e: &Event) -> Value {
    let (class_uid, class_name, category_uid, category_name, activity_id, activity_name) =
        class(e.kind);
    let (action_id, action_name, disposition_id, disposition) = action(e.outcome);
    let (severity_id, severity_name) = severity(e);
    let p = e.process.as_ref();
    let user = p.map(|p| json!({ "name": p.user, "uid": p.uid.map(|u| u.to_string()) }));
    let file = e.file.as_ref().map(|f| {
        json!({
            "path": f.path,
            "name": f.path.rsplit('/').next(),
            "size": f.size,
            "hashes": hashes(f.sha256.as_ref()),
        })
    });
    let process = p.map(|p| {
        let exe_file = match (&p.exe, &e.file) {
            (_, Some(_)) if class_uid == 1007 => file.clone(),
            (Some(x), _) => Some(json!({ "path": x, "name": x.rsplit('/').next() })),
            _ => None,
        };
        json!({
            "pid": p.pid,
            "cmd_line": if p.argv.is_empty() { Value::Null } else { Value::from(p.argv.join(" ")) },
            "file": exe_file,
            "user": user,
            "parent_process": p.ppid.map(|pp| json!({
                "pid": pp,
                "file": p.parent_exe.as_ref().map(|x| json!({ "path": x })),
            })),
        })
    });
    let mut v = json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": u64::from(class_uid) * 100 + u64::from(activity_id),
        "time": millis(&e.time),
        "severity_id": severity_id,
        "severity": severity_name,
        "action_id": action_id,
        "action": action_name,
        "disposition_id": disposition_id,
        "disposition": disposition,
        "status_id": 1,
        "status": "Success",
        "message": e.message,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": e.id,
            "sequence": e.seq,
            "product": { "name": "interdict", "vendor_name": "interdict" },
            "log_name": "interdict",
        },
        "device": { "uid": e.host_id, "hostname": e.hostname },
        "actor": { "user": user },
        "unmapped": {
            "interdict_kind": e.kind,
            "interdict_outcome": e.outcome,
            "sensor": e.sensor,
            "rule": e.rule,
            "policy": e.policy,
            "prev_hash": e.prev_hash,
        },
    });
    if class_uid == 1007 {
        v["process"] = process.unwrap_or(Value::Null);
    } else {
        v["file"] = file.unwrap_or(Value::Null);
        if let Some(p) = process {
            v["actor"]["process"] = p;
        }
    }
    prune(v)
}
