//! The reviewer's console over 1,000,000 stored events (issue 17), SQLite and PostgreSQL side by
//! side in one run:
//! - the overview page over real HTTP (a signed-in session), p50 / p99 of 20 requests, once the
//!   summaries are counted; and the first request after the events were stored, which counts
//!   them (what a collector does once after the upgrade, in the background);
//! - the peer: the same numbers (violations per day by rule, by host, by user, over 30 days)
//!   counted straight from the events table, as the overview would without its summaries;
//! - the other pages: violations (unfiltered, and by rule and user), one event with its chain
//!   checks, the fleet, one host's timeline, a person's record; p50 / p99 of 10 requests each.
//!
//! `cargo bench -p interdict-collector --bench console` (as root: PostgreSQL runs as
//! `postgres`). `CONSOLE_EVENTS` (1,000,000) and `ONLY` (`sqlite`, `postgresql`) change it;
//! `ANALYZE=1` has PostgreSQL gather its statistics right after the events are stored.

#[path = "../tests/support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use interdict_collector::console::{auth, data, rollup};
use interdict_collector::{App, Background, Config, Incoming, Store};
use interdict_event::{
    Event, EventKind, FileRef, Origin, Outcome, PolicyRef, ProcessRef, RuleRef, GENESIS_HASH,
};

const HOSTS: usize = 20;
const RULES: [&str; 4] = ["claude-code", "codex-cli", "gemini-cli", "aider"];

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Event `i` of a host: mostly denied, reported or killed launches by 50 users, spread over the
/// last 30 days; every 100th a heartbeat, every 200th an install event.
fn event(o: &Origin, i: usize, n: usize) -> Event {
    let now = std::time::SystemTime::now();
    let back = Duration::from_millis((30 * 86_400_000u64) * (n - i) as u64 / n as u64);
    let kind = match i % 200 {
        0 => EventKind::InstalledDetected,
        100 => EventKind::InstalledRemoved,
        x if x % 100 == 50 => EventKind::Heartbeat,
        x if x % 7 == 0 => EventKind::ExecReported,
        x if x % 11 == 0 => EventKind::ProcessKilled,
        _ => EventKind::ExecDenied,
    };
    let mut e = o.event(kind);
    e.time = interdict_event::rfc3339(now - back);
    e.policy = Some(PolicyRef {
        name: "ai-coding-agents".into(),
        version: "2026.11".into(),
        sha256: "b".repeat(64),
        mode: "enforce".into(),
    });
    if kind == EventKind::Heartbeat {
        e.message = Some(
            serde_json::json!({"version": "0.1.0", "policy_name": "ai-coding-agents",
                "policy_version": "2026.11", "policy_sha256": "b".repeat(64), "mode": "enforce",
                "sensors": [{"name": "fanotify", "state": "running", "detail": ""}]})
            .to_string(),
        );
        return e;
    }
    let rule = RULES[i % 4];
    e.outcome = Some(match kind {
        EventKind::ExecDenied => Outcome::Denied,
        EventKind::ProcessKilled => Outcome::Killed,
        _ => Outcome::Reported,
    });
    e.sensor = Some("fanotify".into());
    e.rule = Some(RuleRef {
        id: rule.into(),
        name: "Claude Code".into(),
        risk: "high".into(),
        action: "block".into(),
        selector: "sha256".into(),
        pattern: "a".repeat(64),
        matched: "a".repeat(64),
    });
    e.process = Some(ProcessRef {
        pid: 10_000 + i as u32,
        ppid: Some(999),
        exe: Some("/usr/bin/bash".into()),
        argv: vec![
            "claude".into(),
            "--print".into(),
            "summarize the diff".into(),
        ],
        cwd: Some("/home/ana/src/payments".into()),
        uid: Some(1000),
        user: Some(format!("user{}", i % 50)),
        start_time: Some(123_456 + i as u64),
        parent_exe: Some("/usr/bin/bash".into()),
    });
    e.file = Some(FileRef {
        path: format!("/home/user{}/.local/bin/{rule}", i % 50),
        sha256: Some("a".repeat(64)),
        size: Some(221_184_000),
    });
    e
}

