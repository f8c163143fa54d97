//! Every bounded buffer of the agent, full (issue 10): the guard's decision queue (answered at
//! once per `fail_mode`), the event queue (`event_drops`), the notice queue (`notices_dropped`),
//! and the proc connector's netlink socket (an overflow makes it sweep every process). Each is
//! filled for real: a worker busy hashing, an event log nobody reads, a session bus that never
//! answers, a receive buffer shrunk under a stopped agent.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::agent::*;
use crate::support::*;

/// A copy of /bin/true made 1 TiB long with a hole: it runs as /bin/true does, costs nothing on
/// a tmpfs, and takes a worker many minutes to hash.
fn huge(path: &Path) {
    unique_copy("/bin/true", path);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
}

/// The `/proc` folder of the thread of process `pid` named `name`.
fn thread_named(pid: u32, name: &str) -> PathBuf {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| t.path())
        .find(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == name))
        .unwrap_or_else(|| panic!("no thread {name} in process {pid}"))
}

/// Bytes a thread has read (`rchar` in its `io` file).
fn bytes_read(thread: &Path) -> u64 {
    std::fs::read_to_string(thread.join("io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// `(cache_misses, queue_drops)`.
fn misses_and_drops(agent: &Agent) -> (u64, u64) {
    let c = agent.status()["counters"].clone();
    (
        c["cache_misses"].as_u64().unwrap(),
        c["queue_drops"].as_u64().unwrap(),
    )
}

#[test]
fn issue_10_a_full_decision_queue_is_answered_at_once_per_fail_mode() {
    for fail_mode in ["open", "closed"] {
        let mnt = TmpMount::new();
        let m = mnt.path();
        let banned = m.join("banned");
        let digest = unique_copy("/bin/true", &banned);
        let seen_before = m.join("banned-seen-before");
        write(&seen_before, &std::fs::read(&banned).unwrap(), 0o755);
        let ok = m.join("allowed");
        unique_copy("/bin/true", &ok);
        // One worker, a queue of one, a deadline far away: only a full queue answers early. The
        // proc connector is off: what the guard lets through stays running.
        let mut agent = Agent::start(
            &hash_policy("queued", "block", &digest),
            &format!(
                "{}\nworkers = 1\nqueue = 1\ndeadline_ms = 60000\nfail_mode = \"{fail_mode}\"\nproc_connector = false",
                marks(m)
            ),
        );
        // A deny decided (and cached) before the queue fills.
        assert_denied(&seen_before);
        agent.wait_event("the first denial", |e| e["kind"] == "exec_denied");
        // Fill it: the worker busy hashing one huge file (seen by what it reads), then the
        // queue holding another.
        let worker = thread_named(agent.pid(), "fan-worker-0");
        let mut held = Vec::new();
        for i in 0..2 {
            let h = m.join(format!("huge-{i}"));
            huge(&h);
            let (misses, _) = misses_and_drops(&agent);
            let read = bytes_read(&worker);
            // Through a shell of its own: when this process spawned the held exec directly (a
            // vfork-style spawn that shares its memory until the exec completes), its next
            // spawns stalled until the guard answered.
            held.push(
                Command::new("sh")
                    .args(["-c", "exec \"$0\""])
                    .arg(&h)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            wait_until("the guard to take the exec", 30, || {
                misses_and_drops(&agent).0 > misses
            });
            if i == 0 {
                wait_until("the worker to hash the huge file", 30, || {
                    bytes_read(&worker) > read + (64 << 20)
                });
            }
        }
        let (_, drops_before) = misses_and_drops(&agent);
        let denied_before = agent.counter("denied");
        let drops_events_before = agent.counter("event_drops");
        // Now every miss is answered at once, per fail_mode: an allowed program, and a banned
        // one the guard has not judged yet.
        let ran_ok = exec(&ok, &[]);
        let ran_banned = exec(&banned, &[]);
        match fail_mode {
            "open" => {
                assert!(ran_ok.unwrap().success(), "{}", agent.stderr());
                assert!(ran_banned.unwrap().success(), "fail open lets it run");
            }
            _ => {
                for r in [ran_ok, ran_banned] {
                    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EPERM));
                }
            }
        }
        let c = agent.status()["counters"].clone();
        assert_eq!(drops_before, 0, "{c:#}");
        assert_eq!(c["queue_drops"].as_u64().unwrap(), 2, "{c:#}");
        let denied = c["denied"].as_u64().unwrap() - denied_before;
        assert_eq!(denied, if fail_mode == "open" { 0 } else { 2 }, "{c:#}");
        // Answered at once by the full queue, not by the deadline.
        assert_eq!(c["deadline_expirations"], 0, "{c:#}");
        // A cached deny needs no worker: still denied at once, and its event, which a worker
        // would have built, is counted as dropped rather than lost without a trace.
        assert_denied(&seen_before);
        agent.wait_counter("event_drops", drops_events_before + 1);
        // The held execs never run: other tests' agents, whose proc connectors judge every
        // exec on the machine, would hash a terabyte each. (A process waiting for a
        // permission answer can be killed.)
        for mut h in held {
            let _ = h.kill();
            let st = h.wait().unwrap();
            assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
        }
        assert_eq!(agent.stop().code(), Some(0), "{}", agent.stderr());
    }
}

#[test]
fn issue_10_a_stalled_event_writer_drops_and_counts_events_and_never_holds_up_the_guard() {
    let mnt = TmpMount::new();
    let banned = mnt.path().join("banned");
    let digest = unique_copy("/bin/true", &banned);
    // The event log is a FIFO that nobody reads (a disk that stopped answering): its writer
    // blocks once the pipe and its own buffer are full, and the queue of one event behind it
    // fills at once.
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("events.jsonl");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap()
    };
    rustix::pipe::fcntl_setpipe_size(&reader, 4096).unwrap();
    let mut agent = Agent::with(Setup {
        policy: &hash_policy("stalled", "block", &digest),
        exec: &marks(mnt.path()),
        agent: "event_queue = 1",
        event_log: Some(&fifo),
        ..Setup::default()
    });
    let c0 = agent.status()["counters"].clone();
    let n = 100;
    for _ in 0..n {
        assert_denied(&banned);
    }
    let c = agent.status()["counters"].clone();
    assert_eq!(
        c["denied"], n,
        "every exec is answered while the log is stuck: {c:#}"
    );
    // Every denial's event is either written or dropped and counted; while the writer is
    // stuck, at most two are on their way (one in its hands, one in the queue).
    let accounted = |c: &serde_json::Value| {
        c["events_written"].as_u64().unwrap() + c["event_drops"].as_u64().unwrap()
    };
    let want = accounted(&c0) + n;
    wait_until(
        "every event written, counted as dropped or on its way",
        30,
        || accounted(&agent.status()["counters"]) + 2 >= want,
    );
    let c = agent.status()["counters"].clone();
    assert!(
        c["event_drops"].as_u64().unwrap() > c0["event_drops"].as_u64().unwrap(),
        "{c:#}"
    );
    // Read the log now: the writer catches up, and what it wrote is whole.
    rustix::fs::fcntl_setfl(&reader, rustix::fs::OFlags::empty()).unwrap();
    let drain = std::thread::spawn(move || {
        let mut text = String::new();
        let mut reader = reader;
        reader.read_to_string(&mut text).unwrap();
        text
    });
    wait_until("every event written or counted as dropped", 30, || {
        accounted(&agent.status()["counters"]) >= want
    });
    let c = agent.status()["counters"].clone();
    assert_eq!(
        accounted(&c),
        want,
        "nothing else happened meanwhile: {c:#}"
    );
    let dropped = c["event_drops"].as_u64().unwrap() - c0["event_drops"].as_u64().unwrap();
    let written = c["events_written"].as_u64().unwrap() - c0["events_written"].as_u64().unwrap();
    assert_eq!(agent.stop().code(), Some(0), "{}", agent.stderr());
    let text = drain.join().unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l}: {e}")))
        .collect();
    let denials = events.iter().filter(|e| e["kind"] == "exec_denied").count() as u64;
    assert_eq!(denials, written, "{c:#}");
    assert_eq!(denials + dropped, n);
}

