//! The fleet control plane end to end (issue 15): the real collector (its library, over HTTP
//! on loopback) and real agents (fanotify on a test tmpfs each), two agents as two hosts in one
//! test (distinct `[agent] host_id`).
//!
//! - signed policy bundles: enforced within a heartbeat; a bundle with a flipped byte, one
//!   signed with another key and an older one are refused with events while the policy in
//!   force stays; a restart with the collector down enforces the last bundle;
//! - a digest learned on host A protects host B only after a reviewer approves it; a list
//!   forged with another key, an `allow` entry and a removal injected by a collector that holds
//!   the real hash-list key are refused;
//! - an exception: requested by a plain user, approved, used (by that user only), announced
//!   before its end, and enforced again at its end (the running process killed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use interdict_collector::Store;
use interdict_fleet::SecretKey;
use serde_json::Value;

use crate::collector::Reserved;
use crate::support::agent::{
    assert_denied, exec, marks, rule, unique_bytes, unique_copy, Agent, Setup, TmpMount,
    POLICY_HEAD,
};
use crate::support::*;

/// A collector with its fleet keys, on a port reserved before the agents start.
struct Central {
    dir: tempfile::TempDir,
    db: PathBuf,
    secret: String,
    port: u16,
    reserved: Option<Reserved>,
    running: Option<interdict_collector::Background>,
    hash_seed: [u8; 32],
    exception_seed: [u8; 32],
    reviewer: String,
}

fn seed() -> [u8; 32] {
    std::array::from_fn(|_| fastrand::u8(..))
}

impl Central {
    fn new() -> Central {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("collector.db");
        let store = Store::open(&db).unwrap();
        let secret = store.rotate_enroll_secret().unwrap();
        let reviewer = store.add_reviewer("sec-team").unwrap();
        let reserved = Reserved::new();
        Central {
            port: reserved.port,
            reserved: Some(reserved),
            running: None,
            hash_seed: seed(),
            exception_seed: seed(),
            db,
            secret,
            reviewer,
            dir,
        }
    }

    fn start(&mut self) {
        let app = interdict_collector::App::new(
            Store::open(&self.db).unwrap(),
            interdict_collector::Config {
                silent_after_s: 60,
                ..Default::default()
            },
            interdict_collector::keys::generate(),
        )
        .with_fleet_keys(interdict_collector::fleet::Keys {
            hash_list: SecretKey::from_seed(self.hash_seed),
            exceptions: SecretKey::from_seed(self.exception_seed),
        });
        let l = self
            .reserved
            .take()
            .expect("one start per collector")
            .listen();
        self.running = Some(interdict_collector::Background::start_on(l, app, None).unwrap());
    }

    fn stop(&mut self) {
        self.running.take();
    }

    fn store(&self) -> Store {
        Store::open(&self.db).unwrap()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn hash_list_public(&self) -> String {
        SecretKey::from_seed(self.hash_seed).public().to_string()
    }

    fn exception_public(&self) -> String {
        SecretKey::from_seed(self.exception_seed)
            .public()
            .to_string()
    }

    /// `interdict logs ARGS --collector URL --token REVIEWER`.
    fn logs(&self, args: &[&str]) -> Run {
        run(interdict().arg("logs").args(args).args([
            "--collector",
            &self.url(),
            "--token",
            &self.reviewer,
        ]))
    }

    /// Write to the collector's database directly: the adversary who owns the collector.
    fn sql(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) {
        let c = rusqlite::Connection::open(&self.db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute(sql, args).unwrap();
        c.execute("UPDATE fleet_state SET n = n + 1 WHERE k = 'rev'", [])
            .unwrap();
    }

    /// The `[collector]` table of an agent of this collector.
    fn agent_table(&self, extra: &str) -> String {
        format!(
            "[collector]\nurl = \"{}\"\nenroll_secret = \"{}\"\nheartbeat_s = 1\n{extra}\n",
            self.url(),
            self.secret
        )
    }
}

/// An agent marking only `m`, without the proc connector (two agents on one machine would
/// each judge the other's execs), as host `host_id`, shipping to `c`.
fn fleet_agent(policy: &str, m: &Path, host_id: &str, tables: &str) -> Agent {
    Agent::with(Setup {
        policy,
        exec: &format!("{}\nproc_connector = false\n\n{tables}", marks(m)),
        agent: &format!("host_id = \"{host_id}\""),
        ..Setup::default()
    })
}

/// Wait for `n` more heartbeats of `a` (the agent fetches from the collector as often).
fn beats(a: &Agent, n: usize) {
    let hb = |a: &Agent| {
        a.events()
            .iter()
            .filter(|e| e["kind"] == "heartbeat")
            .count()
    };
    let from = hb(a);
    wait_until(&format!("{n} more heartbeats"), 30, || hb(a) >= from + n);
}

fn host_id(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), fastrand::u32(..))
}

