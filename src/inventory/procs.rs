//! Running processes: what is known about each (sysinfo for the listing, `/proc` on Linux for
//! the details) and how it becomes [`Facts`] for the policy, including the script an interpreter
//! runs.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use interdict_policy::{Facts, Sha256};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use crate::inventory::facts::{basename, FactsBuilder};
use crate::inventory::hash::HashMemo;
use crate::inventory::host::Accounts;

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
    /// User id (from /proc: the owner of `/proc/PID`, i.e. the effective uid).
    pub uid: Option<u32>,
    /// Start time, seconds since the epoch.
    pub start_time: u64,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22), when read from /proc:
    /// with the pid, a process identity that survives PID reuse.
    pub start_ticks: Option<u64>,
    /// The controlling terminal (`/proc/PID/stat` field 7), when read from /proc and there is one.
    pub tty_nr: Option<u32>,
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
            tty_nr: None,
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// The fields of `/proc/PID/stat` the agent uses: (ppid, start ticks, comm, tty_nr). The
/// command name may hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &[u8]) -> Option<(u32, u64, OsString, u32)> {
    let open = stat.iter().position(|b| *b == b'(')?;
    let close = stat.iter().rposition(|b| *b == b')')?;
    let comm = OsString::from(OsStr::from_bytes(stat.get(open + 1..close)?));
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, tty_nr field 7, starttime field 22.
    Some((
        f.get(1)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
        comm,
        f.get(4)?.parse::<i64>().ok()? as u32,
    ))
}

/// The processes descended from `pid` now (children before grandchildren), with their start
/// ticks, from each process's parent in `/proc`: what a process started (an AI agent's MCP
/// servers, its tools) and still runs under it. One pass: a process forked after it is missed.
pub fn descendants(pid: u32) -> Vec<(u32, u64)> {
    let mut children: std::collections::HashMap<u32, Vec<(u32, u64)>> =
        std::collections::HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, start)) = read_stat(p) {
                children.entry(ppid).or_default().push((p, start));
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([pid]);
    while let Some(p) = queue.pop_front() {
        for &(c, start) in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            // A cycle cannot happen in the kernel's tree; guard against a torn read anyway.
            if c != pid && !out.iter().any(|&(o, _)| o == c) {
                out.push((c, start));
                queue.push_back(c);
            }
        }
    }
    out
}

/// `(ppid, start ticks)` from `/proc/PID/stat`.
pub fn read_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(ppid, start, _, _)| (ppid, start))
}

/// A process's working directory (read on demand: only interpreters and events need it).
pub fn cwd_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

fn read_at(dir: &std::os::fd::OwnedFd, name: &std::ffi::CStr) -> Option<Vec<u8>> {
    use rustix::fs::{openat, Mode, OFlags};
    use std::io::Read;
    let fd = openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut f = std::fs::File::from(fd);
    // One read covers stat and almost every command line; longer ones are read to the end.
    let mut buf = vec![0u8; 4096];
    let n = f.read(&mut buf).ok()?;
    buf.truncate(n);
    if n == 4096 {
        f.read_to_end(&mut buf).ok()?;
    }
    Some(buf)
}

fn readlink_at(dir: &std::os::fd::OwnedFd, name: &std::ffi::CStr) -> Option<PathBuf> {
    let target = rustix::fs::readlinkat(dir, name, Vec::new()).ok()?;
    Some(PathBuf::from(OsString::from_vec(target.into_bytes())))
}

