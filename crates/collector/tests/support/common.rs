//! What the collector's tests share: a collector over real HTTP on loopback with a real SQLite
//! file or a private PostgreSQL server, HTTP helpers, chained events, direct database access
//! (the adversary's), and the client-side verification as `interdict logs verify` runs it.
#![allow(dead_code)]

use interdict_collector::{App, Background, Config, Store};
use interdict_event::{Event, EventKind, FileRef, Origin, Outcome, ProcessRef, RuleRef};
use serde_json::Value;

#[path = "pg.rs"]
pub mod pg;
use pg::Pg;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Server {
    pub url: String,
    pub dir: tempfile::TempDir,
    running: Option<Background>,
    pub db: std::path::PathBuf,
    pub pg: Option<Pg>,
    pub secret: String,
    pub key: ed25519_dalek::SigningKey,
}

impl Server {
    pub fn start(backend: Backend) -> Server {
        Server::start_with(backend, Config::default())
    }

    pub fn start_with(backend: Backend, config: Config) -> Server {
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
        let secret = store.rotate_enroll_secret().unwrap();
        let key = interdict_collector::keys::generate();
        Server::serve(store, dir, db, pg, secret, key, config)
    }

    pub fn serve(
        store: Store,
        dir: tempfile::TempDir,
        db: std::path::PathBuf,
        pg: Option<Pg>,
        secret: String,
        key: ed25519_dalek::SigningKey,
        config: Config,
    ) -> Server {
        let running =
            Background::start("127.0.0.1:0", App::new(store, config, key.clone()), None).unwrap();
        Server {
            url: format!("http://{}", running.addr()),
            dir,
            running: Some(running),
            db,
            pg,
            secret,
            key,
        }
    }

    /// A second handle on the same database (as a second collector would have).
    pub fn store(&self) -> Store {
        match &self.pg {
            None => Store::open(&self.db).unwrap(),
            Some(pg) => Store::open_postgres(&pg.params()).unwrap(),
        }
    }

    /// Run SQL on the database directly, as someone with access to it (not through the
    /// collector); `?1`.. are text arguments.
    pub fn tamper(&self, sql: &str, args: &[&str]) -> u64 {
        match &self.pg {
            None => {
                let c = rusqlite::Connection::open(&self.db).unwrap();
                c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
                c.execute(sql, rusqlite::params_from_iter(args.iter()))
                    .unwrap() as u64
            }
            Some(pg) => {
                let mut c = postgres::Client::connect(&pg.params(), postgres::NoTls).unwrap();
                let sql = sql.replace('?', "$");
                let p: Vec<&(dyn postgres::types::ToSql + Sync)> = args
                    .iter()
                    .map(|a| a as &(dyn postgres::types::ToSql + Sync))
                    .collect();
                c.execute(sql.as_str(), &p).unwrap()
            }
        }
    }

    pub fn reviewer(&self) -> String {
        self.store().add_reviewer("sec-team").unwrap()
    }

    pub fn public_key(&self) -> String {
        interdict_collector::keys::public_hex(&self.key)
    }

    /// Stop serving (the database stays).
    pub fn stop(&mut self) {
        self.running.take();
    }
}

/// Each test runs against SQLite and against PostgreSQL.
#[macro_export]
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

pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

/// POST JSON text; (status, body).
pub fn post(url: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let (st, v, _) = post_h(url, token, body);
    (st, v)
}

/// POST JSON text; (status, body, Retry-After).
pub fn post_h(url: &str, token: Option<&str>, body: &str) -> (u16, Value, Option<String>) {
    let mut r = http().post(url).content_type("application/json");
    if let Some(t) = token {
        r = r.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = r.send(body).unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        retry,
    )
}

/// POST `body` to /v1/events over a plain socket, ignoring a server that stops reading; the
/// status of the answer.
pub fn post_raw(s: &Server, token: Option<&str>, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let addr = s.url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    let _ = c.write_all(body);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer: {text:?}"))
}

