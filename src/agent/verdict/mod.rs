//! From a policy decision to what the agent does, and the event that records it. Shared by the
//! fanotify guard, the proc connector and the sweeps, so every sensor acts and reports alike.

use interdict_event::{
    bound_argv, redact_argv, Event, EventKind, FileRef, Outcome, ProcessRef, RuleRef,
};
use interdict_policy::{Action, Decision, Enforcement, Facts, Policy};

use crate::agent::metrics::inc;
use crate::agent::shared::{KillResult, Shared};
use crate::inventory::procs::ProcessInfo;

/// What to do about a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Nothing matched, or an `allow` rule.
    Allow,
    /// Stop it: deny the exec, or kill the process when it already runs.
    Stop,
    /// Let it run and kill it (`kill` action).
    Kill,
    /// Report only (`report` action).
    Report,
    /// Would stop or kill, but the policy is in monitor mode or the rule is not yet enforced.
    WouldEnforce,
}

/// Decide the plan for a decision on `today`.
pub fn plan(policy: &Policy, d: Option<&Decision>, today: interdict_policy::Date) -> Plan {
    let Some(d) = d else { return Plan::Allow };
    match (d.action, policy.enforcement(d, today)) {
        (Action::Allow, _) => Plan::Allow,
        (Action::Report, _) => Plan::Report,
        (_, Enforcement::Monitor | Enforcement::NotYet(_)) => Plan::WouldEnforce,
        (Action::Kill, _) => Plan::Kill,
        (Action::Block | Action::Quarantine, _) => Plan::Stop,
    }
}

/// The rule and evidence of a decision, for an event.
pub fn rule_ref(policy: &Policy, d: &Decision, facts: &Facts) -> RuleRef {
    let rule = policy.rule(d);
    let ev = policy.evidence(d, facts);
    RuleRef {
        id: rule.id.clone(),
        name: rule.name.clone(),
        risk: rule.risk.to_string(),
        action: rule.action.to_string(),
        selector: ev.selector.as_str().to_string(),
        pattern: ev.pattern,
        matched: ev.value,
    }
}

/// A process for an event: command line redacted and bounded, user and parent filled in.
pub fn process_ref(shared: &Shared, info: &ProcessInfo) -> ProcessRef {
    let argv: Vec<String> = info
        .argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let (argv, _) = bound_argv(redact_argv(&argv));
    ProcessRef {
        pid: info.pid,
        ppid: info.ppid,
        exe: info.exe.as_ref().map(|e| crate::path_text(e)),
        argv,
        cwd: info
            .cwd
            .clone()
            .or_else(|| crate::inventory::procs::cwd_of(info.pid))
            .map(|c| crate::path_text(&c)),
        uid: info.uid,
        user: info.uid.map(|u| shared.accounts.user_name(u)),
        start_time: info.start_ticks,
        parent_exe: info
            .ppid
            .and_then(|pp| std::fs::read_link(format!("/proc/{pp}/exe")).ok())
            .map(|p| crate::path_text(&p)),
    }
}

/// The file a decision was about, for an event.
pub fn file_ref(facts: &Facts, size: Option<u64>) -> Option<FileRef> {
    let (path, sha) = match (&facts.exe_path, &facts.script_path) {
        (_, Some(s)) if facts.script_sha256.is_some() || facts.exe_path.is_none() => {
            (s, facts.script_sha256)
        }
        (Some(e), _) => (e, facts.exe_sha256),
        (None, Some(s)) => (s, facts.script_sha256),
        (None, None) => return None,
    };
    Some(FileRef {
        path: crate::path_text(path),
        sha256: sha.map(|h| h.to_string()),
        size,
    })
}

/// The notice for the employee who ran `info`, unless the rule says `notify = false`.
pub fn notice(
    shared: &Shared,
    j: Judged<'_>,
    info: &ProcessInfo,
    kind: crate::agent::enforce::notices::NoticeKind,
) -> Option<crate::agent::enforce::notices::Notice> {
    let rule = j.policy.rule(j.decision);
    if !rule.notify {
        return None;
    }
    let uid = info.uid?;
    let user = shared.accounts.user_name(uid);
    let file = file_ref(j.facts, None);
    let path = file.as_ref().map(|f| f.path.clone()).unwrap_or_default();
    let sha = file.and_then(|f| f.sha256).unwrap_or_default();
    let more_info_url = j.policy.info().more_info_url.as_deref().map(|u| {
        interdict_policy::expand_placeholders(
            u,
            &interdict_policy::PlaceholderValues {
                rule_id: &rule.id,
                sha256: &sha,
                path: &path,
                host: &shared.origin.hostname,
                user: &user,
            },
            true,
        )
    });
    Some(crate::agent::enforce::notices::Notice {
        kind,
        uid,
        rule_id: rule.id.clone(),
        tool: rule.name.clone(),
        reason: rule.reason.clone(),
        risk: rule.risk.to_string(),
        message: j.policy.message_for(rule).map(str::to_string),
        alternative: rule.alternative.clone(),
        more_info_url,
        path,
        tty_nr: info.tty_nr,
    })
}

