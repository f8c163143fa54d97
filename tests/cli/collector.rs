//! The agent's spool and shipper against the real `interdict-collector` on loopback (issue 5):
//! nothing lost or duplicated while the collector is down, across a SIGKILL of the agent, and a
//! record deleted from the spool shows up as a gap.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use interdict_collector::Store;

use crate::support::agent::{rule, Agent, POLICY_HEAD};
use crate::support::*;

/// The collector (its library, served over real HTTP) on a loopback port reserved beforehand,
/// with its own SQLite database; stopped on drop.
struct Collector {
    _running: interdict_collector::Background,
    /// Its public key (hex).
    key: String,
}

impl Collector {
    fn start(db: &Path, port: Reserved) -> Collector {
        Collector::start_with(db, port, None)
    }

    fn start_with(
        db: &Path,
        port: Reserved,
        tls: Option<interdict_collector::TlsFiles>,
    ) -> Collector {
        let key = interdict_collector::keys::generate();
        let public = interdict_collector::keys::public_hex(&key);
        let app = interdict_collector::App::new(
            Store::open(db).unwrap(),
            interdict_collector::Config {
                silent_after_s: 60,
                ..Default::default()
            },
            key,
        );
        let tls = tls.map(|f| interdict_collector::tls_acceptor(&f).unwrap());
        Collector {
            _running: interdict_collector::Background::start_on(port.listen(), app, tls).unwrap(),
            key: public,
        }
    }
}

/// A loopback port held for a collector that starts later: bound but not listening, so that
/// connections are refused (as by a collector that is down) and no other program can take the
/// port in between; [`Reserved::listen`] hands it over, listening.
pub struct Reserved {
    fd: std::os::fd::OwnedFd,
    /// The port.
    pub port: u16,
}

impl Reserved {
    pub fn new() -> Reserved {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: socket(2) returns a new descriptor (checked), owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a valid descriptor nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_in is a valid value; the fields are set below.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `addr` and `len` are valid for the calls and describe a sockaddr_in.
        unsafe {
            assert_eq!(
                libc::bind(
                    fd.as_raw_fd(),
                    &addr as *const _ as *const libc::sockaddr,
                    len
                ),
                0,
                "bind: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                libc::getsockname(
                    fd.as_raw_fd(),
                    &mut addr as *mut _ as *mut libc::sockaddr,
                    &mut len
                ),
                0
            );
        }
        Reserved {
            fd,
            port: u16::from_be(addr.sin_port),
        }
    }

    /// Start listening on it.
    pub fn listen(self) -> std::net::TcpListener {
        use std::os::fd::AsRawFd;
        // SAFETY: listen(2) on a bound socket we own.
        assert_eq!(unsafe { libc::listen(self.fd.as_raw_fd(), 1024) }, 0);
        std::net::TcpListener::from(self.fd)
    }
}

/// A port that was free a moment ago (another program may take it before it is used: prefer
/// [`Reserved`]).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An agent that only watches `root` for files named `banned-tool` (reporting them), with more
/// configuration tables after its own (`[collector]`, `[syslog]`).
pub fn reporting_agent(root: &Path, tables: &str) -> Agent {
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule("tool", "report", "names = [\"banned-tool\"]")
    );
    Agent::start(
        &policy,
        &format!(
            "fanotify = false\nproc_connector = false\n\n[install]\nroots = [\"{}\"]\ndebounce_ms = 100\n\n{tables}",
            root.display()
        ),
    )
}

/// [`reporting_agent`] shipping to the collector on `port`.
fn shipping_agent(root: &Path, port: u16, secret: &str) -> Agent {
    reporting_agent(
        root,
        &format!(
            "[collector]\nurl = \"http://127.0.0.1:{port}\"\nenroll_secret = \"{secret}\"\nheartbeat_s = 1"
        ),
    )
}

/// `n` banned files, one per folder, under `root/batch`.
pub fn banned_files(root: &Path, batch: &str, n: usize) {
    for i in 0..n {
        let d = root.join(format!("{batch}/{i}"));
        std::fs::create_dir_all(&d).unwrap();
        write(&d.join("banned-tool"), b"x", 0o755);
    }
}

