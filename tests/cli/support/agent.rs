//! The agent harness: a tmpfs per test (the only filesystem a test agent marks), an agent per
//! test with its own state folder, event log, control socket and install roots, fixtures that
//! are unique to their test, and waits that fail with everything the agent said.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

/// A tmpfs mounted for one test; unmounted on drop.
pub struct TmpMount {
    pub dir: tempfile::TempDir,
}

impl TmpMount {
    /// A tmpfs mounted at `point` (created), unmounted on drop.
    pub fn at(point: PathBuf) -> MountAt {
        std::fs::create_dir_all(&point).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1g,mode=0755", "tmpfs"])
            .arg(&point)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", point.display());
        MountAt { point }
    }

    pub fn new() -> TmpMount {
        let dir = tempfile::Builder::new()
            .prefix("interdict-mnt-")
            .tempdir()
            .unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1g,mode=0755", "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.path().display());
        TmpMount { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TmpMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
        // Busy (a process still has it open): detach it so nothing is left mounted.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .stderr(Stdio::null())
            .status();
    }
}

/// A tmpfs mounted at a path the test chose; unmounted on drop.
pub struct MountAt {
    point: PathBuf,
}

impl MountAt {
    pub fn path(&self) -> &Path {
        &self.point
    }
}

impl Drop for MountAt {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.point).status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.point)
            .stderr(Stdio::null())
            .status();
    }
}

