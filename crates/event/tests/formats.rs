//! Golden files of the three wire forms (native JSON, OCSF, ECS) of representative events, and
//! the hash chain. Bless new goldens with `INTERDICT_BLESS=1 cargo test -p interdict-event`.

use std::path::PathBuf;

use interdict_event::{
    ecs, ocsf, Event, EventKind, FileRef, Origin, Outcome, PolicyRef, ProcessRef, RuleRef,
    GENESIS_HASH, INSTALL_SCAN,
};

fn origin() -> Origin {
    Origin {
        host_id: "4c4c4544004e3010804fb4c04f4d3732".into(),
        hostname: "dev-laptop-17".into(),
    }
}

fn fixed(mut e: Event, n: u64, prev: &str) -> Event {
    e.id = format!("0193a3f0-7c00-7000-8000-{n:012}");
    e.time = "2026-11-26T20:00:13.123Z".into();
    e.seq = Some(n);
    e.prev_hash = Some(prev.into());
    e
}

fn rule() -> RuleRef {
    RuleRef {
        id: "claude-code".into(),
        name: "Claude Code".into(),
        risk: "high".into(),
        action: "block".into(),
        selector: "sha256".into(),
        pattern: "a".repeat(64),
        matched: "a".repeat(64),
    }
}

fn policy() -> PolicyRef {
    PolicyRef {
        name: "ai-coding-agents".into(),
        version: "2026.11".into(),
        sha256: "b".repeat(64),
        mode: "enforce".into(),
    }
}

fn caller() -> ProcessRef {
    // A pre-exec decision: /proc shows the shell's forked child, still running bash.
    ProcessRef {
        pid: 4242,
        ppid: Some(4100),
        exe: Some("/usr/bin/bash".into()),
        argv: vec!["bash".into(), "-i".into()],
        cwd: Some("/home/ana/src".into()),
        uid: Some(1000),
        user: Some("ana".into()),
        start_time: Some(123_456),
        parent_exe: Some("/usr/bin/bash".into()),
    }
}

fn claude() -> FileRef {
    FileRef {
        path: "/home/ana/.local/bin/claude".into(),
        sha256: Some("a".repeat(64)),
        size: Some(221_184_000),
    }
}

fn owner() -> ProcessRef {
    ProcessRef {
        uid: Some(1000),
        user: Some("ana".into()),
        ..ProcessRef::default()
    }
}