fn status_source(a: &Agent) -> Value {
    a.status()["policy_source"].clone()
}

fn count(a: &Agent, kind: &str, needle: &str) -> usize {
    a.events()
        .iter()
        .filter(|e| e["kind"] == kind && e["message"].as_str().unwrap_or("").contains(needle))
        .count()
}

/// `interdict policy keygen --out DIR/NAME`: the public key.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let r = run(interdict().args(["policy", "keygen", "--out"]).arg(&key));
    r.expect_code(0);
    (key, r.stdout.trim().to_string())
}

/// `interdict policy sign`: the bundle's path.
fn sign(key: &Path, policy: &Path, version: u64) -> PathBuf {
    let out = policy.with_extension(format!("v{version}.bundle"));
    run(interdict()
        .args(["policy", "sign", "--key"])
        .arg(key)
        .arg(policy)
        .arg("--out")
        .arg(&out)
        .args(["--version", &version.to_string()]))
    .expect_code(0);
    out
}

fn write_policy(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `interdict policy verify --public-key K... BUNDLE`.
fn verify(bundle: &Path, keys: &[&str]) -> Run {
    let mut c = interdict();
    c.args(["policy", "verify"]);
    for k in keys {
        c.args(["--public-key", k]);
    }
    run(c.arg(bundle))
}

#[test]
fn issue_15_policy_keygen_sign_and_verify_refuse_tampering_other_keys_and_bad_policies() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    let (it_key, it_pub) = keygen(work.path(), "it.key");
    assert!(
        it_pub.len() == 64 && it_pub.bytes().all(|b| b.is_ascii_hexdigit()),
        "{it_pub}"
    );
    let mode = std::fs::metadata(&it_key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key is its owner's only");
    // An existing key is never overwritten.
    let before = std::fs::read(&it_key).unwrap();
    let r = run(interdict().args(["policy", "keygen", "--out"]).arg(&it_key));
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("never overwritten"), "{}", r.stderr);
    assert_eq!(std::fs::read(&it_key).unwrap(), before);
    let (_, other_pub) = keygen(work.path(), "other.key");
    // A policy with a hash file beside it: signed with the file, verified with the right key
    // (alone or beside another during a rotation), refused with another key alone.
    std::fs::create_dir_all(work.path().join("hashes")).unwrap();
    std::fs::write(
        work.path().join("hashes/tool.sha256"),
        format!("{}  tool\n", "ab".repeat(32)),
    )
    .unwrap();
    let p = write_policy(
        work.path(),
        "p.toml",
        &format!(
            "[policy]\nname = \"fleet\"\nversion = \"v7\"\nmode = \"enforce\"\n{}",
            rule("tool", "block", "sha256_files = [\"hashes/tool.sha256\"]")
        ),
    );
    let b = sign(&it_key, &p, 7);
    let r = verify(&b, &[&it_pub]);
    r.expect_code(0);
    assert!(
        r.stdout.contains("version 7") && r.stdout.contains(&it_pub),
        "{}",
        r.stdout
    );
    verify(&b, &[&other_pub, &it_pub]).expect_code(0);
    let r = verify(&b, &[&other_pub]);
    r.expect_code(2);
    assert!(
        r.stdout.contains("not one of the pinned keys")
            || r.stderr.contains("not one of the pinned keys"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    // Any one flipped byte of the signed policy, of the hash file inside, of the version or of
    // the signature is refused.
    let text = std::fs::read_to_string(&b).unwrap();
    let env: Value = serde_json::from_str(&text).unwrap();
    let body = env["body"].as_str().unwrap();
    for (what, needle) in [
        ("the policy", "v7"),
        ("the hash file", &"ab".repeat(32)[..]),
        ("the version", "\"version\":7"),
    ] {
        let at = body
            .find(needle)
            .unwrap_or_else(|| panic!("{what}: {needle} in {body}"));
        let mut altered = body.to_string().into_bytes();
        altered[at + needle.len() - 1] ^= 0x01;
        let mut e = env.clone();
        e["body"] = Value::String(String::from_utf8(altered).unwrap());
        let t = work.path().join("tampered.bundle");
        std::fs::write(&t, serde_json::to_string(&e).unwrap()).unwrap();
        let r = verify(&t, &[&it_pub]);
        r.expect_code(2);
        assert!(
            format!("{}{}", r.stdout, r.stderr).contains("does not verify"),
            "{what}: {}{}",
            r.stdout,
            r.stderr
        );
    }
    let mut e = env.clone();
    let sig = e["signature"].as_str().unwrap().to_string();
    let flipped = if sig.starts_with('0') { "1" } else { "0" }.to_string() + &sig[1..];
    e["signature"] = Value::String(flipped);
    let t = work.path().join("tampered.bundle");
    std::fs::write(&t, serde_json::to_string(&e).unwrap()).unwrap();
    verify(&t, &[&it_pub]).expect_code(2);
    // A policy with errors is not signed: every problem at once, FILE:LINE:COL, no bundle.
    let bad = write_policy(
        work.path(),
        "bad.toml",
        "[policy]\nname = \"fleet\"\nversion = \"1\"\nmode = \"sometimes\"\n\n[[rule]]\nid = \"x\"\n",
    );
    let out = work.path().join("bad.bundle");
    let r = run(interdict()
        .args(["policy", "sign", "--key"])
        .arg(&it_key)
        .arg(&bad)
        .arg("--out")
        .arg(&out));
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("bad.toml:4:"), "{}", r.stderr);
    assert!(r.stderr.contains("not signed"), "{}", r.stderr);
    assert!(!out.exists());
    // A policy naming a hash file that is missing is not signed either.
    let missing = write_policy(
        work.path(),
        "missing.toml",
        &format!(
            "[policy]\nname = \"fleet\"\nversion = \"1\"\nmode = \"enforce\"\n{}",
            rule("tool", "block", "sha256_files = [\"hashes/none.sha256\"]")
        ),
    );
    let r = run(interdict()
        .args(["policy", "sign", "--key"])
        .arg(&it_key)
        .arg(&missing)
        .arg("--out")
        .arg(&out));
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!out.exists());
}