pub fn counter(agent: &Agent, name: &str) -> u64 {
    agent.status()["counters"][name].as_u64().unwrap()
}

pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn secret(db: &Path) -> String {
    Store::open(db).unwrap().rotate_enroll_secret().unwrap()
}

/// What every test here starts from: a folder, a collector database (with its enroll secret), a
/// port reserved for the collector and an empty install root for the agent.
struct Site {
    _dir: tempfile::TempDir,
    db: PathBuf,
    secret: String,
    reserved: Option<Reserved>,
    port: u16,
    root: PathBuf,
}

impl Site {
    /// (database, enroll secret, collector port, install root).
    fn parts(&self) -> (PathBuf, String, u16, PathBuf) {
        (
            self.db.clone(),
            self.secret.clone(),
            self.port,
            self.root.clone(),
        )
    }

    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("collector.db");
        let root = dir.path().join("installs");
        std::fs::create_dir_all(&root).unwrap();
        let reserved = Reserved::new();
        Site {
            secret: secret(&db),
            port: reserved.port,
            reserved: Some(reserved),
            db,
            root,
            _dir: dir,
        }
    }

    /// The collector, on the reserved port.
    fn collector(&mut self) -> Collector {
        Collector::start(
            &self.db,
            self.reserved.take().expect("one collector per site"),
        )
    }
}

/// The events matching `q` (up to 10,000).
fn matching(store: &Store, q: interdict_collector::Query) -> Vec<interdict_event::Event> {
    store
        .query(&q, 10_000, 1 << 30)
        .unwrap()
        .0
        .iter()
        .map(|(_, raw)| serde_json::from_str(raw).unwrap())
        .collect()
}

/// The events of `kind` the collector stored for `host` (up to 10,000).
fn stored(store: &Store, host: &str, kind: &str) -> Vec<interdict_event::Event> {
    matching(
        store,
        interdict_collector::Query {
            host: Some(host.to_string()),
            kind: Some(kind.to_string()),
            ..Default::default()
        },
    )
}

fn host_id(agent: &Agent) -> String {
    agent.events()[0]["host_id"].as_str().unwrap().to_string()
}

fn spool_dir(agent: &Agent) -> PathBuf {
    agent.dir.path().join("state/spool")
}

#[test]
fn ten_thousand_events_made_while_the_collector_is_down_all_arrive_once() {
    let mut site = Site::new();
    let (db, secret, port, root) = site.parts();
    let agent = shipping_agent(&root, port, &secret);
    banned_files(&root, "a", 10_000);
    wait_for("10,000 detections spooled", 240, || {
        counter(&agent, "installs_detected") >= 10_000
    });
    assert!(
        counter(&agent, "ship_failures") > 0,
        "the collector was down"
    );
    assert_eq!(counter(&agent, "shipped"), 0);
    let _c = site.collector();
    wait_for("everything spooled acknowledged", 120, || {
        let s = agent.status();
        s["counters"]["shipped"].as_u64() >= s["counters"]["spooled"].as_u64()
            && crate::collector::acked(&spool_dir(&agent)) >= 10_000
    });
    let store = Store::open(&db).unwrap();
    let host = host_id(&agent);
    let events = stored(&store, &host, "installed_detected");
    assert_eq!(events.len(), 10_000);
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10_000, "no event stored twice");
    assert!(
        store.findings().unwrap().is_empty(),
        "{:?}",
        store.findings()
    );
    assert_eq!(counter(&agent, "spool_dropped"), 0);
    // The fleet view knows the host from its heartbeats; a host quiet longer than the threshold
    // is flagged.
    let hosts = store.hosts(60_000).unwrap();
    let me = hosts.iter().find(|h| h.host_id == host).unwrap();
    assert_eq!(me.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(me.mode.as_deref(), Some("enforce"));
    assert_eq!(
        me.policy_sha256.as_deref(),
        agent.status()["policy"]["sha256"].as_str()
    );
    assert!(!me.silent);
    std::thread::sleep(Duration::from_millis(20));
    assert!(store.hosts(10).unwrap().iter().all(|h| h.silent));
}

