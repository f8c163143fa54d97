//! `interdict-collector`: the central violation log.
//!
//! Agents enroll once with the enroll secret and get a per-host token (stored hashed); every
//! later request carries it, and the host an event is stored under comes from the token, never
//! from the payload: a batch holding another host's events is refused whole (403) and counted.
//! Each host's events are checked against its hash chain on arrival (sequence continuity and
//! `prev_hash`), and gaps and breaks are kept as findings. Reviewers hold read-only tokens; agent
//! tokens cannot read and reviewer tokens cannot write.
//!
//! HTTP API (JSON; `Authorization: Bearer TOKEN` except for enrollment):
//! - `POST /v1/enroll` `{secret, host_id, hostname}` → `{token}` (409 when the host is enrolled
//!   already: `interdict-collector reset-host` first)
//! - `POST /v1/events` `{events: [...]}` (agent) → `{stored, duplicates, acked_seq, findings}`
//! - `GET /v1/events?host=&user=&rule=&kind=&outcome=&action=&since=&until=&after=&limit=&format=`
//!   (reviewer) → NDJSON (native, `ocsf` or `ecs`), next page cursor in `X-Next-Cursor`
//! - `GET /v1/hosts` (reviewer) → the fleet, silent hosts flagged
//! - `GET /v1/verify` (reviewer) → per-host chain state and findings
//!
//! Malformed, oversized or unauthenticated requests get a 4xx and store nothing.
#![deny(missing_docs)]

pub mod sql;
pub mod store;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use interdict_event::Event;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use store::{Principal, Query, Store};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Most events in one batch.
pub const MAX_BATCH: usize = 5000;

/// The collector's state.
pub struct App {
    /// The store.
    pub store: Store,
    /// Hosts not heard from in this long are flagged silent.
    pub silent_after_ms: i64,
}

type Shared = Arc<App>;

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("{e}");
    err(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(internal)?
        .map_err(internal)
}

async fn who(app: &Shared, headers: &HeaderMap) -> Result<Principal, Response> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let Some(token) = token else {
        let a = app.clone();
        let _ = blocking(move || a.store.count("rejected_unauthenticated")).await;
        return Err(err(StatusCode::UNAUTHORIZED, "missing bearer token"));
    };
    let a = app.clone();
    match blocking(move || a.store.principal(&token)).await? {
        Some(p) => Ok(p),
        None => {
            let a = app.clone();
            let _ = blocking(move || a.store.count("rejected_bad_token")).await;
            Err(err(StatusCode::UNAUTHORIZED, "unknown token"))
        }
    }
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

async fn enroll(
    State(app): State<Shared>,
    body: Result<Json<EnrollRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return err(e.status(), e.body_text()),
    };
    let valid_id = !req.host_id.is_empty()
        && req.host_id.len() <= 128
        && req
            .host_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid_id || req.hostname.len() > 255 {
        return err(StatusCode::BAD_REQUEST, "bad host_id or hostname");
    }
    let a = app.clone();
    let secret = match blocking(move || a.store.enroll_secret()).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !constant_time_eq(secret.as_bytes(), req.secret.as_bytes()) {
        let a = app.clone();
        let _ = blocking(move || a.store.count("rejected_enroll_secret")).await;
        return err(StatusCode::UNAUTHORIZED, "wrong enroll secret");
    }
    let a = app.clone();
    match blocking(move || a.store.enroll(&req.host_id, &req.hostname)).await {
        Ok(Some(token)) => Json(json!({ "token": token })).into_response(),
        Ok(None) => {
            let a = app.clone();
            let _ = blocking(move || a.store.count("rejected_reenrollment")).await;
            err(
                StatusCode::CONFLICT,
                "this host is enrolled already; IT can allow a new enrollment with `interdict-collector reset-host HOST_ID`",
            )
        }
        Err(r) => r,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A batch of events from one agent.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The events, each with `seq` and `prev_hash`.
    pub events: Vec<Event>,
}