#[test]
fn issue_15_signed_bundles_apply_within_a_heartbeat_refusals_keep_the_policy_and_a_restart_without_the_collector_keeps_it(
) {
    let m = TmpMount::new();
    let tool = m.path().join("bin/tool");
    let digest = unique_copy("/usr/bin/true", &tool);
    let work = tempfile::tempdir().unwrap();
    let (it_key, it_pub) = keygen(work.path(), "it.key");
    let (other_key, _) = keygen(work.path(), "other.key");
    let mut c = Central::new();
    c.start();
    // The agent starts on its local file, which bans nothing it will see.
    let local = format!(
        "{POLICY_HEAD}{}",
        rule(
            "other",
            "block",
            "paths = [\"/nonexistent/for-this-test/*\"]"
        )
    );
    let id = host_id("bundles");
    let mut agent = fleet_agent(
        &local,
        m.path(),
        &id,
        &c.agent_table(&format!("policy_public_key = \"{it_pub}\"")),
    );
    exec(&tool, &[]).expect("runs under the local policy");
    // Version 1 (a policy that names a hash list beside it, carried in the bundle).
    std::fs::create_dir_all(work.path().join("hashes")).unwrap();
    std::fs::write(work.path().join("hashes/empty.sha256"), "# nothing yet\n").unwrap();
    let p1 = write_policy(
        work.path(),
        "p1.toml",
        &format!(
            "[policy]\nname = \"fleet\"\nversion = \"v1\"\nmode = \"enforce\"\n{}",
            rule("tool", "block", "sha256_files = [\"hashes/empty.sha256\"]")
        ),
    );
    let b1 = sign(&it_key, &p1, 1);
    c.store()
        .publish_bundle(&std::fs::read_to_string(&b1).unwrap(), &[])
        .unwrap();
    wait_until("bundle 1 in force", 20, || {
        status_source(&agent)["version"] == 1
    });
    exec(&tool, &[]).expect("version 1 does not ban the tool");
    // Version 2 bans it by digest: enforced within a heartbeat.
    std::fs::write(
        work.path().join("hashes/tool.sha256"),
        format!("{digest}  tool\n"),
    )
    .unwrap();
    let p2 = write_policy(
        work.path(),
        "p2.toml",
        &format!(
            "[policy]\nname = \"fleet\"\nversion = \"v2\"\nmode = \"enforce\"\n{}",
            rule("tool", "block", "sha256_files = [\"hashes/tool.sha256\"]")
        ),
    );
    let b2 = sign(&it_key, &p2, 2);
    c.store()
        .publish_bundle(&std::fs::read_to_string(&b2).unwrap(), &[])
        .unwrap();
    wait_until("bundle 2 enforced", 10, || {
        status_source(&agent)["version"] == 2
    });
    assert_denied(&tool);
    agent.wait_event("policy_applied from bundle 2", |e| {
        e["kind"] == "policy_applied"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("signed bundle version 2")
    });
    let s = agent.status();
    assert_eq!(s["policy"]["version"], "v2");
    assert_eq!(s["policy_source"]["kind"], "bundle");
    assert_eq!(s["policy_source"]["key"], it_pub.as_str());
    let text = run(interdict().args(["status", "--socket"]).arg(agent.socket()));
    text.expect_stdout("source: signed bundle version 2");
    // The local file no longer applies while a bundle is in force.
    let r = agent.reload();
    r.expect_code(2);
    assert!(
        r.stderr.contains("signed bundle version 2 is in force"),
        "{}",
        r.stderr
    );
    // The collector knows what each host enforces.
    wait_until("the collector sees bundle 2 on the host", 20, || {
        let r = c.logs(&["hosts", "--format", "json"]);
        r.code == 0
            && r.json()
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["host_id"] == id.as_str() && h["policy_bundle"] == 2)
    });
    let r = c.logs(&["hosts"]);
    r.expect_code(0);
    assert!(
        r.stdout.contains(&id) && !r.stdout.contains("BEHIND"),
        "{}",
        r.stdout
    );

    // Refused, each with an event saying why, each once; the policy in force stays.
    let bundle_text = |p: &Path| std::fs::read_to_string(p).unwrap();
    let refused = |agent: &Agent, why: &str| {
        agent.wait_event(&format!("policy_rejected: {why}"), |e| {
            e["kind"] == "policy_rejected" && e["message"].as_str().unwrap_or("").contains(why)
        });
        let s = agent.status();
        assert_eq!(s["policy_source"]["version"], 2, "{s:#}");
        assert_denied(&tool);
    };
    // (a) one flipped byte (in the policy text: "block" becomes "blocj"), put in the database
    // directly, as the collector's owner or the network could.
    let p3 = write_policy(
        work.path(),
        "p3.toml",
        &format!(
            "[policy]\nname = \"fleet\"\nversion = \"v3\"\nmode = \"enforce\"\n{}",
            rule("tool", "block", "paths = [\"/nonexistent/x/*\"]")
        ),
    );
    let b3 = bundle_text(&sign(&it_key, &p3, 3));
    let at = b3.find("block").unwrap() + 4;
    let mut flipped = b3.clone().into_bytes();
    flipped[at] ^= 0x01;
    let flipped = String::from_utf8(flipped).unwrap();
    assert_ne!(flipped, b3);
    c.sql(
        "INSERT INTO fleet_bundles (version, hosts, bundle, policy_sha256, created, published_ms) VALUES (3, '[]', ?1, 'x', 'x', 0)",
        &[&flipped],
    );
    refused(&agent, "the signature does not verify");
    // (b) a bundle signed with another key (published the ordinary way).
    let b4 = sign(&other_key, &p3, 4);
    c.store().publish_bundle(&bundle_text(&b4), &[]).unwrap();
    refused(&agent, "which is not one of the pinned keys");
    // (b2) signed with IT's own key, a higher version, but a policy that does not load:
    // refused like a failed reload, the last good policy stays.
    let it_secret = SecretKey::from_file_text(&std::fs::read_to_string(&it_key).unwrap()).unwrap();
    let broken = "[policy]\nname = \"fleet\"\nversion = \"v5\"\nmode = \"sometimes\"\n";
    let b5 = interdict_fleet::BundleBody {
        version: 5,
        created: "2026-12-01T00:00:00Z".into(),
        policy_sha256: interdict_fleet::sha256_hex(broken.as_bytes()),
        policy: broken.into(),
        files: Default::default(),
    }
    .sign(&it_secret);
    c.store().publish_bundle(&b5.to_text(), &[]).unwrap();
    refused(&agent, "version 5: its policy is invalid");
    // (c) version 1 after version 2: the collector's newer bundles deleted.
    c.sql("DELETE FROM fleet_bundles WHERE version > 1", &[]);
    refused(
        &agent,
        "older than version 2, which is in force (a rollback)",
    );
    // Told once each, not at every heartbeat (each heartbeat is a fetch).
    beats(&agent, 3);
    for why in [
        "the signature does not verify",
        "not one of the pinned keys",
        "its policy is invalid",
        "a rollback",
    ] {
        assert_eq!(count(&agent, "policy_rejected", why), 1, "{why}");
    }

    // A restart with the collector down: bundle 2 from the state folder, enforced at once.
    c.stop();
    agent.restart();
    let s = agent.status();
    assert_eq!(s["policy_source"]["version"], 2, "{s:#}");
    assert_eq!(s["policy"]["version"], "v2");
    assert_denied(&tool);
    agent.wait_event("initial policy from bundle 2", |e| {
        e["kind"] == "policy_applied"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("initial policy, from signed bundle version 2")
    });
    drop(c.dir);
}

