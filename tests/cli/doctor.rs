//! `interdict doctor` (issue 16) on this machine: as root with a test agent running (its paths
//! all in a temp folder), after that agent was killed, and as the unprivileged test user. Each
//! line is asserted whole.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::agent::*;
use crate::support::*;

fn doctor(agent: &Agent) -> std::process::Command {
    let mut c = interdict();
    c.arg("doctor")
        .arg("--policy")
        .arg(&agent.policy)
        .arg("--config")
        .arg(agent.dir.path().join("agent.toml"));
    c
}

/// The line starting with `prefix`, with the whole output in the failure message.
fn line<'a>(r: &'a Run, prefix: &str) -> &'a str {
    r.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| {
            panic!(
                "no line starting {prefix:?}\n--- stdout\n{}\n--- stderr\n{}",
                r.stdout, r.stderr
            )
        })
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn issue_16_doctor_as_root_with_an_agent_running_then_killed() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let tool = m.join("doc-tool");
    let digest = unique_copy("/bin/true", &tool);
    let mut agent = Agent::start(&hash_policy("doc", "block", &digest), &marks(m));
    let d = agent.dir.path().to_path_buf();
    let config = d.join("agent.toml");
    let policy = agent.policy.clone();
    let pid = agent.status()["pid"].as_u64().unwrap();

    // The harness leaves the configuration and the policy writable by everyone: the root
    // agent's instructions open to any user.
    let r = run(&mut doctor(&agent));
    r.expect_code(1);
    assert_eq!(
        line(&r, "FAIL  files     ")
            .strip_prefix("FAIL  files     ")
            .unwrap(),
        format!(
            "{c} (configuration): mode 0666, owner uid 0; must be root's and at most 0644: chmod 600 {c}; chown root: {c}",
            c = config.display()
        )
    );
    assert!(
        r.stdout.contains(&format!(
            "FAIL  files     {p} (policy): mode 0666, owner uid 0; must be root's and at most 0644: chmod 644 {p}; chown root: {p}\n",
            p = policy.display()
        )),
        "{}",
        r.stdout
    );

    chmod(&config, 0o600);
    chmod(&policy, 0o644);
    let r = run(&mut doctor(&agent));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    for want in [
        format!(
            "ok    kernel    fanotify: permission events and exec marks available (Linux {})",
            release.trim()
        ),
        "ok    kernel    proc connector: exec events available (netlink, CAP_NET_ADMIN)".into(),
        "ok    kernel    pidfd: available (kills safe against PID reuse)".into(),
        format!("ok    config    {}: valid", config.display()),
        format!(
            "ok    policy    {}: policy test 1 (enforce), 1 rule(s), 0 warning(s)",
            policy.display()
        ),
        format!(
            "ok    sensor    fanotify: running: exec guard on 1 filesystem(s): {}",
            m.display()
        ),
        format!("ok    marks     {} (tmpfs): execs guarded", m.display()),
        "info  collector none configured ([collector]): events stay in the local event log"
            .into(),
        format!("ok    files     {} (configuration): mode 0600, root", config.display()),
        format!("ok    files     {} (policy): mode 0644, root", policy.display()),
        format!("ok    files     {}/state (state folder): mode 0700, root", d.display()),
        format!(
            "ok    files     {}/events.jsonl (event log: command lines are private): mode 0600, root",
            d.display()
        ),
    ] {
        assert!(
            r.stdout.lines().any(|l| l == want),
            "no line {want:?}\n--- stdout\n{}\n--- stderr\n{}",
            r.stdout,
            r.stderr
        );
    }
    assert!(
        line(&r, "ok    agent     running: ").starts_with(&format!(
            "ok    agent     running: pid {pid}, version {}, up ",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        r.stdout
    );
    // The root filesystem holds programs; this agent guards only its tmpfs, as configured.
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("info  marks     / (")
                && l.ends_with("): not guarded ([exec] mounts names the filesystems to guard)")),
        "{}",
        r.stdout
    );
    // Nothing else is wrong: exit 0.
    assert!(
        r.stdout.ends_with("doctor: all is well\n"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    r.expect_code(0);

    // A broken edit: the agent rejects it and keeps the last good policy, which is no longer
    // the file on disk.
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, format!("{text}\n[[rule]]\nbroken = true\n")).unwrap();
    agent.wait_event("the broken edit rejected", |e| {
        e["kind"] == "policy_rejected"
    });
    let r = run(&mut doctor(&agent));
    r.expect_code(1);
    assert!(line(&r, "FAIL  policy    ").starts_with(&format!(
        "FAIL  policy    {p}: rejected (check it with `interdict policy check {p}`): ",
        p = policy.display()
    )));
    assert!(line(&r, "warn  agent     ").starts_with(&format!(
        "warn  agent     {} is not the policy in force (sha256 ",
        policy.display()
    )));
    std::fs::write(&policy, &text).unwrap();

    // Killed: no agent answers, and the run record says the last one did not stop cleanly.
    signal(pid as u32, rustix::process::Signal::KILL);
    wait_until("the killed agent to exit", 20, || {
        agent.child.try_wait().unwrap().is_some()
    });
    let r = run(&mut doctor(&agent));
    r.expect_code(1);
    assert_eq!(
        line(&r, "FAIL  agent     "),
        format!(
            "FAIL  agent     not running: no answer on {}/control.sock (Connection refused); start it: systemctl start interdict, and see journalctl -u interdict",
            d.display()
        )
    );
    assert!(line(&r, "warn  agent     ").starts_with(&format!(
        "warn  agent     the last agent (pid {pid}, started "
    )));
    assert!(
        line(&r, "warn  agent     ")
            .ends_with(") did not stop cleanly: killed, crashed or stopped by the watchdog"),
        "{}",
        r.stdout
    );
    assert_eq!(
        line(&r, "info  marks     "),
        "info  marks     no agent answers: no filesystem can be known to be guarded"
    );
}

