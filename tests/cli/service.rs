//! The agent as a systemd service (issue 16): the `sd_notify` protocol against a socket the test
//! listens on (`NOTIFY_SOCKET`), the watchdog pinged only while the fanotify reader answers, one
//! agent per state folder, and the `agent_stopped` event of a run that was killed.
//!
//! To stall the fanotify reader for real, without any hook in the agent, the test stops that one
//! thread with ptrace (`PTRACE_SEIZE` then `PTRACE_INTERRUPT` on the `fan-reader` thread stop
//! only that thread; the rest of the agent keeps running) and lets it go with `PTRACE_DETACH`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::agent::*;
use crate::support::*;

/// The messages an agent sends to the test's notification socket.
struct NotifySocket {
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
    path: String,
    /// Every message received so far, with when.
    seen: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::Builder::new()
            .prefix("interdict-notify-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            sock,
            path: path.to_string_lossy().into_owned(),
            _dir: dir,
            seen: Vec::new(),
        }
    }

    /// The next message within `timeout`.
    fn recv(&mut self, timeout: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = vec![0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push((Instant::now(), m.clone()));
                Some(m)
            }
            Err(_) => None,
        }
    }

    /// Wait (at most `secs`) for a message satisfying `pred`; panic with every message seen.
    fn wait_for(&mut self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(m) = self.recv(deadline.saturating_duration_since(Instant::now())) {
                if pred(&m) {
                    return m;
                }
            }
        }
        panic!(
            "no sd_notify message {what} within {secs} s; seen: {:#?}",
            self.seen
        );
    }

    /// Every message that arrives within `d`.
    fn collect_for(&mut self, d: Duration) -> Vec<String> {
        let end = Instant::now() + d;
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            if let Some(m) = self.recv(left) {
                out.push(m);
            }
        }
        out
    }
}

/// The value of `KEY=` in an sd_notify message.
fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// The thread of `pid` named `name` (its `comm`).
fn thread_named(pid: u32, name: &str) -> u32 {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return t.file_name().to_string_lossy().parse().unwrap();
        }
    }
    panic!("agent {pid} has no thread named {name}");
}

/// One thread of another process stopped with ptrace; let go on drop. Must be dropped on the
/// thread that made it (ptrace belongs to the tracing thread).
struct StoppedThread(libc::pid_t);

impl StoppedThread {
    fn stop(tid: u32) -> StoppedThread {
        let tid = tid as libc::pid_t;
        // SAFETY: PTRACE_SEIZE and PTRACE_INTERRUPT take a thread id and no pointers.
        let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
        assert_eq!(
            r,
            0,
            "PTRACE_SEIZE {tid}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: as above.
        let r = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
        assert_eq!(
            r,
            0,
            "PTRACE_INTERRUPT {tid}: {}",
            std::io::Error::last_os_error()
        );
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid local.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        assert_eq!(r, tid, "waitpid {tid}: {}", std::io::Error::last_os_error());
        assert!(
            libc::WIFSTOPPED(status),
            "thread {tid} not stopped: {status:#x}"
        );
        StoppedThread(tid)
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        // SAFETY: PTRACE_DETACH takes a thread id and a signal number (0: none).
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) };
    }
}

fn banned_setup(m: &Path) -> (std::path::PathBuf, String) {
    let tool = m.join("svc-tool");
    let digest = unique_copy("/bin/true", &tool);
    (tool, hash_policy("svc", "block", &digest))
}

