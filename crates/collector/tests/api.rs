//! The collector over real HTTP on loopback with a real SQLite file: enrollment, authenticated
//! ingestion, forged hosts, roles, malformed input, idempotence, chain findings and queries.

use interdict_collector::{App, Background, Store};
use interdict_event::{
    Event, EventKind, FileRef, Origin, Outcome, ProcessRef, RuleRef, GENESIS_HASH,
};
use serde_json::{json, Value};

#[path = "support/pg.rs"]
mod pg;
use pg::Pg;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Server {
    url: String,
    _dir: tempfile::TempDir,
    _running: Background,
    db: std::path::PathBuf,
    pg: Option<Pg>,
}

impl Server {
    fn start(backend: Backend) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("collector.db");
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(Pg::start()),
        };
        let store = match &pg {
            None => Store::open(&db).unwrap(),
            Some(pg) => Store::open_postgres(&pg.params()).unwrap(),
        };
        Server::serve(store, dir, db, pg)
    }

    fn serve(
        store: Store,
        dir: tempfile::TempDir,
        db: std::path::PathBuf,
        pg: Option<Pg>,
    ) -> Server {
        let running = Background::start(
            "127.0.0.1:0",
            App {
                store,
                silent_after_ms: 60_000,
            },
            None,
        )
        .unwrap();
        Server {
            url: format!("http://{}", running.addr()),
            _dir: dir,
            _running: running,
            db,
            pg,
        }
    }

    /// A second handle on the same database (as a second collector would have).
    fn store(&self) -> Store {
        match &self.pg {
            None => Store::open(&self.db).unwrap(),
            Some(pg) => Store::open_postgres(&pg.params()).unwrap(),
        }
    }
}

/// Each test runs against SQLite and against PostgreSQL.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::Backend::Sqlite) })*
        }
        mod postgresql {
            $(#[test] fn $name() { super::$name(super::Backend::Postgres) })*
        }
    };
}

