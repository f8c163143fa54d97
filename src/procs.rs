//! Running processes: what is known about each (sysinfo for the listing, `/proc` on Linux for
//! the details) and how it becomes [`Facts`] for the policy, including the script an interpreter
//! runs.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use interdict_policy::{Facts, Sha256};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use crate::hash::HashMemo;
use crate::host::Accounts;

/// One running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: Option<u32>,
    /// `comm`: the kernel's short name (settable by the process).
    pub comm: OsString,
    /// Canonical path of the executable, if readable.
    pub exe: Option<PathBuf>,
    /// Arguments, argv\[0\] first.
    pub argv: Vec<OsString>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Real user id.
    pub uid: Option<u32>,
    /// Start time, seconds since the epoch.
    pub start_time: u64,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22), when read from /proc:
    /// with the pid, a process identity that survives PID reuse.
    pub start_ticks: Option<u64>,
}

/// Every running process except this one and kernel threads.
pub fn list() -> Vec<ProcessInfo> {
    let mut sys = System::new();
    sys.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing()
            .with_exe(UpdateKind::Always)
            .with_cmd(UpdateKind::Always)
            .with_cwd(UpdateKind::Always)
            .with_user(UpdateKind::Always),
    );
    let me = std::process::id();
    let mut out: Vec<ProcessInfo> = sys
        .processes()
        .values()
        .filter(|p| p.thread_kind().is_none())
        .filter(|p| p.pid().as_u32() != me)
        .filter(|p| p.exe().is_some() || !p.cmd().is_empty())
        .map(|p| ProcessInfo {
            pid: p.pid().as_u32(),
            ppid: p.parent().map(|pp| pp.as_u32()),
            comm: p.name().to_os_string(),
            exe: p.exe().map(strip_deleted),
            argv: p.cmd().to_vec(),
            cwd: p.cwd().map(Path::to_path_buf),
            uid: p.user_id().map(|u| **u),
            start_time: p.start_time(),
            start_ticks: None,
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// `(ppid, start ticks)` from `/proc/PID/stat`. The command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn read_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, starttime field 22.
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// Read one process straight from `/proc` (cheaper than a full listing; used per exec event).
/// `None` when the process is already gone.
pub fn read_proc(pid: u32) -> Option<ProcessInfo> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let (ppid, start_ticks) = read_stat(pid)?;
    let status = std::fs::read_to_string(base.join("status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok());
    let comm = std::fs::read(base.join("comm"))
        .map(|mut c| {
            if c.last() == Some(&b'\n') {
                c.pop();
            }
            OsString::from(OsStr::from_bytes(&c))
        })
        .unwrap_or_default();
    let argv = std::fs::read(base.join("cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| OsString::from(OsStr::from_bytes(a)))
                .collect()
        })
        .unwrap_or_default();
    Some(ProcessInfo {
        pid,
        ppid: Some(ppid),
        comm,
        exe: std::fs::read_link(base.join("exe"))
            .ok()
            .map(|e| strip_deleted(&e)),
        argv,
        cwd: std::fs::read_link(base.join("cwd")).ok(),
        uid,
        start_time: 0,
        start_ticks: Some(start_ticks),
    })
}

/// `/proc/PID/exe` of a replaced or deleted file reads `PATH (deleted)`.
fn strip_deleted(p: &Path) -> PathBuf {
    let b = p.as_os_str().as_bytes();
    match b.strip_suffix(b" (deleted)") {
        Some(s) => PathBuf::from(OsStr::from_bytes(s)),
        None => p.to_path_buf(),
    }
}

fn basename(p: &OsStr) -> Option<String> {
    Path::new(p)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// The kind of interpreter an executable is, judged by its basename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpreter {
    /// node, nodejs
    Node,
    /// bun
    Bun,
    /// deno
    Deno,
    /// python, python3, python3.12, ...
    Python,
    /// sh, bash, dash, zsh, ksh, fish
    Shell,
    /// perl, ruby
    Other,
}

/// Recognize an interpreter from its executable's basename.
pub fn interpreter(exe_name: &str) -> Option<Interpreter> {
    let versioned = |prefix: &str| {
        exe_name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
    };
    Some(match exe_name {
        "node" | "nodejs" => Interpreter::Node,
        "bun" => Interpreter::Bun,
        "deno" => Interpreter::Deno,
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "fish" => Interpreter::Shell,
        "perl" | "ruby" => Interpreter::Other,
        _ if versioned("python") => Interpreter::Python,
        _ => return None,
    })
}

/// What an interpreter's command line says it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptArg {
    /// A script file, as typed.
    File(OsString),
    /// A Python module (`-m aider`).
    Module(String),
}

/// Find the script argument of an interpreter's argv: the first argument that is not an option
/// (and, for bun and deno, not a `run` subcommand). Inline code (`-c`, `-e`) yields nothing.
pub fn script_arg(kind: Interpreter, argv: &[OsString]) -> Option<ScriptArg> {
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        let s = a.as_bytes();
        match s {
            b"-m" if kind == Interpreter::Python => {
                return args
                    .next()
                    .map(|m| ScriptArg::Module(m.to_string_lossy().into_owned()))
            }
            b"-c" | b"-e" | b"--eval" | b"-p" | b"--print" => return None,
            b"--" => return args.next().map(|a| ScriptArg::File(a.clone())),
            b"run" if matches!(kind, Interpreter::Bun | Interpreter::Deno) => continue,
            _ if s.starts_with(b"-m") && kind == Interpreter::Python && s.len() > 2 => {
                return Some(ScriptArg::Module(
                    String::from_utf8_lossy(&s[2..]).into_owned(),
                ))
            }
            _ if s.starts_with(b"-") => continue,
            _ => return Some(ScriptArg::File(a.clone())),
        }
    }
    None
}

/// Resolve a script path as the process sees it: relative to its working directory, through its
/// root (`/proc/PID/root`), with every symlink resolved. Falls back to the lexical path.
pub fn resolve_script(pid: u32, cwd: Option<&Path>, arg: &OsStr) -> PathBuf {
    let p = Path::new(arg);
    // `bash /dev/fd/3` and friends name the process's own descriptors, not ours.
    for fd_dir in ["/dev/fd", "/proc/self/fd"] {
        if let Ok(fd) = p.strip_prefix(fd_dir) {
            let own = Path::new(&format!("/proc/{pid}/fd")).join(fd);
            return std::fs::canonicalize(&own).unwrap_or(own);
        }
    }
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        match cwd {
            Some(c) => c.join(p),
            None => p.to_path_buf(),
        }
    };
    let mut via_root = OsString::from(format!("/proc/{pid}/root"));
    via_root.push(joined.as_os_str());
    std::fs::canonicalize(&via_root)
        .or_else(|_| std::fs::canonicalize(&joined))
        .unwrap_or(joined)
}

