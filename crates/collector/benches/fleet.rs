//! Fleet control plane benchmarks (issue 15), SQLite and PostgreSQL side by side in one run,
//! over real HTTP on loopback (the collector library in this process, `CLIENTS` client threads,
//! each with its own keep-alive connection, taking turns over `FLEET_HOSTS` host tokens):
//!
//! - **rollout**: every host fetches the newly published bundle (`GET /v1/policy`, 200 with the
//!   signed shipped pack, its hash files inside) and the signed approvals (`GET /v1/approvals`);
//! - **steady**: what every heartbeat adds: both fetches, conditional, answered 304;
//! - the **peer**, in the same run: the heartbeat itself (`POST /v1/events`, one chained
//!   `heartbeat` event per host), which every agent sends already;
//! - on the agent's side: opening a bundle of the shipped pack (format, pinned key, ed25519
//!   signature, JSON) against compiling its policy (`Policy::load`, what every reload does).
//!
//! `cargo bench -p interdict-collector --bench fleet` (as root: PostgreSQL runs as `postgres`).
//! `FLEET_HOSTS` (5,000), `CLIENTS` (4) and `ONLY` (`sqlite`, `postgresql`, `agent`) change it.

#[path = "../tests/support/pg.rs"]
mod pg;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use interdict_collector::{App, Background, Config, Store};
use interdict_event::{EventKind, Origin, GENESIS_HASH};
use interdict_fleet::{BundleBody, SecretKey};
use interdict_policy::{IncludedFile, Includes, Policy};

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Files<'a>(&'a BTreeMap<String, String>);

impl Includes for Files<'_> {
    fn read(&self, relative: &str) -> Result<IncludedFile, String> {
        self.0
            .get(relative)
            .map(|t| IncludedFile {
                display_name: relative.to_string(),
                text: t.clone(),
            })
            .ok_or_else(|| "not in the bundle".to_string())
    }
}

