//! The reviewer's console: web pages served by the collector under `/console/`, for the people
//! who read the violation log.
//!
//! Server-rendered HTML (askama templates compiled into the collector), one stylesheet and one
//! icon served by the collector itself, a chart drawn as SVG on the server: no script at all, no
//! request to anywhere else, and a Content-Security-Policy that says so. Read-only: every page is
//! a GET; the only POSTs are signing in and out, which accept same-origin forms only (the
//! `Origin` header, `Sec-Fetch-Site`, a form token, and `SameSite` cookies).
//!
//! Pages: the overview (`/console/`), violations with the API's filters and exports
//! (`/console/events`, `/console/events/{cursor}`, `/console/export`), the fleet
//! (`/console/hosts`, `/console/hosts/{host}`, `/console/hosts/{host}/verify`), findings
//! (`/console/findings`), people (`/console/people`, `/console/person?user=`). Signing in:
//! [`auth`].

pub mod auth;
pub mod chart;
pub mod data;
pub mod export;
pub mod policies;
pub mod rollup;
pub mod schema;
pub mod views;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use askama::Template;
use axum::body::Body;
use axum::extract::{Extension, Path, Query as QueryParams, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::server::{Peer, Tls};
use crate::store::{now_ms, Principal, StoreError};
use crate::App;

use data::{given, Filter};
use views::*;

type Shared = Arc<App>;

/// The Content-Security-Policy of every console response: nothing but the collector itself, no
/// script, no plugin, no framing, forms only to the collector.
pub const CSP: &str = "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; img-src 'self'; style-src 'self'";

const CSS: &str = include_str!("static/console.css");
const ICON: &str = include_str!("static/icon.svg");

/// The stylesheet's address, with its digest (so that it can be cached for good).
static CSS_URL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "/console/static/console.css?v={}",
        &interdict_chain::hex(&interdict_chain::sha256(CSS.as_bytes()))[..16]
    )
});

fn css() -> &'static str {
    CSS_URL.as_str()
}

/// Percent-encode a query value (everything but letters, digits and `-._~`).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&...` (empty when there are no pairs).
pub fn qs(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let s: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    format!("?{}", s.join("&"))
}

/// The console's routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/console", get(|| async { see_other("/console/") }))
        .route("/console/", get(overview))
        .route("/console/events", get(events))
        .route("/console/events/{cursor}", get(event))
        .route("/console/export", get(export))
        .route("/console/hosts", get(hosts))
        .route("/console/hosts/{host}", get(host))
        .route("/console/hosts/{host}/verify", get(verify))
        .route("/console/findings", get(findings))
        .route("/console/people", get(people))
        .route("/console/person", get(person))
        .route("/console/policies", get(policy_list))
        .route("/console/policies/{sha}", get(policy))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", axum::routing::post(logout))
        .route("/console/static/console.css", get(static_css))
        .route("/console/static/icon.svg", get(static_icon))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Background work while serving (every few seconds): count what arrived into the overview's
/// summaries.
pub fn chore(app: &App) {
    if let Err(e) = rollup::refresh(&app.store, Duration::from_secs(2)) {
        tracing::warn!("console summaries: {e}");
    }
}

async fn security_headers(req: Request, next: Next) -> Response {
    let tls = req.extensions().get::<Tls>().is_some_and(|t| t.0);
    let is_static = req.uri().path().starts_with("/console/static/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, "content-security-policy", CSP);
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "cross-origin-resource-policy", "same-origin");
    set(
        h,
        "permissions-policy",
        "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    );
    if !is_static {
        set(h, "cache-control", "no-store");
    }
    if tls {
        set(h, "strict-transport-security", "max-age=31536000");
    }
    resp
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

fn page(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => crate::internal(e),
    }
}

fn message(status: StatusCode, c: Option<Chrome>, title: &str, msg: impl Into<String>) -> Response {
    page(
        status,
        &MessagePage {
            c,
            title: title.into(),
            message: msg.into(),
            css: css(),
        },
    )
}

async fn static_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        CSS,
    )
        .into_response()
}

async fn static_icon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        ICON,
    )
        .into_response()
}

// ---- cookies ----

fn session_cookie_name(tls: bool) -> &'static str {
    if tls {
        "__Host-interdict_session"
    } else {
        "interdict_session"
    }
}

fn link_cookie_name(tls: bool) -> &'static str {
    if tls {
        "__Secure-interdict_link"
    } else {
        "interdict_link"
    }
}

/// The value of cookie `name` (the first one).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

fn set_cookie(resp: &mut Response, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn secure(tls: bool) -> &'static str {
    if tls {
        "; Secure"
    } else {
        ""
    }
}

/// Whether a POST comes from a page of this collector. `Sec-Fetch-Site`, when the browser sends
/// it (a header pages cannot set), must be `same-origin`; and the `Origin` must be this host
/// (either scheme, for a TLS proxy in front), or `null`, which browsers send for every POST from
/// a page whose referrer policy is `no-referrer` (the console's), only together with
/// `Sec-Fetch-Site: same-origin`.
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let site = get("sec-fetch-site");
    if site.is_some_and(|s| s != "same-origin") {
        return false;
    }
    match (get("host"), get("origin")) {
        (Some(host), Some(origin)) if origin != "null" => {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
        (_, Some("null")) => site == Some("same-origin"),
        _ => false,
    }
}

/// The `csrf` field of a posted form.
fn form_csrf(body: &[u8]) -> Option<String> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "csrf")
        .map(|(_, v)| v.to_string())
}

fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

// ---- signing in ----

#[derive(serde::Deserialize)]
struct LoginQuery {
    link: Option<String>,
    out: Option<String>,
}

