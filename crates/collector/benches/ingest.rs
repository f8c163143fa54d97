//! Collector benchmarks (issues 5 and 13), SQLite and PostgreSQL side by side in one run:
//! - ingest: events/s over real HTTP on loopback, batches of 500 chained events from 4 hosts
//!   sent by 2 client threads, and the p50/p99 request latency;
//! - a reviewer query by host and rule (a page of 1,000) over 1,000,000 stored events;
//! - full re-verification of those 1,000,000 events (every record re-hashed and re-linked from
//!   the stored bytes), by the collector itself;
//! - the fleet: the `interdict-collector` program as its own process, `FLEET_HOSTS` hosts
//!   (5,000) each keeping a connection open and sending one event a minute, time compressed
//!   `FLEET_SPEEDUP` times (5: ten minutes of the fleet's traffic in two), with 2 reviewers
//!   querying all along; p50/p99 ingest latency and the collector's peak RSS.
//!
//! `cargo bench -p interdict-collector --bench ingest` (as root: PostgreSQL runs as `postgres`).
//! `INGEST_EVENTS` (200,000), `QUERY_EVENTS` (1,000,000), `FLEET_HOSTS` (5,000),
//! `FLEET_MINUTES` (10), `FLEET_SPEEDUP` (5) and `ONLY` (`ingest`, `query`, `fleet`) change it.

#[path = "../tests/support/pg.rs"]
mod pg;

use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

use interdict_collector::{App, Background, Config, Incoming, Query, Store};
use interdict_event::{Event, EventKind, Origin, Outcome, ProcessRef, RuleRef, GENESIS_HASH};

const BATCH: usize = 500;
const HOSTS: usize = 4;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn event(o: &Origin, i: usize) -> Event {
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
    e
}

/// `n` chained, realistic exec_denied events of `host`, as the lines the agent sends.
fn chain(host: &str, n: usize) -> Vec<String> {
    let o = Origin {
        host_id: host.into(),
        hostname: format!("{host}.corp.example"),
    };
    let mut prev = GENESIS_HASH.to_string();
    (0..n)
        .map(|i| {
            let mut e = event(&o, i);
            e.seq = Some(i as u64 + 1);
            e.prev_hash = Some(prev.clone());
            let line = e.to_json_line();
            prev = interdict_event::sha256_hex(line.as_bytes());
            line
        })
        .collect()
}

fn body(lines: &[String]) -> String {
    format!("{{\"events\":[{}]}}", lines.join(","))
}

/// No rate limits in the way of a throughput measurement.
fn unlimited() -> Config {
    let mut c = Config::default();
    let l = &mut c.limits;
    l.host_requests_per_s = 1_000_000;
    l.host_requests_burst = 1_000_000;
    l.host_events_per_s = 1_000_000_000;
    l.host_events_burst = 1_000_000_000;
    l.host_quota_mib = 0;
    c
}