fn acked(spool: &Path) -> u64 {
    std::fs::read_to_string(spool.join("acked"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_agent_killed_mid_batch_loses_nothing_and_the_chain_stays_intact() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("collector.db");
    let secret = secret(&db);
    let reserved = Reserved::new();
    let port = reserved.port;
    let _c = Collector::start(&db, reserved);
    let root = dir.path().join("installs");
    std::fs::create_dir_all(&root).unwrap();
    let mut agent = shipping_agent(&root, port, &secret);
    banned_files(&root, "a", 3000);
    wait_for("some shipped", 120, || counter(&agent, "shipped") > 0);
    // SIGKILL the agent itself (the child of our `timeout`) in the middle of detecting and
    // shipping; `timeout` then exits too.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", agent.child.id())).unwrap();
    let pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    signal(pid as u32, rustix::process::Signal::KILL);
    let _ = agent.child.wait();
    agent.restart();
    banned_files(&root, "b", 10);
    let host = host_id(&agent);
    let store = Store::open(&db).unwrap();
    wait_for("the restarted agent's events delivered", 180, || {
        let s = agent.status();
        s["counters"]["installs_detected"].as_u64() > Some(0)
            && acked(&spool_dir(&agent)) + 1 >= next_seq(&spool_dir(&agent))
    });
    let last = store.acked(&host).unwrap();
    assert_eq!(
        store.event_count(&host).unwrap(),
        last,
        "every sequence number 1..{last} stored once"
    );
    assert!(
        store.findings().unwrap().is_empty(),
        "{:?}",
        store.findings()
    );
    // Every detection of the 3,010 files reached the collector, before or after the kill.
    let events = stored(&store, &host, "installed_detected");
    let mut paths: Vec<String> = events
        .iter()
        .filter_map(|e| e.file.as_ref().map(|f| f.path.clone()))
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 3010);
}

/// The next sequence number the spool will hand out (its last record + 1).
fn next_seq(spool: &Path) -> u64 {
    interdict::agent::sinks::spool::read_after(spool, 0, usize::MAX)
        .unwrap()
        .last()
        .map_or(1, |(s, _)| s + 1)
        .max(acked(spool) + 1)
}

#[test]
fn a_record_deleted_from_the_spool_shows_up_as_a_gap() {
    let mut site = Site::new();
    let (db, secret, port, root) = site.parts();
    let mut agent = shipping_agent(&root, port, &secret);
    banned_files(&root, "a", 20);
    wait_for("20 detections", 60, || {
        counter(&agent, "installs_detected") >= 20
    });
    agent.stop();
    // Someone with root on the laptop removes one violation from the spool.
    let spool = spool_dir(&agent);
    let (_, seg) = interdict::agent::sinks::spool::segments(&spool)
        .unwrap()
        .pop()
        .unwrap();
    let text = std::fs::read_to_string(&seg).unwrap();
    let victim = text
        .lines()
        .position(|l| l.contains("installed_detected"))
        .unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&seg, kept.join("\n") + "\n").unwrap();
    let _c = site.collector();
    agent.restart();
    let host = host_id(&agent);
    let store = Store::open(&db).unwrap();
    wait_for("delivery", 60, || {
        store
            .acked(&host)
            .map(|a| a as usize > kept.len())
            .unwrap_or(false)
    });
    let f = store.findings().unwrap();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].kind, "gap");
    assert_eq!(f[0].from_seq, victim as u64 + 1);
    assert_eq!(f[0].to_seq, victim as u64 + 1);
    // `interdict logs verify` says so too, and fails.
    let reviewer = store.add_reviewer("sec").unwrap();
    let r = run(interdict()
        .args(["logs", "verify", "--collector"])
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["--token", &reviewer]));
    r.expect_code(1);
    r.expect_stdout("gap");
    // `interdict logs query` pages through everything that arrived, in OCSF form here.
    let r = run(interdict()
        .args(["logs", "query", "--collector"])
        .arg(format!("http://127.0.0.1:{port}"))
        .args([
            "--host",
            &host,
            "--kind",
            "installed_detected",
            "--format",
            "ocsf",
        ])
        .env("INTERDICT_REVIEWER_TOKEN", &reviewer));
    r.expect_code(0);
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Before the restart: 20 detections, one deleted from the spool (the restarted agent's
    // start-up rescan reports all 20 files again, after them).
    let before = kept.len() as u64 + 1;
    let early = lines
        .iter()
        .filter(|v| v["metadata"]["sequence"].as_u64().unwrap() <= before)
        .count();
    assert_eq!(early, 19, "{}", r.stdout);
    assert!(lines.iter().all(|v| v["class_uid"] == 1001));
    // `interdict logs tail` prints what is there, then follows.
    let out = std::process::Command::new("timeout")
        .args([
            "3",
            env!("CARGO_BIN_EXE_interdict"),
            "logs",
            "tail",
            "--every-s",
            "1",
        ])
        .args(["--collector", &format!("http://127.0.0.1:{port}")])
        .args(["--host", &host, "--kind", "installed_detected"])
        .env("INTERDICT_REVIEWER_TOKEN", &reviewer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "still following when stopped");
    let tailed = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(
        tailed,
        lines.len(),
        "every event once, none repeated by the polls"
    );
    // A wrong token is refused with a clear error.
    let r = run(interdict()
        .args(["logs", "verify", "--collector"])
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["--token", "nope"]));
    r.expect_code(2);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
}

