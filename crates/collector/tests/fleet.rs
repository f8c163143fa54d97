//! The fleet control plane on the collector (issue 15), over real HTTP with SQLite and
//! PostgreSQL: bundles published in growing versions and fetched conditionally per host,
//! learned digests pending until a reviewer approves them (then signed with the hash-list key,
//! and only with it), exception requests decided and signed with the exception key for one
//! user, one rule and one host, what each token may do, and the fleet audit (every change,
//! with who made it).

#[path = "support/common.rs"]
mod common;
use common::*;

use interdict_event::{EventKind, FileRef, Origin, ProcessRef, RuleRef};
use interdict_fleet::{
    BundleBody, Envelope, ExceptionGrant, HashList, PublicKey, SecretKey, EXCEPTION_FORMAT,
};
use serde_json::{json, Value};

both!(
    issue_15_bundles_are_published_in_growing_versions_and_fetched_conditionally_per_host,
    issue_15_learned_digests_wait_for_a_reviewer_and_approvals_are_signed_with_the_hash_list_key,
    issue_15_exceptions_are_decided_and_signed_for_one_user_one_rule_one_host,
    issue_15_every_fleet_change_is_audited_with_who_what_and_when_and_refusals_change_nothing,
);

fn seeded(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

fn keys() -> interdict_collector::fleet::Keys {
    interdict_collector::fleet::Keys {
        hash_list: seeded(21),
        exceptions: seeded(22),
    }
}

fn bundle(version: u64, policy: &str, it: &SecretKey) -> String {
    BundleBody {
        version,
        created: "2026-12-01T00:00:00Z".into(),
        policy_sha256: interdict_fleet::sha256_hex(policy.as_bytes()),
        policy: policy.into(),
        files: Default::default(),
    }
    .sign(it)
    .to_text()
}

const POLICY: &str = "[policy]\nname = \"fleet\"\nversion = \"1\"\nmode = \"enforce\"\nmax_exception_days = 1\nexception_keys = [\"EXKEY\"]\n\n[[rule]]\nid = \"tool\"\nname = \"Tool\"\nrisk = \"high\"\nreason = \"r\"\naction = \"block\"\n[rule.match]\npaths = [\"/opt/tool/*\"]\n";

/// GET with an agent or reviewer token and optional If-None-Match: (status, body, ETag).
fn fetch(url: &str, token: Option<&str>, etag: Option<&str>) -> (u16, String, Option<String>) {
    let mut r = http().get(url);
    if let Some(t) = token {
        r = r.header("Authorization", &format!("Bearer {t}"));
    }
    if let Some(e) = etag {
        r = r.header("If-None-Match", e);
    }
    let mut resp = r.call().unwrap();
    let st = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (
        st,
        resp.body_mut().read_to_string().unwrap_or_default(),
        etag,
    )
}

fn origin(host: &str) -> Origin {
    Origin {
        host_id: host.into(),
        hostname: format!("{host}.corp"),
    }
}

/// A chained batch of `events` for `host` after `n` events sent before.
fn send(
    s: &Server,
    token: &str,
    host: &str,
    sent: &mut (u64, String),
    kinds: Vec<interdict_event::Event>,
) {
    let mut evs = kinds;
    for e in &mut evs {
        e.host_id = host.into();
        e.hostname = format!("{host}.corp");
        sent.0 += 1;
        e.seq = Some(sent.0);
        e.prev_hash = Some(sent.1.clone());
        sent.1 = e.record_hash();
    }
    ingest(s, token, &evs);
}

fn start() -> (u64, String) {
    (0, interdict_event::GENESIS_HASH.to_string())
}

fn heartbeat(host: &str, bundle: Option<u64>) -> interdict_event::Event {
    let mut e = origin(host).event(EventKind::Heartbeat);
    e.message = Some(
        json!({"version": "0.1.0", "mode": "enforce", "policy_source": if bundle.is_some() { "bundle" } else { "file" }, "policy_bundle": bundle})
            .to_string(),
    );
    e
}

fn learned(host: &str, rule: &str, digest: &str) -> interdict_event::Event {
    let mut e = origin(host).event(EventKind::HashLearned);
    e.sensor = Some("learner".into());
    e.rule = Some(RuleRef {
        id: rule.into(),
        name: "Tool".into(),
        risk: "high".into(),
        action: "block".into(),
        selector: "path".into(),
        pattern: "/opt/tool/*".into(),
        matched: "/opt/tool/x".into(),
    });
    e.file = Some(FileRef {
        path: "/opt/tool/x".into(),
        sha256: Some(digest.into()),
        size: Some(5000),
    });
    e.message = Some(format!(
        "learned for rule `{rule}` from a file its path selector matched (install)"
    ));
    e
}

fn requested(host: &str, id: &str, user: &str, days: u64) -> interdict_event::Event {
    let mut e = origin(host).event(EventKind::ExceptionRequested);
    e.rule = Some(RuleRef {
        id: "tool".into(),
        name: "Tool".into(),
        risk: "high".into(),
        action: "block".into(),
        selector: String::new(),
        pattern: String::new(),
        matched: String::new(),
    });
    e.process = Some(ProcessRef {
        pid: 42,
        uid: Some(1001),
        user: Some(user.into()),
        ..ProcessRef::default()
    });
    e.message = Some(json!({"request_id": id, "days": days, "reason": "vendor demo"}).to_string());
    e
}

fn issue_15_bundles_are_published_in_growing_versions_and_fetched_conditionally_per_host(
    backend: Backend,
) {
    let s = Server::start_fleet(backend, keys());
    let it = seeded(1);
    let store = s.store();
    let v1 = bundle(1, POLICY, &it);
    store.publish_bundle(&v1, &[]).unwrap();
    // Versions only grow; what is not a bundle is refused.
    let e = store
        .publish_bundle(&bundle(1, POLICY, &it), &[])
        .unwrap_err();
    assert!(e.to_string().contains("not higher than version 1"), "{e}");
    assert!(store.publish_bundle("{\"nope\": 1}", &[]).is_err());
    let mut tampered: Envelope = serde_json::from_str(&bundle(5, POLICY, &it)).unwrap();
    tampered.format = EXCEPTION_FORMAT.into();
    assert!(store
        .publish_bundle(&serde_json::to_string(&tampered).unwrap(), &[])
        .is_err());
    // A canary group gets version 2 first.
    let v2 = bundle(
        2,
        &POLICY.replace("version = \"1\"", "version = \"2\""),
        &it,
    );
    store
        .publish_bundle(&v2, &["canary-*".to_string()])
        .unwrap();
    let h1 = enroll(&s, "h1");
    let c1 = enroll(&s, "canary-1");
    let url = format!("{}/v1/policy", s.url);
    let (st, body, etag) = fetch(&url, Some(&h1), None);
    assert_eq!(
        (st, body.as_str(), etag.as_deref()),
        (200, v1.as_str(), Some("\"1\""))
    );
    let (st, body, _) = fetch(&url, Some(&c1), None);
    assert_eq!((st, body), (200, v2.clone()));
    // Conditional: nothing when the host has that version.
    assert_eq!(fetch(&url, Some(&h1), Some("\"1\"")).0, 304);
    assert_eq!(fetch(&format!("{url}?have=2"), Some(&c1), None).0, 304);
    // A host that has a higher version than the one meant for it is served that one all the
    // same: its agent refuses it, which is how a rolled-back collector shows up.
    assert_eq!(fetch(&format!("{url}?have=7"), Some(&h1), None).0, 200);
    // Tokens: agents only.
    let reviewer = s.reviewer();
    assert_eq!(fetch(&url, Some(&reviewer), None).0, 403);
    assert_eq!(fetch(&url, None, None).0, 401);
    assert_eq!(fetch(&format!("{url}?have=x"), Some(&h1), None).0, 400);
    // The fleet view: which bundle each host enforces, which it should, who is behind.
    let (mut a, mut b) = (start(), start());
    send(&s, &h1, "h1", &mut a, vec![heartbeat("h1", Some(1))]);
    send(
        &s,
        &c1,
        "canary-1",
        &mut b,
        vec![heartbeat("canary-1", Some(1))],
    );
    let (st, body, _, _) = get(&format!("{}/v1/hosts", s.url), Some(&reviewer));
    assert_eq!(st, 200, "{body}");
    let hosts: Vec<Value> = serde_json::from_str(&body).unwrap();
    let row = |h: &str| hosts.iter().find(|r| r["host_id"] == h).unwrap().clone();
    assert_eq!(row("h1")["policy_bundle"], 1);
    assert_eq!(row("h1")["policy_bundle_target"], 1);
    assert_eq!(row("h1")["behind"], false);
    assert_eq!(row("canary-1")["policy_bundle_target"], 2);
    assert_eq!(row("canary-1")["behind"], true, "{hosts:?}");
    let (st, body, _, _) = get(&format!("{}/v1/bundles", s.url), Some(&reviewer));
    assert_eq!(st, 200);
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["version"], 2);
    assert_eq!(list[0]["hosts"], json!(["canary-*"]));
    assert_eq!(
        fetch(&format!("{}/v1/bundles", s.url), Some(&h1), None).0,
        403
    );
}

