//! The fleet's tables: published policy bundles, digests hosts learned (pending, approved,
//! rejected), exception requests and decisions, and the signed hash list. Their schema has its
//! own migrations (`meta` key `fleet_schema`), applied after the store's.
//!
//! Every change to them through the store is also a row of the append-only **fleet audit**
//! (`fleet_audit`: who, what, on what, when), numbered by the fleet revision it made, in the
//! same transaction as the change: a publication, a digest learned or a request made by a host,
//! a reviewer's decision, a hash list signed or put in place.

use interdict_event::{Event, EventKind};
use interdict_fleet::{Envelope, ExceptionGrant, HashEntry, HashList, SecretKey};
use serde::{Deserialize, Serialize};

use crate::sql::{Db, DbError, Exec, Val};
use crate::store::{now_ms, Store, StoreError};

/// The fleet tables, as migrations applied in order.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE fleet_bundles (
    version BIGINT PRIMARY KEY,
    hosts TEXT NOT NULL,
    bundle TEXT NOT NULL,
    policy_sha256 TEXT NOT NULL,
    created TEXT NOT NULL,
    published_ms BIGINT NOT NULL
);
CREATE TABLE fleet_learned (
    rule_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    first_host TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    status TEXT NOT NULL,
    decided_by TEXT,
    decided_ms BIGINT,
    PRIMARY KEY (rule_id, sha256)
);
CREATE TABLE fleet_learned_hosts (
    rule_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    host_id TEXT NOT NULL,
    PRIMARY KEY (rule_id, sha256, host_id)
);
CREATE TABLE fleet_exceptions (
    id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    user_name TEXT NOT NULL,
    uid BIGINT,
    rule_id TEXT NOT NULL,
    days BIGINT NOT NULL,
    reason TEXT NOT NULL,
    requested_ms BIGINT NOT NULL,
    status TEXT NOT NULL,
    decided_by TEXT,
    decided_ms BIGINT,
    note TEXT,
    from_s BIGINT,
    until_s BIGINT,
    signed TEXT
);
CREATE INDEX fleet_exceptions_host ON fleet_exceptions (host_id, status);
CREATE TABLE fleet_state (k TEXT PRIMARY KEY, n BIGINT NOT NULL, v TEXT);
INSERT INTO fleet_state (k, n) VALUES ('rev', 1);
ALTER TABLE hosts ADD COLUMN policy_bundle BIGINT;
ALTER TABLE hosts ADD COLUMN policy_source TEXT
"#,
    r#"
CREATE TABLE fleet_audit (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
)
"#,
];

/// Apply the fleet migrations not applied yet (inside the store's migration transaction).
pub(crate) fn migrate(t: &mut dyn Exec) -> Result<(), DbError> {
    let done = t
        .rows("SELECT v FROM meta WHERE k = 'fleet_schema'", &[])?
        .first()
        .and_then(|r| r[0].text())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    for (i, m) in MIGRATIONS.iter().enumerate().skip(done) {
        for stmt in m.split(';') {
            if !stmt.trim().is_empty() {
                t.exec(stmt, &[])?;
            }
        }
        t.exec(
            "INSERT INTO meta (k, v) VALUES ('fleet_schema', ?1)
             ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            &[(i + 1).to_string().into()],
        )?;
    }
    Ok(())
}

fn int(v: &Val) -> i64 {
    v.int()
}

fn opt_int(v: &Val) -> Option<i64> {
    match v {
        Val::Int(i) => Some(*i),
        _ => None,
    }
}

fn text(v: &Val) -> String {
    v.text().unwrap_or_default()
}

/// Fleet store errors.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The database.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A request that cannot be honoured (bad bundle, older version, unknown id...): the
    /// reviewer's or admin's mistake, said plainly.
    #[error("{0}")]
    Refused(String),
    /// The thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The collector was started without the key this needs.
    #[error("{0}")]
    NoKey(&'static str),
}

impl From<DbError> for FleetError {
    fn from(e: DbError) -> FleetError {
        FleetError::Store(StoreError::Db(e))
    }
}

/// One published bundle (without its bytes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleRow {
    /// Its version.
    pub version: u64,
    /// The host globs it is for (empty: every host).
    pub hosts: Vec<String>,
    /// SHA-256 of its policy text.
    pub policy_sha256: String,
    /// When it was signed, as it says.
    pub created: String,
    /// When it was published here, ms.
    pub published_ms: i64,
}

