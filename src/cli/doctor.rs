//! `interdict doctor`: check a machine and say, line by line, what works and what does not —
//! the kernel features the agent needs, its configuration and policy, the running agent and
//! which filesystems it guards, the collector, the notification path for logged-in people, and
//! the modes of the files that hold secrets.
//!
//! Each line is `STATUS  AREA  message`, with STATUS one of `ok`, `info` (a fact, no judgement),
//! `warn` (works, but needs attention), `FAIL` (does not work; the line says what to do) or `skip`
//! (could not be checked from here: needs root). Exit status 0 only when every line is `ok` or
//! `info`; 1 otherwise.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::agent::config::{AgentConfig, ConfigError};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Works.
    Ok,
    /// A fact worth knowing; nothing to do.
    Info,
    /// Works, but needs attention.
    Warn,
    /// Does not work.
    Fail,
    /// Could not be checked from this account.
    Skip,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Info => "info",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// How it came out.
    pub status: Verdict,
    /// What part of the machine: `kernel`, `config`, `policy`, `agent`, `sensor`, `marks`,
    /// `collector`, `notify`, `files`.
    pub area: &'static str,
    /// What was found, and what to do about a problem.
    pub message: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// True when every check is `ok` or `info`.
    pub healthy: bool,
}

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// The agent's policy file.
    pub policy: PathBuf,
    /// The agent's configuration file.
    pub config: PathBuf,
    /// True when `config` was named on the command line (a missing file is then an error).
    pub config_given: bool,
}

struct Out(Vec<Check>);