/// One event of every kind, and of the outcomes that map differently, chained as one host's.
fn events() -> Vec<(&'static str, Event)> {
    let o = origin();
    let detection = |kind, outcome, sensor: &str| {
        let mut e = o.event(kind);
        e.outcome = Some(outcome);
        e.sensor = Some(sensor.into());
        e.rule = Some(rule());
        e.policy = Some(policy());
        e
    };
    let mut denied = detection(EventKind::ExecDenied, Outcome::Denied, "fanotify");
    denied.process = Some(caller());
    denied.file = Some(claude());
    // Seen after the exec (proc connector): the process is the program itself.
    let running = ProcessRef {
        exe: Some("/home/ana/.local/bin/claude".into()),
        argv: vec!["claude".into(), "--print".into(), "hello".into()],
        ..caller()
    };
    let mut reported = detection(EventKind::ExecReported, Outcome::Reported, "proc_connector");
    reported.process = Some(running.clone());
    reported.file = Some(claude());
    let mut would = detection(EventKind::ExecReported, Outcome::WouldEnforce, "fanotify");
    would.process = Some(caller());
    would.file = Some(claude());
    let mut killed = detection(EventKind::ProcessKilled, Outcome::Killed, "proc_connector");
    killed.process = Some(running.clone());
    killed.file = Some(claude());
    let mut kill_failed = killed.clone();
    kill_failed.outcome = Some(Outcome::KillFailed);
    kill_failed.message = Some("kill: No such process".into());
    let mut script = detection(EventKind::ScriptDenied, Outcome::Denied, "script_guard");
    script.process = Some(ProcessRef {
        exe: Some("/usr/bin/node".into()),
        argv: vec![
            "node".into(),
            "/home/ana/.npm-global/lib/node_modules/@anthropic-ai/claude-code/cli.js".into(),
        ],
        ..caller()
    });
    script.file = Some(FileRef {
        path: "/home/ana/.npm-global/lib/node_modules/@anthropic-ai/claude-code/cli.js".into(),
        sha256: Some("c".repeat(64)),
        size: Some(9_000_000),
    });
    let package = RuleRef {
        selector: "package".into(),
        pattern: "npm:@anthropic-ai/claude-code".into(),
        matched: "npm:@anthropic-ai/claude-code".into(),
        ..rule()
    };
    let mut installed = detection(
        EventKind::InstalledDetected,
        Outcome::Reported,
        "install_watch",
    );
    installed.rule = Some(package.clone());
    installed.policy = None;
    installed.file = Some(FileRef {
        path: "/home/ana/.npm-global/lib/node_modules/@anthropic-ai/claude-code".into(),
        sha256: None,
        size: None,
    });
    installed.process = Some(owner());
    installed.message = Some("package npm:@anthropic-ai/claude-code 2.1.332".into());
    let mut present = installed.clone();
    present.sensor = Some(INSTALL_SCAN.into());
    let mut removed = installed.clone();
    removed.kind = EventKind::InstalledRemoved;
    let mut quarantined = detection(
        EventKind::InstalledQuarantined,
        Outcome::Quarantined,
        "install_watch",
    );
    quarantined.policy = None;
    quarantined.file = Some(claude());
    quarantined.process = Some(owner());
    quarantined.message = Some("quarantine entry 0193a3f0".into());
    let mut quarantine_failed = quarantined.clone();
    quarantine_failed.outcome = Some(Outcome::QuarantineFailed);
    quarantine_failed.message = Some("a dpkg package owns it".into());
    let mut protected = o.event(EventKind::ExecReported);
    protected.outcome = Some(Outcome::Protected);
    protected.rule = Some(rule());
    protected.file = Some(FileRef {
        path: "/usr/bin/bash".into(),
        sha256: None,
        size: None,
    });
    protected.message = Some("the policy would block a protected file; refused".into());
    let mut started = o.event(EventKind::AgentStarted);
    started.policy = Some(policy());
    started.message = Some("fanotify=running".into());
    let mut stopped = o.event(EventKind::AgentStopped);
    stopped.message = Some("counters: {}".into());
    let mut applied = o.event(EventKind::PolicyApplied);
    applied.message = Some("initial policy".into());
    let mut rejected = o.event(EventKind::PolicyRejected);
    rejected.message = Some("policy.toml:3:1: error[unknown-key]: unknown key `mdoe`".into());
    let mut degraded = o.event(EventKind::SensorDegraded);
    degraded.sensor = Some("proc_connector".into());
    degraded.message = Some("netlink: Operation not permitted".into());
    let mut dropped = o.event(EventKind::EventsDropped);
    dropped.message = Some("12 events dropped: the spool was full".into());
    let mut heartbeat = o.event(EventKind::Heartbeat);
    heartbeat.message = Some(r#"{"version":"0.1.0","mode":"enforce"}"#.into());
    // The fleet control plane (issue 15).
    let mut list_applied = o.event(EventKind::HashListApplied);
    list_applied.sensor = Some("learner".into());
    list_applied.message = Some("hash list 3: 1 digest(s) added".into());
    let mut list_rejected = o.event(EventKind::HashListRejected);
    list_rejected.rule = Some(rule());
    list_rejected.file = Some(FileRef {
        path: String::new(),
        sha256: Some("d".repeat(64)),
        size: Some(4096),
    });
    list_rejected.message = Some("rule claude-code is an allow rule".into());
    let requester = ProcessRef {
        pid: 5150,
        uid: Some(1000),
        user: Some("ana".into()),
        ..ProcessRef::default()
    };
    let mut requested = o.event(EventKind::ExceptionRequested);
    requested.rule = Some(rule());
    requested.process = Some(requester.clone());
    requested.message = Some(r#"{"request_id":"0193a3f0","days":3,"reason":"vendor demo"}"#.into());
    let mut granted = requested.clone();
    granted.kind = EventKind::ExceptionGranted;
    granted.message = Some("exception 0193a3f0 until 2026-11-29T20:00:13Z".into());
    let mut denied_ex = granted.clone();
    denied_ex.kind = EventKind::ExceptionDenied;
    denied_ex.message = Some("exception 0193a3f0 denied".into());
    let mut rejected_ex = granted.clone();
    rejected_ex.kind = EventKind::ExceptionRejected;
    rejected_ex.message = Some("longer than the policy allows".into());
    let mut ending = granted.clone();
    ending.kind = EventKind::ExceptionEnding;
    let mut expired = granted.clone();
    expired.kind = EventKind::ExceptionExpired;
    let mut config = detection(
        EventKind::ConfigDetected,
        Outcome::Reported,
        "install_watch",
    );
    config.rule = Some(RuleRef {
        selector: "config".into(),
        pattern: "~/.claude.json".into(),
        matched: "/home/ana/.claude.json".into(),
        ..rule()
    });
    config.file = Some(FileRef {
        path: "/home/ana/.claude.json".into(),
        sha256: Some("d".repeat(64)),
        size: Some(2_048),
    });
    config.message = Some(
        "MCP servers: github: npx -y @modelcontextprotocol/server-github (env GITHUB_TOKEN)".into(),
    );
    let mut prev = GENESIS_HASH.to_string();
    let mut out = Vec::new();
    for (i, (name, e)) in [
        ("exec_denied", denied),
        ("exec_reported", reported),
        ("exec_reported_would_enforce", would),
        ("process_killed", killed),
        ("process_kill_failed", kill_failed),
        ("script_denied", script),
        ("installed_detected", installed),
        ("installed_present", present),
        ("installed_removed", removed),
        ("installed_quarantined", quarantined),
        ("installed_quarantine_failed", quarantine_failed),
        ("exec_reported_protected", protected),
        ("agent_started", started),
        ("agent_stopped", stopped),
        ("policy_applied", applied),
        ("policy_rejected", rejected),
        ("sensor_degraded", degraded),
        ("events_dropped", dropped),
        ("heartbeat", heartbeat),
        ("hash_list_applied", list_applied),
        ("hash_list_rejected", list_rejected),
        ("exception_requested", requested),
        ("exception_granted", granted),
        ("exception_denied", denied_ex),
        ("exception_rejected", rejected_ex),
        ("exception_ending", ending),
        ("exception_expired", expired),
        ("config_detected", config),
    ]
    .into_iter()
    .enumerate()
    {
        let e = fixed(e, i as u64 + 1, &prev);
        prev = e.record_hash();
        out.push((name, e));
    }
    out
}

/// The kinds whose three forms are kept as golden files (the rest are validated only).
const GOLDEN: &[&str] = &[
    "exec_denied",
    "exec_reported",
    "process_killed",
    "script_denied",
    "installed_detected",
    "installed_present",
    "installed_removed",
    "installed_quarantined",
    "agent_started",
    "policy_rejected",
];

fn golden(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("INTERDICT_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (bless with INTERDICT_BLESS=1)", path.display()));
    assert_eq!(
        got,
        want,
        "{} differs; bless with INTERDICT_BLESS=1",
        path.display()
    );
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

#[test]
fn native_ocsf_and_ecs_forms_match_their_golden_files() {
    for (name, e) in events().into_iter().filter(|(n, _)| GOLDEN.contains(n)) {
        golden(&format!("{name}.native.json"), &(e.to_json_line() + "\n"));
        golden(&format!("{name}.ocsf.json"), &pretty(&ocsf::to_ocsf(&e)));
        golden(&format!("{name}.ecs.json"), &pretty(&ecs::to_ecs(&e)));
    }
}

#[test]
fn a_blocked_launch_is_ocsf_process_activity_launch_denied_blocked() {
    let (_, e) = events().remove(0);
    let v = ocsf::to_ocsf(&e);
    assert_eq!(v["class_uid"], 1007);
    assert_eq!(v["activity_id"], 1);
    assert_eq!(v["type_uid"], 100701);
    assert_eq!(v["type_name"], "Process Activity: Launch");
    assert_eq!(v["action_id"], 2);
    assert_eq!(v["disposition_id"], 2);
    assert_eq!(v["time"], 1_795_723_213_123i64);
    let h = &v["process"]["file"]["hashes"][0];
    assert_eq!(h["algorithm_id"], 3);
    assert_eq!(h["value"], "a".repeat(64));
    let x = ecs::to_ecs(&e);
    assert_eq!(x["event"]["kind"], "alert");
    assert_eq!(x["event"]["type"], serde_json::json!(["start", "denied"]));
}

#[test]
fn issue_18_an_install_found_by_a_rescan_is_not_a_creation() {
    let evs = events();
    let get = |n: &str| evs.iter().find(|(k, _)| *k == n).unwrap().1.clone();
    let watched = ocsf::to_ocsf(&get("installed_detected"));
    assert_eq!(watched["activity_id"], 1, "seen appearing: Create");
    let present = ocsf::to_ocsf(&get("installed_present"));
    assert_eq!(present["activity_id"], 99);
    assert_eq!(present["activity_name"], "Present");
    assert_eq!(
        ecs::to_ecs(&get("installed_present"))["event"]["type"],
        serde_json::json!(["info"])
    );
    let removed = ocsf::to_ocsf(&get("installed_removed"));
    assert_eq!(removed["activity_id"], 4);
    assert_eq!(removed["actor"]["user"]["name"], "ana", "{removed:#}");
    assert_eq!(removed["file"]["owner"]["name"], "ana");
}

#[test]
fn the_chain_links_each_record_to_the_one_before_and_breaks_on_any_change() {
    let evs: Vec<Event> = events().into_iter().map(|(_, e)| e).collect();
    assert_eq!(evs[0].prev_hash.as_deref(), Some(GENESIS_HASH));
    for w in evs.windows(2) {
        assert_eq!(w[1].prev_hash.as_deref(), Some(w[0].record_hash().as_str()));
    }
    // The hash survives a trip through JSON (what the collector recomputes)...
    let back: Event = serde_json::from_str(&evs[1].to_json_line()).unwrap();
    assert_eq!(back.record_hash(), evs[1].record_hash());
    // ...and changes with any field.
    let mut forged = back.clone();
    forged.process.as_mut().unwrap().user = Some("bob".into());
    assert_ne!(forged.record_hash(), evs[1].record_hash());
}

#[path = "validators/run.rs"]
mod validators;

fn all_ocsf() -> Vec<serde_json::Value> {
    events().iter().map(|(_, e)| ocsf::to_ocsf(e)).collect()
}

fn all_ecs() -> Vec<serde_json::Value> {
    events().iter().map(|(_, e)| ecs::to_ecs(e)).collect()
}

fn goldens(form: &str) -> Vec<serde_json::Value> {
    GOLDEN
        .iter()
        .map(|n| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("tests/golden/{n}.{form}.json"));
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

#[test]
fn every_kind_and_every_golden_file_validates_against_the_ocsf_1_3_schema_with_its_profiles() {
    let mut records = all_ocsf();
    records.extend(goldens("ocsf"));
    let out = validators::ocsf(&records).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.contains(&format!("OCSF: {} records, 0 problems", records.len())),
        "{out}"
    );
    for r in &records {
        assert_eq!(r["metadata"]["version"], "1.3.0");
        let profiles = r["metadata"]["profiles"].as_array().unwrap();
        assert_eq!(
            r.get("action_id").is_some(),
            profiles.contains(&"security_control".into()),
            "security_control declared exactly when its attributes are used: {r:#}"
        );
    }
}

#[test]
fn every_kind_and_every_golden_file_validates_against_elastics_ecs_field_reference() {
    let mut docs = all_ecs();
    docs.extend(goldens("ecs"));
    let out = validators::ecs(&docs).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.contains(&format!("ECS: {} documents, 0 problems", docs.len())),
        "{out}"
    );
}

#[test]
fn the_validators_catch_what_a_consumer_would_refuse() {
    // The mistakes the first OCSF and ECS forms made, one per record: each must be reported.
    let (_, denied) = events().remove(0);
    let good = ocsf::to_ocsf(&denied);
    let mut no_device_type = good.clone();
    no_device_type["device"]
        .as_object_mut()
        .unwrap()
        .remove("type_id");
    let mut undeclared_profile = good.clone();
    undeclared_profile["metadata"]["profiles"] = serde_json::json!([]);
    let mut wrong_caption = good.clone();
    wrong_caption["status"] = "Success".into();
    let mut no_file_type = good.clone();
    no_file_type["process"]["file"]
        .as_object_mut()
        .unwrap()
        .remove("type_id");
    for bad in [
        no_device_type,
        undeclared_profile,
        wrong_caption,
        no_file_type,
    ] {
        let out = validators::ocsf(std::slice::from_ref(&bad));
        assert!(out.is_err(), "not caught: {bad:#}\n{out:?}");
    }
    let good = ecs::to_ecs(&denied);
    let mut process_denied = good.clone();
    process_denied["event"]["category"] = serde_json::json!(["process"]);
    let mut not_ecs = good.clone();
    not_ecs["process"]["caller"] = "bash".into();
    let mut wrong_type = good.clone();
    wrong_type["process"]["pid"] = "4242".into();
    let mut bad_outcome = good.clone();
    bad_outcome["event"]["outcome"] = "denied".into();
    for bad in [process_denied, not_ecs, wrong_type, bad_outcome] {
        let out = validators::ecs(std::slice::from_ref(&bad));
        assert!(out.is_err(), "not caught: {bad:#}\n{out:?}");
    }
}

#[test]
fn issue_18_a_pre_exec_denial_has_the_caller_as_actor_and_the_refused_program_as_process() {
    let (_, e) = events().remove(0);
    let v = ocsf::to_ocsf(&e);
    assert_eq!(v["status_id"], 2, "a refused launch failed");
    assert_eq!(v["process"]["file"]["path"], "/home/ana/.local/bin/claude");
    assert_eq!(v["process"]["name"], "claude");
    assert!(v["process"].get("cmd_line").is_none(), "{:#}", v["process"]);
    assert_eq!(v["actor"]["process"]["file"]["path"], "/usr/bin/bash");
    assert_eq!(v["actor"]["process"]["cmd_line"], "bash -i");
    assert_eq!(v["actor"]["process"]["parent_process"]["pid"], 4100);
    let x = ecs::to_ecs(&e);
    assert_eq!(x["event"]["outcome"], "failure");
    assert_eq!(
        x["event"]["category"],
        serde_json::json!(["process", "intrusion_detection"])
    );
    assert_eq!(x["process"]["executable"], "/home/ana/.local/bin/claude");
    assert_eq!(x["process"]["name"], "claude");
    assert_eq!(x["process"]["hash"]["sha256"], "a".repeat(64));
    assert!(x["process"].get("args").is_none());
    assert_eq!(x["process"]["parent"]["executable"], "/usr/bin/bash");
    assert_eq!(x["process"]["parent"]["command_line"], "bash -i");
    // Seen after the exec, the process is the program with its own command line.
    let (_, e) = events().remove(1);
    let x = ecs::to_ecs(&e);
    assert_eq!(x["process"]["executable"], "/home/ana/.local/bin/claude");
    assert_eq!(x["process"]["command_line"], "claude --print hello");
    assert_eq!(x["process"]["hash"]["sha256"], "a".repeat(64));
    assert_eq!(x["process"]["parent"]["pid"], 4100);
    assert_eq!(x["event"]["outcome"], "success");
}

#[test]
fn issue_18_status_and_outcome_say_what_happened() {
    for (name, e) in events() {
        let failed = [
            "exec_denied",
            "process_kill_failed",
            "script_denied",
            "installed_quarantine_failed",
            "policy_rejected",
            "sensor_degraded",
            "events_dropped",
            "hash_list_rejected",
            "exception_denied",
            "exception_rejected",
        ]
        .contains(&name);
        let v = ocsf::to_ocsf(&e);
        assert_eq!(v["status_id"], if failed { 2 } else { 1 }, "{name}: {v:#}");
        let x = ecs::to_ecs(&e);
        let want = if failed { "failure" } else { "success" };
        assert_eq!(x["event"]["outcome"], want, "{name}");
    }
}
