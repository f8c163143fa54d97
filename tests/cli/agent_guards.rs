//! What the agent refuses to do and who may talk to it (issue 10), on real processes: PID 1, the
//! shells, env and su are never blocked or killed whatever the policy says; a kill the kernel
//! refuses is recorded as `kill_failed`; monitor mode and `enforce_from` hold back kill rules
//! and the script guard; command lines are redacted and bounded in real events; the control
//! socket admits root and the `admin_group`, nobody else.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::support::agent::*;
use crate::support::*;

/// Run `program args` inside the mount namespace of process `pid` (stdin piped).
fn in_ns_of(pid: u32, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.args(["-m", "-t", &pid.to_string(), "--", program])
        .args(args)
        .stdin(Stdio::piped());
    c
}

/// The event about process `pid` with `outcome`, waiting for it.
fn event_for(agent: &Agent, pid: u32, outcome: &str) -> Value {
    agent.wait_event(&format!("{outcome} for pid {pid}"), |e| {
        e["process"]["pid"] == pid && e["outcome"] == outcome
    })
}

/// End a child that waits on its stdin, and return how it ended.
fn finish(mut child: Child) -> std::process::ExitStatus {
    drop(child.stdin.take());
    child.wait().unwrap()
}

#[test]
fn issue_10_pid_1_the_shells_env_and_su_are_never_blocked_or_killed_whatever_the_policy_says() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    // The agent runs in a mount namespace of its own in which /usr/bin/bash, /usr/bin/env and
    // /usr/bin/su are unique copies (bind-mounted over the real ones): to the agent they are
    // the shell, env and su, while the policy below, which bans their digests, can never match
    // a program anyone else on this machine runs.
    let protected = ["bash", "env", "su"];
    let mut digests = Vec::new();
    let mut snippet = String::new();
    let mut mounts = vec![m.to_path_buf()];
    for p in protected {
        let copy = m.join("protected").join(p);
        digests.push(unique_copy(&format!("/usr/bin/{p}"), &copy));
        snippet.push_str(&format!("mount --bind {} /usr/bin/{p}\n", copy.display()));
        mounts.push(format!("/usr/bin/{p}").into());
    }
    // PID 1, by its name (its executable may be unreadable, e.g. under a VM's own init).
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap();
    let pid1 = pid1.trim();
    // The same bytes as the protected shell under another name (another inode): not protected.
    let twin = m.join("twin/bash");
    write(
        &twin,
        &std::fs::read(m.join("protected/bash")).unwrap(),
        0o755,
    );
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule(
            "critical",
            "block",
            &format!(
                "sha256 = [\"{}\"]\nnames = [\"{pid1}\"]",
                digests.join("\", \"")
            )
        )
    );
    let agent = Agent::with(Setup {
        policy: &policy,
        exec: &format!(
            "mounts = [{}]",
            mounts
                .iter()
                .map(|p| format!("\"{}\"", p.display()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        mount_ns: Some(&snippet),
        ..Setup::default()
    });
    let ns = agent.pid();

    // At start-up it said that the policy asks for what it refuses to do, and its sweep left
    // PID 1 alone.
    for p in protected {
        agent.wait_event(&format!("the protected warning for {p}"), |e| {
            e["outcome"] == "protected" && e["file"]["path"] == format!("/usr/bin/{p}")
        });
    }
    let e = event_for(&agent, 1, "protected");
    assert_eq!(e["rule"]["id"], "critical", "{e:#}");

    // The shell and su (which runs a shell): they run (the guard allows their exec), the proc
    // connector sees them and refuses to kill them, and they finish their work.
    let bash = in_ns_of(ns, "/usr/bin/bash", &["-c", "read x; exit 7"])
        .spawn()
        .unwrap();
    let su = in_ns_of(
        ns,
        "/usr/bin/su",
        &["root", "-s", "/usr/bin/bash", "-c", "read x; exit 7"],
    )
    .spawn()
    .unwrap();
    // env, held in its own image: it prints an environment larger than a pipe holds (one
    // variable of 120 KiB, under the kernel's 128 KiB bound for one string), and
    // nobody reads its output until the agent has judged it.
    let mut env = in_ns_of(ns, "/usr/bin/env", &[])
        .env("INTERDICT_BIG", "x".repeat(120 << 10))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for child in [&bash, &su, &env] {
        let e = event_for(&agent, child.id(), "protected");
        assert_eq!(e["sensor"], "proc_connector", "{e:#}");
        assert_eq!(e["kind"], "exec_reported", "{e:#}");
    }
    assert_eq!(finish(bash).code(), Some(7), "{}", agent.stderr());
    assert_eq!(finish(su).code(), Some(7), "{}", agent.stderr());
    let mut printed = Vec::new();
    env.stdout
        .take()
        .unwrap()
        .read_to_end(&mut printed)
        .unwrap();
    assert!(finish(env).success(), "{}", agent.stderr());
    assert!(printed.len() > 120 << 10);

    // Protection is by device and inode, not by content: the twin is denied on the guarded
    // filesystem (by any path: the mark covers the whole filesystem), and killed on one that
    // only the proc connector sees.
    let out = in_ns_of(ns, &twin.to_string_lossy(), &["-c", "exit 0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{out:?}\n{}",
        agent.stderr()
    );
    let unmarked = TmpMount::new();
    let twin = unmarked.path().join("bash");
    write(
        &twin,
        &std::fs::read(m.join("protected/bash")).unwrap(),
        0o755,
    );
    let twin_run = Command::new(&twin)
        .args(["-c", "read x"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = twin_run.id();
    assert_eq!(event_for(&agent, pid, "killed")["rule"]["id"], "critical");
    assert_eq!(finish(twin_run).signal(), Some(libc::SIGKILL));
    let c = agent.status()["counters"].clone();
    assert_eq!(
        (c["denied"].as_u64(), c["killed"].as_u64()),
        (Some(1), Some(1)),
        "{c:#}"
    );
}

#[test]
fn issue_10_a_kill_the_kernel_refuses_is_recorded_once_as_kill_failed() {
    // An agent without root (degraded: it polls) may kill the processes of its own user and no
    // others. It judges both, kills one, and records the refusal of the other, once.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let name = format!("kf-tool-{}-{}", std::process::id(), fastrand::u32(..));
    let prog = dir.path().join(&name);
    unique_copy("/bin/sleep", &prog);
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule("by-name", "kill", &format!("names = [\"{name}\"]"))
    );
    let agent = Agent::start_as(&policy, "poll_interval_ms = 200", Some("nobody"));
    let mut roots = Command::new(&prog).arg("120").spawn().unwrap();
    let mut own = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(&prog)
        .arg("120")
        .spawn()
        .unwrap();
    let killed = event_for(&agent, own.id(), "killed");
    assert_eq!(killed["kind"], "process_killed");
    assert_eq!(own.wait().unwrap().signal(), Some(libc::SIGKILL));
    let failed = event_for(&agent, roots.id(), "kill_failed");
    assert_eq!(failed["kind"], "process_killed", "{failed:#}");
    assert_eq!(failed["rule"]["id"], "by-name");
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("kill failed: permission denied")),
        "the event says why: {failed:#}"
    );
    // Later sweeps judge it again but do not try again, nor record it again.
    let sweeps = agent.counter("sweeps");
    agent.wait_counter("sweeps", sweeps + 3);
    assert!(
        roots.try_wait().unwrap().is_none(),
        "root's process survives"
    );
    let _ = roots.kill();
    let _ = roots.wait();
    let c = agent.status()["counters"].clone();
    assert_eq!(c["kill_failures"], 1, "{c:#}");
    assert_eq!(c["killed"], 1, "{c:#}");
    let n = agent
        .events()
        .iter()
        .filter(|e| e["outcome"] == "kill_failed")
        .count();
    assert_eq!(n, 1, "{:#?}", agent.events());
}

#[test]
fn issue_10_monitor_mode_and_enforce_from_hold_back_kill_rules_on_both_sensors() {
    let mnt = TmpMount::new();
    let unmarked = tempfile::tempdir().unwrap();
    // (policy mode, rule, killed?) for a program on the guarded tmpfs (the exec guard judges
    // it) and one elsewhere (the proc connector judges it).
    let cases = [
        ("enforce", "kill-now", true),
        ("enforce", "kill-later", false),
        ("monitor", "kill-now", false),
        ("monitor", "kill-later", false),
    ];
    for mode in ["enforce", "monitor"] {
        let mut policy = POLICY_HEAD.replace("enforce", mode);
        let mut progs = Vec::new();
        for (id, later) in [("kill-now", false), ("kill-later", true)] {
            let on_mark = mnt.path().join(format!("{mode}-{id}"));
            let off_mark = unmarked.path().join(format!("{mode}-{id}"));
            let a = unique_copy("/bin/cat", &on_mark);
            let b = unique_copy("/bin/cat", &off_mark);
            let r = rule(id, "kill", &format!("sha256 = [\"{a}\", \"{b}\"]"));
            policy.push_str(&if later {
                r.replace("[rule.match]", "enforce_from = 2999-01-01\n[rule.match]")
            } else {
                r
            });
            progs.push((id, on_mark, "fanotify"));
            progs.push((id, off_mark, "proc_connector"));
        }
        let mut agent = Agent::start(&policy, &marks(mnt.path()));
        let mut pids = Vec::new();
        for (id, prog, sensor) in &progs {
            let killed = cases
                .iter()
                .find(|(m, r, _)| *m == mode && r == id)
                .unwrap()
                .2;
            let what = format!("{mode} mode, rule {id}, {}", prog.display());
            // cat waits on its stdin: alive until the agent has judged it.
            let mut child = Command::new(prog)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let pid = child.id();
            let e = event_for(&agent, pid, if killed { "killed" } else { "would_enforce" });
            // A kill on the guarded filesystem comes from the guard's own decision or from the
            // proc connector, whichever is first (the other finds it done); a report from the
            // guard alone.
            assert!(
                e["sensor"] == *sensor || (killed && e["sensor"] == "proc_connector"),
                "{what}: {e:#}"
            );
            assert_eq!(e["rule"]["id"], *id, "{what}: {e:#}");
            if !killed {
                child.stdin.take().unwrap().write_all(b"done\n").unwrap();
            }
            let st = finish(child);
            if killed {
                assert_eq!(st.signal(), Some(libc::SIGKILL), "{what}");
            } else {
                assert!(st.success(), "{what}: {st}");
            }
            pids.push((pid, what));
        }
        agent.stop();
        // One event per run, whichever sensors saw it.
        let events = agent.events();
        for (pid, what) in pids {
            let n = events
                .iter()
                .filter(|e| e["process"]["pid"] == pid && e["rule"].is_object())
                .count();
            assert_eq!(n, 1, "{what}: {events:#?}");
        }
    }
}

#[test]
fn issue_10_monitor_mode_and_enforce_from_let_a_banned_script_run_and_report_it() {
    for (mode, later) in [("monitor", false), ("enforce", true)] {
        let mnt = TmpMount::new();
        let m = mnt.path();
        let pkg = test_package();
        let cli = m.join(format!("prefix/lib/node_modules/{pkg}/cli.js"));
        let marker = m.join("node-ran");
        node_marker_script(&cli, &marker);
        let r = rule(
            "scripts",
            "block",
            &format!("scripts = [\"**/node_modules/{pkg}/cli.js\"]"),
        );
        let policy = format!(
            "{}{}",
            POLICY_HEAD.replace("enforce", mode),
            if later {
                r.replace("[rule.match]", "enforce_from = 2999-01-01\n[rule.match]")
            } else {
                r
            }
        );
        let mut agent = Agent::start(
            &policy,
            &format!(
                "mounts = [\"{d}\"]\nscript_roots = [\"{d}\"]",
                d = m.display()
            ),
        );
        let what = format!("{mode} mode, enforce_from later: {later}");
        let node = Command::new("node")
            .arg(&cli)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = node.id();
        let out = node.wait_with_output().unwrap();
        assert!(out.status.success(), "{what}: {out:?}\n{}", agent.stderr());
        assert!(marker.exists(), "{what}: the script did not run");
        // (Other tests' agents sweep every process, and reading the script to hash it, they
        // open it too: only the node run is this test's.)
        let e = agent.wait_event("the script reported", |e| {
            e["rule"]["id"] == "scripts"
                && e["outcome"] == "would_enforce"
                && e["process"]["pid"] == pid
        });
        assert_eq!(e["sensor"], "script_guard", "{what}: {e:#}");
        assert_eq!(e["rule"]["selector"], "script", "{what}: {e:#}");
        assert_eq!(e["file"]["path"], cli.to_string_lossy().as_ref(), "{what}");
        agent.stop();
        let events = agent.events();
        let about: Vec<&Value> = events
            .iter()
            .filter(|e| e["rule"]["id"] == "scripts" && e["process"]["pid"] == pid)
            .collect();
        assert!(
            about.iter().all(|e| e["outcome"] == "would_enforce"),
            "{what}: {about:#?}"
        );
        assert_eq!(about.len(), 1, "{what}: one run, one event: {about:#?}");
    }
}

/// Secrets on a command line, one of each kind the README names.
const SECRETS: &[&str] = &[
    "hunter2-flag-value",
    "tok-env-value-123",
    "eyJhbGciOiJIUzI1NiJ9",
    "sk-ant-api03-abcdefghijklmnop",
    "ghp_0123456789abcdefghijABCDEF",
];

fn secret_args() -> Vec<String> {
    vec![
        "--api-key".into(),
        SECRETS[0].into(),
        format!("GITHUB_TOKEN={}", SECRETS[1]),
        format!("Authorization: Bearer {}", SECRETS[2]),
        SECRETS[3].into(),
        SECRETS[4].into(),
    ]
}

/// Check a real event's command line: every secret replaced, cut at 16 KiB.
fn check_argv(e: &Value, raw_log: &str, what: &str) {
    let argv: Vec<&str> = e["process"]["argv"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no argv: {e:#}"))
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(argv.contains(&"--api-key"), "{what}: {argv:?}");
    let i = argv.iter().position(|a| *a == "--api-key").unwrap();
    assert_eq!(argv[i + 1], "[REDACTED]", "{what}: {argv:?}");
    assert_eq!(argv[i + 2], "GITHUB_TOKEN=[REDACTED]", "{what}: {argv:?}");
    assert_eq!(argv[i + 3], "Authorization: Bearer [REDACTED]", "{what}");
    assert_eq!(argv[i + 4], "[REDACTED]", "{what}: {argv:?}");
    assert_eq!(argv[i + 5], "[REDACTED]", "{what}: {argv:?}");
    assert_eq!(argv.last(), Some(&"[TRUNCATED]"), "{what}");
    let bytes: usize = argv[..argv.len() - 1].iter().map(|a| a.len()).sum();
    assert!(bytes <= 16 * 1024, "{what}: {bytes} bytes kept");
    assert!(bytes > 15 * 1024, "{what}: only {bytes} bytes kept");
    for s in SECRETS {
        assert!(!raw_log.contains(s), "{what}: {s} is in the event log");
    }
}

#[test]
fn issue_10_real_events_redact_secrets_and_cut_command_lines_at_16_kib() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let unmarked = tempfile::tempdir().unwrap();
    // Killed by the proc connector: the event has the banned program's own command line.
    let tool = unmarked.path().join("agent-tool");
    let dk = unique_copy("/usr/bin/bash", &tool);
    // Denied by the exec guard: the event has the command line of the process that tried.
    let denied = m.join("denied-tool");
    let dd = unique_copy("/bin/true", &denied);
    let policy = format!(
        "{POLICY_HEAD}{}{}",
        rule("killed", "kill", &format!("sha256 = [\"{dk}\"]")),
        rule("denied", "block", &format!("sha256 = [\"{dd}\"]")),
    );
    let mut agent = Agent::start(&policy, &marks(m));
    let long = "A".repeat(20 * 1024);
    let mut args = secret_args();
    args.push(long.clone());
    let run = Command::new(&tool)
        .args(["-c", "read x", "argv0"])
        .args(&args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let killed_pid = run.id();
    event_for(&agent, killed_pid, "killed");
    assert_eq!(finish(run).signal(), Some(libc::SIGKILL));
    let st = Command::new("sh")
        .args(["-c", "exec \"$0\""])
        .arg(&denied)
        .args(&args)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success());
    agent.wait_event("the denial", |e| e["kind"] == "exec_denied");
    agent.stop();
    let raw = std::fs::read_to_string(&agent.event_log).unwrap();
    let events = agent.events();
    let killed = events
        .iter()
        .find(|e| e["process"]["pid"] == killed_pid && e["outcome"] == "killed")
        .unwrap_or_else(|| panic!("{events:#?}"));
    check_argv(killed, &raw, "process_killed");
    let denied_event = events.iter().find(|e| e["kind"] == "exec_denied").unwrap();
    check_argv(denied_event, &raw, "exec_denied");
    for s in SECRETS {
        assert!(!agent.stderr().contains(s), "{s} is in the agent's log");
    }
}

const ADMIN_GROUP: &str = "interdict-adm";
const ADMIN_USER: &str = "interdict-adm";

/// A real group and an unprivileged member of it (not by primary group: listed in
/// /etc/group), created when missing.
fn ensure_admin_group() {
    let exists = |what: &str, name: &str| {
        Command::new("getent")
            .args([what, name])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    if !exists("group", ADMIN_GROUP) {
        let st = Command::new("groupadd").arg(ADMIN_GROUP).status().unwrap();
        assert!(st.success() || exists("group", ADMIN_GROUP));
    }
    if !exists("passwd", ADMIN_USER) {
        let st = Command::new("useradd")
            .args(["-M", "-N", "-g", "nogroup", "-G", ADMIN_GROUP])
            .args(["-s", "/usr/sbin/nologin", ADMIN_USER])
            .status()
            .unwrap();
        assert!(st.success() || exists("passwd", ADMIN_USER));
    }
}

/// `interdict ARGS` as `user` (primary group nogroup, with the user's groups).
fn as_user(user: &str, args: &[&str], socket: &Path) -> Run {
    run(Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            "--regid=nogroup",
            "--init-groups",
            env!("CARGO_BIN_EXE_interdict"),
        ])
        .args(args)
        .arg("--socket")
        .arg(socket))
}

#[test]
fn issue_10_the_control_socket_admits_root_and_the_admin_group_and_checks_peers() {
    ensure_admin_group();
    let gid = {
        let out = Command::new("getent")
            .args(["group", ADMIN_GROUP])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split(':')
            .nth(2)
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let agent = Agent::with(Setup {
        policy: &format!(
            "{POLICY_HEAD}{}",
            rule("x", "report", "paths = [\"/nonexistent/for-this-test\"]")
        ),
        exec: "fanotify = false\nproc_connector = false",
        agent: &format!("admin_group = \"{ADMIN_GROUP}\""),
        ..Setup::default()
    });
    let sock = agent.socket();
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid(), meta.gid()),
        (0o660, 0, gid)
    );
    // The event log is readable by the group, the state folder by root only.
    let log = std::fs::metadata(&agent.event_log).unwrap();
    assert_eq!((log.mode() & 0o777, log.gid()), (0o640, gid));
    let state = std::fs::metadata(agent.dir.path().join("state")).unwrap();
    assert_eq!(state.mode() & 0o777, 0o700);

    // A member may ask for status and reload.
    as_user(ADMIN_USER, &["status", "--format", "json"], &sock)
        .expect_code(0)
        .expect_stdout("\"generation\"");
    as_user(ADMIN_USER, &["reload"], &sock).expect_code(0);
    // Anyone else cannot even connect ...
    let r = as_user("daemon", &["status"], &sock);
    r.expect_code(2);
    assert!(r.stderr.contains("cannot reach the agent"), "{}", r.stderr);
    // ... and if the socket's mode were loosened, the agent still checks who is asking.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = as_user("daemon", &["status"], &sock);
    r.expect_code(2);
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
    let r = as_user("daemon", &["reload"], &sock);
    r.expect_code(2);
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
    assert_eq!(agent.status()["generation"], 1);
}
