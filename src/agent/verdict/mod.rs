//! The verdict: the one place where a policy decision becomes a plan, and a plan becomes what
//! the agent does, the event that records it, the notice the employee gets and the digest it
//! learns. Every sensor builds [`Facts`] (with the inventory's `FactsBuilder`), calls
//! [`decide`], carries out the part only it can (answering the kernel), and hands the rest to
//! [`denied`], [`on_running`] or [`installed`].

pub mod learn;

use interdict_event::{
    bound_argv, redact_argv, Event, EventKind, FileRef, Outcome, ProcessRef, RuleRef,
};
use interdict_policy::{Action, Decision, Enforcement, Facts, Policy, SelectorKind};

use super::enforce::kill::KillResult;
use super::enforce::notices::{Notice, NoticeKind};
use super::metrics::inc;
use super::sensors::Part;
use super::shared::Shared;
use crate::inventory::installed::{ConfigFound, Found};
use crate::inventory::procs::ProcessInfo;
use learn::{LearnRequest, Source};

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

/// The plan for a decision on `today` (the policy's own [`Policy::enforcement`] says whether
/// monitor mode or `enforce_from` hold it back).
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

/// A decision with what it was made on.
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'a> {
    /// The policy that decided.
    pub policy: &'a Policy,
    /// The winning rule, if any.
    pub decision: Option<Decision>,
    /// What to do.
    pub plan: Plan,
    /// The facts it was made on.
    pub facts: &'a Facts,
    /// True when another user could get another answer for the same file (a rule that
    /// matched exempts users or groups, or has an exception granted): not to be cached by file.
    pub per_user: bool,
}