/// The bytes of a system binary with a random tail: runs the same, hashes uniquely. (Keep them
/// to make copies: once the agent knows a file is banned, it denies reading it.)
pub fn unique_bytes(src: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(src).unwrap();
    bytes.extend_from_slice(
        format!(
            "\ninterdict-test-{}-{:?}\n",
            std::process::id(),
            Instant::now()
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(&rand_tail());
    bytes
}

/// A copy of a system binary with a random tail: runs the same, hashes uniquely.
pub fn unique_copy(src: &str, dst: &Path) -> String {
    let mut bytes = std::fs::read(src).unwrap();
    bytes.extend_from_slice(
        format!(
            "\ninterdict-test-{}-{:?}\n",
            std::process::id(),
            Instant::now()
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(&rand_tail());
    write(dst, &bytes, 0o755);
    sha256sum(dst)
}

/// 16 random bytes: makes a fixture's digest unique to this run.
pub fn rand_tail() -> Vec<u8> {
    (0..16).map(|_| fastrand::u8(..)).collect()
}

/// A policy with one rule of `action` on the digest and size of `file` (a sized digest: the
/// agent hashes, and freezes, only files of that size), its hash list written beside `dir`.
pub fn sized_hash_policy(dir: &Path, id: &str, action: &str, file: &Path) -> String {
    let list = dir.join(format!("{id}-{}.sha256", fastrand::u32(..)));
    std::fs::write(
        &list,
        format!(
            "{}  {}  size={}\n",
            sha256sum(file),
            file.display(),
            std::fs::metadata(file).unwrap().len()
        ),
    )
    .unwrap();
    format!(
        "{POLICY_HEAD}{}",
        rule(
            id,
            action,
            &format!("sha256_files = [\"{}\"]", list.display())
        )
    )
}

/// The `[exec]` body that marks only `m`.
pub fn marks(m: &Path) -> String {
    format!("mounts = [\"{}\"]", m.display())
}

/// A policy with one rule of `action` on `digest`.
pub fn hash_policy(id: &str, action: &str, digest: &str) -> String {
    format!(
        "{POLICY_HEAD}{}",
        rule(id, action, &format!("sha256 = [\"{digest}\"]"))
    )
}

/// A running agent with its own folder (policy, config, event log, control socket).
pub struct Agent {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub policy: PathBuf,
    /// The binary it runs.
    pub binary: PathBuf,
    /// Its event log.
    pub event_log: PathBuf,
}

pub const POLICY_HEAD: &str = "[policy]\nname = \"test\"\nversion = \"1\"\nmode = \"enforce\"\n";

pub fn rule(id: &str, action: &str, matcher: &str) -> String {
    format!(
        "\n[[rule]]\nid = \"{id}\"\nname = \"Tool {id}\"\nrisk = \"high\"\nreason = \"test ban {id}\"\naction = \"{action}\"\nalternative = \"use the approved tool\"\n[rule.match]\n{matcher}\n"
    )
}

/// How to start a test agent; [`Agent::start`] and [`Agent::start_as`] cover the usual cases.
#[derive(Default)]
pub struct Setup<'a> {
    /// The policy text (written to the agent's folder as `policy.toml`).
    pub policy: &'a str,
    /// The body of the `[exec]` table (and any tables after it).
    pub exec: &'a str,
    /// Run as this user (with `setpriv`), not root.
    pub user: Option<&'a str>,
    /// Run this binary instead of the one under test's path (e.g. a copy of it).
    pub binary: Option<&'a Path>,
    /// Give the agent this policy path instead of `policy.toml` in its folder.
    pub policy_file: Option<&'a Path>,
    /// Digests learned before: written to the state folder as `learned.json`.
    pub learned: Option<&'a Value>,
    /// Extra environment variables (e.g. `NOTIFY_SOCKET`, `WATCHDOG_USEC`).
    pub env: &'a [(&'a str, String)],
    /// More lines for the `[agent]` table (`admin_group = ...`, `event_queue = ...`).
    pub agent: &'a str,
    /// Write events here instead of `events.jsonl` in the agent's folder.
    pub event_log: Option<&'a Path>,
    /// Run the agent in a private mount namespace, after this shell snippet (which may mount
    /// things only the agent sees; the agent starts only if it succeeds).
    pub mount_ns: Option<&'a str>,
}

impl Agent {
    /// Start an agent; `exec` is the body of the `[exec]` table.
    pub fn start(policy: &str, exec: &str) -> Agent {
        Agent::with(Setup {
            policy,
            exec,
            ..Setup::default()
        })
    }

    /// Start an agent as `user` (unprivileged) when given.
    pub fn start_as(policy: &str, exec: &str, user: Option<&str>) -> Agent {
        Agent::with(Setup {
            policy,
            exec,
            user,
            ..Setup::default()
        })
    }

    /// Start an agent whose state folder already holds `learned` as `learned.json`.
    pub fn start_with_learned(policy: &str, exec: &str, learned: &Value) -> Agent {
        Agent::with(Setup {
            policy,
            exec,
            learned: Some(learned),
            ..Setup::default()
        })
    }

    /// Start an agent with its own folder: state, event log, control socket and install roots
    /// are all inside it, never the host's. Returns once it is ready ([`Agent::wait_ready`]).
    pub fn with(setup: Setup<'_>) -> Agent {
        let mut agent = Agent::spawn(setup);
        agent.wait_ready();
        agent
    }

    /// Like [`Agent::with`], but return as soon as the process is started.
    pub fn spawn(setup: Setup<'_>) -> Agent {
        let Setup {
            policy,
            exec,
            user,
            binary,
            policy_file,
            learned,
            env,
            agent: agent_lines,
            event_log,
            mount_ns,
        } = setup;
        // Safety: a test never lets the agent mark every filesystem (that is, `/`).
        assert!(
            exec.contains("mounts = [") || exec.contains("fanotify = false") || user.is_some(),
            "a test agent must mark only its own tmpfs, or run without fanotify"
        );
        let dir = tempfile::Builder::new()
            .prefix("interdict-agent-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let policy_path = match policy_file {
            Some(p) => p.to_path_buf(),
            None => {
                let p = dir.path().join("policy.toml");
                std::fs::write(&p, policy).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
                p
            }
        };
        std::fs::create_dir_all(dir.path().join("installs")).unwrap();
        if let Some(l) = learned {
            std::fs::create_dir_all(dir.path().join("state")).unwrap();
            std::fs::write(dir.path().join("state/learned.json"), l.to_string()).unwrap();
        }
        let config = dir.path().join("agent.toml");
        // Tests that configure [install] themselves say so in `exec`.
        // Nor does it look for AI-agent configuration in the host's homes, unless told where.
        let exec = if exec.contains("[install]") && !exec.contains("config_homes") {
            exec.replacen("[install]", "[install]\nconfig_homes = []", 1)
        } else {
            exec.to_string()
        };
        let exec = exec.as_str();
        let install = if exec.contains("[install]") {
            String::new()
        } else {
            format!(
                "[install]\nroots = [\"{}/installs\"]\nconfig_homes = []\n\n",
                dir.path().display()
            )
        };
        // A test agent never follows mounts it did not make: unless the test says where.
        // Nor does it stop other tests' processes while judging them (every process on the
        // host's own filesystems is on a filesystem a test agent does not mark).
        let mut follow = String::new();
        if !exec.contains("follow_mounts") {
            follow.push_str("\nfollow_mounts = false");
        }
        if !exec.contains("freeze") {
            follow.push_str("\nfreeze = false");
        }
        let event_log = event_log
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("events.jsonl"));
        std::fs::write(
            &config,
            format!(
                "[agent]\nstate_dir = \"{d}/state\"\nevent_log = \"{log}\"\ncontrol_socket = \"{d}/control.sock\"\n{agent_lines}\n\n{install}[exec]{follow}\n{exec}\n",
                d = dir.path().display(),
                log = event_log.display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
        let binary = binary
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_interdict")));
        let mut cmd = match (user, mount_ns) {
            (None, Some(snippet)) => {
                let mut c = Command::new("unshare");
                c.args([
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    &format!("set -e\n{snippet}\nexec \"$@\""),
                    "sh",
                    "timeout",
                    "300",
                ]);
                c
            }
            (Some(_), Some(_)) => panic!("a private mount namespace needs root"),
            (Some(u), None) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={u}"),
                    "--regid=nogroup",
                    "--clear-groups",
                    "timeout",
                    "300",
                ]);
                c
            }
            (None, None) => {
                let mut c = Command::new("timeout");
                c.arg("300");
                c
            }
        };
        cmd.arg(&binary)
            .arg("agent")
            .arg("--policy")
            .arg(&policy_path)
            .arg("--config")
            .arg(&config)
            .stdout(std::fs::File::create(dir.path().join("agent.out")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("agent.err")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // If the test process dies without dropping the agent (killed by a timeout), `timeout`
        // is told (SIGTERM, which it passes on to the agent): no orphaned agent keeps its marks
        // and the privileged-test lock it inherited.
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of
            // the parent; it only sets the child's parent-death signal.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        Agent {
            child,
            dir,
            policy: policy_path,
            binary,
            event_log,
        }
    }

    /// Stop the agent and start it again with the same files (root only).
    pub fn restart(&mut self) {
        self.stop();
        let d = self.dir.path();
        let _ = std::fs::remove_file(d.join("control.sock"));
        self.child = Command::new("timeout")
            .arg("300")
            .arg(&self.binary)
            .arg("agent")
            .arg("--policy")
            .arg(&self.policy)
            .arg("--config")
            .arg(d.join("agent.toml"))
            .stdout(std::fs::File::create(d.join("agent.out")).unwrap())
            .stderr(std::fs::File::create(d.join("agent.err")).unwrap())
            .spawn()
            .unwrap();
        self.wait_ready();
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Ready: answering status, and the start-up sweep (which follows script marking) done.
    /// Fails at once, with its exit status and log, when the agent exits instead.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(s) = self.try_status() {
                if s["counters"]["sweeps"].as_u64().unwrap_or(0) >= 1 {
                    return;
                }
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "the agent exited ({st}) before it was ready:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent never became ready within 60 s:\n{}", self.stderr());
    }

    /// The agent's own process id (it runs under `timeout`, whose id is `child.id()`).
    pub fn pid(&self) -> u32 {
        self.status()["pid"].as_u64().unwrap() as u32
    }

    /// One counter from `status`.
    pub fn counter(&self, name: &str) -> u64 {
        let s = self.status();
        s["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}: {s:#}"))
    }

    /// Wait until counter `name` reaches `at_least`; fail with the status and log otherwise.
    pub fn wait_counter(&self, name: &str, at_least: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status();
            if s["counters"][name].as_u64().unwrap_or(0) >= at_least {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "counter {name} never reached {at_least} in 30 s; status:\n{s:#}\nagent stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn try_status(&self) -> Option<Value> {
        let out = interdict()
            .args(["status", "--format", "json", "--socket"])
            .arg(self.socket())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("no status:\n{}", self.stderr()))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.err")).unwrap_or_default()
    }

    /// The events written so far: complete lines only (the agent may be writing the last one).
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.event_log).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")))
            .collect()
    }

    /// Wait until an event satisfies `pred`; panic with the events seen otherwise.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            if Instant::now() > deadline {
                panic!(
                    "no event {what}; events:\n{:#?}\nagent stderr:\n{}",
                    self.events(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Make the install watcher reconcile everything on disk: change the policy (a comment),
    /// reload, and wait for the full rescan that follows to finish. Whatever was installed
    /// before this call has been reported (or found gone) when it returns.
    pub fn settle_installs(&self) {
        self.wait_counter("install_rescans", 1);
        let before = self.counter("install_rescans");
        let mut text = std::fs::read_to_string(&self.policy).unwrap();
        text.push_str(&format!("\n# settle {before}\n"));
        std::fs::write(&self.policy, text).unwrap();
        self.reload().expect_code(0);
        self.wait_counter("install_rescans", before + 1);
    }

    pub fn reload(&self) -> Run {
        run(interdict().args(["reload", "--socket"]).arg(self.socket()))
    }

    /// SIGTERM, wait for a clean exit; the event log is complete afterwards.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("agent did not stop on SIGTERM:\n{}", self.stderr());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // The agent runs under `timeout`, which passes SIGTERM on.
            signal(self.child.id(), rustix::process::Signal::TERM);
            for _ in 0..200 {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run a program; `Err` holds the exec error (EPERM when denied).
pub fn exec(path: &Path, args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

pub fn assert_denied(path: &Path) {
    match exec(path, &[]) {
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EPERM),
            "{}: {e}",
            path.display()
        ),
        Ok(st) => panic!("{} ran ({st}) but should have been denied", path.display()),
    }
}

/// A Node.js script at `path` that, if it ever runs, writes `marker`.
pub fn node_marker_script(path: &Path, marker: &Path) {
    let js = format!(
        "require('fs').writeFileSync('{}', 'ran')\n",
        marker.display()
    );
    write(path, js.as_bytes(), 0o644);
}

pub fn events_of<'a>(events: &'a [Value], kind: &str, file: &Path) -> Vec<&'a Value> {
    let f = file.to_string_lossy();
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["file"]["path"] == *f)
        .collect()
}

