//! The agent against the real kernel, as root: fanotify marks only on a tmpfs the test mounted,
//! the proc connector, pidfd kills, reloads. Every agent runs under `timeout` and is stopped (by
//! its PID) and the tmpfs unmounted when the test ends, even on failure.
//!
//! Every banned fixture is unique to its test (a random tail appended to a copy of a system
//! binary, or a path inside the test's own folders), so that the proc connector of one test's
//! agent, which sees every exec on the machine, never matches anything else.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::agent::*;
use crate::support::*;

#[test]
fn blocks_by_path_name_and_sha256_including_renamed_copies_hardlinks_and_symlinks() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let by_path = m.join("tools/blocked-by-path");
    unique_copy("/bin/true", &by_path);
    let name = format!("banned-name-{}", std::process::id());
    let by_name = m.join("bin").join(&name);
    unique_copy("/bin/true", &by_name);
    let hashed = m.join("orig/hashed-tool");
    let digest = unique_copy("/bin/true", &hashed);
    let renamed = m.join("elsewhere/innocent");
    write(&renamed, &std::fs::read(&hashed).unwrap(), 0o755);
    let hardlink = m.join("elsewhere/hardlink");
    std::fs::hard_link(&hashed, &hardlink).unwrap();
    let symlink = m.join("elsewhere/symlink");
    std::os::unix::fs::symlink(&hashed, &symlink).unwrap();
    let allowed = m.join("tools/allowed");
    unique_copy("/bin/true", &allowed);

    let policy = format!(
        "{POLICY_HEAD}{}{}{}",
        rule(
            "by-path",
            "block",
            &format!("paths = [\"{}/tools/blocked-*\"]", m.display())
        ),
        rule("by-name", "block", &format!("names = [\"{name}\"]")),
        rule("by-hash", "block", &format!("sha256 = [\"{digest}\"]")),
    );
    let mut agent = Agent::start(&policy, &marks(m));
    for p in [&by_path, &by_name, &hashed, &renamed, &hardlink, &symlink] {
        assert_denied(p);
    }
    assert!(
        exec(&allowed, &[]).unwrap().success(),
        "an allowed program runs normally"
    );
    // The path rule fired: its digest is learned, which starts a new policy generation (and
    // so a fresh decision cache). Then twice more each: a miss, then a hit from the cache.
    wait_until("a learned digest", 20, || {
        agent.status()["counters"]["hashes_learned"].as_u64() >= Some(1)
    });
    for _ in 0..2 {
        for p in [&by_path, &renamed] {
            assert_denied(p);
        }
    }
    let status = agent.status();
    assert!(
        status["counters"]["cache_hits"].as_u64().unwrap() >= 2,
        "{status:#}"
    );
    assert_eq!(agent.stop().code(), Some(0));

    let events = agent.events();
    let denied = |p: &Path, rule: &str, selector: &str, times: usize| {
        let es = events_of(&events, "exec_denied", p);
        assert_eq!(es.len(), times, "exec_denied for {}: {es:#?}", p.display());
        for (i, e) in es.iter().enumerate() {
            assert_eq!(e["rule"]["id"], rule);
            // Once a path rule has fired, the agent learns the file's digest: a later exec may
            // match that (the stronger selector) instead.
            let learned = selector == "path" && i > 0 && e["rule"]["selector"] == "sha256";
            assert!(e["rule"]["selector"] == selector || learned, "{e:#}");
            assert_eq!(e["outcome"], "denied");
            assert!(e["process"]["pid"].as_u64().unwrap() > 0);
        }
    };
    denied(&by_path, "by-path", "path", 3);
    denied(&by_name, "by-name", "name", 1);
    // The kernel reports the path the file was opened by: a symlink resolves to its target, a
    // hard link is a path of its own.
    denied(&hashed, "by-hash", "sha256", 2);
    denied(&hardlink, "by-hash", "sha256", 1);
    denied(&renamed, "by-hash", "sha256", 3);
    assert!(events.iter().any(|e| e["kind"] == "agent_started"));
    assert!(events.iter().any(|e| e["kind"] == "agent_stopped"));
}

#[test]
fn a_banned_program_on_an_unmarked_path_is_killed_before_it_finishes() {
    let mnt = TmpMount::new(); // marked, but the program lives elsewhere
    let dir = tempfile::tempdir().unwrap();
    let banned = dir.path().join("unmarked-banned");
    let digest = unique_copy("/bin/sleep", &banned);
    let marker = dir.path().join("finished");
    let policy = hash_policy("kill-me", "block", &digest);
    let agent = Agent::start(&policy, &marks(mnt.path()));
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' 60 && touch '{}'",
            banned.display(),
            marker.display()
        ))
        .status()
        .unwrap();
    assert!(!st.success(), "the banned program finished");
    assert!(!marker.exists(), "the banned program finished its work");
    let e = agent.wait_event("process_killed", |e| {
        e["kind"] == "process_killed" && e["process"]["exe"] == banned.to_string_lossy().as_ref()
    });
    assert_eq!(e["outcome"], "killed");
    assert_eq!(e["sensor"], "proc_connector");
    assert_eq!(e["rule"]["id"], "kill-me");
    assert_eq!(e["file"]["sha256"], digest);
}