/// One row of the fleet audit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRow {
    /// The fleet revision this change made (grows by one with each change).
    pub seq: i64,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Who: `reviewer:NAME`, `host:HOST_ID`, or `local:...` (the collector's command line).
    pub actor: String,
    /// What: `bundle_published`, `learned_pending`, `learned_approved`, `learned_rejected`,
    /// `hash_list_signed`, `hash_list_put`, `exception_requested`, `exception_approved`,
    /// `exception_denied`.
    pub action: String,
    /// On what: a bundle version, `RULE/DIGEST`, an exception id, a hash list sequence number.
    pub subject: String,
    /// The rest, for people.
    pub detail: String,
}

/// A digest a host learned, and what reviewers decided.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LearnedRow {
    /// The rule.
    pub rule_id: String,
    /// The digest.
    pub sha256: String,
    /// The file's size.
    pub size: u64,
    /// Where the first host saw it.
    pub path: String,
    /// How (`exec`, `install`).
    pub source: String,
    /// The first host to learn it.
    pub first_host: String,
    /// When, ms.
    pub first_seen_ms: i64,
    /// How many hosts learned it.
    pub hosts: u64,
    /// `pending`, `approved` or `rejected`.
    pub status: String,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When, ms.
    pub decided_ms: Option<i64>,
}

/// An exception request and its decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExceptionRow {
    /// The request id.
    pub id: String,
    /// The host it is for.
    pub host_id: String,
    /// Its name.
    pub hostname: String,
    /// The user who asked (as the host's agent identified them).
    pub user: String,
    /// Their user id on that host.
    pub uid: Option<u32>,
    /// The rule.
    pub rule_id: String,
    /// Days asked for.
    pub days: u64,
    /// The employee's reason.
    pub reason: String,
    /// When, ms.
    pub requested_ms: i64,
    /// `pending`, `approved` or `denied`.
    pub status: String,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When, ms.
    pub decided_ms: Option<i64>,
    /// The reviewer's note on a denial.
    pub note: Option<String>,
    /// Granted from, Unix seconds.
    pub from: Option<i64>,
    /// Granted until, Unix seconds.
    pub until: Option<i64>,
}

/// A denial, as agents are told of it (unsigned: it weakens nothing).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Denied {
    /// The request id.
    pub id: String,
    /// The rule.
    pub rule: String,
    /// The user.
    pub user: String,
    /// The reviewer's note.
    pub note: Option<String>,
}

/// What reviewers decided that concerns one host: `GET /v1/approvals`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Approvals {
    /// Changes with every decision and publication (the ETag).
    pub rev: i64,
    /// Every approved digest, signed with the hash-list key.
    pub hash_list: Option<Envelope>,
    /// This host's exceptions that have not ended, each signed with the exception key.
    pub exceptions: Vec<Envelope>,
    /// This host's recent denials (the last 50 of 7 days).
    pub denied: Vec<Denied>,
}

/// Case-insensitive glob match with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether a bundle for `globs` is meant for the host.
pub fn targets(globs: &[String], host_id: &str, hostname: &str) -> bool {
    globs.is_empty()
        || globs
            .iter()
            .any(|g| glob_match(g, host_id) || glob_match(g, hostname))
}

fn bump(t: &mut dyn Exec) -> Result<(), DbError> {
    t.exec("UPDATE fleet_state SET n = n + 1 WHERE k = 'rev'", &[])?;
    Ok(())
}

/// A change: the fleet revision moves on, and the fleet audit gets a row numbered by it (in
/// the caller's transaction, so that there is no change without its row).
fn audit(
    t: &mut dyn Exec,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<(), DbError> {
    bump(t)?;
    let seq = t
        .rows("SELECT n FROM fleet_state WHERE k = 'rev'", &[])?
        .first()
        .map_or(0, |r| int(&r[0]));
    t.exec(
        "INSERT INTO fleet_audit (seq, at_ms, actor, action, subject, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        &[
            seq.into(),
            now_ms().into(),
            actor.into(),
            action.into(),
            subject.into(),
            detail.into(),
        ],
    )?;
    Ok(())
}

/// Most rows `GET /v1/fleet/audit` returns at once.
pub const MAX_AUDIT_ROWS: i64 = 1000;

/// Most digests waiting for a decision; beyond it, newly learned digests are counted
/// (`fleet_learned_dropped`) and not recorded, so that a host cannot flood the queue.
pub const MAX_PENDING: i64 = 10_000;
/// Most pending exception requests per host; beyond it requests are counted and dropped.
pub const MAX_PENDING_EXCEPTIONS: i64 = 20;