/// GET; (status, body, X-Next-Cursor, X-Cursor).
pub fn get(url: &str, token: Option<&str>) -> (u16, String, Option<String>, Option<String>) {
    let mut r = http().get(url);
    if let Some(t) = token {
        r = r.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = r.call().unwrap();
    let status = resp.status().as_u16();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (next, cursor) = (h("x-next-cursor"), h("x-cursor"));
    (
        status,
        resp.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .unwrap_or_default(),
        next,
        cursor,
    )
}

pub fn enroll_as(s: &Server, host: &str, hostname: &str) -> String {
    let (st, v) = post(
        &format!("{}/v1/enroll", s.url),
        None,
        &serde_json::json!({"secret": s.secret, "host_id": host, "hostname": hostname}).to_string(),
    );
    assert_eq!(st, 200, "{v}");
    v["token"].as_str().unwrap().to_string()
}

pub fn enroll(s: &Server, host: &str) -> String {
    enroll_as(s, host, &format!("{host}.corp"))
}

/// `n` chained events of `host`, starting after (`seq`, `hash`).
pub fn chain(host: &str, from: u64, prev: &str, n: u64) -> Vec<Event> {
    let o = Origin {
        host_id: host.into(),
        hostname: format!("{host}.corp"),
    };
    let mut prev = prev.to_string();
    (0..n)
        .map(|i| {
            let mut e = o.event(EventKind::ExecDenied);
            e.outcome = Some(Outcome::Denied);
            // A launch refused before it ran: the caller, and the refused file (what a Process
            // Activity record needs).
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

/// Re-chain `events` from (`from`'s predecessor hash `prev`), after edits.
pub fn rechain(events: &mut [Event], prev: &str) {
    let mut prev = prev.to_string();
    for e in events {
        e.prev_hash = Some(prev.clone());
        prev = e.record_hash();
    }
}

/// A batch as the agent's shipper sends it: the events' lines, verbatim.
pub fn batch(events: &[Event]) -> String {
    let lines: Vec<String> = events.iter().map(Event::to_json_line).collect();
    format!("{{\"events\":[{}]}}", lines.join(","))
}

pub fn ingest(s: &Server, token: &str, events: &[Event]) -> Value {
    let (st, v) = post(&format!("{}/v1/events", s.url), Some(token), &batch(events));
    assert_eq!(st, 200, "{v}");
    v
}

/// The reviewer API over HTTP, as `interdict logs verify` uses it.
pub struct Api {
    pub url: String,
    pub token: String,
}

impl interdict_chain::remote::Api for Api {
    fn get(
        &mut self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<(String, Option<String>), interdict_chain::remote::ApiError> {
        let mut resp = http()
            .get(&format!("{}{path}", self.url))
            .query_pairs(query.iter().copied())
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()?;
        let next = resp
            .headers()
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()?;
        if status != 200 {
            return Err(format!("{status} {body}").into());
        }
        Ok((body, next))
    }
}

/// Client-side verification, exactly as `interdict logs verify` does it.
pub fn client_verify(
    s: &Server,
    reviewer: &str,
    opts: &interdict_chain::remote::Options,
) -> interdict_chain::remote::Verdict {
    interdict_chain::remote::verify(
        &mut Api {
            url: s.url.clone(),
            token: reviewer.into(),
        },
        opts,
    )
    .unwrap()
}

/// The collector's own verification, through the API.
pub fn server_verify(s: &Server, reviewer: &str) -> Value {
    let (st, body, _, _) = get(&format!("{}/v1/verify", s.url), Some(reviewer));
    assert_eq!(st, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// (kind, epoch, from, to) of every problem in a verdict.
pub fn problems(v: &interdict_chain::remote::Verdict) -> Vec<(String, u64, u64, u64)> {
    v.hosts
        .iter()
        .flat_map(|(_, r)| r.problems.iter())
        .map(|p| (p.kind.clone(), p.epoch, p.from_seq, p.to_seq))
        .collect()
}

/// Wait for `f`, failing after `secs`.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
