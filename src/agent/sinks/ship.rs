//! The shipper: delivers the spool to the collector, oldest first, in batches.
//!
//! At-least-once: a batch is acknowledged by the collector's `acked_seq` and only then marked
//! delivered in the spool (`acked`), so a crash between sending and recording resends it; the
//! collector stores each event id once. Failures (unreachable, 5xx) are retried with exponential
//! backoff (0.5 s doubling to 30 s) with jitter, and so are 408 and 429 (over the collector's
//! rate limit); a 401 re-enrolls; a batch refused as invalid (other 4xx, such as 422 for a
//! duplicate id) is sent again one event at a time, and only the events refused on their own are
//! skipped and counted (`ship_rejected`), since resending them cannot succeed. After each
//! acknowledgement, the acknowledged record's sequence number and hash go to `acked.hash` in the
//! spool, and heartbeats carry them.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::metrics::Metrics;

/// Where and how to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipConfig {
    /// Collector base URL (`http://host:port` or `https://...`).
    pub url: String,
    /// The collector's enroll secret (needed until a token is stored).
    pub enroll_secret: Option<String>,
    /// Where the per-host token is kept (root-only).
    pub token_file: PathBuf,
    /// Most events per request.
    pub batch: usize,
    /// PEM CA certificates to trust for `https://` (instead of the public web roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for collectors that require one (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// Network or server trouble: retry later.
    #[error("collector unreachable or failing: {0}")]
    Retry(String),
    /// The token is not (or no longer) valid.
    #[error("collector refused the token")]
    Unauthorized,
    /// The collector refused the batch as invalid.
    #[error("collector refused the batch: {0}")]
    Rejected(String),
}

impl ShipConfig {
    /// The shipper's settings from `[collector]`; the token file defaults to
    /// `STATE_DIR/collector.token`.
    pub fn from_config(c: &crate::agent::config::CollectorConfig, state_dir: &Path) -> ShipConfig {
        ShipConfig {
            url: c.url.clone(),
            enroll_secret: c.enroll_secret.clone(),
            token_file: c
                .token_file
                .clone()
                .unwrap_or_else(|| state_dir.join("collector.token")),
            batch: c.batch,
            ca_file: c.ca_file.clone(),
            client_cert: c.client_cert.clone(),
            client_key: c.client_key.clone(),
        }
    }
}

/// The HTTP client: rustls (ring), the configured CA or the public web roots, and the client
/// certificate when configured.
pub fn client(cfg: &ShipConfig) -> Result<ureq::Agent, String> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let certs = |p: &PathBuf| -> Result<Vec<Certificate<'static>>, String> {
        let pem = read(p)?;
        let mut out = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            if let PemItem::Certificate(c) = item.map_err(|e| format!("{}: {e}", p.display()))? {
                out.push(c);
            }
        }
        if out.is_empty() {
            return Err(format!("{}: no certificate", p.display()));
        }
        Ok(out)
    };
    let mut tls = TlsConfig::builder();
    if let Some(ca) = &cfg.ca_file {
        tls = tls.root_certs(RootCerts::new_with_certs(&certs(ca)?));
    }
    if let (Some(c), Some(k)) = (&cfg.client_cert, &cfg.client_key) {
        let key = PrivateKey::from_pem(&read(k)?).map_err(|e| format!("{}: {e}", k.display()))?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&certs(c)?, key)));
    }
    Ok(ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .tls_config(tls.build())
        .build()
        .into())
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    body: &str,
) -> Result<String, ShipError> {
    let mut req = agent.post(url).content_type("application/json");
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req
        .send(body)
        .map_err(|e| ShipError::Retry(e.to_string()))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| ShipError::Retry(e.to_string()))?;
    match status {
        200..=299 => Ok(text),
        401 => Err(ShipError::Unauthorized),
        // Over a rate limit, a timeout, busy: the same batch succeeds later.
        408 | 429 => Err(ShipError::Retry(format!("{status} {text}"))),
        400..=499 => Err(ShipError::Rejected(format!("{status} {text}"))),
        _ => Err(ShipError::Retry(format!("{status} {text}"))),
    }
}

