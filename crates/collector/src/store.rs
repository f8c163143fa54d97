//! The SQLite store: hosts and their tokens (hashed), reviewer tokens, events (idempotent by id),
//! chain findings and counters. One connection behind a mutex, WAL, one transaction per batch.

use std::path::Path;
use std::sync::Mutex;

use interdict_event::{Event, GENESIS_HASH};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

/// Schema migrations, applied in order; `PRAGMA user_version` says how many ran.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE hosts (
    host_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    enrolled_ms INTEGER NOT NULL,
    last_seen_ms INTEGER,
    last_seq INTEGER NOT NULL DEFAULT 0,
    last_hash TEXT NOT NULL,
    version TEXT,
    policy_sha256 TEXT,
    mode TEXT
);
CREATE TABLE reviewers (name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE);
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    rule_id TEXT,
    user TEXT,
    outcome TEXT,
    json TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE INDEX events_host_seq ON events (host_id, seq);
CREATE INDEX events_time ON events (time_ms);
CREATE INDEX events_host_rule_time ON events (host_id, rule_id, time_ms);
CREATE TABLE findings (
    id INTEGER PRIMARY KEY,
    host_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL,
    detail TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"#];

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
}

/// Who a bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An enrolled agent, by host id.
    Host(String),
    /// A reviewer (read-only), by name.
    Reviewer(String),
}

/// A chain finding: a gap in the sequence numbers, or a record whose `prev_hash` does not match.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Finding {
    /// The host.
    pub host_id: String,
    /// `gap` or `break`.
    pub kind: String,
    /// First sequence number concerned.
    pub from_seq: u64,
    /// Last sequence number concerned.
    pub to_seq: u64,
    /// What was expected and what came.
    pub detail: String,
}

/// One host in the fleet view.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HostRow {
    /// Host id (the agent's machine id).
    pub host_id: String,
    /// Host name at enrollment.
    pub hostname: String,
    /// Last request, ms since the epoch.
    pub last_seen_ms: Option<i64>,
    /// Highest sequence number stored.
    pub last_seq: u64,
    /// Agent version (from heartbeats).
    pub version: Option<String>,
    /// Policy hash (from heartbeats).
    pub policy_sha256: Option<String>,
    /// enforce or monitor (from heartbeats).
    pub mode: Option<String>,
    /// Silent longer than the threshold.
    pub silent: bool,
}

/// A query of stored events.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Host id.
    pub host: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// Rule id.
    pub rule: Option<String>,
    /// Event kind (`exec_denied`, ...).
    pub kind: Option<String>,
    /// Outcome (`denied`, `killed`, ...).
    pub outcome: Option<String>,
    /// From this time (RFC 3339, inclusive).
    pub since: Option<String>,
    /// Until this time (RFC 3339, exclusive).
    pub until: Option<String>,
    /// Page after this cursor (the `X-Next-Cursor` of the previous page).
    pub after: Option<String>,
    /// Page size (default 1000, at most 10,000).
    pub limit: Option<usize>,
    /// native, ocsf or ecs.
    pub format: Option<String>,
}

/// Hex SHA-256 of a token, as stored.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh random token (256 bits, hex).
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// Outcome of one ingested batch.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Ingested {
    /// Events newly stored.
    pub stored: usize,
    /// Events already stored (same id): ignored.
    pub duplicates: usize,
    /// The highest sequence number stored for this host: the agent resumes after it.
    pub acked_seq: u64,
    /// Findings recorded by this batch.
    pub findings: usize,
}