#[test]
fn issue_15_a_digest_learned_on_host_a_protects_host_b_only_after_approval_and_forged_or_weakening_lists_are_refused(
) {
    let ma = TmpMount::new();
    let mb = TmpMount::new();
    let mut c = Central::new();
    c.start();
    // The bytes of a banned tool, unique to this run (not a copy of a system file).
    let bytes = unique_bytes("/usr/bin/true");
    let at_a = ma.path().join("fleet-banned/tool");
    let at_b = mb.path().join("elsewhere/renamed-tool");
    write(&at_a, &bytes, 0o755);
    write(&at_b, &bytes, 0o755);
    let digest = sha256sum(&at_b);
    // Another banned program, banned by digest in the policy: an `allow` entry for it injected
    // by the collector would let it through.
    let declared = mb.path().join("elsewhere/declared-tool");
    let declared_digest = unique_copy("/usr/bin/true", &declared);
    let policy = format!(
        "[policy]\nname = \"fleet\"\nversion = \"1\"\nmode = \"enforce\"\nhash_list_keys = [\"{}\"]\n{}{}",
        c.hash_list_public(),
        rule(
            "fleet-tool",
            "block",
            &format!("paths = [\"**/fleet-banned/*\"]\nsha256 = [\"{declared_digest}\"]")
        ),
        rule("approved-build", "allow", "paths = [\"/nonexistent/approved/*\"]"),
    );
    let (ida, idb) = (host_id("host-a"), host_id("host-b"));
    let a = fleet_agent(&policy, ma.path(), &ida, &c.agent_table(""));
    let b = fleet_agent(&policy, mb.path(), &idb, &c.agent_table(""));
    // Host A: the path rule stops the tool and learns its digest.
    assert_denied(&at_a);
    a.wait_event("hash_learned on A", |e| {
        e["kind"] == "hash_learned" && e["file"]["sha256"] == digest.as_str()
    });
    wait_until("the digest pending at the collector", 20, || {
        let r = c.logs(&["learned", "--pending", "--format", "json"]);
        r.code == 0
            && r.json()
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["sha256"] == digest.as_str() && x["first_host"] == ida.as_str())
    });
    let row = c.logs(&["learned", "--pending", "--format", "json"]).json()[0].clone();
    assert_eq!(row["rule_id"], "fleet-tool");
    assert_eq!(row["size"], bytes.len() as u64);
    assert_eq!(row["path"], at_a.to_str().unwrap());
    assert_eq!(row["source"], "exec");
    // Host B before approval: the renamed copy runs (nothing a host sends is in force
    // elsewhere before a reviewer approves it), after B has fetched the approvals a few times.
    beats(&b, 3);
    exec(&at_b, &[]).expect("not approved yet: the renamed copy runs on host B");

    // A list forged with another key: refused, nothing added.
    let forged = interdict_fleet::HashList {
        seq: 99,
        created: "2026-12-01T00:00:00Z".into(),
        entries: vec![interdict_fleet::HashEntry {
            rule: "fleet-tool".into(),
            sha256: digest.clone(),
            size: bytes.len() as u64,
            path: "/x".into(),
            host: ida.clone(),
            approved_by: "mallory".into(),
        }],
    }
    .sign(&SecretKey::from_seed(seed()));
    c.store().put_hash_list(&forged).unwrap();
    b.wait_event("hash_list_rejected (forged)", |e| {
        e["kind"] == "hash_list_rejected"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("not one of the pinned keys")
    });
    exec(&at_b, &[]).expect("a forged approval adds nothing");
    c.sql("DELETE FROM fleet_state WHERE k = 'hash_list'", &[]);

    // Approved by a reviewer: host B denies the renamed copy within a heartbeat.
    c.logs(&["learned", "approve", &digest]).expect_code(0);
    b.wait_event("hash_list_applied on B", |e| {
        e["kind"] == "hash_list_applied" && e["message"].as_str().unwrap_or("").contains(&digest)
    });
    assert_denied(&at_b);
    // The fleet audit says who did what: host A reported it, the reviewer approved it.
    let r = c.logs(&["audit", "--format", "json"]);
    r.expect_code(0);
    let changes = r.json();
    let did = |action: &str, actor: &str| {
        changes.as_array().unwrap().iter().any(|x| {
            x["action"] == action
                && x["actor"] == actor
                && x["subject"] == format!("fleet-tool/{digest}").as_str()
        })
    };
    assert!(
        did("learned_pending", &format!("host:{ida}"))
            && did("learned_approved", "reviewer:sec-team"),
        "{changes:#}"
    );
    let r = c.logs(&["audit"]);
    r.expect_code(0);
    assert!(
        r.stdout.contains("learned_approved") && r.stdout.contains("reviewer:sec-team"),
        "{}",
        r.stdout
    );
    let learned_b = std::fs::read_to_string(b.dir.path().join("state/learned.json")).unwrap();
    assert!(
        learned_b.contains(&digest) && learned_b.contains("\"fleet\""),
        "{learned_b}"
    );

    // A collector holding the real hash-list key tries to weaken the fleet: a list that drops
    // the approved digest, adds the declared tool's digest to an allow rule, names a rule the
    // policy does not have, and a system file's digest.
    let key = SecretKey::from_seed(c.hash_seed);
    let true_bytes = std::fs::read("/usr/bin/true").unwrap();
    let entry = |rule: &str, sha: &str, size: u64| interdict_fleet::HashEntry {
        rule: rule.into(),
        sha256: sha.into(),
        size,
        path: "/x".into(),
        host: "x".into(),
        approved_by: "mallory".into(),
    };
    let weakening = interdict_fleet::HashList {
        seq: 50,
        created: "2026-12-01T00:00:00Z".into(),
        entries: vec![
            entry(
                "approved-build",
                &declared_digest,
                std::fs::metadata(&declared).unwrap().len(),
            ),
            entry("no-such-rule", &"ab".repeat(32), 5000),
            entry(
                "fleet-tool",
                &sha256sum(Path::new("/usr/bin/true")),
                true_bytes.len() as u64,
            ),
        ],
    }
    .sign(&key);
    c.store().put_hash_list(&weakening).unwrap();
    for why in [
        "it no longer names digest",
        "has action allow: approved digests are only added to block, kill and quarantine rules",
        "has no rule `no-such-rule`",
        "same content as /usr/bin/true",
    ] {
        b.wait_event(&format!("hash_list_rejected: {why}"), |e| {
            e["kind"] == "hash_list_rejected" && e["message"].as_str().unwrap_or("").contains(why)
        });
    }
    assert_denied(&at_b);
    assert_denied(&declared);
    let learned_b: Value = serde_json::from_str(
        &std::fs::read_to_string(b.dir.path().join("state/learned.json")).unwrap(),
    )
    .unwrap();
    let in_force: Vec<&str> = learned_b["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sha256"].as_str().unwrap())
        .collect();
    assert!(
        in_force.contains(&digest.as_str()),
        "the approved digest stays:\n{learned_b:#}"
    );
    assert!(
        !in_force.contains(&sha256sum(Path::new("/usr/bin/true")).as_str())
            && !in_force.contains(&declared_digest.as_str()),
        "neither a system file's digest nor an allow entry is applied:\n{learned_b:#}"
    );
    // An older list is refused too.
    let older = interdict_fleet::HashList {
        seq: 2,
        created: "2026-12-01T00:00:00Z".into(),
        entries: vec![],
    }
    .sign(&key);
    c.store().put_hash_list(&older).unwrap();
    b.wait_event("hash_list_rejected: older", |e| {
        e["kind"] == "hash_list_rejected"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("older or replayed")
    });
    // Host A and host B are two hosts at the collector.
    let hosts = c.store().hosts(60_000).unwrap();
    assert!(hosts.iter().any(|h| h.host_id == ida));
    assert!(hosts.iter().any(|h| h.host_id == idb));
    drop(a);
}

