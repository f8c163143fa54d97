//! Issue 12: the ways a colleague who wants the banned tool tries to get around the guard, each
//! against the real kernel. Every banned fixture is a copy of Python with a unique tail (so its
//! digest is this test's alone) that writes a marker file when it gets to run its code, the way
//! a real CLI does its work after starting up; the marker must never appear, and the event log
//! must name the rule. Tests that rely on the proc connector stopping a program while it is
//! hashed (`freeze`) use sized digests, so that their agents stop only their own fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::agent::*;
use crate::support::*;

/// A banned program at `dst`: Python with a unique tail, plus `pad_mib` MiB of padding (a large
/// binary, as the real Claude Code is). Returns its digest.
fn banned_python(dst: &Path, pad_mib: usize) -> String {
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let mut bytes = std::fs::read(python).unwrap();
    bytes.extend_from_slice(format!("\ninterdict-evasion-{}\n", std::process::id()).as_bytes());
    bytes.extend_from_slice(&rand_tail());
    // A size of its own too: agents freeze only programs whose size a banned digest has, and
    // other tests' agents run at the same time.
    bytes.resize(bytes.len() + (pad_mib << 20) + fastrand::usize(1..65536), 0);
    write(dst, &bytes, 0o755);
    sha256sum(dst)
}

/// The program's code: write `marker`.
fn marker_code(marker: &Path) -> String {
    format!("open('{}', 'w').write('ran')", marker.display())
}

/// A folder anyone may write to (the markers of programs run as the test user).
fn open_dir(parent: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn denied_events(agent: &Agent, rule: &str) -> Vec<serde_json::Value> {
    agent
        .events()
        .into_iter()
        .filter(|e| {
            (e["kind"] == "exec_denied"
                || e["kind"] == "process_killed"
                || e["kind"] == "script_denied")
                && e["rule"]["id"] == rule
        })
        .collect()
}

#[test]
fn issue_12_a_new_mount_namespace_of_an_unprivileged_user_is_still_guarded() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let tool = m.join("tools/claude");
    let digest = banned_python(&tool, 0);
    let markers = open_dir(m, "markers");
    let marker = markers.join("ran");
    let agent = Agent::start(&hash_policy("claude", "block", &digest), &marks(m));
    // `unshare -Urm` copies every mount into a new namespace; the copies are new mounts of the
    // same filesystems. The guard marks filesystems, not mounts.
    let out = as_test_user("unshare")
        .args(["-Urm", "--"])
        .arg(&tool)
        .args(["-c", &marker_code(&marker)])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{}",
        show(&out)
    );
    assert!(!marker.exists(), "the banned program ran:\n{}", show(&out));
    let e = agent.wait_event("exec_denied", |e| {
        e["kind"] == "exec_denied" && e["rule"]["id"] == "claude"
    });
    assert_eq!(e["file"]["sha256"], digest.as_str());
}

#[test]
fn issue_12_a_bind_mount_made_after_start_up_is_guarded() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let tool = m.join("tools/claude");
    let digest = banned_python(&tool, 0);
    let marker = m.join("ran");
    let agent = Agent::start(&hash_policy("claude", "block", &digest), &marks(m));
    let elsewhere = tempfile::tempdir().unwrap();
    let bind = elsewhere.path().join("bound");
    std::fs::create_dir(&bind).unwrap();
    let st = Command::new("mount")
        .arg("--bind")
        .arg(m.join("tools"))
        .arg(&bind)
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(bind.clone());
    let out = Command::new(bind.join("claude"))
        .args(["-c", &marker_code(&marker)])
        .output();
    match out {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        Ok(o) => panic!("ran through the bind mount: {}", show(&o)),
    }
    assert!(!marker.exists());
    agent.wait_event("exec_denied via the bind mount", |e| {
        e["kind"] == "exec_denied" && e["rule"]["id"] == "claude"
    });
}