fn fill(store: &Store, total: usize) {
    let per = total / HOSTS;
    for h in 0..HOSTS {
        let host = format!("c-host-{h}");
        store
            .enroll(&host, &format!("{host}.corp.example"), 1_000_000)
            .unwrap()
            .expect("under the host limit");
        let o = Origin {
            host_id: host.clone(),
            hostname: format!("{host}.corp.example"),
        };
        let mut prev = GENESIS_HASH.to_string();
        let mut batch = Vec::with_capacity(5000);
        for i in 0..per {
            let mut e = event(&o, i, per);
            e.seq = Some(i as u64 + 1);
            e.prev_hash = Some(prev.clone());
            let line = e.to_json_line();
            prev = interdict_event::sha256_hex(line.as_bytes());
            batch.push(Incoming::parse(&line).unwrap());
            if batch.len() == 5000 {
                store.ingest(&host, std::mem::take(&mut batch), 0).unwrap();
            }
        }
        if !batch.is_empty() {
            store.ingest(&host, batch, 0).unwrap();
        }
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// GET a console page with the session; its time (the whole body read).
fn get(url: &str, session: &str) -> (Duration, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let t = Instant::now();
    let mut r = agent
        .get(url)
        .header("Cookie", &format!("interdict_session={session}"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{url}");
    let body = r
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .unwrap();
    (t.elapsed(), body)
}

fn times(url: &str, session: &str, n: usize) -> (Duration, Duration) {
    let mut v: Vec<Duration> = (0..n).map(|_| get(url, session).0).collect();
    (pct(&mut v, 0.5), pct(&mut v, 0.99))
}

/// The overview's numbers straight from the events table.
fn peer(backend: &str, sqlite: &std::path::Path, pg: Option<&pg::Pg>) -> Duration {
    let from = interdict_collector::store::now_ms() - 30 * 86_400_000;
    let kinds = rollup::in_list(rollup::VIOLATION_KINDS);
    let qs: Vec<String> = ["rule_id", "host_id", "user_name"]
        .iter()
        .map(|c| {
            format!(
                "SELECT time_ms / 86400000, {c}, COUNT(*) FROM events WHERE kind IN ({kinds}) AND time_ms >= {from} GROUP BY time_ms / 86400000, {c}"
            )
        })
        .collect();
    let t = Instant::now();
    let mut rows = 0usize;
    if backend == "sqlite" {
        let c = rusqlite::Connection::open(sqlite).unwrap();
        for q in &qs {
            let mut st = c.prepare(q).unwrap();
            rows += st.query_map([], |_| Ok(())).unwrap().count();
        }
    } else {
        let mut c = postgres::Client::connect(&pg.unwrap().params(), postgres::NoTls).unwrap();
        for q in &qs {
            rows += c.query(q.as_str(), &[]).unwrap().len();
        }
    }
    assert!(rows > 0);
    t.elapsed()
}

fn main() {
    let total = env_usize("CONSOLE_EVENTS", 1_000_000);
    let only = std::env::var("ONLY").unwrap_or_default();
    let mut report = Vec::new();
    for backend in ["sqlite", "postgresql"] {
        if !only.is_empty() && only != backend {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("console.db");
        let pg = (backend == "postgresql").then(pg::Pg::start);
        let open = || match &pg {
            None => Store::open(&db).unwrap(),
            Some(pg) => Store::open_postgres(&pg.params()).unwrap(),
        };
        let store = open();
        let t = Instant::now();
        fill(&store, total);
        eprintln!(
            "{backend}: {total} events stored in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        if let Err(e) = store.optimize() {
            eprintln!("optimize: {e}");
        }
        // PostgreSQL plans from statistics its autovacuum gathers some time after a bulk load;
        // `ANALYZE=1` gathers them now, so that runs do not depend on when that happened.
        if let (Some(pg), Ok("1")) = (&pg, std::env::var("ANALYZE").as_deref()) {
            let mut c = postgres::Client::connect(&pg.params(), postgres::NoTls).unwrap();
            c.batch_execute("ANALYZE").unwrap();
        }
        store.add_reviewer("bench").unwrap();
        let secret = auth::create_link(&store, "bench").unwrap().unwrap();
        let (session, _) = auth::redeem(&store, &secret).unwrap().unwrap();
        // The first count of the summaries, as the first overview request (or the collector's
        // background work) after the events were stored does it.
        let t = Instant::now();
        let p = rollup::refresh(&store, Duration::from_secs(3600)).unwrap();
        let cold = t.elapsed();
        assert!(p.done());
        let running = Background::start(
            "127.0.0.1:0",
            App::new(
                store,
                Config::default(),
                interdict_collector::keys::generate(),
            ),
            None,
        )
        .unwrap();
        let url = format!("http://{}", running.addr());
        let (_, home) = get(&format!("{url}/console/"), &session);
        assert!(home.contains("id=\"total-violations\""), "{home}");
        let overview = times(&format!("{url}/console/"), &session, 20);
        let mut peers: Vec<Duration> = (0..5).map(|_| peer(backend, &db, pg.as_ref())).collect();
        let peer50 = pct(&mut peers, 0.5);
        // A cursor to open one event with.
        let (_, list) = get(&format!("{url}/console/events"), &session);
        let cursor = list
            .split("href=\"/console/events/")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_string();
        let pages = [
            ("violations", format!("{url}/console/events")),
            (
                "violations, rule + user",
                format!("{url}/console/events?rule=codex-cli&user=user7"),
            ),
            ("one event", format!("{url}/console/events/{cursor}")),
            ("hosts", format!("{url}/console/hosts")),
            ("one host", format!("{url}/console/hosts/c-host-3")),
            ("a person", format!("{url}/console/person?user=user7")),
        ];
        let mut rows = vec![];
        for (name, u) in &pages {
            rows.push((name.to_string(), times(u, &session, 10)));
        }
        // The person's record in parts, on a second connection to the same database.
        let direct = open();
        let mut part = |name: &str, f: &dyn Fn()| {
            let mut v: Vec<Duration> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed()
                })
                .collect();
            rows.push((name.to_string(), (pct(&mut v, 0.5), pct(&mut v, 0.99))));
        };
        part("a person: the tally (query only)", &|| {
            assert!(!data::person_tally(&direct, "user7").unwrap().is_empty())
        });
        part("a person: the policy history (query only)", &|| {
            assert!(!data::person_policies(&direct, "user7")
                .unwrap()
                .0
                .is_empty())
        });
        report.push((backend, total, cold, overview, peer50, rows));
        drop(running);
    }
    println!();
    println!("| store, events | summaries counted (once) | overview p50 / p99 | peer: counted from the events | ratio |");
    println!("|---|---|---|---|---|");
    for (b, n, cold, (p50, p99), peer, _) in &report {
        println!(
            "| {b}, {n} | {:.2} s | {:.1} / {:.1} ms | {:.1} ms | {:.0}x |",
            cold.as_secs_f64(),
            ms(*p50),
            ms(*p99),
            ms(*peer),
            ms(*peer) / ms(*p50)
        );
    }
    println!();
    println!("| store | page | p50 / p99 |");
    println!("|---|---|---|");
    for (b, _, _, _, _, rows) in &report {
        for (name, (p50, p99)) in rows {
            println!("| {b} | {name} | {:.1} / {:.1} ms |", ms(*p50), ms(*p99));
        }
    }
}