async fn login_page(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
    q: Result<QueryParams<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = q.map(|q| q.0).unwrap_or(LoginQuery {
        link: None,
        out: None,
    });
    if let Some(secret) = q.link.filter(|s| !s.is_empty() && s.len() <= 128) {
        // The secret leaves the address at once: into a cookie for the sign-in page only, and
        // the address bar shows /console/login. Nothing is used up by following the link (mail
        // scanners and link previews follow links); the button's POST signs in.
        let mut r = see_other("/console/login");
        set_cookie(
            &mut r,
            format!(
                "{}={secret}; Path=/console/login; HttpOnly; SameSite=Lax; Max-Age={}{}",
                link_cookie_name(tls),
                auth::LINK_VALID_MS / 1000,
                secure(tls)
            ),
        );
        return r;
    }
    let mut p = LoginPage {
        css: css(),
        reviewer: String::new(),
        expires: String::new(),
        csrf: String::new(),
        message: String::new(),
        signed_out: q.out.is_some(),
    };
    let Some(secret) = cookie(&headers, link_cookie_name(tls)).map(str::to_string) else {
        return page(StatusCode::OK, &p);
    };
    let a = app.clone();
    let s = secret.clone();
    let state = match crate::blocking(move || auth::link_state(&a.store, &s)).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match state {
        auth::LinkState::Valid {
            reviewer,
            expires_ms,
        } => {
            p.reviewer = reviewer;
            p.expires = when(expires_ms);
            p.csrf = auth::csrf_for(&secret);
            page(StatusCode::OK, &p)
        }
        other => {
            p.message = other.refusal().into();
            let mut r = page(StatusCode::FORBIDDEN, &p);
            clear_link(&mut r, tls);
            r
        }
    }
}

fn clear_link(r: &mut Response, tls: bool) {
    set_cookie(
        r,
        format!(
            "{}=; Path=/console/login; HttpOnly; SameSite=Lax; Max-Age=0{}",
            link_cookie_name(tls),
            secure(tls)
        ),
    );
}

async fn login(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let l = &app.config.limits;
    if let Err(w) = app
        .limiter
        .take("console-login", 1, l.enroll_per_s, l.enroll_burst)
    {
        return crate::too_many(w, "signing in");
    }
    let refuse = |msg: &str| {
        let p = LoginPage {
            css: css(),
            reviewer: String::new(),
            expires: String::new(),
            csrf: String::new(),
            message: msg.into(),
            signed_out: false,
        };
        let mut r = page(StatusCode::FORBIDDEN, &p);
        clear_link(&mut r, tls);
        r
    };
    if !same_origin(&headers) {
        tracing::warn!(client = %peer.0, "console: a sign-in posted from another site was refused");
        return refuse("Signing in works only from the sign-in page itself.");
    }
    let body = match crate::read_body(&headers, body, 4096).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(secret) = cookie(&headers, link_cookie_name(tls)).map(str::to_string) else {
        return refuse("Open your sign-in link first (it is valid for 10 minutes).");
    };
    if !form_csrf(&body).is_some_and(|c| ct_eq(&c, &auth::csrf_for(&secret))) {
        return refuse("Signing in works only from the sign-in page itself.");
    }
    let a = app.clone();
    match crate::blocking(move || auth::redeem(&a.store, &secret)).await {
        Ok(Ok((session, reviewer))) => {
            tracing::info!(client = %peer.0, "console: {} signed in", interdict_chain::printable(&reviewer));
            let mut r = see_other("/console/");
            set_cookie(
                &mut r,
                format!(
                    "{}={session}; Path=/; HttpOnly; SameSite=Strict{}",
                    session_cookie_name(tls),
                    secure(tls)
                ),
            );
            clear_link(&mut r, tls);
            r
        }
        Ok(Err(state)) => {
            tracing::warn!(client = %peer.0, "console: sign-in refused: {:?}", std::mem::discriminant(&state));
            refuse(state.refusal())
        }
        Err(r) => r,
    }
}

async fn logout(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !same_origin(&headers) {
        return message(
            StatusCode::FORBIDDEN,
            None,
            "Not signed out",
            "Signing out works only from the console's own pages.",
        );
    }
    let body = match crate::read_body(&headers, body, 4096).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(secret) = cookie(&headers, session_cookie_name(tls)).map(str::to_string) {
        if !form_csrf(&body).is_some_and(|c| ct_eq(&c, &auth::csrf_for(&secret))) {
            return message(
                StatusCode::FORBIDDEN,
                None,
                "Not signed out",
                "Signing out works only from the console's own pages.",
            );
        }
        let a = app.clone();
        if let Err(r) = crate::blocking(move || auth::end(&a.store, &secret)).await {
            return r;
        }
    }
    let mut r = see_other("/console/login?out=1");
    set_cookie(
        &mut r,
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            session_cookie_name(tls),
            secure(tls)
        ),
    );
    r
}

/// The signed-in reviewer (within their rate limit), or the response to send instead: the
/// sign-in page for anyone else (a bearer token is not a session: the console takes its own
/// cookie only).
async fn signed_in(
    app: &Shared,
    headers: &HeaderMap,
    tls: bool,
) -> Result<auth::Session, Response> {
    let Some(secret) = cookie(headers, session_cookie_name(tls)).map(str::to_string) else {
        return Err(see_other("/console/login"));
    };
    let a = app.clone();
    let cfg = app.config.console.clone();
    match crate::blocking(move || auth::session(&a.store, &secret, &cfg)).await? {
        Some(s) => {
            crate::limit(app, &Principal::Reviewer(s.reviewer.clone()), 0)?;
            Ok(s)
        }
        None => Err(see_other("/console/login")),
    }
}

fn chrome(s: &auth::Session, title: impl Into<String>, nav: &'static str) -> Chrome {
    Chrome {
        title: title.into(),
        nav,
        reviewer: s.reviewer.clone(),
        csrf: s.csrf.clone(),
        css: css(),
    }
}

/// Run a page builder on a blocking thread: its page, or a 500.
async fn build<T: Template + Send + 'static>(
    f: impl FnOnce() -> Result<Result<T, Response>, StoreError> + Send + 'static,
) -> Response {
    match crate::blocking(f).await {
        Ok(Ok(t)) => page(StatusCode::OK, &t),
        Ok(Err(r)) => r,
        Err(r) => r,
    }
}

// ---- the fleet, shared by several pages ----

fn bundle_key(b: &str) -> (u64, String) {
    (b.parse::<u64>().unwrap_or(0), b.to_string())
}