#[test]
fn issue_12_the_dynamic_loader_cannot_run_a_banned_program() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    // Two copies: one the guard has never seen (the loader's first run of it), one it has
    // denied before (its opens are denied from then on).
    let fresh = m.join("tools/fresh");
    banned_python(&fresh, 0);
    let known = m.join("tools/known");
    write(&known, &std::fs::read(&fresh).unwrap(), 0o755);
    let lists = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &sized_hash_policy(lists.path(), "claude", "block", &fresh),
        &format!("{}\nfreeze = true", marks(m)),
    );
    let loader = std::fs::canonicalize("/lib64/ld-linux-x86-64.so.2").unwrap();

    // Known: denied as an exec; then the loader either cannot open it, or is stopped and
    // killed before it does.
    assert_denied(&known);
    let marker = m.join("known-ran");
    let out = Command::new(&loader)
        .arg(&known)
        .args(["-c", &marker_code(&marker)])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", show(&out));
    assert!(!marker.exists(), "{}", show(&out));
    agent.wait_event("the loader's open denied, or the loader killed", |e| {
        (e["kind"] == "script_denied" || e["kind"] == "process_killed")
            && e["rule"]["id"] == "claude"
            && e["file"]["path"] == known.to_string_lossy().as_ref()
    });

    // Fresh: the loader runs, maps the program; the proc connector judges the program the
    // loader was asked to run, stops it while hashing, and kills it.
    let marker = m.join("fresh-ran");
    let out = Command::new(&loader)
        .arg(&fresh)
        .args(["-c", &marker_code(&marker)])
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{}", show(&out));
    assert!(!marker.exists(), "{}", show(&out));
    let e = agent.wait_event("process_killed for the loader", |e| {
        e["kind"] == "process_killed" && e["file"]["path"] == fresh.to_string_lossy().as_ref()
    });
    assert_eq!(e["rule"]["id"], "claude", "{e:#}");
    assert_eq!(e["outcome"], "killed", "{e:#}");
}

#[test]
fn issue_12_a_filesystem_mounted_after_start_up_is_marked_at_once() {
    // Stands in for /dev/shm, a USB stick or a container layer: a filesystem the agent was not
    // told about, mounted after it started.
    let mnt = TmpMount::new();
    let m = mnt.path();
    let base = tempfile::Builder::new()
        .prefix("interdict-late-")
        .tempdir()
        .unwrap();
    let probe = m.join("probe");
    let digest = banned_python(&probe, 0);
    let agent = Agent::start(
        &hash_policy("claude", "block", &digest),
        &format!(
            "{}\nfollow_mounts = true\nfollow_mounts_under = [\"{}\"]",
            marks(m),
            base.path().display()
        ),
    );
    let late = TmpMount::at(base.path().join("late"));
    let tool = late.path().join("claude");
    write(&tool, &std::fs::read(&probe).unwrap(), 0o755);
    wait_until("the new filesystem marked", 20, || {
        agent.status()["sensors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| {
                s["name"] == "fanotify"
                    && s["detail"]
                        .as_str()
                        .unwrap_or("")
                        .contains(&*late.path().to_string_lossy())
            })
    });
    let marker = m.join("ran");
    match Command::new(&tool)
        .args(["-c", &marker_code(&marker)])
        .output()
    {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        Ok(o) => panic!("ran on the late filesystem: {}", show(&o)),
    }
    assert!(!marker.exists());
    agent.wait_event("exec_denied on the late filesystem", |e| {
        e["kind"] == "exec_denied" && e["rule"]["id"] == "claude"
    });
}

#[test]
fn issue_12_a_tmpfs_mounted_inside_a_user_namespace_is_frozen_killed_then_marked() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let src = m.join("src/claude");
    banned_python(&src, 0);
    let work = open_dir(m, "work");
    let lists = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &sized_hash_policy(lists.path(), "claude", "block", &src),
        &format!(
            "{}\nfollow_mounts = true\nfollow_mounts_under = [\"{}\"]\nfreeze = true",
            marks(m),
            work.display()
        ),
    );
    // The user mounts a tmpfs of their own in a new namespace (the agent's mount table never
    // shows it), copies the program there and runs it twice.
    let inner = work.join("inner");
    let code = marker_code(&work.join("ran"));
    let script = format!(
        "mkdir -p {i} && mount -t tmpfs none {i} && cp {src} {i}/c && \
         ({i}/c -c \"{code}\"; echo first=$?); ({i}/c -c \"{code}\"; echo second=$?)",
        i = inner.display(),
        src = src.display(),
    );
    let out = as_test_user("unshare")
        .args(["-Urm", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = show(&out);
    assert!(
        !work.join("ran").exists(),
        "the banned program ran:\n{text}"
    );
    // First run: on a filesystem nobody marked yet, stopped while hashed, then killed.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("first=137"),
        "{text}"
    );
    // Second run: that filesystem is marked now, so the exec itself is refused.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("second=126"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{text}"
    );
    agent.wait_event("the first run killed", |e| {
        e["kind"] == "process_killed" && e["outcome"] == "killed" && e["rule"]["id"] == "claude"
    });
    agent.wait_event("exec_denied in the namespace", |e| {
        e["kind"] == "exec_denied" && e["rule"]["id"] == "claude"
    });
}