/// Decide on `facts`. A digest learned on this host never applies to a file in the system
/// directories or owned by a package: such a match is set aside (the digest is taken out of
/// the facts and the policy asked again) and the learner drops it.
pub fn decide<'a>(shared: &Shared, policy: &'a Policy, facts: &'a mut Facts) -> Verdict<'a> {
    // Exceptions are bounded in time: the policy is told when the decision is made.
    if facts.now.is_none() {
        facts.now = Some(crate::inventory::host::unix_now());
    }
    let (mut decision, per_user) = policy.evaluate_per_user(facts);
    if let Some(d) = decision.filter(|d| policy.is_learned(d)) {
        let (path, digest) = match d.subject {
            interdict_policy::Subject::Script => (&facts.script_path, &mut facts.script_sha256),
            _ => (&facts.exe_path, &mut facts.exe_sha256),
        };
        let packages = shared.learner.packages();
        if let Some(path) = path.as_deref() {
            if crate::policy::learned::misfires(policy, &d, path, &packages) {
                if let Some(digest) = digest.take() {
                    shared
                        .learner
                        .misfired(digest, path.to_path_buf(), &shared.metrics);
                }
                decision = policy.evaluate(facts);
            }
        }
    }
    let facts: &'a Facts = facts;
    Verdict {
        policy,
        decision,
        plan: plan(policy, decision.as_ref(), shared.today()),
        facts,
        per_user,
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

/// The file a decision was about, for an event: the script when a script rule decided (an
/// interpreter's executable is not what the rule banned), else the executable, else the script.
pub fn file_ref(facts: &Facts, d: Option<&Decision>, size: Option<u64>) -> Option<FileRef> {
    if let (Some(d), Some(s)) = (d, &facts.script_path) {
        if d.subject == interdict_policy::Subject::Script {
            return Some(FileRef {
                path: crate::path_text(s),
                sha256: facts.script_sha256.map(|h| h.to_string()),
                size,
            });
        }
    }
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

/// Who to tell: a user id and, for a process, its controlling terminal.
#[derive(Debug, Clone, Copy)]
pub struct Recipient {
    /// The user.
    pub uid: u32,
    /// The terminal the process ran in.
    pub tty_nr: Option<u32>,
}

impl Recipient {
    /// The user who ran a process, on its terminal.
    pub fn of(info: &ProcessInfo) -> Option<Recipient> {
        Some(Recipient {
            uid: info.uid?,
            tty_nr: info.tty_nr,
        })
    }
}

/// The notice for the employee, unless the rule says `notify = false`.
pub fn notice(shared: &Shared, v: &Verdict<'_>, to: Recipient, kind: NoticeKind) -> Option<Notice> {
    let d = v.decision.as_ref()?;
    let rule = v.policy.rule(d);
    if !rule.notify {
        return None;
    }
    let user = shared.accounts.user_name(to.uid);
    let file = file_ref(v.facts, Some(d), None);
    let path = file.as_ref().map(|f| f.path.clone()).unwrap_or_default();
    let sha = file.and_then(|f| f.sha256).unwrap_or_default();
    let more_info_url = v.policy.info().more_info_url.as_deref().map(|u| {
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
    Some(Notice {
        kind,
        uid: to.uid,
        rule_id: rule.id.clone(),
        tool: rule.name.clone(),
        reason: rule.reason.clone(),
        risk: rule.risk.to_string(),
        message: v.policy.message_for(rule).map(str::to_string),
        alternative: rule.alternative.clone(),
        more_info_url,
        path,
        tty_nr: to.tty_nr,
    })
}

fn tell(shared: &Shared, v: &Verdict<'_>, to: Option<Recipient>, kind: NoticeKind) {
    if let Some(n) = to.and_then(|to| notice(shared, v, to, kind)) {
        shared.notices.send(n, &shared.metrics);
    }
}

/// The event for a verdict.
fn event(
    shared: &Shared,
    kind: EventKind,
    outcome: Outcome,
    sensor: Part,
    v: &Verdict<'_>,
) -> Event {
    let mut e = shared.event(kind);
    e.outcome = Some(outcome);
    e.sensor = Some(sensor.as_str().into());
    e.rule = v.decision.as_ref().map(|d| rule_ref(v.policy, d, v.facts));
    e.file = file_ref(v.facts, v.decision.as_ref(), None);
    e
}

/// A path or script rule fired: learn the file's digest (on the learner's thread), so that a
/// renamed copy is caught by hash.
fn learn_from(shared: &Shared, v: &Verdict<'_>, source: Source) {
    let Some(d) = v.decision else { return };
    let (path, digest) = match d.selector {
        SelectorKind::Path => (v.facts.exe_path.clone(), v.facts.exe_sha256),
        SelectorKind::Script => (v.facts.script_path.clone(), v.facts.script_sha256),
        _ => return,
    };
    if let Some(path) = path {
        shared.learner.request(
            LearnRequest {
                rule_id: v.policy.rule(&d).id.clone(),
                path,
                selector: d.selector,
                digest,
                source,
                pattern: v.policy.evidence(&d, v.facts).pattern,
            },
            &shared.metrics,
        );
    }
}

/// The kernel held an exec (or, with `script`, a script open) and the guard denied it: record
/// it, learn from it, tell the person who tried. `info` is the calling process (read while it
/// waited), `pid` its id when it could not be read.
pub fn denied(
    shared: &Shared,
    v: &Verdict<'_>,
    script: bool,
    pid: u32,
    info: Option<&ProcessInfo>,
    file: FileRef,
) {
    let (kind, sensor) = if script {
        (EventKind::ScriptDenied, Part::ScriptGuard)
    } else {
        (EventKind::ExecDenied, Part::Fanotify)
    };
    let mut e = event(shared, kind, Outcome::Denied, sensor, v);
    e.process = Some(match info {
        Some(i) => process_ref(shared, i),
        None => ProcessRef {
            pid,
            ..Default::default()
        },
    });
    e.file = Some(file);
    shared.emit(e);
    learn_from(shared, v, Source::Exec);
    tell(shared, v, info.and_then(Recipient::of), NoticeKind::Blocked);
}

/// Carry out a plan on a process that already runs (proc connector, sweeps, a late decision),
/// and record it. The kill goes first (it must not wait); the event records the decision
/// whatever the kill's result. `plan` overrides the verdict's (a deny that came too late is a
/// kill).
pub fn on_running(
    shared: &Shared,
    sensor: Part,
    info: &ProcessInfo,
    v: &Verdict<'_>,
    plan: Plan,
    note: Option<String>,
) {
    let m = &shared.metrics.c;
    let mut note = note;
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
            if shared.protected.runs_protected(info.pid) {
                inc(&m.protected);
                (EventKind::ExecReported, Outcome::Protected)
            } else {
                // Its process tree (MCP servers, tools it runs), read while it still holds it:
                // killed with it, after it, so that it cannot start them again.
                let tree = crate::inventory::procs::descendants(info.pid);
                match shared.killer.kill(info.pid, start) {
                    KillResult::Killed => {
                        inc(&m.killed);
                        kill_tree(shared, sensor, info, v, &tree);
                        (EventKind::ProcessKilled, Outcome::Killed)
                    }
                    KillResult::AlreadyKilled => return,
                    KillResult::Protected => {
                        inc(&m.protected);
                        (EventKind::ExecReported, Outcome::Protected)
                    }
                    r @ (KillResult::Gone | KillResult::Failed(_)) => {
                        inc(&m.kill_failures);
                        // Say why: the event is all a reviewer has.
                        let why = match r {
                            KillResult::Failed(errno) => format!(
                                "kill failed: {}",
                                crate::io_reason(&std::io::Error::from_raw_os_error(errno))
                            ),
                            _ => "kill failed: the process was gone".to_string(),
                        };
                        note = Some(match note {
                            Some(n) => format!("{n}; {why}"),
                            None => why,
                        });
                        (EventKind::ProcessKilled, Outcome::KillFailed)
                    }
                }
            }
        }
    };
    learn_from(shared, v, Source::Exec);
    let mut e = event(shared, kind, outcome, sensor, v);
    e.process = Some(process_ref(shared, info));
    e.message = note;
    shared.emit(e);
    let told = match outcome {
        Outcome::Killed => Some(NoticeKind::Killed),
        Outcome::Reported => Some(NoticeKind::Reported),
        Outcome::WouldEnforce => Some(NoticeKind::Warned),
        _ => None,
    };
    if let Some(k) = told {
        tell(shared, v, Recipient::of(info), k);
    }
}

/// Kill what a killed banned process had started (`tree`: its descendants with their start
/// ticks, read before it was killed), and report each (`process_killed`, the rule of the
/// program that started it, `message` naming that program). Protected programs and processes
/// that are gone or whose pid was reused are left alone.
fn kill_tree(
    shared: &Shared,
    sensor: Part,
    root: &ProcessInfo,
    v: &Verdict<'_>,
    tree: &[(u32, u64)],
) {
    for &(pid, start) in tree {
        if shared.protected.runs_protected(pid) {
            continue;
        }
        // Read before the kill: its details are gone after.
        let info = crate::inventory::procs::read_proc(pid);
        if shared.killer.kill(pid, start) != KillResult::Killed {
            continue;
        }
        inc(&shared.metrics.c.killed);
        let mut e = event(shared, EventKind::ProcessKilled, Outcome::Killed, sensor, v);
        e.process = Some(match &info {
            Some(i) => process_ref(shared, i),
            None => ProcessRef {
                pid,
                ..Default::default()
            },
        });
        e.message = Some(format!(
            "started by the banned process {} ({}): killed with it",
            root.pid,
            root.exe
                .as_deref()
                .map(crate::path_text)
                .unwrap_or_else(|| root.comm.to_string_lossy().into_owned())
        ));
        shared.emit(e);
    }
}

/// The file of a find, for an event.
pub fn file_of(f: &Found, size: Option<u64>) -> FileRef {
    FileRef {
        path: crate::path_text(&f.path),
        sha256: f
            .facts
            .exe_sha256
            .or(f.facts.script_sha256)
            .map(|h| h.to_string()),
        size,
    }
}

/// The owner of a find (read again; the user the scan saw when the file is gone).
pub fn owner_of(shared: &Shared, f: &Found) -> Option<ProcessRef> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::symlink_metadata(&f.path)
        .ok()
        .map(|m| m.uid())
        .or_else(|| {
            f.facts
                .user
                .as_deref()
                .and_then(|u| shared.accounts.uid_of(u))
        })?;
    Some(ProcessRef {
        uid: Some(uid),
        user: Some(shared.accounts.user_name(uid)),
        ..ProcessRef::default()
    })
}

/// A banned install found (`gone = false`) or gone (`gone = true`) by `sensor` (the watcher,
/// or a full rescan: `install_scan`): record it; for a new find, learn from it, quarantine it
/// when its rule says so, and tell its owner. `size` is the size of the bytes that were
/// hashed. Returns whether its event was queued.
pub fn installed(
    shared: &Shared,
    found: &Found,
    size: Option<u64>,
    gone: bool,
    sensor: Part,
) -> bool {
    use super::enforce::quarantine;
    let active = shared.policy.active();
    let policy = &active.loaded.policy;
    if found.decision.action == Action::Allow {
        return true;
    }
    let v = Verdict {
        policy,
        decision: Some(found.decision),
        plan: plan(policy, Some(&found.decision), shared.today()),
        facts: &found.facts,
        per_user: false,
    };
    let kind = if gone {
        EventKind::InstalledRemoved
    } else {
        EventKind::InstalledDetected
    };
    let mut e = event(shared, kind, Outcome::Reported, sensor, &v);
    e.file = Some(file_of(found, size));
    if let Some(p) = &found.package {
        e.message = Some(match &p.version {
            Some(ver) => format!("package {} {ver}", p.package),
            None => format!("package {}", p.package),
        });
    }
    let owner = owner_of(shared, found);
    let uid = owner.as_ref().and_then(|o| o.uid);
    e.process = owner;
    let queued = shared.emit(e);
    if gone {
        inc(&shared.metrics.c.installs_removed);
        return queued;
    }
    inc(&shared.metrics.c.installs_detected);
    // A file matched by a path or script glob: learn its digest. (Names are too weak to learn
    // from; package markers are folders.)
    if found.package.is_none() {
        learn_from(shared, &v, Source::Install);
    }
    let told = match quarantine::if_asked(shared, found) {
        Some(Ok(entry)) => {
            let mut q = event(
                shared,
                EventKind::InstalledQuarantined,
                Outcome::Quarantined,
                Part::InstallWatch,
                &v,
            );
            q.file = Some(FileRef {
                path: crate::path_text(&entry.original_path),
                sha256: Some(entry.sha256.clone()),
                size: Some(entry.size),
            });
            q.message = Some(format!("quarantine entry {}", entry.id));
            shared.emit(q);
            inc(&shared.metrics.c.installs_quarantined);
            NoticeKind::Quarantined
        }
        Some(Err(err)) => {
            let mut q = event(
                shared,
                EventKind::InstalledQuarantined,
                Outcome::QuarantineFailed,
                Part::InstallWatch,
                &v,
            );
            q.file = Some(file_of(found, size));
            q.message = Some(err.to_string());
            shared.emit(q);
            NoticeKind::Installed
        }
        None => NoticeKind::Installed,
    };
    tell(
        shared,
        &v,
        uid.map(|uid| Recipient { uid, tty_nr: None }),
        told,
    );
    queued
}

/// An AI agent's configuration file that a `configs` rule names, found by the install watcher:
/// a `config_detected` event (`file`: the configuration file; `message`: what it declares, as
/// JSON: its format and MCP servers with secrets redacted). Only ever reported: configuration
/// files are never blocked, deleted or quarantined, and nobody is notified. True when queued.
pub fn config_detected(shared: &Shared, c: &ConfigFound, file: FileRef, sensor: Part) -> bool {
    let active = shared.policy.active();
    let policy = &active.loaded.policy;
    if c.decision.action == Action::Allow {
        return true;
    }
    let v = Verdict {
        policy,
        decision: Some(c.decision),
        plan: Plan::Report,
        facts: &c.facts,
        per_user: false,
    };
    let mut e = event(
        shared,
        EventKind::ConfigDetected,
        Outcome::Reported,
        sensor,
        &v,
    );
    e.file = Some(file);
    e.message = serde_json::to_string(&c.config).ok();
    shared.emit(e)
}

/// Say so, once per policy, when the policy would block or kill a file the agent protects (its
/// own binary, PID 1's executable, the critical system programs): those are never enforced on.
pub fn warn_about_protected(shared: &Shared) {
    use crate::inventory::facts::FactsBuilder;
    let active = shared.policy.active();
    let policy = &active.loaded.policy;
    for path in super::enforce::kill::Protected::paths() {
        let Ok(canonical) = std::fs::canonicalize(&path) else {
            continue;
        };
        let mut facts = FactsBuilder::new(&shared.origin.hostname)
            .exe(&canonical)
            .name_of(&path)
            .digest_exe_if(policy.needs_sha256(), &shared.memo)
            .build();
        let v = decide(shared, policy, &mut facts);
        let Some(d) = v.decision else { continue };
        if !matches!(v.plan, Plan::Stop | Plan::Kill) {
            continue;
        }
        tracing::warn!(
            "rule `{}` matches {}, which interdict protects: it will never be blocked or killed",
            policy.rule(&d).id,
            canonical.display()
        );
        let mut e = event(
            shared,
            EventKind::ExecReported,
            Outcome::Protected,
            Part::Sweep,
            &v,
        );
        e.sensor = None;
        e.message = Some("the policy would block a protected file; refused".into());
        shared.emit(e);
    }
}