/// A test PKI: a CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "interdict test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for (name, san, usage) in [
            ("server", "127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth),
            ("client", "agent.test", ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec![san.to_string()]).unwrap();
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn over_mutual_tls_only_an_agent_with_a_client_certificate_delivers() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("collector.db");
    let secret = secret(&db);
    let reserved = Reserved::new();
    let port = reserved.port;
    let _c = Collector::start_with(
        &db,
        reserved,
        Some(interdict_collector::TlsFiles {
            cert: pki.path("server.pem"),
            key: pki.path("server.key"),
            client_ca: Some(pki.path("ca.pem")),
        }),
    );
    let agent_with = |root: &Path, client: bool| {
        let client = if client {
            format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"\n",
                pki.path("client.pem").display(),
                pki.path("client.key").display()
            )
        } else {
            String::new()
        };
        reporting_agent(
            root,
            &format!(
                "[collector]\nurl = \"https://127.0.0.1:{port}\"\nenroll_secret = \"{secret}\"\nca_file = \"{}\"\n{client}",
                pki.path("ca.pem").display()
            ),
        )
    };
    // Without a client certificate: the handshake fails, nothing is delivered, failures counted.
    let root1 = dir.path().join("r1");
    std::fs::create_dir_all(&root1).unwrap();
    let without = agent_with(&root1, false);
    wait_for("failed deliveries", 30, || {
        counter(&without, "ship_failures") >= 2
    });
    assert_eq!(counter(&without, "shipped"), 0);
    let store = Store::open(&db).unwrap();
    assert!(store.hosts(60_000).unwrap().is_empty(), "nobody enrolled");
    drop(without);
    // With it: enrolled, and the events arrive.
    let root2 = dir.path().join("r2");
    std::fs::create_dir_all(&root2).unwrap();
    let with = agent_with(&root2, true);
    banned_files(&root2, "a", 5);
    wait_for("5 detections delivered", 60, || {
        let host = with
            .events()
            .first()
            .and_then(|e| e["host_id"].as_str().map(str::to_string));
        host.is_some_and(|h| stored(&store, &h, "installed_detected").len() == 5)
    });
    assert!(store.findings().unwrap().is_empty());
}

