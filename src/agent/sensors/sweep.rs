//! Judging processes that already run: one process (per proc-connector exec event) or all of
//! them (a sweep at start-up, after every policy change, after a netlink overflow, and
//! periodically when no kernel sensor runs).

use std::sync::Arc;
use std::time::Duration;

use super::cache::{Access, Cached};
use super::{Part, PartState, StartError};
use crate::agent::metrics::inc;
use crate::agent::reload::Active;
use crate::agent::shared::Shared;
use crate::agent::verdict::{self, Plan};
use crate::inventory::facts::FactsBuilder;
use crate::inventory::procs;

/// True when a fresh exec needs no further look: the fanotify guard already found nothing
/// against its executable (path, digest, file name) under the current policy, it is no
/// interpreter, and its command name (the name it was started by) matches nothing either.
/// Costs a `stat` and one small read instead of a full `/proc` read.
fn known_clean(shared: &Shared, active: &Active, pid: u32) -> bool {
    let Ok(m) = std::fs::metadata(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let key = crate::inventory::hash::FileKey::of(&m);
    if shared.decisions.get(key, Access::Exec, active.generation) != Some(Cached::Allow) {
        return false;
    }
    let Ok(mut comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
        return false;
    };
    if comm.ends_with('\n') {
        comm.pop();
    }
    if procs::interpreter(&comm).is_some() {
        return false;
    }
    let facts = FactsBuilder::default().name(Some(comm)).build();
    active
        .loaded
        .policy
        .evaluate(&facts)
        .is_none_or(|d| d.action == interdict_policy::Action::Allow)
}

/// An exec from a filesystem the guard does not mark yet (one mounted in another mount
/// namespace, which the mount table of ours never shows): mark it through `/proc/PID/exe`, so
/// that the next exec there is held before it runs (`[exec] follow_mounts`).
pub fn cover(shared: &Shared, pid: u32) {
    use std::os::unix::fs::MetadataExt;
    if !shared.config.exec.follow_mounts {
        return;
    }
    let Some(guard) = shared.guard.get().and_then(|g| g.upgrade()) else {
        return;
    };
    let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
    let Ok(m) = std::fs::metadata(&exe) else {
        return;
    };
    if shared.is_marked_dev(m.dev()) {
        return;
    }
    // Where the program lies as its own namespace sees it.
    let Ok(seen) = std::fs::read_link(&exe) else {
        return;
    };
    if !super::mounts::under(&seen, &shared.config.exec.follow_mounts_under) {
        return;
    }
    match guard.mark_filesystem(shared, &exe) {
        Ok(true) => tracing::info!(
            "exec guard: marked the filesystem of {} (pid {pid}), first seen through an exec",
            seen.display()
        ),
        Ok(false) => {}
        Err(e) => tracing::debug!(
            "exec guard: cannot mark the filesystem of {}: {}",
            seen.display(),
            crate::io_reason(&e)
        ),
    }
}

/// A fresh exec the proc connector must look at: `None` when the guard already found it clean.
pub fn triage(shared: &Shared, pid: u32) -> Option<procs::ProcessInfo> {
    let active = shared.policy.active();
    if known_clean(shared, &active, pid) {
        return None;
    }
    procs::read_proc(pid)
}

/// Judge one running process and act on the verdict.
pub fn judge_pid(shared: &Shared, pid: u32, sensor: Part) {
    let info = if sensor == Part::ProcConnector {
        let info = triage(shared, pid);
        cover(shared, pid);
        info
    } else {
        procs::read_proc(pid)
    };
    if let Some(info) = info {
        judge(shared, &info, sensor);
    }
}

/// Judge a process read from `/proc` and act on the verdict.
pub fn judge(shared: &Shared, info: &procs::ProcessInfo, sensor: Part) {
    let pid = info.pid;
    let active = shared.policy.active();
    let policy = &active.loaded.policy;
    // Family rules: what the running executable holds (through `/proc/PID/exe`, so a deleted
    // or replaced file is still the one running), read once with its digest.
    let content = if policy.needs_content() {
        crate::inventory::hash::open_regular(
            std::path::Path::new(&format!("/proc/{pid}/exe")),
            true,
        )
        .ok()
        .and_then(|(f, m)| crate::inventory::hash::family_content(policy, &f, &m, &shared.memo))
    } else {
        None
    };
    let mut pf = procs::facts_for(
        info,
        &shared.accounts,
        &shared.origin.hostname,
        &shared.memo,
        policy.needs_sha256(),
    );
    // Not for `ld.so PROGRAM`, judged as the program it runs.
    if pf.facts.exe_path == info.exe {
        pf.facts.exe_content = content;
    }
    let v = verdict::decide(shared, policy, &mut pf.facts);
    let Some(d) = v.decision else { return };
    if sensor == Part::ProcConnector && matches!(v.plan, Plan::Report | Plan::WouldEnforce) {
        let seen_by_the_guard = match d.subject {
            interdict_policy::Subject::Exe => on_marked_filesystem(shared, pid),
            interdict_policy::Subject::Script => v
                .facts
                .script_path
                .as_deref()
                .is_some_and(|s| shared.is_guarded_script(s)),
            _ => false,
        };
        if seen_by_the_guard {
            return; // the fanotify guard (or the script guard) reported this run already
        }
    }
    verdict::on_running(shared, sensor, info, &v, v.plan, None);
}

fn on_marked_filesystem(shared: &Shared, pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/exe")).is_ok_and(|m| shared.is_marked_dev(m.dev()))
}

/// Every process id in `/proc`, except this process.
pub fn all_pids() -> Vec<u32> {
    let me = std::process::id();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .filter(|p| *p != me)
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// Judge every running process; `sensor` names who asked (events say so).
pub fn sweep(shared: &Shared, sensor: Part) {
    inc(&shared.metrics.c.sweeps);
    for pid in all_pids() {
        if shared.shutdown.is_triggered() {
            return;
        }
        judge_pid(shared, pid, sensor);
    }
}

/// Start periodic polling every `interval`.
pub fn start_polling(shared: Arc<Shared>, interval: Duration) -> Result<(), StartError> {
    shared.parts.set(
        Part::Poll,
        PartState::Running,
        format!("sweep every {} ms", interval.as_millis()),
    );
    std::thread::Builder::new()
        .name("poll".into())
        .spawn(move || {
            while !shared.shutdown.sleep(interval) {
                sweep(&shared, Part::Poll);
            }
            shared
                .parts
                .set(Part::Poll, PartState::Stopped, "shut down");
        })
        .map(|_| ())
        .map_err(StartError::io("poll thread"))
}
