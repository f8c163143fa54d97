//! What the console's pages read: events by the API's filters (newest first, or in the API's
//! order for exports), one event with its chain neighbours, a person's record.

use std::collections::{BTreeMap, HashMap};

use crate::sql::Val;
use crate::store::{Store, StoreError};

use super::rollup::{in_list, INSTALL_KINDS, VIOLATION_KINDS};

/// The filters of the violations page and of exports: the API's (`host`, `user`, `rule`, `kind`,
/// `outcome`, `action`, `since`, `until`), where `kind` may also be `violations` (the default),
/// `installs`, `activity` (everything but heartbeats) or `all`; `before` pages newest first,
/// `limit` is the page size, `format` the export's.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct Filter {
    /// Host id.
    pub host: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// Rule id.
    pub rule: Option<String>,
    /// Event kind, or `violations`, `installs`, `activity`, `all`.
    pub kind: Option<String>,
    /// What the agent did.
    pub outcome: Option<String>,
    /// The rule's action.
    pub action: Option<String>,
    /// From this event time (RFC 3339 or a date, UTC, inclusive).
    pub since: Option<String>,
    /// Until this event time (exclusive).
    pub until: Option<String>,
    /// Events stored before this cursor (newest-first paging).
    pub before: Option<i64>,
    /// Page size.
    pub limit: Option<usize>,
    /// Export format: `ndjson`, `csv`, `ocsf`, `ecs`.
    pub format: Option<String>,
}

/// A value given and not blank.
pub fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl Filter {
    /// The kind selector in force (`violations` when none is given).
    pub fn scope(&self) -> &str {
        given(&self.kind).unwrap_or("violations")
    }

    /// The SQL condition (after `WHERE 1 = 1`) and its arguments; an error for a time that is
    /// not a time, said for people.
    pub fn sql(&self) -> Result<(String, Vec<Val>), String> {
        let mut sql = String::new();
        let mut args: Vec<Val> = Vec::new();
        match self.scope() {
            "violations" => sql.push_str(&format!(" AND kind IN ({})", in_list(VIOLATION_KINDS))),
            "installs" => sql.push_str(&format!(" AND kind IN ({})", in_list(INSTALL_KINDS))),
            "activity" => sql.push_str(" AND kind <> 'heartbeat'"),
            _ => {}
        }
        let mut add = |cond: &str, v: Val| {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ?{}", args.len()));
        };
        if !matches!(self.scope(), "violations" | "installs" | "activity" | "all") {
            add("kind =", self.scope().into());
        }
        for (col, v) in [
            ("host_id =", &self.host),
            ("user_name =", &self.user),
            ("rule_id =", &self.rule),
            ("outcome =", &self.outcome),
            ("rule_action =", &self.action),
        ] {
            if let Some(v) = given(v) {
                add(col, v.into());
            }
        }
        for (name, v, op) in [("From", &self.since, ">="), ("Before", &self.until, "<")] {
            if let Some(t) = given(v) {
                match interdict_event::parse_rfc3339_millis(t) {
                    Some(ms) => add(&format!("time_ms {op}"), ms.into()),
                    None => {
                        return Err(format!(
                            "“{name}” is “{t}”: give a UTC date like 2026-11-26 or a time like 2026-11-26T09:30:00Z"
                        ))
                    }
                }
            }
        }
        Ok((sql, args))
    }

    /// The query string of these filters (without paging and format), for links.
    pub fn query_string(&self) -> String {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for (k, v) in [
            ("host", &self.host),
            ("user", &self.user),
            ("rule", &self.rule),
            ("kind", &self.kind),
            ("outcome", &self.outcome),
            ("action", &self.action),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(v) = given(v) {
                pairs.push((k, v));
            }
        }
        super::qs(&pairs)
    }
}

/// One stored event, as the pages need it.
#[derive(Debug, Clone)]
pub struct Row {
    /// Ingest sequence number (the event's address in the console).
    pub cursor: i64,
    /// Host (from the token, not from the event).
    pub host_id: String,
    /// Chain (0: outside).
    pub epoch: u64,
    /// Sequence number.
    pub seq: u64,
    /// The bytes as sent.
    pub raw: String,
    /// When the collector stored it, ms.
    pub received_ms: i64,
}

fn row(r: &mut [Val]) -> Row {
    let take = |v: &mut Val| match std::mem::replace(v, Val::Null) {
        Val::Text(s) => s,
        _ => String::new(),
    };
    Row {
        cursor: r[0].int(),
        epoch: r[2].int().max(0) as u64,
        seq: r[3].int().max(0) as u64,
        received_ms: r[5].int(),
        host_id: take(&mut r[1]),
        raw: take(&mut r[4]),
    }
}

const COLS: &str = "ingest_seq, host_id, epoch, seq, raw, received_ms";

