//! The syslog sink for SIEMs: every spooled event as an RFC 5424 message over TCP, or TLS
//! (RFC 5425), framed by octet counting (`LEN SP MSG`).
//!
//! It reads the spool with its own cursor (`syslog.acked`), so a restart or a SIEM outage loses
//! nothing the spool still holds; a message is counted delivered once written to the socket (syslog
//! has no acknowledgements), so an outage in the middle of a batch resends part of it.
//!
//! The message: `<PRI>1 TIME HOSTNAME interdict PROCID KIND [interdict@32473 seq=".." ...] JSON`,
//! with PRI = facility * 8 + severity (4 warning for blocks, kills and quarantines, 5 notice for
//! other matches and rejected policies, 6 informational otherwise). 32473 is the private
//! enterprise number RFC 5612 reserves for documentation. PROCID is the agent's PID for events of
//! this run, `-` for the backlog an earlier run spooled (whose PID is not known).
//!
//! No message is longer than `max_message_bytes` (default 8,096 octets: rsyslog's default
//! `maxMessageSize`, a little under the 8,192 RFC 5425 asks receivers to take): a longer one is
//! cut by the receiver and its rest read as a separate, bogus message. The command line is cut first
//! (ending in `[TRUNCATED]`), then the free-text message; the SD parameter `truncated` names
//! what was cut (`argv`, `argv message`). As a last resort only the event's identity, kind,
//! outcome, rule and chain fields are kept (`truncated="body"`).
//!
//! The sink's health is in `interdict status` (`syslog`: running, failing with the reason, or
//! stopped), and a failure is logged at the default level once per reason. On shutdown a TLS
//! connection is closed with `close_notify`.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use interdict_event::{bound_argv_to, snake, Event, EventKind, Outcome, TRUNCATED};

use crate::agent::metrics::Metrics;

pub use crate::agent::config::SyslogConfig;

/// `[syslog] max_message_bytes` by default: rsyslog's default `maxMessageSize` (8,096 octets;
/// RFC 5425 asks receivers for 8,192, so this fits both).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8096;

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

/// One event as an RFC 5424 message (without framing), at most `max` octets long (see the module
/// documentation for how it is cut). `procid` is the sending agent's PID, `None` when unknown.
pub fn format(e: &Event, facility: u8, procid: Option<u32>, max: usize) -> String {
    let full = render(e, facility, procid, None);
    if full.len() <= max {
        return full;
    }
    let mut e = e.clone();
    let mut cut = Vec::new();
    // The command line first: the longest prefix that fits.
    let argv = e
        .process
        .as_ref()
        .map(|p| p.argv.clone())
        .unwrap_or_default();
    if !argv.is_empty() {
        cut.push("argv");
        let fits = |budget: usize, e: &mut Event| {
            e.process.as_mut().expect("has argv").argv = bound_argv_to(argv.clone(), budget).0;
            render(e, facility, procid, Some(&cut.join(" "))).len() <= max
        };
        let total: usize = argv.iter().map(String::len).sum();
        if let Some(budget) = largest_fitting(total, |b| fits(b, &mut e)) {
            fits(budget, &mut e);
            return render(&e, facility, procid, Some(&cut.join(" ")));
        }
        fits(0, &mut e);
    }
    // Then the free text.
    if let Some(text) = e.message.clone() {
        cut.push("message");
        let with = |budget: usize, e: &mut Event| {
            let mut end = budget.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            e.message = Some(format!("{}{TRUNCATED}", &text[..end]));
            render(e, facility, procid, Some(&cut.join(" "))).len() <= max
        };
        if let Some(budget) = largest_fitting(text.len(), |b| with(b, &mut e)) {
            with(budget, &mut e);
            return render(&e, facility, procid, Some(&cut.join(" ")));
        }
    }
    // Last resort: who, what and the chain.
    let mut bare = Event {
        process: None,
        file: None,
        policy: None,
        message: None,
        sensor: None,
        ..e.clone()
    };
    if let Some(r) = bare.rule.as_mut() {
        r.pattern.clear();
        r.matched.clear();
    }
    render(&bare, facility, procid, Some("body"))
}