fn exception_row(r: &[Val]) -> ExceptionRow {
    ExceptionRow {
        id: text(&r[0]),
        host_id: text(&r[1]),
        hostname: text(&r[2]),
        user: text(&r[3]),
        uid: opt_int(&r[4]).and_then(|u| u32::try_from(u).ok()),
        rule_id: text(&r[5]),
        days: int(&r[6]).max(0) as u64,
        reason: text(&r[7]),
        requested_ms: int(&r[8]),
        status: text(&r[9]),
        decided_by: r[10].text(),
        decided_ms: opt_int(&r[11]),
        note: r[12].text(),
        from: opt_int(&r[13]),
        until: opt_int(&r[14]),
    }
}

const EXCEPTION_COLUMNS: &str = "id, host_id, hostname, user_name, uid, rule_id, days, reason, requested_ms, status, decided_by, decided_ms, note, from_s, until_s";

fn db(store: &Store) -> &Db {
    &store.db
}

impl Store {
    /// The fleet revision: changes with every publication and decision.
    pub fn fleet_rev(&self) -> Result<i64, StoreError> {
        let r = db(self).read(|c| c.rows("SELECT n FROM fleet_state WHERE k = 'rev'", &[]))?;
        Ok(r.first().map_or(0, |r| int(&r[0])))
    }

    /// Publish a bundle for the hosts matching `hosts` (every host when empty). Its version
    /// must be higher than every version published before. The collector does not hold IT's
    /// key and does not check the signature (agents do); it refuses what is not a bundle.
    pub fn publish_bundle(&self, text: &str, hosts: &[String]) -> Result<BundleRow, FleetError> {
        self.publish_bundle_by(text, hosts, "local")
    }