/// A page of events matching `f`, newest first (before `f.before`): the rows and whether older
/// ones follow.
pub fn page(
    store: &Store,
    f: &Filter,
    size: usize,
) -> Result<Result<(Vec<Row>, bool), String>, StoreError> {
    let (cond, mut args) = match f.sql() {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let mut sql = format!("SELECT {COLS} FROM events WHERE 1 = 1{cond}");
    if let Some(b) = f.before {
        args.push(b.into());
        sql.push_str(&format!(" AND ingest_seq < ?{}", args.len()));
    }
    sql.push_str(&format!(" ORDER BY ingest_seq DESC LIMIT {}", size + 1));
    let mut rows = Vec::new();
    store.db().read(|c| {
        c.each(&sql, &args, &mut |r| {
            rows.push(row(r));
            true
        })
    })?;
    let more = rows.len() > size;
    rows.truncate(size);
    Ok(Ok((rows, more)))
}

/// Counting stops here: "more than 100,000".
pub const COUNT_CAP: u64 = 100_000;

/// How many events match `f` (at most [`COUNT_CAP`] + 1).
pub fn count(store: &Store, f: &Filter) -> Result<u64, StoreError> {
    let Ok((cond, args)) = f.sql() else {
        return Ok(0);
    };
    let r = store.db().read(|c| {
        c.rows(
            &format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE 1 = 1{cond} LIMIT {}) x",
                COUNT_CAP + 1
            ),
            &args,
        )
    })?;
    Ok(r.first().map_or(0, |r| r[0].int().max(0) as u64))
}

/// Events matching `f` stored after `after`, in the API's order (ingest order), at most `max`
/// events and about `max_bytes`: for exports, page by page.
pub fn export_page(
    store: &Store,
    f: &Filter,
    after: i64,
    max: usize,
    max_bytes: usize,
) -> Result<Vec<Row>, StoreError> {
    let Ok((cond, mut args)) = f.sql() else {
        return Ok(Vec::new());
    };
    args.push(after.into());
    let sql = format!(
        "SELECT {COLS} FROM events WHERE 1 = 1{cond} AND ingest_seq > ?{} ORDER BY ingest_seq LIMIT {max}",
        args.len()
    );
    let mut rows = Vec::new();
    let mut bytes = 0;
    store.db().read(|c| {
        c.each(&sql, &args, &mut |r| {
            let x = row(r);
            bytes += x.raw.len();
            rows.push(x);
            bytes < max_bytes
        })
    })?;
    Ok(rows)
}

/// The event stored under this cursor.
pub fn event(store: &Store, cursor: i64) -> Result<Option<Row>, StoreError> {
    let mut out = None;
    store.db().read(|c| {
        c.each(
            &format!("SELECT {COLS} FROM events WHERE ingest_seq = ?1"),
            &[cursor.into()],
            &mut |r| {
                out = Some(row(r));
                false
            },
        )
    })?;
    Ok(out)
}

/// The record stored in a host's chain at (epoch, seq), if any.
pub fn at(store: &Store, host: &str, epoch: u64, seq: u64) -> Result<Option<String>, StoreError> {
    let r = store.db().read(|c| {
        c.rows(
            "SELECT raw FROM events WHERE host_id = ?1 AND epoch = ?2 AND seq = ?3 ORDER BY ingest_seq LIMIT 1",
            &[host.into(), (epoch as i64).into(), (seq as i64).into()],
        )
    })?;
    Ok(r.into_iter().next().and_then(|r| r[0].text()))
}

/// A host's events, newest first (before `before`), heartbeats left out unless asked for.
pub fn timeline(
    store: &Store,
    host: &str,
    heartbeats: bool,
    before: Option<i64>,
    size: usize,
) -> Result<(Vec<Row>, bool), StoreError> {
    let mut args: Vec<Val> = vec![host.into()];
    let mut sql = format!("SELECT {COLS} FROM events WHERE host_id = ?1");
    if !heartbeats {
        sql.push_str(" AND kind <> 'heartbeat'");
    }
    if let Some(b) = before {
        args.push(b.into());
        sql.push_str(" AND ingest_seq < ?2");
    }
    sql.push_str(&format!(" ORDER BY ingest_seq DESC LIMIT {}", size + 1));
    let mut rows = Vec::new();
    store.db().read(|c| {
        c.each(&sql, &args, &mut |r| {
            rows.push(row(r));
            true
        })
    })?;
    let more = rows.len() > size;
    rows.truncate(size);
    Ok((rows, more))
}

/// What one person did on one host under one rule and kind: (host, rule, kind, count, first ms,
/// last ms).
pub type Tally = (String, String, String, u64, i64, i64);

/// A person's events, summed up by host, rule and kind.
pub fn person_tally(store: &Store, user: &str) -> Result<Vec<Tally>, StoreError> {
    let rows = store.db().read(|c| {
        c.rows(
            "SELECT host_id, COALESCE(rule_id, ''), kind, COUNT(*), MIN(time_ms), MAX(time_ms)
             FROM events WHERE user_name = ?1 AND kind <> 'heartbeat'
             GROUP BY host_id, COALESCE(rule_id, ''), kind ORDER BY host_id, 2, kind",
            &[user.into()],
        )
    })?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r[0].text().unwrap_or_default(),
                r[1].text().unwrap_or_default(),
                r[2].text().unwrap_or_default(),
                r[3].int().max(0) as u64,
                r[4].int(),
                r[5].int(),
            )
        })
        .collect())
}

