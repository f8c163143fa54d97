//! The fleet control plane on the collector: it **distributes** what IT signed and **signs**
//! what reviewers decided, with two keys of its own, each good for one thing only.
//!
//! - **Policy bundles** are signed by IT with an offline key the collector never sees;
//!   `interdict-collector policy publish BUNDLE [--hosts GLOB]` stores one (versions only
//!   grow), and agents fetch theirs (`GET /v1/policy`, agent token, conditional on the
//!   version: `If-None-Match` with the ETag, or `?have=VERSION`). The bundle served to a host
//!   is the highest version whose host globs match its id or name.
//! - **Learned digests**: every `hash_learned` event a host ships becomes a pending digest
//!   (rule, digest, size, where and how first seen, how many hosts learned it). A reviewer
//!   approves or rejects it (`POST /v1/learned/DIGEST/approve|reject`); an approval signs a new
//!   **hash list** of every approved digest with the collector's *hash-list key*. Agents add
//!   those digests to the rules they name, and only to block, kill and quarantine rules;
//!   nothing a host sends is in force elsewhere before a reviewer approved it.
//! - **Exceptions**: an `exception_requested` event becomes a pending request; a reviewer
//!   approves it (for the days asked, or as many days or seconds as they say) or denies it.
//!   An approval is signed with the collector's *exception key*: one user, one rule, one host,
//!   a start and an end. Agents accept it only when the signed policy names that key and
//!   allows exceptions that long for that rule.
//!
//! Agents fetch `GET /v1/approvals` (the hash list, the host's exceptions that have not ended,
//! its recent denials; conditional on the fleet revision) with every heartbeat. Reviewers list
//! with `GET /v1/learned?status=`, `GET /v1/exceptions?status=`, `GET /v1/bundles`, and see
//! which bundle each host enforces in `GET /v1/hosts` (`policy_bundle`, `policy_bundle_target`,
//! `behind`). Every change is in the fleet audit, `GET /v1/fleet/audit?after=SEQ`.

pub mod store;

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{Extension, Path, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use interdict_fleet::SecretKey;
use serde::Deserialize;
use serde_json::json;

use crate::store::{HostRow, Principal, StoreError};
use crate::{blocking, err, internal, limit, read_body, who, Peer, Shared};
pub use store::{Approvals, AuditRow, BundleRow, Denied, ExceptionRow, FleetError, LearnedRow};

/// The collector's fleet keys.
pub struct Keys {
    /// Signs hash lists (approved digests): accepted by agents only to add digests to block,
    /// kill and quarantine rules.
    pub hash_list: SecretKey,
    /// Signs exceptions.
    pub exceptions: SecretKey,
}

impl Keys {
    /// Load both keys (creating them 0600 when missing).
    pub fn load_or_create(
        hash_list: &std::path::Path,
        exceptions: &std::path::Path,
    ) -> Result<Keys, crate::keys::KeyError> {
        Ok(Keys {
            hash_list: crate::keys::load_or_create(hash_list)?.into(),
            exceptions: crate::keys::load_or_create(exceptions)?.into(),
        })
    }
}

/// Where the fleet keys are by default: beside the signing key.
pub fn default_key_paths(cfg: &crate::Config) -> (PathBuf, PathBuf) {
    let dir = cfg
        .signing_key_path()
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_default();
    (
        cfg.hash_list_key
            .clone()
            .unwrap_or_else(|| dir.join("hash-list.key")),
        cfg.exception_key
            .clone()
            .unwrap_or_else(|| dir.join("exception.key")),
    )
}

/// The routes of the fleet control plane.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/policy", get(policy))
        .route("/v1/approvals", get(approvals))
        .route("/v1/bundles", get(bundles))
        .route("/v1/learned", get(learned))
        .route("/v1/learned/{sha256}/{decision}", post(decide_learned))
        .route("/v1/exceptions", get(exceptions))
        .route("/v1/exceptions/{id}/{decision}", post(decide_exception))
        .route("/v1/fleet/audit", get(audit))
}

/// The host behind an agent token (refused for reviewer tokens), within its rate limit.
async fn agent(app: &Shared, headers: &HeaderMap, peer: Peer) -> Result<String, Response> {
    let p = who(app, headers, peer).await?;
    match &p {
        Principal::Host(h) => {
            limit(app, &p, 0)?;
            Ok(h.clone())
        }
        Principal::Reviewer(_) => Err(err(
            StatusCode::FORBIDDEN,
            "this is for agents: reviewer tokens do not fetch policies or approvals",
        )),
    }
}