/// Enroll this host and store its token (mode 0600).
pub fn enroll(
    http: &ureq::Agent,
    cfg: &ShipConfig,
    host_id: &str,
    hostname: &str,
) -> Result<String, ShipError> {
    let Some(secret) = &cfg.enroll_secret else {
        return Err(ShipError::Rejected(
            "no token stored and no enroll_secret configured".into(),
        ));
    };
    let body = serde_json::json!({ "secret": secret, "host_id": host_id, "hostname": hostname });
    let text = post(
        http,
        &format!("{}/v1/enroll", cfg.url.trim_end_matches('/')),
        None,
        &body.to_string(),
    )?;
    let token = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_string))
        .ok_or_else(|| ShipError::Retry("enrollment answer without a token".into()))?;
    crate::fsutil::write_atomic(&cfg.token_file, token.as_bytes(), 0o600)
        .map_err(|e| ShipError::Retry(format!("cannot store the token: {e}")))?;
    Ok(token)
}

/// One delivery round: send what the spool holds after `acked`, up to `batch` events. Returns
/// the number of events acknowledged (0 when there was nothing to send).
pub fn ship_once(
    http: &ureq::Agent,
    cfg: &ShipConfig,
    spool_dir: &Path,
    token: &str,
    metrics: &Metrics,
) -> Result<usize, ShipError> {
    let acked = crate::agent::sinks::spool::acked(spool_dir);
    let recs = crate::agent::sinks::spool::read_after(spool_dir, acked, cfg.batch)
        .map_err(|e| ShipError::Retry(format!("spool: {e}")))?;
    let Some(&(last, _)) = recs.last() else {
        return Ok(0);
    };
    let mut body = String::from("{\"events\":[");
    for (i, (_, json)) in recs.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(json);
    }
    body.push_str("]}");
    let url = format!("{}/v1/events", cfg.url.trim_end_matches('/'));
    match post(http, &url, Some(token), &body) {
        Ok(text) => {
            let acked_seq = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["acked_seq"].as_u64())
                .ok_or_else(|| ShipError::Retry("answer without acked_seq".into()))?;
            let acked = acked_seq.min(last);
            crate::agent::sinks::spool::ack(spool_dir, acked)
                .map_err(|e| ShipError::Retry(format!("spool: {e}")))?;
            if let Some((_, json)) = recs.iter().find(|(s, _)| *s == acked) {
                let line = format!("{acked} {}\n", interdict_event::sha256_hex(json.as_bytes()));
                let _ = crate::fsutil::write_atomic(
                    &spool_dir.join(ACKED_HASH),
                    line.as_bytes(),
                    0o600,
                );
            }
            metrics.c.shipped.fetch_add(recs.len() as u64, Relaxed);
            Ok(recs.len())
        }
        Err(ShipError::Rejected(why)) if recs.len() > 1 => {
            // One refused event must not cost the others: send them one at a time, skipping
            // only what is refused on its own.
            tracing::warn!(
                "the collector refused a batch of {} event(s): {why}; sending them one at a time",
                recs.len()
            );
            let one = ShipConfig {
                batch: 1,
                ..cfg.clone()
            };
            let mut n = 0;
            for _ in 0..recs.len() {
                match ship_once(http, &one, spool_dir, token, metrics) {
                    Ok(k) => n += k,
                    Err(ShipError::Rejected(_)) => n += 1,
                    Err(e) => return Err(e),
                }
            }
            Ok(n)
        }
        Err(ShipError::Rejected(why)) => {
            tracing::error!(
                "the collector refused {} event(s): {why}; skipped",
                recs.len()
            );
            metrics
                .c
                .ship_rejected
                .fetch_add(recs.len() as u64, Relaxed);
            let _ = crate::agent::sinks::spool::ack(spool_dir, last);
            Err(ShipError::Rejected(why))
        }
        Err(e) => Err(e),
    }
}

/// The file in the spool folder naming the last record the collector acknowledged and its hash
/// (`SEQ HASH`), for the heartbeat.
const ACKED_HASH: &str = "acked.hash";

