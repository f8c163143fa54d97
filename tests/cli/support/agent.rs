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
    /// are all inside it, never the host's.
    pub fn with(setup: Setup<'_>) -> Agent {
        let Setup {
            policy,
            exec,
            user,
            binary,
            policy_file,
            learned,
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
        std::fs::write(
            &config,
            format!(
                "[agent]\nstate_dir = \"{d}/state\"\nevent_log = \"{d}/events.jsonl\"\ncontrol_socket = \"{d}/control.sock\"\n\n{install}[exec]{follow}\n{exec}\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
        let binary = binary
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_interdict")));
        let mut cmd = match user {
            Some(u) => {
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
            None => {
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
        let child = cmd.spawn().unwrap();
        let agent = Agent {
            child,
            dir,
            policy: policy_path,
            binary,
        };
        agent.wait_ready();
        agent
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
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(s) = self.try_status() {
                if s["counters"]["sweeps"].as_u64().unwrap_or(0) >= 1 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent never became ready:\n{}", self.stderr());
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

    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")))
            .collect()
    }

    /// Wait until an event satisfies `pred`; panic with the events seen otherwise.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
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
