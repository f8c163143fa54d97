//! The store: hosts and their tokens (hashed), reviewer tokens, events (idempotent by id), chain
//! findings and counters, in SQLite (WAL, one transaction per batch) or PostgreSQL (the same
//! schema; the host's chain row locked while a batch is checked, so that several collectors on
//! one database never interleave one host's chain).

use std::path::Path;
use std::sync::Mutex;

use interdict_event::{Event, GENESIS_HASH};
use sha2::{Digest, Sha256};

use crate::sql::{Db, DbError, Val};

/// The schema, as migrations applied in order (the number applied is kept in `schema_version`).
/// `{ID}` is the auto-numbered key of each database.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE hosts (
    host_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    enrolled_ms BIGINT NOT NULL,
    last_seen_ms BIGINT,
    last_seq BIGINT NOT NULL DEFAULT 0,
    last_hash TEXT NOT NULL,
    version TEXT,
    policy_sha256 TEXT,
    mode TEXT
);
CREATE TABLE reviewers (name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE);
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    time_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    rule_id TEXT,
    user_name TEXT,
    outcome TEXT,
    json TEXT NOT NULL,
    received_ms BIGINT NOT NULL
);
CREATE INDEX events_host_seq ON events (host_id, seq);
CREATE INDEX events_time ON events (time_ms, id);
CREATE INDEX events_host_rule_time ON events (host_id, rule_id, time_ms, id);
CREATE TABLE findings (
    id {ID},
    host_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq BIGINT NOT NULL,
    detail TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE TABLE counters (name TEXT PRIMARY KEY, n BIGINT NOT NULL);
"#,
    r#"
ALTER TABLE events ADD COLUMN rule_action TEXT;
"#,
];

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no.
    #[error("database: {0}")]
    Db(#[from] DbError),
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
    /// `gap` (records never arrived), `break` (`prev_hash` does not match), `restart` (the
    /// host's chain started over at 1) or `reused` (a new event under a used sequence number).
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
    /// What the agent did (`denied`, `killed`, ...).
    pub outcome: Option<String>,
    /// The rule's configured action (`block`, `kill`, `quarantine`, `report`).
    pub action: Option<String>,
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
    db: Db,
}

fn one(rows: Vec<Vec<Val>>) -> Option<Vec<Val>> {
    rows.into_iter().next()
}

/// Rows per multi-row INSERT (SQLite allows 32,766 bound values).
const INSERT_CHUNK: usize = 1000;