#[test]
fn a_full_spool_refuses_counts_every_drop_and_tells_the_collector_how_many() {
    let mut site = Site::new();
    let (db, secret, port, root) = site.parts();
    // A 1 MiB spool and a collector that is down: about 1,500 events fit.
    let agent = reporting_agent(
        &root,
        &format!(
            "[collector]\nurl = \"http://127.0.0.1:{port}\"\nenroll_secret = \"{secret}\"\nspool_cap_mib = 1\nheartbeat_s = 1"
        ),
    );
    banned_files(&root, "a", 3000);
    wait_for("3,000 detections written", 120, || {
        counter(&agent, "installs_detected") >= 3000 && counter(&agent, "events_written") >= 3000
    });
    let dropped = counter(&agent, "spool_dropped");
    assert!(dropped > 0, "the spool filled up");
    let _c = site.collector();
    let store = Store::open(&db).unwrap();
    let host = host_id(&agent);
    let notice = |store: &Store| stored(store, &host, "events_dropped");
    // Each notice says how many were dropped since the one before: together, every drop.
    let said = |store: &Store| -> u64 {
        notice(store)
            .iter()
            .map(|e| {
                let m = e.message.as_deref().unwrap();
                assert!(m.contains("event(s) dropped: the spool was full"), "{m}");
                m.split(' ').next().unwrap().parse::<u64>().unwrap()
            })
            .sum()
    };
    wait_for("notices for every drop", 120, || {
        said(&store) == counter(&agent, "spool_dropped")
    });
    let said = said(&store);
    assert!(said >= dropped);
    let stored = stored(&store, &host, "installed_detected");
    assert!(stored.len() < 3000);
    assert!(
        stored.len() as u64 + said >= 3000,
        "every detection stored or counted as dropped"
    );
    assert!(
        store.findings().unwrap().is_empty(),
        "drops happen before numbering: no gap"
    );
    // The test's configuration file is world-readable, and holds the enroll secret: said so.
    assert!(
        agent
            .stderr()
            .contains("holds the collector's enroll secret"),
        "{}",
        agent.stderr()
    );
}

/// Run SQL on the collector's SQLite database directly, in one transaction, as someone with
/// access to the file (not through the collector).
fn tamper(db: &Path, sql: &str) {
    let mut c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let tx = c
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    tx.execute_batch(sql).unwrap();
    tx.commit().unwrap();
}