#[test]
fn issue_10_a_full_notice_queue_drops_and_counts_notices_and_never_holds_up_the_guard() {
    // A user whose session bus accepts connections and never answers: the notifier waits out
    // its delivery timeout on the first notice while the queue of one fills behind it.
    let uid = 3_100_000 + std::process::id() % 100_000;
    let run_dir = PathBuf::from(format!("/run/user/{uid}"));
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    std::fs::create_dir_all(&run_dir).unwrap();
    let _cleanup = Cleanup(run_dir.clone());
    std::os::unix::fs::chown(&run_dir, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let bus = run_dir.join("bus");
    let _listener = std::os::unix::net::UnixListener::bind(&bus).unwrap();
    std::os::unix::fs::chown(&bus, Some(uid), Some(uid)).unwrap();

    let mnt = TmpMount::new();
    let banned = mnt.path().join("banned");
    let digest = unique_copy("/bin/true", &banned);
    let agent = Agent::start(
        &hash_policy("noisy", "block", &digest),
        &format!(
            "{}\n\n[notify]\nqueue = 1\nterminal = false\ninterval_s = 3600",
            marks(mnt.path())
        ),
    );
    // Twenty at once, as that user.
    let n = 20u64;
    let runs: Vec<_> = (0..n)
        .map(|_| {
            Command::new("setpriv")
                .args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                ])
                .arg(&banned)
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut r in runs {
        assert!(!r.wait().unwrap().success(), "the banned program ran");
    }
    let c = agent.status()["counters"].clone();
    assert_eq!(c["denied"], n, "{c:#}");
    // Every notice is dropped at the queue, or taken: then shown, suppressed (the same user and
    // rule within interval_s) or failed.
    let handled = |c: &serde_json::Value| {
        [
            "notices_dropped",
            "notices_sent",
            "notices_suppressed",
            "notices_failed",
        ]
        .iter()
        .map(|k| c[k].as_u64().unwrap())
        .sum::<u64>()
    };
    wait_until("every notice accounted for", 60, || {
        handled(&agent.status()["counters"]) >= n
    });
    let c = agent.status()["counters"].clone();
    assert_eq!(handled(&c), n, "{c:#}");
    assert!(c["notices_dropped"].as_u64().unwrap() >= 1, "{c:#}");
    assert_eq!(c["notices_failed"], 1, "the unanswering bus: {c:#}");
    assert_eq!(c["notices_sent"], 0, "{c:#}");
}

/// The descriptor number and inode of the agent's proc connector socket: among its open
/// descriptors, the socket `/proc/net/netlink` lists under protocol 11 (NETLINK_CONNECTOR).
fn connector_socket(pid: u32) -> (i32, u64) {
    let table = std::fs::read_to_string("/proc/net/netlink").unwrap();
    let inodes: Vec<u64> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 10 && f[1] == "11")
        .map(|f| f[9].parse().unwrap())
        .collect();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(link) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        if let Some(ino) = link
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|i| i.parse::<u64>().ok())
        {
            if inodes.contains(&ino) {
                return (fd.file_name().to_str().unwrap().parse().unwrap(), ino);
            }
        }
    }
    panic!("agent {pid} has no proc connector socket:\n{table}");
}