/// The last record the collector acknowledged, as `{seq, hash}` (the hash computed here, from
/// the record as this host sent it), or null before the first acknowledgement.
pub fn acked_record(spool_dir: &Path) -> serde_json::Value {
    std::fs::read_to_string(spool_dir.join(ACKED_HASH))
        .ok()
        .and_then(|t| {
            let (s, h) = t.trim().split_once(' ')?;
            Some(serde_json::json!({ "seq": s.parse::<u64>().ok()?, "hash": h }))
        })
        .unwrap_or(serde_json::Value::Null)
}

/// Retry delays for the shipper and the syslog sink: 0.5 s doubling to 30 s, each cut to a
/// random 50-100 % (jitter, so that a fleet does not retry in step), and cut short when the
/// agent stops.
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MOST: Duration = Duration::from_secs(30);

    /// Starting at the shortest delay.
    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// A success: the next failure waits the shortest delay again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// A failure: wait (waking within 100 ms of `stop` saying so), then double the next delay.
    pub fn wait(&mut self, stop: &impl Fn() -> bool) {
        let d = self.next.mul_f64(0.5 + fastrand::f64() / 2.0);
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end && !stop() {
            std::thread::sleep(Duration::from_millis(100).min(d));
        }
        self.next = (self.next * 2).min(Self::MOST);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// How long the shipper keeps delivering after the agent was asked to stop (so that
/// `agent_stopped` reaches the collector before the agent exits).
pub const DRAIN: Duration = Duration::from_secs(3);

/// The shipper loop: runs until `shutdown`, then delivers what the event writer spooled until
/// it finished (`writer_done`), within [`DRAIN`]. `wake` is signalled when events were spooled.
pub fn run(
    cfg: ShipConfig,
    spool_dir: PathBuf,
    host: (String, String),
    metrics: Arc<Metrics>,
    wake: std::sync::mpsc::Receiver<()>,
    shutdown: &crate::agent::shared::Shutdown,
    writer_done: &std::sync::atomic::AtomicBool,
) {
    let stop = || shutdown.is_triggered();
    let http = match client(&cfg) {
        Ok(h) => h,
        Err(e) => {
            // Checked at start-up already; a certificate file changed since.
            tracing::error!("shipper: {e}");
            return;
        }
    };
    let mut backoff = Backoff::new();
    let mut token = std::fs::read_to_string(&cfg.token_file)
        .ok()
        .map(|t| t.trim().to_string());
    while !stop() {
        let t = match &token {
            Some(t) => t.clone(),
            None => match enroll(&http, &cfg, &host.0, &host.1) {
                Ok(t) => {
                    tracing::info!("enrolled with the collector at {}", cfg.url);
                    token = Some(t.clone());
                    t
                }
                Err(e) => {
                    tracing::warn!("enrollment failed: {e}");
                    metrics.c.ship_failures.fetch_add(1, Relaxed);
                    backoff.wait(&stop);
                    continue;
                }
            },
        };
        match ship_once(&http, &cfg, &spool_dir, &t, &metrics) {
            Ok(0) => {
                backoff.reset();
                let _ = wake.recv_timeout(Duration::from_millis(500));
            }
            Ok(_) | Err(ShipError::Rejected(_)) => backoff.reset(),
            Err(ShipError::Unauthorized) => {
                tracing::warn!("the collector refused our token: enrolling again");
                token = None;
                let _ = std::fs::remove_file(&cfg.token_file);
            }
            Err(e) => {
                tracing::debug!("{e}");
                metrics.c.ship_failures.fetch_add(1, Relaxed);
                backoff.wait(&stop);
            }
        }
    }
    // Drain: what the writer spools until it finishes, bounded.
    let Some(t) = token else { return };
    let end = std::time::Instant::now() + DRAIN;
    while std::time::Instant::now() < end {
        let done = writer_done.load(std::sync::atomic::Ordering::SeqCst);
        match ship_once(&http, &cfg, &spool_dir, &t, &metrics) {
            Ok(0) if done => return,
            Ok(0) => {
                let _ = wake.recv_timeout(Duration::from_millis(50));
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}
