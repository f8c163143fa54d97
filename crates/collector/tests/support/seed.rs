//! A seeded fleet for the console's tests: hosts that send chained events of every kind the
//! console shows, at chosen times, over real HTTP.

use interdict_event::{
    Event, EventKind, FileRef, Origin, Outcome, PolicyRef, ProcessRef, RuleRef, GENESIS_HASH,
};

use super::{enroll_as, ingest, Server};

/// A host as its agent: its token and where its chain stands.
pub struct Agent {
    pub id: String,
    pub hostname: String,
    pub token: String,
    pub seq: u64,
    pub prev: String,
    /// Every event sent, in order.
    pub sent: Vec<Event>,
}

impl Agent {
    pub fn enroll(s: &Server, id: &str, hostname: &str) -> Agent {
        Agent {
            id: id.into(),
            hostname: hostname.into(),
            token: enroll_as(s, id, hostname),
            seq: 0,
            prev: GENESIS_HASH.into(),
            sent: Vec::new(),
        }
    }

    /// A new event of this host, `days_ago` days (and `mins` minutes) before now.
    pub fn event(&self, kind: EventKind, days_ago: u64, mins: u64) -> Event {
        let o = Origin {
            host_id: self.id.clone(),
            hostname: self.hostname.clone(),
        };
        let mut e = o.event(kind);
        let t = std::time::SystemTime::now()
            - std::time::Duration::from_secs(days_ago * 86_400 + mins * 60);
        e.time = interdict_event::rfc3339(t);
        e.policy = Some(PolicyRef {
            name: "ai-coding-agents".into(),
            version: "2026.11".into(),
            sha256: "b".repeat(64),
            mode: "enforce".into(),
        });
        e
    }

    /// A violation: `kind` with `outcome` under `rule` by `user`, running `argv`.
    #[allow(clippy::too_many_arguments)]
    pub fn violation(
        &self,
        kind: EventKind,
        outcome: Outcome,
        rule: &str,
        action: &str,
        user: &str,
        argv: &[&str],
        days_ago: u64,
        mins: u64,
    ) -> Event {
        let mut e = self.event(kind, days_ago, mins);
        e.outcome = Some(outcome);
        e.sensor = Some("fanotify".into());
        e.rule = Some(RuleRef {
            id: rule.into(),
            name: format!("{rule} tool"),
            risk: "high".into(),
            action: action.into(),
            selector: "name".into(),
            pattern: rule.into(),
            matched: rule.into(),
        });
        e.process = Some(ProcessRef {
            pid: 4242,
            ppid: Some(4100),
            exe: Some("/usr/bin/bash".into()),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            cwd: Some(format!("/home/{user}/src")),
            uid: Some(1000),
            user: Some(user.into()),
            start_time: Some(1),
            parent_exe: Some("/usr/bin/bash".into()),
        });
        e.file = Some(FileRef {
            path: format!("/home/{user}/.local/bin/{rule}"),
            sha256: Some("a".repeat(64)),
            size: Some(1024),
        });
        e
    }

    /// An install event (`installed_detected`, `installed_removed`) of `rule` at `path`.
    pub fn install(
        &self,
        kind: EventKind,
        rule: &str,
        path: &str,
        user: &str,
        days_ago: u64,
        mins: u64,
    ) -> Event {
        let mut e = self.event(kind, days_ago, mins);
        e.outcome = Some(Outcome::Reported);
        e.sensor = Some("install_watch".into());
        e.rule = Some(RuleRef {
            id: rule.into(),
            name: format!("{rule} tool"),
            risk: "high".into(),
            action: "block".into(),
            selector: "package".into(),
            pattern: rule.into(),
            matched: rule.into(),
        });
        e.process = Some(ProcessRef {
            pid: 0,
            uid: Some(1000),
            user: Some(user.into()),
            ..Default::default()
        });
        e.file = Some(FileRef {
            path: path.into(),
            sha256: None,
            size: None,
        });
        e
    }

    /// A heartbeat saying what the agent runs; `failing` names a sensor that is not working.
    pub fn heartbeat(&self, failing: Option<&str>, mins: u64) -> Event {
        let mut e = self.event(EventKind::Heartbeat, 0, mins);
        let mut sensors =
            vec![serde_json::json!({"name": "fanotify", "state": "running", "detail": "2 mounts"})];
        if let Some(f) = failing {
            sensors.push(serde_json::json!({"name": f, "state": "failed", "detail": "inotify limit reached"}));
        }
        e.message = Some(
            serde_json::json!({
                "version": "0.1.0",
                "policy_name": "ai-coding-agents",
                "policy_version": "2026.11",
                "policy_sha256": "b".repeat(64),
                "mode": "enforce",
                "uptime_s": 100,
                "sensors": sensors,
                "counters": {},
            })
            .to_string(),
        );
        e
    }

    /// Number and chain `events` after what was sent, and send them in one batch.
    pub fn send(&mut self, s: &Server, mut events: Vec<Event>) {
        for e in &mut events {
            self.seq += 1;
            e.seq = Some(self.seq);
            e.prev_hash = Some(self.prev.clone());
            self.prev = e.record_hash();
        }
        ingest(s, &self.token, &events);
        self.sent.extend(events);
    }

    /// Skip `n` sequence numbers (records that never arrive: a gap).
    pub fn lose(&mut self, n: u64) {
        for _ in 0..n {
            let mut e = self.event(EventKind::Heartbeat, 0, 0);
            self.seq += 1;
            e.seq = Some(self.seq);
            e.prev_hash = Some(self.prev.clone());
            self.prev = e.record_hash();
        }
    }
}