fn host_lines(app: &App) -> Result<Vec<HostLine>, StoreError> {
    let now = now_ms();
    let silent = app.config.silent_after_s as i64 * 1000;
    let hosts = app.store.hosts(silent)?;
    let beats = rollup::beats(&app.store)?;
    let mut installed: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (h, path, rule, _) in rollup::installed(&app.store, None)? {
        installed.entry(h).or_default().push((rule, path));
    }
    let mut open: HashMap<String, usize> = HashMap::new();
    for f in app.store.findings()? {
        if f.resolved_ms.is_none() {
            *open.entry(f.host_id).or_default() += 1;
        }
    }
    let newest = beats
        .values()
        .filter_map(|(_, b)| b.bundle.as_deref())
        .max_by_key(|b| bundle_key(b))
        .map(str::to_string);
    Ok(hosts
        .into_iter()
        .map(|h| {
            let beat = beats
                .get(&h.host_id)
                .map(|b| b.1.clone())
                .unwrap_or_default();
            let sha = h
                .policy_sha256
                .clone()
                .or(beat.policy_sha256.clone())
                .unwrap_or_default();
            let bundle = beat.bundle.clone().unwrap_or_default();
            HostLine {
                heard: h.last_seen_ms.is_some(),
                beat: beats.contains_key(&h.host_id),
                last_seen: ago(h.last_seen_ms, now),
                last_seen_utc: h.last_seen_ms.map(when).unwrap_or_default(),
                silent: h.silent,
                version: h
                    .version
                    .clone()
                    .or(beat.version.clone())
                    .unwrap_or_default(),
                policy: match (&beat.policy_name, &beat.policy_version) {
                    (Some(n), Some(v)) => format!("{n} {v}"),
                    (Some(n), None) => n.clone(),
                    _ => String::new(),
                },
                policy_sha: short(&sha),
                policy_sha_full: sha,
                bundle_behind: !bundle.is_empty()
                    && newest
                        .as_deref()
                        .is_some_and(|n| bundle_key(n) > bundle_key(&bundle)),
                bundle,
                mode: h.mode.clone().or(beat.mode.clone()).unwrap_or_default(),
                degraded: beat
                    .degraded
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
                installed: installed.remove(&h.host_id).unwrap_or_default(),
                open_findings: open.get(&h.host_id).copied().unwrap_or(0),
                stored: views::num(h.stored_bytes) + " bytes",
                chain: format!("chain {}, record {}", h.epoch, h.last_seq),
                host_id: h.host_id,
                hostname: h.hostname,
            }
        })
        .collect())
}

// ---- pages ----

async fn overview(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
) -> Response {
    let s = match signed_in(&app, &headers, tls).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    build(move || overview_page(&app, &s).map(Ok)).await
}

/// The overview of `app`'s store, for reviewer session `s` (public for the benchmark).
pub fn overview_page(app: &App, s: &auth::Session) -> Result<OverviewPage, StoreError> {
    let progress = rollup::refresh(&app.store, Duration::from_millis(150))?;
    let today = now_ms().div_euclid(rollup::DAY_MS);
    let from = today - chart::DAYS + 1;
    let chart = chart::build(&rollup::days(&app.store, "rule", from)?, today);
    let names = data::hostnames(&app.store)?;
    let link = |k: &str, v: &str| format!("/console/events{}", qs(&[(k, v)]));
    let rules = rollup::top(&app.store, "rule", from, today, 10)?
        .into_iter()
        .map(|(k, n)| Top {
            url: link("rule", &k),
            label: if k.is_empty() { "(no rule)".into() } else { k },
            sub: String::new(),
            n: num(n),
        })
        .collect();
    let hosts = rollup::top(&app.store, "host", from, today, 10)?
        .into_iter()
        .map(|(k, n)| Top {
            url: format!("/console/hosts/{}", enc(&k)),
            label: names.get(&k).cloned().unwrap_or_else(|| k.clone()),
            sub: k,
            n: num(n),
        })
        .collect();
    let users = rollup::top(&app.store, "user", from, today, 10)?
        .into_iter()
        .map(|(k, n)| Top {
            url: if k.is_empty() {
                link("kind", "violations")
            } else {
                format!("/console/person{}", qs(&[("user", &k)]))
            },
            label: if k.is_empty() { "(no user)".into() } else { k },
            sub: String::new(),
            n: num(n),
        })
        .collect();
    let lines = host_lines(app)?;
    let findings = app
        .store
        .findings()?
        .iter()
        .filter(|f| f.resolved_ms.is_none())
        .map(|f| FindingLine::new(f, &names))
        .collect();
    let bundles = lines.iter().any(|h| !h.bundle.is_empty());
    Ok(OverviewPage {
        c: chrome(s, "Overview", "overview"),
        total: num(chart.total),
        chart,
        rules,
        hosts,
        users,
        enrolled: lines.len(),
        reporting: lines.iter().filter(|h| !h.silent).count(),
        silent: lines.iter().filter(|h| h.silent).cloned().collect(),
        behind: lines.iter().filter(|h| h.bundle_behind).cloned().collect(),
        bundles,
        degraded: lines
            .iter()
            .filter(|h| !h.degraded.is_empty())
            .cloned()
            .collect(),
        noncompliant: lines
            .iter()
            .filter(|h| !h.installed.is_empty())
            .cloned()
            .collect(),
        findings,
        counting: if progress.done() {
            String::new()
        } else {
            format!(
                "Still counting: {} of {} stored events are in these numbers so far (this page fills in as the collector counts).",
                num(progress.upto.max(0) as u64),
                num(progress.end.max(0) as u64)
            )
        },
        silent_after: if app.config.silent_after_s % 60 == 0 {
            format!("{} min", app.config.silent_after_s / 60)
        } else {
            format!("{} s", app.config.silent_after_s)
        },
    })
}