#[test]
fn a_memfd_exec_of_a_banned_binary_is_killed() {
    let mnt = TmpMount::new();
    let dir = tempfile::tempdir().unwrap();
    let bytes_path = dir.path().join("payload.bin");
    let digest = unique_copy("/bin/sleep", &bytes_path);
    let policy = hash_policy("memfd", "kill", &digest);
    let marker = dir.path().join("finished");
    let script = dir.path().join("memfd.py");
    std::fs::write(
        &script,
        format!(
            "import os\nfd = os.memfd_create('innocent', 0)\nos.write(fd, open('{}', 'rb').read())\nos.execve(fd, ['innocent', '60'], dict(os.environ))\n",
            bytes_path.display()
        ),
    )
    .unwrap();
    let agent = Agent::start(&policy, &marks(mnt.path()));
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "/usr/bin/python3 '{}' && touch '{}'",
            script.display(),
            marker.display()
        ))
        .status()
        .unwrap();
    assert!(!st.success());
    assert!(!marker.exists(), "the memfd program finished its work");
    let e = agent.wait_event("memfd kill", |e| {
        e["kind"] == "process_killed" && e["rule"]["id"] == "memfd"
    });
    assert_eq!(e["outcome"], "killed");
    assert!(
        e["process"]["exe"]
            .as_str()
            .unwrap()
            .starts_with("/memfd:innocent"),
        "{e:#}"
    );
}

#[test]
fn monitor_mode_and_future_enforce_from_report_without_blocking() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let a = m.join("monitored");
    let da = unique_copy("/bin/true", &a);
    let policy = format!(
        "{}{}",
        POLICY_HEAD.replace("enforce", "monitor"),
        rule("watched", "block", &format!("sha256 = [\"{da}\"]"))
    );
    let agent = Agent::start(&policy, &marks(m));
    assert!(
        exec(&a, &[]).unwrap().success(),
        "monitor mode must not block"
    );
    let e = agent.wait_event("exec_reported", |e| {
        e["kind"] == "exec_reported" && e["rule"]["id"] == "watched"
    });
    assert_eq!(e["outcome"], "would_enforce");
    drop(agent);

    let b = m.join("later");
    let db = unique_copy("/bin/true", &b);
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule("later", "block", &format!("sha256 = [\"{db}\"]"))
            .replace("[rule.match]", "enforce_from = 2999-01-01\n[rule.match]")
    );
    let agent = Agent::start(&policy, &marks(m));
    assert!(
        exec(&b, &[]).unwrap().success(),
        "a future enforce_from must not block"
    );
    let e = agent.wait_event("exec_reported", |e| {
        e["kind"] == "exec_reported" && e["rule"]["id"] == "later"
    });
    assert_eq!(e["outcome"], "would_enforce");
}

#[test]
fn a_broken_policy_on_reload_leaves_the_old_one_in_force() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let banned = m.join("reload-banned");
    let digest = unique_copy("/bin/true", &banned);
    let good = hash_policy("ban", "block", &digest);
    let agent = Agent::start(&good, &marks(m));
    assert_denied(&banned);

    std::fs::write(
        &agent.policy,
        good.replace("action = \"block\"", "action = \"obliterate\""),
    )
    .unwrap();
    let r = agent.reload();
    r.expect_code(2);
    assert!(r.stderr.contains("error[bad-action]"), "{}", r.stderr);
    assert!(
        r.stderr.contains("previous policy stays in force"),
        "{}",
        r.stderr
    );
    assert_denied(&banned);
    agent.wait_event("policy_rejected", |e| e["kind"] == "policy_rejected");
    assert_eq!(agent.status()["generation"], 1);
    assert!(
        agent.status()["counters"]["policies_rejected"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // A valid change applies, and the cached deny is flushed with it.
    std::fs::write(
        &agent.policy,
        good.replace("action = \"block\"", "action = \"report\""),
    )
    .unwrap();
    let r = agent.reload();
    r.expect_code(0);
    assert!(
        exec(&banned, &[]).unwrap().success(),
        "report-only after reload"
    );
    assert!(agent.status()["generation"].as_u64().unwrap() >= 2);
}

#[test]
fn the_policy_file_changing_reloads_it() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let tool = m.join("watched-tool");
    let digest = unique_copy("/bin/true", &tool);
    let report = hash_policy("ban", "report", &digest);
    let agent = Agent::start(&report, &marks(m));
    assert!(exec(&tool, &[]).unwrap().success());
    // Replace the file the way editors do: write a new one, rename it over the old.
    let tmp = agent.dir.path().join("policy.toml.new");
    std::fs::write(
        &tmp,
        report.replace("action = \"report\"", "action = \"block\""),
    )
    .unwrap();
    std::fs::rename(&tmp, &agent.policy).unwrap();
    agent.wait_event("policy_applied after the change", |e| {
        e["kind"] == "policy_applied"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("policy file changed")
    });
    assert_denied(&tool);
}