#[test]
fn issue_12_a_large_banned_binary_on_an_unmarked_filesystem_never_gets_to_work() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let unmarked = TmpMount::new();
    let u = unmarked.path();
    // 300 MiB, like the real binary (hashing it takes long enough for a CLI to finish).
    let big = u.join("claude");
    banned_python(&big, 300);
    let lists = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &sized_hash_policy(lists.path(), "claude", "block", &big),
        &format!("{}\nfreeze = true", marks(m)),
    );
    use std::os::unix::process::ExitStatusExt;
    for (round, path) in [(1, big.clone()), (2, u.join("fresh-copy"))] {
        if round == 2 {
            // A fresh inode with the same content: the agent knows the digest, not the file.
            write(&path, &std::fs::read(&big).unwrap(), 0o755);
        }
        let marker = u.join(format!("ran-{round}"));
        let out = Command::new(&path)
            .args(["-c", &marker_code(&marker)])
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "round {round}: {}",
            show(&out)
        );
        assert!(
            !marker.exists(),
            "round {round}: the banned program got to work"
        );
    }
    wait_until("two kills", 20, || {
        denied_events(&agent, "claude")
            .iter()
            .filter(|e| e["kind"] == "process_killed" && e["outcome"] == "killed")
            .count()
            == 2
    });
    assert!(agent.status()["counters"]["frozen"].as_u64() >= Some(2));
}

#[test]
fn issue_12_a_banned_script_loaded_from_inline_code_is_refused() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let pkg = test_package();
    let cli = m.join(format!("lib/node_modules/{pkg}/cli.js"));
    let marker = m.join("node-ran");
    write(
        &cli,
        format!(
            "require('fs').writeFileSync('{}', 'ran')\n",
            marker.display()
        )
        .as_bytes(),
        0o644,
    );
    let py = m.join("lib/agent_pkg/agent.py");
    let py_marker = m.join("py-ran");
    write(
        &py,
        format!("open('{}', 'w').write('ran')\n", py_marker.display()).as_bytes(),
        0o644,
    );
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule(
            "agent-scripts",
            "block",
            &format!("scripts = [\"**/node_modules/{pkg}/cli.js\", \"**/agent_pkg/agent.py\"]")
        )
    );
    let agent = Agent::start(
        &policy,
        &format!("{}\nscript_roots = [\"{}\"]", marks(m), m.display()),
    );
    let node = Command::new("node")
        .args([
            "-e",
            &format!(
                "import('{}').catch(e => {{ console.error(e.code); process.exit(3) }})",
                cli.display()
            ),
        ])
        .output()
        .unwrap();
    let python = Command::new("python3")
        .args([
            "-c",
            &format!("import runpy; runpy.run_path('{}')", py.display()),
        ])
        .output()
        .unwrap();
    assert!(
        !marker.exists(),
        "node ran the banned script:\n{}",
        show(&node)
    );
    assert!(
        !py_marker.exists(),
        "python ran the banned script:\n{}",
        show(&python)
    );
    assert!(
        String::from_utf8_lossy(&node.stderr).contains("EPERM"),
        "{}",
        show(&node)
    );
    assert!(!python.status.success(), "{}", show(&python));
    wait_until("two script denials", 20, || {
        denied_events(&agent, "agent-scripts")
            .iter()
            .filter(|e| e["kind"] == "script_denied")
            .count()
            >= 2
    });
}
