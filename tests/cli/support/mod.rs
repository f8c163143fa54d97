//! Test support: run the binary, temp trees, readable failures; the agent harness in
//! [`agent`]; real packages fetched once into the test cache in [`fixtures`].

pub mod agent;
pub mod fixtures;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The shipped pack's text without its family rule's `contains_all`/`contains_in`, for test
/// agents that enforce the pack: their sweeps judge every process on the machine, and must not
/// kill another test's running copy of Claude Code (or a real one) by its signatures.
pub fn pack_without_family_rule() -> String {
    std::fs::read_to_string(shipped_pack())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("contains_all") && !l.starts_with("contains_in"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The binary under test.
pub fn interdict() -> Command {
    Command::new(env!("CARGO_BIN_EXE_interdict"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped policy pack.
pub fn shipped_pack() -> PathBuf {
    repo().join("policies/ai-coding-agents.toml")
}

/// Run and capture, with the full output in any failure message.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code {} (wanted {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Assert that stdout holds `needle`, showing stdout when it does not.
    pub fn expect_stdout(&self, needle: &str) -> &Run {
        assert!(self.stdout.contains(needle), "{}", self.stdout);
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON: {e}\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

pub fn run(cmd: &mut Command) -> Run {
    Run::of(cmd.output().expect("run interdict"))
}

/// `interdict scan --no-processes --format json --policy P --root R...`
pub fn scan_json(policy: &Path, roots: &[&Path]) -> Run {
    let mut c = interdict();
    c.args(["scan", "--no-processes", "--format", "json", "--policy"])
        .arg(policy);
    for r in roots {
        c.arg("--root").arg(r);
    }
    run(&mut c)
}

/// Write a file, creating parent folders, with the given mode.
pub fn write(path: &Path, contents: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// SHA-256 of bytes, hex, computed independently of the code under test (coreutils).
pub fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A policy with one rule, written to `dir/policy.toml`.
pub fn one_rule_policy(dir: &Path, action: &str, match_table: &str) -> PathBuf {
    let p = dir.join("policy.toml");
    std::fs::write(
        &p,
        format!(
            r#"[policy]
name = "test"
version = "1"
mode = "enforce"

[[rule]]
id = "banned-tool"
name = "Banned tool"
risk = "high"
reason = "test ban"
action = "{action}"
alternative = "use the approved tool"

[rule.match]
{match_table}
"#
        ),
    )
    .unwrap();
    p
}

/// The violations of a JSON report.
pub fn violations(report: &serde_json::Value) -> Vec<serde_json::Value> {
    report["violations"]
        .as_array()
        .expect("violations array")
        .clone()
}

/// The violation whose `path` equals `path`, with a readable failure.
pub fn violation_at(report: &serde_json::Value, path: &Path) -> serde_json::Value {
    let want = path.to_string_lossy();
    violations(report)
        .into_iter()
        .find(|v| v["path"] == *want)
        .unwrap_or_else(|| panic!("no violation at {want}; report:\n{report:#}"))
}

/// Send `sig` to a process this test started (by its PID).
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Wait until `f` holds, for at most `secs` seconds; panic saying `what` otherwise.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The unprivileged user the tests run programs as (`interdict-nt`, created when missing).
pub const TEST_USER: &str = "interdict-nt";

/// Make sure [`TEST_USER`] exists; its uid.
pub fn test_user() -> u32 {
    let exists = || {
        Command::new("id")
            .arg(TEST_USER)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !exists() {
        let st = Command::new("useradd")
            .args(["-M", "-s", "/usr/sbin/nologin", TEST_USER])
            .status()
            .unwrap();
        // Another test may have created it meanwhile.
        assert!(st.success() || exists(), "useradd {TEST_USER} failed");
    }
    let out = Command::new("id")
        .arg("-u")
        .arg(TEST_USER)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `program` run as [`TEST_USER`] (no supplementary groups).
pub fn as_test_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    test_user();
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={TEST_USER}"),
        &format!("--regid={TEST_USER}"),
        "--clear-groups",
    ])
    .arg(program);
    c
}