const KINDS: &[(&str, &str)] = &[
    ("violations", "Violations"),
    ("installs", "Installs"),
    ("activity", "Everything but heartbeats"),
    ("all", "Everything"),
    ("exec_denied", "exec_denied"),
    ("exec_reported", "exec_reported"),
    ("process_killed", "process_killed"),
    ("script_denied", "script_denied"),
    ("installed_detected", "installed_detected"),
    ("installed_removed", "installed_removed"),
    ("installed_quarantined", "installed_quarantined"),
    ("policy_applied", "policy_applied"),
    ("policy_rejected", "policy_rejected"),
    ("agent_started", "agent_started"),
    ("agent_stopped", "agent_stopped"),
    ("sensor_degraded", "sensor_degraded"),
    ("events_dropped", "events_dropped"),
    ("hash_learned", "hash_learned"),
    ("learned_hash_dropped", "learned_hash_dropped"),
    ("heartbeat", "heartbeat"),
];

const OUTCOMES: &[(&str, &str)] = &[
    ("", "Any"),
    ("denied", "denied"),
    ("killed", "killed"),
    ("kill_failed", "kill_failed"),
    ("reported", "reported"),
    ("would_enforce", "would_enforce"),
    ("allowed_on_deadline", "allowed_on_deadline"),
    ("denied_on_deadline", "denied_on_deadline"),
    ("protected", "protected"),
    ("quarantined", "quarantined"),
    ("quarantine_failed", "quarantine_failed"),
];

const ACTIONS: &[(&str, &str)] = &[
    ("", "Any"),
    ("block", "block"),
    ("kill", "kill"),
    ("quarantine", "quarantine"),
    ("report", "report"),
];

/// Events per page.
const PAGE: usize = 50;

fn exports(base: &Filter) -> Vec<(String, String)> {
    export::FORMATS
        .iter()
        .map(|(f, _, _)| {
            let mut q = base.clone();
            q.before = None;
            q.limit = None;
            q.format = Some(f.to_string());
            let mut s = q.query_string();
            s.push_str(if s.is_empty() { "?" } else { "&" });
            s.push_str(&format!("format={f}"));
            (f.to_uppercase(), format!("/console/export{s}"))
        })
        .collect()
}

fn with_before(base: &str, q: &str, before: i64) -> String {
    if q.is_empty() {
        format!("{base}?before={before}")
    } else {
        format!("{base}{q}&before={before}")
    }
}

async fn events(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
    q: Result<QueryParams<Filter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let s = match signed_in(&app, &headers, tls).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let f = match q {
        Ok(q) => q.0,
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                Some(chrome(&s, "Bad filter", "events")),
                "Bad filter",
                e.body_text(),
            )
        }
    };
    build(move || events_page(&app, &s, f)).await
}

fn events_page(
    app: &App,
    s: &auth::Session,
    f: Filter,
) -> Result<Result<EventsPage, Response>, StoreError> {
    let names = data::hostnames(&app.store)?;
    let size = f.limit.unwrap_or(PAGE).clamp(1, 500);
    let (rows, more, error) = match data::page(&app.store, &f, size)? {
        Ok((rows, more)) => (rows, more, String::new()),
        Err(e) => (Vec::new(), false, e),
    };
    let n = if error.is_empty() {
        data::count(&app.store, &f)?
    } else {
        0
    };
    let q = f.query_string();
    let mut hosts = vec![Opt {
        value: String::new(),
        label: "All hosts".into(),
        selected: given(&f.host).is_none(),
    }];
    hosts.extend(names.iter().map(|(id, name)| Opt {
        value: id.clone(),
        label: format!("{name} ({id})"),
        selected: given(&f.host) == Some(id.as_str()),
    }));
    let heading = match f.scope() {
        "violations" => "Violations",
        "installs" => "Installs",
        _ => "Events",
    };
    Ok(Ok(EventsPage {
        c: chrome(s, heading, "events"),
        heading: heading.into(),
        host: given(&f.host).unwrap_or_default().into(),
        user: given(&f.user).unwrap_or_default().into(),
        rule: given(&f.rule).unwrap_or_default().into(),
        since: given(&f.since).unwrap_or_default().into(),
        until: given(&f.until).unwrap_or_default().into(),
        hosts,
        rules: data::known(&app.store, "rule")?,
        kinds: opts(KINDS, f.scope()),
        outcomes: opts(OUTCOMES, given(&f.outcome).unwrap_or_default()),
        actions: opts(ACTIONS, given(&f.action).unwrap_or_default()),
        count: if n > data::COUNT_CAP {
            format!("More than {} events match.", num(data::COUNT_CAP))
        } else {
            format!(
                "{} event{} match{}.",
                num(n),
                if n == 1 { "" } else { "s" },
                if n == 1 { "es" } else { "" }
            )
        },
        older: match (more, rows.last()) {
            (true, Some(last)) => with_before("/console/events", &q, last.cursor),
            _ => String::new(),
        },
        newest: if f.before.is_some() {
            format!("/console/events{q}")
        } else {
            String::new()
        },
        exports: exports(&f),
        rows: rows.iter().map(|r| EventLine::new(r, &names)).collect(),
        error,
    }))
}

async fn event(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
    Path(cursor): Path<String>,
) -> Response {
    let s = match signed_in(&app, &headers, tls).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(cursor) = cursor.parse::<i64>() else {
        return message(
            StatusCode::NOT_FOUND,
            Some(chrome(&s, "No such event", "events")),
            "No such event",
            "Events are addressed by the number the collector stored them under.",
        );
    };
    build(move || event_page(&app, &s, cursor)).await
}