/// An npm package name unique to this test run (`@interdict-test/agent-N`): never matched by
/// the shipped pack, which other tests' agents enforce on the whole machine.
pub fn test_package() -> String {
    format!(
        "@interdict-test/agent-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    )
}

/// A process stopped with SIGSTOP (all its threads), continued with SIGCONT when this is
/// dropped, whatever happens in between.
pub struct Paused(u32);

impl Paused {
    /// Stop `pid` and wait until every one of its threads is stopped.
    pub fn new(pid: u32) -> Paused {
        signal(pid, rustix::process::Signal::STOP);
        let paused = Paused(pid);
        wait_until(&format!("process {pid} stopped"), 30, || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .flatten()
                .all(|t| {
                    let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    // `pid (comm) S ...`: the state follows the last ')'.
                    let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
                    state.is_some_and(|s| s.starts_with('T'))
                })
        });
        paused
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, rustix::process::Signal::CONT);
    }
}

/// Set a file's modification time an hour back: a file the agent finds at start-up is then
/// not one "still being written" (which it would leave to the watcher).
pub fn backdate(path: &Path) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

/// A tmpfs mounted at `path` (which exists) until dropped.
pub struct MountedAt(pub PathBuf);

impl MountedAt {
    pub fn new(path: &Path) -> MountedAt {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", path.display());
        MountedAt(path.to_path_buf())
    }
}

impl Drop for MountedAt {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}