/// A stretch of time during which a person's events on one host carried the same policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpan {
    /// Host.
    pub host_id: String,
    /// First event under it, ms.
    pub from_ms: i64,
    /// Last event under it, ms.
    pub to_ms: i64,
    /// Policy name, version, SHA-256 and mode, as the events carry them (empty when they carry
    /// none).
    pub name: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the policy file.
    pub sha256: String,
    /// enforce or monitor.
    pub mode: String,
    /// Events under it.
    pub events: u64,
}

/// At most this many of a person's events are read for the policy history.
pub const POLICY_SCAN_CAP: usize = 100_000;

/// The policy in force at each of a person's events, host by host, in event time: consecutive
/// events under the same policy make one span. `true` when the person has more events than
/// were read ([`POLICY_SCAN_CAP`]; the first stored are read).
///
/// The rows are read in the user index's order and sorted here, on small keys: sorting the rows
/// with their stored bytes in the database cost most of the person's page (BENCHMARKS.md).
pub fn person_policies(store: &Store, user: &str) -> Result<(Vec<PolicySpan>, bool), StoreError> {
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(default)]
        policy: Option<interdict_event::PolicyRef>,
    }
    // Each distinct policy once; each event as (host, time, ingest order, policy index).
    let mut policies: Vec<interdict_event::PolicyRef> = Vec::new();
    let mut index: HashMap<(String, String, String, String), usize> = HashMap::new();
    let mut hosts: Vec<String> = Vec::new();
    let mut host_ix: HashMap<String, usize> = HashMap::new();
    let mut events: Vec<(usize, i64, i64, usize)> = Vec::new();
    let mut n = 0usize;
    store.db().read(|c| {
        c.each(
            &format!(
                "SELECT host_id, time_ms, ingest_seq, raw FROM events
                 WHERE user_name = ?1 AND kind <> 'heartbeat' ORDER BY user_name, ingest_seq LIMIT {}",
                POLICY_SCAN_CAP + 1
            ),
            &[user.into()],
            &mut |r| {
                n += 1;
                if n > POLICY_SCAN_CAP {
                    return false;
                }
                let host = r[0].text().unwrap_or_default();
                let h = *host_ix.entry(host.clone()).or_insert_with(|| {
                    hosts.push(host);
                    hosts.len() - 1
                });
                let p = r[3]
                    .text()
                    .and_then(|raw| serde_json::from_str::<P>(&raw).ok())
                    .and_then(|p| p.policy)
                    .unwrap_or_default();
                let key = (
                    p.name.clone(),
                    p.version.clone(),
                    p.sha256.clone(),
                    p.mode.clone(),
                );
                let i = *index.entry(key).or_insert_with(|| {
                    policies.push(p);
                    policies.len() - 1
                });
                events.push((h, r[1].int(), r[2].int(), i));
                true
            },
        )
    })?;
    events.sort_unstable_by(|a, b| {
        hosts[a.0]
            .cmp(&hosts[b.0])
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    let mut spans: Vec<PolicySpan> = Vec::new();
    let mut last: Option<(usize, usize)> = None;
    for (h, t, _, i) in events {
        match spans.last_mut() {
            Some(s) if last == Some((h, i)) => {
                s.to_ms = t;
                s.events += 1;
            }
            _ => {
                let p = &policies[i];
                spans.push(PolicySpan {
                    host_id: hosts[h].clone(),
                    from_ms: t,
                    to_ms: t,
                    name: p.name.clone(),
                    version: p.version.clone(),
                    sha256: p.sha256.clone(),
                    mode: p.mode.clone(),
                    events: 1,
                });
                last = Some((h, i));
            }
        }
    }
    Ok((spans, n > POLICY_SCAN_CAP))
}

/// Host id → host name, for every enrolled host.
pub fn hostnames(store: &Store) -> Result<BTreeMap<String, String>, StoreError> {
    let rows = store
        .db()
        .read(|c| c.rows("SELECT host_id, hostname FROM hosts", &[]))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r[0].text().unwrap_or_default(),
                r[1].text().unwrap_or_default(),
            )
        })
        .collect())
}

/// The rule ids seen in the last `days` (for the filter's choices).
pub fn known(store: &Store, dim: &str) -> Result<Vec<String>, StoreError> {
    let rows = store.db().read(|c| {
        c.rows(
            "SELECT DISTINCT k FROM console_days WHERE dim = ?1 ORDER BY k",
            &[dim.into()],
        )
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r[0].text())
        .filter(|k| !k.is_empty())
        .collect())
}