fn event_page(
    app: &App,
    s: &auth::Session,
    cursor: i64,
) -> Result<Result<EventPage, Response>, StoreError> {
    let Some(r) = data::event(&app.store, cursor)? else {
        return Ok(Err(message(
            StatusCode::NOT_FOUND,
            Some(chrome(s, "No such event", "events")),
            "No such event",
            format!("No event is stored under {cursor} (pruned by retention, or never stored)."),
        )));
    };
    let names = data::hostnames(&app.store)?;
    let e: Option<interdict_event::Event> = serde_json::from_str(&r.raw).ok();
    let hash = interdict_chain::hex(&interdict_chain::sha256(r.raw.as_bytes()));
    let hostname = names.get(&r.host_id).cloned().unwrap_or_default();
    let host_url = format!("/console/hosts/{}", enc(&r.host_id));
    let (what, rule, process, file, policy) = match &e {
        None => (
            facts(vec![(
                "Record",
                "The stored bytes are not a readable event.".into(),
                String::new(),
                false,
            )]),
            vec![],
            vec![],
            vec![],
            vec![],
        ),
        Some(e) => {
            let user = e
                .process
                .as_ref()
                .and_then(|p| p.user.clone())
                .unwrap_or_default();
            let what = facts(vec![
                (
                    "Time (UTC, host's clock)",
                    e.time.clone(),
                    String::new(),
                    false,
                ),
                (
                    "Stored by the collector",
                    when(r.received_ms),
                    String::new(),
                    false,
                ),
                (
                    "Host",
                    format!("{hostname} ({})", r.host_id),
                    host_url.clone(),
                    false,
                ),
                (
                    "Host name in the event",
                    e.hostname.clone(),
                    String::new(),
                    false,
                ),
                ("Kind", interdict_event::snake(e.kind), String::new(), false),
                (
                    "Outcome",
                    e.outcome.map(interdict_event::snake).unwrap_or_default(),
                    String::new(),
                    false,
                ),
                (
                    "User",
                    user.clone(),
                    if user.is_empty() {
                        String::new()
                    } else {
                        format!("/console/person{}", qs(&[("user", &user)]))
                    },
                    false,
                ),
                (
                    "Sensor",
                    e.sensor.clone().unwrap_or_default(),
                    String::new(),
                    false,
                ),
                (
                    "Message",
                    e.message.clone().unwrap_or_default(),
                    String::new(),
                    false,
                ),
                ("Event id", e.id.clone(), String::new(), true),
            ]);
            let rule = e
                .rule
                .as_ref()
                .map(|x| {
                    facts(vec![
                        (
                            "Rule",
                            x.id.clone(),
                            format!("/console/events{}", qs(&[("rule", &x.id)])),
                            false,
                        ),
                        ("Tool", x.name.clone(), String::new(), false),
                        ("Risk", x.risk.clone(), String::new(), false),
                        ("Action", x.action.clone(), String::new(), false),
                        ("Matched by", x.selector.clone(), String::new(), false),
                        ("The rule's pattern", x.pattern.clone(), String::new(), true),
                        ("What matched it", x.matched.clone(), String::new(), true),
                    ])
                })
                .unwrap_or_default();
            let process = e
                .process
                .as_ref()
                .map(|p| {
                    let caller = if e.process_is_caller() {
                        " (the program that tried to start it)"
                    } else {
                        ""
                    };
                    facts(vec![
                        (
                            "Program",
                            p.exe
                                .clone()
                                .map(|x| format!("{x}{caller}"))
                                .unwrap_or_default(),
                            String::new(),
                            true,
                        ),
                        (
                            "Command line",
                            if p.argv.is_empty() {
                                String::new()
                            } else {
                                serde_json::to_string(&p.argv).unwrap_or_default()
                            },
                            String::new(),
                            true,
                        ),
                        (
                            "Working directory",
                            p.cwd.clone().unwrap_or_default(),
                            String::new(),
                            true,
                        ),
                        (
                            "User",
                            p.user.clone().unwrap_or_default(),
                            String::new(),
                            false,
                        ),
                        (
                            "uid",
                            p.uid.map(|u| u.to_string()).unwrap_or_default(),
                            String::new(),
                            false,
                        ),
                        (
                            "pid",
                            if p.pid == 0 {
                                String::new()
                            } else {
                                p.pid.to_string()
                            },
                            String::new(),
                            false,
                        ),
                        (
                            "Parent pid",
                            p.ppid.map(|u| u.to_string()).unwrap_or_default(),
                            String::new(),
                            false,
                        ),
                        (
                            "Parent program",
                            p.parent_exe.clone().unwrap_or_default(),
                            String::new(),
                            true,
                        ),
                    ])
                })
                .unwrap_or_default();
            let file = e
                .file
                .as_ref()
                .map(|f| {
                    facts(vec![
                        ("Path", f.path.clone(), String::new(), true),
                        (
                            "SHA-256",
                            f.sha256.clone().unwrap_or_default(),
                            String::new(),
                            true,
                        ),
                        (
                            "Size",
                            f.size
                                .map(|s| format!("{} bytes", num(s)))
                                .unwrap_or_default(),
                            String::new(),
                            false,
                        ),
                    ])
                })
                .unwrap_or_default();
            let policy = e
                .policy
                .as_ref()
                .map(|p| {
                    facts(vec![
                        ("Policy", p.name.clone(), String::new(), false),
                        ("Version", p.version.clone(), String::new(), false),
                        (
                            "SHA-256 of the policy file",
                            p.sha256.clone(),
                            format!("/console/policies/{}", enc(&p.sha256)),
                            true,
                        ),
                        ("Mode", p.mode.clone(), String::new(), false),
                    ])
                })
                .unwrap_or_default();
            (what, rule, process, file, policy)
        }
    };
    let (checks, findings) = chain_checks(app, &r, &hash, &names)?;
    let chain = facts(vec![
        (
            "Chain",
            if r.epoch == 0 {
                "none (kept outside the chain)".into()
            } else {
                r.epoch.to_string()
            },
            String::new(),
            false,
        ),
        ("Sequence number", r.seq.to_string(), String::new(), false),
        ("SHA-256 of the record", hash.clone(), String::new(), true),
        (
            "prev_hash",
            e.as_ref()
                .and_then(|e| e.prev_hash.clone())
                .unwrap_or_default(),
            String::new(),
            true,
        ),
        (
            "Collector's cursor",
            r.cursor.to_string(),
            String::new(),
            false,
        ),
    ]);
    let raw = r.raw.clone();
    let heading = match &e {
        Some(e) => format!(
            "{} on {}",
            interdict_event::snake(e.kind),
            if hostname.is_empty() {
                &r.host_id
            } else {
                &hostname
            }
        ),
        None => "Event".into(),
    };
    Ok(Ok(EventPage {
        c: chrome(s, heading.clone(), "events"),
        heading,
        what,
        rule,
        process,
        file,
        policy,
        chain,
        verified: checks.iter().all(|c| c.ok),
        checks,
        findings,
        host_id: r.host_id.clone(),
        raw,
    }))
}

