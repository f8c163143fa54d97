//! `interdict-collector`: the central violation log.
//!
//! Agents enroll once with the enroll secret and get a per-host token (stored hashed); every
//! later request carries it, and the host an event is stored under comes from the token, never
//! from the payload: a batch holding another host's events is refused whole (403) and counted.
//! Each event is stored as the exact bytes the agent sent, and each host's events are checked
//! against its hash chain on arrival; gaps, breaks, restarts and reused numbers are kept as
//! findings (a gap filled in later is marked resolved). Verification re-derives every chain from
//! the stored bytes, and the collector signs checkpoints (Merkle tree heads over every chain's
//! head) that reviewers keep outside the database. Reviewers hold read-only tokens; agent tokens
//! cannot read and reviewer tokens cannot write.
//!
//! HTTP API (JSON; `Authorization: Bearer TOKEN` except for enrollment):
//! - `POST /v1/enroll` `{secret, host_id, hostname}` → `{token}` (409 when the host is enrolled
//!   already: `interdict-collector host reset` first; rate-limited)
//! - `POST /v1/events` `{events: [...]}` (agent) → `{stored, duplicates, acked_seq, acked_hash,
//!   findings}`; 422 for an invalid event (an id twice in the batch, an id stored before with
//!   other content, a time more than 24 h ahead, a field too long), 413 too large, 429 over the
//!   rate limit, 507 over the host's quota
//! - `GET /v1/events?host=&user=&rule=&kind=&outcome=&action=&since=&until=&after=&limit=&format=`
//!   (reviewer) → NDJSON (native: the bytes as sent; `ocsf` or `ecs`), in the order the collector
//!   stored them; `X-Cursor` is the cursor of the last event returned (for `after`), and
//!   `X-Next-Cursor` is set when a next page follows
//! - `GET /v1/chain?host=&after=` (reviewer) → a host's records in chain order, NDJSON
//!   `{epoch, seq, cursor, record}`, for re-deriving the chain client-side
//! - `GET /v1/hosts` (reviewer) → the fleet, silent hosts flagged
//! - `GET /v1/chains` (reviewer) → every chain's acknowledged head, signed cuts, findings, the
//!   collector's public key
//! - `GET /v1/checkpoint` (reviewer) → a signed checkpoint of every chain's head now
//! - `GET /v1/verify` (reviewer) → the collector's own re-derivation of every chain
//!
//! Malformed, oversized or unauthenticated requests get a 4xx and store nothing; the token is
//! checked before the body is read.
#![deny(missing_docs)]

pub mod config;
pub mod keys;
pub mod limits;
pub mod server;
pub mod sql;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use config::{Config, Limits};
pub use server::{serve, Peer};
pub use store::{Format, Incoming, Principal, Query, Store};

/// The collector's state.
pub struct App {
    /// The store.
    pub store: Store,
    /// Configuration (limits, retention, the silent threshold).
    pub config: Config,
    /// The signing key for checkpoints and cuts.
    pub key: ed25519_dalek::SigningKey,
    limiter: limits::Limiter,
    budget: Arc<tokio::sync::Semaphore>,
    counters: Mutex<HashMap<&'static str, u64>>,
}

impl App {
    /// The collector over `store`, with `config` and its signing `key`.
    pub fn new(store: Store, config: Config, key: ed25519_dalek::SigningKey) -> App {
        let kib = (config.limits.inflight_mib << 10).max(1) as usize;
        App {
            store,
            key,
            limiter: limits::Limiter::default(),
            budget: Arc::new(tokio::sync::Semaphore::new(kib)),
            counters: Mutex::new(HashMap::new()),
            config,
        }
    }

    /// The public key (hex) that checkpoints and cuts verify with.
    pub fn public_key(&self) -> String {
        keys::public_hex(&self.key)
    }

    /// Count something in memory (saved to the database every few seconds): for what floods
    /// can cause, so that a flood does not turn into database writes.
    pub fn count_mem(&self, name: &'static str) {
        *self
            .counters
            .lock()
            .expect("counters poisoned")
            .entry(name)
            .or_default() += 1;
    }

