//! The store: hosts and their tokens (hashed), reviewer tokens, events, chain state, findings,
//! signed cuts and counters, in SQLite (WAL, one transaction per batch, readers beside the
//! writer) or PostgreSQL (the same schema; the host's row locked while a batch is checked, so
//! that several collectors on one database never interleave one host's chain).
//!
//! Every event is kept as the exact bytes the agent sent (`raw`): the chain hash is computed over
//! them, so verification re-derives everything from what is stored. Each host has one chain per
//! *epoch* (a new epoch each time its spool starts over at 1); events that reuse a number already
//! taken are kept outside any chain (epoch 0). `ingest_seq`, assigned by the collector in commit
//! order, is the reviewers' cursor: an event shipped late still comes after everything a reviewer
//! has already seen.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use interdict_chain::{hex, sha256, unhex, Hash, GENESIS};
use interdict_event::Event;

use crate::sql::{Db, DbError, Exec, Val};

/// The schema, as migrations applied in order (the number applied is kept in `schema_version`).
/// `{ID}` is the auto-numbered key of each database. New features add a migration at the end.
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
    // Issue 13: raw bytes, ids unique per host, chains per epoch, the ingest cursor, signed
    // cuts, resolvable findings. Events stored before keep their line as it was re-serialized;
    // a number used twice goes outside the chain (epoch 0).
    r#"
CREATE TABLE events3 (
    ingest_seq {SEQ},
    host_id TEXT NOT NULL,
    id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    time_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    rule_id TEXT,
    rule_action TEXT,
    user_name TEXT,
    outcome TEXT,
    raw TEXT NOT NULL,
    received_ms BIGINT NOT NULL
);
INSERT INTO events3 (ingest_seq, host_id, id, epoch, seq, time_ms, kind, rule_id, rule_action, user_name, outcome, raw, received_ms)
    SELECT ROW_NUMBER() OVER (ORDER BY received_ms, host_id, seq, id), host_id, id,
        CASE WHEN ROW_NUMBER() OVER (PARTITION BY host_id, seq ORDER BY received_ms, id) = 1 THEN 1 ELSE 0 END,
        seq, time_ms, kind, rule_id, rule_action, user_name, outcome, json, received_ms
    FROM events;
DROP TABLE events;
ALTER TABLE events3 RENAME TO events;
CREATE UNIQUE INDEX events_host_id ON events (host_id, id);
CREATE INDEX events_chain ON events (host_id, epoch, seq);
CREATE INDEX events_host ON events (host_id, ingest_seq);
CREATE INDEX events_host_rule ON events (host_id, rule_id, ingest_seq);
CREATE INDEX events_rule ON events (rule_id, ingest_seq);
CREATE INDEX events_user ON events (user_name, ingest_seq);
CREATE INDEX events_outcome ON events (outcome, ingest_seq);
CREATE INDEX events_kind ON events (kind, ingest_seq);
CREATE INDEX events_time ON events (time_ms);
CREATE TABLE ingest_counter (n BIGINT NOT NULL);
INSERT INTO ingest_counter (n) SELECT COALESCE(MAX(ingest_seq), 0) FROM events;
CREATE TABLE chains (
    host_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    head_seq BIGINT NOT NULL,
    head_hash TEXT NOT NULL,
    records BIGINT NOT NULL,
    cut_seq BIGINT NOT NULL,
    cut_hash TEXT NOT NULL,
    PRIMARY KEY (host_id, epoch)
);
INSERT INTO chains (host_id, epoch, head_seq, head_hash, records, cut_seq, cut_hash)
    SELECT host_id, 1, last_seq, last_hash,
        (SELECT COUNT(*) FROM events e WHERE e.host_id = hosts.host_id AND e.epoch = 1),
        0, '0000000000000000000000000000000000000000000000000000000000000000'
    FROM hosts;
ALTER TABLE hosts ADD COLUMN epoch BIGINT NOT NULL DEFAULT 1;
ALTER TABLE hosts ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0;
UPDATE hosts SET stored_bytes = (SELECT COALESCE(SUM(LENGTH(raw)), 0) FROM events e WHERE e.host_id = hosts.host_id);
ALTER TABLE findings ADD COLUMN epoch BIGINT NOT NULL DEFAULT 1;
ALTER TABLE findings ADD COLUMN resolved_ms BIGINT;
ALTER TABLE findings ADD COLUMN resolution TEXT;
CREATE TABLE cuts (
    id {ID},
    host_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    reason TEXT NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL,
    signer TEXT NOT NULL
);
"#,
];

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no.
    #[error("database: {0}")]
    Db(#[from] DbError),
    /// A file of the store.
    #[error("{path}: {source}")]
    File {
        /// Which file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Why a batch was refused by the store (nothing of it is stored).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The database said no.
    #[error("database: {0}")]
    Db(#[from] DbError),
    /// An id stored before with different content.
    #[error("event {0} was stored before with different content; an id names one event")]
    Conflict(String),
    /// The host's storage quota is used up.
    #[error("this host's storage quota ({0} MiB) is used up")]
    Quota(u64),
    /// The host was deleted.
    #[error("this host is no longer enrolled")]
    Gone,
    /// (Internal) an event id was stored before after all: the batch is done again.
    #[error("an event id was stored before")]
    Recheck,
}

/// Who a bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An enrolled agent, by host id.
    Host(String),
    /// A reviewer (read-only), by name.
    Reviewer(String),
}

/// A finding made when a batch arrived: a gap in the sequence numbers, a record whose
/// `prev_hash` does not match, a restart, a reused number, or an acknowledged record found
/// missing or altered in the store. Findings that a later delivery settles (a gap filled in)
/// are marked resolved, with the time.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Finding {
    /// The host.
    pub host_id: String,
    /// The host's chain.
    pub epoch: u64,
    /// `gap`, `break`, `restart`, `reused`, `removed` or `altered`.
    pub kind: String,
    /// First sequence number concerned.
    pub from_seq: u64,
    /// Last sequence number concerned.
    pub to_seq: u64,
    /// What was expected and what came.
    pub detail: String,
    /// When it was found, ms since the epoch.
    pub at_ms: i64,
    /// When a later delivery settled it.
    pub resolved_ms: Option<i64>,
    /// How.
    pub resolution: Option<String>,
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
    /// The current chain.
    pub epoch: u64,
    /// Highest sequence number acknowledged in the current chain.
    pub last_seq: u64,
    /// Agent version (from heartbeats).
    pub version: Option<String>,
    /// Policy hash (from heartbeats).
    pub policy_sha256: Option<String>,
    /// enforce or monitor (from heartbeats).
    pub mode: Option<String>,
    /// Silent longer than the threshold.
    pub silent: bool,
    /// Bytes of events stored for it.
    pub stored_bytes: u64,
}

/// The state of one chain of one host, as the collector keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ChainRow {
    /// Host.
    pub host_id: String,
    /// Chain.
    pub epoch: u64,
    /// Last acknowledged sequence number.
    pub head_seq: u64,
    /// Its hash, as it arrived.
    pub head_hash: String,
    /// Records stored.
    pub records: u64,
    /// Pruned up to here.
    pub cut_seq: u64,
    /// The hash of record `cut_seq`.
    pub cut_hash: String,
}

