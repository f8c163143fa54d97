//! The overview's summaries, kept up to date incrementally: violations per UTC day by rule, host
//! and user; the latest install event per host and path; each host's latest heartbeat.
//!
//! Events are counted in the order the collector stored them (the ingest sequence, which is
//! commit order), in passes of at most [`CHUNK`] events, each pass one transaction that also moves
//! the mark of how far the summaries go (`console_rollup.upto`): a pass interrupted counts nothing
//! twice, and several collectors on one PostgreSQL database take turns (the mark's row is locked).
//! Events only ever disappear through retention or a host's deletion, and both sign a cut: when
//! the cuts changed since the last pass, the summaries are counted again from the start. Someone
//! deleting rows in the database behind the collector's back is not seen here (chain verification
//! names it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::sql::{DbError, Exec, Val};
use crate::store::{Store, StoreError};

/// Kinds counted as violations: a banned program started, was stopped, was reported, or a banned
/// script was opened. (Installs are shown as compliance, not counted per day: a rescan reports
/// what is still installed again.)
pub const VIOLATION_KINDS: &[&str] = &[
    "exec_denied",
    "exec_reported",
    "process_killed",
    "script_denied",
];

/// Kinds that say whether a banned tool is installed.
pub const INSTALL_KINDS: &[&str] = &[
    "installed_detected",
    "installed_removed",
    "installed_quarantined",
];

/// Events counted per pass (one transaction).
pub const CHUNK: i64 = 50_000;

/// Milliseconds per UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// How far the summaries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Counted up to this ingest sequence number.
    pub upto: i64,
    /// The last one stored.
    pub end: i64,
}

impl Progress {
    /// Everything stored is counted.
    pub fn done(&self) -> bool {
        self.upto >= self.end
    }
}