fn issue_15_learned_digests_wait_for_a_reviewer_and_approvals_are_signed_with_the_hash_list_key(
    backend: Backend,
) {
    let s = Server::start_fleet(backend, keys());
    let reviewer = s.reviewer();
    let (h1, h2) = (enroll(&s, "h1"), enroll(&s, "h2"));
    let d = "ab".repeat(32);
    let (mut a, mut b) = (start(), start());
    send(&s, &h1, "h1", &mut a, vec![learned("h1", "tool", &d)]);
    // Resent (same event ids and bytes): stored once, recorded once.
    let url = format!("{}/v1/learned", s.url);
    let pending = |q: &str| -> Vec<Value> {
        let (st, body, _, _) = get(&format!("{url}{q}"), Some(&reviewer));
        assert_eq!(st, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let rows = pending("?status=pending");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["sha256"], d.as_str());
    assert_eq!(rows[0]["rule_id"], "tool");
    assert_eq!(rows[0]["size"], 5000);
    assert_eq!(rows[0]["first_host"], "h1");
    assert_eq!(rows[0]["source"], "install");
    assert_eq!(rows[0]["hosts"], 1);
    send(&s, &h2, "h2", &mut b, vec![learned("h2", "tool", &d)]);
    assert_eq!(pending("")[0]["hosts"], 2, "a second host learned it too");
    assert_eq!(
        fetch(&format!("{url}?status=bogus"), Some(&reviewer), None).0,
        400
    );
    // Before approval nothing reaches any host.
    let approvals = format!("{}/v1/approvals", s.url);
    let (st, body, etag) = fetch(&approvals, Some(&h2), None);
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["hash_list"].is_null(), "{v}");
    assert_eq!(fetch(&approvals, Some(&h2), etag.as_deref()).0, 304);
    // Agents cannot decide; reviewers decide; bad and unknown digests are said so.
    let decide = |token: &str, digest: &str, what: &str| {
        post(
            &format!("{url}/{digest}/{what}"),
            Some(token),
            &json!({}).to_string(),
        )
    };
    assert_eq!(decide(&h1, &d, "approve").0, 403);
    assert_eq!(decide(&reviewer, "xyz", "approve").0, 400);
    assert_eq!(decide(&reviewer, &"cd".repeat(32), "approve").0, 404);
    assert_eq!(decide(&reviewer, &d, "maybe").0, 404);
    let (st, v) = decide(&reviewer, &d, "approve");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v[0]["status"], "approved");
    assert_eq!(v[0]["decided_by"], "sec-team");
    // The approval reaches agents signed with the hash-list key, and only that key.
    let (st, body, etag2) = fetch(&approvals, Some(&h2), etag.as_deref());
    assert_eq!(st, 200, "a decision changes the ETag");
    assert_ne!(etag, etag2);
    let v: Value = serde_json::from_str(&body).unwrap();
    let env: Envelope = serde_json::from_value(v["hash_list"].clone()).unwrap();
    let (list, signer) = HashList::open(&env, &[keys().hash_list.public()]).unwrap();
    assert_eq!(signer, keys().hash_list.public());
    assert_eq!(list.seq, 1);
    assert_eq!(list.entries.len(), 1);
    assert_eq!(list.entries[0].sha256, d);
    assert_eq!(list.entries[0].rule, "tool");
    assert_eq!(list.entries[0].size, 5000);
    assert!(HashList::open(&env, &[keys().exceptions.public()]).is_err());
    // What is approved cannot be taken back through the collector.
    let (st, v) = decide(&reviewer, &d, "reject");
    assert_eq!(st, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("allow"), "{v}");
    // Rejected digests never reach anyone.
    let e = "ef".repeat(32);
    send(&s, &h1, "h1", &mut a, vec![learned("h1", "tool", &e)]);
    assert_eq!(decide(&reviewer, &e, "reject").0, 200);
    let (_, body, _) = fetch(&approvals, Some(&h1), None);
    let v: Value = serde_json::from_str(&body).unwrap();
    let env: Envelope = serde_json::from_value(v["hash_list"].clone()).unwrap();
    let (list, _) = HashList::open(&env, &[keys().hash_list.public()]).unwrap();
    assert!(list.entries.iter().all(|x| x.sha256 != e));
    assert_eq!(pending("?status=rejected").len(), 1);
}

