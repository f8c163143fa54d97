//! Collector benchmarks (issue 5), SQLite and PostgreSQL side by side in one run:
//! - ingest: events/s over real HTTP on loopback, batches of 500 chained events from 4 hosts
//!   sent by 2 client threads, and the p50/p99 request latency;
//! - a reviewer query by host and rule (a page of 1,000) over 1,000,000 stored events.
//!
//! `cargo bench -p interdict-collector --bench ingest` (as root: PostgreSQL runs as `postgres`).
//! `INGEST_EVENTS` (default 200,000) and `QUERY_EVENTS` (default 1,000,000) change the sizes.

#[path = "../tests/support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use interdict_collector::{App, Background, Query, Store};
use interdict_event::{Event, EventKind, Origin, Outcome, ProcessRef, RuleRef, GENESIS_HASH};

const BATCH: usize = 500;
const HOSTS: usize = 4;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// `n` chained, realistic exec_denied events of `host`.
fn chain(host: &str, n: usize) -> Vec<Event> {
    let o = Origin {
        host_id: host.into(),
        hostname: format!("{host}.corp.example"),
    };
    let mut prev = GENESIS_HASH.to_string();
    (0..n)
        .map(|i| {
            let mut e = o.event(EventKind::ExecDenied);
            e.outcome = Some(Outcome::Denied);
            e.sensor = Some("fanotify".into());
            e.rule = Some(RuleRef {
                id: ["claude-code", "codex-cli", "gemini-cli", "aider"][i % 4].into(),
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
                exe: Some("/home/ana/.local/bin/claude".into()),
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
            e.seq = Some(i as u64 + 1);
            e.prev_hash = Some(prev.clone());
            prev = e.record_hash();
            e
        })
        .collect()
}

fn serve(store: Store) -> Background {
    let app = App {
        store,
        silent_after_ms: 60_000,
    };
    Background::start("127.0.0.1:0", app, None).unwrap()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Ingest `total` events over HTTP; (events/s, p50, p99).
fn ingest(name: &str, store: Store, total: usize) -> (f64, Duration, Duration) {
    let tokens: Vec<(String, String)> = (0..HOSTS)
        .map(|h| {
            let host = format!("{name}-host-{h}");
            let t = store.enroll(&host, &host).unwrap().unwrap();
            (host, t)
        })
        .collect();
    let per_host = total / HOSTS;
    // Bodies are built before the clock starts: the agent side is not measured here.
    let bodies: Vec<(String, Vec<String>)> = tokens
        .iter()
        .map(|(host, t)| {
            let evs = chain(host, per_host);
            let b = evs
                .chunks(BATCH)
                .map(|c| serde_json::json!({ "events": c }).to_string())
                .collect();
            (t.clone(), b)
        })
        .collect();
    let server = serve(store);
    let start = Instant::now();
    let mut handles = Vec::new();
    // 2 client threads, each sending the batches of 2 hosts in turn.
    for pair in bodies.chunks(HOSTS / 2) {
        let pair = pair.to_vec();
        let url = format!("http://{}/v1/events", server.addr());
        handles.push(std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut lat = Vec::new();
            let n = pair[0].1.len();
            for i in 0..n {
                for (t, bodies) in &pair {
                    let s = Instant::now();
                    let r = agent
                        .post(&url)
                        .header("Authorization", &format!("Bearer {t}"))
                        .content_type("application/json")
                        .send(&bodies[i])
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    lat.push(s.elapsed());
                }
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let secs = start.elapsed().as_secs_f64();
    (
        (per_host * HOSTS) as f64 / secs,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
    )
}

/// Fill to `total` events (through the store, in batches), then time 20 queries.
fn query(store: &Store, total: usize) -> (Duration, Duration, usize) {
    let hosts = 20;
    for h in 0..hosts {
        let host = format!("q-host-{h}");
        store.enroll(&host, &host).unwrap();
        for c in chain(&host, total / hosts).chunks(5000) {
            store.ingest(&host, c.to_vec()).unwrap();
        }
    }
    let mut lat = Vec::new();
    let mut rows = 0;
    for i in 0..20 {
        let q = Query {
            host: Some(format!("q-host-{}", i % hosts)),
            rule: Some("codex-cli".into()),
            limit: Some(1000),
            ..Default::default()
        };
        let s = Instant::now();
        let (evs, _) = store.query(&q).unwrap();
        lat.push(s.elapsed());
        rows = evs.len();
    }
    (pct(&mut lat, 0.5), pct(&mut lat, 0.99), rows)
}

fn main() {
    let total = env_usize("INGEST_EVENTS", 200_000);
    let qtotal = env_usize("QUERY_EVENTS", 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    println!(
        "collector ingest: {total} events, batches of {BATCH}, {HOSTS} hosts, 2 client threads; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let pg = pg::Pg::start();
    for name in ["sqlite", "postgresql"] {
        let store = match name {
            "sqlite" => Store::open(&dir.path().join("ingest.db")).unwrap(),
            _ => Store::open_postgres(&pg.params()).unwrap(),
        };
        let (rate, p50, p99) = ingest(name, store, total);
        println!(
            "  {name:<10} {rate:>9.0} events/s   request p50 {:>6.1} ms  p99 {:>6.1} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    println!("reviewer query (host + rule, page of 1,000) over {qtotal} stored events:");
    let pg2 = pg::Pg::start();
    for name in ["sqlite", "postgresql"] {
        let store = match name {
            "sqlite" => Store::open(&dir.path().join("query.db")).unwrap(),
            _ => Store::open_postgres(&pg2.params()).unwrap(),
        };
        let (p50, p99, rows) = query(&store, qtotal);
        println!(
            "  {name:<10} p50 {:>6.2} ms  p99 {:>6.2} ms  ({rows} rows per page)",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
}