#[test]
fn issue_16_ready_once_the_guard_is_up_and_watchdog_pings_stop_while_the_reader_stalls() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let (tool, policy) = banned_setup(m);
    let mut notify = NotifySocket::new();
    let agent = Agent::spawn(Setup {
        policy: &policy,
        exec: &marks(m),
        env: &[
            ("NOTIFY_SOCKET", notify.path.clone()),
            ("WATCHDOG_USEC", "1000000".into()),
        ],
        ..Setup::default()
    });
    let ready = notify.wait_for("READY=1", 60, |m| field(m, "READY") == Some("1"));
    // The moment it says ready, the guard denies and the control socket answers.
    assert_denied(&tool);
    let st = agent.status();
    let state = |part: &str| {
        st["sensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == part)
            .map(|s| s["state"].as_str().unwrap().to_string())
    };
    assert_eq!(state("fanotify").as_deref(), Some("running"), "{st:#}");
    assert_eq!(
        state("proc_connector").as_deref(),
        Some("running"),
        "{st:#}"
    );
    let pid = st["pid"].as_u64().unwrap() as u32;
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(pid.to_string().as_str()),
        "{ready}"
    );
    let status = field(&ready, "STATUS").unwrap_or_default();
    assert!(
        status.contains("policy test 1 (enforce)") && status.contains("fanotify running"),
        "{ready}"
    );
    assert!(
        notify
            .seen
            .iter()
            .take_while(|(_, m)| m != &ready)
            .all(|(_, m)| field(m, "WATCHDOG").is_none()),
        "no watchdog ping before READY: {:#?}",
        notify.seen
    );

    // While the guard runs, pings come every half interval.
    notify.wait_for("a first WATCHDOG=1", 10, |m| {
        field(m, "WATCHDOG") == Some("1")
    });
    notify.wait_for("a second WATCHDOG=1", 10, |m| {
        field(m, "WATCHDOG") == Some("1")
    });

    // Stall the fanotify reader (that thread alone).
    let reader = thread_named(pid, "fan-reader");
    let stopped = StoppedThread::stop(reader);
    let said = notify.wait_for("the stall reported", 10, |m| {
        field(m, "STATUS").is_some_and(|s| s.contains("has not answered"))
    });
    assert!(said.contains("reader"), "{said}");
    // Four ping intervals without a ping, while the rest of the agent keeps working.
    let during = notify.collect_for(Duration::from_secs(2));
    assert!(
        during.iter().all(|m| field(m, "WATCHDOG").is_none()),
        "a watchdog ping was sent while the reader was stopped: {during:#?}"
    );
    assert_eq!(
        agent.status()["pid"],
        pid,
        "the control socket answers during the stall"
    );

    // Let it go: it answers again, and the pings come back.
    drop(stopped);
    let back = notify.wait_for("WATCHDOG=1 after the stall", 10, |m| {
        field(m, "WATCHDOG") == Some("1")
    });
    assert!(
        field(&back, "STATUS").is_some_and(|s| s.contains("answers again")),
        "{back}"
    );
    assert_denied(&tool);

    // SIGTERM: STOPPING=1, then the process ends.
    let mut agent = agent;
    let st = agent.stop();
    assert!(st.success(), "{st:?}\n{}", agent.stderr());
    notify.wait_for("STOPPING=1", 10, |m| field(m, "STOPPING") == Some("1"));
}

#[test]
fn issue_16_the_deadline_thread_stalling_stops_the_pings_too() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let (_tool, policy) = banned_setup(m);
    let mut notify = NotifySocket::new();
    let agent = Agent::with(Setup {
        policy: &policy,
        exec: &marks(m),
        env: &[
            ("NOTIFY_SOCKET", notify.path.clone()),
            ("WATCHDOG_USEC", "1000000".into()),
        ],
        ..Setup::default()
    });
    notify.wait_for("WATCHDOG=1", 30, |m| field(m, "WATCHDOG") == Some("1"));
    let pid = agent.status()["pid"].as_u64().unwrap() as u32;
    let stopped = StoppedThread::stop(thread_named(pid, "fan-deadline"));
    let said = notify.wait_for("the stall reported", 10, |m| {
        field(m, "STATUS").is_some_and(|s| s.contains("has not answered"))
    });
    assert!(said.contains("deadline thread"), "{said}");
    let during = notify.collect_for(Duration::from_secs(2));
    assert!(
        during.iter().all(|m| field(m, "WATCHDOG").is_none()),
        "{during:#?}"
    );
    drop(stopped);
    notify.wait_for("WATCHDOG=1 after the stall", 10, |m| {
        field(m, "WATCHDOG") == Some("1")
    });
}

#[test]
fn issue_16_without_notify_socket_nothing_is_sent_and_the_reader_does_not_wake_idly() {
    // No NOTIFY_SOCKET: the agent runs as before; a WATCHDOG_USEC alone (not meant for it)
    // changes nothing either.
    let mnt = TmpMount::new();
    let m = mnt.path();
    let (tool, policy) = banned_setup(m);
    let agent = Agent::with(Setup {
        policy: &policy,
        exec: &marks(m),
        env: &[("WATCHDOG_USEC", "1000000".into())],
        ..Setup::default()
    });
    assert_denied(&tool);
    let pid = agent.status()["pid"].as_u64().unwrap() as u32;
    // The reader sleeps in poll(2) until an event comes: its voluntary context switches do
    // not grow while nothing happens on the marked filesystem.
    let switches = |tid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let reader = thread_named(pid, "fan-reader");
    let before = switches(reader);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(switches(reader), before, "the reader woke up while idle");
}

#[test]
fn issue_16_a_second_agent_on_the_same_state_folder_refuses_to_start() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let (tool, policy) = banned_setup(m);
    let first = Agent::start(&policy, &marks(m));
    let pid = first.status()["pid"].as_u64().unwrap();
    // The same configuration: same state folder, same control socket. (Under `timeout`: an
    // agent that does not refuse would run on.)
    let second = run(std::process::Command::new("timeout")
        .arg("30")
        .arg(env!("CARGO_BIN_EXE_interdict"))
        .arg("agent")
        .arg("--policy")
        .arg(&first.policy)
        .arg("--config")
        .arg(first.dir.path().join("agent.toml")));
    second.expect_code(2);
    let want = format!(
        "interdict: error: another interdict agent (pid {pid}) already runs with the state folder {}/state; stop it first",
        first.dir.path().display()
    );
    assert!(second.stderr.contains(&want), "{}", second.stderr);
    // The first agent kept its control socket and its guard.
    assert_eq!(first.status()["pid"], pid);
    assert_denied(&tool);
}