#[test]
fn the_script_guard_stops_interpreters_before_they_read_the_script() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    // A package name unique to this test: the shipped pack's own globs (which other tests'
    // agents enforce machine-wide) never match it.
    let pkg = test_package();
    let cli = m.join(format!("prefix/lib/node_modules/{pkg}/cli.js"));
    let marker = m.join("node-ran");
    node_marker_script(&cli, &marker);
    let sh_script = m.join("agents/run-agent.sh");
    let sh_marker = m.join("sh-ran");
    write(
        &sh_script,
        format!("touch '{}'\n", sh_marker.display()).as_bytes(),
        0o644,
    );
    let py_script = m.join("agents/agent.py");
    let py_marker = m.join("py-ran");
    write(
        &py_script,
        format!("open('{}', 'w').write('ran')\n", py_marker.display()).as_bytes(),
        0o644,
    );
    let allowed_script = m.join("agents/fine.sh");
    write(&allowed_script, b"exit 0\n", 0o644);
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule(
            "scripts",
            "block",
            &format!("scripts = [\"**/node_modules/{pkg}/cli.js\", \"**/agents/run-agent.sh\", \"**/agents/agent.py\"]")
        )
    );
    // Without the proc connector, which would kill the interpreters instead: this test is about
    // the guard denying the open.
    let agent = Agent::start(
        &policy,
        &format!(
            "mounts = [\"{d}\"]\nscript_roots = [\"{d}\"]\nproc_connector = false",
            d = m.display()
        ),
    );
    let s = agent.status();
    let guard = s["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "script_guard")
        .unwrap()
        .clone();
    assert!(
        guard["detail"]
            .as_str()
            .unwrap()
            .starts_with("3 banned script"),
        "{guard:#}"
    );

    let node = Command::new("node").arg(&cli).output().unwrap();
    assert!(!node.status.success());
    assert!(
        String::from_utf8_lossy(&node.stderr).contains("EPERM"),
        "{}",
        String::from_utf8_lossy(&node.stderr)
    );
    let sh = Command::new("sh").arg(&sh_script).output().unwrap();
    assert!(!sh.status.success());
    assert!(
        String::from_utf8_lossy(&sh.stderr).contains("Operation not permitted"),
        "{sh:?}"
    );
    let py = Command::new("/usr/bin/python3")
        .arg(&py_script)
        .output()
        .unwrap();
    assert!(!py.status.success());
    assert!(
        String::from_utf8_lossy(&py.stderr).contains("Operation not permitted"),
        "{py:?}"
    );
    for mk in [&marker, &sh_marker, &py_marker] {
        assert!(!mk.exists(), "{} ran", mk.display());
    }
    assert!(Command::new("sh")
        .arg(&allowed_script)
        .status()
        .unwrap()
        .success());
    let e = agent.wait_event("script_denied", |e| {
        e["kind"] == "script_denied" && e["file"]["path"] == cli.to_string_lossy().as_ref()
    });
    assert_eq!(e["sensor"], "script_guard");
    assert_eq!(e["rule"]["selector"], "script");
}

#[test]
fn an_exec_storm_denies_every_banned_exec_without_hanging_and_counters_add_up() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let ok = m.join("storm-ok");
    unique_copy("/bin/true", &ok);
    let bad = m.join("storm-bad");
    let digest = unique_copy("/bin/true", &bad);
    let policy = hash_policy("storm", "block", &digest);
    let mut agent = Agent::start(&policy, &marks(m));
    let before = agent.status()["counters"].clone();
    // A shell loop: thousands of fork+execs, every tenth one banned.
    let script = format!(
        "ok=0; denied=0; other=0; i=0\nwhile [ $i -lt 3000 ]; do\n  if [ $((i % 10)) -eq 0 ]; then\n    if '{bad}' 2>/dev/null; then other=$((other+1)); else denied=$((denied+1)); fi\n  else\n    if '{ok}'; then ok=$((ok+1)); else other=$((other+1)); fi\n  fi\n  i=$((i+1))\ndone\necho \"$ok $denied $other\"\n",
        bad = bad.display(),
        ok = ok.display()
    );
    let out = Command::new("timeout")
        .args(["240", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "storm did not finish: {out:?}");
    let counts: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(counts, vec![2700, 300, 0], "ok, denied, other");
    let after = agent.status()["counters"].clone();
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(delta("denied"), 300, "{after:#}");
    assert_eq!(delta("execs_seen"), 3000, "{after:#}");
    assert_eq!(
        delta("cache_hits") + delta("cache_misses") + delta("queue_drops"),
        3000,
        "{after:#}"
    );
    assert_eq!(delta("deadline_expirations"), 0, "{after:#}");
    agent.stop();
    assert_eq!(
        events_of(&agent.events(), "exec_denied", &bad).len() as u64
            + after["event_drops"].as_u64().unwrap(),
        300
    );
}

#[test]
fn the_agent_protects_its_own_binary_whatever_the_policy_says() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    // Run the agent from a copy on the marked tmpfs, with a policy that bans that very file. The
    // copy is unique, so that this agent's proc connector never matches another test's interdict.
    let own = m.join("interdict-copy");
    let digest = unique_copy(env!("CARGO_BIN_EXE_interdict"), &own);
    let agent = Agent::with(Setup {
        policy: &hash_policy("self", "block", &digest),
        exec: &marks(m),
        binary: Some(&own),
        ..Setup::default()
    });
    // At start-up it said that the policy asks for something it refuses to do.
    let protected = agent.wait_event("the protected warning", |e| {
        e["outcome"] == "protected" && e["rule"]["id"] == "self"
    });
    assert_eq!(protected["file"]["path"], own.to_string_lossy().as_ref());
    // Another exec of the agent's own binary, on the marked filesystem, is allowed: the guard
    // answers it (execs_seen grows) and does not deny it.
    let seen = agent.status()["counters"]["execs_seen"].as_u64().unwrap();
    let out = Command::new(&own)
        .arg("--version")
        .output()
        .expect("the agent's own binary must not be denied");
    assert!(out.status.success(), "{out:?}");
    let st = agent.status();
    assert!(
        st["counters"]["execs_seen"].as_u64().unwrap() > seen,
        "{st:#}"
    );
    assert_eq!(st["counters"]["denied"], 0, "{st:#}");
    assert!(
        !agent.dir.path().join("state").join("learned.json").exists()
            || !std::fs::read_to_string(agent.dir.path().join("state/learned.json"))
                .unwrap()
                .contains(&digest),
        "the agent's own digest must never be learned"
    );
}