    /// [`Store::publish_bundle`], naming who published it in the fleet audit (`local:WHO`).
    pub fn publish_bundle_by(
        &self,
        text: &str,
        hosts: &[String],
        who: &str,
    ) -> Result<BundleRow, FleetError> {
        let (body, signer) = interdict_fleet::peek_bundle(text)
            .map_err(|e| FleetError::Refused(format!("not published: {e}")))?;
        let row = BundleRow {
            version: body.version,
            hosts: hosts.to_vec(),
            policy_sha256: body.policy_sha256.clone(),
            created: body.created.clone(),
            published_ms: now_ms(),
        };
        let version = i64::try_from(body.version)
            .map_err(|_| FleetError::Refused("the bundle version is too large".into()))?;
        db(self).tx(|t| -> Result<(), FleetError> {
            let max = t
                .rows("SELECT MAX(version) FROM fleet_bundles", &[])?
                .first()
                .and_then(|r| opt_int(&r[0]));
            if let Some(m) = max.filter(|m| *m >= version) {
                return Err(FleetError::Refused(format!(
                    "not published: version {version} is not higher than version {m}, published already (bundle versions only grow: sign it again with --version {})",
                    m + 1
                )));
            }
            t.exec(
                "INSERT INTO fleet_bundles (version, hosts, bundle, policy_sha256, created, published_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &[
                    version.into(),
                    serde_json::to_string(hosts).expect("strings serialize").into(),
                    text.into(),
                    row.policy_sha256.as_str().into(),
                    row.created.as_str().into(),
                    row.published_ms.into(),
                ],
            )?;
            audit(
                t,
                &format!("local:{who}"),
                "bundle_published",
                &version.to_string(),
                &format!(
                    "policy sha256 {}, signed {} by key {}, for {}",
                    row.policy_sha256,
                    row.created,
                    signer.key,
                    if hosts.is_empty() {
                        "every host".to_string()
                    } else {
                        format!("hosts matching {}", hosts.join(", "))
                    }
                ),
            )?;
            Ok(())
        })?;
        Ok(row)
    }

    /// Every published bundle, newest first.
    pub fn bundles(&self) -> Result<Vec<BundleRow>, StoreError> {
        let rows = db(self).read(|c| {
            c.rows(
                "SELECT version, hosts, policy_sha256, created, published_ms FROM fleet_bundles ORDER BY version DESC",
                &[],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| BundleRow {
                version: int(&r[0]).max(0) as u64,
                hosts: serde_json::from_str(&text(&r[1])).unwrap_or_default(),
                policy_sha256: text(&r[2]),
                created: text(&r[3]),
                published_ms: int(&r[4]),
            })
            .collect())
    }

    /// The bundle meant for a host: the highest version whose host globs match it.
    pub fn bundle_for(
        &self,
        host_id: &str,
        hostname: &str,
    ) -> Result<Option<(u64, String)>, StoreError> {
        let rows = db(self).read(|c| {
            c.rows(
                "SELECT version, hosts FROM fleet_bundles ORDER BY version DESC",
                &[],
            )
        })?;
        for r in rows {
            let globs: Vec<String> = serde_json::from_str(&text(&r[1])).unwrap_or_default();
            if targets(&globs, host_id, hostname) {
                let v = int(&r[0]);
                let b = db(self).read(|c| {
                    c.rows(
                        "SELECT bundle FROM fleet_bundles WHERE version = ?1",
                        &[v.into()],
                    )
                })?;
                return Ok(b.first().map(|b| (v.max(0) as u64, text(&b[0]))));
            }
        }
        Ok(None)
    }

    /// A host's name as enrolled.
    pub fn hostname_of(&self, host_id: &str) -> Result<Option<String>, StoreError> {
        let r = db(self).read(|c| {
            c.rows(
                "SELECT hostname FROM hosts WHERE host_id = ?1",
                &[host_id.into()],
            )
        })?;
        Ok(r.first().and_then(|r| r[0].text()))
    }

    /// The bundle version each host said (in its last heartbeat) it enforces: (host id,
    /// bundle version, policy source).
    #[allow(clippy::type_complexity)]
    pub fn host_bundles(&self) -> Result<Vec<(String, Option<u64>, Option<String>)>, StoreError> {
        let r = db(self).read(|c| {
            c.rows(
                "SELECT host_id, policy_bundle, policy_source FROM hosts",
                &[],
            )
        })?;
        Ok(r.iter()
            .map(|r| {
                (
                    text(&r[0]),
                    opt_int(&r[1]).map(|v| v.max(0) as u64),
                    r[2].text(),
                )
            })
            .collect())
    }

    /// Record what a host's events tell the fleet: digests it learned (pending a decision),
    /// exception requests, and (from its newest heartbeat) the bundle version it enforces. The
    /// host is the token's; events were stored already. Idempotent (a resent batch changes
    /// nothing). Returns how many learned digests and requests were dropped over the caps.
    pub fn record_fleet_events(&self, host_id: &str, events: &[Event]) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut dropped = 0;
        db(self).tx(|t| -> Result<(), DbError> {
            for e in events {
                match e.kind {
                    EventKind::HashLearned => {
                        let (Some(rule), Some(f)) = (&e.rule, &e.file) else {
                            continue;
                        };
                        let Some(sha) = f.sha256.as_deref().filter(|s| {
                            s.len() == 64
                                && s.bytes()
                                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                        }) else {
                            continue;
                        };
                        let size = f.size.unwrap_or(0).min(i64::MAX as u64) as i64;
                        let source = if e.message.as_deref().unwrap_or("").ends_with("(install)") {
                            "install"
                        } else {
                            "exec"
                        };
                        let known = !t
                            .rows(
                                "SELECT 1 FROM fleet_learned WHERE rule_id = ?1 AND sha256 = ?2",
                                &[rule.id.as_str().into(), sha.into()],
                            )?
                            .is_empty();
                        if !known {
                            let pending = t
                                .rows(
                                    "SELECT COUNT(*) FROM fleet_learned WHERE status = 'pending'",
                                    &[],
                                )?
                                .first()
                                .map_or(0, |r| int(&r[0]));
                            if pending >= MAX_PENDING {
                                dropped += 1;
                                continue;
                            }
                            t.exec(
                                "INSERT INTO fleet_learned (rule_id, sha256, size, path, source, first_host, first_seen_ms, status)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending') ON CONFLICT (rule_id, sha256) DO NOTHING",
                                &[
                                    rule.id.as_str().into(),
                                    sha.into(),
                                    size.into(),
                                    f.path.as_str().into(),
                                    source.into(),
                                    host_id.into(),
                                    now.into(),
                                ],
                            )?;
                            audit(
                                t,
                                &format!("host:{host_id}"),
                                "learned_pending",
                                &format!("{}/{sha}", rule.id),
                                &format!("{size} bytes, first seen at {} ({source})", f.path),
                            )?;
                        }
                        t.exec(
                            "INSERT INTO fleet_learned_hosts (rule_id, sha256, host_id) VALUES (?1, ?2, ?3)
                             ON CONFLICT (rule_id, sha256, host_id) DO NOTHING",
                            &[rule.id.as_str().into(), sha.into(), host_id.into()],
                        )?;
                    }
                    EventKind::ExceptionRequested => {
                        let Some(req) = ExceptionRequest::of(e) else {
                            continue;
                        };
                        let open = t
                            .rows(
                                "SELECT COUNT(*) FROM fleet_exceptions WHERE host_id = ?1 AND status = 'pending'",
                                &[host_id.into()],
                            )?
                            .first()
                            .map_or(0, |r| int(&r[0]));
                        if open >= MAX_PENDING_EXCEPTIONS {
                            dropped += 1;
                            continue;
                        }
                        let n = t.exec(
                            &format!(
                                "INSERT INTO fleet_exceptions ({EXCEPTION_COLUMNS}) VALUES
                                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', NULL, NULL, NULL, NULL, NULL)
                                 ON CONFLICT (id) DO NOTHING"
                            ),
                            &[
                                req.id.as_str().into(),
                                host_id.into(),
                                e.hostname.as_str().into(),
                                req.user.as_str().into(),
                                req.uid.map_or(Val::Null, |u| Val::Int(i64::from(u))),
                                req.rule.as_str().into(),
                                (req.days as i64).into(),
                                req.reason.as_str().into(),
                                now.into(),
                            ],
                        )?;
                        if n == 1 {
                            audit(
                                t,
                                &format!("host:{host_id}"),
                                "exception_requested",
                                &req.id,
                                &format!(
                                    "user {} asks {} day(s) from rule {}: {}",
                                    req.user, req.days, req.rule, req.reason
                                ),
                            )?;
                        }
                    }
                    _ => {}
                }
            }
            if let Some(hb) = events.iter().rev().find(|e| e.kind == EventKind::Heartbeat) {
                let v: serde_json::Value = hb
                    .message
                    .as_deref()
                    .and_then(|m| serde_json::from_str(m).ok())
                    .unwrap_or_default();
                let bundle = v["policy_bundle"]
                    .as_u64()
                    .and_then(|b| i64::try_from(b).ok())
                    .map_or(Val::Null, Val::Int);
                let source: Val = v["policy_source"]
                    .as_str()
                    .map(|s| s.chars().take(64).collect::<String>())
                    .into();
                t.exec(
                    "UPDATE hosts SET policy_bundle = ?2, policy_source = ?3 WHERE host_id = ?1",
                    &[host_id.into(), bundle, source],
                )?;
            }
            Ok(())
        })?;
        Ok(dropped)
    }

    /// Learned digests (with `status` only those).
    pub fn learned(&self, status: Option<&str>) -> Result<Vec<LearnedRow>, StoreError> {
        let (filter, args): (&str, Vec<Val>) = match status {
            Some(s) => (" WHERE l.status = ?1", vec![s.into()]),
            None => ("", vec![]),
        };
        let rows = db(self).read(|c| {
            c.rows(
                &format!(
                    "SELECT l.rule_id, l.sha256, l.size, l.path, l.source, l.first_host, l.first_seen_ms,
                        (SELECT COUNT(*) FROM fleet_learned_hosts h WHERE h.rule_id = l.rule_id AND h.sha256 = l.sha256),
                        l.status, l.decided_by, l.decided_ms
                     FROM fleet_learned l{filter} ORDER BY l.first_seen_ms, l.sha256"
                ),
                &args,
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| LearnedRow {
                rule_id: text(&r[0]),
                sha256: text(&r[1]),
                size: int(&r[2]).max(0) as u64,
                path: text(&r[3]),
                source: text(&r[4]),
                first_host: text(&r[5]),
                first_seen_ms: int(&r[6]),
                hosts: int(&r[7]).max(0) as u64,
                status: text(&r[8]),
                decided_by: r[9].text(),
                decided_ms: opt_int(&r[10]),
            })
            .collect())
    }

    /// Approve or reject a learned digest (of `rule` only, when given). Approving signs a new
    /// hash list holding every approved digest. A digest approved before cannot be rejected:
    /// agents never remove what they added (retract it with an `allow` rule in the signed
    /// policy). Returns the rows decided.
    pub fn decide_learned(
        &self,
        sha256: &str,
        rule: Option<&str>,
        approve: bool,
        reviewer: &str,
        key: Option<&SecretKey>,
    ) -> Result<Vec<LearnedRow>, FleetError> {
        let sha = sha256.to_ascii_lowercase();
        let matching: Vec<LearnedRow> = self
            .learned(None)?
            .into_iter()
            .filter(|r| r.sha256 == sha && rule.is_none_or(|x| x == r.rule_id))
            .collect();
        if matching.is_empty() {
            return Err(FleetError::NotFound(format!(
                "no learned digest {sha}{}",
                rule.map(|r| format!(" for rule {r}")).unwrap_or_default()
            )));
        }
        if !approve {
            if let Some(r) = matching.iter().find(|r| r.status == "approved") {
                return Err(FleetError::Refused(format!(
                    "digest {sha} (rule {}) was approved already and is in force on the fleet: agents never remove what they added; retract it with an `allow` rule for this digest in the signed policy",
                    r.rule_id
                )));
            }
        }
        let key = if approve {
            Some(key.ok_or(FleetError::NoKey(
                "the collector has no hash-list key: it cannot sign approvals",
            ))?)
        } else {
            None
        };
        let status = if approve { "approved" } else { "rejected" };
        let now = now_ms();
        db(self).tx(|t| -> Result<(), FleetError> {
            for r in matching.iter().filter(|r| r.status != "approved") {
                t.exec(
                    "UPDATE fleet_learned SET status = ?3, decided_by = ?4, decided_ms = ?5
                     WHERE rule_id = ?1 AND sha256 = ?2 AND status <> 'approved'",
                    &[
                        r.rule_id.as_str().into(),
                        r.sha256.as_str().into(),
                        status.into(),
                        reviewer.into(),
                        now.into(),
                    ],
                )?;
                audit(
                    t,
                    &format!("reviewer:{reviewer}"),
                    if approve {
                        "learned_approved"
                    } else {
                        "learned_rejected"
                    },
                    &format!("{}/{}", r.rule_id, r.sha256),
                    &format!(
                        "was {}; {} bytes, first seen at {} on {}",
                        r.status, r.size, r.path, r.first_host
                    ),
                )?;
            }
            if let Some(key) = key {
                let seq = sign_hash_list(t, key)?;
                audit(
                    t,
                    &format!("reviewer:{reviewer}"),
                    "hash_list_signed",
                    &seq.to_string(),
                    &format!("with the hash-list key {}", key.public()),
                )?;
            }
            Ok(())
        })?;
        Ok(self
            .learned(None)?
            .into_iter()
            .filter(|r| r.sha256 == sha && rule.is_none_or(|x| x == r.rule_id))
            .collect())
    }

    /// The fleet audit: the changes after revision `after`, oldest first, at most `limit`
    /// (capped at [`MAX_AUDIT_ROWS`]).
    pub fn fleet_audit(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        let limit = limit.clamp(1, MAX_AUDIT_ROWS);
        let rows = db(self).read(|c| {
            c.rows(
                "SELECT seq, at_ms, actor, action, subject, detail FROM fleet_audit
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                &[after.into(), limit.into()],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                seq: int(&r[0]),
                at_ms: int(&r[1]),
                actor: text(&r[2]),
                action: text(&r[3]),
                subject: text(&r[4]),
                detail: text(&r[5]),
            })
            .collect())
    }

    /// The signed hash list in force, if any digest was ever approved.
    pub fn hash_list(&self) -> Result<Option<Envelope>, StoreError> {
        let r =
            db(self).read(|c| c.rows("SELECT v FROM fleet_state WHERE k = 'hash_list'", &[]))?;
        Ok(r.first()
            .and_then(|r| r[0].text())
            .and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Exception requests (with `status` only those), newest first.
    pub fn exceptions(&self, status: Option<&str>) -> Result<Vec<ExceptionRow>, StoreError> {
        let (filter, args): (&str, Vec<Val>) = match status {
            Some(s) => (" WHERE status = ?1", vec![s.into()]),
            None => ("", vec![]),
        };
        let rows = db(self).read(|c| {
            c.rows(
                &format!("SELECT {EXCEPTION_COLUMNS} FROM fleet_exceptions{filter} ORDER BY requested_ms DESC, id"),
                &args,
            )
        })?;
        Ok(rows.iter().map(|r| exception_row(r)).collect())
    }

    /// One exception request.
    pub fn exception(&self, id: &str) -> Result<Option<ExceptionRow>, StoreError> {
        let rows = db(self).read(|c| {
            c.rows(
                &format!("SELECT {EXCEPTION_COLUMNS} FROM fleet_exceptions WHERE id = ?1"),
                &[id.into()],
            )
        })?;
        Ok(rows.first().map(|r| exception_row(r)))
    }

    /// Approve a pending request for `seconds` from now, signed with the exception key; or
    /// deny it (with a note for the employee). `check` may refuse an approval first (the
    /// policy published for the host would: too long, the rule forbids it).
    #[allow(clippy::too_many_arguments)]
    pub fn decide_exception(
        &self,
        id: &str,
        approve: bool,
        seconds: Option<i64>,
        note: Option<&str>,
        reviewer: &str,
        key: Option<&SecretKey>,
        check: &dyn Fn(&ExceptionGrant) -> Result<(), String>,
    ) -> Result<ExceptionRow, FleetError> {
        let Some(row) = self.exception(id)? else {
            return Err(FleetError::NotFound(format!("no exception request {id}")));
        };
        if row.status != "pending" {
            return Err(FleetError::Refused(format!(
                "request {id} was {} already by {}",
                row.status,
                row.decided_by.as_deref().unwrap_or("someone")
            )));
        }
        let now = now_ms();
        if !approve {
            db(self).tx(|t| -> Result<(), FleetError> {
                t.exec(
                    "UPDATE fleet_exceptions SET status = 'denied', decided_by = ?2, decided_ms = ?3, note = ?4
                     WHERE id = ?1 AND status = 'pending'",
                    &[id.into(), reviewer.into(), now.into(), note.into()],
                )?;
                audit(
                    t,
                    &format!("reviewer:{reviewer}"),
                    "exception_denied",
                    id,
                    &format!(
                        "user {} on host {}, rule {}{}",
                        row.user,
                        row.host_id,
                        row.rule_id,
                        note.map(|n| format!(": {n}")).unwrap_or_default()
                    ),
                )?;
                Ok(())
            })?;
        } else {
            let key = key.ok_or(FleetError::NoKey(
                "the collector has no exception key: it cannot sign exceptions",
            ))?;
            let secs = seconds.unwrap_or(row.days as i64 * 86_400);
            if !(1..=365 * 86_400).contains(&secs) {
                return Err(FleetError::Refused(
                    "an exception lasts from 1 second to 365 days".into(),
                ));
            }
            let from = now / 1000;
            let grant = ExceptionGrant {
                id: row.id.clone(),
                host_id: row.host_id.clone(),
                user: row.user.clone(),
                uid: row.uid,
                rule: row.rule_id.clone(),
                from,
                until: from + secs,
                reason: row.reason.clone(),
                approved_by: reviewer.to_string(),
            };
            check(&grant).map_err(|why| {
                FleetError::Refused(format!("not approved: agents would refuse it: {why}"))
            })?;
            let signed = serde_json::to_string(&grant.sign(key)).expect("envelopes serialize");
            db(self).tx(|t| -> Result<(), FleetError> {
                t.exec(
                    "UPDATE fleet_exceptions SET status = 'approved', decided_by = ?2, decided_ms = ?3,
                         from_s = ?4, until_s = ?5, signed = ?6, note = ?7
                     WHERE id = ?1 AND status = 'pending'",
                    &[
                        id.into(),
                        reviewer.into(),
                        now.into(),
                        grant.from.into(),
                        grant.until.into(),
                        signed.into(),
                        note.into(),
                    ],
                )?;
                audit(
                    t,
                    &format!("reviewer:{reviewer}"),
                    "exception_approved",
                    id,
                    &format!(
                        "user {} on host {}, rule {}, for {secs} s (until {}), signed with the exception key {}",
                        row.user,
                        row.host_id,
                        row.rule_id,
                        interdict_event::rfc3339(
                            std::time::UNIX_EPOCH
                                + std::time::Duration::from_secs(grant.until.max(0) as u64)
                        ),
                        key.public()
                    ),
                )?;
                Ok(())
            })?;
        }
        Ok(self.exception(id)?.expect("the row is there"))
    }

    /// What reviewers decided for one host.
    pub fn approvals_for(&self, host_id: &str) -> Result<Approvals, StoreError> {
        let now_s = now_ms() / 1000;
        let week_ago = now_ms() - 7 * 86_400_000;
        let (rev, exceptions, denied) = db(self).read(|c| {
            let rev = c
                .rows("SELECT n FROM fleet_state WHERE k = 'rev'", &[])?
                .first()
                .map_or(0, |r| int(&r[0]));
            let exceptions: Vec<Envelope> = c
                .rows(
                    "SELECT signed FROM fleet_exceptions WHERE host_id = ?1 AND status = 'approved' AND until_s > ?2
                     ORDER BY decided_ms",
                    &[host_id.into(), now_s.into()],
                )?
                .iter()
                .filter_map(|r| r[0].text())
                .filter_map(|t| serde_json::from_str(&t).ok())
                .collect();
            let denied = c
                .rows(
                    "SELECT id, rule_id, user_name, note FROM fleet_exceptions
                     WHERE host_id = ?1 AND status = 'denied' AND decided_ms > ?2 ORDER BY decided_ms DESC LIMIT 50",
                    &[host_id.into(), week_ago.into()],
                )?
                .iter()
                .map(|r| Denied {
                    id: text(&r[0]),
                    rule: text(&r[1]),
                    user: text(&r[2]),
                    note: r[3].text(),
                })
                .collect();
            Ok((rev, exceptions, denied))
        })?;
        Ok(Approvals {
            rev,
            hash_list: self.hash_list()?,
            exceptions,
            denied,
        })
    }

    /// Store a signed hash list as the one in force (for a collector whose list is rebuilt
    /// elsewhere, and for tests that play a compromised collector).
    pub fn put_hash_list(&self, env: &Envelope) -> Result<(), StoreError> {
        let seq = serde_json::from_str::<serde_json::Value>(&env.body)
            .ok()
            .and_then(|v| v["seq"].as_i64())
            .unwrap_or(0);
        db(self).tx(|t| -> Result<(), DbError> {
            t.exec(
                "INSERT INTO fleet_state (k, n, v) VALUES ('hash_list', ?1, ?2)
                 ON CONFLICT (k) DO UPDATE SET n = excluded.n, v = excluded.v",
                &[
                    seq.into(),
                    serde_json::to_string(env)
                        .expect("envelopes serialize")
                        .into(),
                ],
            )?;
            audit(
                t,
                "local",
                "hash_list_put",
                &seq.to_string(),
                &format!("signed by key {}", env.key),
            )
        })?;
        Ok(())
    }
}

/// Sign a new hash list (the sequence number after the last one) holding every approved digest.
fn sign_hash_list(t: &mut dyn Exec, key: &SecretKey) -> Result<i64, DbError> {
    let seq = t
        .rows("SELECT n FROM fleet_state WHERE k = 'hash_list'", &[])?
        .first()
        .map_or(0, |r| int(&r[0]))
        + 1;
    let entries = t
        .rows(
            "SELECT rule_id, sha256, size, path, first_host, decided_by FROM fleet_learned
             WHERE status = 'approved' ORDER BY decided_ms, rule_id, sha256",
            &[],
        )?
        .iter()
        .map(|r| HashEntry {
            rule: text(&r[0]),
            sha256: text(&r[1]),
            size: int(&r[2]).max(0) as u64,
            path: text(&r[3]),
            host: text(&r[4]),
            approved_by: text(&r[5]),
        })
        .collect();
    let list = HashList {
        seq: seq.max(1) as u64,
        created: interdict_event::rfc3339(std::time::SystemTime::now()),
        entries,
    };
    let env = list.sign(key);
    t.exec(
        "INSERT INTO fleet_state (k, n, v) VALUES ('hash_list', ?1, ?2)
         ON CONFLICT (k) DO UPDATE SET n = excluded.n, v = excluded.v",
        &[
            seq.into(),
            serde_json::to_string(&env)
                .expect("envelopes serialize")
                .into(),
        ],
    )?;
    Ok(seq)
}

/// An exception request as the agent forwards it (`exception_requested`): the rule, the user
/// (from the socket's peer credentials), and in the message `{request_id, days, reason}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionRequest {
    /// Request id.
    pub id: String,
    /// Rule.
    pub rule: String,
    /// User name.
    pub user: String,
    /// User id.
    pub uid: Option<u32>,
    /// Days asked for.
    pub days: u64,
    /// Reason.
    pub reason: String,
}

impl ExceptionRequest {
    /// Read a request from its event; `None` when it is not a well-formed one.
    pub fn of(e: &Event) -> Option<ExceptionRequest> {
        let m: serde_json::Value = serde_json::from_str(e.message.as_deref()?).ok()?;
        let id = m["request_id"].as_str()?.to_string();
        let days = m["days"].as_u64().filter(|d| (1..=365).contains(d))?;
        let reason = m["reason"].as_str()?.to_string();
        let p = e.process.as_ref()?;
        let user = p.user.clone().filter(|u| !u.is_empty() && u.len() <= 256)?;
        let rule = e.rule.as_ref()?.id.clone();
        let ok_id = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        (ok_id && !rule.is_empty() && reason.len() <= 2000).then_some(ExceptionRequest {
            id,
            rule,
            user,
            uid: p.uid,
            days,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("build-*", "BUILD-7"));
        assert!(glob_match("h?st", "host"));
        assert!(!glob_match("build-*", "laptop"));
        assert!(glob_match("*-canary-*", "eu-canary-3"));
        assert!(!glob_match("a*b", "acd"));
    }
}