/// Everything the scan learned about one process, for the policy and for the report.
#[derive(Debug, Clone)]
pub struct ProcessFacts {
    /// The process.
    pub info: ProcessInfo,
    /// Facts for the policy.
    pub facts: Facts,
    /// Why a hash could not be computed, if one was needed.
    pub hash_error: Option<String>,
}

/// Build policy facts for a process. Hashes the executable (through `/proc/PID/exe`, so a deleted
/// or replaced file is still the one running) and the script only when `hash` is set.
pub fn facts_for(
    info: &ProcessInfo,
    accounts: &Accounts,
    host: &str,
    memo: &HashMemo,
    hash: bool,
) -> ProcessFacts {
    let mut facts = Facts {
        host: Some(host.to_string()),
        ..Facts::default()
    };
    facts.add_name(info.exe.as_deref().and_then(|e| basename(e.as_os_str())));
    facts.add_name(info.argv.first().and_then(|a| basename(a)));
    facts.add_name(Some(info.comm.to_string_lossy().into_owned()));
    let exe_name = info
        .exe
        .as_deref()
        .and_then(|e| basename(e.as_os_str()))
        .unwrap_or_default();
    let mut hash_error = None;
    if let Some(kind) = interpreter(&exe_name) {
        match script_arg(kind, &info.argv) {
            Some(ScriptArg::File(arg)) => {
                let script = resolve_script(info.pid, info.cwd.as_deref(), &arg);
                facts.add_name(basename(script.as_os_str()));
                if hash {
                    match memo.hash_path(&script, true) {
                        Ok(d) => facts.script_sha256 = Some(d),
                        Err(e) => {
                            hash_error = Some(format!(
                                "script {}: {}",
                                script.display(),
                                crate::io_reason(&e)
                            ))
                        }
                    }
                }
                facts.script_path = Some(script);
            }
            Some(ScriptArg::Module(m)) => facts.add_name(Some(m)),
            None => {}
        }
    }
    facts.exe_path = info.exe.clone();
    if hash && info.exe.is_some() {
        match exe_digest(info.pid, memo) {
            Ok(d) => facts.exe_sha256 = Some(d),
            Err(e) => hash_error = Some(format!("exe: {}", crate::io_reason(&e))),
        }
    }
    if let Some(uid) = info.uid {
        facts.user = Some(accounts.user_name(uid));
        facts.groups = accounts.groups_of(uid);
    }
    ProcessFacts {
        info: info.clone(),
        facts,
        hash_error,
    }
}