#[test]
fn issue_16_doctor_as_an_unprivileged_user_says_what_it_cannot_check() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let tool = m.join("doc-user-tool");
    let digest = unique_copy("/bin/true", &tool);
    let agent = Agent::start(&hash_policy("docu", "block", &digest), &marks(m));
    let d = agent.dir.path();
    let config = d.join("agent.toml");
    let r = run(as_test_user(env!("CARGO_BIN_EXE_interdict"))
        .arg("doctor")
        .arg("--policy")
        .arg(&agent.policy)
        .arg("--config")
        .arg(&config));
    r.expect_code(1);
    for want in [
        "skip  kernel    fanotify: needs root (CAP_SYS_ADMIN) to check".to_string(),
        "skip  kernel    proc connector: needs root (CAP_NET_ADMIN) to check".into(),
        "ok    kernel    pidfd: available (kills safe against PID reuse)".into(),
        format!("ok    config    {}: valid", config.display()),
        format!(
            "skip  agent     the control socket {}/control.sock is not open to this account (root, or [agent] admin_group)",
            d.display()
        ),
        format!("ok    files     {}/state (state folder): mode 0700, root", d.display()),
    ] {
        assert!(
            r.stdout.lines().any(|l| l == want),
            "no line {want:?}\n--- stdout\n{}\n--- stderr\n{}",
            r.stdout,
            r.stderr
        );
    }
    assert!(
        !r.stdout.contains("ok    agent"),
        "an unprivileged doctor cannot vouch for the agent:\n{}",
        r.stdout
    );
    assert!(
        r.stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("doctor: ")
                && l.ends_with(" not checked (run as root for those)")),
        "{}",
        r.stdout
    );
}