/// Messages the kernel dropped for a netlink socket (`Drops` in `/proc/net/netlink`).
fn netlink_drops(inode: u64) -> u64 {
    std::fs::read_to_string("/proc/net/netlink")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 10 && f[9] == inode.to_string())
        .map(|f| f[8].parse().unwrap())
        .unwrap()
}

#[test]
fn issue_10_a_netlink_overflow_makes_the_proc_connector_sweep_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let banned = dir.path().join("overflow-banned");
    let digest = unique_copy("/bin/sleep", &banned);
    // The proc connector alone (no exec guard, no polling): what it misses, only a sweep finds.
    let agent = Agent::start(
        &hash_policy("overflow", "kill", &digest),
        "fanotify = false",
    );
    let pid = agent.pid();
    let (fd, inode) = connector_socket(pid);
    // The agent's own socket, shared with this test (pidfd_getfd), so that its receive buffer
    // can be made as small as the kernel allows while the agent is stopped.
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    let sock = rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
        .unwrap();
    let sweeps = agent.counter("sweeps");
    let child = {
        let _paused = Paused::new(pid);
        let big = rustix::net::sockopt::socket_recv_buffer_size(&sock).unwrap();
        rustix::net::sockopt::set_socket_recv_buffer_size_force(&sock, 0).unwrap();
        // An exec storm against the small buffer, until the kernel drops messages.
        let d0 = netlink_drops(inode);
        wait_until("the netlink socket to overflow", 60, || {
            Command::new("/bin/true").status().unwrap();
            netlink_drops(inode) > d0
        });
        // Started while the socket overflows: its exec message is lost.
        let child = Command::new(&banned).arg("120").spawn().unwrap();
        rustix::net::sockopt::set_socket_recv_buffer_size_force(&sock, big / 2).unwrap();
        child
    };
    drop(sock);
    let child_pid = child.id();
    let e = agent.wait_event("the kill after the sweep", |e| {
        e["process"]["pid"] == child_pid && e["outcome"] == "killed"
    });
    assert_eq!(e["rule"]["id"], "overflow");
    let mut child = child;
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    let c = agent.status()["counters"].clone();
    assert!(c["netlink_overflows"].as_u64().unwrap() >= 1, "{c:#}");
    assert!(c["sweeps"].as_u64().unwrap() > sweeps, "{c:#}");
}
