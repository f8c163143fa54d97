//! The syslog sink for SIEMs: every spooled event as an RFC 5424 message over TCP, or TLS
//! (RFC 5425), framed by octet counting (`LEN SP MSG`).
//!
//! It reads the spool with its own cursor (`syslog.acked`), so a restart or a SIEM outage loses
//! nothing the spool still holds; a message is counted delivered once written to the socket (syslog
//! has no acknowledgements), so an outage in the middle of a batch resends part of it.
//!
//! The message: `<PRI>1 TIME HOSTNAME interdict PID KIND [interdict@32473 seq=".." ...] JSON`,
//! with PRI = facility * 8 + severity (4 warning for blocks, kills and quarantines, 5 notice for
//! other matches and rejected policies, 6 informational otherwise). 32473 is the private
//! enterprise number RFC 5612 reserves for documentation.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use interdict_event::{Event, EventKind, Outcome};

use crate::agent::metrics::Metrics;

pub use crate::agent::config::SyslogConfig;

fn severity(e: &Event) -> u8 {
    match (e.kind, e.outcome) {
        (
            _,
            Some(
                Outcome::Denied
                | Outcome::DeniedOnDeadline
                | Outcome::Killed
                | Outcome::Quarantined,
            ),
        ) => 4,
        (EventKind::PolicyRejected | EventKind::SensorDegraded | EventKind::EventsDropped, _) => 5,
        (_, Some(_)) => 5,
        _ => 6,
    }
}

/// SD-PARAM value escaping (RFC 5424 6.3.3): `"`, `\` and `]`.
fn sd(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field: printable US-ASCII without spaces, at most `max` long, `-` when empty.
fn field(v: &str, max: usize) -> String {
    let s: String = v
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// One event as an RFC 5424 message (without framing).
pub fn format(e: &Event, facility: u8) -> String {
    let pri = u16::from(facility) * 8 + u16::from(severity(e));
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut params = vec![format!("seq=\"{}\"", e.seq.unwrap_or(0))];
    params.push(format!("id=\"{}\"", sd(&e.id)));
    if let Some(r) = &e.rule {
        params.push(format!("rule=\"{}\"", sd(&r.id)));
        params.push(format!("risk=\"{}\"", sd(&r.risk)));
    }
    if let Some(o) = e
        .outcome
        .and_then(|o| serde_json::to_value(o).ok())
        .and_then(|v| v.as_str().map(str::to_string))
    {
        params.push(format!("outcome=\"{}\"", sd(&o)));
    }
    if let Some(u) = e.process.as_ref().and_then(|p| p.user.as_deref()) {
        params.push(format!("user=\"{}\"", sd(u)));
    }
    format!(
        "<{pri}>1 {} {} interdict {} {} [interdict@32473 {}] {}",
        e.time,
        field(&e.hostname, 255),
        std::process::id(),
        field(&kind, 32),
        params.join(" "),
        e.to_json_line()
    )
}

trait Conn: Write + Send {}
impl<T: Write + Send> Conn for T {}

fn connect(cfg: &SyslogConfig) -> Result<Box<dyn Conn>, String> {
    let tcp = TcpStream::connect(&cfg.address).map_err(|e| format!("{}: {e}", cfg.address))?;
    tcp.set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    if !cfg.tls {
        return Ok(Box::new(tcp));
    }
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(ca) => {
            for c in
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
            {
                roots
                    .add(c.map_err(|e| format!("{}: {e}", ca.display()))?)
                    .map_err(|e| e.to_string())?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = cfg
        .address
        .rsplit_once(':')
        .map_or(cfg.address.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
}

/// The sink loop: until `stop` says so, send what the spool holds past the sink's cursor.
pub fn run(
    cfg: SyslogConfig,
    spool_dir: PathBuf,
    metrics: Arc<Metrics>,
    wake: std::sync::mpsc::Receiver<()>,
    stop: impl Fn() -> bool,
) {
    let mut conn: Option<Box<dyn Conn>> = None;
    let mut backoff = super::ship::Backoff::new();
    while !stop() {
        let after = crate::agent::sinks::spool::cursor(
            &spool_dir,
            crate::agent::sinks::spool::Consumer::Syslog,
        );
        let recs = match crate::agent::sinks::spool::read_after(&spool_dir, after, 500) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("syslog: spool: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let Some(&(last, _)) = recs.last() else {
            let _ = wake.recv_timeout(Duration::from_millis(500));
            continue;
        };
        if conn.is_none() {
            match connect(&cfg) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!("syslog: {e}");
                    metrics.c.syslog_failures.fetch_add(1, Relaxed);
                    backoff.wait(&stop);
                    continue;
                }
            }
        }
        let mut frames = Vec::new();
        for (_, json) in &recs {
            match serde_json::from_str::<Event>(json) {
                Ok(e) => {
                    let msg = format(&e, cfg.facility);
                    frames.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
                }
                Err(_) => continue,
            }
        }
        let c = conn.as_mut().expect("connected");
        match c.write_all(&frames).and_then(|_| c.flush()) {
            Ok(()) => {
                backoff.reset();
                metrics.c.syslog_sent.fetch_add(recs.len() as u64, Relaxed);
                if let Err(e) = crate::agent::sinks::spool::ack_as(
                    &spool_dir,
                    crate::agent::sinks::spool::Consumer::Syslog,
                    last,
                ) {
                    tracing::warn!("syslog: cursor: {e}");
                }
            }
            Err(e) => {
                tracing::debug!("syslog: write: {e}");
                metrics.c.syslog_failures.fetch_add(1, Relaxed);
                conn = None;
                backoff.wait(&stop);
            }
        }
    }
}