/// One record's place in its chain, checked with the chain crate's own reading of records: its
/// bytes, the link to the record before (or the signed cut, or the start), the next record's
/// link to it (or the head the collector acknowledged), and the findings about it.
fn chain_checks(
    app: &App,
    r: &data::Row,
    hash: &str,
    names: &BTreeMap<String, String>,
) -> Result<(Vec<CheckLine>, Vec<FindingLine>), StoreError> {
    use interdict_chain::{check, hex, sha256, GENESIS};
    let mut out = Vec::new();
    let mut add = |ok: bool, text: String| out.push(CheckLine { ok, text });
    let me = check(&r.raw, &r.host_id);
    match &me {
        Ok(c) if c.other_host.is_none() && c.seq == r.seq => add(
            true,
            format!(
                "The record says it is record {} of this host, where it is stored.",
                r.seq
            ),
        ),
        Ok(c) => add(
            false,
            format!(
                "The record says it is record {} of host {}, but it is stored as record {} of {}.",
                c.seq,
                c.other_host.as_deref().unwrap_or(&r.host_id),
                r.seq,
                r.host_id
            ),
        ),
        Err(e) => add(
            false,
            format!("The record is not a valid chained event ({e})."),
        ),
    }
    let findings: Vec<FindingLine> = app
        .store
        .findings_of(Some(&r.host_id))?
        .iter()
        .filter(|f| f.epoch == r.epoch && f.from_seq <= r.seq && r.seq <= f.to_seq)
        .map(|f| FindingLine::new(f, names))
        .collect();
    if r.epoch == 0 {
        add(
            false,
            "Kept outside the chain: its sequence number had been used by another event, so no hash links it.".into(),
        );
        return Ok((out, findings));
    }
    let chain = app
        .store
        .chains(Some(&r.host_id))?
        .into_iter()
        .find(|c| c.epoch == r.epoch);
    if let Ok(me) = &me {
        let s = r.seq;
        let before = if s == 1 {
            Some((GENESIS, "the start of the chain".to_string()))
        } else if chain.as_ref().is_some_and(|c| c.cut_seq == s - 1) {
            chain.as_ref().and_then(|c| {
                interdict_chain::unhex(&c.cut_hash)
                    .map(|h| (h, format!("the signed retention cut at {}", s - 1)))
            })
        } else {
            data::at(&app.store, &r.host_id, r.epoch, s - 1)?
                .map(|raw| (sha256(raw.as_bytes()), format!("record {}", s - 1)))
        };
        match before {
            Some((h, what)) if h == me.prev => add(true, format!("It links to {what}.")),
            Some((h, what)) => add(
                false,
                format!(
                    "It does not link to {what}: its prev_hash is {}, {what} hashes to {}.",
                    hex(&me.prev),
                    hex(&h)
                ),
            ),
            None => add(
                false,
                format!(
                    "Record {} is not stored, so nothing shows what came before it.",
                    s - 1
                ),
            ),
        }
        match data::at(&app.store, &r.host_id, r.epoch, s + 1)? {
            Some(next) => match check(&next, &r.host_id) {
                Ok(n) if hex(&n.prev) == hash => {
                    add(true, format!("Record {} links to it.", s + 1))
                }
                Ok(n) => add(
                    false,
                    format!(
                        "Record {} does not link to it: it names {} as its predecessor, this record hashes to {hash}.",
                        s + 1,
                        hex(&n.prev)
                    ),
                ),
                Err(e) => add(false, format!("Record {} is not readable ({e}).", s + 1)),
            },
            None => match &chain {
                Some(c) if c.head_seq == s => {
                    if c.head_hash == hash {
                        add(
                            true,
                            "It is the newest record of the chain, and hashes to what the collector acknowledged to the host.".into(),
                        )
                    } else {
                        add(
                            false,
                            format!(
                                "It is the newest record of the chain, but the collector acknowledged {} for it: changed since.",
                                c.head_hash
                            ),
                        )
                    }
                }
                _ => add(
                    false,
                    format!("Record {} is not stored (yet), so nothing vouches for this one from after it.", s + 1),
                ),
            },
        }
    }
    Ok((out, findings))
}

async fn export(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
    q: Result<QueryParams<Filter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let s = match signed_in(&app, &headers, tls).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let f = match q {
        Ok(q) => q.0,
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                Some(chrome(&s, "Bad filter", "events")),
                "Bad filter",
                e.body_text(),
            )
        }
    };
    let fmt = given(&f.format).unwrap_or("ndjson").to_string();
    let Some((_, ext, ctype)) = export::FORMATS.iter().find(|x| x.0 == fmt) else {
        return message(
            StatusCode::BAD_REQUEST,
            Some(chrome(&s, "Bad format", "events")),
            "Bad format",
            "Exports are ndjson, csv, ocsf or ecs.",
        );
    };
    if let Err(e) = f.sql() {
        return message(
            StatusCode::BAD_REQUEST,
            Some(chrome(&s, "Bad filter", "events")),
            "Bad filter",
            e,
        );
    }
    let l = &app.config.limits;
    let max_bytes = (l.max_page_mib << 20) as usize;
    let permit = match crate::room(&app, max_bytes as u64 * 2).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(2);
    let a = app.clone();
    let max_events = l.max_page_events.min(1000) as usize;
    let reviewer = s.reviewer.clone();
    let fmt2 = fmt.clone();
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        if fmt2 == "csv" && tx.blocking_send(export::csv_header().into()).is_err() {
            return;
        }
        let mut after = 0i64;
        let mut n = 0u64;
        loop {
            let rows = match data::export_page(&a.store, &f, after, max_events, max_bytes) {
                Ok(r) => r,
                Err(e) => {
                    // The body ends short; the client sees a truncated download.
                    tracing::error!("console export: {e}");
                    return;
                }
            };
            let Some(last) = rows.last() else {
                break;
            };
            after = last.cursor;
            let mut chunk = String::new();
            for r in &rows {
                if let Some(l) = export::line(&fmt2, &r.raw) {
                    chunk.push_str(&l);
                    n += 1;
                }
            }
            if tx.blocking_send(chunk.into()).is_err() {
                return;
            }
        }
        tracing::info!(
            "console: {} exported {n} event(s) as {fmt2} in {:.1} s",
            interdict_chain::printable(&reviewer),
            t0.elapsed().as_secs_f64()
        );
    });
    let stamp = interdict_event::rfc3339(std::time::SystemTime::now())
        .replace([':', '-'], "")
        .replace('T', "-");
    let resp = (
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"interdict-events-{}.{ext}\"",
                    &stamp[..15]
                ),
            ),
        ],
        Body::new(export::ChannelBody(rx)),
    )
        .into_response();
    crate::server::guarded(resp, permit)
}

