//! Events as Elastic Common Schema (ECS 8.11) documents. Every field is an ECS field of the
//! right type (checked against Elastic's own field reference, npm `@elastic/ecs`) except the
//! custom ones under `interdict.*`.
//!
//! Detections are `event.kind: "alert"`, the agent's own events `"event"` and heartbeats
//! `"state"`. `event.category`/`event.type` are pairs from Elastic's allowed-values table: a
//! launch is `[process, intrusion_detection]` with `[start, denied]` or `[start, allowed]`, a
//! kill `[end, denied]`, a script denial `[file, intrusion_detection]` with `[access, denied]`,
//! installs `[file, intrusion_detection]` with `creation`/`info`/`deletion`/`change`, the
//! agent's life `process` start/end, policies `configuration` change, sensors and drops `host`.
//! `event.outcome` is `failure` for a denied launch or open, a failed kill or quarantine, a
//! rejected policy, a degraded sensor and dropped events, `success` otherwise.
//!
//! A launch refused before it ran has the refused program as `process` (`executable`, `name`,
//! `hash.sha256`; no `args`, which it never had) and the caller, whose image `/proc` still
//! showed, as `process.parent` (same pid: an exec keeps it). The rule is under `rule.*`, the
//! policy is the rule set, and what ECS has no place for is under `interdict.*`.

use serde_json::{json, Value};

use crate::{base_name, failed, file_is_folder, prune, Event, EventKind, Outcome};

/// The ECS version written in `ecs.version`.
pub const ECS_VERSION: &str = "8.11.0";

/// (kind, categories, types) from Elastic's table of expected types per category.
fn classify(e: &Event) -> (&'static str, Vec<&'static str>, Vec<&'static str>) {
    const ID: &str = "intrusion_detection";
    let denied = matches!(
        e.outcome,
        Some(Outcome::Denied | Outcome::DeniedOnDeadline | Outcome::Killed)
    );
    let verdict = if denied { "denied" } else { "allowed" };
    match e.kind {
        EventKind::ExecDenied | EventKind::ExecReported if e.process.is_some() => {
            ("alert", vec!["process", ID], vec!["start", verdict])
        }
        EventKind::ProcessKilled if e.outcome == Some(Outcome::KillFailed) => {
            ("alert", vec!["process", ID], vec!["info", "allowed"])
        }
        EventKind::ProcessKilled => ("alert", vec!["process", ID], vec!["end", "denied"]),
        EventKind::ScriptDenied => ("alert", vec!["file", ID], vec!["access", "denied"]),
        EventKind::InstalledDetected if e.sensor.as_deref() == Some(crate::INSTALL_SCAN) => {
            ("alert", vec!["file", ID], vec!["info"])
        }
        EventKind::InstalledDetected => ("alert", vec!["file", ID], vec!["creation", "info"]),
        EventKind::InstalledRemoved => ("event", vec!["file"], vec!["deletion"]),
        // An AI agent's configuration file found on disk (reported only).
        EventKind::ConfigDetected => ("alert", vec!["file", ID], vec!["info"]),
        EventKind::InstalledQuarantined if e.outcome == Some(Outcome::Quarantined) => {
            ("alert", vec!["file", ID], vec!["deletion", "denied"])
        }
        EventKind::InstalledQuarantined => ("alert", vec!["file", ID], vec!["info", "allowed"]),
        EventKind::AgentStarted => ("event", vec!["process"], vec!["start"]),
        EventKind::AgentStopped => ("event", vec!["process"], vec!["end"]),
        EventKind::PolicyApplied | EventKind::PolicyRejected => {
            ("event", vec!["configuration"], vec!["change"])
        }
        EventKind::SensorDegraded => ("event", vec!["host"], vec!["change"]),
        EventKind::EventsDropped => ("event", vec!["host"], vec!["info"]),
        EventKind::Heartbeat => ("state", vec!["host"], vec!["info"]),
        // The digests the agent enforces changed (learned on this host, or dropped).
        EventKind::HashLearned => ("event", vec!["configuration"], vec!["creation"]),
        EventKind::LearnedHashDropped => ("event", vec!["configuration"], vec!["deletion"]),
        // The fleet control plane: approved digests added, exceptions granted and ended.
        EventKind::HashListApplied | EventKind::ExceptionGranted => {
            ("event", vec!["configuration"], vec!["creation"])
        }
        EventKind::HashListRejected | EventKind::ExceptionRejected => {
            ("event", vec!["configuration"], vec!["change"])
        }
        EventKind::ExceptionRequested | EventKind::ExceptionDenied | EventKind::ExceptionEnding => {
            ("event", vec!["configuration"], vec!["info"])
        }
        EventKind::ExceptionExpired => ("event", vec!["configuration"], vec!["deletion"]),
        // A rule refused on a protected file (a policy problem, no process).
        EventKind::ExecDenied | EventKind::ExecReported => {
            ("event", vec!["configuration"], vec!["info"])
        }
    }
}