impl Store {
    /// Open (or create) the SQLite database at `path` and migrate it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = rusqlite::Connection::open(path).map_err(DbError::from)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(DbError::from)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(DbError::from)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(DbError::from)?;
        Store::migrate(Store {
            db: Db::Sqlite(Mutex::new(conn)),
        })
    }

    /// Connect to PostgreSQL (`host=... user=... dbname=...` or a `postgresql://` URL) and
    /// migrate the schema. Several collectors may share the database.
    pub fn open_postgres(params: &str) -> Result<Store, StoreError> {
        let client = postgres::Client::connect(params, postgres::NoTls).map_err(DbError::from)?;
        Store::migrate(Store {
            db: Db::Postgres(Mutex::new(client)),
        })
    }

    fn migrate(store: Store) -> Result<Store, StoreError> {
        let pg = store.db.is_postgres();
        store.db.tx(|t| {
            if pg {
                // One migrating collector at a time.
                t.exec("SELECT pg_advisory_xact_lock(7365)", &[])?;
            }
            t.exec(
                "CREATE TABLE IF NOT EXISTS schema_version (n BIGINT NOT NULL)",
                &[],
            )?;
            let done = one(t.rows("SELECT n FROM schema_version", &[])?);
            let done = match done {
                Some(r) => r[0].int() as usize,
                None => {
                    t.exec("INSERT INTO schema_version (n) VALUES (0)", &[])?;
                    0
                }
            };
            let id = if pg {
                "BIGSERIAL PRIMARY KEY"
            } else {
                "INTEGER PRIMARY KEY"
            };
            for (i, m) in MIGRATIONS.iter().enumerate().skip(done) {
                for stmt in m.replace("{ID}", id).split(';') {
                    if !stmt.trim().is_empty() {
                        t.exec(stmt, &[])?;
                    }
                }
                t.exec(
                    "UPDATE schema_version SET n = ?1",
                    &[((i + 1) as i64).into()],
                )?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// The enroll secret, created on first use.
    pub fn enroll_secret(&self) -> Result<String, StoreError> {
        Ok(self.db.tx(|t| {
            t.exec(
                "INSERT INTO meta (k, v) VALUES ('enroll_secret', ?1) ON CONFLICT (k) DO NOTHING",
                &[new_token().into()],
            )?;
            let r = one(t.rows("SELECT v FROM meta WHERE k = 'enroll_secret'", &[])?);
            Ok(r.and_then(|r| r[0].text()).unwrap_or_default())
        })?)
    }

    /// Add (or replace) a reviewer; returns the token, shown once.
    pub fn add_reviewer(&self, name: &str) -> Result<String, StoreError> {
        let t = new_token();
        self.db.with(|c| {
            c.exec(
                "INSERT INTO reviewers (name, token_sha256) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET token_sha256 = excluded.token_sha256",
                &[name.into(), token_hash(&t).into()],
            )
        })?;
        Ok(t)
    }

    /// Enroll a host: a new token, stored hashed. `None` when the host is enrolled already: a
    /// second enrollment would let anyone holding the enroll secret take over a host's identity,
    /// so it needs IT to [`Store::reset_host`] first (its chain state is kept).
    pub fn enroll(&self, host_id: &str, hostname: &str) -> Result<Option<String>, StoreError> {
        let t = new_token();
        let n = self.db.with(|c| {
            c.exec(
                "INSERT INTO hosts (host_id, hostname, token_sha256, enrolled_ms, last_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (host_id) DO UPDATE SET token_sha256 = excluded.token_sha256,
                     hostname = excluded.hostname
                 WHERE hosts.token_sha256 LIKE 'reset:%'",
                &[
                    host_id.into(),
                    hostname.into(),
                    token_hash(&t).into(),
                    now_ms().into(),
                    GENESIS_HASH.into(),
                ],
            )
        })?;
        Ok((n == 1).then_some(t))
    }

    /// Revoke a host's token and let it enroll again (a reinstalled laptop). False when there
    /// is no such host.
    pub fn reset_host(&self, host_id: &str) -> Result<bool, StoreError> {
        let n = self.db.with(|c| {
            c.exec(
                "UPDATE hosts SET token_sha256 = ?2 WHERE host_id = ?1",
                &[host_id.into(), format!("reset:{}", new_token()).into()],
            )
        })?;
        Ok(n == 1)
    }

    /// Whose token this is.
    pub fn principal(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let h: Val = token_hash(token).into();
        Ok(self.db.with(|c| {
            if let Some(r) = one(c.rows(
                "SELECT host_id FROM hosts WHERE token_sha256 = ?1",
                std::slice::from_ref(&h),
            )?) {
                return Ok(r[0].text().map(Principal::Host));
            }
            Ok(
                one(c.rows("SELECT name FROM reviewers WHERE token_sha256 = ?1", &[h])?)
                    .and_then(|r| r[0].text())
                    .map(Principal::Reviewer),
            )
        })?)
    }

    /// Add one to a counter.
    pub fn count(&self, name: &str) -> Result<(), StoreError> {
        self.db.with(|c| {
            c.exec(
                "INSERT INTO counters (name, n) VALUES (?1, 1)
                 ON CONFLICT (name) DO UPDATE SET n = counters.n + 1",
                &[name.into()],
            )
        })?;
        Ok(())
    }

    /// Every counter.
    pub fn counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .db
            .with(|c| c.rows("SELECT name, n FROM counters ORDER BY name", &[]))?;
        Ok(rows
            .into_iter()
            .map(|r| (r[0].text().unwrap_or_default(), r[1].int() as u64))
            .collect())
    }

    /// Store a batch from `host_id` (already checked: every event is that host's, with `seq`
    /// and `prev_hash`), in one transaction, verifying the chain as it goes.
    pub fn ingest(&self, host_id: &str, mut events: Vec<Event>) -> Result<Ingested, StoreError> {
        events.sort_by_key(|e| e.seq);
        let lock = if self.db.is_postgres() {
            " FOR UPDATE"
        } else {
            ""
        };
        let now = now_ms();
        Ok(self.db.tx(|t| {
            let host = one(t.rows(
                &format!("SELECT last_seq, last_hash FROM hosts WHERE host_id = ?1{lock}"),
                &[host_id.into()],
            )?)
            .unwrap_or_default();
            let mut last_seq = host.first().map_or(0, Val::int);
            let mut last_hash = host
                .get(1)
                .and_then(Val::text)
                .unwrap_or_else(|| GENESIS_HASH.into());
            let mut out = Ingested::default();
            // Each event's line, serialized once: stored, and hashed for the chain.
            let lines: Vec<String> = events.iter().map(Event::to_json_line).collect();
            // Insert everything; the ids that come back are the new ones.
            let mut inserted = std::collections::HashSet::new();
            for (chunk, chunk_lines) in events.chunks(INSERT_CHUNK).zip(lines.chunks(INSERT_CHUNK)) {
                let mut sql = String::from(
                    "INSERT INTO events (id, host_id, seq, time_ms, kind, rule_id, user_name, outcome, json, received_ms, rule_action) VALUES ",
                );
                let mut args: Vec<Val> = Vec::with_capacity(chunk.len() * 11);
                for (i, e) in chunk.iter().enumerate() {
                    let b = i * 11;
                    if i > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!(
                        "(?{},?{},?{},?{},?{},?{},?{},?{},?{},?{},?{})",
                        b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8, b + 9, b + 10, b + 11
                    ));
                    let kind = serde_json::to_value(e.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    let outcome = e
                        .outcome
                        .and_then(|o| serde_json::to_value(o).ok())
                        .and_then(|v| v.as_str().map(str::to_string));
                    args.extend([
                        e.id.clone().into(),
                        host_id.into(),
                        (e.seq.unwrap_or(0) as i64).into(),
                        interdict_event::parse_rfc3339_millis(&e.time).unwrap_or(0).into(),
                        kind.into(),
                        e.rule.as_ref().map(|r| r.id.clone()).into(),
                        e.process.as_ref().and_then(|p| p.user.clone()).into(),
                        outcome.into(),
                        chunk_lines[i].clone().into(),
                        now.into(),
                        e.rule.as_ref().map(|r| r.action.clone()).into(),
                    ]);
                }
                sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id");
                for r in t.rows(&sql, &args)? {
                    if let Some(id) = r[0].text() {
                        inserted.insert(id);
                    }
                }
            }
            for (e, line) in events.iter().zip(&lines) {
                if !inserted.contains(&e.id) {
                    out.duplicates += 1;
                    continue;
                }
                out.stored += 1;
                let seq = e.seq.unwrap_or(0) as i64;
                let prev = e.prev_hash.clone().unwrap_or_default();
                let restart = seq == 1 && prev == GENESIS_HASH && last_seq > 0;
                if seq <= last_seq && !restart {
                    // A new event under a sequence number already used: stored, and noted.
                    t.exec(
                        "INSERT INTO findings (host_id, kind, from_seq, to_seq, detail, at_ms)
                         VALUES (?1, 'reused', ?2, ?2, ?3, ?4)",
                        &[
                            host_id.into(),
                            seq.into(),
                            format!("event {} reuses sequence number {seq}", e.id).into(),
                            now.into(),
                        ],
                    )?;
                    out.findings += 1;
                    continue;
                }
                let finding = if restart {
                    // The host's spool started over (state wiped, reinstalled): a new chain.
                    Some((
                        "restart",
                        1,
                        last_seq,
                        format!("the chain started over at 1 after record {last_seq}"),
                    ))
                } else if seq > last_seq + 1 {
                    Some((
                        "gap",
                        last_seq + 1,
                        seq - 1,
                        format!("records {} to {} never arrived", last_seq + 1, seq - 1),
                    ))
                } else if prev != last_hash {
                    Some((
                        "break",
                        seq,
                        seq,
                        format!(
                            "prev_hash {prev} does not match the hash {last_hash} of record {last_seq}"
                        ),
                    ))
                } else {
                    None
                };
                if let Some((kind, from, to, detail)) = finding {
                    t.exec(
                        "INSERT INTO findings (host_id, kind, from_seq, to_seq, detail, at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        &[
                            host_id.into(),
                            kind.into(),
                            from.into(),
                            to.into(),
                            detail.into(),
                            now.into(),
                        ],
                    )?;
                    out.findings += 1;
                }
                last_seq = seq;
                last_hash = interdict_event::sha256_hex(line.as_bytes());
                if e.kind == interdict_event::EventKind::Heartbeat {
                    let hb: serde_json::Value = e
                        .message
                        .as_deref()
                        .and_then(|m| serde_json::from_str(m).ok())
                        .unwrap_or_default();
                    t.exec(
                        "UPDATE hosts SET version = ?2, policy_sha256 = ?3, mode = ?4 WHERE host_id = ?1",
                        &[
                            host_id.into(),
                            hb["version"].as_str().into(),
                            hb["policy_sha256"].as_str().into(),
                            hb["mode"].as_str().into(),
                        ],
                    )?;
                }
            }
            t.exec(
                "UPDATE hosts SET last_seq = ?2, last_hash = ?3, last_seen_ms = ?4 WHERE host_id = ?1",
                &[
                    host_id.into(),
                    last_seq.into(),
                    last_hash.clone().into(),
                    now.into(),
                ],
            )?;
            out.acked_seq = last_seq as u64;
            Ok(out)
        })?)
    }

    /// The highest sequence number stored for a host.
    pub fn acked(&self, host_id: &str) -> Result<u64, StoreError> {
        let r = self.db.with(|c| {
            c.rows(
                "SELECT last_seq FROM hosts WHERE host_id = ?1",
                &[host_id.into()],
            )
        })?;
        Ok(one(r).map_or(0, |r| r[0].int() as u64))
    }

    /// Events matching `q`, oldest first, with the cursor of the next page.
    pub fn query(&self, q: &Query) -> Result<(Vec<Event>, Option<String>), StoreError> {
        let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
        let mut sql = String::from("SELECT json, time_ms, id FROM events WHERE 1 = 1");
        let mut args: Vec<Val> = Vec::new();
        let mut add = |cond: &str, v: Val| {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ?{}", args.len()));
        };
        if let Some(h) = &q.host {
            add("host_id =", h.as_str().into());
        }
        if let Some(u) = &q.user {
            add("user_name =", u.as_str().into());
        }
        if let Some(r) = &q.rule {
            add("rule_id =", r.as_str().into());
        }
        if let Some(k) = &q.kind {
            add("kind =", k.as_str().into());
        }
        if let Some(o) = &q.outcome {
            add("outcome =", o.as_str().into());
        }
        if let Some(a) = &q.action {
            add("rule_action =", a.as_str().into());
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
            args.push(id.into());
            let (a, b) = (args.len() - 1, args.len());
            sql.push_str(&format!(
                " AND (time_ms > ?{a} OR (time_ms = ?{a} AND id > ?{b}))"
            ));
        }
        sql.push_str(&format!(" ORDER BY time_ms, id LIMIT {}", limit + 1));
        let rows = self.db.with(|c| c.rows(&sql, &args))?;
        let more = rows.len() > limit;
        let mut out = Vec::new();
        let mut last = None;
        for r in rows.into_iter().take(limit) {
            last = Some(format!(
                "{}/{}",
                r[1].int(),
                r[2].text().unwrap_or_default()
            ));
            if let Some(e) = r[0]
                .text()
                .and_then(|j| serde_json::from_str::<Event>(&j).ok())
            {
                out.push(e);
            }
        }
        Ok((out, if more { last } else { None }))
    }

    /// Every finding, oldest first.
    pub fn findings(&self) -> Result<Vec<Finding>, StoreError> {
        let rows = self.db.with(|c| {
            c.rows(
                "SELECT host_id, kind, from_seq, to_seq, detail FROM findings ORDER BY id",
                &[],
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|r| Finding {
                host_id: r[0].text().unwrap_or_default(),
                kind: r[1].text().unwrap_or_default(),
                from_seq: r[2].int() as u64,
                to_seq: r[3].int() as u64,
                detail: r[4].text().unwrap_or_default(),
            })
            .collect())
    }

    /// The fleet: every host, flagged silent when not heard from in `silent_after_ms`.
    pub fn hosts(&self, silent_after_ms: i64) -> Result<Vec<HostRow>, StoreError> {
        let now = now_ms();
        let rows = self.db.with(|c| {
            c.rows(
                "SELECT host_id, hostname, last_seen_ms, last_seq, version, policy_sha256, mode
                 FROM hosts ORDER BY host_id",
                &[],
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let last_seen_ms = match r[2] {
                    Val::Int(t) => Some(t),
                    _ => None,
                };
                HostRow {
                    host_id: r[0].text().unwrap_or_default(),
                    hostname: r[1].text().unwrap_or_default(),
                    last_seen_ms,
                    last_seq: r[3].int() as u64,
                    version: r[4].text(),
                    policy_sha256: r[5].text(),
                    mode: r[6].text(),
                    silent: last_seen_ms.is_none_or(|t| now - t > silent_after_ms),
                }
            })
            .collect())
    }

    /// Number of events stored for a host.
    pub fn event_count(&self, host_id: &str) -> Result<u64, StoreError> {
        let r = self.db.with(|c| {
            c.rows(
                "SELECT COUNT(*) FROM events WHERE host_id = ?1",
                &[host_id.into()],
            )
        })?;
        Ok(one(r).map_or(0, |r| r[0].int() as u64))
    }
}