async fn hosts(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
) -> Response {
    let s = match signed_in(&app, &headers, tls).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    build(move || {
        rollup::refresh(&app.store, Duration::from_millis(150))?;
        let rows = host_lines(&app)?;
        Ok(Ok(HostsPage {
            c: chrome(&s, "Hosts", "hosts"),
            bundles: rows.iter().any(|h| !h.bundle.is_empty()),
            rows,
        }))
    })
    .await
}

#[derive(serde::Deserialize)]
struct HostQuery {
    before: Option<i64>,
    heartbeats: Option<String>,
}

async fn host(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<QueryParams<HostQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let s = match signed_in(&app, &headers, tls).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let q = q.map(|q| q.0).unwrap_or(HostQuery {
        before: None,
        heartbeats: None,
    });
    build(move || {
        rollup::refresh(&app.store, Duration::from_millis(150))?;
        let Some(h) = host_lines(&app)?.into_iter().find(|h| h.host_id == id) else {
            return Ok(Err(message(
                StatusCode::NOT_FOUND,
                Some(chrome(&s, "No such host", "hosts")),
                "No such host",
                "No host is enrolled under this id (deleted, or never enrolled).",
            )));
        };
        let names = data::hostnames(&app.store)?;
        let hb = q.heartbeats.is_some();
        let (rows, more) = data::timeline(&app.store, &id, hb, q.before, PAGE)?;
        let base = format!("/console/hosts/{}", enc(&id));
        let hbq = if hb { "?heartbeats=1" } else { "" };
        Ok(Ok(HostPage {
            c: chrome(&s, h.hostname.clone(), "hosts"),
            chains: app
                .store
                .chains(Some(&id))?
                .into_iter()
                .map(|c| ChainLine {
                    epoch: c.epoch,
                    head: c.head_seq,
                    hash: c.head_hash,
                    records: num(c.records),
                    cut: c.cut_seq,
                })
                .collect(),
            installs: rollup::installed(&app.store, Some(&id))?
                .into_iter()
                .map(|(_, path, rule, t)| (rule, path, when(t)))
                .collect(),
            findings: app
                .store
                .findings_of(Some(&id))?
                .iter()
                .rev()
                .map(|f| FindingLine::new(f, &names))
                .collect(),
            older: match (more, rows.last()) {
                (true, Some(l)) => with_before(&base, hbq, l.cursor),
                _ => String::new(),
            },
            rows: rows.iter().map(|r| EventLine::new(r, &names)).collect(),
            heartbeats: hb,
            toggle: if hb {
                base.clone()
            } else {
                format!("{base}?heartbeats=1")
            },
            h,
        }))
    })
    .await
}

async fn verify(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = match signed_in(&app, &headers, tls).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    build(move || {
        let names = data::hostnames(&app.store)?;
        let t0 = Instant::now();
        let rep = app.store.verify_host(&app.public_key(), &id)?;
        let took = format!("{:.2} s", t0.elapsed().as_secs_f64());
        Ok(Ok(VerifyPage {
            c: chrome(&s, format!("Verification of {id}"), "hosts"),
            hostname: names.get(&id).cloned().unwrap_or_else(|| id.clone()),
            records: num(rep.records),
            intact: rep.intact(),
            problems: rep
                .problems
                .iter()
                .map(|p| {
                    (
                        p.kind.clone(),
                        p.epoch,
                        if p.from_seq == p.to_seq {
                            p.from_seq.to_string()
                        } else {
                            format!("{}–{}", p.from_seq, p.to_seq)
                        },
                        plain(&p.kind, p.from_seq, p.to_seq),
                        p.detail.clone(),
                    )
                })
                .collect(),
            notes: rep.notes.clone(),
            took,
            host_id: id,
        }))
    })
    .await
}

async fn findings(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
) -> Response {
    let s = match signed_in(&app, &headers, tls).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    build(move || {
        let names = data::hostnames(&app.store)?;
        let all = app.store.findings()?;
        let (open, settled): (Vec<_>, Vec<_>) = all
            .iter()
            .rev()
            .map(|f| FindingLine::new(f, &names))
            .partition(|f| f.open);
        Ok(Ok(FindingsPage {
            c: chrome(&s, "Findings", "findings"),
            open,
            settled,
        }))
    })
    .await
}

async fn people(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
) -> Response {
    let s = match signed_in(&app, &headers, tls).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    build(move || {
        rollup::refresh(&app.store, Duration::from_millis(150))?;
        let today = now_ms().div_euclid(rollup::DAY_MS);
        let rows = rollup::top(&app.store, "user", today - chart::DAYS + 1, today, 500)?
            .into_iter()
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, n)| Top {
                url: format!("/console/person{}", qs(&[("user", &k)])),
                label: k,
                sub: String::new(),
                n: num(n),
            })
            .collect();
        Ok(Ok(PeoplePage {
            c: chrome(&s, "People", "people"),
            rows,
        }))
    })
    .await
}

#[derive(serde::Deserialize)]
struct PersonQuery {
    user: Option<String>,
    before: Option<i64>,
}