/// The store.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Open (or create) the database at `path` and migrate it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let done: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(done as usize) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("store poisoned")
    }

    /// The enroll secret, created on first use.
    pub fn enroll_secret(&self) -> Result<String, StoreError> {
        let db = self.db();
        if let Some(s) = db
            .query_row("SELECT v FROM meta WHERE k = 'enroll_secret'", [], |r| {
                r.get(0)
            })
            .optional()?
        {
            return Ok(s);
        }
        let s = new_token();
        db.execute(
            "INSERT INTO meta (k, v) VALUES ('enroll_secret', ?1)",
            params![s],
        )?;
        Ok(s)
    }

    /// Add (or replace) a reviewer; returns the token, shown once.
    pub fn add_reviewer(&self, name: &str) -> Result<String, StoreError> {
        let t = new_token();
        self.db().execute(
            "INSERT INTO reviewers (name, token_sha256) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET token_sha256 = excluded.token_sha256",
            params![name, token_hash(&t)],
        )?;
        Ok(t)
    }

    /// Enroll a host: a new token, stored hashed. Enrolling again replaces the token.
    pub fn enroll(&self, host_id: &str, hostname: &str) -> Result<String, StoreError> {
        let t = new_token();
        self.db().execute(
            "INSERT INTO hosts (host_id, hostname, token_sha256, enrolled_ms, last_hash)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(host_id) DO UPDATE SET token_sha256 = excluded.token_sha256,
                 hostname = excluded.hostname",
            params![host_id, hostname, token_hash(&t), now_ms(), GENESIS_HASH],
        )?;
        Ok(t)
    }

    /// Whose token this is.
    pub fn principal(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let h = token_hash(token);
        let db = self.db();
        if let Some(id) = db
            .query_row(
                "SELECT host_id FROM hosts WHERE token_sha256 = ?1",
                params![h],
                |r| r.get(0),
            )
            .optional()?
        {
            return Ok(Some(Principal::Host(id)));
        }
        Ok(db
            .query_row(
                "SELECT name FROM reviewers WHERE token_sha256 = ?1",
                params![h],
                |r| r.get(0),
            )
            .optional()?
            .map(Principal::Reviewer))
    }

    /// Add one to a counter.
    pub fn count(&self, name: &str) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO counters (name, n) VALUES (?1, 1)
             ON CONFLICT(name) DO UPDATE SET n = n + 1",
            params![name],
        )?;
        Ok(())
    }

    /// Every counter.
    pub fn counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let db = self.db();
        let mut st = db.prepare("SELECT name, n FROM counters ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Store a batch from `host_id` (already checked: every event is that host's, with `seq`
    /// and `prev_hash`), in one transaction, verifying the chain as it goes.
    pub fn ingest(&self, host_id: &str, mut events: Vec<Event>) -> Result<Ingested, StoreError> {
        events.sort_by_key(|e| e.seq);
        let mut db = self.db();
        let tx = db.transaction()?;
        let (mut last_seq, mut last_hash): (i64, String) = tx.query_row(
            "SELECT last_seq, last_hash FROM hosts WHERE host_id = ?1",
            params![host_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let now = now_ms();
        let mut out = Ingested::default();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (id, host_id, seq, time_ms, kind, rule_id, user, outcome, json, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(id) DO NOTHING",
            )?;
            let mut finding = tx.prepare_cached(
                "INSERT INTO findings (host_id, kind, from_seq, to_seq, detail, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for e in &events {
                let seq = e.seq.unwrap_or(0) as i64;
                let json = e.to_json_line();
                let kind = serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let outcome = e
                    .outcome
                    .and_then(|o| serde_json::to_value(o).ok())
                    .and_then(|v| v.as_str().map(str::to_string));
                let n = insert.execute(params![
                    e.id,
                    host_id,
                    seq,
                    interdict_event::parse_rfc3339_millis(&e.time).unwrap_or(0),
                    kind,
                    e.rule.as_ref().map(|r| r.id.clone()),
                    e.process.as_ref().and_then(|p| p.user.clone()),
                    outcome,
                    json,
                    now
                ])?;
                if n == 0 {
                    out.duplicates += 1;
                    continue;
                }
                out.stored += 1;
                if seq <= last_seq {
                    // A late record (resent after a gap was noted): stored, chain unchanged.
                    continue;
                }
                let prev = e.prev_hash.clone().unwrap_or_default();
                if seq > last_seq + 1 {
                    finding.execute(params![
                        host_id,
                        "gap",
                        last_seq + 1,
                        seq - 1,
                        format!("records {} to {} never arrived", last_seq + 1, seq - 1),
                        now
                    ])?;
                    out.findings += 1;
                } else if prev != last_hash {
                    finding.execute(params![
                        host_id,
                        "break",
                        seq,
                        seq,
                        format!(
                            "prev_hash {prev} does not match the hash {last_hash} of record {last_seq}"
                        ),
                        now
                    ])?;
                    out.findings += 1;
                }
                last_seq = seq;
                last_hash = e.record_hash();
                if e.kind == interdict_event::EventKind::Heartbeat {
                    let hb: serde_json::Value = e
                        .message
                        .as_deref()
                        .and_then(|m| serde_json::from_str(m).ok())
                        .unwrap_or_default();
                    tx.execute(
                        "UPDATE hosts SET version = ?2, policy_sha256 = ?3, mode = ?4 WHERE host_id = ?1",
                        params![
                            host_id,
                            hb["version"].as_str(),
                            hb["policy_sha256"].as_str(),
                            hb["mode"].as_str()
                        ],
                    )?;
                }
            }
        }
        tx.execute(
            "UPDATE hosts SET last_seq = ?2, last_hash = ?3, last_seen_ms = ?4 WHERE host_id = ?1",
            params![host_id, last_seq, last_hash, now],
        )?;
        tx.commit()?;
        out.acked_seq = last_seq as u64;
        Ok(out)
    }

    /// Note that a host was heard from.
    pub fn seen(&self, host_id: &str) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE hosts SET last_seen_ms = ?2 WHERE host_id = ?1",
            params![host_id, now_ms()],
        )?;
        Ok(())
    }

    /// The highest sequence number stored for a host.
    pub fn acked(&self, host_id: &str) -> Result<u64, StoreError> {
        Ok(self.db().query_row(
            "SELECT last_seq FROM hosts WHERE host_id = ?1",
            params![host_id],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Events matching `q`, oldest first, with the cursor of the next page.
    pub fn query(&self, q: &Query) -> Result<(Vec<Event>, Option<String>), StoreError> {
        let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
        let mut sql = String::from("SELECT json, time_ms, id FROM events WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut add = |cond: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ?{}", args.len()));
        };
        if let Some(h) = &q.host {
            add("host_id =", h.clone().into());
        }
        if let Some(u) = &q.user {
            add("user =", u.clone().into());
        }
        if let Some(r) = &q.rule {
            add("rule_id =", r.clone().into());
        }
        if let Some(k) = &q.kind {
            add("kind =", k.clone().into());
        }
        if let Some(o) = &q.outcome {
            add("outcome =", o.clone().into());
        }
        if let Some(s) = q
            .since
            .as_deref()
            .and_then(interdict_event::parse_rfc3339_millis)
        {
            add("time_ms >=", s.into());
        }
        if let Some(u) = q
            .until
            .as_deref()
            .and_then(interdict_event::parse_rfc3339_millis)
        {
            add("time_ms <", u.into());
        }
        if let Some((t, id)) = q.after.as_deref().and_then(|c| c.split_once('/')) {
            let t: i64 = t.parse().unwrap_or(0);
            args.push(t.into());
            args.push(id.to_string().into());
            let (a, b) = (args.len() - 1, args.len());
            sql.push_str(&format!(
                " AND (time_ms > ?{a} OR (time_ms = ?{a} AND id > ?{b}))"
            ));
        }
        sql.push_str(&format!(" ORDER BY time_ms, id LIMIT {}", limit + 1));
        let db = self.db();
        let mut st = db.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        let mut next = None;
        for row in rows {
            let (json, t, id) = row?;
            if out.len() == limit {
                next = Some(format!("{t}/{id}"));
                break;
            }
            if let Ok(e) = serde_json::from_str::<Event>(&json) {
                out.push((e, t, id));
            }
        }
        if next.is_some() {
            if let Some((_, t, id)) = out.last() {
                next = Some(format!("{t}/{id}"));
            }
        }
        Ok((out.into_iter().map(|(e, _, _)| e).collect(), next))
    }

    /// Every finding, oldest first.
    pub fn findings(&self) -> Result<Vec<Finding>, StoreError> {
        let db = self.db();
        let mut st =
            db.prepare("SELECT host_id, kind, from_seq, to_seq, detail FROM findings ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok(Finding {
                host_id: r.get(0)?,
                kind: r.get(1)?,
                from_seq: r.get::<_, i64>(2)? as u64,
                to_seq: r.get::<_, i64>(3)? as u64,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The fleet: every host, flagged silent when not heard from in `silent_after_ms`.
    pub fn hosts(&self, silent_after_ms: i64) -> Result<Vec<HostRow>, StoreError> {
        let now = now_ms();
        let db = self.db();
        let mut st = db.prepare(
            "SELECT host_id, hostname, last_seen_ms, last_seq, version, policy_sha256, mode
             FROM hosts ORDER BY host_id",
        )?;
        let rows = st.query_map([], |r| {
            let last_seen_ms: Option<i64> = r.get(2)?;
            Ok(HostRow {
                host_id: r.get(0)?,
                hostname: r.get(1)?,
                last_seen_ms,
                last_seq: r.get::<_, i64>(3)? as u64,
                version: r.get(4)?,
                policy_sha256: r.get(5)?,
                mode: r.get(6)?,
                silent: last_seen_ms.is_none_or(|t| now - t > silent_after_ms),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Number of events stored for a host.
    pub fn event_count(&self, host_id: &str) -> Result<u64, StoreError> {
        Ok(self.db().query_row(
            "SELECT COUNT(*) FROM events WHERE host_id = ?1",
            params![host_id],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
}