/// `n` chained events of `host` from `seq` on, after `prev`, as lines.
fn lines(host: &str, hostname: &str, seq: u64, prev: &str, n: u64) -> Vec<String> {
    let o = interdict_event::Origin {
        host_id: host.into(),
        hostname: hostname.into(),
    };
    let mut prev = prev.to_string();
    (0..n)
        .map(|i| {
            let mut e = o.event(interdict_event::EventKind::ExecDenied);
            e.seq = Some(seq + i);
            e.prev_hash = Some(prev.clone());
            let l = e.to_json_line();
            prev = interdict_event::sha256_hex(l.as_bytes());
            l
        })
        .collect()
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Enroll `host` over HTTP; its token.
fn enroll_as(port: u16, secret: &str, host: &str, hostname: &str) -> String {
    let mut r = http()
        .post(&format!("http://127.0.0.1:{port}/v1/enroll"))
        .content_type("application/json")
        .send(
            serde_json::json!({"secret": secret, "host_id": host, "hostname": hostname})
                .to_string(),
        )
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// Send events as the shipper does; the status.
fn send(port: u16, token: &str, events: &[String]) -> u16 {
    http()
        .post(&format!("http://127.0.0.1:{port}/v1/events"))
        .header("Authorization", &format!("Bearer {token}"))
        .content_type("application/json")
        .send(format!("{{\"events\":[{}]}}", events.join(",")))
        .unwrap()
        .status()
        .as_u16()
}

fn logs(port: u16, reviewer: &str, args: &[&str]) -> Run {
    run(interdict()
        .arg("logs")
        .arg(args[0])
        .args(["--collector", &format!("http://127.0.0.1:{port}")])
        .args(&args[1..])
        .env("INTERDICT_REVIEWER_TOKEN", reviewer))
}

#[test]
fn issue_13_logs_verify_re_derives_chains_and_checks_an_exported_checkpoint() {
    let mut site = Site::new();
    let (db, secret, port, _) = site.parts();
    let c = site.collector();
    let t = enroll_as(port, &secret, "h1", "h1.corp");
    let evs = lines("h1", "h1.corp", 1, interdict_event::GENESIS_HASH, 10);
    assert_eq!(send(port, &t, &evs), 200);
    let reviewer = Store::open(&db).unwrap().add_reviewer("sec").unwrap();
    let cp = site._dir.path().join("cp.json");
    logs(
        port,
        &reviewer,
        &["checkpoint", "--out", cp.to_str().unwrap()],
    )
    .expect_code(0);
    let check = [
        "verify",
        "--checkpoint",
        cp.to_str().unwrap(),
        "--key",
        &c.key,
    ];
    logs(port, &reviewer, &check)
        .expect_code(0)
        .expect_stdout("intact  h1 (h1.corp): 10 record(s)");
    // One record edited in the database: the report names the host and the broken link.
    tamper(
        &db,
        "UPDATE events SET raw = REPLACE(raw, 'exec_denied', 'exec_reported') WHERE seq = 5",
    );
    logs(port, &reviewer, &["verify"])
        .expect_code(1)
        .expect_stdout("break host h1 chain 1 seq 6..6");
    // The whole chain rewritten consistently and the head moved: only the checkpoint knows.
    let mut forged = lines("h1", "h1.corp", 1, interdict_event::GENESIS_HASH, 10);
    for (i, l) in forged.iter_mut().enumerate() {
        let mut e: interdict_event::Event = serde_json::from_str(l).unwrap();
        let orig: interdict_event::Event = serde_json::from_str(&evs[i]).unwrap();
        e.id = orig.id;
        *l = e.to_json_line();
    }
    let mut prev = interdict_event::GENESIS_HASH.to_string();
    let mut sql = String::new();
    for l in &forged {
        let mut e: interdict_event::Event = serde_json::from_str(l).unwrap();
        e.prev_hash = Some(prev.clone());
        let line = e.to_json_line();
        prev = interdict_event::sha256_hex(line.as_bytes());
        sql.push_str(&format!(
            "UPDATE events SET raw = '{}' WHERE seq = {};",
            line.replace('\'', "''"),
            e.seq.unwrap()
        ));
    }
    sql.push_str(&format!("UPDATE chains SET head_hash = '{prev}';"));
    tamper(&db, &sql);
    logs(port, &reviewer, &["verify"]).expect_code(0);
    logs(port, &reviewer, &check)
        .expect_code(1)
        .expect_stdout("altered host h1 chain 1 seq 10..10");
}

#[test]
fn issue_13_heartbeats_carry_the_acknowledged_record_and_a_removed_tail_is_blamed_on_the_collector()
{
    let mut site = Site::new();
    let (db, secret, port, root) = site.parts();
    let _c = site.collector();
    let agent = shipping_agent(&root, port, &secret);
    banned_files(&root, "a", 5);
    let store = Store::open(&db).unwrap();
    wait_for("5 detections", 60, || {
        counter(&agent, "installs_detected") >= 5
    });
    let host = host_id(&agent);
    // A heartbeat names a record the collector acknowledged, with the hash the agent computed.
    let hash_of = |seq: u64| -> Option<String> {
        store
            .query(
                &interdict_collector::Query {
                    host: Some(host.clone()),
                    limit: Some(10_000),
                    ..Default::default()
                },
                10_000,
                1 << 30,
            )
            .unwrap()
            .0
            .iter()
            .find(|(_, raw)| serde_json::from_str::<serde_json::Value>(raw).unwrap()["seq"] == seq)
            .map(|(_, raw)| interdict_event::sha256_hex(raw.as_bytes()))
    };
    wait_for("a heartbeat naming an acknowledged record", 60, || {
        stored(&store, &host, "heartbeat").iter().any(|e| {
            let m: serde_json::Value = serde_json::from_str(e.message.as_deref().unwrap()).unwrap();
            m["acked"]["seq"]
                .as_u64()
                .is_some_and(|s| s > 0 && hash_of(s).as_deref() == m["acked"]["hash"].as_str())
        })
    });
    let reviewer = store.add_reviewer("sec").unwrap();
    logs(port, &reviewer, &["verify"]).expect_code(0);
    // Someone with the database deletes the newest records and rewinds the host's head.
    let head = store.acked(&host).unwrap();
    let keep = head - 3;
    let keep_hash = hash_of(keep).unwrap();
    tamper(
        &db,
        &format!(
            "DELETE FROM events WHERE host_id = '{host}' AND seq > {keep};
             UPDATE chains SET head_seq = {keep}, head_hash = '{keep_hash}' WHERE host_id = '{host}';"
        ),
    );
    // The agent's next heartbeat says what was acknowledged: the report blames the collector.
    let mut last = String::new();
    wait_for(
        "verify to name a record removed at the collector",
        60,
        || {
            let r = logs(port, &reviewer, &["verify"]);
            last = r.stdout.clone();
            r.code == 1 && r.stdout.contains("removed at the collector")
        },
    );
    assert!(
        last.contains(&format!("removed host {host} chain 1")),
        "{last}"
    );
}

#[test]
fn issue_13_logs_tail_shows_an_event_shipped_late_and_is_not_blinded_by_a_future_date() {
    let mut site = Site::new();
    let (db, secret, port, _) = site.parts();
    let _c = site.collector();
    let (desk, laptop) = (
        enroll_as(port, &secret, "desk", "desk"),
        enroll_as(port, &secret, "laptop", "laptop"),
    );
    let reviewer = Store::open(&db).unwrap().add_reviewer("sec").unwrap();
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_interdict"))
        .args(["logs", "tail", "--every-s", "1", "--collector"])
        .arg(format!("http://127.0.0.1:{port}"))
        .env("INTERDICT_REVIEWER_TOKEN", &reviewer)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (out, s2) = (tail.stdout.take().unwrap(), seen.clone());
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            s2.lock().unwrap().push_str(&(l + "\n"));
        }
    });
    let shown = |id: &str| seen.lock().unwrap().contains(id);
    let id = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let d = lines("desk", "desk", 1, interdict_event::GENESIS_HASH, 3);
    assert_eq!(send(port, &desk, &d[..1]), 200);
    wait_for("the desk's event tailed", 30, || shown(&id(&d[0])));
    // A laptop that was offline ships an event dated long ago.
    let mut e: interdict_event::Event =
        serde_json::from_str(&lines("laptop", "laptop", 1, interdict_event::GENESIS_HASH, 1)[0])
            .unwrap();
    e.time = "2026-01-01T08:00:00.000Z".into();
    let old = e.to_json_line();
    assert_eq!(send(port, &laptop, std::slice::from_ref(&old)), 200);
    wait_for("the late event tailed", 30, || shown(&id(&old)));
    // An event dated 9999 is refused; it cannot blind the tail for everyone.
    let mut f: interdict_event::Event = serde_json::from_str(&d[1]).unwrap();
    f.time = "9999-12-31T23:59:59.999Z".into();
    assert_eq!(send(port, &desk, &[f.to_json_line()]), 422);
    assert_eq!(send(port, &desk, &d[1..3]), 200);
    wait_for("the desk's next events tailed", 30, || {
        shown(&id(&d[1])) && shown(&id(&d[2]))
    });
    let _ = tail.kill();
    let _ = tail.wait();
    let text = seen.lock().unwrap().clone();
    assert_eq!(text.lines().count(), 4, "each event once: {text}");
}