#[test]
fn sighup_reloads_the_policy() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let tool = m.join("hup-tool");
    let digest = unique_copy("/bin/true", &tool);
    // The policy file is a symlink into another folder, so that the file watcher does not see
    // the edit: only SIGHUP can bring it in.
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("real-policy.toml");
    std::fs::write(&target, hash_policy("hup", "report", &digest)).unwrap();
    let link_dir = tempfile::tempdir().unwrap();
    let link = link_dir.path().join("policy.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let agent = Agent::with(Setup {
        exec: &marks(m),
        policy_file: Some(&link),
        ..Setup::default()
    });
    assert!(exec(&tool, &[]).unwrap().success());
    std::fs::write(&target, hash_policy("hup", "block", &digest)).unwrap();
    // The agent runs under `timeout`; signal the agent itself.
    let agent_pid = agent.status()["pid"].as_u64().unwrap() as i32;
    signal(agent_pid as u32, rustix::process::Signal::HUP);
    agent.wait_event("policy_applied on SIGHUP", |e| {
        e["kind"] == "policy_applied" && e["message"].as_str().unwrap_or("").contains("SIGHUP")
    });
    assert_denied(&tool);
}

#[test]
fn status_is_root_only_and_the_agent_runs_degraded_without_root() {
    let agent = Agent::start_as(
        &format!(
            "{POLICY_HEAD}{}",
            rule("x", "report", "paths = [\"/nonexistent/for-this-test\"]")
        ),
        "poll_interval_ms = 500",
        Some("nobody"),
    );
    let s = agent.status();
    let state = |n: &str| {
        s["sensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .unwrap_or_else(|| panic!("{s:#}"))["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state("fanotify"), "failed");
    assert_eq!(state("poll"), "running");
    assert!(
        agent.stderr().contains("WITHOUT ROOT"),
        "{}",
        agent.stderr()
    );
    // The socket is 0600 and owned by the agent's user (no [collector]: no exception can be
    // asked for); another unprivileged user is refused.
    let out = Command::new("setpriv")
        .args([
            "--reuid=daemon",
            "--regid=daemon",
            "--clear-groups",
            env!("CARGO_BIN_EXE_interdict"),
            "status",
            "--socket",
        ])
        .arg(agent.socket())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the agent"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn an_invalid_config_is_refused_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("agent.toml");
    std::fs::write(&c, "[exec]\nfail_mode = \"maybe\"\ndeadline = 5\n").unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        format!("{POLICY_HEAD}{}", rule("x", "report", "names = [\"x\"]")),
    )
    .unwrap();
    let r = run(interdict()
        .arg("agent")
        .arg("--policy")
        .arg(&p)
        .arg("--config")
        .arg(&c));
    r.expect_code(2);
    assert!(
        r.stderr.contains("agent.toml:2:13: error[bad-value]"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("agent.toml:3:1: error[unknown-key]: unknown key `deadline` in [exec]"),
        "{}",
        r.stderr
    );
}

/// A banned binary big enough that hashing it takes longer than the deadline.
fn big_banned(dir: &Path) -> (PathBuf, String) {
    let big = dir.join("big-banned");
    let mut bytes = std::fs::read("/bin/sleep").unwrap();
    bytes.extend_from_slice(&rand_tail());
    bytes.resize(bytes.len() + (400 << 20), 0);
    bytes.extend_from_slice(&rand_tail());
    write(&big, &bytes, 0o755);
    let digest = sha256sum(&big);
    (big, digest)
}

#[test]
fn a_late_decision_fails_open_then_kills_what_it_let_start() {
    let mnt = TmpMount::new();
    let (big, digest) = big_banned(mnt.path());
    let marker = mnt.path().join("finished");
    let policy = hash_policy("late", "block", &digest);
    // The proc connector is off: the kill must come from the guard's own late decision.
    let agent = Agent::start(
        &policy,
        &format!(
            "mounts = [\"{}\"]\ndeadline_ms = 10\nfail_mode = \"open\"\nproc_connector = false",
            mnt.path().display()
        ),
    );
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' 60 && touch '{}'",
            big.display(),
            marker.display()
        ))
        .status()
        .unwrap();
    assert!(!st.success());
    assert!(
        !marker.exists(),
        "the late-judged program finished its work"
    );
    let e = agent.wait_event("late kill", |e| {
        e["kind"] == "process_killed" && e["rule"]["id"] == "late"
    });
    assert_eq!(e["outcome"], "killed");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("missed its deadline"),
        "{e:#}"
    );
    assert!(
        agent.status()["counters"]["deadline_expirations"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[test]
fn a_late_decision_fails_closed_when_configured() {
    let mnt = TmpMount::new();
    let (big, digest) = big_banned(mnt.path());
    let unbanned = mnt.path().join("big-but-allowed");
    std::fs::copy(&big, &unbanned).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&unbanned)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
        .unwrap();
    let policy = hash_policy("late", "block", &digest);
    let agent = Agent::start(
        &policy,
        &format!(
            "mounts = [\"{}\"]\ndeadline_ms = 10\nfail_mode = \"closed\"",
            mnt.path().display()
        ),
    );
    // Even an allowed program is denied while its first decision is late...
    assert_denied(&unbanned);
    // ...and once decided (and cached) it runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match exec(&unbanned, &["0"]) {
            Ok(st) => {
                assert!(st.success());
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("never allowed: {e}"),
        }
    }
    assert!(
        agent.status()["counters"]["deadline_expirations"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[test]
fn every_exec_of_a_reported_or_killed_tool_is_handled_not_only_the_first() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let reported = m.join("reported-tool");
    let dr = unique_copy("/bin/true", &reported);
    let killed = m.join("killed-tool");
    let dk = unique_copy("/bin/sleep", &killed);
    let policy = format!(
        "{POLICY_HEAD}{}{}",
        rule("reported", "report", &format!("sha256 = [\"{dr}\"]")),
        rule("killed", "kill", &format!("sha256 = [\"{dk}\"]")),
    );
    let mut agent = Agent::start(&policy, &marks(m));
    for _ in 0..3 {
        assert!(exec(&reported, &[]).unwrap().success());
        let st = exec(&killed, &["60"]).unwrap();
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "every exec of a kill-rule tool is killed"
        );
    }
    agent.stop();
    let events = agent.events();
    let n = |kind: &str, rule: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == kind && e["rule"]["id"] == rule)
            .count()
    };
    assert_eq!(n("exec_reported", "reported"), 3, "{events:#?}");
    assert_eq!(n("process_killed", "killed"), 3, "{events:#?}");
}