fn serve(store: Store) -> Background {
    let app = App::new(store, unlimited(), interdict_collector::keys::generate());
    Background::start("127.0.0.1:0", app, None).unwrap()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Ingest `total` events over HTTP; (events/s, p50, p99).
fn ingest(name: &str, store: Store, total: usize) -> (f64, Duration, Duration) {
    let tokens: Vec<(String, String)> = (0..HOSTS)
        .map(|h| {
            let host = format!("{name}-host-{h}");
            let t = store
                .enroll(&host, &host, u64::MAX)
                .unwrap()
                .unwrap()
                .unwrap();
            (host, t)
        })
        .collect();
    let per_host = total / HOSTS;
    // Bodies are built before the clock starts: the agent side is not measured here.
    let bodies: Vec<(String, Vec<String>)> = tokens
        .iter()
        .map(|(host, t)| {
            let evs = chain(host, per_host);
            (t.clone(), evs.chunks(BATCH).map(body).collect())
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

/// Fill to `total` events (through the store, in batches).
fn fill(store: &Store, total: usize) {
    let hosts = 20;
    for h in 0..hosts {
        let host = format!("q-host-{h}");
        store.enroll(&host, &host, u64::MAX).unwrap().unwrap();
        for c in chain(&host, total / hosts).chunks(5000) {
            let inc = c.iter().map(|l| Incoming::parse(l).unwrap()).collect();
            store.ingest(&host, inc, 0).unwrap();
        }
    }
}

/// Time 20 queries.
fn query(store: &Store) -> (Duration, Duration, usize) {
    let mut lat = Vec::new();
    let mut rows = 0;
    for i in 0..20 {
        let q = Query {
            host: Some(format!("q-host-{}", i % 20)),
            rule: Some("codex-cli".into()),
            limit: Some(1000),
            ..Default::default()
        };
        let s = Instant::now();
        let (evs, _) = store.query(&q, 10_000, 4 << 20).unwrap();
        lat.push(s.elapsed());
        rows = evs.len();
    }
    (pct(&mut lat, 0.5), pct(&mut lat, 0.99), rows)
}

/// The reviewer API, as `interdict logs verify` uses it.
struct Http {
    url: String,
    token: String,
}

impl interdict_chain::remote::Api for Http {
    fn get(
        &mut self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<(String, Option<String>), interdict_chain::remote::ApiError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .get(&format!("{}{path}", self.url))
            .query_pairs(query.iter().copied())
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()?;
        let next = r
            .headers()
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = r.body_mut().with_config().limit(1 << 30).read_to_string()?;
        Ok((body, next))
    }
}

/// A keep-alive HTTP/1.1 connection, as an agent holds one.
struct Conn {
    s: std::io::BufReader<std::net::TcpStream>,
}

impl Conn {
    fn open(addr: std::net::SocketAddr) -> Conn {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            s: std::io::BufReader::new(s),
        }
    }

    /// One request; the status.
    fn call(&mut self, method: &str, path: &str, token: &str, body: &str) -> u16 {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: c\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.s.get_mut().write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.s.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut len = 0;
        loop {
            line.clear();
            self.s.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut b = vec![0u8; len];
        self.s.read_exact(&mut b).unwrap();
        status
    }
}

/// Peak and current RSS of a process, KiB.
fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let f = |k: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap()
    };
    (f("VmHWM:"), f("VmRSS:"))
}

/// The fleet against the collector program; prints the figures.
fn fleet(name: &str, dir: &std::path::Path, pg: Option<&pg::Pg>) {
    let hosts = env_usize("FLEET_HOSTS", 5000);
    let minutes = env_usize("FLEET_MINUTES", 10);
    let speedup = env_usize("FLEET_SPEEDUP", 5) as f64;
    let db = dir.join(format!("fleet-{name}.db"));
    let store = match pg {
        None => Store::open(&db).unwrap(),
        Some(pg) => Store::open_postgres(&pg.params()).unwrap(),
    };
    let tokens: Vec<String> = (0..hosts)
        .map(|h| {
            let host = format!("fleet-{h:05}");
            store
                .enroll(&host, &host, u64::MAX)
                .unwrap()
                .unwrap()
                .unwrap()
        })
        .collect();
    let reviewer = store.add_reviewer("bench").unwrap();
    drop(store);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_interdict-collector"));
    cmd.arg("--db").arg(&db);
    if let Some(pg) = pg {
        cmd.args(["--postgres", &pg.params()]);
    }
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let addr: std::net::SocketAddr = loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the collector stopped"
        );
        if let Some(a) = line
            .trim()
            .strip_prefix("interdict-collector: listening on http://")
        {
            break a.parse().unwrap();
        }
    };
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = err.read_to_string(&mut sink);
    });
    // Each host: its own connection; one event per (compressed) minute, spread evenly.
    let period = Duration::from_secs_f64(60.0 / speedup);
    let workers = 16;
    let start = Instant::now() + Duration::from_secs(2);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut handles = Vec::new();
    for w in 0..workers {
        let mine: Vec<(usize, String)> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| i % workers == w)
            .map(|(i, t)| (i, t.clone()))
            .collect();
        handles.push(std::thread::spawn(move || {
            let mut conns: Vec<(Conn, String, String, Origin, usize)> = mine
                .into_iter()
                .map(|(i, t)| {
                    let host = format!("fleet-{i:05}");
                    (
                        Conn::open(addr),
                        t,
                        GENESIS_HASH.to_string(),
                        Origin {
                            host_id: host.clone(),
                            hostname: format!("{host}.corp.example"),
                        },
                        i,
                    )
                })
                .collect();
            let mut lat = Vec::new();
            let n = conns.len();
            for round in 0..minutes {
                for (k, (c, t, prev, o, i)) in conns.iter_mut().enumerate() {
                    let at = start
                        + period.mul_f64(round as f64)
                        + period.mul_f64((k as f64 + (w as f64 / workers as f64)) / n as f64);
                    if let Some(d) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    let mut e = event(o, *i + round);
                    e.seq = Some(round as u64 + 1);
                    e.prev_hash = Some(prev.clone());
                    let line = e.to_json_line();
                    *prev = interdict_event::sha256_hex(line.as_bytes());
                    let s = Instant::now();
                    let st = c.call("POST", "/v1/events", t, &body(&[line]));
                    lat.push(s.elapsed());
                    assert_eq!(st, 200);
                }
            }
            lat
        }));
    }
    let mut reviewers = Vec::new();
    for r in 0..2 {
        let (token, stop) = (reviewer.clone(), stop.clone());
        reviewers.push(std::thread::spawn(move || {
            let mut c = Conn::open(addr);
            let mut lat = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let path = if r == 0 {
                    format!("/v1/events?host=fleet-{:05}&limit=1000", i % 5000)
                } else {
                    format!("/v1/events?rule=codex-cli&after={}&limit=1000", i * 97)
                };
                let s = Instant::now();
                assert_eq!(c.call("GET", &path, &token, ""), 200);
                lat.push(s.elapsed());
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let took = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut qlat: Vec<Duration> = reviewers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let (peak, now) = rss(child.id());
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "  {name:<10} {} requests in {:.0} s ({:.0}/s): ingest p50 {:.1} ms p99 {:.1} ms max {:.1} ms; {} reviewer queries p50 {:.1} ms p99 {:.1} ms; collector RSS peak {} MiB, at the end {} MiB",
        lat.len(),
        took.as_secs_f64(),
        lat.len() as f64 / took.as_secs_f64(),
        ms(pct(&mut lat, 0.5)),
        ms(pct(&mut lat, 0.99)),
        ms(pct(&mut lat, 1.0)),
        qlat.len(),
        ms(pct(&mut qlat, 0.5)),
        ms(pct(&mut qlat, 0.99)),
        peak >> 10,
        now >> 10
    );
}

fn main() {
    let only = std::env::var("ONLY").unwrap_or_default();
    let want = |p: &str| only.is_empty() || only == p;
    let total = env_usize("INGEST_EVENTS", 200_000);
    let qtotal = env_usize("QUERY_EVENTS", 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    println!(
        "collector benchmarks; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if want("ingest") {
        println!("ingest: {total} events, batches of {BATCH}, {HOSTS} hosts, 2 client threads");
        let pg = pg::Pg::start();
        for name in ["sqlite", "postgresql"] {
            let store = match name {
                "sqlite" => Store::open(&dir.path().join("ingest.db")).unwrap(),
                _ => Store::open_postgres(&pg.params()).unwrap(),
            };
            let (rate, p50, p99) = ingest(name, store, total);
            println!(
                "  {name:<10} {rate:>9.0} events/s   request p50 {:>6.1} ms  p99 {:>6.1} ms",
                ms(p50),
                ms(p99)
            );
        }
    }
    if want("query") {
        println!(
            "reviewer query (host + rule, page of 1,000) and full re-verification over {qtotal} stored events:"
        );
        let pg2 = pg::Pg::start();
        let key = interdict_collector::keys::generate();
        let public = interdict_collector::keys::public_hex(&key);
        for name in ["sqlite", "postgresql"] {
            let store = match name {
                "sqlite" => Store::open(&dir.path().join("query.db")).unwrap(),
                _ => Store::open_postgres(&pg2.params()).unwrap(),
            };
            let s = Instant::now();
            fill(&store, qtotal);
            let filled = s.elapsed();
            let (p50, p99, rows) = query(&store);
            let s = Instant::now();
            let reports = store.verify(&public).unwrap();
            let verified = s.elapsed();
            let records: u64 = reports.iter().map(|r| r.records).sum();
            assert!(reports.iter().all(|r| r.intact()));
            // The same, client-side over HTTP, as `interdict logs verify` does it.
            let second = match name {
                "sqlite" => Store::open(&dir.path().join("query.db")).unwrap(),
                _ => Store::open_postgres(&pg2.params()).unwrap(),
            };
            let reviewer = second.add_reviewer("bench").unwrap();
            let server = Background::start(
                "127.0.0.1:0",
                App::new(second, unlimited(), key.clone()),
                None,
            )
            .unwrap();
            let s = Instant::now();
            let v = interdict_chain::remote::verify(
                &mut Http {
                    url: format!("http://{}", server.addr()),
                    token: reviewer,
                },
                &interdict_chain::remote::Options {
                    key: Some(public.clone()),
                    ..Default::default()
                },
            )
            .unwrap();
            let client = s.elapsed();
            assert!(v.ok(), "{}", v.render());
            drop(server);
            println!(
                "  {name:<10} query p50 {:>6.2} ms  p99 {:>6.2} ms  ({rows} rows per page); verify {records} records in {:.2} s ({:.0} records/s), client-side over HTTP {:.2} s; filled in {:.0} s",
                ms(p50),
                ms(p99),
                verified.as_secs_f64(),
                records as f64 / verified.as_secs_f64(),
                client.as_secs_f64(),
                filled.as_secs_f64()
            );
        }
    }
    if want("fleet") {
        println!(
            "fleet: {} hosts x 1 event/min for {} min, time compressed {}x, 2 reviewers querying; the collector program on its own:",
            env_usize("FLEET_HOSTS", 5000),
            env_usize("FLEET_MINUTES", 10),
            env_usize("FLEET_SPEEDUP", 5)
        );
        fleet("sqlite", dir.path(), None);
        let pg3 = pg::Pg::start();
        fleet("postgresql", dir.path(), Some(&pg3));
    }
}