/// Read one process straight from `/proc`, cheaply (this runs for every exec on the machine):
/// one directory descriptor, then `stat` (ppid, start time, comm), `exe` and `cmdline` relative
/// to it; the user is the owner of `/proc/PID` (the effective uid). The working directory is left
/// out ([`cwd_of`]). `None` when the process is already gone.
pub fn read_proc(pid: u32) -> Option<ProcessInfo> {
    use rustix::fs::{open, Mode, OFlags};
    let dir = open(
        format!("/proc/{pid}").as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&dir).ok()?;
    let (ppid, start_ticks, comm, tty_nr) = parse_stat(&read_at(&dir, c"stat")?)?;
    let argv = read_at(&dir, c"cmdline")
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
        exe: readlink_at(&dir, c"exe").map(|e| strip_deleted(&e)),
        argv,
        cwd: None,
        uid: Some(st.st_uid),
        start_time: 0,
        start_ticks: Some(start_ticks),
        tty_nr: (tty_nr != 0).then_some(tty_nr),
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
    /// The dynamic loader (`ld-linux-x86-64.so.2 PROGRAM`): it maps and runs a program that is
    /// never exec'd itself.
    Loader,
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
        // The dynamic loader runs the program named on its command line (`comm` is cut to 15
        // characters: `ld-linux-x86-64`).
        _ if exe_name.starts_with("ld-linux") || exe_name.starts_with("ld-musl") => {
            Interpreter::Loader
        }
        "ld.so" => Interpreter::Loader,
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
    if kind == Interpreter::Loader {
        return loader_program(argv).map(ScriptArg::File);
    }
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        let s = a.as_bytes();
        match s {
            b"-m" if kind == Interpreter::Python => {
                return args
                    .next()
                    .map(|m| ScriptArg::Module(m.to_string_lossy().into_owned()))
            }
            // Inline code, or the script on standard input (`python3 - ARGS`: ARGS are arguments).
            b"-c" | b"-e" | b"--eval" | b"-p" | b"--print" | b"-" => return None,
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

/// The program a dynamic loader was asked to run: its first argument that is not an option
/// (glibc's and musl's options that take a value skip it too).
fn loader_program(argv: &[OsString]) -> Option<OsString> {
    const WITH_VALUE: &[&[u8]] = &[
        b"--library-path",
        b"--inhibit-rpath",
        b"--audit",
        b"--preload",
        b"--argv0",
        b"--glibc-hwcaps-prefer",
        b"--glibc-hwcaps-mask",
    ];
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        let s = a.as_bytes();
        if s == b"--" {
            return args.next().cloned();
        }
        if WITH_VALUE.contains(&s) {
            args.next();
            continue;
        }
        if s.starts_with(b"-") {
            continue;
        }
        return Some(a.clone());
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
    let mut b = FactsBuilder::new(host)
        .name(info.exe.as_deref().and_then(|e| basename(e.as_os_str())))
        .name(info.argv.first().and_then(|a| basename(a)))
        .name(Some(info.comm.to_string_lossy().into_owned()));
    let exe_name = info
        .exe
        .as_deref()
        .and_then(|e| basename(e.as_os_str()))
        .unwrap_or_default();
    let mut hash_error = None;
    if let Some(kind) = interpreter(&exe_name) {
        match script_arg(kind, &info.argv) {
            Some(ScriptArg::File(arg)) if kind == Interpreter::Loader => {
                // `ld.so PROGRAM`: the loader only maps the program, so no exec of it is ever
                // seen. Judge the program as the executable.
                let cwd = info.cwd.clone().or_else(|| cwd_of(info.pid));
                let program = resolve_script(info.pid, cwd.as_deref(), &arg);
                let mut facts = b.name_of(&program).user(info.uid, accounts).build();
                if hash {
                    match memo.hash_path(&program, true) {
                        Ok(d) => facts.exe_sha256 = Some(d),
                        Err(e) => {
                            hash_error = Some(format!(
                                "program {}: {}",
                                program.display(),
                                crate::io_reason(&e)
                            ))
                        }
                    }
                }
                facts.exe_path = Some(program);
                return ProcessFacts {
                    info: info.clone(),
                    facts,
                    hash_error,
                };
            }
            Some(ScriptArg::File(arg)) => {
                let cwd = info.cwd.clone().or_else(|| cwd_of(info.pid));
                let script = resolve_script(info.pid, cwd.as_deref(), &arg);
                if hash {
                    match memo.hash_path(&script, true) {
                        Ok(d) => b = b.script_digest(Some(d)),
                        Err(e) => {
                            hash_error = Some(format!(
                                "script {}: {}",
                                script.display(),
                                crate::io_reason(&e)
                            ))
                        }
                    }
                }
                b = b.script(&script);
            }
            Some(ScriptArg::Module(m)) => b = b.name(Some(m)),
            None => {}
        }
    }
    let mut facts = b.user(info.uid, accounts).build();
    facts.exe_path = info.exe.clone();
    if hash && info.exe.is_some() {
        match exe_digest(info.pid, memo) {
            Ok(d) => facts.exe_sha256 = Some(d),
            Err(e) => hash_error = Some(format!("exe: {}", crate::io_reason(&e))),
        }
    }
    ProcessFacts {
        info: info.clone(),
        facts,
        hash_error,
    }
}

/// SHA-256 of the file a process is running, read through `/proc/PID/exe`; a file hashed
/// before costs one `stat`.
pub fn exe_digest(pid: u32, memo: &HashMemo) -> std::io::Result<Sha256> {
    let exe = format!("/proc/{pid}/exe");
    if let Some(d) = std::fs::metadata(&exe)
        .ok()
        .and_then(|m| memo.get(&crate::inventory::hash::FileKey::of(&m)))
    {
        return Ok(d);
    }
    memo.hash_path(Path::new(&exe), true)
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
    fn stat_with_odd_command_names() {
        let s = b"42 (a) b (c)) S 7 42 42 0 -1 4194304 1 0 0 0 0 0 0 0 20 0 1 0 123456 0 0";
        assert_eq!(
            parse_stat(s),
            Some((7, 123456, OsString::from("a) b (c)"), 0))
        );
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn reads_itself_from_proc() {
        let me = read_proc(std::process::id()).unwrap();
        assert_eq!(me.exe, Some(std::env::current_exe().unwrap()));
        assert_eq!(me.uid, Some(rustix::process::getuid().as_raw()));
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
        assert_eq!(interpreter("ld-linux-x86-64"), Some(Interpreter::Loader));
        assert_eq!(
            interpreter("ld-linux-x86-64.so.2"),
            Some(Interpreter::Loader)
        );
        assert_eq!(
            interpreter("ld-musl-x86_64.so.1"),
            Some(Interpreter::Loader)
        );
    }

    #[test]
    fn the_loader_runs_its_first_argument_that_is_not_an_option() {
        let l = Interpreter::Loader;
        for (args, want) in [
            (
                &["ld.so", "/tmp/claude", "--version"][..],
                Some("/tmp/claude"),
            ),
            (&["ld.so", "--library-path", "/x", "./c", "-p"], Some("./c")),
            (
                &["ld.so", "--argv0", "ls", "--preload", "l.so", "c"],
                Some("c"),
            ),
            (&["ld.so", "--verify", "c"], Some("c")),
            (&["ld.so", "--", "--weird-name"], Some("--weird-name")),
            (&["ld.so", "--list"], None),
        ] {
            assert_eq!(
                script_arg(l, &argv(args)),
                want.map(|w| ScriptArg::File(w.into())),
                "{args:?}"
            );
        }
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
