//! Golden files of the three wire forms (native JSON, OCSF, ECS) of representative events, and
//! the hash chain. Bless new goldens with `INTERDICT_BLESS=1 cargo test -p interdict-event`.

use std::path::PathBuf;

use interdict_event::{
    ecs, ocsf, Event, EventKind, FileRef, Origin, Outcome, PolicyRef, ProcessRef, RuleRef,
    GENESIS_HASH,
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

/// The events of a short session: blocked launch, kill, install found, agent start.
fn events() -> Vec<(&'static str, Event)> {
    let o = origin();
    let mut denied = o.event(EventKind::ExecDenied);
    denied.outcome = Some(Outcome::Denied);
    denied.sensor = Some("fanotify".into());
    denied.rule = Some(rule());
    denied.policy = Some(policy());
    denied.process = Some(ProcessRef {
        pid: 4242,
        ppid: Some(4100),
        exe: Some("/home/ana/.local/bin/claude".into()),
        argv: vec!["claude".into(), "--print".into(), "hello".into()],
        cwd: Some("/home/ana/src".into()),
        uid: Some(1000),
        user: Some("ana".into()),
        start_time: Some(123_456),
        parent_exe: Some("/usr/bin/bash".into()),
    });
    denied.file = Some(FileRef {
        path: "/home/ana/.local/bin/claude".into(),
        sha256: Some("a".repeat(64)),
        size: Some(221_184_000),
    });
    let mut killed = denied.clone();
    killed.kind = EventKind::ProcessKilled;
    killed.outcome = Some(Outcome::Killed);
    killed.sensor = Some("proc_connector".into());
    let mut installed = o.event(EventKind::InstalledDetected);
    installed.outcome = Some(Outcome::Reported);
    installed.sensor = Some("install_watch".into());
    installed.rule = Some(RuleRef {
        selector: "package".into(),
        pattern: "npm:@anthropic-ai/claude-code".into(),
        matched: "npm:@anthropic-ai/claude-code".into(),
        ..rule()
    });
    installed.file = Some(FileRef {
        path: "/home/ana/.npm-global/lib/node_modules/@anthropic-ai/claude-code".into(),
        sha256: None,
        size: None,
    });
    installed.process = Some(ProcessRef {
        uid: Some(1000),
        user: Some("ana".into()),
        ..ProcessRef::default()
    });
    installed.message = Some("package npm:@anthropic-ai/claude-code 2.1.332".into());
    let mut started = o.event(EventKind::AgentStarted);
    started.policy = Some(policy());
    started.message = Some("fanotify=running".into());
    let mut prev = GENESIS_HASH.to_string();
    let mut out = Vec::new();
    for (i, (name, e)) in [
        ("exec_denied", denied),
        ("process_killed", killed),
        ("installed_detected", installed),
        ("agent_started", started),
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
    for (name, e) in events() {
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
    assert_eq!(v["action_id"], 2);
    assert_eq!(v["disposition_id"], 2);
    assert_eq!(v["time"], 1_795_723_213_123i64);
    let h = &v["process"]["file"]["hashes"][0];
    assert_eq!(h["algorithm_id"], 3);
    assert_eq!(h["value"], "a".repeat(64));
    let x = ecs::to_ecs(&e);
    assert_eq!(x["event"]["kind"], "alert");
    assert_eq!(x["event"]["type"], serde_json::json!(["start", "denied"]));
    assert_eq!(x["process"]["hash"]["sha256"], "a".repeat(64));
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