fn args(argv: &[String]) -> (Value, Value, Value) {
    if argv.is_empty() {
        (Value::Null, Value::Null, Value::Null)
    } else {
        (json!(argv), json!(argv.len()), json!(argv.join(" ")))
    }
}

/// The event as one ECS document.
pub fn to_ecs(e: &Event) -> Value {
    let (kind, category, ty) = classify(e);
    let p = e.process.as_ref();
    let f = e.file.as_ref();
    let outcome = if failed(e) { "failure" } else { "success" };
    let sha = |f: &crate::FileRef| f.sha256.as_ref().map(|h| json!({ "sha256": h }));
    let process = match p {
        _ if matches!(e.kind, EventKind::AgentStarted | EventKind::AgentStopped) => {
            json!({ "name": "interdict" })
        }
        // An install's "process" is only the file's owner.
        _ if e
            .sensor
            .as_deref()
            .is_some_and(|s| s.starts_with("install_")) =>
        {
            Value::Null
        }
        None => Value::Null,
        Some(p) if e.process_is_caller() => {
            let (a, n, cl) = args(&p.argv);
            json!({
                "pid": p.pid,
                "executable": f.map(|f| f.path.clone()),
                "name": f.map(|f| base_name(&f.path).to_string()),
                "hash": f.and_then(sha),
                "working_directory": p.cwd,
                "parent": {
                    "pid": p.pid,
                    "executable": p.exe,
                    "name": p.exe.as_deref().map(base_name),
                    "args": a,
                    "args_count": n,
                    "command_line": cl,
                },
            })
        }
        Some(p) => {
            let (a, n, cl) = args(&p.argv);
            let exe_is_file = f.is_some_and(|f| Some(&f.path) == p.exe.as_ref());
            json!({
                "pid": p.pid,
                "executable": p.exe,
                "name": p.exe.as_deref().map(base_name),
                "args": a,
                "args_count": n,
                "command_line": cl,
                "working_directory": p.cwd,
                "hash": if exe_is_file { f.and_then(sha) } else { None },
                "parent": p.ppid.map(|pp| json!({
                    "pid": pp,
                    "executable": p.parent_exe,
                    "name": p.parent_exe.as_deref().map(base_name),
                })),
            })
        }
    };
    let installed = matches!(
        e.kind,
        EventKind::InstalledDetected
            | EventKind::InstalledRemoved
            | EventKind::InstalledQuarantined
            | EventKind::ConfigDetected
    );
    prune(json!({
        "@timestamp": e.time,
        "ecs": { "version": ECS_VERSION },
        "message": e.message,
        "event": {
            "id": e.id,
            "kind": kind,
            "category": category,
            "type": ty,
            "action": e.kind,
            "outcome": outcome,
            "sequence": e.seq,
            "dataset": "interdict.events",
            "module": "interdict",
            "provider": e.sensor,
            "severity": e.rule.as_ref().map(|r| match r.risk.as_str() {
                "critical" => 99, "high" => 73, "medium" => 47, _ => 21,
            }),
        },
        "agent": { "type": "interdict", "name": "interdict" },
        "host": { "id": e.host_id, "hostname": e.hostname, "name": e.hostname },
        "user": p.map(|p| json!({ "name": p.user, "id": p.uid.map(|u| u.to_string()) })),
        "process": process,
        "file": f.map(|f| json!({
            "path": f.path,
            "name": base_name(&f.path),
            "type": if file_is_folder(e) { "dir" } else { "file" },
            "directory": f.path.rsplit_once('/').map(|(d, _)| if d.is_empty() { "/" } else { d }),
            "size": if file_is_folder(e) { None } else { f.size },
            "hash": sha(f),
            "owner": if installed { p.and_then(|p| p.user.clone()) } else { None },
            "uid": if installed { p.and_then(|p| p.uid.map(|u| u.to_string())) } else { None },
        })),
        "rule": e.rule.as_ref().map(|r| json!({
            "id": r.id,
            "name": r.name,
            "ruleset": e.policy.as_ref().map(|p| p.name.clone()),
            "version": e.policy.as_ref().map(|p| p.version.clone()),
        })),
        "interdict": {
            "outcome": e.outcome,
            "sensor": e.sensor,
            "risk": e.rule.as_ref().map(|r| r.risk.clone()),
            "action": e.rule.as_ref().map(|r| r.action.clone()),
            "selector": e.rule.as_ref().map(|r| r.selector.clone()),
            "pattern": e.rule.as_ref().map(|r| r.pattern.clone()),
            "matched": e.rule.as_ref().map(|r| r.matched.clone()),
            "policy_mode": e.policy.as_ref().map(|p| p.mode.clone()),
            "policy_sha256": e.policy.as_ref().map(|p| p.sha256.clone()),
            "caller_ppid": if e.process_is_caller() { p.and_then(|p| p.ppid) } else { None },
            "caller_parent_executable": if e.process_is_caller() {
                p.and_then(|p| p.parent_exe.clone())
            } else {
                None
            },
            "prev_hash": e.prev_hash,
        },
    }))
}
