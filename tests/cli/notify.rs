//! Telling the employee, with real parts: Xvfb, a private session bus and dunst run as an
//! unprivileged test user; the agent blocks a banned program that user launches; dunst must have
//! received the notification (summary, body, urgency), once per rate-limit interval. The terminal
//! line is checked on a real pseudo-terminal.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::agent::{hash_policy, marks, unique_copy, Agent, TmpMount};
use crate::support::*;

const USER: &str = "interdict-nt";

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").arg("-u").arg(user).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn ensure_user() -> u32 {
    if !Command::new("id")
        .arg(USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        let st = Command::new("useradd")
            .args(["-M", "-s", "/usr/sbin/nologin", USER])
            .status()
            .unwrap();
        // Another test may have created it meanwhile.
        assert!(st.success() || Command::new("id").arg(USER).status().unwrap().success());
    }
    uid_of(USER)
}

fn as_user(cmd: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={USER}"),
        &format!("--regid={USER}"),
        "--clear-groups",
        cmd,
    ]);
    c
}

/// Processes of the desktop session, killed by PID when the test ends. One session at a time:
/// they all use the test user's bus address.
struct Session {
    children: Vec<Child>,
    uid: u32,
    dir: tempfile::TempDir,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static SESSIONS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Drop for Session {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(format!("/run/user/{}/bus", self.uid));
    }
}

impl Session {
    fn bus(&self) -> String {
        format!("unix:path=/run/user/{}/bus", self.uid)
    }

