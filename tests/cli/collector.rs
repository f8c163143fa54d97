//! The agent's spool and shipper against the real `interdict-collector` on loopback (issue 5):
//! nothing lost or duplicated while the collector is down, across a SIGKILL of the agent, and a
//! record deleted from the spool shows up as a gap.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use interdict_collector::Store;

use crate::support::agent::{rule, Agent, POLICY_HEAD};
use crate::support::*;

/// The collector (its library, served over real HTTP) on a fixed loopback port, with its own
/// SQLite database; stopped on drop.
struct Collector {
    _running: interdict_collector::Background,
}

impl Collector {
    fn start(db: &Path, port: u16) -> Collector {
        Collector::start_with(db, port, None)
    }

    fn start_with(db: &Path, port: u16, tls: Option<interdict_collector::TlsFiles>) -> Collector {
        let app = interdict_collector::App {
            store: Store::open(db).unwrap(),
            silent_after_ms: 60_000,
        };
        let tls = tls.map(|f| interdict_collector::tls_acceptor(&f).unwrap());
        Collector {
            _running: interdict_collector::Background::start(("127.0.0.1", port), app, tls)
                .unwrap(),
        }
    }
}

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
    Store::open(db).unwrap().enroll_secret().unwrap()
}

/// What every test here starts from: a folder, a collector database (with its enroll secret), a
/// free port for the collector and an empty install root for the agent.
struct Site {
    _dir: tempfile::TempDir,
    db: PathBuf,
    secret: String,
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
        Site {
            secret: secret(&db),
            port: free_port(),
            db,
            root,
            _dir: dir,
        }
    }
}

/// The events of `kind` the collector stored for `host` (up to 10,000).
fn stored(store: &Store, host: &str, kind: &str) -> Vec<interdict_event::Event> {
    store
        .query(&interdict_collector::Query {
            host: Some(host.to_string()),
            kind: Some(kind.to_string()),
            limit: Some(10_000),
            ..Default::default()
        })
        .unwrap()
        .0
}

fn host_id(agent: &Agent) -> String {
    agent.events()[0]["host_id"].as_str().unwrap().to_string()
}

fn spool_dir(agent: &Agent) -> PathBuf {
    agent.dir.path().join("state/spool")
}

#[test]
fn ten_thousand_events_made_while_the_collector_is_down_all_arrive_once() {
    let site = Site::new();
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
    let _c = Collector::start(&db, port);
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
    let port = free_port();
    let _c = Collector::start(&db, port);
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
    let site = Site::new();
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
    let _c = Collector::start(&db, port);
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
    let port = free_port();
    let _c = Collector::start_with(
        &db,
        port,
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
        host.map(|h| {
            store
                .query(&interdict_collector::Query {
                    host: Some(h),
                    kind: Some("installed_detected".into()),
                    ..Default::default()
                })
                .map(|(e, _)| e.len() == 5)
                .unwrap_or(false)
        })
        .unwrap_or(false)
    });
    assert!(store.findings().unwrap().is_empty());
}

#[test]
fn a_full_spool_refuses_counts_every_drop_and_tells_the_collector_how_many() {
    let site = Site::new();
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
    let _c = Collector::start(&db, port);
    let store = Store::open(&db).unwrap();
    let host = host_id(&agent);
    let notice = |store: &Store| {
        store
            .query(&interdict_collector::Query {
                host: Some(host.clone()),
                kind: Some("events_dropped".into()),
                ..Default::default()
            })
            .unwrap()
            .0
    };
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