fn issue_15_exceptions_are_decided_and_signed_for_one_user_one_rule_one_host(backend: Backend) {
    let s = Server::start_fleet(backend, keys());
    let reviewer = s.reviewer();
    let (h1, h2) = (enroll(&s, "h1"), enroll(&s, "h2"));
    let mut a = start();
    send(
        &s,
        &h1,
        "h1",
        &mut a,
        vec![
            requested("h1", "req-1", "ann", 1),
            requested("h1", "req-2", "bob", 1),
            requested("h1", "req-3", "cy", 3),
        ],
    );
    let url = format!("{}/v1/exceptions", s.url);
    let (st, body, _, _) = get(&format!("{url}?status=pending"), Some(&reviewer));
    assert_eq!(st, 200, "{body}");
    let rows: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let ann = rows.iter().find(|r| r["id"] == "req-1").unwrap();
    assert_eq!(ann["host_id"], "h1", "the host is the token's");
    assert_eq!(ann["user"], "ann");
    assert_eq!(ann["uid"], 1001);
    assert_eq!(ann["reason"], "vendor demo");
    let decide = |token: &str, id: &str, what: &str, body: Value| {
        post(
            &format!("{url}/{id}/{what}"),
            Some(token),
            &body.to_string(),
        )
    };
    assert_eq!(decide(&h1, "req-1", "approve", json!({})).0, 403);
    assert_eq!(decide(&reviewer, "nope", "approve", json!({})).0, 404);
    assert_eq!(
        decide(
            &reviewer,
            "req-1",
            "approve",
            json!({"days": 1, "seconds": 5})
        )
        .0,
        400
    );
    let (st, v) = decide(&reviewer, "req-1", "approve", json!({"seconds": 60}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "approved");
    assert_eq!(
        v["until"].as_i64().unwrap() - v["from"].as_i64().unwrap(),
        60
    );
    assert_eq!(
        decide(&reviewer, "req-1", "approve", json!({})).0,
        409,
        "decided once"
    );
    let (st, v) = decide(
        &reviewer,
        "req-2",
        "deny",
        json!({"note": "use the approved tool"}),
    );
    assert_eq!(st, 200, "{v}");
    // h1 gets its exception, signed with the exception key, for one user, rule and host; and
    // the denial. h2 gets neither.
    let approvals = |t: &str| -> Value {
        let (st, body, _) = fetch(&format!("{}/v1/approvals", s.url), Some(t), None);
        assert_eq!(st, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let v = approvals(&h1);
    let envs: Vec<Envelope> = serde_json::from_value(v["exceptions"].clone()).unwrap();
    assert_eq!(envs.len(), 1);
    let (g, _) = ExceptionGrant::open(&envs[0], &[keys().exceptions.public()]).unwrap();
    assert_eq!(
        (
            g.host_id.as_str(),
            g.user.as_str(),
            g.rule.as_str(),
            g.approved_by.as_str()
        ),
        ("h1", "ann", "tool", "sec-team")
    );
    assert!(ExceptionGrant::open(&envs[0], &[keys().hash_list.public()]).is_err());
    assert_eq!(v["denied"][0]["id"], "req-2");
    assert_eq!(v["denied"][0]["note"], "use the approved tool");
    let v = approvals(&h2);
    assert_eq!(v["exceptions"], json!([]));
    assert_eq!(v["denied"], json!([]));
    // With a policy published for the host, the collector refuses what its agents would.
    let policy = POLICY.replace("EXKEY", &keys().exceptions.public().to_string());
    s.store()
        .publish_bundle(&bundle(1, &policy, &seeded(1)), &[])
        .unwrap();
    let (st, v) = decide(&reviewer, "req-3", "approve", json!({}));
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("longer than the policy allows"),
        "{v}"
    );
    let (st, v) = decide(&reviewer, "req-3", "approve", json!({"days": 1}));
    assert_eq!(st, 200, "{v}");
    let _ = PublicKey::from_hex(&keys().exceptions.public().to_string()).unwrap();
}

fn issue_15_every_fleet_change_is_audited_with_who_what_and_when_and_refusals_change_nothing(
    backend: Backend,
) {
    let s = Server::start_fleet(backend, keys());
    let reviewer = s.reviewer();
    let h1 = enroll(&s, "h1");
    let url = format!("{}/v1/fleet/audit", s.url);
    let audit = |q: &str| -> Vec<Value> {
        let (st, body, _, _) = get(&format!("{url}{q}"), Some(&reviewer));
        assert_eq!(st, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    assert_eq!(audit(""), Vec::<Value>::new());
    // A publication, a digest learned and a request by a host, decisions by a reviewer.
    s.store()
        .publish_bundle_by(
            &bundle(1, POLICY, &seeded(1)),
            &["canary-*".into()],
            "it-admin",
        )
        .unwrap();
    let d = "ab".repeat(32);
    let mut a = start();
    send(
        &s,
        &h1,
        "h1",
        &mut a,
        vec![
            learned("h1", "tool", &d),
            requested("h1", "req-1", "ann", 1),
        ],
    );
    let decide = |path: &str, body: Value| {
        post(
            &format!("{}/v1/{path}", s.url),
            Some(&reviewer),
            &body.to_string(),
        )
    };
    assert_eq!(decide(&format!("learned/{d}/approve"), json!({})).0, 200);
    assert_eq!(
        decide("exceptions/req-1/deny", json!({"note": "no"})).0,
        200
    );
    let rows = audit("");
    let got: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["actor"].as_str().unwrap(),
                r["subject"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("bundle_published", "local:it-admin", "1"),
            ("learned_pending", "host:h1", &*format!("tool/{d}")),
            ("exception_requested", "host:h1", "req-1"),
            (
                "learned_approved",
                "reviewer:sec-team",
                &*format!("tool/{d}")
            ),
            ("hash_list_signed", "reviewer:sec-team", "1"),
            ("exception_denied", "reviewer:sec-team", "req-1"),
        ],
        "{rows:#?}"
    );
    let detail = |i: usize| rows[i]["detail"].as_str().unwrap().to_string();
    assert!(
        detail(0).contains("hosts matching canary-*"),
        "{}",
        detail(0)
    );
    assert!(
        detail(0).contains(&seeded(1).public().to_string()),
        "the signer is named: {}",
        detail(0)
    );
    assert!(detail(2).contains("user ann"), "{}", detail(2));
    assert!(
        detail(4).contains(&keys().hash_list.public().to_string()),
        "{}",
        detail(4)
    );
    let seqs: Vec<i64> = rows.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(rows.iter().all(|r| r["at_ms"].as_i64().unwrap() > 0));
    // Refused changes change nothing and leave no row: an older bundle, a decision taken
    // already, a reviewer taking back an approved digest, a resent batch.
    assert!(s
        .store()
        .publish_bundle(&bundle(1, POLICY, &seeded(1)), &[])
        .is_err());
    assert_eq!(
        decide("exceptions/req-1/approve", json!({})).0,
        409,
        "decided once"
    );
    assert_eq!(decide(&format!("learned/{d}/reject"), json!({})).0, 409);
    let mut again = start();
    send(
        &s,
        &h1,
        "h1",
        &mut again,
        vec![
            learned("h1", "tool", &d),
            requested("h1", "req-1", "ann", 1),
        ],
    );
    assert_eq!(audit("").len(), rows.len(), "{:#?}", audit(""));
    // Paged by revision.
    let after = audit(&format!("?after={}", seqs[2]));
    assert_eq!(after.len(), 3);
    assert_eq!(after[0]["seq"], seqs[3]);
    assert_eq!(audit(&format!("?after={}&limit=1", seqs[0])).len(), 1);
    // Reviewers only; bad queries are said so.
    let (st, _, _, _) = get(&url, Some(&h1));
    assert_eq!(st, 403);
    let (st, _, _, _) = get(&url, None);
    assert_eq!(st, 401);
    let (st, _, _, _) = get(&format!("{url}?after=x"), Some(&reviewer));
    assert_eq!(st, 400);
    let (st, _, _, _) = get(&format!("{url}?bogus=1"), Some(&reviewer));
    assert_eq!(st, 400);
}