/// `'a', 'b', ...` for an `IN (...)` list of fixed words.
pub fn in_list(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Count what was stored since the last pass, in passes, until everything is counted or
/// `budget` has passed (at least one pass is made).
pub fn refresh(store: &Store, budget: Duration) -> Result<Progress, StoreError> {
    let start = Instant::now();
    loop {
        let p = pass(store)?;
        if p.done() || start.elapsed() >= budget {
            return Ok(p);
        }
    }
}

/// How far the summaries go, without counting anything.
pub fn progress(store: &Store) -> Result<Progress, StoreError> {
    let r = store.db().read(|c| {
        Ok((
            c.rows("SELECT upto FROM console_rollup", &[])?,
            c.rows("SELECT n FROM ingest_counter", &[])?,
        ))
    })?;
    Ok(Progress {
        upto: r.0.first().map_or(0, |r| r[0].int()),
        end: r.1.first().map_or(0, |r| r[0].int()),
    })
}

fn pass(store: &Store) -> Result<Progress, StoreError> {
    let lock = if store.is_postgres() {
        " FOR UPDATE"
    } else {
        ""
    };
    Ok(store.db().tx(|t| -> Result<Progress, DbError> {
        let mark = t.rows(&format!("SELECT upto, cuts FROM console_rollup{lock}"), &[])?;
        let (mut upto, cuts) = mark.first().map_or((0, -1), |r| (r[0].int(), r[1].int()));
        let cuts_now = t
            .rows("SELECT COALESCE(MAX(id), 0) FROM cuts", &[])?
            .first()
            .map_or(0, |r| r[0].int());
        if cuts != cuts_now {
            for table in ["console_days", "console_installs", "console_hoststate"] {
                t.exec(&format!("DELETE FROM {table}"), &[])?;
            }
            upto = 0;
        }
        let end = t
            .rows("SELECT n FROM ingest_counter", &[])?
            .first()
            .map_or(0, |r| r[0].int());
        let to = end.min(upto + CHUNK);
        if to > upto {
            count_days(t, upto, to)?;
            count_installs(t, upto, to)?;
            count_heartbeats(t, upto, to)?;
        }
        t.exec(
            "UPDATE console_rollup SET upto = ?1, cuts = ?2",
            &[to.max(upto).into(), cuts_now.into()],
        )?;
        Ok(Progress {
            upto: to.max(upto),
            end,
        })
    })?)
}

fn count_days(t: &mut dyn Exec, from: i64, to: i64) -> Result<(), DbError> {
    let kinds = in_list(VIOLATION_KINDS);
    for (dim, col) in [
        ("rule", "rule_id"),
        ("host", "host_id"),
        ("user", "user_name"),
    ] {
        t.exec(
            &format!(
                "INSERT INTO console_days (day_n, dim, k, n)
                 SELECT time_ms / {DAY_MS}, '{dim}', COALESCE({col}, ''), COUNT(*) FROM events
                 WHERE ingest_seq > ?1 AND ingest_seq <= ?2 AND kind IN ({kinds})
                 GROUP BY time_ms / {DAY_MS}, COALESCE({col}, '')
                 ON CONFLICT (dim, day_n, k) DO UPDATE SET n = console_days.n + excluded.n"
            ),
            &[from.into(), to.into()],
        )?;
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct InstallFacts {
    #[serde(default)]
    rule: Option<IdOnly>,
    #[serde(default)]
    file: Option<PathOnly>,
}

#[derive(serde::Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(serde::Deserialize)]
struct PathOnly {
    path: String,
}

fn count_installs(t: &mut dyn Exec, from: i64, to: i64) -> Result<(), DbError> {
    let rows = t.rows(
        &format!(
            "SELECT ingest_seq, host_id, kind, time_ms, raw FROM events
             WHERE ingest_seq > ?1 AND ingest_seq <= ?2 AND kind IN ({}) ORDER BY ingest_seq",
            in_list(INSTALL_KINDS)
        ),
        &[from.into(), to.into()],
    )?;
    for r in rows {
        let raw = r[4].text().unwrap_or_default();
        let Ok(f) = serde_json::from_str::<InstallFacts>(&raw) else {
            continue;
        };
        let Some(path) = f.file.map(|f| f.path) else {
            continue;
        };
        let rule = f.rule.map(|r| r.id).unwrap_or_default();
        t.exec(
            "INSERT INTO console_installs (host_id, path, rule_id, kind, time_ms, ingest_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (host_id, path) DO UPDATE SET rule_id = excluded.rule_id,
                 kind = excluded.kind, time_ms = excluded.time_ms, ingest_seq = excluded.ingest_seq
             WHERE excluded.time_ms > console_installs.time_ms
                OR (excluded.time_ms = console_installs.time_ms AND excluded.ingest_seq > console_installs.ingest_seq)",
            &[
                r[1].clone(),
                path.into(),
                rule.into(),
                r[2].clone(),
                r[3].clone(),
                r[0].clone(),
            ],
        )?;
    }
    Ok(())
}

/// What a heartbeat says, read out for the fleet table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Beat {
    /// Policy name.
    pub policy_name: Option<String>,
    /// Policy version.
    pub policy_version: Option<String>,
    /// Policy file SHA-256.
    pub policy_sha256: Option<String>,
    /// The signed policy bundle's version, when the heartbeat names one.
    pub bundle: Option<String>,
    /// enforce or monitor.
    pub mode: Option<String>,
    /// Agent version.
    pub version: Option<String>,
    /// Parts not working (`name: state (detail)`), one per line.
    pub degraded: String,
}

fn s(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Read a heartbeat event's message.
pub fn read_beat(raw: &str) -> Beat {
    #[derive(serde::Deserialize)]
    struct Msg {
        #[serde(default)]
        message: Option<String>,
    }
    let m: serde_json::Value = serde_json::from_str::<Msg>(raw)
        .ok()
        .and_then(|m| m.message)
        .and_then(|m| serde_json::from_str(&m).ok())
        .unwrap_or_default();
    let degraded = m["sensors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| matches!(p["state"].as_str(), Some("failing" | "failed")))
                .map(|p| {
                    format!(
                        "{}: {} ({})",
                        p["name"].as_str().unwrap_or("?"),
                        p["state"].as_str().unwrap_or("?"),
                        p["detail"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    // The agent reports `policy_bundle` (a number, or null while a policy file is in force).
    let bundle = s(&m["policy_bundle"]).or_else(|| s(&m["bundle_version"]));
    Beat {
        policy_name: s(&m["policy_name"]),
        policy_version: s(&m["policy_version"]),
        policy_sha256: s(&m["policy_sha256"]),
        bundle,
        mode: s(&m["mode"]),
        version: s(&m["version"]),
        degraded,
    }
}

fn count_heartbeats(t: &mut dyn Exec, from: i64, to: i64) -> Result<(), DbError> {
    let last: HashMap<String, i64> = t
        .rows(
            "SELECT host_id, MAX(ingest_seq) FROM events
             WHERE ingest_seq > ?1 AND ingest_seq <= ?2 AND kind = 'heartbeat' GROUP BY host_id",
            &[from.into(), to.into()],
        )?
        .into_iter()
        .map(|r| (r[0].text().unwrap_or_default(), r[1].int()))
        .collect();
    for (host, seq) in last {
        let Some(r) = t
            .rows(
                "SELECT time_ms, raw FROM events WHERE ingest_seq = ?1",
                &[seq.into()],
            )?
            .into_iter()
            .next()
        else {
            continue;
        };
        let b = read_beat(&r[1].text().unwrap_or_default());
        t.exec(
            "INSERT INTO console_hoststate (host_id, ingest_seq, time_ms, policy_name, policy_version,
                 policy_sha256, bundle, mode, version, degraded)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (host_id) DO UPDATE SET ingest_seq = excluded.ingest_seq,
                 time_ms = excluded.time_ms, policy_name = excluded.policy_name,
                 policy_version = excluded.policy_version, policy_sha256 = excluded.policy_sha256,
                 bundle = excluded.bundle, mode = excluded.mode, version = excluded.version,
                 degraded = excluded.degraded
             WHERE excluded.ingest_seq > console_hoststate.ingest_seq",
            &[
                host.into(),
                seq.into(),
                r[0].clone(),
                b.policy_name.into(),
                b.policy_version.into(),
                b.policy_sha256.into(),
                b.bundle.into(),
                b.mode.into(),
                b.version.into(),
                b.degraded.into(),
            ],
        )?;
    }
    Ok(())
}

/// Counts of one dimension (`rule`, `host`, `user`) per day from `from_day` on: (day, key, n).
pub fn days(
    store: &Store,
    dim: &str,
    from_day: i64,
) -> Result<Vec<(i64, String, u64)>, StoreError> {
    let rows = store.db().read(|c| {
        c.rows(
            "SELECT day_n, k, n FROM console_days WHERE dim = ?1 AND day_n >= ?2 ORDER BY day_n, k",
            &[dim.into(), from_day.into()],
        )
    })?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r[0].int(),
                r[1].text().unwrap_or_default(),
                r[2].int().max(0) as u64,
            )
        })
        .collect())
}

/// The installs that stand now (the latest install event of each host and path is a detection),
/// of one host or of all: (host, path, rule, time of that event, ms).
pub fn installed(
    store: &Store,
    host: Option<&str>,
) -> Result<Vec<(String, String, String, i64)>, StoreError> {
    let (filter, args): (&str, Vec<Val>) = match host {
        Some(h) => (" AND host_id = ?1", vec![h.into()]),
        None => ("", vec![]),
    };
    let rows = store.db().read(|c| {
        c.rows(
            &format!(
                "SELECT host_id, path, rule_id, time_ms FROM console_installs
                 WHERE kind = 'installed_detected'{filter} ORDER BY host_id, rule_id, path"
            ),
            &args,
        )
    })?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r[0].text().unwrap_or_default(),
                r[1].text().unwrap_or_default(),
                r[2].text().unwrap_or_default(),
                r[3].int(),
            )
        })
        .collect())
}