/// Queue the notice for a decision, if the rule wants one.
pub fn tell(
    shared: &Shared,
    j: Judged<'_>,
    info: &ProcessInfo,
    kind: crate::agent::enforce::notices::NoticeKind,
) {
    if let Some(n) = notice(shared, j, info, kind) {
        shared.notices.send(n, &shared.metrics);
    }
}

/// A decision with what it was made on.
#[derive(Debug, Clone, Copy)]
pub struct Judged<'a> {
    /// The policy that decided.
    pub policy: &'a Policy,
    /// The decision.
    pub decision: &'a Decision,
    /// The facts it was made on.
    pub facts: &'a Facts,
}

/// Carry out a plan on a process that already runs (proc connector, sweeps, a late decision),
/// and record it. Logs (queues the event) after acting only because the kill must not wait; the
/// decision itself was taken, and is recorded, whatever the kill's result.
pub fn act_on_running(
    shared: &Shared,
    sensor: &str,
    info: &ProcessInfo,
    j: Judged<'_>,
    plan: Plan,
    note: Option<String>,
) {
    use crate::agent::enforce::notices::NoticeKind;
    let m = &shared.metrics.c;
    let (kind, outcome) = match plan {
        Plan::Allow => return,
        Plan::Report => {
            inc(&m.reported);
            (EventKind::ExecReported, Outcome::Reported)
        }
        Plan::WouldEnforce => {
            inc(&m.reported);
            (EventKind::ExecReported, Outcome::WouldEnforce)
        }
        Plan::Stop | Plan::Kill => {
            let Some(start) = info.start_ticks else {
                return;
            };
            if is_protected_exe(shared, info.pid) {
                inc(&m.protected);
                (EventKind::ExecReported, Outcome::Protected)
            } else {
                match shared.killer.kill(info.pid, start) {
                    KillResult::Killed => {
                        inc(&m.killed);
                        (EventKind::ProcessKilled, Outcome::Killed)
                    }
                    KillResult::AlreadyKilled => return,
                    KillResult::Protected => {
                        inc(&m.protected);
                        (EventKind::ExecReported, Outcome::Protected)
                    }
                    KillResult::Gone | KillResult::Failed(_) => {
                        inc(&m.kill_failures);
                        (EventKind::ProcessKilled, Outcome::KillFailed)
                    }
                }
            }
        }
    };
    learn_from(shared, j);
    let mut e: Event = shared.event(kind);
    e.outcome = Some(outcome);
    e.sensor = Some(sensor.to_string());
    e.rule = Some(rule_ref(j.policy, j.decision, j.facts));
    e.process = Some(process_ref(shared, info));
    e.file = file_ref(j.facts, None);
    e.message = note;
    shared.emit(e);
    let told = match outcome {
        Outcome::Killed => Some(NoticeKind::Killed),
        Outcome::Reported => Some(NoticeKind::Reported),
        Outcome::WouldEnforce => Some(NoticeKind::Warned),
        _ => None,
    };
    if let Some(k) = told {
        tell(shared, j, info, k);
    }
}

/// A path or script rule fired on a launch: learn the file's digest (off this thread), so that
/// a renamed copy is caught by hash.
pub fn learn_from(shared: &Shared, j: Judged<'_>) {
    use interdict_policy::SelectorKind;
    let (path, digest, selector) = match j.decision.selector {
        SelectorKind::Path => (j.facts.exe_path.clone(), j.facts.exe_sha256, "path"),
        SelectorKind::Script => (j.facts.script_path.clone(), j.facts.script_sha256, "script"),
        _ => return,
    };
    if let Some(path) = path {
        shared.learn_later(crate::agent::shared::LearnRequest {
            rule_id: j.policy.rule(j.decision).id.clone(),
            path,
            selector,
            digest,
        });
    }
}

fn is_protected_exe(shared: &Shared, pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .map(|m| shared.protected.contains(m.dev(), m.ino()))
        .unwrap_or(false)
}