#[test]
fn a_banned_install_is_reported_once_per_package_and_its_removal_too() {
    let pkg = format!("@interdict-test/banned-agent-{}", std::process::id());
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule(
            "agent-pkg",
            "report",
            &format!("packages = [\"npm:{pkg}\"]")
        )
    );
    // This test is about install watching: the exec sensors stay off (and mark nothing).
    let agent = Agent::start(&policy, "fanotify = false\nproc_connector = false");
    let root = agent.dir.path().join("installs");
    let status = agent.status();
    let watch = status["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "install_watch")
        .unwrap()
        .clone();
    assert_eq!(watch["state"], "running", "{watch:#}");
    // An npm-like install: many files, the manifest among them.
    let dir = root.join("lib/node_modules").join(&pkg);
    for i in 0..300 {
        write(&dir.join(format!("dist/chunk-{i}.js")), b"//", 0o644);
    }
    write(
        &dir.join("package.json"),
        format!("{{\"name\": \"{pkg}\", \"version\": \"1.0.0\"}}").as_bytes(),
        0o644,
    );
    let e = agent.wait_event("installed_detected", |e| e["kind"] == "installed_detected");
    assert_eq!(e["rule"]["id"], "agent-pkg");
    assert_eq!(e["rule"]["selector"], "package");
    assert_eq!(e["file"]["path"], dir.to_string_lossy().as_ref());
    assert_eq!(e["message"], format!("package npm:{pkg} 1.0.0"));
    assert_eq!(e["process"]["user"], "root");
    // Everything the install wrote has been looked at once a full rescan has run.
    agent.settle_installs();
    let detected = agent
        .events()
        .iter()
        .filter(|e| e["kind"] == "installed_detected")
        .count();
    assert_eq!(
        detected,
        1,
        "one event per package, however many files:\n{:#?}",
        agent.events()
    );

    std::fs::remove_dir_all(root.join("lib/node_modules")).unwrap();
    let e = agent.wait_event("installed_removed", |e| e["kind"] == "installed_removed");
    assert_eq!(e["file"]["path"], dir.to_string_lossy().as_ref());
    assert!(
        agent.status()["counters"]["installs_detected"]
            .as_u64()
            .unwrap()
            == 1
    );
}