/// Output format of a query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The events as the agents sent them.
    #[default]
    Native,
    /// OCSF 1.3.
    Ocsf,
    /// ECS 8.11.
    Ecs,
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
    /// From this event time (RFC 3339, inclusive).
    pub since: Option<String>,
    /// Until this event time (RFC 3339, exclusive).
    pub until: Option<String>,
    /// Events stored after this cursor (the `X-Cursor` or `X-Next-Cursor` of an earlier page: the
    /// collector's ingest sequence number).
    pub after: Option<i64>,
    /// Page size in events (default and most: the configured page size).
    pub limit: Option<usize>,
    /// native, ocsf or ecs.
    #[serde(default)]
    pub format: Format,
}

/// Hex SHA-256 of a token, as stored.
pub fn token_hash(token: &str) -> String {
    hex(&sha256(token.as_bytes()))
}

/// A fresh random token (256 bits, hex), from the operating system's generator.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the operating system's random generator");
    hex(&b)
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
    /// Events already stored (same id, same bytes): ignored.
    pub duplicates: usize,
    /// The highest sequence number stored in the host's current chain: the agent resumes after
    /// it. Every event of the batch at or below it is stored.
    pub acked_seq: u64,
    /// The hash of that record.
    pub acked_hash: String,
    /// Findings recorded by this batch.
    pub findings: usize,
}

/// One event of a batch, checked and parsed: its exact bytes, the parsed event, and its hash.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The bytes as sent.
    pub raw: String,
    /// The event.
    pub event: Event,
    /// SHA-256 of `raw`.
    pub hash: Hash,
    /// `prev_hash`.
    pub prev: Hash,
    /// `seq`.
    pub seq: u64,
    /// Event time, ms.
    pub time_ms: i64,
}

impl Incoming {
    /// Parse one event's bytes. `None` when it is not an event with `seq`, `prev_hash` and time.
    pub fn parse(raw: &str) -> Result<Incoming, String> {
        let event: Event = serde_json::from_str(raw).map_err(|e| e.to_string())?;
        let seq = event
            .seq
            .filter(|s| *s > 0 && *s <= i64::MAX as u64)
            .ok_or("no valid seq")?;
        let prev = event
            .prev_hash
            .as_deref()
            .and_then(unhex)
            .ok_or("no valid prev_hash (64 lower-case hex digits)")?;
        let time_ms = interdict_event::parse_rfc3339_millis(&event.time).ok_or("no valid time")?;
        Ok(Incoming {
            hash: sha256(raw.as_bytes()),
            raw: raw.to_string(),
            event,
            prev,
            seq,
            time_ms,
        })
    }
}

/// The store.
pub struct Store {
    db: Db,
}

fn one(rows: Vec<Vec<Val>>) -> Option<Vec<Val>> {
    rows.into_iter().next()
}

fn u(v: &Val) -> u64 {
    v.int().max(0) as u64
}

fn text(v: &Val) -> String {
    v.text().unwrap_or_default()
}

/// Rows per multi-row INSERT (SQLite allows 32,766 bound values; 13 per row here).
const INSERT_CHUNK: usize = 1000;
/// Values per `IN (...)` list.
const IN_CHUNK: usize = 500;

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Make `path` readable by its owner only (when it exists).
fn owner_only(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| StoreError::File {
                    path: path.display().to_string(),
                    source,
                },
            )
        }
        _ => Ok(()),
    }
}