async fn person(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
    q: Result<QueryParams<PersonQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let s = match signed_in(&app, &headers, tls).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let q = q.map(|q| q.0).unwrap_or(PersonQuery {
        user: None,
        before: None,
    });
    let Some(user) = given(&q.user).map(str::to_string) else {
        return see_other("/console/people");
    };
    build(move || {
        let names = data::hostnames(&app.store)?;
        let name = |h: &str| names.get(h).cloned().unwrap_or_else(|| h.to_string());
        let tally = data::person_tally(&app.store, &user)?;
        let total: u64 = tally.iter().map(|t| t.3).sum();
        let first = tally.iter().map(|t| t.4).min();
        let last = tally.iter().map(|t| t.5).max();
        let hosts: std::collections::BTreeSet<&str> = tally.iter().map(|t| t.0.as_str()).collect();
        let (spans, capped) = data::person_policies(&app.store, &user)?;
        // The texts of the policies in force, where kept (each once, in the order first seen).
        let mut texts: Vec<KeptText> = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        for sp in &spans {
            if sp.sha256.is_empty()
                || texts.iter().any(|t| t.sha == sp.sha256)
                || missing.contains(&sp.sha256)
            {
                continue;
            }
            match policies::get(&app.store, &sp.sha256)? {
                Some(p) => texts.push(KeptText {
                    anchor: format!("policy-{}", p.sha256),
                    title: format!("{} {}", p.name, p.version),
                    sha: p.sha256,
                    text: p.text,
                }),
                None => missing.push(sp.sha256.clone()),
            }
        }
        let f = Filter {
            user: Some(user.clone()),
            kind: Some("activity".into()),
            before: q.before,
            ..Default::default()
        };
        let (rows, more) = data::page(&app.store, &f, PAGE)?.unwrap_or_default();
        let base_q = qs(&[("user", &user)]);
        Ok(Ok(PersonPage {
            c: chrome(&s, format!("The record of {user}"), "people"),
            total: num(total),
            first: first.map(when).unwrap_or_else(|| "—".into()),
            last: last.map(when).unwrap_or_else(|| "—".into()),
            hosts: hosts.len(),
            tally: tally
                .iter()
                .map(|t| TallyLine {
                    hostname: name(&t.0),
                    host_id: t.0.clone(),
                    rule: t.1.clone(),
                    kind: t.2.clone(),
                    n: num(t.3),
                    first: when(t.4),
                    last: when(t.5),
                    url: format!(
                        "/console/events{}",
                        qs(&[
                            ("user", &user),
                            ("host", &t.0),
                            ("rule", &t.1),
                            ("kind", &t.2)
                        ])
                    ),
                })
                .collect(),
            spans: spans
                .iter()
                .map(|p| SpanLine {
                    hostname: name(&p.host_id),
                    from: when(p.from_ms),
                    to: when(p.to_ms),
                    policy: if p.name.is_empty() {
                        "(none named)".into()
                    } else {
                        format!("{} {}", p.name, p.version)
                    },
                    sha: p.sha256.clone(),
                    mode: p.mode.clone(),
                    events: num(p.events),
                    text_anchor: texts
                        .iter()
                        .find(|t| t.sha == p.sha256)
                        .map(|t| t.anchor.clone())
                        .unwrap_or_default(),
                })
                .collect(),
            spans_capped: capped,
            texts,
            missing,
            older: match (more, rows.last()) {
                (true, Some(l)) => with_before("/console/person", &base_q, l.cursor),
                _ => String::new(),
            },
            exports: exports(&Filter {
                user: Some(user.clone()),
                kind: Some("activity".into()),
                ..Default::default()
            }),
            rows: rows.iter().map(|r| EventLine::new(r, &names)).collect(),
            user,
        }))
    })
    .await
}

async fn policy_list(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
) -> Response {
    policy_page(app, headers, tls, String::new()).await
}

async fn policy(
    State(app): State<Shared>,
    Extension(Tls(tls)): Extension<Tls>,
    headers: HeaderMap,
    Path(sha): Path<String>,
) -> Response {
    policy_page(app, headers, tls, sha).await
}

/// A kept policy text (`sha` given), or the list of them.
async fn policy_page(app: Shared, headers: HeaderMap, tls: bool, sha: String) -> Response {
    let s = match signed_in(&app, &headers, tls).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    build(move || {
        let kept = if sha.is_empty() {
            None
        } else {
            policies::get(&app.store, &sha)?
        };
        let all = policies::list(&app.store)?
            .into_iter()
            .map(|p| {
                (
                    format!("/console/policies/{}", p.sha256),
                    format!("{} {}", p.name, p.version),
                    p.sha256,
                    when(p.added_ms),
                )
            })
            .collect();
        let title = match (&kept, sha.is_empty()) {
            (Some(p), _) => format!("Policy {} {}", p.name, p.version),
            (None, true) => "Policy texts".to_string(),
            (None, false) => "Policy text not kept".to_string(),
        };
        let missing = !sha.is_empty() && kept.is_none();
        let p = PolicyPage {
            c: chrome(&s, title.clone(), "people"),
            known: kept.is_some(),
            title,
            added: kept.as_ref().map(|p| when(p.added_ms)).unwrap_or_default(),
            text: kept.map(|p| p.text).unwrap_or_default(),
            sha,
            all,
        };
        Ok(if missing {
            Err(page(StatusCode::NOT_FOUND, &p))
        } else {
            Ok(p)
        })
    })
    .await
}

/// Why a base URL cannot make sign-in links.
#[derive(Debug, thiserror::Error)]
#[error("--base-url {0}: {1}")]
pub struct BaseUrlError(String, &'static str);

/// The collector's address for sign-in links: `http://` or `https://`, a host, no query or
/// fragment; without a trailing `/`.
pub fn link_base(url: &str) -> Result<String, BaseUrlError> {
    let u = url.trim().trim_end_matches('/');
    let bad = |why| Err(BaseUrlError(url.to_string(), why));
    let Some(rest) = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
    else {
        return bad("give the address as http://HOST:PORT or https://HOST:PORT");
    };
    if rest.is_empty() || rest.starts_with('/') {
        return bad("no host");
    }
    if u.contains(['?', '#', ' ', '"', '<', '>', '\\']) {
        return bad("no query, fragment, spaces or quotes");
    }
    Ok(u.to_string())
}