#[test]
fn a_banned_file_installed_on_another_filesystem_is_quarantined_and_restored_exactly() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let elsewhere = tempfile::tempdir().unwrap();
    let sample = elsewhere.path().join("sample");
    let digest = unique_copy("/bin/true", &sample);
    let policy = hash_policy("quarantined", "quarantine", &digest);
    // The install root is a tmpfs; the state folder (and the store) is on the disk: the move is
    // a copy, fsync, rename and unlink.
    let mut agent = Agent::start(
        &policy,
        &format!("fanotify = false\nproc_connector = false\n\n[install]\nroots = [\"{}\"]\ndebounce_ms = 200", m.display()),
    );
    let installed = m.join("home/ann/.local/bin/innocent-name");
    write(&installed, &std::fs::read(&sample).unwrap(), 0o750);
    std::os::unix::fs::chown(&installed, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&installed, std::fs::Permissions::from_mode(0o750)).unwrap();
    let e = agent.wait_event("installed_quarantined", |e| {
        e["kind"] == "installed_quarantined"
    });
    assert_eq!(e["outcome"], "quarantined", "{e:#}");
    assert_eq!(e["file"]["path"], installed.to_string_lossy().as_ref());
    assert_eq!(e["file"]["sha256"], digest);
    assert!(!installed.exists(), "nothing is left behind");
    let detected = agent.wait_event("installed_detected", |e| e["kind"] == "installed_detected");
    assert_eq!(detected["rule"]["selector"], "sha256");

    let state = agent.dir.path().join("state");
    let r = run(interdict()
        .args(["quarantine", "list", "--format", "json", "--state-dir"])
        .arg(&state));
    r.expect_code(0);
    let entries = r.json();
    let entry = entries
        .as_array()
        .unwrap()
        .first()
        .unwrap_or_else(|| panic!("{entries:#}"))
        .clone();
    assert_eq!(entry["original_path"], installed.to_string_lossy().as_ref());
    assert_eq!(
        (entry["uid"].as_u64(), entry["mode"].as_u64()),
        (Some(65534), Some(0o750))
    );
    // The store is root-only and holds nothing executable.
    let store = state.join("quarantine");
    assert_eq!(
        std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in std::fs::read_dir(&store).unwrap() {
        assert_eq!(
            f.unwrap().metadata().unwrap().permissions().mode() & 0o111,
            0
        );
    }

    agent.stop(); // stop watching before putting it back (the state folder stays)
    let id = entry["id"].as_str().unwrap();
    let r = run(interdict()
        .args(["quarantine", "restore", id, "--state-dir"])
        .arg(&state));
    r.expect_code(0);
    let meta = std::fs::metadata(&installed).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (65534, 65534, 0o750)
    );
    assert_eq!(sha256sum(&installed), digest);
    let r = run(interdict()
        .args(["quarantine", "list", "--state-dir"])
        .arg(&state));
    r.expect_stdout("0 quarantined file(s)");
}

#[test]
fn the_hash_cache_survives_a_restart_and_a_corrupt_one_is_rebuilt() {
    let mut files = Vec::new();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for i in 0..20 {
        let p = root.join(format!("bin/tool-{i}"));
        unique_copy("/bin/true", &p);
        files.push(p);
    }
    // With a family rule too: what its search found is remembered with each digest, so a
    // restart reads nothing again for it either.
    let policy = format!(
        "{}{}",
        hash_policy("cache", "report", &"0".repeat(64)),
        crate::support::agent::rule(
            "family",
            "report",
            "contains_all = ['no such signature in /bin/true']\ncontains_in = [\"elf\"]"
        )
    );
    let mut agent = Agent::start(
        &policy,
        &format!(
            "fanotify = false\nproc_connector = false\n\n[install]\nroots = [\"{}\"]",
            root.display()
        ),
    );
    // After a restart: the quick rescan over the walk state, then the full one that follows.
    let wait_rescan = |a: &Agent, n: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c = a.status()["counters"].clone();
            if c["install_rescans"].as_u64().unwrap() >= n {
                return c;
            }
            assert!(Instant::now() < deadline, "no rescan: {c:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let cold = wait_rescan(&agent, 1);
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(
        cold["install_hashed_bytes"].as_u64().unwrap() >= bytes,
        "{cold:#}"
    );
    assert_eq!(cold["hash_cache_rejected"], 0);

    // A restart hashes nothing that did not change, in either rescan.
    agent.restart();
    let warm = wait_rescan(&agent, 2);
    assert_eq!(warm["install_quick_rescans"], 1, "{warm:#}");
    assert_eq!(warm["install_hashed_bytes"], 0, "{warm:#}");
    assert_eq!(warm["hash_cache_rejected"], 0);

    // A damaged cache is detected, not trusted, and rebuilt.
    agent.stop();
    let cache = agent.dir.path().join("state/hashcache.bin");
    let mut b = std::fs::read(&cache).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&cache, &b).unwrap();
    agent.restart();
    let rebuilt = wait_rescan(&agent, 2);
    assert_eq!(rebuilt["hash_cache_rejected"], 1, "{rebuilt:#}");
    assert!(
        rebuilt["install_hashed_bytes"].as_u64().unwrap() >= bytes,
        "{rebuilt:#}"
    );
}