impl Store {
    /// Open (or create) the SQLite database at `path` and migrate it. The database and its
    /// `-wal` and `-shm` files are readable by their owner only (0600).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        // Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
        // database's mode.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::File {
                path: path.display().to_string(),
                source,
            })?;
        for suffix in ["", "-wal", "-shm"] {
            owner_only(Path::new(&format!("{}{suffix}", path.display())))?;
        }
        let conn = |write: bool| -> Result<rusqlite::Connection, DbError> {
            let c = rusqlite::Connection::open(path)?;
            if write {
                c.pragma_update(None, "journal_mode", "WAL")?;
                // What is deleted (a plain-text secret of an older version, pruned events) is
                // overwritten, not left in free pages.
                c.pragma_update(None, "secure_delete", "ON")?;
            }
            c.pragma_update(None, "synchronous", "NORMAL")?;
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            Ok(c)
        };
        let w = conn(true)?;
        let r = (0..3)
            .map(|_| conn(false).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Store::migrate(Store {
            db: Db::Sqlite {
                w: Mutex::new(w),
                r,
            },
        })
    }

    /// Connect to PostgreSQL (`host=... user=... dbname=...` or a `postgresql://` URL) and
    /// migrate the schema. Several collectors may share the database.
    pub fn open_postgres(params: &str) -> Result<Store, StoreError> {
        let w = postgres::Client::connect(params, postgres::NoTls).map_err(DbError::from)?;
        let r = postgres::Client::connect(params, postgres::NoTls).map_err(DbError::from)?;
        Store::migrate(Store {
            db: Db::Postgres {
                w: Mutex::new(Some(Box::new(w))),
                r: Mutex::new(Some(Box::new(r))),
            },
        })
    }

    /// Refresh the query planner's statistics where that is worth it (SQLite's `PRAGMA
    /// optimize`; PostgreSQL's autovacuum does it by itself).
    pub fn optimize(&self) -> Result<(), StoreError> {
        if !self.db.is_postgres() {
            self.db.with(|c| c.rows("PRAGMA optimize", &[]))?;
        }
        Ok(())
    }

    /// True on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.db.is_postgres()
    }

    fn migrate(store: Store) -> Result<Store, StoreError> {
        let pg = store.db.is_postgres();
        let converted = store.db.tx(|t| -> Result<bool, DbError> {
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
            let (id, seq) = if pg {
                ("BIGSERIAL PRIMARY KEY", "BIGINT PRIMARY KEY")
            } else {
                ("INTEGER PRIMARY KEY", "INTEGER PRIMARY KEY")
            };
            for (i, m) in MIGRATIONS.iter().enumerate().skip(done) {
                for stmt in m.replace("{ID}", id).replace("{SEQ}", seq).split(';') {
                    if !stmt.trim().is_empty() {
                        t.exec(stmt, &[])?;
                    }
                }
                t.exec(
                    "UPDATE schema_version SET n = ?1",
                    &[((i + 1) as i64).into()],
                )?;
            }
            // An enroll secret kept in plain text by an older collector: kept hashed from now on.
            if let Some(r) = one(t.rows("SELECT v FROM meta WHERE k = 'enroll_secret'", &[])?) {
                t.exec(
                    "INSERT INTO meta (k, v) VALUES ('enroll_secret_sha256', ?1) ON CONFLICT (k) DO NOTHING",
                    &[token_hash(&text(&r[0])).into()],
                )?;
                t.exec("DELETE FROM meta WHERE k = 'enroll_secret'", &[])?;
                return Ok(true);
            }
            Ok(false)
        })?;
        if converted && !pg {
            // Out of the write-ahead log and into the (overwritten) database file now.
            store
                .db
                .with(|c| c.rows("PRAGMA wal_checkpoint(TRUNCATE)", &[]))?;
        }
        Ok(store)
    }

    /// Create the enroll secret when there is none; `Some(secret)` then (to be shown once: only
    /// its hash is kept), `None` when one exists.
    pub fn ensure_enroll_secret(&self) -> Result<Option<String>, StoreError> {
        let s = new_token();
        let n = self.db.with(|c| {
            c.exec(
                "INSERT INTO meta (k, v) VALUES ('enroll_secret_sha256', ?1) ON CONFLICT (k) DO NOTHING",
                &[token_hash(&s).into()],
            )
        })?;
        Ok((n == 1).then_some(s))
    }

    /// A new enroll secret (returned, to be shown once); the old one stops working.
    pub fn rotate_enroll_secret(&self) -> Result<String, StoreError> {
        let s = new_token();
        self.db.with(|c| {
            c.exec(
                "INSERT INTO meta (k, v) VALUES ('enroll_secret_sha256', ?1)
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                &[token_hash(&s).into()],
            )
        })?;
        Ok(s)
    }

    /// Whether `secret` is the enroll secret (compared in constant time).
    pub fn check_enroll_secret(&self, secret: &str) -> Result<bool, StoreError> {
        use subtle::ConstantTimeEq;
        let r = self
            .db
            .read(|c| c.rows("SELECT v FROM meta WHERE k = 'enroll_secret_sha256'", &[]))?;
        let Some(stored) = one(r).and_then(|r| r[0].text()) else {
            return Ok(false);
        };
        Ok(bool::from(
            stored.as_bytes().ct_eq(token_hash(secret).as_bytes()),
        ))
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

    /// Revoke a reviewer's token. False when there is no such reviewer.
    pub fn revoke_reviewer(&self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .db
            .with(|c| c.exec("DELETE FROM reviewers WHERE name = ?1", &[name.into()]))?;
        Ok(n == 1)
    }

    /// Reviewer names.
    pub fn reviewers(&self) -> Result<Vec<String>, StoreError> {
        let r = self
            .db
            .read(|c| c.rows("SELECT name FROM reviewers ORDER BY name", &[]))?;
        Ok(r.iter().map(|r| text(&r[0])).collect())
    }

    /// Enroll a host: a new token, stored hashed. `Ok(None)` when the host is enrolled already:
    /// a second enrollment would let anyone holding the enroll secret take over a host's
    /// identity, so it needs IT to [`Store::reset_host`] first (its chain state is kept).
    /// `Err(n)` inside when `max_hosts` hosts are enrolled already.
    pub fn enroll(
        &self,
        host_id: &str,
        hostname: &str,
        max_hosts: u64,
    ) -> Result<Result<Option<String>, u64>, StoreError> {
        let t = new_token();
        Ok(self.db.tx(|c| -> Result<_, DbError> {
            let n = u(&one(c.rows("SELECT COUNT(*) FROM hosts", &[])?).unwrap_or_default()[0]);
            let exists =
                !c.rows("SELECT 1 FROM hosts WHERE host_id = ?1", &[host_id.into()])?.is_empty();
            if !exists && n >= max_hosts {
                return Ok(Err(n));
            }
            // A host deleted before starts a new chain after its last one.
            let epoch = 1 + u(&one(c.rows(
                "SELECT COALESCE(MAX(epoch), 0) FROM cuts WHERE host_id = ?1",
                &[host_id.into()],
            )?)
            .unwrap_or_default()[0]);
            let n = c.exec(
                "INSERT INTO hosts (host_id, hostname, token_sha256, enrolled_ms, last_hash, epoch)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (host_id) DO UPDATE SET token_sha256 = excluded.token_sha256,
                     hostname = excluded.hostname
                 WHERE hosts.token_sha256 LIKE 'reset:%'",
                &[
                    host_id.into(),
                    hostname.into(),
                    token_hash(&t).into(),
                    now_ms().into(),
                    hex(&GENESIS).into(),
                    (epoch as i64).into(),
                ],
            )?;
            if n == 1 && !exists {
                c.exec(
                    "INSERT INTO chains (host_id, epoch, head_seq, head_hash, records, cut_seq, cut_hash)
                     VALUES (?1, ?2, 0, ?3, 0, 0, ?3) ON CONFLICT (host_id, epoch) DO NOTHING",
                    &[host_id.into(), (epoch as i64).into(), hex(&GENESIS).into()],
                )?;
            }
            Ok(Ok((n == 1).then_some(t)))
        })?)
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

    /// Delete a host: its token, its events, its chains and findings. A signed cut per chain
    /// says so (verification reports the deletion instead of missing records). False when there
    /// is no such host.
    pub fn delete_host(
        &self,
        host_id: &str,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<bool, StoreError> {
        let lock = self.lock_clause();
        Ok(self.db.tx(|t| -> Result<bool, DbError> {
            if t.rows(
                &format!("SELECT 1 FROM hosts WHERE host_id = ?1{lock}"),
                &[host_id.into()],
            )?
            .is_empty()
            {
                return Ok(false);
            }
            for c in chain_rows(t, Some(host_id))? {
                let cut = interdict_chain::Cut {
                    kind: "cut".into(),
                    host_id: host_id.into(),
                    epoch: c.epoch,
                    seq: c.head_seq,
                    hash: c.head_hash.clone(),
                    pruned: c.records,
                    at_ms: now_ms(),
                    reason: "deleted".into(),
                };
                insert_cut(t, &cut, key)?;
            }
            for table in ["events", "chains", "findings", "hosts"] {
                t.exec(
                    &format!("DELETE FROM {table} WHERE host_id = ?1"),
                    &[host_id.into()],
                )?;
            }
            Ok(true)
        })?)
    }

    /// Whose token this is.
    pub fn principal(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let h: Val = token_hash(token).into();
        Ok(self.db.read(|c| {
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

    /// Add `n` to a counter.
    pub fn count_n(&self, name: &str, n: u64) -> Result<(), StoreError> {
        self.db.with(|c| {
            c.exec(
                "INSERT INTO counters (name, n) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET n = counters.n + excluded.n",
                &[name.into(), (n as i64).into()],
            )
        })?;
        Ok(())
    }

    /// Add one to a counter.
    pub fn count(&self, name: &str) -> Result<(), StoreError> {
        self.count_n(name, 1)
    }

    /// Every counter.
    pub fn counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .db
            .read(|c| c.rows("SELECT name, n FROM counters ORDER BY name", &[]))?;
        Ok(rows.into_iter().map(|r| (text(&r[0]), u(&r[1]))).collect())
    }

    fn lock_clause(&self) -> &'static str {
        if self.db.is_postgres() {
            " FOR UPDATE"
        } else {
            ""
        }
    }

    /// Store a batch from `host_id` (already checked: every event is that host's, ids unique in
    /// the batch), in one transaction, checking the chain as it goes. Refused whole (nothing
    /// stored) on an id conflict or a full quota.
    pub fn ingest(
        &self,
        host_id: &str,
        mut events: Vec<Incoming>,
        quota_bytes: u64,
    ) -> Result<Ingested, IngestError> {
        events.sort_by_key(|e| e.seq);
        // Usually every event is new: its ids are then not looked up first, and if one was
        // stored before after all, the batch is done again, looking them up.
        match self.ingest_pass(host_id, &events, quota_bytes, false) {
            Err(IngestError::Recheck) => self.ingest_pass(host_id, &events, quota_bytes, true),
            r => r,
        }
    }

    fn ingest_pass(
        &self,
        host_id: &str,
        events: &[Incoming],
        quota_bytes: u64,
        look_up_ids: bool,
    ) -> Result<Ingested, IngestError> {
        let lock = self.lock_clause();
        let now = now_ms();
        let batch_bytes: u64 = events.iter().map(|e| e.raw.len() as u64).sum();
        self.db.tx(|t| -> Result<Ingested, IngestError> {
            let host = one(t.rows(
                &format!("SELECT epoch, stored_bytes FROM hosts WHERE host_id = ?1{lock}"),
                &[host_id.into()],
            )?)
            .ok_or(IngestError::Gone)?;
            let mut epoch = u(&host[0]);
            let stored_bytes = u(&host[1]);
            let chain = chain_rows(t, Some(host_id))?
                .into_iter()
                .find(|c| c.epoch == epoch)
                .unwrap_or(ChainRow {
                    host_id: host_id.into(),
                    epoch,
                    head_seq: 0,
                    head_hash: hex(&GENESIS),
                    records: 0,
                    cut_seq: 0,
                    cut_hash: hex(&GENESIS),
                });
            let mut out = Ingested::default();
            // Ids stored before: the same bytes are a resend, different bytes a conflict. Only
            // a batch reaching back to numbers acknowledged before is likely to hold any.
            let look_up_ids = look_up_ids || events.first().is_some_and(|e| e.seq <= chain.head_seq);
            let mut known: HashMap<String, String> = HashMap::new();
            for chunk in events.chunks(IN_CHUNK).filter(|_| look_up_ids) {
                let mut args: Vec<Val> = vec![host_id.into()];
                args.extend(chunk.iter().map(|e| Val::from(e.event.id.as_str())));
                for r in t.rows(
                    &format!(
                        "SELECT id, raw FROM events WHERE host_id = ?1 AND id IN ({})",
                        placeholders(2, chunk.len())
                    ),
                    &args,
                )? {
                    known.insert(text(&r[0]), text(&r[1]));
                }
            }
            let mut fresh = Vec::with_capacity(events.len());
            for e in events {
                match known.get(&e.event.id) {
                    Some(raw) if *raw == e.raw => out.duplicates += 1,
                    Some(_) => return Err(IngestError::Conflict(e.event.id.clone())),
                    None => fresh.push(e),
                }
            }
            if quota_bytes > 0 && !fresh.is_empty() && stored_bytes + batch_bytes > quota_bytes {
                return Err(IngestError::Quota(quota_bytes >> 20));
            }
            let mut findings: Vec<(u64, &str, u64, u64, String)> = Vec::new();
            let mut head_seq = chain.head_seq;
            let mut head_hash = unhex(&chain.head_hash).unwrap_or(GENESIS);
            let mut records = chain.records;
            let mut cut_seq = chain.cut_seq;
            // Is the acknowledged head still what was acknowledged?
            if !fresh.is_empty() && head_seq > cut_seq {
                let stored = one(t.rows(
                    "SELECT seq, raw FROM events WHERE host_id = ?1 AND epoch = ?2 ORDER BY seq DESC LIMIT 1",
                    &[host_id.into(), (epoch as i64).into()],
                )?);
                let (s, h) = stored.map_or((cut_seq, None), |r| {
                    (u(&r[0]), Some(sha256(text(&r[1]).as_bytes())))
                });
                if s < head_seq {
                    findings.push((
                        epoch,
                        "removed",
                        s + 1,
                        head_seq,
                        format!(
                            "records {} to {head_seq} were acknowledged to the host but are no longer stored: removed at the collector",
                            s + 1
                        ),
                    ));
                } else if s == head_seq && h != Some(head_hash) {
                    findings.push((
                        epoch,
                        "altered",
                        s,
                        s,
                        format!("record {s} no longer hashes to what was acknowledged: altered at the collector"),
                    ));
                }
            }
            // Numbers at or below the head that this batch brings: taken already, or filling in.
            let low: Vec<u64> = fresh
                .iter()
                .filter(|e| e.seq <= head_seq)
                .map(|e| e.seq)
                .collect();
            let mut taken: HashSet<u64> = HashSet::new();
            for chunk in low.chunks(IN_CHUNK) {
                let mut args: Vec<Val> = vec![host_id.into(), (epoch as i64).into()];
                args.extend(chunk.iter().map(|s| Val::Int(*s as i64)));
                for r in t.rows(
                    &format!(
                        "SELECT seq FROM events WHERE host_id = ?1 AND epoch = ?2 AND seq IN ({})",
                        placeholders(3, chunk.len())
                    ),
                    &args,
                )? {
                    taken.insert(u(&r[0]));
                }
            }
            let mut closed: Vec<ChainRow> = Vec::new();
            let mut placed: Vec<(u64, &Incoming)> = Vec::with_capacity(fresh.len());
            let mut late: BTreeSet<u64> = BTreeSet::new();
            for &e in &fresh {
                let s = e.seq;
                if s > head_seq {
                    if s == head_seq + 1 {
                        if e.prev != head_hash && findings.iter().all(|f| f.1 != "altered") {
                            findings.push((
                                epoch,
                                "break",
                                s,
                                s,
                                format!(
                                    "prev_hash {} does not match the hash {} of record {head_seq}",
                                    hex(&e.prev),
                                    hex(&head_hash)
                                ),
                            ));
                        }
                    } else {
                        findings.push((
                            epoch,
                            "gap",
                            head_seq + 1,
                            s - 1,
                            format!("records {} to {} never arrived", head_seq + 1, s - 1),
                        ));
                    }
                    head_seq = s;
                    head_hash = e.hash;
                    records += 1;
                    placed.push((epoch, e));
                } else if !taken.contains(&s) && s > cut_seq {
                    // A record that was missing arrives late.
                    taken.insert(s);
                    records += 1;
                    late.insert(s);
                    placed.push((epoch, e));
                } else if s == 1 && e.prev == GENESIS {
                    // The host's spool started over (state wiped, reinstalled): a new chain.
                    findings.push((
                        epoch,
                        "restart",
                        1,
                        head_seq,
                        format!("the chain started over at 1 after record {head_seq}"),
                    ));
                    closed.push(ChainRow {
                        host_id: host_id.into(),
                        epoch,
                        head_seq,
                        head_hash: hex(&head_hash),
                        records,
                        cut_seq,
                        cut_hash: chain.cut_hash.clone(),
                    });
                    epoch += 1;
                    (head_seq, head_hash, records, cut_seq) = (1, e.hash, 1, 0);
                    taken.clear();
                    late.clear();
                    placed.push((epoch, e));
                } else {
                    // A new event under a number already used: kept, outside the chain.
                    findings.push((
                        epoch,
                        "reused",
                        s,
                        s,
                        format!("event {} reuses sequence number {s}", e.event.id),
                    ));
                    placed.push((0, e));
                }
            }
            out.stored = placed.len();
            if !placed.is_empty() {
                // Numbered in commit order: the counter's row stays locked until this commits.
                let end = t
                    .rows(
                        "UPDATE ingest_counter SET n = n + ?1 RETURNING n",
                        &[(placed.len() as i64).into()],
                    )?
                    .first()
                    .map_or(0, |r| r[0].int());
                let first = end - placed.len() as i64 + 1;
                for (ci, chunk) in placed.chunks(INSERT_CHUNK).enumerate() {
                    let mut sql = String::from(
                        "INSERT INTO events (ingest_seq, host_id, id, epoch, seq, time_ms, kind, rule_id, rule_action, user_name, outcome, raw, received_ms) VALUES ",
                    );
                    let mut args: Vec<Val> = Vec::with_capacity(chunk.len() * 13);
                    for (i, (ep, e)) in chunk.iter().enumerate() {
                        if i > 0 {
                            sql.push(',');
                        }
                        sql.push('(');
                        sql.push_str(&placeholders(i * 13 + 1, 13));
                        sql.push(')');
                        let ev = &e.event;
                        args.extend([
                            (first + (ci * INSERT_CHUNK + i) as i64).into(),
                            host_id.into(),
                            ev.id.as_str().into(),
                            (*ep as i64).into(),
                            (e.seq as i64).into(),
                            e.time_ms.into(),
                            snake(&ev.kind).into(),
                            ev.rule.as_ref().map(|r| r.id.as_str()).into(),
                            ev.rule.as_ref().map(|r| r.action.as_str()).into(),
                            ev.process.as_ref().and_then(|p| p.user.as_deref()).into(),
                            ev.outcome.as_ref().map(snake).into(),
                            e.raw.as_str().into(),
                            now.into(),
                        ]);
                    }
                    sql.push_str(" ON CONFLICT (host_id, id) DO NOTHING");
                    if t.exec(&sql, &args)? != chunk.len() as u64 {
                        // An id stored before that was not looked up: again, looking up.
                        return Err(IngestError::Recheck);
                    }
                }
            }
            // Late records: do they link to their neighbours? Which gaps do they settle?
            if !late.is_empty() {
                let mut want: BTreeSet<u64> = BTreeSet::new();
                for s in &late {
                    want.extend([s - 1, *s, s + 1]);
                }
                let want: Vec<u64> = want.into_iter().filter(|s| *s > 0).collect();
                let mut have: HashMap<u64, (Hash, Hash)> = HashMap::new();
                for chunk in want.chunks(IN_CHUNK) {
                    let mut args: Vec<Val> = vec![host_id.into(), (epoch as i64).into()];
                    args.extend(chunk.iter().map(|s| Val::Int(*s as i64)));
                    for r in t.rows(
                        &format!(
                            "SELECT seq, raw FROM events WHERE host_id = ?1 AND epoch = ?2 AND seq IN ({})",
                            placeholders(3, chunk.len())
                        ),
                        &args,
                    )? {
                        let raw = text(&r[1]);
                        let prev = interdict_chain::link(&raw).map_or(GENESIS, |l| l.prev);
                        have.insert(u(&r[0]), (sha256(raw.as_bytes()), prev));
                    }
                }
                if cut_seq > 0 {
                    have.entry(cut_seq).or_insert((
                        unhex(&chain.cut_hash).unwrap_or(GENESIS),
                        GENESIS,
                    ));
                }
                for &s in &late {
                    let (h, p) = have[&s];
                    let before = if s == 1 { Some(GENESIS) } else { have.get(&(s - 1)).map(|x| x.0) };
                    if before.is_some_and(|b| b != p) {
                        findings.push((
                            epoch,
                            "break",
                            s,
                            s,
                            format!("late record {s} does not link to record {}", s - 1),
                        ));
                    }
                    if have.get(&(s + 1)).is_some_and(|x| x.1 != h) && !late.contains(&(s + 1)) {
                        findings.push((
                            epoch,
                            "break",
                            s + 1,
                            s + 1,
                            format!("record {} does not link to late record {s}", s + 1),
                        ));
                    }
                }
                let open = t.rows(
                    "SELECT id, from_seq, to_seq FROM findings
                     WHERE host_id = ?1 AND epoch = ?2 AND kind = 'gap' AND resolved_ms IS NULL",
                    &[host_id.into(), (epoch as i64).into()],
                )?;
                for f in open {
                    let (id, a, b) = (f[0].int(), u(&f[1]), u(&f[2]));
                    let filled: Vec<u64> = late.range(a..=b).copied().collect();
                    if filled.is_empty() {
                        continue;
                    }
                    let stored: HashSet<u64> = t
                        .rows(
                            "SELECT seq FROM events WHERE host_id = ?1 AND epoch = ?2 AND seq BETWEEN ?3 AND ?4",
                            &[host_id.into(), (epoch as i64).into(), (a as i64).into(), (b as i64).into()],
                        )?
                        .iter()
                        .map(|r| u(&r[0]))
                        .collect();
                    let mut left = Vec::new();
                    let mut run: Option<(u64, u64)> = None;
                    for s in a..=b {
                        if stored.contains(&s) {
                            left.extend(run.take());
                        } else {
                            run = Some(run.map_or((s, s), |(x, _)| (x, s)));
                        }
                    }
                    left.extend(run);
                    let how = if left.is_empty() {
                        format!("every missing record arrived later ({} in this delivery)", filled.len())
                    } else {
                        format!(
                            "{} record(s) arrived later; still missing: {}",
                            filled.len(),
                            left.iter().map(|(x, y)| format!("{x}-{y}")).collect::<Vec<_>>().join(", ")
                        )
                    };
                    t.exec(
                        "UPDATE findings SET resolved_ms = ?2, resolution = ?3 WHERE id = ?1",
                        &[id.into(), now.into(), how.into()],
                    )?;
                    for (x, y) in left {
                        findings.push((epoch, "gap", x, y, format!("records {x} to {y} never arrived")));
                    }
                }
            }
            // Heartbeats say what the collector had acknowledged to the agent: is it stored?
            for (ep, e) in &placed {
                let Some(claim) = heartbeat_ack(&e.event) else {
                    continue;
                };
                if *ep != epoch || claim.0 <= cut_seq {
                    continue;
                }
                let have = if claim.0 == 0 {
                    continue;
                } else {
                    one(t.rows(
                        "SELECT raw FROM events WHERE host_id = ?1 AND epoch = ?2 AND seq = ?3",
                        &[host_id.into(), (epoch as i64).into(), (claim.0 as i64).into()],
                    )?)
                    .map(|r| sha256(text(&r[0]).as_bytes()))
                };
                let s = claim.0;
                match have {
                    None => findings.push((
                        epoch,
                        "removed",
                        s,
                        s,
                        format!("heartbeat {} says record {s} was acknowledged, but it is not stored: removed at the collector", e.seq),
                    )),
                    Some(h) if h != claim.1 => findings.push((
                        epoch,
                        "altered",
                        s,
                        s,
                        format!("heartbeat {} says record {s} was acknowledged as {}, the stored record hashes to {}: altered at the collector", e.seq, hex(&claim.1), hex(&h)),
                    )),
                    _ => {}
                }
            }
            for c in &closed {
                save_chain(t, c)?;
            }
            save_chain(
                t,
                &ChainRow {
                    host_id: host_id.into(),
                    epoch,
                    head_seq,
                    head_hash: hex(&head_hash),
                    records,
                    cut_seq,
                    cut_hash: if closed.is_empty() { chain.cut_hash.clone() } else { hex(&GENESIS) },
                },
            )?;
            let added: u64 = placed.iter().map(|(_, e)| e.raw.len() as u64).sum();
            t.exec(
                "UPDATE hosts SET epoch = ?2, stored_bytes = stored_bytes + ?3, last_seen_ms = ?4,
                     last_seq = ?5, last_hash = ?6 WHERE host_id = ?1",
                &[
                    host_id.into(),
                    (epoch as i64).into(),
                    (added as i64).into(),
                    now.into(),
                    (head_seq as i64).into(),
                    hex(&head_hash).into(),
                ],
            )?;
            if let Some(hb) = placed
                .iter()
                .rev()
                .find(|(_, e)| e.event.kind == interdict_event::EventKind::Heartbeat)
            {
                let hb: serde_json::Value = hb
                    .1
                    .event
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
            for (ep, kind, from, to, detail) in &findings {
                t.exec(
                    "INSERT INTO findings (host_id, epoch, kind, from_seq, to_seq, detail, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    &[
                        host_id.into(),
                        (*ep as i64).into(),
                        (*kind).into(),
                        (*from as i64).into(),
                        (*to as i64).into(),
                        detail.as_str().into(),
                        now.into(),
                    ],
                )?;
            }
            out.findings = findings.len();
            out.acked_seq = head_seq;
            out.acked_hash = hex(&head_hash);
            Ok(out)
        })
    }

    /// The highest sequence number acknowledged in a host's current chain.
    pub fn acked(&self, host_id: &str) -> Result<u64, StoreError> {
        let r = self.db.read(|c| {
            c.rows(
                "SELECT c.head_seq FROM chains c JOIN hosts h ON h.host_id = c.host_id AND h.epoch = c.epoch
                 WHERE h.host_id = ?1",
                &[host_id.into()],
            )
        })?;
        Ok(one(r).map_or(0, |r| u(&r[0])))
    }

    /// Events matching `q` stored after `q.after`, in ingest order, as (ingest sequence number,
    /// bytes as sent): at most `max_events`, and no more than `max_bytes` unless a single event
    /// is larger. `true` when more may follow.
    pub fn query(
        &self,
        q: &Query,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(i64, String)>, bool), StoreError> {
        let limit = q.limit.unwrap_or(max_events).clamp(1, max_events.max(1));
        let mut sql = String::from("SELECT ingest_seq, raw FROM events WHERE 1 = 1");
        let mut args: Vec<Val> = Vec::new();
        let mut add = |cond: &str, v: Val| {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ?{}", args.len()));
        };
        for (col, v) in [
            ("host_id =", &q.host),
            ("user_name =", &q.user),
            ("rule_id =", &q.rule),
            ("kind =", &q.kind),
            ("outcome =", &q.outcome),
            ("rule_action =", &q.action),
        ] {
            if let Some(v) = v {
                add(col, v.as_str().into());
            }
        }
        if let Some(s) = q
            .since
            .as_deref()
            .and_then(interdict_event::parse_rfc3339_millis)
        {
            add("time_ms >=", s.into());
        }
        if let Some(x) = q
            .until
            .as_deref()
            .and_then(interdict_event::parse_rfc3339_millis)
        {
            add("time_ms <", x.into());
        }
        if let Some(a) = q.after {
            add("ingest_seq >", a.into());
        }
        sql.push_str(&format!(" ORDER BY ingest_seq LIMIT {}", limit + 1));
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        self.db.read(|c| {
            c.each(&sql, &args, &mut |r| {
                let raw = text(&r[1]);
                if out.len() == limit || (!out.is_empty() && bytes + raw.len() > max_bytes) {
                    more = true;
                    return false;
                }
                bytes += raw.len();
                out.push((r[0].int(), raw));
                true
            })
        })?;
        Ok((out, more))
    }

    /// One host's records in chain order (epoch, seq, ingest sequence number) after `after`:
    /// (epoch, seq, ingest_seq, bytes), bounded like [`Store::query`]; `true` when more follow.
    #[allow(clippy::type_complexity)]
    pub fn chain_page(
        &self,
        host_id: &str,
        after: (u64, u64, i64),
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(u64, u64, i64, String)>, bool), StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        self.db.read(|c| {
            c.each(
                &format!(
                    "SELECT epoch, seq, ingest_seq, raw FROM events WHERE host_id = ?1
                     AND (epoch, seq, ingest_seq) > (?2, ?3, ?4)
                     ORDER BY epoch, seq, ingest_seq LIMIT {}",
                    max_events + 1
                ),
                &[
                    host_id.into(),
                    (after.0 as i64).into(),
                    (after.1 as i64).into(),
                    after.2.into(),
                ],
                &mut |r| {
                    let raw = text(&r[3]);
                    if out.len() == max_events || (!out.is_empty() && bytes + raw.len() > max_bytes)
                    {
                        more = true;
                        return false;
                    }
                    bytes += raw.len();
                    out.push((u(&r[0]), u(&r[1]), r[2].int(), raw));
                    true
                },
            )
        })?;
        Ok((out, more))
    }

    /// Findings, oldest first (of one host when given).
    pub fn findings_of(&self, host: Option<&str>) -> Result<Vec<Finding>, StoreError> {
        let (filter, args): (&str, Vec<Val>) = match host {
            Some(h) => (" WHERE host_id = ?1", vec![h.into()]),
            None => ("", vec![]),
        };
        let rows = self.db.read(|c| {
            c.rows(
                &format!("SELECT host_id, epoch, kind, from_seq, to_seq, detail, at_ms, resolved_ms, resolution FROM findings{filter} ORDER BY id"),
                &args,
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|r| Finding {
                host_id: text(&r[0]),
                epoch: u(&r[1]),
                kind: text(&r[2]),
                from_seq: u(&r[3]),
                to_seq: u(&r[4]),
                detail: text(&r[5]),
                at_ms: r[6].int(),
                resolved_ms: match r[7] {
                    Val::Int(t) => Some(t),
                    _ => None,
                },
                resolution: r[8].text(),
            })
            .collect())
    }

    /// Every finding, oldest first.
    pub fn findings(&self) -> Result<Vec<Finding>, StoreError> {
        self.findings_of(None)
    }

    /// The fleet: every host, flagged silent when not heard from in `silent_after_ms`.
    pub fn hosts(&self, silent_after_ms: i64) -> Result<Vec<HostRow>, StoreError> {
        let now = now_ms();
        let rows = self.db.read(|c| {
            c.rows(
                "SELECT h.host_id, h.hostname, h.last_seen_ms, h.epoch, COALESCE(c.head_seq, 0), h.version,
                        h.policy_sha256, h.mode, h.stored_bytes
                 FROM hosts h LEFT JOIN chains c ON c.host_id = h.host_id AND c.epoch = h.epoch
                 ORDER BY h.host_id",
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
                    host_id: text(&r[0]),
                    hostname: text(&r[1]),
                    last_seen_ms,
                    epoch: u(&r[3]),
                    last_seq: u(&r[4]),
                    version: r[5].text(),
                    policy_sha256: r[6].text(),
                    mode: r[7].text(),
                    silent: last_seen_ms.is_none_or(|t| now - t > silent_after_ms),
                    stored_bytes: u(&r[8]),
                }
            })
            .collect())
    }

    /// Every chain of every host (or of one).
    pub fn chains(&self, host: Option<&str>) -> Result<Vec<ChainRow>, StoreError> {
        Ok(self.db.read(|c| chain_rows(c, host))?)
    }

    /// Every signed cut (of one host when given), oldest first.
    pub fn cuts(&self, host: Option<&str>) -> Result<Vec<interdict_chain::Signed>, StoreError> {
        let (filter, args): (&str, Vec<Val>) = match host {
            Some(h) => (" WHERE host_id = ?1", vec![h.into()]),
            None => ("", vec![]),
        };
        let rows = self.db.read(|c| {
            c.rows(
                &format!("SELECT body, signature, signer FROM cuts{filter} ORDER BY id"),
                &args,
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|r| interdict_chain::Signed {
                body: text(&r[0]),
                signature: text(&r[1]),
                key: text(&r[2]),
            })
            .collect())
    }

    /// Number of events stored for a host.
    pub fn event_count(&self, host_id: &str) -> Result<u64, StoreError> {
        let r = self.db.read(|c| {
            c.rows(
                "SELECT COUNT(*) FROM events WHERE host_id = ?1",
                &[host_id.into()],
            )
        })?;
        Ok(one(r).map_or(0, |r| u(&r[0])))
    }

    /// A signed checkpoint of every chain's head now.
    pub fn checkpoint(
        &self,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<interdict_chain::Signed, StoreError> {
        let leaves = self
            .chains(None)?
            .into_iter()
            .map(|c| interdict_chain::Leaf {
                missing: c
                    .head_seq
                    .saturating_sub(c.cut_seq)
                    .saturating_sub(c.records),
                host_id: c.host_id,
                epoch: c.epoch,
                seq: c.head_seq,
                hash: c.head_hash,
                cut: c.cut_seq,
            })
            .collect();
        Ok(interdict_chain::checkpoint(key, now_ms(), leaves))
    }

    /// Re-derive every host's chains from the stored bytes; `pinned` is the collector's public
    /// key (hex) that cuts must be signed with.
    pub fn verify(&self, pinned: &str) -> Result<Vec<interdict_chain::HostReport>, StoreError> {
        let mut hosts: BTreeSet<String> = self
            .db
            .read(|c| {
                c.rows(
                    "SELECT host_id FROM hosts UNION SELECT host_id FROM chains UNION SELECT DISTINCT host_id FROM events",
                    &[],
                )
            })?
            .iter()
            .map(|r| text(&r[0]))
            .collect();
        hosts.remove("");
        let chains = self.chains(None)?;
        let cuts = self.cuts(None)?;
        let findings = self.findings()?;
        // Two hosts at a time, each on a reading connection of its own (SQLite has three).
        let queue = Mutex::new(hosts.into_iter());
        let out = Mutex::new(Vec::new());
        let one_host = |host: String| -> Result<interdict_chain::HostReport, StoreError> {
            let mut ctx = interdict_chain::HostContext::default();
            let mut cut_problems = Vec::new();
            for c in chains.iter().filter(|c| c.host_id == host) {
                if c.head_seq > 0 {
                    if let Some(h) = unhex(&c.head_hash) {
                        ctx.expected.push(interdict_chain::Expected {
                            epoch: c.epoch,
                            seq: c.head_seq,
                            hash: h,
                            missing: None,
                            source: "the collector acknowledged it to the host".into(),
                        });
                    }
                }
                if c.cut_seq > 0 {
                    let signed = cuts.iter().rev().find_map(|s| {
                        let cut = interdict_chain::open_cut(s, Some(pinned)).ok()?;
                        (cut.host_id == host
                            && cut.epoch == c.epoch
                            && cut.seq == c.cut_seq
                            && cut.hash == c.cut_hash
                            && cut.reason == "retention")
                            .then_some(cut)
                    });
                    match signed {
                        Some(cut) => {
                            ctx.cuts.insert(c.epoch, (cut.seq, unhex(&cut.hash).unwrap_or(GENESIS)));
                        }
                        None => cut_problems.push(interdict_chain::Problem {
                            host_id: host.clone(),
                            epoch: c.epoch,
                            from_seq: 1,
                            to_seq: c.cut_seq,
                            kind: "cut".into(),
                            detail: format!(
                                "the chain is said to be pruned up to {}, but no cut signed by the collector says so",
                                c.cut_seq
                            ),
                        }),
                    }
                }
            }
            for f in findings
                .iter()
                .filter(|f| f.host_id == host && f.kind == "break")
            {
                ctx.arrival_breaks.insert((f.epoch, f.from_seq));
            }
            let mut walk = interdict_chain::HostWalk::new(&host);
            self.walk_records(&host, &mut walk)?;
            let mut report = walk.finish(&ctx);
            report.problems.extend(cut_problems);
            Ok(report)
        };
        std::thread::scope(|sc| -> Result<(), StoreError> {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    sc.spawn(|| -> Result<(), StoreError> {
                        loop {
                            let Some(host) = queue.lock().expect("queue poisoned").next() else {
                                return Ok(());
                            };
                            let r = one_host(host)?;
                            out.lock().expect("reports poisoned").push(r);
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("verification thread")?;
            }
            Ok(())
        })?;
        let mut out = out.into_inner().expect("reports poisoned");
        out.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        Ok(out)
    }

    /// Feed every stored record of `host` to `walk`: one thread reads the database while two
    /// parse and hash (records go in batches through bounded queues: the reader waits when the
    /// hashers are behind, so memory stays at a few batches).
    fn walk_records(
        &self,
        host: &str,
        walk: &mut interdict_chain::HostWalk,
    ) -> Result<(), StoreError> {
        type Batch = Vec<(u64, u64, String)>;
        type Checked = Vec<(
            u64,
            u64,
            Result<interdict_chain::Checked, interdict_chain::ChainError>,
        )>;
        const BATCH: usize = 1024;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(4);
        let rx = Mutex::new(rx);
        let (otx, orx) = std::sync::mpsc::sync_channel::<Checked>(4);
        std::thread::scope(|sc| -> Result<(), StoreError> {
            for _ in 0..2 {
                let (rx, otx) = (&rx, otx.clone());
                sc.spawn(move || loop {
                    let Ok(batch) = rx.lock().expect("queue poisoned").recv() else {
                        return;
                    };
                    let checked = batch
                        .into_iter()
                        .map(|(e, s, raw)| (e, s, interdict_chain::check(&raw, host)))
                        .collect();
                    if otx.send(checked).is_err() {
                        return;
                    }
                });
            }
            drop(otx);
            let feeder = sc.spawn(move || {
                for batch in orx {
                    for (e, s, c) in batch {
                        walk.add_checked(e, s, c);
                    }
                }
            });
            let mut batch: Batch = Vec::with_capacity(BATCH);
            let r = self.db.read(|c| {
                c.each(
                    "SELECT epoch, seq, raw FROM events WHERE host_id = ?1 ORDER BY epoch, seq",
                    &[host.into()],
                    &mut |r| {
                        let (epoch, seq) = (u(&r[0]), u(&r[1]));
                        if let Val::Text(raw) = &mut r[2] {
                            batch.push((epoch, seq, std::mem::take(raw)));
                        }
                        if batch.len() == BATCH {
                            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                            return tx.send(full).is_ok();
                        }
                        true
                    },
                )
            });
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
            drop(tx);
            let _ = feeder.join();
            Ok(r?)
        })
    }

    /// Prune records received before `before_ms` (retention): per chain, every record up to the
    /// newest such one goes, and a cut signed with `key` records where the chain now starts and
    /// the hash it must link to. Returns the number of records deleted.
    pub fn prune(
        &self,
        before_ms: i64,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<u64, StoreError> {
        let targets = self.db.read(|c| {
            c.rows(
                "SELECT host_id, epoch, MAX(seq) FROM events WHERE epoch > 0 AND received_ms < ?1
                 GROUP BY host_id, epoch",
                &[before_ms.into()],
            )
        })?;
        let lock = self.lock_clause();
        let mut total = 0;
        for tg in targets {
            let (host, epoch, upto) = (text(&tg[0]), u(&tg[1]), u(&tg[2]));
            total += self.db.tx(|t| -> Result<u64, DbError> {
                if t.rows(
                    &format!("SELECT 1 FROM hosts WHERE host_id = ?1{lock}"),
                    &[host.as_str().into()],
                )?
                .is_empty()
                {
                    return Ok(0);
                }
                let Some(r) = one(t.rows(
                    "SELECT raw FROM events WHERE host_id = ?1 AND epoch = ?2 AND seq = ?3",
                    &[
                        host.as_str().into(),
                        (epoch as i64).into(),
                        (upto as i64).into(),
                    ],
                )?) else {
                    return Ok(0);
                };
                let hash = hex(&sha256(text(&r[0]).as_bytes()));
                let stats = one(t.rows(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(raw)), 0) FROM events
                     WHERE host_id = ?1 AND epoch = ?2 AND seq <= ?3",
                    &[
                        host.as_str().into(),
                        (epoch as i64).into(),
                        (upto as i64).into(),
                    ],
                )?)
                .unwrap_or_default();
                let (n, bytes) = (u(&stats[0]), u(&stats[1]));
                t.exec(
                    "DELETE FROM events WHERE host_id = ?1 AND epoch = ?2 AND seq <= ?3",
                    &[
                        host.as_str().into(),
                        (epoch as i64).into(),
                        (upto as i64).into(),
                    ],
                )?;
                t.exec(
                    "UPDATE chains SET cut_seq = ?3, cut_hash = ?4, records = records - ?5
                     WHERE host_id = ?1 AND epoch = ?2",
                    &[
                        host.as_str().into(),
                        (epoch as i64).into(),
                        (upto as i64).into(),
                        hash.as_str().into(),
                        (n as i64).into(),
                    ],
                )?;
                t.exec(
                    "UPDATE hosts SET stored_bytes = stored_bytes - ?2 WHERE host_id = ?1",
                    &[host.as_str().into(), (bytes as i64).into()],
                )?;
                let cut = interdict_chain::Cut {
                    kind: "cut".into(),
                    host_id: host.clone(),
                    epoch,
                    seq: upto,
                    hash,
                    pruned: n,
                    at_ms: now_ms(),
                    reason: "retention".into(),
                };
                insert_cut(t, &cut, key)?;
                Ok(n)
            })?;
        }
        total += self.db.with(|c| {
            c.exec(
                "DELETE FROM events WHERE epoch = 0 AND received_ms < ?1",
                &[before_ms.into()],
            )
        })?;
        Ok(total)
    }
}

fn snake<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The (seq, hash) a heartbeat says the collector had acknowledged.
fn heartbeat_ack(e: &Event) -> Option<(u64, Hash)> {
    if e.kind != interdict_event::EventKind::Heartbeat {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(e.message.as_deref()?).ok()?;
    let a = &v["acked"];
    Some((a["seq"].as_u64()?, unhex(a["hash"].as_str()?)?))
}

fn chain_rows(c: &mut dyn Exec, host: Option<&str>) -> Result<Vec<ChainRow>, DbError> {
    let (filter, args): (&str, Vec<Val>) = match host {
        Some(h) => (" WHERE host_id = ?1", vec![h.into()]),
        None => ("", vec![]),
    };
    Ok(c
        .rows(
            &format!("SELECT host_id, epoch, head_seq, head_hash, records, cut_seq, cut_hash FROM chains{filter} ORDER BY host_id, epoch"),
            &args,
        )?
        .iter()
        .map(|r| ChainRow {
            host_id: text(&r[0]),
            epoch: u(&r[1]),
            head_seq: u(&r[2]),
            head_hash: text(&r[3]),
            records: u(&r[4]),
            cut_seq: u(&r[5]),
            cut_hash: text(&r[6]),
        })
        .collect())
}

fn save_chain(t: &mut dyn Exec, c: &ChainRow) -> Result<(), DbError> {
    t.exec(
        "INSERT INTO chains (host_id, epoch, head_seq, head_hash, records, cut_seq, cut_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (host_id, epoch) DO UPDATE SET head_seq = excluded.head_seq,
             head_hash = excluded.head_hash, records = excluded.records,
             cut_seq = excluded.cut_seq, cut_hash = excluded.cut_hash",
        &[
            c.host_id.as_str().into(),
            (c.epoch as i64).into(),
            (c.head_seq as i64).into(),
            c.head_hash.as_str().into(),
            (c.records as i64).into(),
            (c.cut_seq as i64).into(),
            c.cut_hash.as_str().into(),
        ],
    )?;
    Ok(())
}

fn insert_cut(
    t: &mut dyn Exec,
    cut: &interdict_chain::Cut,
    key: &ed25519_dalek::SigningKey,
) -> Result<(), DbError> {
    let s = interdict_chain::sign_cut(key, cut);
    t.exec(
        "INSERT INTO cuts (host_id, epoch, seq, reason, body, signature, signer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        &[
            cut.host_id.as_str().into(),
            (cut.epoch as i64).into(),
            (cut.seq as i64).into(),
            cut.reason.as_str().into(),
            s.body.into(),
            s.signature.into(),
            s.key.into(),
        ],
    )?;
    Ok(())
}
