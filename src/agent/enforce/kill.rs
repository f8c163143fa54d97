//! Guarded kills: never the agent, never PID 1, never a protected program, never the same
//! process twice, never a recycled PID (a pidfd is opened first, then the start time checked).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;

use interdict_policy::CRITICAL_PATHS;

/// Files the agent never blocks or kills, whatever the policy says: its own binary, PID 1's
/// executable and the critical system programs (by device and inode).
#[derive(Debug, Default)]
pub struct Protected {
    ids: HashSet<(u64, u64)>,
}

impl Protected {
    /// The files behind `/proc/self/exe`, `/proc/1/exe` and the critical paths.
    pub fn paths() -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = vec!["/proc/self/exe".into(), "/proc/1/exe".into()];
        paths.extend(CRITICAL_PATHS.iter().map(PathBuf::from));
        paths
    }

    /// Collect the protected files present on this machine.
    pub fn discover() -> Protected {
        let ids = Protected::paths()
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        Protected { ids }
    }

    /// True for a protected file.
    pub fn contains(&self, dev: u64, ino: u64) -> bool {
        self.ids.contains(&(dev, ino))
    }

    /// True when process `pid` runs a protected file.
    pub fn runs_protected(&self, pid: u32) -> bool {
        std::fs::metadata(format!("/proc/{pid}/exe"))
            .map(|m| self.contains(m.dev(), m.ino()))
            .unwrap_or(false)
    }
}

/// The result of a guarded kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillResult {
    /// SIGKILL was delivered.
    Killed,
    /// Already killed once (by this or another sensor): not sent again.
    AlreadyKilled,
    /// Refused: the agent itself or PID 1.
    Protected,
    /// The process is gone, or its pid now names another process.
    Gone,
    /// The kernel refused (errno).
    Failed(i32),
}

/// A process stopped (`SIGSTOP`) while it is judged; continued (`SIGCONT`, through the same
/// pidfd) when dropped. Continuing a process that was killed meanwhile does nothing.
#[derive(Debug)]
pub struct Frozen {
    pidfd: std::os::fd::OwnedFd,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::CONT);
    }
}

/// Stop `pid` while it is judged, if it still is the process that started at `start_ticks`
/// and is neither the agent, PID 1 nor a protected program. `None` when it could not be (or
/// must not be) stopped.
pub fn freeze(protected: &Protected, pid: u32, start_ticks: u64) -> Option<Frozen> {
    use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
    if pid <= 1 || pid == std::process::id() || protected.runs_protected(pid) {
        return None;
    }
    let id = i32::try_from(pid).ok().and_then(Pid::from_raw)?;
    let pidfd = pidfd_open(id, PidfdFlags::empty()).ok()?;
    match crate::inventory::procs::read_stat(pid) {
        Some((_, start)) if start == start_ticks => {}
        _ => return None,
    }
    pidfd_send_signal(&pidfd, Signal::STOP).ok()?;
    Some(Frozen { pidfd })
}

/// Kills by pidfd, at most once per process, never the agent or PID 1, never a recycled pid.
#[derive(Debug, Default)]
pub struct Killer {
    done: Mutex<HashSet<(u32, u64)>>,
}

impl Killer {
    /// Kill `pid` if it still is the process that started at `start_ticks`.
    pub fn kill(&self, pid: u32, start_ticks: u64) -> KillResult {
        use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
        if pid <= 1 || pid == std::process::id() {
            return KillResult::Protected;
        }
        {
            let mut done = self.done.lock().expect("killer poisoned");
            if done.len() > 100_000 {
                done.clear();
            }
            if !done.insert((pid, start_ticks)) {
                return KillResult::AlreadyKilled;
            }
        }
        let Some(id) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return KillResult::Gone;
        };
        // Open the pidfd first, then check the start time: if it matches, the pidfd names the
        // process we judged, and a signal through it cannot reach a newcomer with that pid.
        let Ok(pidfd) = pidfd_open(id, PidfdFlags::empty()) else {
            return KillResult::Gone;
        };
        match crate::inventory::procs::read_stat(pid) {
            Some((_, start)) if start == start_ticks => {}
            _ => return KillResult::Gone,
        }
        match pidfd_send_signal(&pidfd, Signal::KILL) {
            Ok(()) => KillResult::Killed,
            Err(rustix::io::Errno::SRCH) => KillResult::Gone,
            Err(e) => KillResult::Failed(e.raw_os_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn killer_kills_once_and_refuses_itself_and_init() {
        let k = Killer::default();
        assert_eq!(k.kill(1, 0), KillResult::Protected);
        assert_eq!(k.kill(std::process::id(), 0), KillResult::Protected);
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let (_, start) = crate::inventory::procs::read_stat(pid).unwrap();
        // A wrong start time means the pid names another process: nothing is sent.
        assert_eq!(k.kill(pid, start + 1), KillResult::Gone);
        assert_eq!(k.kill(pid, start), KillResult::Killed);
        assert_eq!(k.kill(pid, start), KillResult::AlreadyKilled);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