#[test]
fn issue_13_what_a_host_sends_reaches_the_reviewers_terminal_escaped() {
    let mut site = Site::new();
    let (db, secret, port, _) = site.parts();
    let _c = site.collector();
    let evil = "pc\u{1b}[2K\rintact  all hosts\u{9b}0m";
    let t = enroll_as(port, &secret, "h1", evil);
    let mut evs = lines("h1", evil, 1, interdict_event::GENESIS_HASH, 2);
    let mut e: interdict_event::Event = serde_json::from_str(&evs[1]).unwrap();
    e.prev_hash = Some("e".repeat(64));
    e.message = Some("\u{1b}]0;owned\u{7}".into());
    evs[1] = e.to_json_line();
    assert_eq!(send(port, &t, &evs), 200);
    let reviewer = Store::open(&db).unwrap().add_reviewer("sec").unwrap();
    let r = logs(port, &reviewer, &["verify"]);
    r.expect_code(1)
        .expect_stdout("\\u{1b}[2K\\u{d}intact  all hosts");
    assert!(
        !r.stdout.chars().any(|c| c.is_control() && c != '\n'),
        "{:?}",
        r.stdout
    );
    let q = logs(port, &reviewer, &["query"]);
    q.expect_code(0);
    assert!(
        !q.stdout.chars().any(|c| c.is_control() && c != '\n'),
        "{:?}",
        q.stdout
    );
    for (l, sent) in q.stdout.lines().zip(&evs) {
        let a: serde_json::Value = serde_json::from_str(l).unwrap();
        let b: serde_json::Value = serde_json::from_str(sent).unwrap();
        assert_eq!(a, b, "the same JSON, escaped");
    }
}