/// The reviewer behind a reviewer token (refused for agent tokens), within its rate limit.
async fn reviewer_name(app: &Shared, headers: &HeaderMap, peer: Peer) -> Result<String, Response> {
    let p = who(app, headers, peer).await?;
    match &p {
        Principal::Reviewer(n) => {
            limit(app, &p, 0)?;
            Ok(n.clone())
        }
        Principal::Host(_) => Err(err(
            StatusCode::FORBIDDEN,
            "agent tokens cannot read or decide",
        )),
    }
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(axum::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

fn not_modified(etag: &str) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = etag.parse() {
        r.headers_mut().insert(axum::http::header::ETAG, v);
    }
    r
}

fn fleet_err(e: FleetError) -> Response {
    match e {
        FleetError::Store(e) => internal(e),
        FleetError::Refused(m) => err(StatusCode::CONFLICT, m),
        FleetError::NotFound(m) => err(StatusCode::NOT_FOUND, m),
        FleetError::NoKey(m) => err(StatusCode::SERVICE_UNAVAILABLE, m),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Have {
    have: Option<u64>,
}

/// `GET /v1/policy`: the bundle meant for this host; 304 when it has that version already
/// (ETag or `?have=`), 204 when none is published. A version lower than the one the agent has
/// is served all the same: the agent refuses it and says so, which is how a rolled-back
/// collector shows up.
async fn policy(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    q: Result<QueryParams<Have>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let host = match agent(&app, &headers, peer).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let QueryParams(q) = match q {
        Ok(q) => q,
        Err(e) => return err(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let a = app.clone();
    let found = blocking(move || -> Result<_, StoreError> {
        let name = a.store.hostname_of(&host)?.unwrap_or_default();
        a.store.bundle_for(&host, &name)
    })
    .await;
    let (version, text) = match found {
        Ok(Some(x)) => x,
        Ok(None) => return StatusCode::NO_CONTENT.into_response(),
        Err(r) => return r,
    };
    let etag = format!("\"{version}\"");
    if etag_matches(&headers, &etag) || q.have == Some(version) {
        return not_modified(&etag);
    }
    let mut r = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response();
    if let Ok(v) = etag.parse() {
        r.headers_mut().insert(axum::http::header::ETAG, v);
    }
    r
}

/// `GET /v1/approvals`: the signed hash list, this host's exceptions, its recent denials;
/// 304 when nothing changed since the ETag.
async fn approvals(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    let host = match agent(&app, &headers, peer).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let a = app.clone();
    let rev = match blocking(move || a.store.fleet_rev()).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    // Exceptions end by the clock too: the revision alone would hide that.
    let etag = format!("\"{rev}-{}\"", crate::store::now_ms() / 60_000);
    if etag_matches(&headers, &etag) {
        return not_modified(&etag);
    }
    let a = app.clone();
    match blocking(move || a.store.approvals_for(&host)).await {
        Ok(v) => {
            let mut r = Json(v).into_response();
            if let Ok(v) = etag.parse() {
                r.headers_mut().insert(axum::http::header::ETAG, v);
            }
            r
        }
        Err(r) => r,
    }
}

/// `GET /v1/bundles`: every published bundle (reviewers).
async fn bundles(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = reviewer_name(&app, &headers, peer).await {
        return r;
    }
    let a = app.clone();
    match blocking(move || a.store.bundles()).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

/// `GET /v1/fleet/audit?after=SEQ&limit=N` (reviewers): the fleet's changes after revision
/// `after`, oldest first (page with the last `seq`).
async fn audit(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    q: Result<QueryParams<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = reviewer_name(&app, &headers, peer).await {
        return r;
    }
    let q = match q {
        Ok(QueryParams(q)) => q,
        Err(e) => return err(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (after, limit) = (
        q.after.unwrap_or(0),
        q.limit.unwrap_or(store::MAX_AUDIT_ROWS),
    );
    let a = app.clone();
    match blocking(move || a.store.fleet_audit(after, limit)).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    status: Option<String>,
}

#[allow(clippy::result_large_err)]
fn status_of(
    q: Result<QueryParams<StatusQuery>, axum::extract::rejection::QueryRejection>,
    allowed: &[&str],
) -> Result<Option<String>, Response> {
    let QueryParams(q) = q.map_err(|e| err(StatusCode::BAD_REQUEST, e.body_text()))?;
    match q.status {
        Some(s) if !allowed.contains(&s.as_str()) => Err(err(
            StatusCode::BAD_REQUEST,
            format!("`status` is one of: {}", allowed.join(", ")),
        )),
        s => Ok(s),
    }
}

/// `GET /v1/learned?status=pending|approved|rejected` (reviewers).
async fn learned(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    q: Result<QueryParams<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = reviewer_name(&app, &headers, peer).await {
        return r;
    }
    let status = match status_of(q, &["pending", "approved", "rejected"]) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let a = app.clone();
    match blocking(move || a.store.learned(status.as_deref())).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LearnedDecision {
    rule: Option<String>,
}

async fn small_json<T: for<'de> Deserialize<'de> + Default>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, Response> {
    let bytes = read_body(headers, body, 4096).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))
}

/// `POST /v1/learned/DIGEST/approve|reject`, body `{"rule": ID}` (optional: one rule only).
async fn decide_learned(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    Path((sha256, decision)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let name = match reviewer_name(&app, &headers, peer).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let approve = match decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return err(StatusCode::NOT_FOUND, "approve or reject"),
    };
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return err(
            StatusCode::BAD_REQUEST,
            "the digest is 64 hexadecimal digits",
        );
    }
    let d: LearnedDecision = match small_json(&headers, body).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let a = app.clone();
    let who_ = name.clone();
    let r = tokio::task::spawn_blocking(move || {
        a.store.decide_learned(
            &sha256,
            d.rule.as_deref(),
            approve,
            &who_,
            a.fleet.as_ref().map(|k| &k.hash_list),
        )
    })
    .await;
    match r {
        Ok(Ok(rows)) => {
            for row in &rows {
                tracing::info!(
                    client = %peer.0,
                    "reviewer {name} {} learned digest {} (rule {})",
                    row.status,
                    row.sha256,
                    row.rule_id
                );
            }
            Json(rows).into_response()
        }
        Ok(Err(e)) => fleet_err(e),
        Err(e) => internal(e),
    }
}

/// `GET /v1/exceptions?status=pending|approved|denied` (reviewers).
async fn exceptions(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    q: Result<QueryParams<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = reviewer_name(&app, &headers, peer).await {
        return r;
    }
    let status = match status_of(q, &["pending", "approved", "denied"]) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let a = app.clone();
    match blocking(move || a.store.exceptions(status.as_deref())).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExceptionDecision {
    days: Option<u64>,
    seconds: Option<u64>,
    note: Option<String>,
}

/// The policy published for a host (unverified: the collector does not hold IT's key), to
/// refuse approvals its agents would refuse.
fn published_policy(a: &crate::App, host: &str) -> Option<interdict_policy::Policy> {
    struct Files<'a>(&'a std::collections::BTreeMap<String, String>);
    impl interdict_policy::Includes for Files<'_> {
        fn read(&self, relative: &str) -> Result<interdict_policy::IncludedFile, String> {
            self.0
                .get(relative)
                .map(|t| interdict_policy::IncludedFile {
                    display_name: relative.to_string(),
                    text: t.clone(),
                })
                .ok_or_else(|| "not in the bundle".to_string())
        }
    }
    let name = a.store.hostname_of(host).ok()??;
    let (_, text) = a.store.bundle_for(host, &name).ok()??;
    let (body, _) = interdict_fleet::peek_bundle(&text).ok()?;
    interdict_policy::Policy::load("bundle", &body.policy, &Files(&body.files))
        .ok()
        .map(|(p, _)| p)
}

/// `POST /v1/exceptions/ID/approve|deny`, body `{"days": N}` or `{"seconds": N}` (approve;
/// default: the days asked for), `{"note": TEXT}` (told to the employee).
async fn decide_exception(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    Path((id, decision)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let name = match reviewer_name(&app, &headers, peer).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let approve = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return err(StatusCode::NOT_FOUND, "approve or deny"),
    };
    let d: ExceptionDecision = match small_json(&headers, body).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    if d.days.is_some() && d.seconds.is_some() {
        return err(
            StatusCode::BAD_REQUEST,
            "give `days` or `seconds`, not both",
        );
    }
    if d.note.as_ref().is_some_and(|n| n.len() > 2000) {
        return err(
            StatusCode::BAD_REQUEST,
            "the note is longer than 2000 bytes",
        );
    }
    let seconds = d
        .seconds
        .or(d.days.map(|x| x.saturating_mul(86_400)))
        .map(|s| s.min(i64::MAX as u64) as i64);
    let a = app.clone();
    let who_ = name.clone();
    let r = tokio::task::spawn_blocking(move || {
        let check = |g: &interdict_fleet::ExceptionGrant| -> Result<(), String> {
            let Some(p) = published_policy(&a, &g.host_id) else {
                return Ok(());
            };
            p.check_exception(&interdict_policy::Exception {
                id: g.id.clone(),
                rule_id: g.rule.clone(),
                user: g.user.clone(),
                from: g.from,
                until: g.until,
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        a.store.decide_exception(
            &id,
            approve,
            seconds,
            d.note.as_deref(),
            &who_,
            a.fleet.as_ref().map(|k| &k.exceptions),
            &check,
        )
    })
    .await;
    match r {
        Ok(Ok(row)) => {
            tracing::info!(
                client = %peer.0,
                "reviewer {name} {} exception {} ({} on {}, rule {})",
                row.status,
                row.id,
                row.user,
                row.host_id,
                row.rule_id
            );
            Json(row).into_response()
        }
        Ok(Err(e)) => fleet_err(e),
        Err(e) => internal(e),
    }
}

/// The events of a batch the fleet tables need (learned digests, exception requests, the
/// newest heartbeat), copied before the batch is stored.
pub fn of_interest(events: &[crate::Incoming]) -> Vec<interdict_event::Event> {
    use interdict_event::EventKind;
    let mut out: Vec<interdict_event::Event> = events
        .iter()
        .filter(|e| {
            matches!(
                e.event.kind,
                EventKind::HashLearned | EventKind::ExceptionRequested
            )
        })
        .map(|e| e.event.clone())
        .collect();
    if let Some(hb) = events
        .iter()
        .filter(|e| e.event.kind == EventKind::Heartbeat)
        .max_by_key(|e| e.seq)
    {
        out.push(hb.event.clone());
    }
    out
}

/// Record a stored batch's fleet events for `host` (errors are logged: the events are stored
/// and acknowledged regardless; a resend records them then).
pub async fn record(app: &Shared, host: &str, events: Vec<interdict_event::Event>) {
    if events.is_empty() {
        return;
    }
    let (a, h) = (app.clone(), host.to_string());
    match tokio::task::spawn_blocking(move || a.store.record_fleet_events(&h, &events)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            for _ in 0..n {
                app.count_mem("fleet_requests_dropped");
            }
            tracing::warn!("host {host}: {n} learned digest(s) or exception request(s) over the caps, not recorded");
        }
        Ok(Err(e)) => tracing::error!("host {host}: fleet events not recorded: {e}"),
        Err(e) => tracing::error!("host {host}: fleet events not recorded: {e}"),
    }
}

/// `GET /v1/hosts` rows with the bundle each host enforces (from its heartbeats), the bundle
/// meant for it, and whether it is behind.
pub fn hosts_with_bundles(
    store: &crate::Store,
    rows: Vec<HostRow>,
) -> Result<Vec<serde_json::Value>, StoreError> {
    let bundles = store.bundles()?;
    let have: std::collections::HashMap<String, (Option<u64>, Option<String>)> = store
        .host_bundles()?
        .into_iter()
        .map(|(h, v, s)| (h, (v, s)))
        .collect();
    Ok(rows
        .into_iter()
        .map(|r| {
            let target = bundles
                .iter()
                .find(|b| store::targets(&b.hosts, &r.host_id, &r.hostname))
                .map(|b| b.version);
            let (bundle, source) = have.get(&r.host_id).cloned().unwrap_or_default();
            let behind = target.is_some_and(|t| bundle.is_none_or(|b| b < t));
            let mut v = serde_json::to_value(&r).expect("host rows serialize");
            v["policy_bundle"] = json!(bundle);
            v["policy_source"] = json!(source);
            v["policy_bundle_target"] = json!(target);
            v["behind"] = json!(behind);
            v
        })
        .collect())
}