#[test]
fn issue_16_a_killed_agent_is_reported_by_the_next_start_and_a_clean_stop_is_not() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let (_tool, policy) = banned_setup(m);
    let mut agent = Agent::start(&policy, &marks(m));
    let first_pid = agent.status()["pid"].as_u64().unwrap();
    // A clean stop, then a start: no unclean-stop report.
    agent.restart();
    let second_pid = agent.status()["pid"].as_u64().unwrap();
    let unclean = |a: &Agent| -> Vec<serde_json::Value> {
        a.events()
            .into_iter()
            .filter(|e| {
                e["kind"] == "agent_stopped"
                    && e["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("did not stop cleanly")
            })
            .collect()
    };
    assert!(unclean(&agent).is_empty(), "{:#?}", agent.events());
    let stops: Vec<_> = agent
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "agent_stopped")
        .collect();
    assert_eq!(stops.len(), 1, "{stops:#?}");
    assert!(
        stops[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("stopped by SIGTERM"),
        "{stops:#?}"
    );
    assert_ne!(first_pid, second_pid);

    // SIGKILL (nothing can be said at the time), then a start: the new run says so.
    signal(second_pid as u32, rustix::process::Signal::KILL);
    wait_until("the killed agent to exit", 20, || {
        agent.child.try_wait().unwrap().is_some()
    });
    agent.restart();
    let e = agent.wait_event("the unclean stop reported", |e| {
        e["kind"] == "agent_stopped"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("did not stop cleanly")
    });
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("the previous agent (pid {second_pid},")),
        "{msg}"
    );
    assert_eq!(unclean(&agent).len(), 1, "{:#?}", agent.events());
    // The report precedes this run's agent_started.
    let kinds: Vec<String> = agent
        .events()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    let at = kinds.iter().rposition(|k| k == "agent_started").unwrap();
    assert_eq!(kinds[at - 1], "agent_stopped", "{kinds:?}");
}

/// The `policy_applied` events in the event log file `path` (absent: none).
fn applied_in(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "policy_applied")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn issue_16_logrotate_with_the_shipped_rule_rotates_the_event_log_and_loses_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let agent = Agent::start(
        &format!(
            "{POLICY_HEAD}{}",
            rule("r", "report", "names = [\"nothing-here\"]")
        ),
        "fanotify = false\nproc_connector = false",
    );
    let d = agent.dir.path();
    // logrotate refuses a world-writable parent folder; the root agent does not need one.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = d.join("events.jsonl");
    let rule = std::fs::read_to_string(repo().join("packaging/etc/logrotate.d/interdict"))
        .unwrap()
        .replace("/var/log/interdict/events.jsonl", &log.to_string_lossy());
    assert!(rule.contains(&*log.to_string_lossy()), "{rule}");
    let conf = d.join("logrotate.conf");
    write(&conf, rule.as_bytes(), 0o644);
    let rotate = || {
        let out = std::process::Command::new("logrotate")
            .arg("--force")
            .arg("--state")
            .arg(d.join("logrotate.state"))
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "logrotate: {out:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Each reload applies an edited policy (an unchanged one is not applied again): one
    // policy_applied event each, whether the explicit reload or the file watcher applies it.
    let edits = std::cell::Cell::new(0);
    let reloads = |n: usize| {
        for _ in 0..n {
            edits.set(edits.get() + 1);
            let text = std::fs::read_to_string(&agent.policy).unwrap();
            std::fs::write(&agent.policy, format!("{text}# edit {}\n", edits.get())).unwrap();
            agent.reload().expect_code(0);
        }
    };
    let count_in = |path: &Path, n: usize| {
        wait_until(
            &format!("{n} policy_applied in {}", path.display()),
            30,
            || applied_in(path).len() >= n,
        );
        let ids = applied_in(path);
        assert_eq!(ids.len(), n, "{ids:?}");
        ids
    };
    reloads(3);
    let first = count_in(&log, 4);

    rotate();
    assert_eq!(applied_in(&d.join("events.jsonl.1")), first);
    reloads(2);
    // The agent opened the path again, with its own mode.
    let second = count_in(&log, 2);
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A second rotation compresses the first file (delaycompress) and keeps the second whole.
    rotate();
    reloads(1);
    assert_eq!(applied_in(&d.join("events.jsonl.1")), second);
    let gz = std::process::Command::new("zcat")
        .arg(d.join("events.jsonl.2.gz"))
        .output()
        .unwrap();
    assert!(gz.status.success(), "{gz:?}");
    let unzipped = d.join("unzipped.jsonl");
    std::fs::write(&unzipped, &gz.stdout).unwrap();
    assert_eq!(applied_in(&unzipped), first);
    count_in(&log, 1);
    let st = agent.status();
    assert_eq!(st["counters"]["event_write_errors"], 0, "{st:#}");
}
