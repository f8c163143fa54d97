//! The SIEM forms from a real agent and collector (issue 18): every event kind the agent makes
//! here, served by the collector as OCSF and ECS, is validated by the consumers' own tooling
//! (the OCSF 1.3 JSON schema with the declared profiles; Elastic's ECS field reference); and
//! what the install watcher reported is not reported again as new at every start.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::collector::{counter, reporting_agent, wait_for};
use crate::support::agent::{rule, unique_copy, Agent, TmpMount, POLICY_HEAD};
use crate::support::*;

#[path = "../../crates/event/tests/validators/run.rs"]
mod validators;

/// Written long ago (not a file still being written, which the watcher would look at once it
/// settles).
fn old_file(path: &Path, bytes: &[u8]) {
    write(path, bytes, 0o755);
    let st = Command::new("touch")
        .args(["-h", "-d", "2020-01-01"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// What the collector serves for `host` in `format` (native JSON, `ocsf` or `ecs`), one value
/// per event, through `interdict logs query`.
fn served(port: u16, reviewer: &str, host: &str, format: &str) -> Vec<Value> {
    let r = run(interdict()
        .args(["logs", "query", "--collector"])
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["--host", host, "--format", format])
        .env("INTERDICT_REVIEWER_TOKEN", reviewer));
    r.expect_code(0);
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn kinds(events: &[Value]) -> Vec<(String, String)> {
    let mut k: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["sensor"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    k.sort();
    k.dedup();
    k
}

#[test]
fn issue_18_every_kind_from_a_live_agent_validates_as_ocsf_and_ecs() {
    let mnt = TmpMount::new();
    let m = mnt.path();
    let elsewhere = tempfile::tempdir().unwrap(); // not marked: the proc connector's
    let blocked = m.join("bin/blocked");
    let d_blocked = unique_copy("/bin/true", &blocked);
    let reported = m.join("bin/reported");
    let d_reported = unique_copy("/bin/true", &reported);
    let watched = elsewhere.path().join("watched");
    let d_watched = unique_copy("/bin/sleep", &watched);
    let killed = elsewhere.path().join("killed");
    let d_killed = unique_copy("/bin/sleep", &killed);
    let sample = elsewhere.path().join("sample");
    let d_quarantined = unique_copy("/bin/true", &sample);
    let script = m.join("agents/run-agent.sh");
    write(&script, b"exit 0\n", 0o644);
    let installs = m.join("installs");
    // Present before the agent starts: found by its start-up rescan.
    old_file(&installs.join("early/banned-tool"), b"x");
    let policy = format!(
        "{POLICY_HEAD}{}{}{}{}{}{}{}",
        rule("blocked", "block", &format!("sha256 = [\"{d_blocked}\"]")),
        rule(
            "reported",
            "report",
            &format!("sha256 = [\"{d_reported}\"]")
        ),
        rule("watched", "report", &format!("sha256 = [\"{d_watched}\"]")),
        rule("killed", "kill", &format!("sha256 = [\"{d_killed}\"]")),
        rule("script", "block", "scripts = [\"**/agents/run-agent.sh\"]"),
        rule("tool", "report", "names = [\"banned-tool\"]"),
        rule(
            "quarantined",
            "quarantine",
            &format!("sha256 = [\"{d_quarantined}\"]")
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("collector.db");
    let store = interdict_collector::Store::open(&db).unwrap();
    let secret = store.rotate_enroll_secret().unwrap();
    let reviewer = store.add_reviewer("soc").unwrap();
    let reserved = crate::collector::Reserved::new();
    let port = reserved.port;
    let app = interdict_collector::App::new(
        store,
        interdict_collector::Config {
            silent_after_s: 60,
            ..Default::default()
        },
        interdict_collector::keys::generate(),
    );
    let _collector =
        interdict_collector::Background::start_on(reserved.listen(), app, None).unwrap();
    let mut agent = Agent::start(
        &policy,
        &format!(
            "mounts = [\"{m}\"]\nscript_roots = [\"{m}\"]\n\n[install]\nroots = [\"{i}\"]\ndebounce_ms = 100\n\n[collector]\nurl = \"http://127.0.0.1:{port}\"\nenroll_secret = \"{secret}\"\nheartbeat_s = 1",
            m = m.display(),
            i = installs.display()
        ),
    );
    // Launches: refused, reported before the exec, reported after it, killed.
    assert!(Command::new(&blocked).status().is_err(), "blocked runs");
    assert!(Command::new(&reported).status().unwrap().success());
    assert!(Command::new(&watched).arg("1").status().unwrap().success());
    assert!(!Command::new(&killed).arg("5").status().unwrap().success());
    assert!(!Command::new("sh")
        .arg(&script)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success());
    // Installs: one appears, one goes, one is quarantined.
    write(&installs.join("late/banned-tool"), b"x", 0o755);
    agent.wait_event("the late install", |e| {
        e["kind"] == "installed_detected" && e["sensor"] == "install_watch"
    });
    std::fs::remove_dir_all(installs.join("early")).unwrap();
    write(
        &installs.join("home/ann/.local/bin/innocent"),
        &std::fs::read(&sample).unwrap(),
        0o755,
    );
    agent.wait_event("installed_quarantined", |e| {
        e["kind"] == "installed_quarantined"
    });
    agent.wait_event("installed_removed", |e| e["kind"] == "installed_removed");
    // A broken policy is rejected.
    let good = std::fs::read_to_string(&agent.policy).unwrap();
    std::fs::write(&agent.policy, "[policy]\nname = \"broken\"\nmdoe = 1\n").unwrap();
    agent.reload().expect_code(2);
    std::fs::write(&agent.policy, &good).unwrap();
    agent.wait_event("a heartbeat", |e| e["kind"] == "heartbeat");
    assert_eq!(agent.stop().code(), Some(0));
    // The next run ships what the last one spooled (its stop included).
    agent.restart();
    let host = agent.events()[0]["host_id"].as_str().unwrap().to_string();
    let native = agent.events();
    wait_for("every event at the collector", 90, || {
        served(port, &reviewer, &host, "native").len() >= native.len()
    });
    let native = served(port, &reviewer, &host, "native");
    let got = kinds(&native);
    for want in [
        ("exec_denied", "fanotify"),
        ("exec_reported", "fanotify"),
        ("exec_reported", "proc_connector"),
        ("process_killed", "proc_connector"),
        ("script_denied", "script_guard"),
        ("installed_detected", "install_scan"),
        ("installed_detected", "install_watch"),
        ("installed_removed", "install_watch"),
        ("installed_quarantined", "install_watch"),
        ("agent_started", ""),
        ("agent_stopped", ""),
        ("policy_applied", ""),
        ("policy_rejected", ""),
        ("heartbeat", ""),
    ] {
        assert!(
            got.contains(&(want.0.to_string(), want.1.to_string())),
            "no {want:?} among {got:?}"
        );
    }
    // (Heartbeats keep coming: later forms may hold a few more.)
    let ocsf = served(port, &reviewer, &host, "ocsf");
    for e in &native {
        assert!(
            ocsf.iter().any(|v| v["metadata"]["uid"] == e["id"]),
            "{e:#} not served as OCSF"
        );
    }
    let out = validators::ocsf(&ocsf).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains(", 0 problems"), "{out}");
    let ecs = served(port, &reviewer, &host, "ecs");
    for e in &native {
        assert!(
            ecs.iter().any(|v| v["event"]["id"] == e["id"]),
            "{e:#} not served as ECS"
        );
    }
    let out = validators::ecs(&ecs).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains(", 0 problems"), "{out}");

    // The refused launch: the refused program is the process, its caller (the test's forked
    // child, still this test binary when /proc was read) the actor.
    let denied = ocsf
        .iter()
        .find(|v| v["unmapped"]["interdict_kind"] == "exec_denied")
        .unwrap();
    assert_eq!(
        denied["process"]["file"]["path"],
        blocked.to_string_lossy().as_ref()
    );
    assert_eq!(denied["process"]["file"]["hashes"][0]["value"], d_blocked);
    assert_eq!(denied["status"], "Failure");
    assert_ne!(
        denied["actor"]["process"]["file"]["path"],
        blocked.to_string_lossy().as_ref()
    );
    assert!(denied["process"].get("cmd_line").is_none(), "{denied:#}");
    let x = ecs
        .iter()
        .find(|v| v["event"]["action"] == "exec_denied")
        .unwrap();
    assert_eq!(
        x["process"]["executable"],
        blocked.to_string_lossy().as_ref()
    );
    assert_eq!(x["process"]["hash"]["sha256"], d_blocked);
    assert_eq!(x["event"]["outcome"], "failure");
    assert_ne!(
        x["process"]["parent"]["executable"],
        x["process"]["executable"]
    );
    // After the exec, the program is the process, with its own command line.
    let after = ecs.iter().find(|v| v["rule"]["id"] == "watched").unwrap();
    assert_eq!(
        after["process"]["executable"],
        watched.to_string_lossy().as_ref()
    );
    assert_eq!(
        after["process"]["command_line"],
        format!("{} 1", watched.display())
    );
}

fn detections(agent: &Agent, path: &Path) -> Vec<Value> {
    let p = path.to_string_lossy();
    agent
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "installed_detected" && e["file"]["path"] == *p)
        .collect()
}

#[test]
fn issue_18_an_install_is_not_reported_again_at_every_start_and_what_went_meanwhile_is() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("installs");
    let stays = root.join("stays/banned-tool");
    let goes = root.join("goes/banned-tool");
    old_file(&stays, b"x");
    old_file(&goes, b"x");
    let mut agent = reporting_agent(&root, "");
    wait_for("the start-up rescan", 30, || {
        counter(&agent, "install_rescans") >= 1
    });
    for p in [&stays, &goes] {
        let d = detections(&agent, p);
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(d[0]["sensor"], "install_scan", "found, not seen appearing");
    }
    for _ in 0..3 {
        assert_eq!(agent.stop().code(), Some(0));
        agent.restart();
        wait_for("the start-up rescan", 30, || {
            counter(&agent, "install_rescans") >= 1
        });
    }
    for p in [&stays, &goes] {
        assert_eq!(
            detections(&agent, p).len(),
            1,
            "reported again at a restart"
        );
    }
    // While the agent is stopped, one goes and a new one comes.
    assert_eq!(agent.stop().code(), Some(0));
    std::fs::remove_file(&goes).unwrap();
    let new = root.join("new/banned-tool");
    old_file(&new, b"y");
    agent.restart();
    let gone = agent.wait_event("the removal while stopped", |e| {
        e["kind"] == "installed_removed" && e["file"]["path"] == goes.to_string_lossy().as_ref()
    });
    assert_eq!(gone["sensor"], "install_scan");
    assert_eq!(
        gone["process"]["user"], "root",
        "the owner is known: {gone:#}"
    );
    agent.wait_event("the new one", |e| {
        e["kind"] == "installed_detected" && e["file"]["path"] == new.to_string_lossy().as_ref()
    });
    assert_eq!(detections(&agent, &stays).len(), 1);
}