/// The shipped pack as a bundle body (its `sha256_files` inside).
fn shipped_pack(version: u64) -> BundleBody {
    let dir = repo().join("policies");
    let policy = std::fs::read_to_string(dir.join("ai-coding-agents.toml")).unwrap();
    let mut files = BTreeMap::new();
    for line in policy.lines() {
        if let Some(rest) = line.trim().strip_prefix("sha256_files = [") {
            for name in rest.trim_end_matches(']').split(',') {
                let name = name.trim().trim_matches('"');
                if !name.is_empty() {
                    files.insert(
                        name.to_string(),
                        std::fs::read_to_string(dir.join(name)).unwrap(),
                    );
                }
            }
        }
    }
    BundleBody {
        version,
        created: "2026-12-01T00:00:00Z".into(),
        policy_sha256: interdict_fleet::sha256_hex(policy.as_bytes()),
        policy,
        files,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// One request per token, spread over `clients` threads with a connection each: (requests/s,
/// p50, p99). `req` returns the status; `want` is the status every answer must have.
fn drive(
    tokens: &[String],
    clients: usize,
    want: &[u16],
    req: impl Fn(&ureq::Agent, usize, &str) -> u16 + Sync,
) -> (f64, Duration, Duration) {
    let start = Instant::now();
    let mut lat: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let req = &req;
                s.spawn(move || {
                    let agent = http_agent();
                    let mut lat = Vec::new();
                    for (i, t) in tokens.iter().enumerate().filter(|(i, _)| i % clients == c) {
                        let s = Instant::now();
                        let st = req(&agent, i, t);
                        lat.push(s.elapsed());
                        assert!(want.contains(&st), "host {i}: {st}");
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    (rate, pct(&mut lat, 0.5), pct(&mut lat, 0.99))
}

fn get(agent: &ureq::Agent, url: &str, token: &str, etag: Option<&str>) -> (u16, usize) {
    let mut r = agent
        .get(url)
        .header("Authorization", &format!("Bearer {token}"));
    if let Some(e) = etag {
        r = r.header("If-None-Match", e);
    }
    let mut resp = r.call().unwrap();
    let st = resp.status().as_u16();
    let n = resp.body_mut().read_to_string().unwrap_or_default().len();
    (st, n)
}

fn line(what: &str, (rate, p50, p99): (f64, Duration, Duration)) -> f64 {
    println!(
        "    {what:<44} {rate:>8.0} requests/s   p50 {:>6.2} ms  p99 {:>6.2} ms",
        ms(p50),
        ms(p99)
    );
    rate
}

fn backend(name: &str, open: impl Fn() -> Store, hosts: usize, clients: usize) {
    let store = open();
    let it = SecretKey::from_seed([7; 32]);
    let bundle = shipped_pack(1).sign(&it).to_text();
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
    // Something for the approvals to carry: one approved digest, signed.
    let keys = interdict_collector::fleet::Keys {
        hash_list: SecretKey::from_seed([8; 32]),
        exceptions: SecretKey::from_seed([9; 32]),
    };
    let app = App::new(
        store,
        Config::default(),
        interdict_collector::keys::generate(),
    )
    .with_fleet_keys(keys);
    let running = Background::start("127.0.0.1:0", app, None).unwrap();
    let url = format!("http://{}", running.addr());
    let store = open();
    store.publish_bundle(&bundle, &[]).unwrap();
    let origin = Origin {
        host_id: "fleet-00000".into(),
        hostname: "fleet-00000".into(),
    };
    let mut learned = origin.event(EventKind::HashLearned);
    learned.rule = Some(interdict_event::RuleRef {
        id: "claude-code".into(),
        name: "Claude Code".into(),
        risk: "high".into(),
        action: "block".into(),
        selector: "path".into(),
        pattern: "x".into(),
        matched: "x".into(),
    });
    learned.file = Some(interdict_event::FileRef {
        path: "/opt/x".into(),
        sha256: Some("ab".repeat(32)),
        size: Some(5000),
    });
    store
        .record_fleet_events("fleet-00000", &[learned])
        .unwrap();
    let (st, body) = post(
        &format!("{url}/v1/learned/{}/approve", "ab".repeat(32)),
        &reviewer,
    );
    assert_eq!(st, 200, "{body}");
    println!(
        "  {name}: {hosts} hosts, {clients} client threads; bundle of the shipped pack: {} bytes",
        bundle.len()
    );
    let policy = format!("{url}/v1/policy");
    let approvals = format!("{url}/v1/approvals");
    let (_, n) = get(&http_agent(), &approvals, &tokens[0], None);
    println!("    (approvals: {n} bytes)");
    line(
        "rollout: GET /v1/policy (200, the bundle)",
        drive(&tokens, clients, &[200], |a, _, t| {
            get(a, &policy, t, None).0
        }),
    );
    line(
        "rollout: GET /v1/approvals (200)",
        drive(&tokens, clients, &[200], |a, _, t| {
            get(a, &approvals, t, None).0
        }),
    );
    // The approvals' ETag (the fleet revision and the minute: a phase that crosses a minute
    // gets 200s until the next fetch, as agents do).
    let etag_a = http_agent()
        .get(&approvals)
        .header("Authorization", &format!("Bearer {}", tokens[0]))
        .call()
        .unwrap()
        .headers()
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let p = line(
        "steady: GET /v1/policy If-None-Match (304)",
        drive(&tokens, clients, &[304], |a, _, t| {
            get(a, &policy, t, Some("\"1\"")).0
        }),
    );
    let q = line(
        "steady: GET /v1/approvals If-None-Match (304)",
        drive(&tokens, clients, &[304, 200], |a, _, t| {
            get(a, &approvals, t, Some(&etag_a)).0
        }),
    );
    // The peer: each host's heartbeat, the first event of its chain.
    let bodies: Vec<String> = (0..hosts)
        .map(|h| {
            let o = Origin {
                host_id: format!("fleet-{h:05}"),
                hostname: format!("fleet-{h:05}"),
            };
            let mut e = o.event(EventKind::Heartbeat);
            e.message = Some(
                serde_json::json!({"version": "0.1.0", "mode": "enforce", "policy_source": "bundle", "policy_bundle": 1})
                    .to_string(),
            );
            e.seq = Some(1);
            e.prev_hash = Some(GENESIS_HASH.to_string());
            format!("{{\"events\":[{}]}}", e.to_json_line())
        })
        .collect();
    let events = format!("{url}/v1/events");
    let h = line(
        "peer: POST /v1/events (a heartbeat)",
        drive(&tokens, clients, &[200], |a, i, t| {
            a.post(&events)
                .header("Authorization", &format!("Bearer {t}"))
                .content_type("application/json")
                .send(bodies[i].as_str())
                .unwrap()
                .status()
                .as_u16()
        }),
    );
    let both = 1.0 / (1.0 / p + 1.0 / q);
    println!(
        "    a heartbeat's two conditional fetches together: {both:.0} hosts/s, {:.2}x the rate of the heartbeat itself ({h:.0}/s)",
        both / h
    );
    drop(running);
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn post(url: &str, token: &str) -> (u16, String) {
    let mut r = http_agent()
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .content_type("application/json")
        .send("{}")
        .unwrap();
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

fn agent_side() {
    let it = SecretKey::from_seed([7; 32]);
    let pinned = [it.public()];
    let text = shipped_pack(1).sign(&it).to_text();
    let n = 200;
    let mut open = Vec::with_capacity(n);
    let mut compile = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        let (body, _) = interdict_fleet::open_bundle(&text, &pinned).unwrap();
        open.push(s.elapsed());
        let s = Instant::now();
        let (p, _) = Policy::load("bundle", &body.policy, &Files(&body.files)).unwrap();
        compile.push(s.elapsed());
        std::hint::black_box(p);
    }
    let (o, c) = (pct(&mut open, 0.5), pct(&mut compile, 0.5));
    println!(
        "  agent, the shipped pack ({} bytes as a bundle), median of {n}: open (key, signature, JSON) {:.3} ms; compile the policy (what a reload does) {:.3} ms; open / compile = {:.2}",
        text.len(),
        ms(o),
        ms(c),
        o.as_secs_f64() / c.as_secs_f64()
    );
}

fn main() {
    let only = std::env::var("ONLY").unwrap_or_default();
    let want = |p: &str| only.is_empty() || only == p;
    let hosts = env_usize("FLEET_HOSTS", 5000);
    let clients = env_usize("CLIENTS", 4);
    let dir = tempfile::tempdir().unwrap();
    println!(
        "fleet control plane benchmarks; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if want("sqlite") {
        let db = dir.path().join("fleet.db");
        backend("sqlite", || Store::open(&db).unwrap(), hosts, clients);
    }
    if want("postgresql") {
        let pg = pg::Pg::start();
        backend(
            "postgresql",
            || Store::open_postgres(&pg.params()).unwrap(),
            hosts,
            clients,
        );
    }
    if want("agent") {
        agent_side();
    }
}