impl Out {
    fn add(&mut self, status: Verdict, area: &'static str, message: impl Into<String>) {
        self.0.push(Check {
            status,
            area,
            message: message.into(),
        });
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Run every check.
pub fn run(opts: &Options) -> Report {
    let mut out = Out(Vec::new());
    kernel(&mut out);
    let config = config(&mut out, opts);
    policy(&mut out, &opts.policy);
    match &config {
        Some(cfg) => agent(&mut out, cfg, &opts.policy),
        None => out.add(
            Verdict::Info,
            "agent",
            "not checked: without its configuration the agent's socket and folders are unknown",
        ),
    }
    collector(&mut out, config.as_ref());
    notify(&mut out, &config.clone().unwrap_or_default());
    files(&mut out, opts, config.as_ref());
    let healthy = out
        .0
        .iter()
        .all(|c| matches!(c.status, Verdict::Ok | Verdict::Info));
    Report {
        checks: out.0,
        healthy,
    }
}

/// The report as text lines, with a summary.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    for c in &r.checks {
        s.push_str(&format!(
            "{:<4}  {:<9} {}\n",
            c.status.as_str(),
            c.area,
            c.message
        ));
    }
    let count = |v: Verdict| r.checks.iter().filter(|c| c.status == v).count();
    if r.healthy {
        s.push_str("doctor: all is well\n");
    } else {
        s.push_str(&format!(
            "doctor: {} failed, {} warning(s)",
            count(Verdict::Fail),
            count(Verdict::Warn)
        ));
        match count(Verdict::Skip) {
            0 => s.push('\n'),
            n => s.push_str(&format!(", {n} not checked (run as root for those)\n")),
        }
    }
    s
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `(major, minor)` of a kernel release such as `6.1.0-18-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn kernel(out: &mut Out) {
    let release = kernel_release();
    let version = kernel_version(&release);
    if is_root() {
        match fanotify_probe() {
            Ok(()) => out.add(
                Verdict::Ok,
                "kernel",
                format!("fanotify: permission events and exec marks available (Linux {release})"),
            ),
            Err(e) => out.add(Verdict::Fail, "kernel", format!("fanotify: {e}")),
        }
        if version.is_some_and(|v| v < (4, 20)) {
            out.add(
                Verdict::Fail,
                "kernel",
                format!("fanotify filesystem marks need Linux 4.20 or later (this is {release}): only mounts can be marked, bind mounts and other namespaces escape"),
            );
        }
        match crate::agent::sensors::proc_connector::open_socket() {
            Ok(_) => out.add(
                Verdict::Ok,
                "kernel",
                "proc connector: exec events available (netlink, CAP_NET_ADMIN)",
            ),
            Err(e) => out.add(
                Verdict::Fail,
                "kernel",
                format!(
                    "proc connector: {} (the agent cannot kill what gets past the guard)",
                    match e.raw_os_error() {
                        Some(libc::EPROTONOSUPPORT) =>
                            "not in this kernel (CONFIG_PROC_EVENTS)".to_string(),
                        _ => crate::io_reason(&e),
                    }
                ),
            ),
        }
    } else {
        out.add(
            Verdict::Skip,
            "kernel",
            "fanotify: needs root (CAP_SYS_ADMIN) to check",
        );
        out.add(
            Verdict::Skip,
            "kernel",
            "proc connector: needs root (CAP_NET_ADMIN) to check",
        );
    }
    match rustix::process::pidfd_open(
        rustix::process::getpid(),
        rustix::process::PidfdFlags::empty(),
    ) {
        Ok(_) => out.add(
            Verdict::Ok,
            "kernel",
            "pidfd: available (kills safe against PID reuse)",
        ),
        Err(e) => out.add(
            Verdict::Fail,
            "kernel",
            format!("pidfd: {e} (needs Linux 5.3 or later)"),
        ),
    }
    match std::fs::read_to_string("/sys/kernel/security/lsm") {
        Ok(l) if l.trim().split(',').any(|m| m == "bpf") => out.add(
            Verdict::Info,
            "kernel",
            format!("BPF LSM: active (LSMs: {})", l.trim()),
        ),
        Ok(l) => out.add(
            Verdict::Info,
            "kernel",
            format!(
                "BPF LSM: not active (LSMs: {}); this version of interdict does not use it",
                l.trim()
            ),
        ),
        Err(e) => out.add(
            Verdict::Info,
            "kernel",
            format!(
                "BPF LSM: unknown (/sys/kernel/security/lsm: {}); this version of interdict does not use it",
                crate::io_reason(&e)
            ),
        ),
    }
}

/// A fanotify group of the agent's class, and an exec permission mark on one fresh file of our
/// own (which nobody runs: nothing ever waits on this probe).
fn fanotify_probe() -> Result<(), String> {
    use std::ffi::CString;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: fanotify_init takes two flag words and returns a new descriptor or -1.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
            libc::O_RDONLY as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) => "this kernel has no fanotify permission events (CONFIG_FANOTIFY_ACCESS_PERMISSIONS): nothing can be blocked at exec".into(),
            Some(libc::ENOSYS) => "this kernel has no fanotify: nothing can be blocked at exec".into(),
            Some(libc::EPERM) => "not permitted (needs CAP_SYS_ADMIN; inside a container?)".into(),
            _ => format!("fanotify_init: {e}"),
        });
    }
    // SAFETY: `fd` was just returned by fanotify_init and is owned by nothing else.
    let fan = unsafe { OwnedFd::from_raw_fd(fd) };
    // A new, empty file of our own (created here, removed below; nobody runs it).
    let file = std::env::temp_dir().join(format!(
        "interdict-doctor-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
        .map_err(|e| format!("a file for the probe, {}: {e}", file.display()))?;
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _remove = Remove(&file);
    let c = CString::new(file.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; the kernel copies it.
    let r = unsafe {
        libc::fanotify_mark(
            std::os::fd::AsRawFd::as_raw_fd(&fan),
            libc::FAN_MARK_ADD,
            libc::FAN_OPEN_EXEC_PERM,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) => {
                "this kernel has no FAN_OPEN_EXEC_PERM (needs Linux 5.0 or later)".into()
            }
            _ => format!("fanotify_mark: {e}"),
        });
    }
    Ok(())
}

fn config(out: &mut Out, opts: &Options) -> Option<AgentConfig> {
    let p = &opts.config;
    if !opts.config_given && !p.exists() {
        out.add(
            Verdict::Warn,
            "config",
            format!(
                "{}: no such file; the agent's defaults apply (the interdict package installs one)",
                p.display()
            ),
        );
        return Some(AgentConfig::default());
    }
    match crate::agent::config::load(Some(p)) {
        Ok(c) => {
            out.add(Verdict::Ok, "config", format!("{}: valid", p.display()));
            Some(c)
        }
        Err(ConfigError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied && !is_root() =>
        {
            out.add(
                Verdict::Skip,
                "config",
                format!(
                    "{}: not readable from this account (root-only: it holds the enroll secret)",
                    p.display()
                ),
            );
            None
        }
        Err(e) => {
            let text = e.to_string();
            let n = text.lines().count();
            out.add(
                Verdict::Fail,
                "config",
                format!(
                    "{}: {n} problem(s); the agent will not start: {}",
                    p.display(),
                    text.lines().collect::<Vec<_>>().join(" | ")
                ),
            );
            None
        }
    }
}

fn policy(out: &mut Out, path: &Path) {
    match crate::policy::load(path) {
        Ok(l) => {
            let info = l.policy.info();
            out.add(
                Verdict::Ok,
                "policy",
                format!(
                    "{}: policy {} {} ({}), {} rule(s), {} warning(s)",
                    path.display(),
                    info.name,
                    info.version,
                    info.mode,
                    l.policy.rules().len(),
                    l.warnings.0.len()
                ),
            );
        }
        Err(crate::policy::LoadError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied && !is_root() =>
        {
            out.add(
                Verdict::Skip,
                "policy",
                format!("{}: not readable from this account", path.display()),
            );
        }
        Err(e) => {
            let text = e.to_string();
            out.add(
                Verdict::Fail,
                "policy",
                format!(
                    "{}: rejected (check it with `interdict policy check {}`): {}",
                    path.display(),
                    path.display(),
                    text.lines().collect::<Vec<_>>().join(" | ")
                ),
            );
        }
    }
}

fn agent(out: &mut Out, cfg: &AgentConfig, policy_path: &Path) {
    use crate::agent::control::{self, Status};
    use crate::agent::sensors::{Part, PartState};
    let socket = &cfg.agent.control_socket;
    let status = match control::request(socket, "status")
        .and_then(|line| serde_json::from_str::<Status>(&line).map_err(Into::into))
    {
        Ok(s) => s,
        Err(e) => {
            let denied = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
            }) || e.to_string().contains("permission denied");
            if denied && !is_root() {
                out.add(
                    Verdict::Skip,
                    "agent",
                    format!(
                        "the control socket {} is not open to this account (root, or [agent] admin_group)",
                        socket.display()
                    ),
                );
            } else {
                out.add(
                    Verdict::Fail,
                    "agent",
                    format!(
                        "not running: no answer on {} ({}); start it: systemctl start interdict, and see journalctl -u interdict",
                        socket.display(),
                        e.chain()
                            .find_map(|c| c.downcast_ref::<std::io::Error>())
                            .map(crate::io_reason)
                            .unwrap_or_else(|| e.to_string())
                    ),
                );
            }
            last_run(out, cfg);
            out.add(
                Verdict::Info,
                "marks",
                "no agent answers: no filesystem can be known to be guarded",
            );
            return;
        }
    };
    out.add(
        Verdict::Ok,
        "agent",
        format!(
            "running: pid {}, version {}, up {} s, policy {} {} ({}), generation {}",
            status.pid,
            status.version,
            status.uptime_s,
            status.policy.name,
            status.policy.version,
            status.mode,
            status.generation
        ),
    );
    if let Ok(bytes) = std::fs::read(policy_path) {
        use sha2::Digest;
        let on_disk = hex::encode(sha2::Sha256::digest(&bytes));
        if on_disk != status.policy.sha256 {
            out.add(
                Verdict::Warn,
                "agent",
                format!(
                    "{} is not the policy in force (sha256 {} on disk, {} in force): an edit not applied yet, or rejected (see the journal); systemctl reload interdict",
                    policy_path.display(),
                    &on_disk[..12],
                    &status.policy.sha256[..12.min(status.policy.sha256.len())]
                ),
            );
        }
    }
    for s in &status.sensors {
        let v = match s.state {
            PartState::Running | PartState::Idle => Verdict::Ok,
            PartState::Disabled => Verdict::Info,
            PartState::Failing => Verdict::Warn,
            PartState::Failed | PartState::Stopped => Verdict::Fail,
        };
        // A guard that is off leaves execs unguarded: a disabled fanotify is worth a warning.
        let v = if s.name == Part::Fanotify && v == Verdict::Info {
            Verdict::Warn
        } else {
            v
        };
        out.add(
            v,
            "sensor",
            format!("{}: {}: {}", s.name, s.state.as_str(), s.detail),
        );
    }
    marks(out, cfg, &status.marked);
}

/// The run record: how the last agent ended (when the state folder is readable).
fn last_run(out: &mut Out, cfg: &AgentConfig) {
    let path = cfg
        .agent
        .state_dir
        .join(crate::agent::service::StateLock::RECORD);
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let Ok(r) = serde_json::from_slice::<crate::agent::service::RunRecord>(&bytes) else {
        return;
    };
    match &r.stopped {
        Some(why) => out.add(
            Verdict::Info,
            "agent",
            format!(
                "the last agent (pid {}, started {}) stopped cleanly ({why})",
                r.pid, r.started
            ),
        ),
        None => out.add(
            Verdict::Warn,
            "agent",
            format!(
                "the last agent (pid {}, started {}) did not stop cleanly: killed, crashed or stopped by the watchdog",
                r.pid, r.started
            ),
        ),
    }
}

/// Every filesystem that can hold programs, guarded or not.
fn marks(out: &mut Out, cfg: &AgentConfig, marked: &[String]) {
    use crate::agent::sensors::mounts;
    if !cfg.exec.fanotify {
        return;
    }
    let marked_devs: Vec<u64> = marked
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.dev()))
        .collect();
    let chosen = !cfg.exec.mounts.is_empty();
    let mut seen = std::collections::HashSet::new();
    for m in mounts::current().into_iter().filter(|m| m.holds_programs()) {
        let Some(dev) = m.dev() else { continue };
        if !seen.insert(dev) {
            continue;
        }
        if marked_devs.contains(&dev) {
            out.add(
                Verdict::Ok,
                "marks",
                format!("{} ({}): execs guarded", m.point.display(), m.fstype),
            );
        } else if chosen {
            out.add(
                Verdict::Info,
                "marks",
                format!(
                    "{} ({}): not guarded ([exec] mounts names the filesystems to guard)",
                    m.point.display(),
                    m.fstype
                ),
            );
        } else {
            out.add(
                Verdict::Fail,
                "marks",
                format!(
                    "{} ({}): holds programs but its execs are not guarded (see the agent's log for why it was not marked)",
                    m.point.display(),
                    m.fstype
                ),
            );
        }
    }
}

fn collector(out: &mut Out, cfg: Option<&AgentConfig>) {
    use crate::agent::sinks::ship;
    let Some(cfg) = cfg else {
        return;
    };
    let Some(cc) = &cfg.collector else {
        out.add(
            Verdict::Info,
            "collector",
            "none configured ([collector]): events stay in the local event log",
        );
        return;
    };
    let sc = ship::ShipConfig::from_config(cc, &cfg.agent.state_dir);
    let http = match ship::client(&sc) {
        Ok(h) => h,
        Err(e) => {
            out.add(
                Verdict::Fail,
                "collector",
                format!("[collector] TLS files: {e}"),
            );
            return;
        }
    };
    let base = sc.url.trim_end_matches('/');
    match http.get(&format!("{base}/v1/hosts")).call() {
        Ok(r) => out.add(
            Verdict::Ok,
            "collector",
            format!(
                "{}: reachable (HTTP {} without credentials)",
                sc.url,
                r.status().as_u16()
            ),
        ),
        Err(e) => {
            out.add(
                Verdict::Fail,
                "collector",
                format!(
                    "{}: not reachable: {e}; events wait in the spool until it is",
                    sc.url
                ),
            );
            return;
        }
    }
    let token = match std::fs::read_to_string(&sc.token_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !is_root() => {
            out.add(
                Verdict::Skip,
                "collector",
                format!(
                    "enrollment: {} is root-only: run as root to check it",
                    sc.token_file.display()
                ),
            );
            return;
        }
        Err(_) => {
            let hint = if sc.enroll_secret.is_some() {
                "the agent enrolls with enroll_secret when it starts; is it running?"
            } else {
                "set [collector] enroll_secret to the secret the collector printed"
            };
            out.add(
                Verdict::Fail,
                "collector",
                format!(
                    "not enrolled: no token in {} ({hint})",
                    sc.token_file.display()
                ),
            );
            return;
        }
    };
    // An empty batch: the collector checks the token before anything else.
    let r = http
        .post(&format!("{base}/v1/events"))
        .content_type("application/json")
        .header("Authorization", &format!("Bearer {token}"))
        .send("{\"events\":[]}");
    match r.map(|r| r.status().as_u16()) {
        Ok(401) => out.add(
            Verdict::Fail,
            "collector",
            format!(
                "enrollment: the collector refuses the token in {} (reset or deleted host?); remove the token file and restart the agent to enroll again",
                sc.token_file.display()
            ),
        ),
        Ok(403) => out.add(
            Verdict::Fail,
            "collector",
            format!(
                "enrollment: the token in {} is not a host token",
                sc.token_file.display()
            ),
        ),
        Ok(status) => out.add(
            Verdict::Ok,
            "collector",
            format!(
                "enrolled: the collector accepts this host's token (HTTP {status} for an empty batch)"
            ),
        ),
        Err(e) => out.add(
            Verdict::Fail,
            "collector",
            format!("enrollment could not be checked: {e}"),
        ),
    }
}

fn notify(out: &mut Out, cfg: &AgentConfig) {
    if !cfg.notify.enabled {
        out.add(
            Verdict::Info,
            "notify",
            "notices are off ([notify] enabled = false): people are not told what was stopped",
        );
        return;
    }
    if !cfg.notify.desktop {
        out.add(
            Verdict::Info,
            "notify",
            "desktop notices are off ([notify] desktop = false)",
        );
    }
    let accounts = crate::inventory::host::Accounts::load();
    let mut sessions = 0;
    let mut hidden = 0;
    let mut rows: Vec<(u32, PathBuf)> = std::fs::read_dir("/run/user")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let uid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((uid, e.path().join("bus")))
                })
                .collect()
        })
        .unwrap_or_default();
    rows.sort();
    for (uid, bus) in rows {
        let name = accounts
            .by_uid(uid)
            .map(|a| a.name.clone())
            .unwrap_or_else(|| uid.to_string());
        match std::fs::metadata(&bus) {
            Ok(m) if m.file_type().is_socket() && m.uid() == uid => {
                sessions += 1;
                if cfg.notify.desktop {
                    out.add(
                        Verdict::Ok,
                        "notify",
                        format!(
                            "desktop notices for {name} (uid {uid}): session bus {}",
                            bus.display()
                        ),
                    );
                }
            }
            Ok(m) if m.file_type().is_socket() => out.add(
                Verdict::Fail,
                "notify",
                format!(
                    "{} is owned by uid {}, not {uid}: the agent will not use it",
                    bus.display(),
                    m.uid()
                ),
            ),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => hidden += 1,
            Err(_) => {}
        }
    }
    if hidden > 0 {
        out.add(
            Verdict::Skip,
            "notify",
            format!(
                "{hidden} other session folder(s) in /run/user are not visible from this account"
            ),
        );
    }
    if sessions == 0 && hidden == 0 {
        out.add(
            Verdict::Info,
            "notify",
            "no one is logged in with a desktop session bus: notices go to terminals only",
        );
    }
    let helper = std::env::current_exe().ok();
    if let Some(h) = helper.filter(|h| !h.exists()) {
        out.add(
            Verdict::Fail,
            "notify",
            format!(
                "the notification helper {} is gone (reinstall interdict)",
                h.display()
            ),
        );
    }
}

/// A file that must be root's and closed to others (`max` = the loosest mode allowed).
fn mode_check(out: &mut Out, path: &Path, what: &str, max: u32, hint: &str) {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o7777;
            let too_open = mode & !max & 0o777 != 0;
            if too_open || m.uid() != 0 {
                out.add(
                    Verdict::Fail,
                    "files",
                    format!(
                        "{} ({what}): mode {mode:04o}, owner uid {}; must be root's and at most {max:04o}: {hint}",
                        path.display(),
                        m.uid()
                    ),
                );
            } else {
                out.add(
                    Verdict::Ok,
                    "files",
                    format!("{} ({what}): mode {mode:04o}, root", path.display()),
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => out.add(
            Verdict::Skip,
            "files",
            format!(
                "{} ({what}): not visible from this account (run as root)",
                path.display()
            ),
        ),
        Err(_) => {}
    }
}

fn files(out: &mut Out, opts: &Options, cfg: Option<&AgentConfig>) {
    let secret = cfg
        .and_then(|c| c.collector.as_ref())
        .is_some_and(|c| c.enroll_secret.is_some());
    // The configuration decides what the root agent does: nobody else may write it; with the
    // enroll secret in it, nobody else may read it either.
    if secret {
        mode_check(
            out,
            &opts.config,
            "configuration with the enroll secret",
            0o600,
            &format!("chmod 600 {0}; chown root: {0}", opts.config.display()),
        );
    } else {
        mode_check(
            out,
            &opts.config,
            "configuration",
            0o644,
            &format!("chmod 600 {0}; chown root: {0}", opts.config.display()),
        );
    }
    mode_check(
        out,
        &opts.policy,
        "policy",
        0o644,
        &format!("chmod 644 {0}; chown root: {0}", opts.policy.display()),
    );
    let Some(cfg) = cfg else {
        return;
    };
    let state = &cfg.agent.state_dir;
    mode_check(
        out,
        state,
        "state folder",
        0o700,
        &format!("chmod 700 {}", state.display()),
    );
    if let Some(cc) = &cfg.collector {
        let token = cc
            .token_file
            .clone()
            .unwrap_or_else(|| state.join("collector.token"));
        mode_check(
            out,
            &token,
            "collector token",
            0o600,
            &format!("chmod 600 {}", token.display()),
        );
        if let Some(k) = &cc.client_key {
            mode_check(
                out,
                k,
                "client certificate key",
                0o600,
                &format!("chmod 600 {}", k.display()),
            );
        }
    }
    let loosest = if cfg.agent.admin_group.is_some() {
        0o640
    } else {
        0o600
    };
    mode_check(
        out,
        &cfg.agent.event_log,
        "event log: command lines are private",
        loosest,
        &format!("chmod {loosest:o} {}", cfg.agent.event_log.display()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_are_read_from_release_strings() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("4.19.0"), Some((4, 19)));
        assert_eq!(kernel_version("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(kernel_version("weird"), None);
    }

    #[test]
    fn only_ok_and_info_make_a_healthy_report() {
        let r = |s: Vec<Verdict>| Report {
            healthy: s.iter().all(|v| matches!(v, Verdict::Ok | Verdict::Info)),
            checks: s
                .into_iter()
                .map(|status| Check {
                    status,
                    area: "x",
                    message: "m".into(),
                })
                .collect(),
        };
        assert!(render(&r(vec![Verdict::Ok, Verdict::Info])).ends_with("doctor: all is well\n"));
        let text = render(&r(vec![Verdict::Ok, Verdict::Skip, Verdict::Fail]));
        assert!(
            text.ends_with(
                "doctor: 1 failed, 0 warning(s), 1 not checked (run as root for those)\n"
            ),
            "{text}"
        );
        assert!(
            text.starts_with("ok    x         m\nskip  x         m\nFAIL  x         m\n"),
            "{text}"
        );
        let text = render(&r(vec![Verdict::Warn]));
        assert!(text.ends_with("doctor: 0 failed, 1 warning(s)\n"), "{text}");
    }
}