/// Whether process `pid` still runs (and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn issue_15_an_exception_is_requested_approved_used_by_its_user_only_announced_and_ends_with_a_kill(
) {
    test_user();
    let m = TmpMount::new();
    let tool = m.path().join("tool/sleepy");
    unique_copy("/usr/bin/sleep", &tool);
    let mut c = Central::new();
    c.start();
    let policy = format!(
        "[policy]\nname = \"fleet\"\nversion = \"1\"\nmode = \"enforce\"\nmax_exception_days = 2\nexception_keys = [\"{}\"]\n{}{}",
        c.exception_public(),
        rule("tool", "block", &format!("paths = [\"{}/tool/*\"]", m.path().display())),
        rule("strict", "block", "paths = [\"/nonexistent/strict/*\"]")
            .replace("[rule.match]", "exceptions = false\n[rule.match]"),
    );
    let id = host_id("exceptions");
    let agent = fleet_agent(
        &policy,
        m.path(),
        &id,
        &format!("{}\n[notify]\nexception_notice_s = 8\n", c.agent_table("")),
    );
    let as_user = |args: &[&str]| -> Run {
        Run::of(
            as_test_user(env!("CARGO_BIN_EXE_interdict"))
                .args(args)
                .arg("--socket")
                .arg(agent.socket())
                .output()
                .unwrap(),
        )
    };
    let user_runs = |secs: &str| {
        as_test_user(&tool)
            .arg(secs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Before: the user is denied.
    let out = user_runs("0").wait_with_output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    // A plain user may ask for an exception (and nothing else); the user is who the socket's
    // peer credentials say.
    as_user(&["status"]).expect_code(2);
    let r = as_user(&[
        "exception",
        "request",
        "--rule",
        "strict",
        "--days",
        "1",
        "--reason",
        "x",
    ]);
    r.expect_code(2);
    assert!(r.stderr.contains("allows no exceptions"), "{}", r.stderr);
    let r = as_user(&[
        "exception",
        "request",
        "--rule",
        "tool",
        "--days",
        "5",
        "--reason",
        "x",
    ]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("longer than the policy allows"),
        "{}",
        r.stderr
    );
    let r = as_user(&[
        "exception",
        "request",
        "--rule",
        "tool",
        "--days",
        "1",
        "--reason",
        "customer demo on Friday",
    ]);
    r.expect_code(0);
    let requested = agent.wait_event("exception_requested", |e| {
        e["kind"] == "exception_requested"
    });
    assert_eq!(requested["process"]["user"], TEST_USER);
    assert_eq!(requested["rule"]["id"], "tool");
    let request_id = serde_json::from_str::<Value>(requested["message"].as_str().unwrap()).unwrap()
        ["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(r.stdout.contains(&request_id), "{}", r.stdout);
    wait_until("the request pending at the collector", 20, || {
        let r = c.logs(&["exceptions", "--pending", "--format", "json"]);
        r.code == 0
            && r.json().as_array().unwrap().iter().any(|x| {
                x["id"] == request_id.as_str()
                    && x["user"] == TEST_USER
                    && x["host_id"] == id.as_str()
            })
    });
    // Forged and excessive approvals are refused: one signed with another key; signed with the
    // real exception key, one for another host and one longer than the policy allows.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let grant = |gid: &str, until: i64| interdict_fleet::ExceptionGrant {
        id: gid.into(),
        host_id: id.clone(),
        user: TEST_USER.into(),
        uid: None,
        rule: "tool".into(),
        from: now,
        until,
        reason: "forged".into(),
        approved_by: "mallory".into(),
    };
    for (gid, env) in [
        (
            "forged-1",
            grant("forged-1", now + 600).sign(&SecretKey::from_seed(seed())),
        ),
        (
            "too-long-1",
            grant("too-long-1", now + 3 * 86_400).sign(&SecretKey::from_seed(c.exception_seed)),
        ),
        // Signed with the real exception key, for another host, served to this one.
        (
            "other-host-1",
            interdict_fleet::ExceptionGrant {
                host_id: "another-host".into(),
                ..grant("other-host-1", now + 600)
            }
            .sign(&SecretKey::from_seed(c.exception_seed)),
        ),
    ] {
        c.sql(
            "INSERT INTO fleet_exceptions (id, host_id, hostname, user_name, uid, rule_id, days, reason, requested_ms, status, from_s, until_s, signed)
             VALUES (?1, ?2, 'x', ?3, NULL, 'tool', 1, 'x', 0, 'approved', ?4, ?5, ?6)",
            &[&gid, &id, &TEST_USER, &now, &(now + 3 * 86_400), &serde_json::to_string(&env).unwrap()],
        );
    }
    agent.wait_event("exception_rejected: another key", |e| {
        e["kind"] == "exception_rejected"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("not one of the pinned keys")
    });
    agent.wait_event("exception_rejected: too long", |e| {
        e["kind"] == "exception_rejected"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("longer than the policy allows (2 days)")
    });
    agent.wait_event("exception_rejected: another host", |e| {
        e["kind"] == "exception_rejected"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("it is for host another-host, not this one ({id})"))
    });
    let out = user_runs("0").wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "still denied after refused approvals: {out:?}"
    );

    // Approved for 25 seconds: the user may run the tool; root may not.
    c.logs(&["exceptions", "approve", &request_id, "--for", "25s"])
        .expect_code(0);
    let granted = agent.wait_event("exception_granted", |e| e["kind"] == "exception_granted");
    assert_eq!(granted["process"]["user"], TEST_USER);
    let mut running = user_runs("300");
    let pid = running.id();
    wait_until("the user's tool running", 10, || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == tool)
    });
    assert!(
        running.try_wait().unwrap().is_none(),
        "the excepted user's tool runs"
    );
    assert_denied(&tool);
    let out = user_runs("0").wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "root's denial is not remembered for the excepted user: {out:?}"
    );
    assert!(agent.status()["counters"]["exceptions_granted"].as_u64() == Some(1));
    // Told before it ends, then enforced again: the running tool is killed.
    agent.wait_event("exception_ending", |e| e["kind"] == "exception_ending");
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let st = loop {
        if let Some(st) = running.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tool still runs after the exception ended:\n{:#?}\n{}",
            agent.events(),
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    agent.wait_event("exception_expired", |e| e["kind"] == "exception_expired");
    agent.wait_event("process_killed of the user's tool", |e| {
        e["kind"] == "process_killed" && e["process"]["pid"] == pid
    });
    assert!(!alive(pid));
    let out = user_runs("0").wait_with_output().unwrap();
    assert!(!out.status.success(), "denied again after the end: {out:?}");
    // The user was told three times (granted, ending, ended): desktop or terminal, each tried.
    let s = agent.status();
    let tried = s["counters"]["notices_sent"].as_u64().unwrap()
        + s["counters"]["notices_failed"].as_u64().unwrap()
        + s["counters"]["notices_terminal"].as_u64().unwrap();
    assert!(tried >= 3, "{s:#}");
    // A request denied: the host hears of it (with the reviewer's note) with its next heartbeat.
    let r = as_user(&[
        "exception",
        "request",
        "--rule",
        "tool",
        "--days",
        "1",
        "--reason",
        "once more",
    ]);
    r.expect_code(0);
    let again = agent.wait_event("the second exception_requested", |e| {
        e["kind"] == "exception_requested" && e["id"] != requested["id"]
    });
    let again_id = serde_json::from_str::<Value>(again["message"].as_str().unwrap()).unwrap()
        ["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until("the second request pending at the collector", 20, || {
        let r = c.logs(&["exceptions", "--pending", "--format", "json"]);
        r.code == 0
            && r.json()
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["id"] == again_id.as_str())
    });
    c.logs(&[
        "exceptions",
        "deny",
        &again_id,
        "--note",
        "use the approved assistant",
    ])
    .expect_code(0);
    let denied = agent.wait_event("exception_denied", |e| e["kind"] == "exception_denied");
    assert!(
        denied["message"]
            .as_str()
            .unwrap_or("")
            .contains("use the approved assistant"),
        "{denied:#}"
    );
    assert_eq!(denied["process"]["user"], TEST_USER);
    let out = user_runs("0").wait_with_output().unwrap();
    assert!(!out.status.success(), "denied stays denied: {out:?}");
    // A user cannot flood the reviewers: at most 5 requests an hour (refused ones count).
    let ask = || {
        as_user(&[
            "exception",
            "request",
            "--rule",
            "tool",
            "--days",
            "1",
            "--reason",
            "again",
        ])
    };
    ask().expect_code(0);
    let r = ask();
    r.expect_code(2);
    assert!(
        r.stderr.contains("at most 5 requests an hour"),
        "{}",
        r.stderr
    );
    let _ = Command::new("true").status();
}
