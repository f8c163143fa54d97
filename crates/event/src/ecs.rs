//! Events as Elastic Common Schema (ECS 8.11) documents.
//!
//! Violations are `event.kind: "alert"`, everything else `"event"`; `event.category` is
//! `process`, `file` or `configuration`; `event.type` says `start`/`end`/`denied`/`allowed`/
//! `creation`/`deletion`/`change`; the rule is under `rule.*`, the policy is the rule set, and the
//! fields ECS has no place for (outcome, selector, chain) go under `interdict.*`.

use serde_json::{json, Value};

use crate::{prune, Event, EventKind, Outcome};

/// The ECS version written in `ecs.version`.
pub const ECS_VERSION: &str = "8.11.0";

fn types(e: &Event) -> (&'static str, Vec<&'static str>) {
    let denied = matches!(
        e.outcome,
        Some(Outcome::Denied) | Some(Outcome::DeniedOnDeadline) | Some(Outcome::Killed)
    );
    match e.kind {
        EventKind::ExecDenied | EventKind::ExecReported | EventKind::ScriptDenied => (
            "process",
            vec!["start", if denied { "denied" } else { "allowed" }],
        ),
        EventKind::ProcessKilled => ("process", vec!["end", "denied"]),
        EventKind::InstalledDetected => ("file", vec!["creation"]),
        EventKind::InstalledRemoved => ("file", vec!["deletion"]),
        EventKind::InstalledQuarantined => ("file", vec!["change", "denied"]),
        _ => ("configuration", vec!["change"]),
    }
}

/// The event as one ECS document.
pub fn to_ecs(e: &Event) -> Value {
    let (category, ty) = types(e);
    let alert = e.rule.is_some();
    let p = e.process.as_ref();
    let outcome = match e.outcome {
        Some(Outcome::KillFailed) | Some(Outcome::QuarantineFailed) => "failure",
        Some(_) => "success",
        None => "unknown",
    };
    let on_process = category == "process";
    let sha = e.file.as_ref().and_then(|f| f.sha256.clone());
    prune(json!({
        "@timestamp": e.time,
        "ecs": { "version": ECS_VERSION },
        "message": e.message,
        "event": {
            "id": e.id,
            "kind": if alert { "alert" } else { "event" },
            "category": [category],
            "type": ty,
            "action": e.kind,
            "outcome": outcome,
            "sequence": e.seq,
            "dataset": "interdict.events",
            "module": "interdict",
            "severity": e.rule.as_ref().map(|r| match r.risk.as_str() {
                "critical" => 99, "high" => 73, "medium" => 47, _ => 21,
            }),
        },
        "host": { "id": e.host_id, "hostname": e.hostname, "name": e.hostname },
        "user": p.map(|p| json!({ "name": p.user, "id": p.uid.map(|u| u.to_string()) })),
        "process": p.map(|p| json!({
            "pid": p.pid,
            "executable": p.exe,
            "args": if p.argv.is_empty() { Value::Null } else { json!(p.argv) },
            "working_directory": p.cwd,
            "hash": if on_process { sha.as_ref().map(|h| json!({ "sha256": h })) } else { None },
            "parent": p.ppid.map(|pp| json!({ "pid": pp, "executable": p.parent_exe })),
        })),
        "file": e.file.as_ref().map(|f| json!({
            "path": f.path,
            "name": f.path.rsplit('/').next(),
            "size": f.size,
            "hash": f.sha256.as_ref().map(|h| json!({ "sha256": h })),
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
            "policy_sha256": e.policy.as_ref().map(|p| p.sha256.clone()),
            "prev_hash": e.prev_hash,
        },
    }))
}