#[test]
fn a_hash_learned_from_a_path_match_catches_a_renamed_copy_everywhere() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule(
            "learner",
            "block",
            &format!("paths = [\"{}/app/versions/*\"]", m.display())
        )
    );
    let agent = Agent::start(
        &policy,
        &format!(
            "{}\n\n[install]\nroots = [\"{}\"]\ndebounce_ms = 200",
            marks(m),
            m.display()
        ),
    );
    let original = m.join("app/versions/2.1.0");
    let bytes = unique_bytes("/bin/true");
    write(&original, &bytes, 0o755);
    let digest = sha256sum(&original);
    let e = agent.wait_event("detected by path", |e| {
        e["kind"] == "installed_detected" && e["rule"]["selector"] == "path"
    });
    assert_eq!(e["file"]["path"], original.to_string_lossy().as_ref());
    // The digest is learned: a renamed copy elsewhere is refused by hash.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.status()["counters"]["hashes_learned"]
        .as_u64()
        .unwrap()
        < 1
    {
        assert!(Instant::now() < deadline, "nothing learned");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Reading the banned file is refused now (so is copying it); a copy made from elsewhere is
    // refused by hash.
    let read = std::fs::read(&original).map(|_| ()).unwrap_err();
    assert_eq!(read.raw_os_error(), Some(libc::EPERM), "{read}");
    let renamed = m.join("downloads/innocent");
    write(&renamed, &bytes, 0o755);
    assert_denied(&renamed);
    let state = agent.dir.path().join("state");
    let r = run(interdict()
        .args(["hashes", "list", "--format", "json", "--state-dir"])
        .arg(&state));
    r.expect_code(0);
    let learned = r.json();
    assert_eq!(learned["entries"][0]["sha256"], digest, "{learned:#}");
    assert_eq!(learned["entries"][0]["rule_id"], "learner");
    // The one-shot scan uses the learned hashes too.
    let p = agent.dir.path().join("policy.toml");
    let r = run(interdict()
        .args(["scan", "--no-processes", "--format", "json", "--policy"])
        .arg(&p)
        .arg("--state-dir")
        .arg(&state)
        .arg("--root")
        .arg(m.join("downloads")));
    r.expect_code(1);
    let v = violation_at(&r.json(), &renamed);
    assert_eq!(v["selector"], "sha256");
    assert_eq!(v["rule_id"], "learner");
}

#[test]
fn a_banned_script_installed_after_start_up_is_guarded_at_once() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let empty = tempfile::tempdir().unwrap();
    let pkg = test_package();
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule(
            "late-script",
            "block",
            &format!("scripts = [\"**/node_modules/{pkg}/cli.js\"]")
        )
    );
    // The start-up script search finds nothing; the script arrives later, by install.
    let agent = Agent::start(
        &policy,
        &format!(
            "{}\nscript_roots = [\"{}\"]\nproc_connector = false\n\n[install]\nroots = [\"{}\"]\ndebounce_ms = 200",
            marks(m),
            empty.path().display(),
            m.display()
        ),
    );
    let cli = m.join(format!("lib/node_modules/{pkg}/cli.js"));
    let marker = m.join("ran");
    node_marker_script(&cli, &marker);
    // The event is the sign that the script is guarded: the guard marks it before reporting.
    agent.wait_event("installed_detected", |e| {
        e["kind"] == "installed_detected" && e["rule"]["selector"] == "script"
    });
    let out = Command::new("node").arg(&cli).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("EPERM"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!marker.exists());
    assert_eq!(
        agent.status()["counters"]["script_mark_failures"],
        0,
        "{}",
        agent.stderr()
    );
}

#[test]
fn issue_4_a_path_rule_firing_at_exec_learns_the_hash_and_a_renamed_copy_is_denied() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let banned = m.join("opt/claude/bin/claude");
    let digest = unique_copy("/bin/true", &banned);
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule(
            "by-path",
            "block",
            &format!("paths = [\"{}/opt/claude/bin/*\"]", m.display())
        )
    );
    let mut agent = Agent::start(&policy, &marks(m));
    // A renamed copy is not banned yet: its path matches nothing.
    let copy = m.join("home/dev/notes-helper");
    write(&copy, &std::fs::read(&banned).unwrap(), 0o755);
    assert!(exec(&copy, &[]).unwrap().success());
    // The path rule fires: the agent learns the file's digest (off the answering path) ...
    assert_denied(&banned);
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.status()["counters"]["hashes_learned"].as_u64() < Some(1) {
        assert!(
            Instant::now() < deadline,
            "nothing learned: {}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ... and from then on a copy under any name is denied by hash, here and after a restart.
    let e = {
        assert_denied(&copy);
        agent.wait_event("the copy denied", |e| {
            e["kind"] == "exec_denied" && e["file"]["path"] == copy.to_string_lossy().as_ref()
        })
    };
    assert_eq!(e["rule"]["id"], "by-path");
    assert_eq!(e["rule"]["selector"], "sha256");
    assert_eq!(e["file"]["sha256"], digest.as_str());
    agent.restart();
    assert_denied(&copy);
    let r = run(interdict()
        .args(["hashes", "list", "--format", "json", "--state-dir"])
        .arg(agent.dir.path().join("state")));
    r.expect_code(0);
    r.expect_stdout(&digest);
}

/// The learned hashes in an agent's state folder, through `interdict hashes list`.
fn learned(agent: &Agent) -> Vec<serde_json::Value> {
    let r = run(interdict()
        .args(["hashes", "list", "--format", "json", "--state-dir"])
        .arg(agent.dir.path().join("state")));
    r.expect_code(0);
    r.json()["entries"].as_array().cloned().unwrap_or_default()
}

#[test]
fn issue_10_a_copy_of_a_system_program_at_a_banned_path_is_denied_but_never_learned() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    // The walkthrough's mistake, and an employee's trick: a system program copied to a banned
    // path. The path rule denies it there; its digest must not become a ban on the original.
    let copy = m.join("banned/claude");
    write(&copy, &std::fs::read("/bin/true").unwrap(), 0o755);
    // A small file (below the default learn_min_size) and an ordinary banned binary.
    let stub = m.join("banned/stub");
    write(&stub, b"#!/bin/sh\nexit 0\n", 0o755);
    let real = m.join("banned/real-tool");
    let real_bytes = unique_bytes("/bin/true");
    write(&real, &real_bytes, 0o755);
    let real_digest = sha256sum(&real);
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule(
            "by-path",
            "block",
            &format!("paths = [\"{}/banned/*\"]", m.display())
        )
    );
    let agent = Agent::start(&policy, &marks(m));
    for p in [&copy, &stub, &real] {
        assert_denied(p);
    }
    wait_until("two refusals and one learned digest", 30, || {
        let c = &agent.status()["counters"];
        c["learn_refused"].as_u64() >= Some(2) && c["hashes_learned"].as_u64() >= Some(1)
    });
    let entries = learned(&agent);
    let digests: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["sha256"].as_str())
        .collect();
    assert_eq!(
        digests,
        vec![real_digest.as_str()],
        "{entries:#?}\n{}",
        agent.stderr()
    );
    assert_eq!(entries[0]["size"], std::fs::metadata(&real).unwrap().len());
    assert_eq!(entries[0]["source"], "exec");
    // A copy of /bin/true elsewhere on the guarded filesystem still runs; a renamed copy of the
    // learned binary does not.
    let elsewhere = m.join("tools/true");
    write(&elsewhere, &std::fs::read("/bin/true").unwrap(), 0o755);
    assert!(
        exec(&elsewhere, &[]).unwrap().success(),
        "{}",
        agent.stderr()
    );
    let renamed = m.join("tools/renamed");
    write(&renamed, &real_bytes, 0o755);
    assert_denied(&renamed);
    let stderr = agent.stderr();
    assert!(stderr.contains("same content as /usr/bin/true"), "{stderr}");
    assert!(
        stderr.contains("below the rule's learn_min_size"),
        "{stderr}"
    );
    let hash_learned = agent.wait_event("hash_learned", |e| e["kind"] == "hash_learned");
    assert_eq!(hash_learned["file"]["sha256"], real_digest.as_str());
}