/// SHA-256 of the file a process is running, read through `/proc/PID/exe`.
pub fn exe_digest(pid: u32, memo: &HashMemo) -> std::io::Result<Sha256> {
    memo.hash_path(Path::new(&format!("/proc/{pid}/exe")), true)
}

/// The command line joined for display (lossy for non-UTF-8 arguments).
pub fn command_line(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn reads_itself_from_proc() {
        let me = read_proc(std::process::id()).unwrap();
        assert_eq!(me.exe, Some(std::env::current_exe().unwrap()));
        assert_eq!(me.uid, Some(unsafe { libc::getuid() }));
        assert!(me.start_ticks.unwrap() > 0);
        assert_eq!(me.ppid, Some(std::os::unix::process::parent_id()));
        assert!(read_proc(u32::MAX - 1).is_none());
    }

    #[test]
    fn interpreters() {
        assert_eq!(interpreter("python3.11"), Some(Interpreter::Python));
        assert_eq!(interpreter("python"), Some(Interpreter::Python));
        assert_eq!(interpreter("pythonista"), None);
        assert_eq!(interpreter("node"), Some(Interpreter::Node));
        assert_eq!(interpreter("claude"), None);
    }

    #[test]
    fn script_arguments() {
        assert_eq!(
            script_arg(
                Interpreter::Node,
                &argv(&["node", "--no-warnings", "/p/bin/claude", "-p"])
            ),
            Some(ScriptArg::File("/p/bin/claude".into()))
        );
        assert_eq!(
            script_arg(
                Interpreter::Python,
                &argv(&["python3", "-m", "aider", "--x"])
            ),
            Some(ScriptArg::Module("aider".into()))
        );
        assert_eq!(
            script_arg(Interpreter::Python, &argv(&["python3", "-maider"])),
            Some(ScriptArg::Module("aider".into()))
        );
        assert_eq!(
            script_arg(Interpreter::Shell, &argv(&["sh", "-c", "x"])),
            None
        );
        assert_eq!(
            script_arg(Interpreter::Bun, &argv(&["bun", "run", "cli.js"])),
            Some(ScriptArg::File("cli.js".into()))
        );
    }

    #[test]
    fn relative_script_resolves_against_cwd_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("pkg/cli.js");
        std::fs::create_dir_all(real.parent().unwrap()).unwrap();
        std::fs::write(&real, "x").unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink("../pkg/cli.js", dir.path().join("bin/tool")).unwrap();
        let got = resolve_script(std::process::id(), Some(dir.path()), OsStr::new("bin/tool"));
        assert_eq!(got, std::fs::canonicalize(&real).unwrap());
    }
}