    fn received(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("received.tsv")).unwrap_or_default()
    }

    /// Wait until dunst has recorded `n` notifications; fail with what it recorded otherwise.
    fn wait_received(&self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.received();
            if r.lines().count() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "dunst recorded {} notification(s), not {n}:\n{r}\ndunst:\n{}",
                r.lines().count(),
                self.dunst_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn dunst_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dunst.log")).unwrap_or_default()
    }

    fn dunstctl(&self, args: &[&str]) -> String {
        let out = as_user("env")
            .arg("HOME=/tmp")
            .arg(format!("DBUS_SESSION_BUS_ADDRESS={}", self.bus()))
            .arg("dunstctl")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Read the first line a child prints (its readiness message), within 30 s; fail with its
/// exit status and `log` otherwise.
fn first_line(child: &mut Child, what: &str, log: &Path) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) if !l.trim().is_empty() => l.trim().to_string(),
        other => panic!(
            "{what} did not come up ({other:?}, {:?}):\n{}",
            child.try_wait(),
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

/// Xvfb, a session bus at /run/user/UID/bus and dunst, all as the test user. dunst records the
/// urgency and summary of every interdict notification through a rule script. Each is waited
/// for by what it says when ready: Xvfb its display number (`-displayfd`), the bus its address
/// (`--print-address`), dunst its name on the bus.
fn start_session() -> Session {
    let one_at_a_time = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
    let uid = ensure_user();
    std::fs::create_dir_all("/tmp/.X11-unix").unwrap();
    Command::new("chmod")
        .args(["1777", "/tmp/.X11-unix"])
        .status()
        .unwrap();
    let run = PathBuf::from(format!("/run/user/{uid}"));
    std::fs::create_dir_all(&run).unwrap();
    Command::new("chown")
        .arg(format!("{USER}:"))
        .arg(&run)
        .status()
        .unwrap();
    let _ = std::fs::remove_file(run.join("bus"));
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.sh");
    let received = dir.path().join("received.tsv");
    write(
        &record,
        format!(
            "#!/bin/sh\nprintf '%s\\t%s\\n' \"$5\" \"$2\" >> '{}'\n",
            received.display()
        )
        .as_bytes(),
        0o755,
    );
    let rc = dir.path().join("dunstrc");
    write(
        &rc,
        format!("[global]\n    history_length = 50\n    stack_duplicates = false\n\n[record]\n    appname = interdict\n    script = {}\n", record.display()).as_bytes(),
        0o644,
    );
    Command::new("chmod")
        .args(["777"])
        .arg(dir.path())
        .status()
        .unwrap();
    let logs = dir.path().to_path_buf();
    let log = |name: &str| std::fs::File::create(logs.join(name)).unwrap();
    let mut s = Session {
        children: Vec::new(),
        uid,
        dir,
        _one_at_a_time: one_at_a_time,
    };
    let xlog = s.dir.path().join("xvfb.log");
    let mut xvfb = as_user("Xvfb")
        .args(["-displayfd", "1", "-nolisten", "tcp"])
        .stdout(Stdio::piped())
        .stderr(log("xvfb.log"))
        .spawn()
        .unwrap();
    let display = format!(":{}", first_line(&mut xvfb, "Xvfb", &xlog));
    s.children.push(xvfb);
    let blog = s.dir.path().join("dbus.log");
    let mut bus = as_user("env")
        .arg("HOME=/tmp")
        .args([
            "dbus-daemon",
            "--session",
            "--nofork",
            "--nopidfile",
            "--print-address=1",
        ])
        .arg(format!("--address={}", s.bus()))
        .stdout(Stdio::piped())
        .stderr(log("dbus.log"))
        .spawn()
        .unwrap();
    first_line(&mut bus, "the session bus", &blog);
    s.children.push(bus);
    s.children.push(
        as_user("env")
            .arg("HOME=/tmp")
            .arg(format!("DISPLAY={display}"))
            .arg(format!("DBUS_SESSION_BUS_ADDRESS={}", s.bus()))
            .arg("dunst")
            .arg("-config")
            .arg(&rc)
            .stdout(Stdio::null())
            .stderr(log("dunst.log"))
            .spawn()
            .unwrap(),
    );
    // Ready when dunst answers on the bus.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.dunstctl(&["count"]).contains("Currently displayed") {
        let exited = s.children.last_mut().unwrap().try_wait().unwrap();
        assert!(
            Instant::now() < deadline && exited.is_none(),
            "dunst did not come up ({exited:?}):\n{}",
            s.dunst_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s
}

fn run_as_user(program: &Path) -> std::io::Result<std::process::ExitStatus> {
    // setpriv execs the program itself, so a denied exec makes setpriv fail with its message.
    as_user(program.to_str().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

#[test]
fn a_blocked_program_shows_one_critical_desktop_notification_per_interval_and_more_info_opens_the_link(
) {
    let session = start_session();
    let mnt = TmpMount::new();
    let banned = mnt.path().join("desk-banned");
    let digest = unique_copy("/bin/true", &banned);
    // "More info" opens the link with the configured opener, run as the user: here a script
    // that records who was asked to open what.
    let opened = session.dir.path().join("opened.txt");
    let opener = session.dir.path().join("opener.sh");
    write(
        &opener,
        format!(
            "#!/bin/sh\necho \"$(id -u) $1\" >> '{}'\n",
            opened.display()
        )
        .as_bytes(),
        0o755,
    );
    let policy = hash_policy("desk", "block", &digest).replace(
        "mode = \"enforce\"\n",
        "mode = \"enforce\"\nmore_info_url = \"https://it.example.com/sw?rule=%rule_id%\"\n",
    );
    let agent = Agent::start(
        &policy,
        &format!(
            "{}\n\n[notify]\ninterval_s = 3600\nopener = \"{}\"",
            marks(mnt.path()),
            opener.display()
        ),
    );
    for _ in 0..3 {
        let st = run_as_user(&banned).unwrap();
        assert!(!st.success(), "the banned program ran");
    }
    // The agent has taken all three notices (one shown, two held back) before anything is
    // checked: a second notification cannot be merely late.
    let c = agent.wait_counter("notices_suppressed", 2)["counters"].clone();
    assert_eq!(c["notices_sent"], 1, "{c:#}");
    assert_eq!(c["denied"], 3, "{c:#}");
    assert_eq!(
        session.wait_received(1),
        "CRITICAL\tBlocked: Tool desk\n",
        "one notification, critical"
    );
    // Click "More info" (dunst's default action on the notification shown).
    session.dunstctl(&["action", "0"]);
    wait_until("the opener to run", 30, || {
        std::fs::read_to_string(&opened).is_ok_and(|t| !t.is_empty())
    });
    assert_eq!(
        std::fs::read_to_string(&opened).unwrap(),
        format!("{} https://it.example.com/sw?rule=desk\n", uid_of(USER)),
        "opened once, as the user"
    );
    session.dunstctl(&["close-all"]);
    let history: serde_json::Value = serde_json::from_str(&session.dunstctl(&["history"])).unwrap();
    let items = history["data"][0].as_array().unwrap();
    assert_eq!(items.len(), 1, "{history:#}");
    assert_eq!(items[0]["summary"]["data"], "Blocked: Tool desk");
    assert_eq!(items[0]["appname"]["data"], "interdict");
    let body = items[0]["body"]["data"].as_str().unwrap();
    assert!(body.contains("test ban desk (high risk)"), "{body}");
    assert!(body.contains("Instead: use the approved tool"), "{body}");
    assert!(
        body.contains("More: https://it.example.com/sw?rule=desk"),
        "{body}"
    );
}

#[test]
fn issue_10_the_notice_rate_limit_expires_after_interval_s() {
    let session = start_session();
    let mnt = TmpMount::new();
    let banned = mnt.path().join("rate-banned");
    let digest = unique_copy("/bin/true", &banned);
    let agent = Agent::start(
        &hash_policy("rate", "block", &digest),
        &format!(
            "{}\n\n[notify]\ninterval_s = 2\nterminal = false",
            marks(mnt.path())
        ),
    );
    let t0 = Instant::now();
    assert!(!run_as_user(&banned).unwrap().success());
    agent.wait_counter("notices_sent", 1);
    assert!(!run_as_user(&banned).unwrap().success());
    let c = agent.wait_counter("notices_suppressed", 1)["counters"].clone();
    assert_eq!(c["notices_sent"], 1, "held back within the interval: {c:#}");
    // Keep trying: once interval_s has passed since the first, the next one is shown.
    wait_until("a second notice after the interval", 30, || {
        assert!(!run_as_user(&banned).unwrap().success());
        agent.status()["counters"]["notices_sent"] == 2
    });
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "shown again within interval_s"
    );
    assert_eq!(
        session.wait_received(2),
        "CRITICAL\tBlocked: Tool rate\nCRITICAL\tBlocked: Tool rate\n"
    );
}

#[test]
fn issue_10_notify_test_shows_a_notification_and_exits_0() {
    let session = start_session();
    let r = run(interdict().args(["notify-test", "--user", USER]));
    r.expect_code(0);
    r.expect_stdout(&format!("sent to {USER}"));
    assert_eq!(
        session.wait_received(1),
        "CRITICAL\tBlocked: Sample Tool (interdict notify-test)\n"
    );
}

#[test]
fn no_session_bus_is_quiet_and_counted() {
    let mnt = TmpMount::new();
    let banned = mnt.path().join("nobus-banned");
    let digest = unique_copy("/bin/true", &banned);
    let agent = Agent::start(&hash_policy("nobus", "block", &digest), &marks(mnt.path()));
    // `nobody` has no session bus.
    let st = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(&banned)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success());
    let c = agent.wait_counter("notices_failed", 1)["counters"].clone();
    assert_eq!(c["notices_sent"], 0, "{c:#}");
}

/// Programs run one after another on a real pseudo-terminal (`script`). Before each, and
/// before the terminal closes, the shell waits for the test's go-ahead: the terminal stays open
/// until the test has seen the agent act, never for a fixed time.
struct Terminal {
    child: Child,
    dir: tempfile::TempDir,
}

impl Terminal {
    fn new(programs: &[&Path]) -> Terminal {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let mut sh = String::from("w() { while [ ! -e \"$1\" ]; do sleep 0.05; done; }\n");
        for (i, p) in programs.iter().enumerate() {
            sh.push_str(&format!("w '{d}/go-{i}'\n'{}'\n", p.display()));
        }
        sh.push_str(&format!("w '{d}/end'\n"));
        let script = dir.path().join("run.sh");
        std::fs::write(&script, sh).unwrap();
        let child = Command::new("timeout")
            .args(["60", "script", "-qec"])
            .arg(format!("sh '{}'", script.display()))
            .arg("/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Terminal { child, dir }
    }

    /// Let program `i` run.
    fn go(&self, i: usize) {
        std::fs::write(self.dir.path().join(format!("go-{i}")), "").unwrap();
    }

    /// Close the terminal; what it showed.
    fn finish(self) -> String {
        std::fs::write(self.dir.path().join("end"), "").unwrap();
        let out = self.child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn the_terminal_of_a_blocked_program_gets_one_line() {
    let mnt = TmpMount::new();
    let banned = mnt.path().join("tty-banned");
    let digest = unique_copy("/bin/true", &banned);
    let agent = Agent::start(
        &hash_policy("tty", "block", &digest),
        &format!("{}\n\n[notify]\ndesktop = false", marks(mnt.path())),
    );
    let t = Terminal::new(&[&banned]);
    t.go(0);
    agent.wait_counter("notices_terminal", 1);
    let shown = t.finish();
    assert!(shown.contains("Operation not permitted"), "{shown}");
    let line = shown
        .lines()
        .find(|l| l.contains("interdict: blocked Tool tty"))
        .unwrap_or_else(|| panic!("no interdict line on the terminal:\n{shown}"));
    assert!(line.contains("test ban tty"), "{line}");
    assert!(line.contains("Instead: use the approved tool"), "{line}");
}

#[test]
fn notify_test_reports_a_missing_session_bus() {
    let r = run(interdict().args(["notify-test", "--user", "nobody"]));
    r.expect_code(2);
    assert!(r.stderr.contains("no session bus"), "{}", r.stderr);
}

#[test]
fn explain_says_which_rule_why_and_instead_without_root() {
    let tmp = tempfile::tempdir().unwrap();
    Command::new("chmod")
        .args(["755"])
        .arg(tmp.path())
        .status()
        .unwrap();
    let tool = tmp.path().join("tools/claude");
    let digest = unique_copy("/bin/true", &tool);
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(tmp.path())
        .status()
        .unwrap();
    let policy = tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        hash_policy("explained", "block", &digest).replace(
            "mode = \"enforce\"\n",
            "mode = \"enforce\"\nmore_info_url = \"https://it.example.com/sw?rule=%rule_id%&user=%user%\"\n",
        ),
    )
    .unwrap();
    Command::new("chmod")
        .args(["644"])
        .arg(&policy)
        .status()
        .unwrap();
    let r = run(Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            env!("CARGO_BIN_EXE_interdict"),
            "explain",
            "--policy",
        ])
        .arg(&policy)
        .arg(&tool));
    r.expect_code(1);
    assert!(
        r.stdout
            .contains("blocked by rule `explained`: Tool explained (high risk)"),
        "{}",
        r.stdout
    );
    r.expect_stdout("why:      test ban explained");
    r.expect_stdout(&format!("matched:  sha256 `{digest}`"));
    r.expect_stdout("instead:  use the approved tool");
    r.expect_stdout("more:     https://it.example.com/sw?rule=explained&user=nobody");
    let r = run(interdict()
        .args(["explain", "--policy"])
        .arg(&policy)
        .arg("/bin/sh"));
    r.expect_code(0);
    r.expect_stdout("no rule");
}

#[test]
fn rules_with_notify_false_and_the_silent_switch_tell_nobody() {
    let mnt = TmpMount::new();
    let loud = mnt.path().join("loud-banned");
    let dl = unique_copy("/bin/true", &loud);
    let quiet = mnt.path().join("quiet-banned");
    let dq = unique_copy("/bin/true", &quiet);
    let policy = format!(
        "{}{}",
        hash_policy("loud", "block", &dl),
        crate::support::agent::rule("quiet", "block", &format!("sha256 = [\"{dq}\"]"))
            .replace("[rule.match]", "notify = false\n[rule.match]")
    );
    let agent = Agent::start(
        &policy,
        &format!("{}\n\n[notify]\ndesktop = false", marks(mnt.path())),
    );
    // The quiet rule's denial first, then the loud one's: notices are delivered in order, so
    // once the loud line is on the terminal, a line for the quiet one would be there too.
    let t = Terminal::new(&[&quiet, &loud]);
    t.go(0);
    agent.wait_event("the quiet denial", |e| {
        e["kind"] == "exec_denied" && e["rule"]["id"] == "quiet"
    });
    t.go(1);
    agent.wait_counter("notices_terminal", 1);
    let shown = t.finish();
    assert!(shown.contains("interdict: blocked Tool loud"), "{shown}");
    assert!(
        !shown.contains("interdict: blocked Tool quiet"),
        "a notify = false rule spoke:\n{shown}"
    );
    assert_eq!(agent.counter("notices_terminal"), 1);
    drop(agent);

    // With the silent switch there is no notifier at all: nothing can arrive late.
    let agent = Agent::start(
        &policy,
        &format!("{}\n\n[notify]\nenabled = false", marks(mnt.path())),
    );
    let s = agent.status();
    let n = s["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "notifier")
        .unwrap()
        .clone();
    assert_eq!(n["state"], "disabled");
    let t = Terminal::new(&[&loud]);
    t.go(0);
    agent.wait_event("the loud denial", |e| {
        e["kind"] == "exec_denied" && e["rule"]["id"] == "loud"
    });
    let shown = t.finish();
    assert!(shown.contains("Operation not permitted"), "{shown}");
    assert!(
        !shown.contains("interdict:"),
        "the silent switch did not silence:\n{shown}"
    );
}
