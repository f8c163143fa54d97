//! The syslog sink (issue 5) against a real receiver on loopback: RFC 5424 messages with
//! octet-counting framing over TCP and over TLS (RFC 5425), nothing lost while the receiver is
//! down.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::collector::{banned_files, counter, free_port, reporting_agent, wait_for, Pki};
use crate::support::agent::Agent;

/// Frames received so far, shared with the receiver thread.
type Frames = Arc<Mutex<Vec<String>>>;

/// Split octet-counted frames (`LEN SP MSG`) off the front of `buf`.
fn frames(buf: &mut Vec<u8>, out: &Frames) {
    loop {
        let Some(sp) = buf.iter().position(|b| *b == b' ') else {
            return;
        };
        let len: usize = std::str::from_utf8(&buf[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad frame length in {:?}", String::from_utf8_lossy(buf)));
        if buf.len() < sp + 1 + len {
            return;
        }
        let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
        buf.drain(..sp + 1 + len);
        out.lock().unwrap().push(msg);
    }
}

/// A receiver on `port`: every connection read to the end, its frames collected.
fn receiver(port: u16, tls: Option<Arc<rustls::ServerConfig>>) -> Frames {
    let out: Frames = Arc::default();
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let o = out.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let (o, tls) = (o.clone(), tls.clone());
            std::thread::spawn(move || {
                let mut r: Box<dyn Read> = match tls {
                    Some(cfg) => Box::new(rustls::StreamOwned::new(
                        rustls::ServerConnection::new(cfg).unwrap(),
                        s,
                    )),
                    None => Box::new(s),
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    frames(&mut buf, &o);
                }
            });
        }
    });
    out
}

fn syslog_agent(root: &Path, table: &str) -> Agent {
    reporting_agent(root, &format!("[syslog]\n{table}"))
}

/// The detections among `frames`, parsed: (PRI, MSGID, structured data, the event).
fn detections(frames: &Frames) -> Vec<(u32, String, String, Value)> {
    frames
        .lock()
        .unwrap()
        .iter()
        .filter_map(|m| {
            // <PRI>1 TIME HOST APP PROCID MSGID [SD] JSON
            let (pri, rest) = m.strip_prefix('<')?.split_once(">1 ")?;
            let mut parts = rest.splitn(5, ' ');
            let (_time, _host, app, _pid) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            assert_eq!(app, "interdict");
            let rest = parts.next()?;
            let (msgid, rest) = rest.split_once(' ')?;
            let (sd, json) = rest.split_once("] ")?;
            let e: Value = serde_json::from_str(json).unwrap();
            (msgid == "installed_detected")
                .then(|| (pri.parse().unwrap(), msgid.into(), format!("{sd}]"), e))
        })
        .collect()
}

#[test]
fn events_reach_a_syslog_receiver_over_tcp_even_when_it_starts_late() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("installs");
    std::fs::create_dir_all(&root).unwrap();
    let port = free_port();
    let agent = syslog_agent(
        &root,
        &format!("address = \"127.0.0.1:{port}\"\nfacility = 4"),
    );
    banned_files(&root, "a", 30);
    wait_for("30 detections", 60, || {
        counter(&agent, "installs_detected") >= 30
    });
    wait_for("failed connections", 30, || {
        counter(&agent, "syslog_failures") >= 1
    });
    assert_eq!(counter(&agent, "syslog_sent"), 0);
    // The receiver comes up: everything spooled meanwhile arrives.
    let frames = receiver(port, None);
    wait_for("30 detections at the receiver", 60, || {
        detections(&frames).len() >= 30
    });
    let d = detections(&frames);
    let mut seqs: Vec<u64> = d.iter().map(|x| x.3["seq"].as_u64().unwrap()).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 30, "each detection once");
    let (pri, _, sd, e) = &d[0];
    assert_eq!(
        *pri,
        4 * 8 + 5,
        "facility auth, severity notice for a report"
    );
    assert!(sd.starts_with("[interdict@32473 seq=\""), "{sd}");
    assert!(
        sd.contains("rule=\"tool\"") && sd.contains("outcome=\"reported\""),
        "{sd}"
    );
    assert_eq!(e["rule"]["id"], "tool");
    assert!(e["prev_hash"].as_str().unwrap().len() == 64);
}

#[test]
fn events_reach_a_syslog_receiver_over_tls() {
    let pki = Pki::new();
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(pki.path("server.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let port = free_port();
    let frames = receiver(port, Some(Arc::new(cfg)));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("installs");
    std::fs::create_dir_all(&root).unwrap();
    let agent = syslog_agent(
        &root,
        &format!(
            "address = \"127.0.0.1:{port}\"\ntls = true\nca_file = \"{}\"",
            pki.path("ca.pem").display()
        ),
    );
    banned_files(&root, "a", 5);
    wait_for("5 detections over TLS", 60, || {
        detections(&frames).len() >= 5
    });
    assert_eq!(
        detections(&frames)[0].0,
        10 * 8 + 5,
        "default facility authpriv"
    );
    assert_eq!(counter(&agent, "syslog_failures"), 0);
}
