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

/// Processes of the desktop session, killed by PID when the test ends.
struct Session {
    children: Vec<Child>,
    uid: u32,
    dir: tempfile::TempDir,
}

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

/// Xvfb, a session bus at /run/user/UID/bus and dunst, all as the test user. dunst records the
/// urgency and summary of every interdict notification through a rule script.
fn start_session() -> Session {
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
        format!("[global]\n    history_length = 50\n\n[record]\n    appname = interdict\n    script = {}\n", record.display()).as_bytes(),
        0o644,
    );
    Command::new("chmod")
        .args(["777"])
        .arg(dir.path())
        .status()
        .unwrap();
    let display = format!(":{}", 50 + std::process::id() % 400);
    let mut s = Session {
        children: Vec::new(),
        uid,
        dir,
    };
    s.children.push(
        as_user("Xvfb")
            .args([display.as_str(), "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    s.children.push(
        as_user("env")
            .arg("HOME=/tmp")
            .args(["dbus-daemon", "--session", "--nofork", "--nopidfile"])
            .arg(format!("--address={}", s.bus()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let bus = run.join("bus");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bus.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500)); // Xvfb
    s.children.push(
        as_user("env")
            .arg("HOME=/tmp")
            .arg(format!("DISPLAY={display}"))
            .arg(format!("DBUS_SESSION_BUS_ADDRESS={}", s.bus()))
            .arg("dunst")
            .arg("-config")
            .arg(&rc)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Ready when dunst answers on the bus.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.dunstctl(&["count"]).contains("Currently displayed") {
        assert!(Instant::now() < deadline, "dunst did not come up");
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
fn a_blocked_program_shows_one_critical_desktop_notification_per_interval() {
    let session = start_session();
    let mnt = TmpMount::new();
    let banned = mnt.path().join("desk-banned");
    let digest = unique_copy("/bin/true", &banned);
    // "More info" opens the link with the configured opener, run as the user: here a script
    // that records what it was asked to open.
    let opened = session.dir.path().join("opened.txt");
    let opener = session.dir.path().join("opener.sh");
    write(
        &opener,
        format!("#!/bin/sh\necho \"$1\" >> '{}'\n", opened.display()).as_bytes(),
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while !session.received().contains("CRITICAL") {
        assert!(
            Instant::now() < deadline,
            "dunst received nothing; agent:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        session.received(),
        "CRITICAL\tBlocked: Tool desk\n",
        "one notification, critical"
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
    let c = &agent.status()["counters"];
    assert_eq!(c["notices_sent"], 1, "{c:#}");
    assert_eq!(c["notices_suppressed"], 2, "{c:#}");
    assert_eq!(c["denied"], 3, "{c:#}");
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = agent.status()["counters"].clone();
        if c["notices_failed"].as_u64().unwrap() >= 1 {
            assert_eq!(c["notices_sent"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "{c:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_terminal_of_a_blocked_program_gets_one_line() {
    let mnt = TmpMount::new();
    let banned = mnt.path().join("tty-banned");
    let digest = unique_copy("/bin/true", &banned);
    let _agent = Agent::start(
        &hash_policy("tty", "block", &digest),
        &format!("{}\n\n[notify]\ndesktop = false", marks(mnt.path())),
    );
    // `script` runs the command on a real pseudo-terminal and copies what it shows; the terminal
    // stays open a moment after the denied exec so the agent's line can arrive.
    let out = Command::new("timeout")
        .args(["30", "script", "-qec"])
        .arg(format!("'{}'; sleep 2", banned.display()))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
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

/// What a pseudo-terminal showed while `program` ran (and two seconds after).
fn on_a_terminal(program: &Path) -> String {
    let out = Command::new("timeout")
        .args(["30", "script", "-qec"])
        .arg(format!("'{}'; sleep 2", program.display()))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    assert!(on_a_terminal(&loud).contains("interdict: blocked Tool loud"));
    let shown = on_a_terminal(&quiet);
    assert!(shown.contains("Operation not permitted"), "{shown}");
    assert!(
        !shown.contains("interdict:"),
        "a notify = false rule spoke:\n{shown}"
    );
    drop(agent);

    let agent = Agent::start(
        &policy,
        &format!("{}\n\n[notify]\nenabled = false", marks(mnt.path())),
    );
    let shown = on_a_terminal(&loud);
    assert!(shown.contains("Operation not permitted"), "{shown}");
    assert!(
        !shown.contains("interdict:"),
        "the silent switch did not silence:\n{shown}"
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
}