#[test]
fn issue_10_hashes_forget_takes_a_learned_digest_out_of_force_at_once() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let tool = m.join("banned/tool");
    let digest = unique_copy("/bin/true", &tool);
    let renamed = m.join("other/renamed");
    write(&renamed, &std::fs::read(&tool).unwrap(), 0o755);
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule(
            "by-path",
            "block",
            &format!("paths = [\"{}/banned/*\"]", m.display())
        )
    );
    let mut agent = Agent::start(&policy, &marks(m));
    assert_denied(&tool);
    wait_until("the learned digest", 30, || learned(&agent).len() == 1);
    assert_denied(&renamed);
    run(interdict()
        .args(["hashes", "forget", &digest, "--socket"])
        .arg(agent.socket()))
    .expect_code(0)
    .expect_stdout("forgot 1 learned hash(es)");
    assert!(learned(&agent).is_empty());
    assert!(exec(&renamed, &[]).unwrap().success(), "{}", agent.stderr());
    agent.wait_event("learned_hash_dropped", |e| {
        e["kind"] == "learned_hash_dropped" && e["file"]["sha256"] == digest.as_str()
    });
    // With the agent stopped, forget edits the state folder.
    assert_denied(&tool);
    wait_until("learned again", 30, || learned(&agent).len() == 1);
    agent.stop();
    run(interdict()
        .args(["hashes", "forget", "--all", "--socket"])
        .arg(agent.socket())
        .arg("--state-dir")
        .arg(agent.dir.path().join("state")))
    .expect_code(0)
    .expect_stdout("forgot 1 learned hash(es) in");
    assert!(learned(&agent).is_empty());
}

#[test]
fn issue_10_a_learned_digest_that_names_a_system_program_is_dropped_not_enforced() {
    // A learned.json left by an older version holds the digest of /usr/bin/tac (no size: the
    // start-up check cannot find its twin cheaply). When tac runs, the digest must not apply to
    // it: tac finishes its work, and the digest is dropped and reported.
    let tac = std::fs::canonicalize("/usr/bin/tac").unwrap();
    let digest = sha256sum(&tac);
    let mnt = TmpMount::new();
    let m = mnt.path();
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule(
            "old-rule",
            "block",
            &format!("paths = [\"{}/never/*\"]", m.display())
        )
    );
    let agent = Agent::start_with_learned(
        &policy,
        &marks(m),
        &serde_json::json!({ "entries": [{
            "rule_id": "old-rule", "sha256": digest, "first_seen": "2026-11-01T00:00:00.000Z",
            "path": "/home/ann/.local/share/claude/versions/2.1.332", "selector": "path"
        }]}),
    );
    // tac waits for the end of its input: alive until the proc connector has judged it (a
    // process that is gone before it is looked at is never judged).
    let mut child = Command::new(&tac)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut input, b"one\ntwo\n").unwrap();
    let e = agent.wait_event("learned_hash_dropped", |e| {
        e["kind"] == "learned_hash_dropped"
    });
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "two\none\n",
        "{out:?}\n{}",
        agent.stderr()
    );
    assert_eq!(e["file"]["sha256"], digest.as_str());
    assert!(
        e["message"].as_str().unwrap().contains("/usr/bin/tac"),
        "{e:#}"
    );
    wait_until("the digest gone from the list", 20, || {
        learned(&agent).is_empty()
    });
    assert!(
        agent.events().iter().all(|e| e["kind"] != "process_killed"),
        "nothing may be killed: {:#?}",
        agent.events()
    );
}