/// Each host's latest heartbeat, read out: host → (time ms, what it says).
pub fn beats(store: &Store) -> Result<HashMap<String, (i64, Beat)>, StoreError> {
    let rows = store.db().read(|c| {
        c.rows(
            "SELECT host_id, time_ms, policy_name, policy_version, policy_sha256, bundle, mode,
                    version, degraded FROM console_hoststate",
            &[],
        )
    })?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r[0].text().unwrap_or_default(),
                (
                    r[1].int(),
                    Beat {
                        policy_name: r[2].text(),
                        policy_version: r[3].text(),
                        policy_sha256: r[4].text(),
                        bundle: r[5].text(),
                        mode: r[6].text(),
                        version: r[7].text(),
                        degraded: r[8].text().unwrap_or_default(),
                    },
                ),
            )
        })
        .collect())
}

/// The `limit` largest keys of one dimension over days `from_day..=to_day`: (key, n).
pub fn top(
    store: &Store,
    dim: &str,
    from_day: i64,
    to_day: i64,
    limit: usize,
) -> Result<Vec<(String, u64)>, StoreError> {
    let rows = store.db().read(|c| {
        c.rows(
            &format!(
                "SELECT k, CAST(SUM(n) AS BIGINT) FROM console_days WHERE dim = ?1 AND day_n >= ?2 AND day_n <= ?3
                 GROUP BY k ORDER BY SUM(n) DESC, k LIMIT {limit}"
            ),
            &[dim.into(), from_day.into(), to_day.into()],
        )
    })?;
    Ok(rows
        .into_iter()
        .map(|r| (r[0].text().unwrap_or_default(), r[1].int().max(0) as u64))
        .collect())
}