#[test]
fn issue_16_doctor_reports_an_invalid_configuration_and_json_has_every_line() {
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"relative\"\ncontrol_socket = \"{}/none.sock\"\n[exec]\nfail_mode = \"sideways\"\n",
            d.path().display()
        ),
    )
    .unwrap();
    let r = run(interdict()
        .args(["doctor", "--format", "json", "--policy"])
        .arg(shipped_pack())
        .arg("--config")
        .arg(&config));
    r.expect_code(1);
    let j = r.json();
    assert_eq!(j["healthy"], false);
    let checks = j["checks"].as_array().unwrap();
    let config_line = checks
        .iter()
        .find(|c| c["area"] == "config")
        .unwrap_or_else(|| panic!("{j:#}"));
    assert_eq!(config_line["status"], "fail");
    let msg = config_line["message"].as_str().unwrap();
    let c = config.display();
    assert!(
        msg.starts_with(&format!("{c}: 2 problem(s); the agent will not start: {c}:2:13: error[bad-value]: `state_dir` must be an absolute path | {c}:5:13: error[bad-value]: `fail_mode` is `sideways`")),
        "{msg}"
    );
    let policy_line = checks.iter().find(|c| c["area"] == "policy").unwrap();
    assert_eq!(policy_line["status"], "ok", "{j:#}");
}

#[test]
fn issue_16_doctor_checks_that_the_collector_is_reachable_and_accepts_this_host() {
    use crate::collector::{reporting_agent, Reserved};
    use interdict_collector::Store;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("collector.db");
    let secret = Store::open(&db).unwrap().rotate_enroll_secret().unwrap();
    let root = dir.path().join("installs");
    std::fs::create_dir_all(&root).unwrap();
    let reserved = Reserved::new();
    let port = reserved.port;
    let url = format!("http://127.0.0.1:{port}");
    let agent = reporting_agent(
        &root,
        &format!("[collector]\nurl = \"{url}\"\nenroll_secret = \"{secret}\"\nheartbeat_s = 1"),
    );
    let config = agent.dir.path().join("agent.toml");
    let token = agent.dir.path().join("state/collector.token");

    // The configuration holds the enroll secret: readable by others is a failure.
    let r = run(&mut doctor(&agent));
    r.expect_code(1);
    assert_eq!(
        line(&r, "FAIL  files     "),
        format!(
            "FAIL  files     {c} (configuration with the enroll secret): mode 0666, owner uid 0; must be root's and at most 0600: chmod 600 {c}; chown root: {c}",
            c = config.display()
        )
    );
    chmod(&config, 0o600);
    chmod(&agent.policy, 0o644);

    // The collector is down (the port refuses connections).
    let r = run(&mut doctor(&agent));
    r.expect_code(1);
    assert!(
        line(&r, "FAIL  collector ")
            .starts_with(&format!("FAIL  collector {url}: not reachable: ")),
        "{}",
        r.stdout
    );
    assert!(
        line(&r, "FAIL  collector ").ends_with("; events wait in the spool until it is"),
        "{}",
        r.stdout
    );

    // Up: the agent enrolls, and doctor sees the collector accept this host's token.
    let app = interdict_collector::App::new(
        Store::open(&db).unwrap(),
        interdict_collector::Config::default(),
        interdict_collector::keys::generate(),
    );
    let _collector =
        interdict_collector::Background::start_on(reserved.listen(), app, None).unwrap();
    wait_until("the agent to enroll", 60, || token.exists());
    let r = run(&mut doctor(&agent));
    for want in [
        format!("ok    collector {url}: reachable (HTTP 401 without credentials)"),
        "ok    collector enrolled: the collector accepts this host's token (HTTP 200 for an empty batch)".to_string(),
        format!("ok    files     {} (collector token): mode 0600, root", token.display()),
        format!(
            "ok    files     {} (configuration with the enroll secret): mode 0600, root",
            config.display()
        ),
    ] {
        assert!(
            r.stdout.lines().any(|l| l == want),
            "no line {want:?}\n--- stdout\n{}\n--- stderr\n{}",
            r.stdout,
            r.stderr
        );
    }

    // IT resets the host at the collector: its token no longer works, and doctor says what to do.
    let host = agent.events()[0]["host_id"].as_str().unwrap().to_string();
    assert!(Store::open(&db).unwrap().reset_host(&host).unwrap());
    let r = run(&mut doctor(&agent));
    r.expect_code(1);
    assert_eq!(
        line(&r, "FAIL  collector "),
        format!(
            "FAIL  collector enrollment: the collector refuses the token in {} (reset or deleted host?); remove the token file and restart the agent to enroll again",
            token.display()
        )
    );
}