async fn ingest(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Result<Json<Batch>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let host = match who(&app, &headers).await {
        Ok(Principal::Host(h)) => h,
        Ok(Principal::Reviewer(_)) => {
            return err(StatusCode::FORBIDDEN, "reviewer tokens cannot write")
        }
        Err(r) => return r,
    };
    let Json(batch) = match body {
        Ok(b) => b,
        Err(e) => {
            let a = app.clone();
            let _ = blocking(move || a.store.count("rejected_malformed")).await;
            return err(e.status(), e.body_text());
        }
    };
    if batch.events.len() > MAX_BATCH {
        return err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_BATCH} events per batch"),
        );
    }
    if let Some(e) = batch.events.iter().find(|e| {
        e.seq.is_none_or(|s| s == 0 || s > i64::MAX as u64)
            || e.prev_hash.as_ref().is_none_or(|h| h.len() != 64)
            || interdict_event::parse_rfc3339_millis(&e.time).is_none()
    }) {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("event {} has no valid seq, prev_hash or time", e.id),
        );
    }
    if batch.events.iter().any(|e| e.host_id != host) {
        let a = app.clone();
        let _ = blocking(move || a.store.count("rejected_forged_host")).await;
        tracing::warn!("host {host} sent events of another host: batch refused");
        return err(
            StatusCode::FORBIDDEN,
            "events of another host: a token writes only as its own host",
        );
    }
    let a = app.clone();
    match blocking(move || a.store.ingest(&host, batch.events)).await {
        Ok(r) => Json(r).into_response(),
        Err(r) => r,
    }
}

async fn reviewer(app: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    match who(app, headers).await? {
        Principal::Reviewer(_) => Ok(()),
        Principal::Host(_) => Err(err(StatusCode::FORBIDDEN, "agent tokens cannot read")),
    }
}

async fn query(
    State(app): State<Shared>,
    headers: HeaderMap,
    q: Result<QueryParams<Query>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = reviewer(&app, &headers).await {
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
    let format = q.format.clone().unwrap_or_else(|| "native".into());
    if !matches!(format.as_str(), "native" | "ocsf" | "ecs") {
        return err(StatusCode::BAD_REQUEST, "format is native, ocsf or ecs");
    }
    let a = app.clone();
    let (events, next) = match blocking(move || a.store.query(&q)).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut body = String::new();
    for e in &events {
        let line = match format.as_str() {
            "ocsf" => interdict_event::ocsf::to_ocsf(e).to_string(),
            "ecs" => interdict_event::ecs::to_ecs(e).to_string(),
            _ => e.to_json_line(),
        };
        body.push_str(&line);
        body.push('\n');
    }
    let mut resp = (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response();
    if let Some(n) = next {
        if let Ok(v) = n.parse() {
            resp.headers_mut().insert("x-next-cursor", v);
        }
    }
    resp
}

async fn hosts(State(app): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = reviewer(&app, &headers).await {
        return r;
    }
    let a = app.clone();
    match blocking(move || a.store.hosts(a.silent_after_ms)).await {
        Ok(h) => Json(h).into_response(),
        Err(r) => r,
    }
}

async fn verify(State(app): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = reviewer(&app, &headers).await {
        return r;
    }
    let a = app.clone();
    let r = blocking(move || {
        let hosts = a.store.hosts(a.silent_after_ms)?;
        let findings = a.store.findings()?;
        let mut out = Vec::new();
        for h in hosts {
            let count = a.store.event_count(&h.host_id)?;
            let mine: Vec<_> = findings
                .iter()
                .filter(|f| f.host_id == h.host_id)
                .cloned()
                .collect();
            out.push(json!({
                "host_id": h.host_id,
                "hostname": h.hostname,
                "last_seq": h.last_seq,
                "events": count,
                "intact": mine.is_empty() && count == h.last_seq,
                "findings": mine,
            }));
        }
        Ok(json!({ "hosts": out, "counters": a.store.counters()? }))
    })
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// The HTTP routes over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/enroll", post(enroll))
        .route("/v1/events", post(ingest).get(query))
        .route("/v1/hosts", get(hosts))
        .route("/v1/verify", get(verify))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
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

/// Build the TLS acceptor (rustls with ring) from PEM files.
pub fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
            {
                roots
                    .add(c.map_err(|e| format!("{}: {e}", ca.display()))?)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// A listener that hands axum only connections whose TLS handshake succeeded. Handshakes run in
/// their own tasks (a slow client holds up nobody) with a 10 s limit; finished connections wait
/// in a queue of 64 (when it is full, handshaking tasks wait: back-pressure, nothing dropped).
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    addr: std::net::SocketAddr,
}

impl TlsListener {
    /// Accept on `tcp`, handshake with `acceptor`.
    pub fn new(tcp: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> TlsListener {
        let addr = tcp.local_addr().expect("bound listener has an address");
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, done) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let hs = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await;
                    match hs {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        TlsListener { rx, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Serve on `listener` (plain HTTP, or HTTPS with `tls`) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let keep = app.clone();
    let served = match tls {
        None => {
            axum::serve(listener, router(app))
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(acceptor) => {
            axum::serve(TlsListener::new(listener, acceptor), router(app))
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    // The store may hold a synchronous PostgreSQL client, which must not be dropped on an async
    // thread: let it go on a blocking one.
    let _ = tokio::task::spawn_blocking(move || drop(keep)).await;
    served
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
        let listener = std::net::TcpListener::bind(addr)?;
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
