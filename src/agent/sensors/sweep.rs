//! Judging processes that already run: one process (per proc-connector exec event) or all of
//! them (a sweep at start-up, after every policy change, after a netlink overflow, and
//! periodically when no kernel sensor runs).

use std::sync::Arc;
use std::time::Duration;

use crate::agent::metrics::inc;
use crate::agent::shared::Shared;
use crate::agent::verdict as judge;
use crate::inventory::procs;

/// True when a fresh exec needs no further look: the fanotify guard already found nothing
/// against its executable (path, digest, file name) under the current policy, it is no
/// interpreter, and its command name (the name it was started by) matches nothing either.
/// Costs a `stat` and one small read instead of a full `/proc` read.
fn known_clean(shared: &Shared, active: &crate::agent::shared::Active, pid: u32) -> bool {
    let Ok(m) = std::fs::metadata(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let key = (crate::inventory::hash::FileKey::of(&m), false);
    if shared.decisions.get(&key, active.generation) != Some(crate::agent::shared::Cached::Allow) {
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
    let facts = interdict_policy::Facts {
        names: vec![comm],
        ..Default::default()
    };
    active
        .loaded
        .policy
        .evaluate(&facts)
        .is_none_or(|d| d.action == interdict_policy::Action::Allow)
}

/// Judge one running process and act on the verdict.
pub fn judge_pid(shared: &Shared, pid: u32, sensor: &str) {
    let active = shared.active.load_full();
    if sensor == "proc_connector" && known_clean(shared, &active, pid) {
        return;
    }
    let Some(info) = procs::read_proc(pid) else {
        return; // already gone
    };
    let policy = &active.loaded.policy;
    let pf = procs::facts_for(
        &info,
        &shared.accounts,
        &shared.origin.hostname,
        &shared.memo,
        policy.needs_sha256(),
    );
    let Some(d) = policy.evaluate(&pf.facts) else {
        return;
    };
    let plan = judge::plan(policy, Some(&d), shared.today());
    if sensor == "proc_connector"
        && matches!(plan, judge::Plan::Report | judge::Plan::WouldEnforce)
        && d.subject == interdict_policy::Subject::Exe
        && on_marked_mount(shared, pid)
    {
        return; // the fanotify guard reported this exec already
    }
    let j = judge::Judged {
        policy,
        decision: &d,
        facts: &pf.facts,
    };
    judge::act_on_running(shared, sensor, &info, j, plan, None);
}

fn on_marked_mount(shared: &Shared, pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(format!("/proc/{pid}/exe")) else {
        return false;
    };
    shared
        .fanotify_devs
        .lock()
        .expect("devs poisoned")
        .contains(&m.dev())
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

/// Judge every running process.
pub fn sweep(shared: &Shared, sensor: &str) {
    inc(&shared.metrics.c.sweeps);
    for pid in all_pids() {
        if shared.shutdown.is_triggered() {
            return;
        }
        judge_pid(shared, pid, sensor);
    }
}

/// Start periodic polling every `interval`.
pub fn start_polling(shared: Arc<Shared>, interval: Duration) -> Result<(), String> {
    shared.set_sensor(
        "poll",
        "running",
        format!("sweep every {} ms", interval.as_millis()),
    );
    std::thread::Builder::new()
        .name("poll".into())
        .spawn(move || loop {
            let mut pfd = libc::pollfd {
                fd: shared.shutdown.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            unsafe {
                libc::poll(
                    &mut pfd,
                    1,
                    interval.as_millis().min(i32::MAX as u128) as i32,
                )
            };
            if shared.shutdown.is_triggered() {
                shared.set_sensor("poll", "stopped", "shut down");
                return;
            }
            sweep(&shared, "poll");
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
}