    /// Save the in-memory counters to the database.
    pub fn flush_counters(&self) {
        let taken = std::mem::take(&mut *self.counters.lock().expect("counters poisoned"));
        for (name, n) in taken {
            if let Err(e) = self.store.count_n(name, n) {
                tracing::warn!("cannot save counter {name}: {e}");
            }
        }
    }
}

/// Background chores while serving: counters saved every 5 s; hourly, retention pruning and
/// the query planner's statistics.
async fn chores(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let a = app.clone();
        let hourly = n % 720 == 0;
        let prune = a.config.retain_days > 0 && hourly;
        n += 1;
        let _ = tokio::task::spawn_blocking(move || {
            a.flush_counters();
            if hourly {
                if let Err(e) = a.store.optimize() {
                    tracing::warn!("planner statistics: {e}");
                }
            }
            if prune {
                let before = store::now_ms() - a.config.retain_days as i64 * 86_400_000;
                match a.store.prune(before, &a.key) {
                    Ok(0) => {}
                    Ok(k) => tracing::info!(
                        "retention: pruned {k} event(s) received more than {} day(s) ago",
                        a.config.retain_days
                    ),
                    Err(e) => tracing::error!("retention: {e}"),
                }
            }
        })
        .await;
    }
}

type Shared = Arc<App>;

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("{e}");
    err(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

fn too_many(wait: Duration, what: &str) -> Response {
    let mut r = err(
        StatusCode::TOO_MANY_REQUESTS,
        format!("{what}: over the rate limit; retry later"),
    );
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(v) = secs.to_string().parse() {
        r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
    }
    r
}

async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(internal)?
        .map_err(internal)
}

async fn who(app: &Shared, headers: &HeaderMap, peer: Peer) -> Result<Principal, Response> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let Some(token) = token else {
        app.count_mem("rejected_unauthenticated");
        return Err(err(StatusCode::UNAUTHORIZED, "missing bearer token"));
    };
    let a = app.clone();
    match blocking(move || a.store.principal(&token)).await? {
        Some(p) => Ok(p),
        None => {
            app.count_mem("rejected_bad_token");
            tracing::debug!(client = %peer.0, "unknown token");
            Err(err(StatusCode::UNAUTHORIZED, "unknown token"))
        }
    }
}

/// Rate-limit a principal's request (and its events).
// The refusal is the response itself, built once per refused request.
#[allow(clippy::result_large_err)]
fn limit(app: &App, p: &Principal, events: u64) -> Result<(), Response> {
    let l = &app.config.limits;
    let r = match p {
        Principal::Host(h) => app
            .limiter
            .take(
                &format!("h:{h}"),
                1,
                l.host_requests_per_s,
                l.host_requests_burst,
            )
            .and_then(|_| {
                if events == 0 {
                    return Ok(());
                }
                app.limiter.take(
                    &format!("e:{h}"),
                    events,
                    l.host_events_per_s,
                    l.host_events_burst,
                )
            }),
        Principal::Reviewer(n) => app.limiter.take(
            &format!("r:{n}"),
            1,
            l.reviewer_requests_per_s,
            l.reviewer_requests_burst,
        ),
    };
    r.map_err(|w| {
        app.count_mem("rejected_rate_limited");
        too_many(w, "this token")
    })
}

/// Room in the memory budget for `bytes`, waiting at most the request timeout.
async fn room(app: &App, bytes: u64) -> Result<tokio::sync::OwnedSemaphorePermit, Response> {
    let kib = bytes
        .div_ceil(1024)
        .clamp(1, app.config.limits.inflight_mib << 10) as u32;
    let wait = Duration::from_secs(app.config.limits.request_timeout_s);
    match tokio::time::timeout(wait, app.budget.clone().acquire_many_owned(kib)).await {
        Ok(Ok(p)) => Ok(p),
        _ => {
            app.count_mem("rejected_busy");
            Err(err(
                StatusCode::SERVICE_UNAVAILABLE,
                "the collector is busy; retry later",
            ))
        }
    }
}

/// Read a body of at most `max` bytes (413 beyond: said by Content-Length before reading).
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: u64,
) -> Result<axum::body::Bytes, Response> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {max} bytes"),
        ));
    }
    axum::body::to_bytes(body, max as usize).await.map_err(|_| {
        err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {max} bytes, or was cut off"),
        )
    })
}