/// The largest `b` in `0..=total` for which `fits(b)` holds (it holds for every smaller one),
/// or `None` when not even 0 fits.
fn largest_fitting(total: usize, mut fits: impl FnMut(usize) -> bool) -> Option<usize> {
    if !fits(0) {
        return None;
    }
    let (mut lo, mut hi) = (0, total);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

fn render(e: &Event, facility: u8, procid: Option<u32>, truncated: Option<&str>) -> String {
    let pri = u16::from(facility) * 8 + u16::from(severity(e));
    let kind = snake(e.kind);
    let mut params = vec![format!("seq=\"{}\"", e.seq.unwrap_or(0))];
    params.push(format!("id=\"{}\"", sd(&e.id)));
    if let Some(r) = &e.rule {
        params.push(format!("rule=\"{}\"", sd(&r.id)));
        params.push(format!("risk=\"{}\"", sd(&r.risk)));
    }
    if let Some(o) = e.outcome {
        params.push(format!("outcome=\"{}\"", sd(&snake(o))));
    }
    if let Some(u) = e.process.as_ref().and_then(|p| p.user.as_deref()) {
        params.push(format!("user=\"{}\"", sd(u)));
    }
    if let Some(t) = truncated {
        params.push(format!("truncated=\"{}\"", sd(t)));
    }
    format!(
        "<{pri}>1 {} {} interdict {} {} [interdict@32473 {}] {}",
        e.time,
        field(&e.hostname, 255),
        procid.map_or("-".to_string(), |p| p.to_string()),
        field(&kind, 32),
        params.join(" "),
        e.to_json_line()
    )
}

/// A connection to the receiver.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(bytes).and_then(|_| s.flush()),
            Conn::Tls(s) => s.write_all(bytes).and_then(|_| s.flush()),
        }
    }

    /// Close cleanly: TLS with a `close_notify` alert (RFC 5425 4.4), then the TCP connection.
    fn close(self) {
        match self {
            Conn::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            Conn::Tls(mut s) => {
                s.conn.send_close_notify();
                while s.conn.wants_write() {
                    if s.conn.write_tls(&mut s.sock).is_err() {
                        break;
                    }
                }
                let _ = s.sock.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

fn connect(cfg: &SyslogConfig) -> Result<Conn, String> {
    let tcp = TcpStream::connect(&cfg.address).map_err(|e| format!("{}: {e}", cfg.address))?;
    for t in [
        tcp.set_write_timeout(Some(Duration::from_secs(30))),
        tcp.set_read_timeout(Some(Duration::from_secs(30))),
    ] {
        t.map_err(|e| e.to_string())?;
    }
    if !cfg.tls {
        return Ok(Conn::Tcp(tcp));
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
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // Handshake now, so that a certificate the CA does not vouch for is a connection failure
    // with its reason, not a failed write later.
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| format!("TLS with {}: {e}", cfg.address))?;
    }
    Ok(Conn::Tls(Box::new(s)))
}

/// The sink's state as `interdict status` shows it, and the log lines that go with a change.
struct Health<F: Fn(&str, String)> {
    set: F,
    failing: Option<String>,
    address: String,
}

impl<F: Fn(&str, String)> Health<F> {
    fn ok(&mut self) {
        if self.failing.take().is_some() {
            tracing::info!("syslog: sending to {} again", self.address);
        }
        (self.set)("running", format!("connected to {}", self.address));
    }

    fn failed(&mut self, why: String) {
        if self.failing.as_deref() != Some(why.as_str()) {
            tracing::warn!(
                "syslog: cannot send to {}: {why}; events wait in the spool and are sent once it works",
                self.address
            );
            (self.set)("failing", why.clone());
            self.failing = Some(why);
        } else {
            tracing::debug!("syslog: {why}");
        }
    }
}

/// The sink loop: until `stop` says so, send what the spool holds past the sink's cursor.
/// `health(state, detail)` is told of every change of the sink's state.
pub fn run(
    cfg: SyslogConfig,
    spool_dir: PathBuf,
    metrics: Arc<Metrics>,
    wake: std::sync::mpsc::Receiver<()>,
    first_seq_of_run: u64,
    stop: impl Fn() -> bool,
    health: impl Fn(&str, String),
) {
    let mut conn: Option<Conn> = None;
    let mut backoff = super::ship::Backoff::new();
    let mut health = Health {
        set: health,
        failing: None,
        address: cfg.address.clone(),
    };
    let pid = std::process::id();
    while !stop() {
        let after = crate::agent::sinks::spool::cursor(
            &spool_dir,
            crate::agent::sinks::spool::Consumer::Syslog,
        );
        let recs = match crate::agent::sinks::spool::read_after(&spool_dir, after, 500) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("syslog: spool: {e}");
                backoff.wait(&stop);
                continue;
            }
        };
        let Some(&(last, _)) = recs.last() else {
            let _ = wake.recv_timeout(Duration::from_millis(500));
            continue;
        };
        if conn.is_none() {
            match connect(&cfg) {
                Ok(c) => {
                    conn = Some(c);
                    health.ok();
                }
                Err(e) => {
                    health.failed(e);
                    metrics.c.syslog_failures.fetch_add(1, Relaxed);
                    backoff.wait(&stop);
                    continue;
                }
            }
        }
        let mut frames = Vec::new();
        for (seq, json) in &recs {
            match serde_json::from_str::<Event>(json) {
                Ok(e) => {
                    let procid = (*seq >= first_seq_of_run).then_some(pid);
                    let msg = format(&e, cfg.facility, procid, cfg.max_message_bytes);
                    frames.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
                }
                Err(_) => continue,
            }
        }
        let c = conn.as_mut().expect("connected");
        match c.send(&frames) {
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
                health.failed(format!("write to {}: {e}", cfg.address));
                metrics.c.syslog_failures.fetch_add(1, Relaxed);
                conn = None;
                backoff.wait(&stop);
            }
        }
    }
    if let Some(c) = conn {
        c.close();
    }
    (health.set)("stopped", "shut down".into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use interdict_event::{Origin, ProcessRef, TRUNCATED};

    fn event(argv_bytes: usize, message: usize) -> Event {
        let mut e = Origin {
            host_id: "h".into(),
            hostname: "host".into(),
        }
        .event(EventKind::ExecReported);
        e.outcome = Some(Outcome::Reported);
        e.seq = Some(7);
        e.process = Some(ProcessRef {
            pid: 1,
            argv: vec!["tool".into(), "é\"]".repeat(argv_bytes / 4)],
            user: Some("ana".into()),
            ..ProcessRef::default()
        });
        e.message = (message > 0).then(|| "m".repeat(message));
        e
    }

    fn body(msg: &str) -> Event {
        serde_json::from_str(
            msg.split_once("] {")
                .map(|(_, j)| format!("{{{j}"))
                .unwrap()
                .as_str(),
        )
        .unwrap()
    }

    #[test]
    fn a_message_under_the_cap_is_whole_and_names_the_sender_only_for_this_run() {
        let e = event(100, 0);
        let m = format(&e, 10, Some(4242), 8192);
        assert!(m.starts_with("<85>1 "), "{m}");
        assert!(
            m.contains(" interdict 4242 exec_reported [interdict@32473 seq=\"7\""),
            "{m}"
        );
        assert!(!m.contains("truncated="), "{m}");
        assert_eq!(body(&m), e);
        let m = format(&e, 10, None, 8192);
        assert!(m.contains(" interdict - exec_reported "), "{m}");
    }

    #[test]
    fn issue_18_a_long_command_line_is_cut_to_the_cap_and_marked() {
        for max in [2048, 4096, 8192] {
            let e = event(16 * 1024, 0);
            let m = format(&e, 10, Some(1), max);
            assert!(m.len() <= max, "{} > {max}", m.len());
            assert!(m.len() > max - 64, "cut no more than needed: {}", m.len());
            assert!(m.contains("truncated=\"argv\""), "{m}");
            let back = body(&m);
            let argv = &back.process.as_ref().unwrap().argv;
            assert_eq!(argv.last().unwrap(), TRUNCATED);
            assert_eq!(argv[0], "tool");
        }
    }

    #[test]
    fn then_the_message_and_as_a_last_resort_the_body() {
        let m = format(&event(16 * 1024, 20_000), 10, Some(1), 8192);
        assert!(m.len() <= 8192);
        assert!(m.contains("truncated=\"argv message\""), "{m}");
        assert!(body(&m).message.unwrap().ends_with(TRUNCATED));
        let mut e = event(0, 0);
        e.file = Some(interdict_event::FileRef {
            path: "/p".repeat(3000),
            ..Default::default()
        });
        let m = format(&e, 10, Some(1), 2048);
        assert!(m.len() <= 2048, "{}", m.len());
        assert!(m.contains("truncated=\"body\""), "{m}");
        assert_eq!(body(&m).id, e.id);
    }
}
