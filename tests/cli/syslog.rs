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

/// A private `rsyslogd` (Debian's package): its own configuration, pid file, work folder and
/// output, imtcp on a free loopback port (octet-counted framing is on by default), TLS through
/// GnuTLS with the test's own CA when asked. Every message it takes is written as one JSON line:
/// its parsed header fields, the structured data (mmpstrucdata) and the JSON body (mmjsonparse,
/// with `parsesuccess`). It keeps rsyslog's default `maxMessageSize`. Stopped on drop.
pub struct Rsyslog {
    child: std::process::Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Rsyslog {
    pub fn start(tls: Option<&Pki>) -> Rsyslog {
        Rsyslog::start_on(tls, free_port())
    }

    pub fn start_on(tls: Option<&Pki>, port: u16) -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("work")).unwrap();
        let (global_tls, module_tls) = match tls {
            Some(pki) => (
                format!(
                    " defaultNetstreamDriverCAFile=\"{}\" defaultNetstreamDriverCertFile=\"{}\" defaultNetstreamDriverKeyFile=\"{}\"",
                    pki.path("ca.pem").display(),
                    pki.path("server.pem").display(),
                    pki.path("server.key").display()
                ),
                " streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"anon\"",
            ),
            None => (String::new(), ""),
        };
        let conf = format!(
            r#"global(workDirectory="{d}/work"{global_tls})
module(load="imtcp"{module_tls})
module(load="mmpstrucdata")
module(load="mmjsonparse")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="j" type="list" option.jsonf="on") {{
  property(outname="pri" name="pri" format="jsonf")
  property(outname="time" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="parsesuccess" name="$.parsesuccess" format="jsonf")
  property(outname="parsed" name="$!" format="jsonf")
}}
action(type="mmpstrucdata")
action(type="mmjsonparse" cookie="")
set $.parsesuccess = $parsesuccess;
action(type="omfile" file="{d}/messages.jsonl" template="j")
"#,
            d = d.display()
        );
        std::fs::write(d.join("rsyslog.conf"), conf).unwrap();
        let child = std::process::Command::new("timeout")
            .args(["600", "/usr/sbin/rsyslogd", "-n", "-f"])
            .arg(d.join("rsyslog.conf"))
            .arg("-i")
            .arg(d.join("rsyslogd.pid"))
            .stdout(std::fs::File::create(d.join("rsyslogd.out")).unwrap())
            .stderr(std::fs::File::create(d.join("rsyslogd.err")).unwrap())
            .spawn()
            .expect("rsyslogd must be installed (.ci/run installs rsyslog and rsyslog-gnutls)");
        let r = Rsyslog { child, dir, port };
        // Listening: a LISTEN socket on the port in /proc/net/tcp (no probe connection, which
        // would show up in its log).
        let want = format!(":{port:04X} ");
        wait_for("rsyslogd listening", 30, || {
            std::fs::read_to_string("/proc/net/tcp")
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 3 && format!("{} ", f[1]).ends_with(&want) && f[3] == "0A"
                })
        });
        r
    }

    /// Every message taken so far, with the structured data and the body parsed.
    pub fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("messages.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut v: Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("rsyslog output {l}: {e}"));
                v["parsed"] = serde_json::from_str(v["parsed"].as_str().unwrap_or("null"))
                    .unwrap_or(Value::Null);
                v
            })
            .collect()
    }

    /// What rsyslogd said on stdout and stderr.
    pub fn log(&self) -> String {
        ["rsyslogd.out", "rsyslogd.err"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        // `timeout` passes SIGTERM on to rsyslogd.
        crate::support::signal(self.child.id(), rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}

/// The native event each rsyslog message carries, checked whole: header fields parsed as the
/// event says, the structured data parsed, the body parsed as JSON.
fn check_whole(m: &Value, procid: &str) -> Value {
    assert_eq!(
        m["app"], "interdict",
        "a message that is not ours (a cut one's tail?): {m:#}"
    );
    assert_eq!(m["parsesuccess"], "OK", "the body is not whole JSON: {m:#}");
    let e = m["parsed"].clone();
    let mut body = e.clone();
    body.as_object_mut().unwrap().remove("rfc5424-sd");
    assert_eq!(m["msgid"], body["kind"], "{m:#}");
    assert_eq!(m["hostname"], body["hostname"], "{m:#}");
    assert_eq!(m["procid"], procid, "{m:#}");
    let sd = &e["rfc5424-sd"]["interdict@32473"];
    assert_eq!(
        sd["seq"],
        body["seq"].as_u64().unwrap().to_string(),
        "{m:#}"
    );
    assert_eq!(sd["id"], body["id"], "{m:#}");
    let sev = match body["outcome"].as_str() {
        Some("denied" | "denied_on_deadline" | "killed" | "quarantined") => 4,
        Some(_) => 5,
        None if ["policy_rejected", "sensor_degraded", "events_dropped"]
            .contains(&body["kind"].as_str().unwrap()) =>
        {
            5
        }
        None => 6,
    };
    assert_eq!(m["pri"], (10 * 8 + sev).to_string(), "{m:#}");
    assert!(m["msg"].as_str().unwrap().len() < 8096, "{m:#}");
    body
}

/// An agent whose proc connector reports every run of `tool`, sending to syslog with `table`.
fn exec_agent(policy_digest: &str, table: &str) -> Agent {
    Agent::start(
        &crate::support::agent::hash_policy("tool", "report", policy_digest),
        &format!("fanotify = false\n\n[syslog]\n{table}"),
    )
}

/// Run `tool` with a command line of about 16 KiB, for a second (long enough for the proc
/// connector to read it).
fn run_with_long_command_line(tool: &Path) -> String {
    let long = format!("--prompt={}", "A".repeat(16 * 1024));
    let st = std::process::Command::new(tool)
        .args(["-c", "sleep 1", "tool", &long])
        .status()
        .unwrap();
    assert!(st.success());
    long
}

#[test]
fn issue_18_rsyslog_takes_every_message_whole_over_tcp_even_a_16_kib_command_line() {
    let rs = Rsyslog::start(None);
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("tool");
    let digest = crate::support::agent::unique_copy("/bin/sh", &tool);
    let mut agent = exec_agent(&digest, &format!("address = \"127.0.0.1:{}\"", rs.port));
    let long = run_with_long_command_line(&tool);
    let reported = agent.wait_event("the long command line", |e| {
        e["kind"] == "exec_reported" && e["rule"]["id"] == "tool"
    });
    assert!(
        reported["process"]["argv"].to_string().len() > 16 * 1024,
        "the event holds the whole command line: {reported:#}"
    );
    wait_for("every event at rsyslog", 60, || {
        rs.messages().len() as u64 >= counter(&agent, "syslog_sent")
            && rs.messages().iter().any(|m| m["msgid"] == "exec_reported")
    });
    // (The test's child is `timeout`: the agent's PID is what `status` says.)
    let agent_pid = agent.status()["pid"].as_u64().unwrap().to_string();
    let events = agent.events();
    let msgs = rs.messages();
    assert_eq!(
        msgs.len() as u64,
        counter(&agent, "syslog_sent"),
        "one message per event"
    );
    for m in &msgs {
        let body = check_whole(m, &agent_pid);
        let native = events
            .iter()
            .find(|e| e["id"] == body["id"])
            .unwrap_or_else(|| panic!("no such event: {body:#}"));
        if body["kind"] == "exec_reported" {
            let sd = &m["parsed"]["rfc5424-sd"]["interdict@32473"];
            assert_eq!(sd["truncated"], "argv", "{m:#}");
            let argv = body["process"]["argv"].as_array().unwrap();
            assert_eq!(argv.last().unwrap(), "[TRUNCATED]");
            assert!(long.starts_with(argv[argv.len() - 2].as_str().unwrap()));
            let mut rest = body.clone();
            rest["process"]["argv"] = native["process"]["argv"].clone();
            assert_eq!(&rest, native, "only the command line was cut");
        } else {
            assert_eq!(&body, native, "whole and unchanged");
        }
    }
    assert!(!rs.log().contains("oversize"), "{}", rs.log());
    assert_eq!(agent.stop().code(), Some(0));
}

#[test]
fn issue_18_over_tls_rsyslog_takes_every_message_and_the_agent_closes_with_close_notify() {
    let pki = Pki::new();
    let rs = Rsyslog::start(Some(&pki));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("installs");
    std::fs::create_dir_all(&root).unwrap();
    let mut agent = syslog_agent(
        &root,
        &format!(
            "address = \"127.0.0.1:{}\"\ntls = true\nca_file = \"{}\"",
            rs.port,
            pki.path("ca.pem").display()
        ),
    );
    let agent_pid = agent.status()["pid"].as_u64().unwrap().to_string();
    banned_files(&root, "a", 5);
    wait_for("5 detections at rsyslog", 60, || {
        rs.messages()
            .iter()
            .filter(|m| m["msgid"] == "installed_detected")
            .count()
            >= 5
    });
    let sensor = agent.status()["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "syslog")
        .cloned()
        .unwrap();
    assert_eq!(sensor["state"], "running", "{sensor:#}");
    assert_eq!(agent.stop().code(), Some(0));
    let events = agent.events();
    for m in rs.messages() {
        let body = check_whole(&m, &agent_pid);
        assert!(events.contains(&body), "whole and unchanged: {m:#}");
    }
    // rsyslog saw the connection end with close_notify, not a TLS error. (It notices the close
    // at once; give it a moment to have written its log before reading it.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline && !rs.log().to_lowercase().contains("tls") {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = rs.log();
    assert!(
        !log.to_lowercase().contains("gnutls") && !log.contains("error"),
        "rsyslog logged an error at the agent's stop:\n{log}"
    );
}

#[test]
fn issue_18_with_a_wrong_ca_nothing_is_sent_and_status_and_the_log_say_why() {
    let pki = Pki::new();
    let other = Pki::new();
    let rs = Rsyslog::start(Some(&pki));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("installs");
    std::fs::create_dir_all(&root).unwrap();
    let agent = syslog_agent(
        &root,
        &format!(
            "address = \"127.0.0.1:{}\"\ntls = true\nca_file = \"{}\"",
            rs.port,
            other.path("ca.pem").display()
        ),
    );
    banned_files(&root, "a", 2);
    let failing = || {
        agent.status()["sensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "syslog")
            .filter(|s| s["state"] == "failing")
            .cloned()
    };
    wait_for("the syslog sink failing", 60, || failing().is_some());
    let s = failing().unwrap();
    assert!(
        s["detail"]
            .as_str()
            .unwrap()
            .contains("invalid peer certificate"),
        "{s:#}"
    );
    assert!(
        agent.stderr().contains("WARN") && agent.stderr().contains("invalid peer certificate"),
        "logged at the default level:\n{}",
        agent.stderr()
    );
    assert_eq!(counter(&agent, "syslog_sent"), 0);
    assert!(rs.messages().is_empty(), "{:#?}", rs.messages());
}

#[test]
fn issue_18_the_backlog_of_an_earlier_run_goes_out_without_a_procid() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("installs");
    std::fs::create_dir_all(&root).unwrap();
    let port = free_port();
    // Nothing listens yet: the first run's events wait in the spool.
    let mut agent = syslog_agent(&root, &format!("address = \"127.0.0.1:{port}\""));
    banned_files(&root, "a", 3);
    wait_for("3 detections", 60, || {
        counter(&agent, "installs_detected") >= 3
    });
    wait_for("a failed connection", 30, || {
        counter(&agent, "syslog_failures") >= 1
    });
    assert_eq!(agent.stop().code(), Some(0));
    let first_run: Vec<Value> = agent.events();
    let rs = Rsyslog::start_on(None, port);
    agent.restart();
    let pid = agent.status()["pid"].as_u64().unwrap().to_string();
    wait_for("the backlog and the new run's start", 60, || {
        let m = rs.messages();
        first_run
            .iter()
            .all(|e| m.iter().any(|m| m["parsed"]["id"] == e["id"]))
            && m.iter().any(|m| m["procid"] == pid.as_str())
    });
    for m in rs.messages() {
        let id = &m["parsed"]["id"];
        let earlier = first_run.iter().any(|e| &e["id"] == id);
        check_whole(&m, if earlier { "-" } else { pid.as_str() });
    }
}