/// Read and discard a refused request's body when it is small (an agent's batch, up to 1 MiB,
/// declared by Content-Length), so that the agent reads the refusal (401: enroll again) instead
/// of failing to send; larger or undeclared bodies are not read at all.
async fn drain_small(headers: &HeaderMap, mut body: Body) {
    use http_body::Body as _;
    let small = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= 1 << 20);
    if !small {
        return;
    }
    let read = async {
        while let Some(Ok(_)) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
}

/// An enrollment request.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The collector's enroll secret.
    pub secret: String,
    /// The agent's host id.
    pub host_id: String,
    /// The agent's host name.
    pub hostname: String,
}

fn valid_id(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

async fn enroll(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let l = &app.config.limits;
    if let Err(w) = app
        .limiter
        .take("enroll", 1, l.enroll_per_s, l.enroll_burst)
    {
        app.count_mem("rejected_enroll_rate");
        return too_many(w, "enrollment");
    }
    let bytes = match read_body(&headers, body, 4096).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: EnrollRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => return err(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if !valid_id(&req.host_id, 128) || req.hostname.is_empty() || req.hostname.len() > 255 {
        return err(StatusCode::BAD_REQUEST, "bad host_id or hostname");
    }
    let a = app.clone();
    let secret = req.secret.clone();
    match blocking(move || a.store.check_enroll_secret(&secret)).await {
        Ok(true) => {}
        Ok(false) => {
            app.count_mem("rejected_enroll_secret");
            tracing::warn!(client = %peer.0, "enrollment with a wrong enroll secret");
            return err(StatusCode::UNAUTHORIZED, "wrong enroll secret");
        }
        Err(r) => return r,
    }
    let a = app.clone();
    let max = l.max_hosts;
    let (host, name) = (req.host_id.clone(), req.hostname.clone());
    match blocking(move || a.store.enroll(&host, &name, max)).await {
        Ok(Ok(Some(token))) => {
            tracing::info!(client = %peer.0, "host {} enrolled", req.host_id);
            Json(json!({ "token": token })).into_response()
        }
        Ok(Ok(None)) => {
            app.count_mem("rejected_reenrollment");
            tracing::warn!(client = %peer.0, "host {} tried to enroll again", req.host_id);
            err(
                StatusCode::CONFLICT,
                "this host is enrolled already; IT can allow a new enrollment with `interdict-collector host reset HOST_ID`",
            )
        }
        Ok(Err(n)) => err(
            StatusCode::FORBIDDEN,
            format!("the collector holds {n} hosts, its limit (max_hosts): no more enrollments"),
        ),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch<'a> {
    #[serde(borrow)]
    events: Vec<&'a serde_json::value::RawValue>,
}

/// The string fields of an event, for the per-field limit.
fn fields(e: &interdict_event::Event) -> Vec<&str> {
    let mut v: Vec<&str> = vec![&e.id, &e.time, &e.host_id, &e.hostname];
    v.extend(e.sensor.as_deref());
    v.extend(e.message.as_deref());
    if let Some(r) = &e.rule {
        v.extend([
            r.id.as_str(),
            &r.name,
            &r.risk,
            &r.action,
            &r.selector,
            &r.pattern,
            &r.matched,
        ]);
    }
    if let Some(p) = &e.process {
        v.extend(p.exe.as_deref());
        v.extend(p.cwd.as_deref());
        v.extend(p.user.as_deref());
        v.extend(p.parent_exe.as_deref());
        v.extend(p.argv.iter().map(String::as_str));
    }
    if let Some(f) = &e.file {
        v.push(&f.path);
        v.extend(f.sha256.as_deref());
    }
    if let Some(p) = &e.policy {
        v.extend([p.name.as_str(), &p.version, &p.sha256, &p.mode]);
    }
    v
}

async fn ingest(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let principal = match who(&app, &headers, peer).await {
        Ok(p) => p,
        Err(r) => {
            drain_small(&headers, body).await;
            return r;
        }
    };
    let host = match &principal {
        Principal::Host(h) => h.clone(),
        Principal::Reviewer(_) => {
            return err(StatusCode::FORBIDDEN, "reviewer tokens cannot write")
        }
    };
    if let Err(r) = limit(&app, &principal, 0) {
        return r;
    }
    let l = app.config.limits.clone();
    let max_body = l.max_body_mib << 20;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(max_body)
        .min(max_body);
    let _permit = match room(&app, declared).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let bytes = match read_body(&headers, body, max_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let refuse = |code: StatusCode, msg: String| {
        tracing::info!(client = %peer.0, "batch of host {host} refused ({code}): {msg}");
        err(code, msg)
    };
    let batch: RawBatch<'_> = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            let code = if e.is_data() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::BAD_REQUEST
            };
            return refuse(code, format!("not a batch of events: {e}"));
        }
    };
    if batch.events.len() as u64 > l.max_batch {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {} events per batch", l.max_batch),
        );
    }
    let now = store::now_ms();
    let mut events = Vec::with_capacity(batch.events.len());
    let mut ids = HashSet::new();
    for (i, raw) in batch.events.iter().enumerate() {
        let raw = raw.get();
        if raw.len() as u64 > l.max_event_kib << 10 {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("event {i} is larger than {} KiB", l.max_event_kib),
            );
        }
        if raw.contains(['\n', '\r']) {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("event {i} spans several lines; events are one line of JSON each"),
            );
        }
        let inc = match Incoming::parse(raw) {
            Ok(x) => x,
            Err(e) => {
                return refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("event {i} is not valid: {e}"),
                )
            }
        };
        events.push(inc);
    }
    if events.iter().any(|e| e.event.host_id != host) {
        let a = app.clone();
        let _ = blocking(move || a.store.count("rejected_forged_host")).await;
        tracing::warn!(client = %peer.0, "host {host} sent events of another host: batch refused");
        return err(
            StatusCode::FORBIDDEN,
            "events of another host: a token writes only as its own host",
        );
    }
    for e in &events {
        let ev = &e.event;
        let problem = if !valid_id(&ev.id, 64) {
            Some("its id is not 1 to 64 letters, digits and dashes".to_string())
        } else if !ids.insert(ev.id.as_str()) {
            Some("its id is in the batch twice".to_string())
        } else if e.time_ms > now + (l.max_future_s as i64) * 1000 {
            Some(format!(
                "its time {} is more than {} s ahead of the collector's clock",
                ev.time, l.max_future_s
            ))
        } else if ev.hostname.len() > 255 {
            Some("its hostname is longer than 255 bytes".to_string())
        } else {
            fields(ev)
                .iter()
                .find(|f| f.len() as u64 > l.max_field_kib << 10)
                .map(|_| format!("a field is longer than {} KiB", l.max_field_kib))
        };
        if let Some(p) = problem {
            let a = app.clone();
            let _ = blocking(move || a.store.count("rejected_invalid_event")).await;
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("event {} (seq {}): {p}", ev.id, e.seq),
            );
        }
    }
    drop(ids);
    if let Err(r) = limit(&app, &principal, events.len() as u64) {
        return r;
    }
    let a = app.clone();
    let quota = l.host_quota_mib << 20;
    let h = host.clone();
    let r = tokio::task::spawn_blocking(move || a.store.ingest(&h, events, quota)).await;
    match r {
        Ok(Ok(r)) => {
            if r.findings > 0 {
                tracing::warn!(client = %peer.0, "host {host}: {} chain finding(s)", r.findings);
            }
            Json(r).into_response()
        }
        Ok(Err(store::IngestError::Conflict(id))) => {
            let a = app.clone();
            let _ = blocking(move || a.store.count("rejected_id_conflict")).await;
            refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("event {id} was stored before with different content; nothing of this batch was stored"),
            )
        }
        Ok(Err(e @ store::IngestError::Quota(_))) => {
            app.count_mem("rejected_quota");
            refuse(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
        }
        Ok(Err(store::IngestError::Gone)) => err(StatusCode::UNAUTHORIZED, "unknown host"),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn reviewer(app: &Shared, headers: &HeaderMap, peer: Peer) -> Result<(), Response> {
    let p = who(app, headers, peer).await?;
    match &p {
        Principal::Reviewer(_) => limit(app, &p, 0),
        Principal::Host(_) => Err(err(StatusCode::FORBIDDEN, "agent tokens cannot read")),
    }
}

async fn query(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    q: Result<QueryParams<Query>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = reviewer(&app, &headers, peer).await {
        return r;
    }
    let QueryParams(q) = match q {
        Ok(q) => q,
        Err(e) => return err(StatusCode::BAD_REQUEST, e.body_text()),
    };
    for (name, t) in [("since", &q.since), ("until", &q.until)] {
        if let Some(t) = t {
            if interdict_event::parse_rfc3339_millis(t).is_none() {
                return err(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "`{name}` is `{t}`: expected a UTC time like 2026-11-26T09:30:00Z or a date like 2026-11-26"
                    ),
                );
            }
        }
    }
    let l = &app.config.limits;
    let max_bytes = (l.max_page_mib << 20) as usize;
    let permit = match room(&app, max_bytes as u64 * 2).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let a = app.clone();
    let (format, after) = (q.format, q.after);
    let max_events = l.max_page_events as usize;
    let (rows, more) = match blocking(move || a.store.query(&q, max_events, max_bytes)).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut body = String::new();
    for (_, raw) in &rows {
        match format {
            Format::Native => body.push_str(raw),
            f => {
                let Ok(e) = serde_json::from_str::<interdict_event::Event>(raw) else {
                    continue;
                };
                let v = if f == Format::Ocsf {
                    interdict_event::ocsf::to_ocsf(&e)
                } else {
                    interdict_event::ecs::to_ecs(&e)
                };
                body.push_str(&v.to_string());
            }
        }
        body.push('\n');
    }
    let cursor = rows.last().map(|r| r.0).or(after).unwrap_or(0);
    let mut resp = (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response();
    let h = resp.headers_mut();
    if let Ok(v) = cursor.to_string().parse() {
        h.insert("x-cursor", v);
    }
    if more {
        if let Ok(v) = cursor.to_string().parse() {
            h.insert("x-next-cursor", v);
        }
    }
    server::guarded(resp, permit)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainQuery {
    host: String,
    after: Option<String>,
}

async fn chain(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    q: Result<QueryParams<ChainQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = reviewer(&app, &headers, peer).await {
        return r;
    }
    let QueryParams(q) = match q {
        Ok(q) => q,
        Err(e) => return err(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let after = match q.after.as_deref() {
        None => (0, 0, 0),
        Some(c) => {
            let p: Vec<&str> = c.split('/').collect();
            match (
                p.first().and_then(|x| x.parse().ok()),
                p.get(1).and_then(|x| x.parse().ok()),
                p.get(2).and_then(|x| x.parse().ok()),
            ) {
                (Some(e), Some(s), Some(i)) if p.len() == 3 => (e, s, i),
                _ => {
                    return err(
                        StatusCode::BAD_REQUEST,
                        "`after` is EPOCH/SEQ/CURSOR as given by the previous page",
                    )
                }
            }
        }
    };
    let l = &app.config.limits;
    let max_bytes = (l.max_page_mib << 20) as usize;
    let permit = match room(&app, max_bytes as u64 * 2).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let a = app.clone();
    let max_events = l.max_page_events as usize;
    let (rows, more) =
        match blocking(move || a.store.chain_page(&q.host, after, max_events, max_bytes)).await {
            Ok(r) => r,
            Err(r) => return r,
        };
    let mut body = String::new();
    let mut last = None;
    for (epoch, seq, ing, raw) in &rows {
        let cursor = format!("{epoch}/{seq}/{ing}");
        body.push_str(
            &json!({ "epoch": epoch, "seq": seq, "cursor": cursor, "record": raw }).to_string(),
        );
        body.push('\n');
        last = Some(cursor);
    }
    let mut resp = (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response();
    if let (true, Some(c)) = (more, last) {
        if let Ok(v) = c.parse() {
            resp.headers_mut().insert("x-next-cursor", v);
        }
    }
    server::guarded(resp, permit)
}

async fn hosts(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = reviewer(&app, &headers, peer).await {
        return r;
    }
    let a = app.clone();
    let silent = app.config.silent_after_s as i64 * 1000;
    match blocking(move || a.store.hosts(silent)).await {
        Ok(h) => Json(h).into_response(),
        Err(r) => r,
    }
}

async fn chains(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = reviewer(&app, &headers, peer).await {
        return r;
    }
    let a = app.clone();
    let silent = app.config.silent_after_s as i64 * 1000;
    let r = blocking(move || -> Result<_, store::StoreError> {
        Ok(json!({
            "key": a.public_key(),
            "hosts": a.store.hosts(silent)?,
            "chains": a.store.chains(None)?,
            "cuts": a.store.cuts(None)?,
            "findings": a.store.findings()?,
        }))
    })
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn checkpoint(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = reviewer(&app, &headers, peer).await {
        return r;
    }
    let a = app.clone();
    match blocking(move || a.store.checkpoint(&a.key)).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => r,
    }
}

async fn verify(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = reviewer(&app, &headers, peer).await {
        return r;
    }
    let a = app.clone();
    let r = blocking(move || -> Result<_, store::StoreError> {
        let reports = a.store.verify(&a.public_key())?;
        let findings = a.store.findings()?;
        let hosts: Vec<serde_json::Value> = reports
            .into_iter()
            .map(|r| {
                let mine: Vec<_> = findings.iter().filter(|f| f.host_id == r.host_id).collect();
                json!({
                    "host_id": r.host_id,
                    "intact": r.intact(),
                    "records": r.records,
                    "epochs": r.epochs,
                    "problems": r.problems,
                    "notes": r.notes,
                    "findings": mine,
                })
            })
            .collect();
        a.flush_counters();
        Ok(json!({ "hosts": hosts, "counters": a.store.counters()?, "key": a.public_key() }))
    })
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// The routes agents use.
fn agent_routes() -> Router<Shared> {
    Router::new()
        .route("/v1/enroll", post(enroll))
        .route("/v1/events", post(ingest))
}

/// The routes reviewers use.
fn reviewer_routes() -> Router<Shared> {
    Router::new()
        .route("/v1/events", get(query))
        .route("/v1/chain", get(chain))
        .route("/v1/chains", get(chains))
        .route("/v1/hosts", get(hosts))
        .route("/v1/checkpoint", get(checkpoint))
        .route("/v1/verify", get(verify))
}

/// The HTTP routes over `app`. Bodies are read by the handlers themselves, after the token is
/// checked, within the configured limits.
pub fn router(app: Arc<App>) -> Router {
    agent_routes()
        .merge(reviewer_routes())
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(app)
}

/// TLS for the collector: its certificate chain and key, and optionally the CA whose client
/// certificates it requires (mutual TLS).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
    /// PEM CA certificates; when set, every client must present a certificate it signed.
    pub client_ca: Option<std::path::PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file.
    #[error("{0}: {1}")]
    File(String, String),
    /// rustls refused the configuration.
    #[error("{0}")]
    Config(String),
}

/// Build the TLS acceptor (rustls with ring) from PEM files.
pub fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let file = |p: &std::path::Path, e: &dyn std::fmt::Display| {
        TlsError::File(p.display().to_string(), e.to_string())
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file(&files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file(&files.cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file(&files.key, &e))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| file(ca, &e))? {
                roots
                    .add(c.map_err(|e| file(ca, &e))?)
                    .map_err(|e| file(ca, &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// A collector serving on a thread and runtime of its own, stopped gracefully when dropped:
/// for embedding the collector in another program, and for tests and benchmarks.
pub struct Background {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Bind `addr` (port 0: any free port) and serve `app` there, over TLS with `tls`. The
    /// socket listens when this returns.
    pub fn start(
        addr: impl std::net::ToSocketAddrs,
        app: App,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Background> {
        Background::start_on(std::net::TcpListener::bind(addr)?, app, tls)
    }

    /// Serve `app` on a listener bound (and listening) already: the address is fixed before
    /// anything is started, with no window for another program to take it.
    pub fn start_on(
        listener: std::net::TcpListener,
        app: App,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Background> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let rt = tokio::runtime::Runtime::new()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("collector".into())
            .spawn(move || {
                rt.block_on(async move {
                    let l = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return tracing::error!("collector listener: {e}"),
                    };
                    let stop = async {
                        let _ = rx.await;
                    };
                    if let Err(e) = serve(l, Arc::new(app), tls, stop).await {
                        tracing::error!("collector: {e}");
                    }
                })
            })?;
        Ok(Background {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
