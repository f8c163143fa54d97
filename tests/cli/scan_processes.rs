//! `interdict scan` on real running processes: native binaries and interpreter scripts.

use std::process::{Child, Command, Stdio};

use crate::support::*;

/// A child that is killed (by its own PID, never by name) when the test ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_exec(child: &Child, expect_in_cmdline: &str) {
    for _ in 0..200 {
        let cmd = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(expect_in_cmdline) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("child {} never exec'd {expect_in_cmdline}", child.id());
}

fn scan_processes(policy: &std::path::Path, root: &std::path::Path) -> Run {
    run(interdict()
        .args(["scan", "--format", "json", "--policy"])
        .arg(policy)
        .arg("--root")
        .arg(root))
}

fn running_violation(j: &serde_json::Value, pid: u32) -> serde_json::Value {
    violations(j)
        .into_iter()
        .find(|v| v["kind"] == "running" && v["pid"] == pid)
        .unwrap_or_else(|| panic!("no running violation for pid {pid}: {j:#}"))
}

#[test]
fn a_running_banned_binary_is_reported_with_its_pid_and_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("tools/banned-agent");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy("/bin/sleep", &exe).unwrap();
    let digest = sha256sum(&exe);
    let policy = one_rule_policy(tmp.path(), "kill", &format!(r#"sha256 = ["{digest}"]"#));
    let child = Guard(
        Command::new(&exe)
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_exec(&child.0, "30");
    let empty = tempfile::tempdir().unwrap();
    let r = scan_processes(&policy, empty.path());
    r.expect_code(1);
    let v = running_violation(&r.json(), child.0.id());
    assert_eq!(v["selector"], "sha256");
    assert_eq!(v["path"], exe.to_string_lossy().as_ref());
    assert_eq!(v["user"], "root");
    assert!(
        v["command_line"]
            .as_str()
            .unwrap()
            .ends_with("banned-agent 30"),
        "{v:#}"
    );
}

#[test]
fn a_deleted_running_binary_is_still_caught_by_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("gone-agent");
    std::fs::copy("/bin/sleep", &exe).unwrap();
    let digest = sha256sum(&exe);
    let policy = one_rule_policy(tmp.path(), "kill", &format!(r#"sha256 = ["{digest}"]"#));
    let child = Guard(Command::new(&exe).arg("31").spawn().unwrap());
    wait_for_exec(&child.0, "31");
    std::fs::remove_file(&exe).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let r = scan_processes(&policy, empty.path());
    r.expect_code(1);
    let v = running_violation(&r.json(), child.0.id());
    assert_eq!(v["selector"], "sha256");
    assert_eq!(v["path"], exe.to_string_lossy().as_ref());
}

#[test]
fn an_interpreter_script_is_resolved_through_cwd_and_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = tmp
        .path()
        .join("prefix/lib/node_modules/@anthropic-ai/claude-code/cli.js");
    write(&cli, b"setTimeout(() => {}, 30000);\n", 0o644);
    std::fs::create_dir_all(tmp.path().join("prefix/bin")).unwrap();
    std::os::unix::fs::symlink(
        "../lib/node_modules/@anthropic-ai/claude-code/cli.js",
        tmp.path().join("prefix/bin/claude"),
    )
    .unwrap();
    let policy = one_rule_policy(
        tmp.path(),
        "block",
        r#"scripts = ["**/node_modules/@anthropic-ai/claude-code/cli.js"]"#,
    );
    // `node bin/claude`, relative to the working directory, through the npm bin symlink.
    let child = Guard(
        Command::new("node")
            .arg("bin/claude")
            .current_dir(tmp.path().join("prefix"))
            .spawn()
            .unwrap(),
    );
    wait_for_exec(&child.0, "bin/claude");
    let empty = tempfile::tempdir().unwrap();
    let r = scan_processes(&policy, empty.path());
    r.expect_code(1);
    let v = running_violation(&r.json(), child.0.id());
    assert_eq!(v["selector"], "script");
    assert_eq!(
        v["target"],
        std::fs::canonicalize(&cli)
            .unwrap()
            .to_string_lossy()
            .as_ref()
    );
}

#[test]
fn a_shell_script_run_by_sh_is_matched_by_its_script_path() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("agent/run-agent.sh");
    write(&script, b"sleep 30\n", 0o644);
    let policy = one_rule_policy(
        tmp.path(),
        "report",
        r#"scripts = ["**/agent/run-agent.sh"]"#,
    );
    let child = Guard(Command::new("sh").arg(&script).spawn().unwrap());
    wait_for_exec(&child.0, "run-agent.sh");
    let empty = tempfile::tempdir().unwrap();
    let r = scan_processes(&policy, empty.path());
    r.expect_code(1);
    let v = running_violation(&r.json(), child.0.id());
    assert_eq!(v["selector"], "script");
    assert_eq!(v["action"], "report");
}

#[test]
fn no_processes_flag_skips_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("tools/banned-agent-2");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy("/bin/sleep", &exe).unwrap();
    let policy = one_rule_policy(tmp.path(), "kill", r#"paths = ["**/tools/banned-agent-2"]"#);
    let child = Guard(Command::new(&exe).arg("32").spawn().unwrap());
    wait_for_exec(&child.0, "32");
    let empty = tempfile::tempdir().unwrap();
    let r = scan_json(&policy, &[empty.path()]);
    r.expect_code(0);
    assert!(r.json()["scanned_processes"].is_null());
    let r = scan_processes(&policy, empty.path());
    r.expect_code(1);
    running_violation(&r.json(), child.0.id());
}