both!(
    enrollment_needs_the_secret_and_tokens_write_only_as_their_own_host,
    reviewers_read_and_cannot_write_agents_write_and_cannot_read,
    malformed_oversized_and_incomplete_batches_get_4xx_and_store_nothing,
    resent_batches_are_stored_once_and_gaps_and_breaks_become_findings,
    reviewers_query_by_host_and_rule_page_by_page_in_every_format,
);

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// POST JSON text; (status, body).
fn post(url: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut r = http().post(url).content_type("application/json");
    if let Some(t) = token {
        r = r.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = r.send(body).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn get(url: &str, token: Option<&str>) -> (u16, String, Option<String>) {
    let mut r = http().get(url);
    if let Some(t) = token {
        r = r.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = r.call().unwrap();
    let status = resp.status().as_u16();
    let cursor = resp
        .headers()
        .get("x-next-cursor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (
        status,
        resp.body_mut().read_to_string().unwrap_or_default(),
        cursor,
    )
}

fn enroll(s: &Server, host: &str) -> String {
    let secret = s.store().enroll_secret().unwrap();
    let (st, v) = post(
        &format!("{}/v1/enroll", s.url),
        None,
        &json!({"secret": secret, "host_id": host, "hostname": format!("{host}.corp")}).to_string(),
    );
    assert_eq!(st, 200, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// `n` chained events of `host`, starting after (`seq`, `hash`).
fn chain(host: &str, from: u64, prev: &str, n: u64) -> Vec<Event> {
    let o = Origin {
        host_id: host.into(),
        hostname: format!("{host}.corp"),
    };
    let mut prev = prev.to_string();
    (0..n)
        .map(|i| {
            let mut e = o.event(EventKind::ExecDenied);
            e.outcome = Some(Outcome::Denied);
            // A launch refused before it ran: the caller, and the refused file.
            e.process = Some(ProcessRef {
                pid: 4242,
                ..ProcessRef::default()
            });
            e.file = Some(FileRef {
                path: "/usr/local/bin/claude".into(),
                ..FileRef::default()
            });
            e.rule = Some(RuleRef {
                id: if i % 2 == 0 { "claude-code" } else { "codex" }.into(),
                name: "x".into(),
                risk: "high".into(),
                action: "block".into(),
                selector: "name".into(),
                pattern: "claude".into(),
                matched: "claude".into(),
            });
            e.seq = Some(from + i);
            e.prev_hash = Some(prev.clone());
            prev = e.record_hash();
            e
        })
        .collect()
}

fn batch(events: &[Event]) -> String {
    json!({ "events": events }).to_string()
}

fn enrollment_needs_the_secret_and_tokens_write_only_as_their_own_host(backend: Backend) {
    let s = Server::start(backend);
    let (st, _) = post(
        &format!("{}/v1/enroll", s.url),
        None,
        &json!({"secret": "wrong", "host_id": "h1", "hostname": "h1"}).to_string(),
    );
    assert_eq!(st, 401);
    let t1 = enroll(&s, "h1");
    let _t2 = enroll(&s, "h2");
    let url = format!("{}/v1/events", s.url);
    // Host h1 sending events that claim to be h2's: refused whole, nothing stored, counted.
    let mut evs = chain("h1", 1, GENESIS_HASH, 2);
    evs.extend(chain("h2", 1, GENESIS_HASH, 1));
    let (st, _) = post(&url, Some(&t1), &batch(&evs));
    assert_eq!(st, 403);
    let store = s.store();
    assert_eq!(
        store.event_count("h1").unwrap() + store.event_count("h2").unwrap(),
        0
    );
    assert!(store
        .counters()
        .unwrap()
        .contains(&("rejected_forged_host".into(), 1)));
    // Missing and wrong tokens.
    let good = batch(&chain("h1", 1, GENESIS_HASH, 2));
    assert_eq!(post(&url, None, &good).0, 401);
    assert_eq!(post(&url, Some("not-a-token"), &good).0, 401);
    assert_eq!(store.event_count("h1").unwrap(), 0);
    // The right token.
    let (st, v) = post(&url, Some(&t1), &good);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["stored"], 2);
    assert_eq!(v["acked_seq"], 2);
    // Holding the enroll secret is not enough to take over an enrolled host.
    let secret = store.enroll_secret().unwrap();
    let again = json!({"secret": secret, "host_id": "h1", "hostname": "evil"}).to_string();
    let (st, _) = post(&format!("{}/v1/enroll", s.url), None, &again);
    assert_eq!(st, 409);
    let next = batch(&chain(
        "h1",
        3,
        &chain("h1", 1, GENESIS_HASH, 2)[1].record_hash(),
        1,
    ));
    assert_eq!(
        post(&url, Some(&t1), &next).0,
        200,
        "the old token still works"
    );
    // IT resets the host (a reinstalled laptop): it enrolls again, the old token is dead.
    assert!(store.reset_host("h1").unwrap());
    let (st, v) = post(&format!("{}/v1/enroll", s.url), None, &again);
    assert_eq!(st, 200, "{v}");
    assert_eq!(post(&url, Some(&t1), &next).0, 401);
}

fn reviewers_read_and_cannot_write_agents_write_and_cannot_read(backend: Backend) {
    let s = Server::start(backend);
    let agent = enroll(&s, "h1");
    let reviewer = s.store().add_reviewer("sec-team").unwrap();
    let url = format!("{}/v1/events", s.url);
    let evs = batch(&chain("h1", 1, GENESIS_HASH, 3));
    assert_eq!(post(&url, Some(&reviewer), &evs).0, 403);
    assert_eq!(s.store().event_count("h1").unwrap(), 0);
    assert_eq!(post(&url, Some(&agent), &evs).0, 200);
    assert_eq!(get(&url, Some(&agent)).0, 403);
    assert_eq!(get(&format!("{}/v1/hosts", s.url), Some(&agent)).0, 403);
    assert_eq!(get(&url, None).0, 401);
    let (st, body, _) = get(&url, Some(&reviewer));
    assert_eq!(st, 200);
    assert_eq!(body.lines().count(), 3);
}

fn malformed_oversized_and_incomplete_batches_get_4xx_and_store_nothing(backend: Backend) {
    let s = Server::start(backend);
    let t = enroll(&s, "h1");
    let url = format!("{}/v1/events", s.url);
    for bad in [
        "{",
        "[]",
        "{\"events\": 3}",
        "{\"events\": [{\"id\": 1}]}",
        "{\"events\": [], \"extra\": 1}",
        "\u{0}\u{1}binary",
    ] {
        let (st, v) = post(&url, Some(&t), bad);
        assert!((400..500).contains(&st), "{bad:?}: {st} {v}");
    }
    // Events without their chain fields.
    let mut evs = chain("h1", 1, GENESIS_HASH, 1);
    evs[0].seq = None;
    assert_eq!(post(&url, Some(&t), &batch(&evs)).0, 422);
    let mut evs = chain("h1", 1, GENESIS_HASH, 1);
    evs[0].time = "yesterday".into();
    assert_eq!(post(&url, Some(&t), &batch(&evs)).0, 422);
    // Over the body limit.
    let huge = format!("{{\"events\": [], \"pad\": \"{}\"}}", "x".repeat(9 << 20));
    let (st, _) = post(&url, Some(&t), &huge);
    assert!((400..500).contains(&st), "{st}");
    assert_eq!(s.store().event_count("h1").unwrap(), 0);
}

fn resent_batches_are_stored_once_and_gaps_and_breaks_become_findings(backend: Backend) {
    let s = Server::start(backend);
    let t = enroll(&s, "h1");
    let url = format!("{}/v1/events", s.url);
    let evs = chain("h1", 1, GENESIS_HASH, 10);
    assert_eq!(post(&url, Some(&t), &batch(&evs[..6])).1["stored"], 6);
    // At-least-once: the agent resends an overlapping batch.
    let (_, v) = post(&url, Some(&t), &batch(&evs[4..8]));
    assert_eq!(
        (v["stored"].as_u64(), v["duplicates"].as_u64()),
        (Some(2), Some(2))
    );
    // Record 9 never arrives: a gap.
    let (_, v) = post(&url, Some(&t), &batch(&evs[9..10]));
    assert_eq!(v["acked_seq"], 10);
    assert_eq!(v["findings"], 1);
    // A record that does not link to the one before: a break.
    let mut forged = chain("h1", 11, &"f".repeat(64), 1);
    forged[0].message = Some("rewritten history".into());
    assert_eq!(post(&url, Some(&t), &batch(&forged)).1["findings"], 1);
    let reviewer = s.store().add_reviewer("r").unwrap();
    let (st, body, _) = get(&format!("{}/v1/verify", s.url), Some(&reviewer));
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let h = &v["hosts"][0];
    assert_eq!(h["events"], 10);
    assert_eq!(h["intact"], false);
    let f = h["findings"].as_array().unwrap();
    assert_eq!(f.len(), 2, "{v:#}");
    assert_eq!(
        (
            f[0]["kind"].as_str(),
            f[0]["from_seq"].as_u64(),
            f[0]["to_seq"].as_u64()
        ),
        (Some("gap"), Some(9), Some(9))
    );
    assert_eq!(
        (f[1]["kind"].as_str(), f[1]["from_seq"].as_u64()),
        (Some("break"), Some(11))
    );
    // The host's spool is wiped and starts over: a restart, then a normal chain again; and an
    // event that reuses a number already taken.
    let fresh = chain("h1", 1, GENESIS_HASH, 3);
    let (_, v) = post(&url, Some(&t), &batch(&fresh));
    assert_eq!(
        (v["findings"].as_u64(), v["acked_seq"].as_u64()),
        (Some(1), Some(3))
    );
    let (_, v) = post(&url, Some(&t), &batch(&chain("h1", 2, GENESIS_HASH, 1)));
    assert_eq!(v["findings"], 1);
    let kinds: Vec<String> = s
        .store()
        .findings()
        .unwrap()
        .into_iter()
        .map(|f| f.kind)
        .collect();
    assert_eq!(kinds, ["gap", "break", "restart", "reused"]);
}

fn reviewers_query_by_host_and_rule_page_by_page_in_every_format(backend: Backend) {
    let s = Server::start(backend);
    let t1 = enroll(&s, "h1");
    let t2 = enroll(&s, "h2");
    let url = format!("{}/v1/events", s.url);
    post(&url, Some(&t1), &batch(&chain("h1", 1, GENESIS_HASH, 25)));
    post(&url, Some(&t2), &batch(&chain("h2", 1, GENESIS_HASH, 5)));
    let r = s.store().add_reviewer("r").unwrap();
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let (st, body, next) = get(
            &format!("{url}?host=h1&rule=claude-code&limit=5{after}"),
            Some(&r),
        );
        assert_eq!(st, 200);
        for l in body.lines() {
            let e: Value = serde_json::from_str(l).unwrap();
            assert_eq!(
                (e["host_id"].as_str(), e["rule"]["id"].as_str()),
                (Some("h1"), Some("claude-code"))
            );
            ids.push(e["id"].as_str().unwrap().to_string());
        }
        match next {
            Some(c) => after = format!("&after={c}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 13, "the even ones of 25");
    let mut uniq = ids.clone();
    uniq.dedup();
    assert_eq!(uniq.len(), 13, "no event on two pages");
    let (_, ocsf, _) = get(&format!("{url}?host=h2&format=ocsf&limit=1"), Some(&r));
    let v: Value = serde_json::from_str(ocsf.lines().next().unwrap()).unwrap();
    assert_eq!(
        (v["class_uid"].as_u64(), v["disposition_id"].as_u64()),
        (Some(1007), Some(2))
    );
    assert_eq!(v["device"]["uid"], "h2");
    let (_, ecs, _) = get(&format!("{url}?host=h2&format=ecs&limit=1"), Some(&r));
    let v: Value = serde_json::from_str(ecs.lines().next().unwrap()).unwrap();
    assert_eq!(v["host"]["id"], "h2");
    let (_, blocked, _) = get(
        &format!("{url}?host=h2&action=block&outcome=denied"),
        Some(&r),
    );
    assert_eq!(blocked.lines().count(), 5);
    let (_, none, _) = get(&format!("{url}?host=h2&action=kill"), Some(&r));
    assert_eq!(none.lines().count(), 0);
    assert_eq!(get(&format!("{url}?format=xml"), Some(&r)).0, 400);
    assert_eq!(get(&format!("{url}?since=last-tuesday"), Some(&r)).0, 400);
    let (st, body, _) = get(
        &format!("{url}?host=h2&since=2000-01-01&until=2999-01-01T00:00:00Z"),
        Some(&r),
    );
    assert_eq!((st, body.lines().count()), (200, 5));
    let (_, body, _) = get(&format!("{url}?host=h2&until=2000-01-01"), Some(&r));
    assert_eq!(body.lines().count(), 0);
    assert_eq!(get(&format!("{url}?nonsense=1"), Some(&r)).0, 400);
    let (_, hosts, _) = get(&format!("{}/v1/hosts", s.url), Some(&r));
    let hosts: Value = serde_json::from_str(&hosts).unwrap();
    assert_eq!(hosts.as_array().unwrap().len(), 2);
    assert_eq!(hosts[0]["silent"], false);
}

#[test]
fn two_collectors_on_one_postgresql_database_keep_one_chain_per_host() {
    let a = Server::start(Backend::Postgres);
    let params = a.pg.as_ref().unwrap().params();
    let b = Server::serve(
        Store::open_postgres(&params).unwrap(),
        tempfile::tempdir().unwrap(),
        std::path::PathBuf::new(),
        None,
    );
    let token = enroll(&a, "h1");
    let evs = chain("h1", 1, GENESIS_HASH, 40);
    // A load balancer sends alternate batches to either collector, some of them twice.
    for (i, part) in evs.chunks(5).enumerate() {
        let url = if i % 2 == 0 { &a.url } else { &b.url };
        let (st, v) = post(&format!("{url}/v1/events"), Some(&token), &batch(part));
        assert_eq!(st, 200, "{v}");
        if i % 3 == 0 {
            let other = if i % 2 == 0 { &b.url } else { &a.url };
            let (_, v) = post(&format!("{other}/v1/events"), Some(&token), &batch(part));
            assert_eq!(v["duplicates"], 5);
        }
    }
    let store = a.store();
    assert_eq!(store.event_count("h1").unwrap(), 40);
    assert_eq!(store.acked("h1").unwrap(), 40);
    assert!(
        store.findings().unwrap().is_empty(),
        "{:?}",
        store.findings()
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]

    /// Fuzzing the ingest decoder over HTTP: random bytes, and valid batches with a random span
    /// replaced by random text, never get a 5xx (nor crash the server); whatever is refused
    /// stores nothing.
    #[test]
    fn no_input_makes_the_ingest_fail_or_store_what_it_refused(
        noise in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        cut in 0usize..4000,
        len in 0usize..40,
        text in "\\PC{0,20}",
    ) {
        static SERVER: std::sync::OnceLock<(Server, String)> = std::sync::OnceLock::new();
        let (s, token) = SERVER.get_or_init(|| {
            let s = Server::start(Backend::Sqlite);
            let t = enroll(&s, "fz");
            (s, t)
        });
        let url = format!("{}/v1/events", s.url);
        let store = s.store();
        let before = store.event_count("fz").unwrap();
        let noise = String::from_utf8_lossy(&noise).into_owned();
        let (st, v) = post(&url, Some(token), &noise);
        proptest::prop_assert!((400..500).contains(&st), "{} {}", st, v);
        proptest::prop_assert_eq!(store.event_count("fz").unwrap(), before);

        let valid = batch(&chain("fz", 1, GENESIS_HASH, 3));
        let at = cut.min(valid.len());
        let end = (at + len).min(valid.len());
        let (a, b) = (valid.floor_char_boundary(at), valid.floor_char_boundary(end));
        let mutated = format!("{}{}{}", &valid[..a], text, &valid[b..]);
        let (st, v) = post(&url, Some(token), &mutated);
        proptest::prop_assert!(st < 500, "{} {}", st, v);
        if st != 200 {
            proptest::prop_assert_eq!(store.event_count("fz").unwrap(), before);
        }
    }
}
