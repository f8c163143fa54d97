//! The collector over real HTTP on loopback with a real SQLite file and a private PostgreSQL
//! server: enrollment, authenticated ingestion, forged hosts, roles, malformed input,
//! idempotence, chain findings and queries; and (issue 13) the adversary's attempts: records
//! edited or deleted in the database, a rewritten chain, a tail that misses late events, ids twice
//! in a batch, oversized fields, floods of requests and events, secrets at rest, retention.

#[path = "support/common.rs"]
mod common;
use common::*;

use interdict_collector::{Config, Incoming, Store};
use interdict_event::{Event, EventKind, GENESIS_HASH};
use serde_json::{json, Value};

both!(
    enrollment_needs_the_secret_and_tokens_write_only_as_their_own_host,
    reviewers_read_and_cannot_write_agents_write_and_cannot_read,
    malformed_oversized_and_incomplete_batches_get_4xx_and_store_nothing,
    resent_batches_are_stored_once_and_gaps_and_breaks_become_findings,
    reviewers_query_by_host_and_rule_page_by_page_in_every_format,
    issue_13_records_edited_or_deleted_in_the_database_are_named_by_verification,
    issue_13_a_checkpoint_exported_earlier_catches_a_rewritten_chain,
    issue_13_a_heartbeat_claim_blames_the_collector_for_a_removed_tail,
    issue_13_the_tail_cursor_shows_late_events_and_future_times_are_refused,
    issue_13_a_batch_with_one_id_twice_is_refused_and_ids_are_per_host,
    issue_13_a_gap_filled_in_later_is_resolved_with_the_time,
    issue_13_unknown_fields_are_kept_and_the_chain_still_links,
    issue_13_fields_events_rates_quotas_and_pages_are_bounded,
    issue_13_enroll_secret_rotation_revocation_and_host_deletion,
    issue_13_retention_prunes_under_a_signed_cut_and_a_faked_cut_is_caught,
    issue_13_values_from_hosts_are_escaped_in_the_report,
);

fn enrollment_needs_the_secret_and_tokens_write_only_as_their_own_host(backend: Backend) {
    let s = Server::start(backend);
    let (st, _) = post(
        &format!("{}/v1/enroll", s.url),
        None,
        &json!({"secret": "wrong", "host_id": "h1", "hostname": "h1"}).to_string(),
    );
    assert_eq!(st, 401);
    let t1 = enroll(&s, "h1");
    let _t2 = enroll(&s, "h2");
    let url = format!("{}/v1/events", s.url);
    // Host h1 sending events that claim to be h2's: refused whole, nothing stored, counted.
    let mut evs = chain("h1", 1, GENESIS_HASH, 2);
    evs.extend(chain("h2", 1, GENESIS_HASH, 1));
    let (st, _) = post(&url, Some(&t1), &batch(&evs));
    assert_eq!(st, 403);
    let store = s.store();
    assert_eq!(
        store.event_count("h1").unwrap() + store.event_count("h2").unwrap(),
        0
    );
    assert!(store
        .counters()
        .unwrap()
        .contains(&("rejected_forged_host".into(), 1)));
    // Missing and wrong tokens.
    let good = batch(&chain("h1", 1, GENESIS_HASH, 2));
    assert_eq!(post(&url, None, &good).0, 401);
    assert_eq!(post(&url, Some("not-a-token"), &good).0, 401);
    assert_eq!(store.event_count("h1").unwrap(), 0);
    // The right token.
    let (st, v) = post(&url, Some(&t1), &good);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["stored"], 2);
    assert_eq!(v["acked_seq"], 2);
    // Holding the enroll secret is not enough to take over an enrolled host.
    let again = json!({"secret": s.secret, "host_id": "h1", "hostname": "evil"}).to_string();
    let (st, _) = post(&format!("{}/v1/enroll", s.url), None, &again);
    assert_eq!(st, 409);
    let next = batch(&chain(
        "h1",
        3,
        &chain("h1", 1, GENESIS_HASH, 2)[1].record_hash(),
        1,
    ));
    assert_eq!(
        post(&url, Some(&t1), &next).0,
        200,
        "the old token still works"
    );
    // IT resets the host (a reinstalled laptop): it enrolls again, the old token is dead.
    assert!(store.reset_host("h1").unwrap());
    let (st, v) = post(&format!("{}/v1/enroll", s.url), None, &again);
    assert_eq!(st, 200, "{v}");
    assert_eq!(post(&url, Some(&t1), &next).0, 401);
}

fn reviewers_read_and_cannot_write_agents_write_and_cannot_read(backend: Backend) {
    let s = Server::start(backend);
    let agent = enroll(&s, "h1");
    let reviewer = s.reviewer();
    let url = format!("{}/v1/events", s.url);
    let evs = batch(&chain("h1", 1, GENESIS_HASH, 3));
    assert_eq!(post(&url, Some(&reviewer), &evs).0, 403);
    assert_eq!(s.store().event_count("h1").unwrap(), 0);
    assert_eq!(post(&url, Some(&agent), &evs).0, 200);
    for path in [
        "/v1/events",
        "/v1/hosts",
        "/v1/chains",
        "/v1/checkpoint",
        "/v1/verify",
    ] {
        assert_eq!(
            get(&format!("{}{path}", s.url), Some(&agent)).0,
            403,
            "{path}"
        );
        assert_eq!(get(&format!("{}{path}", s.url), None).0, 401, "{path}");
    }
    let (st, body, _, _) = get(&url, Some(&reviewer));
    assert_eq!(st, 200);
    assert_eq!(body.lines().count(), 3);
}

fn malformed_oversized_and_incomplete_batches_get_4xx_and_store_nothing(backend: Backend) {
    let s = Server::start(backend);
    let t = enroll(&s, "h1");
    let url = format!("{}/v1/events", s.url);
    for bad in [
        "{",
        "[]",
        "{\"events\": 3}",
        "{\"events\": [{\"id\": 1}]}",
        "{\"events\": [], \"extra\": 1}",
        "\u{0}\u{1}binary",
    ] {
        let (st, v) = post(&url, Some(&t), bad);
        assert!((400..500).contains(&st), "{bad:?}: {st} {v}");
    }
    // Events without their chain fields, or with a prev_hash that is not a hash.
    let mut evs = chain("h1", 1, GENESIS_HASH, 1);
    evs[0].seq = None;
    assert_eq!(post(&url, Some(&t), &batch(&evs)).0, 422);
    let mut evs = chain("h1", 1, GENESIS_HASH, 1);
    evs[0].time = "yesterday".into();
    assert_eq!(post(&url, Some(&t), &batch(&evs)).0, 422);
    let mut evs = chain("h1", 1, GENESIS_HASH, 1);
    evs[0].prev_hash = Some("z".repeat(64));
    assert_eq!(
        post(&url, Some(&t), &batch(&evs)).0,
        422,
        "prev_hash not hex"
    );
    // An event spread over lines: not one record.
    let line = chain("h1", 1, GENESIS_HASH, 1)[0]
        .to_json_line()
        .replacen(',', ",\n", 1);
    assert_eq!(
        post(&url, Some(&t), &format!("{{\"events\":[{line}]}}")).0,
        422
    );
    // Over the body limit.
    let huge = format!("{{\"events\": [], \"pad\": \"{}\"}}", "x".repeat(9 << 20));
    assert_eq!(
        post_raw(&s, Some(&t), huge.as_bytes()),
        413,
        "refused before it is read"
    );
    assert_eq!(s.store().event_count("h1").unwrap(), 0);
}

fn resent_batches_are_stored_once_and_gaps_and_breaks_become_findings(backend: Backend) {
    let s = Server::start(backend);
    let t = enroll(&s, "h1");
    let url = format!("{}/v1/events", s.url);
    let evs = chain("h1", 1, GENESIS_HASH, 10);
    assert_eq!(post(&url, Some(&t), &batch(&evs[..6])).1["stored"], 6);
    // At-least-once: the agent resends an overlapping batch.
    let (_, v) = post(&url, Some(&t), &batch(&evs[4..8]));
    assert_eq!(
        (v["stored"].as_u64(), v["duplicates"].as_u64()),
        (Some(2), Some(2))
    );
    // Record 9 never arrives: a gap.
    let (_, v) = post(&url, Some(&t), &batch(&evs[9..10]));
    assert_eq!(v["acked_seq"], 10);
    assert_eq!(v["findings"], 1);
    // A record that does not link to the one before: a break.
    let mut forged = chain("h1", 11, &"f".repeat(64), 1);
    forged[0].message = Some("rewritten history".into());
    rechain(&mut forged, &"f".repeat(64));
    assert_eq!(post(&url, Some(&t), &batch(&forged)).1["findings"], 1);
    let reviewer = s.reviewer();
    let v = server_verify(&s, &reviewer);
    let h = &v["hosts"][0];
    assert_eq!(h["records"], 10);
    assert_eq!(h["intact"], false);
    let f = h["findings"].as_array().unwrap();
    assert_eq!(f.len(), 2, "{v:#}");
    assert_eq!(
        (
            f[0]["kind"].as_str(),
            f[0]["from_seq"].as_u64(),
            f[0]["to_seq"].as_u64()
        ),
        (Some("gap"), Some(9), Some(9))
    );
    assert_eq!(
        (f[1]["kind"].as_str(), f[1]["from_seq"].as_u64()),
        (Some("break"), Some(11))
    );
    // The re-derivation finds the same: record 9 missing, record 11 not linking (as it came).
    let kinds: Vec<(&str, u64)> = h["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["kind"].as_str().unwrap(), p["from_seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(kinds, [("gap", 9), ("break", 11)], "{v:#}");
    // The host's spool is wiped and starts over: a restart, then a normal chain again; and an
    // event that reuses a number already taken.
    let fresh = chain("h1", 1, GENESIS_HASH, 3);
    let (_, v) = post(&url, Some(&t), &batch(&fresh));
    assert_eq!(
        (v["findings"].as_u64(), v["acked_seq"].as_u64()),
        (Some(1), Some(3))
    );
    let (_, v) = post(&url, Some(&t), &batch(&chain("h1", 2, GENESIS_HASH, 1)));
    assert_eq!(v["findings"], 1);
    let kinds: Vec<String> = s
        .store()
        .findings()
        .unwrap()
        .into_iter()
        .map(|f| f.kind)
        .collect();
    assert_eq!(kinds, ["gap", "break", "restart", "reused"]);
    let v = client_verify(&s, &reviewer, &Default::default());
    let p = problems(&v);
    assert!(p.contains(&("reused".into(), 0, 2, 2)), "{p:?}");
    assert!(v.render().contains("started over 1 time"), "{}", v.render());
}

fn reviewers_query_by_host_and_rule_page_by_page_in_every_format(backend: Backend) {
    let s = Server::start(backend);
    let t1 = enroll(&s, "h1");
    let t2 = enroll(&s, "h2");
    ingest(&s, &t1, &chain("h1", 1, GENESIS_HASH, 25));
    ingest(&s, &t2, &chain("h2", 1, GENESIS_HASH, 5));
    let url = format!("{}/v1/events", s.url);
    let r = s.reviewer();
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let (st, body, next, _) = get(
            &format!("{url}?host=h1&rule=claude-code&limit=5{after}"),
            Some(&r),
        );
        assert_eq!(st, 200);
        for l in body.lines() {
            let e: Value = serde_json::from_str(l).unwrap();
            assert_eq!(
                (e["host_id"].as_str(), e["rule"]["id"].as_str()),
                (Some("h1"), Some("claude-code"))
            );
            ids.push(e["id"].as_str().unwrap().to_string());
        }
        match next {
            Some(c) => after = format!("&after={c}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 13, "the even ones of 25");
    let mut uniq = ids.clone();
    uniq.dedup();
    assert_eq!(uniq.len(), 13, "no event on two pages");
    let (_, ocsf, _, _) = get(&format!("{url}?host=h2&format=ocsf&limit=1"), Some(&r));
    let v: Value = serde_json::from_str(ocsf.lines().next().unwrap()).unwrap();
    assert_eq!(
        (v["class_uid"].as_u64(), v["disposition_id"].as_u64()),
        (Some(1007), Some(2))
    );
    assert_eq!(v["device"]["uid"], "h2");
    let (_, ecs, _, _) = get(&format!("{url}?host=h2&format=ecs&limit=1"), Some(&r));
    let v: Value = serde_json::from_str(ecs.lines().next().unwrap()).unwrap();
    assert_eq!(v["host"]["id"], "h2");
    let (_, blocked, _, _) = get(
        &format!("{url}?host=h2&action=block&outcome=denied"),
        Some(&r),
    );
    assert_eq!(blocked.lines().count(), 5);
    let (_, none, _, _) = get(&format!("{url}?host=h2&action=kill"), Some(&r));
    assert_eq!(none.lines().count(), 0);
    assert_eq!(get(&format!("{url}?format=xml"), Some(&r)).0, 400);
    assert_eq!(get(&format!("{url}?since=last-tuesday"), Some(&r)).0, 400);
    assert_eq!(
        get(&format!("{url}?after=1700000000000/abc"), Some(&r)).0,
        400,
        "a malformed cursor is refused, not ignored"
    );
    let (st, body, _, _) = get(
        &format!("{url}?host=h2&since=2000-01-01&until=2999-01-01T00:00:00Z"),
        Some(&r),
    );
    assert_eq!((st, body.lines().count()), (200, 5));
    let (_, body, _, _) = get(&format!("{url}?host=h2&until=2000-01-01"), Some(&r));
    assert_eq!(body.lines().count(), 0);
    assert_eq!(get(&format!("{url}?nonsense=1"), Some(&r)).0, 400);
    let (_, hosts, _, _) = get(&format!("{}/v1/hosts", s.url), Some(&r));
    let hosts: Value = serde_json::from_str(&hosts).unwrap();
    assert_eq!(hosts.as_array().unwrap().len(), 2);
    assert_eq!(hosts[0]["silent"], false);
}

/// h1 with 10 chained events, a reviewer token, and the verification that finds it intact.
fn ten(backend: Backend) -> (Server, String, String, Vec<Event>) {
    let s = Server::start(backend);
    let t = enroll(&s, "h1");
    let evs = chain("h1", 1, GENESIS_HASH, 10);
    ingest(&s, &t, &evs);
    let r = s.reviewer();
    let v = client_verify(&s, &r, &Default::default());
    assert!(v.ok(), "{}", v.render());
    (s, t, r, evs)
}

fn issue_13_records_edited_or_deleted_in_the_database_are_named_by_verification(backend: Backend) {
    // One byte of a middle record: the next link breaks (the old check read "intact").
    let (s, t, r, evs) = ten(backend);
    s.tamper(
        "UPDATE events SET raw = REPLACE(raw, 'claude-code', 'claude-cod3') WHERE host_id = 'h1' AND seq = 5",
        &[],
    );
    for v in [
        client_verify(&s, &r, &Default::default()),
        client_verify(&s, &r, &Default::default()),
    ] {
        assert!(!v.ok());
        assert!(
            problems(&v).contains(&("break".into(), 1, 6, 6)),
            "{}",
            v.render()
        );
        assert!(v.render().contains("BROKEN  h1"), "{}", v.render());
    }
    let sv = server_verify(&s, &r);
    assert_eq!(sv["hosts"][0]["intact"], false, "{sv:#}");
    assert_eq!(sv["hosts"][0]["problems"][0]["from_seq"], 6, "{sv:#}");
    // Still broken after later events arrive.
    let next = chain("h1", 11, &evs[9].record_hash(), 2);
    ingest(&s, &t, &next);
    assert!(!client_verify(&s, &r, &Default::default()).ok());

    // The last record edited: named by the acknowledged head.
    let (s, _, r, _) = ten(backend);
    s.tamper(
        "UPDATE events SET raw = REPLACE(raw, '\"denied\"', '\"reported\"') WHERE host_id = 'h1' AND seq = 10",
        &[],
    );
    let v = client_verify(&s, &r, &Default::default());
    assert_eq!(
        problems(&v),
        [("altered".into(), 1, 10, 10)],
        "{}",
        v.render()
    );
    assert!(!server_verify(&s, &r)["hosts"][0]["intact"]
        .as_bool()
        .unwrap());

    // The tail deleted: removed at the collector, not a gap of the agent; and when the agent's
    // next record arrives it is blamed on the collector there too.
    let (s, t, r, evs) = ten(backend);
    assert_eq!(
        s.tamper("DELETE FROM events WHERE host_id = 'h1' AND seq >= 9", &[]),
        2
    );
    let v = client_verify(&s, &r, &Default::default());
    assert!(
        problems(&v).contains(&("removed".into(), 1, 10, 10)),
        "{}",
        v.render()
    );
    let (_, ans) = post(
        &format!("{}/v1/events", s.url),
        Some(&t),
        &batch(&chain("h1", 11, &evs[9].record_hash(), 1)),
    );
    assert_eq!(ans["findings"], 1, "{ans}");
    let f = s.store().findings().unwrap();
    assert_eq!(f[0].kind, "removed", "{f:?}");
    assert!(f[0].detail.contains("removed at the collector"), "{f:?}");

    // A middle record deleted: a gap at its number.
    let (s, _, r, _) = ten(backend);
    s.tamper("DELETE FROM events WHERE host_id = 'h1' AND seq = 4", &[]);
    let v = client_verify(&s, &r, &Default::default());
    assert_eq!(problems(&v), [("gap".into(), 1, 4, 4)], "{}", v.render());
}

fn issue_13_a_checkpoint_exported_earlier_catches_a_rewritten_chain(backend: Backend) {
    let (s, t, r, evs) = ten(backend);
    let (st, cp, _, _) = get(&format!("{}/v1/checkpoint", s.url), Some(&r));
    assert_eq!(st, 200, "{cp}");
    let cp: interdict_chain::Signed = serde_json::from_str(&cp).unwrap();
    let c = interdict_chain::open_checkpoint(&cp, Some(&s.public_key())).unwrap();
    assert_eq!((c.tree_size, c.leaves[0].seq), (1, 10));
    let opts = interdict_chain::remote::Options {
        checkpoints: vec![("cp.json".into(), cp.clone())],
        key: Some(s.public_key()),
    };
    ingest(&s, &t, &chain("h1", 11, &evs[9].record_hash(), 2));
    assert!(
        client_verify(&s, &r, &opts).ok(),
        "later records do not spoil it"
    );
    // Someone with the database rewrites history consistently: record 3 changed, every later
    // record re-chained, the stored head moved to match. Only the checkpoint can tell.
    let mut forged = chain("h1", 1, GENESIS_HASH, 12);
    for (f, e) in forged.iter_mut().zip(&evs) {
        f.id = e.id.clone();
        f.time = e.time.clone();
    }
    forged[2].message = Some("nothing to see".into());
    rechain(&mut forged, GENESIS_HASH);
    for f in &forged {
        s.tamper(
            "UPDATE events SET raw = ?1 WHERE host_id = 'h1' AND CAST(seq AS TEXT) = ?2",
            &[&f.to_json_line(), &f.seq.unwrap().to_string()],
        );
    }
    s.tamper(
        "UPDATE chains SET head_hash = ?1 WHERE host_id = 'h1'",
        &[&forged[11].record_hash()],
    );
    let v = client_verify(&s, &r, &Default::default());
    assert!(
        v.ok(),
        "without a checkpoint the rewrite is consistent: {}",
        v.render()
    );
    let v = client_verify(&s, &r, &opts);
    assert!(!v.ok());
    assert!(
        problems(&v).contains(&("altered".into(), 1, 10, 10)),
        "{}",
        v.render()
    );
    assert!(
        v.render().contains("checkpoint cp.json holds it"),
        "{}",
        v.render()
    );
    // A checkpoint forged with another key does not count.
    let other = interdict_collector::keys::generate();
    let mut body: Value = serde_json::from_str(&cp.body).unwrap();
    body["leaves"][0]["seq"] = json!(3);
    let fake = interdict_chain::sign(&other, body.to_string());
    let v = client_verify(
        &s,
        &r,
        &interdict_chain::remote::Options {
            checkpoints: vec![("fake.json".into(), fake)],
            key: Some(s.public_key()),
        },
    );
    assert!(!v.ok());
    assert!(
        v.render().contains("fake.json: signature"),
        "{}",
        v.render()
    );
}

fn heartbeat(host: &str, seq: u64, prev: &str, acked: (u64, &str)) -> Event {
    let mut e = interdict_event::Origin {
        host_id: host.into(),
        hostname: format!("{host}.corp"),
    }
    .event(EventKind::Heartbeat);
    e.message = Some(
        json!({"version": "0.1.0", "mode": "enforce", "acked": {"seq": acked.0, "hash": acked.1}})
            .to_string(),
    );
    e.seq = Some(seq);
    e.prev_hash = Some(prev.into());
    e
}

fn issue_13_a_heartbeat_claim_blames_the_collector_for_a_removed_tail(backend: Backend) {
    let (s, t, r, evs) = ten(backend);
    // The adversary deletes records 9 and 10 and rewinds the host's head to match.
    s.tamper("DELETE FROM events WHERE host_id = 'h1' AND seq >= 9", &[]);
    s.tamper(
        "UPDATE chains SET head_seq = 8, head_hash = ?1 WHERE host_id = 'h1'",
        &[&evs[7].record_hash()],
    );
    let v = client_verify(&s, &r, &Default::default());
    assert!(
        v.ok(),
        "undetectable from the database alone: {}",
        v.render()
    );
    // The agent's next heartbeat says the collector acknowledged record 10 (with its hash).
    let hb = heartbeat("h1", 11, &evs[9].record_hash(), (10, &evs[9].record_hash()));
    let (_, ans) = post(&format!("{}/v1/events", s.url), Some(&t), &batch(&[hb]));
    assert!(ans["findings"].as_u64().unwrap() >= 1, "{ans}");
    let f = s.store().findings().unwrap();
    assert!(
        f.iter().any(|f| f.kind == "removed" && f.to_seq == 10),
        "{f:?}"
    );
    let v = client_verify(&s, &r, &Default::default());
    assert!(
        problems(&v).contains(&("removed".into(), 1, 10, 10)),
        "{}",
        v.render()
    );
    assert!(
        v.render().contains("heartbeat record 11 says"),
        "{}",
        v.render()
    );
}

fn issue_13_the_tail_cursor_shows_late_events_and_future_times_are_refused(backend: Backend) {
    let s = Server::start(backend);
    let (ta, tb) = (enroll(&s, "desk"), enroll(&s, "laptop"));
    let r = s.reviewer();
    let url = format!("{}/v1/events", s.url);
    ingest(&s, &ta, &chain("desk", 1, GENESIS_HASH, 3));
    let (_, body, _, cursor) = get(&url, Some(&r));
    assert_eq!(body.lines().count(), 3);
    let cursor = cursor.expect("X-Cursor");
    // The laptop was offline for a week: its event is dated then, shipped now.
    let mut late = chain("laptop", 1, GENESIS_HASH, 1);
    late[0].time = "2026-01-01T08:00:00.000Z".into();
    rechain(&mut late, GENESIS_HASH);
    ingest(&s, &tb, &late);
    let (_, body, _, _) = get(&format!("{url}?after={cursor}"), Some(&r));
    assert_eq!(body.lines().count(), 1, "the late event is shown: {body}");
    assert!(body.contains("laptop"));
    // A date far in the future is refused, so it cannot blind anyone; an hour ahead is fine.
    for (ahead_s, want) in [(25 * 3600, 422), (3600, 200)] {
        let mut e = chain(
            "desk",
            4,
            &chain("desk", 1, GENESIS_HASH, 3)[2].record_hash(),
            1,
        );
        e[0].time = interdict_event::rfc3339(
            std::time::SystemTime::now() + std::time::Duration::from_secs(ahead_s),
        );
        rechain(&mut e, &chain("desk", 1, GENESIS_HASH, 3)[2].record_hash());
        let (st, v) = post(&url, Some(&ta), &batch(&e));
        assert_eq!(st, want, "{ahead_s} s ahead: {v}");
    }
    let mut y = chain("laptop", 2, &late[0].record_hash(), 1);
    y[0].time = "9999-12-31T23:59:59.999Z".into();
    rechain(&mut y, &late[0].record_hash());
    assert_eq!(post(&url, Some(&tb), &batch(&y)).0, 422);
    // After everything, one more event from the desk still shows after the cursor.
    let (_, _, _, c2) = get(&format!("{url}?after={cursor}"), Some(&r));
    let mut e5 = chain("desk", 5, GENESIS_HASH, 1);
    e5[0].prev_hash = Some(GENESIS_HASH.into());
    ingest(&s, &ta, &e5);
    let (_, body, _, _) = get(&format!("{url}?after={}", c2.unwrap()), Some(&r));
    assert_eq!(body.lines().count(), 1, "{body}");
}

fn issue_13_a_batch_with_one_id_twice_is_refused_and_ids_are_per_host(backend: Backend) {
    let s = Server::start(backend);
    let (t1, t2) = (enroll(&s, "h1"), enroll(&s, "h2"));
    let url = format!("{}/v1/events", s.url);
    let mut evs = chain("h1", 1, GENESIS_HASH, 3);
    evs[2].id = evs[1].id.clone();
    rechain(&mut evs, GENESIS_HASH);
    let (st, v) = post(&url, Some(&t1), &batch(&evs));
    assert_eq!(st, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("twice"), "{v}");
    assert_eq!(s.store().event_count("h1").unwrap(), 0, "nothing stored");
    // The same id from another host is another event.
    let a = chain("h1", 1, GENESIS_HASH, 1);
    let mut b = chain("h2", 1, GENESIS_HASH, 1);
    b[0].id = a[0].id.clone();
    rechain(&mut b, GENESIS_HASH);
    ingest(&s, &t1, &a);
    assert_eq!(ingest(&s, &t2, &b)["stored"], 1);
    // An id already stored, resent with other content: refused, not acknowledged.
    let mut c = chain("h1", 2, &a[0].record_hash(), 1);
    c[0].id = a[0].id.clone();
    rechain(&mut c, &a[0].record_hash());
    let (st, v) = post(&url, Some(&t1), &batch(&c));
    assert_eq!(st, 422, "{v}");
    assert_eq!(s.store().acked("h1").unwrap(), 1, "not acknowledged");
    // Resent as it was: a duplicate.
    assert_eq!(ingest(&s, &t1, &a)["duplicates"], 1);
}

fn issue_13_a_gap_filled_in_later_is_resolved_with_the_time(backend: Backend) {
    let s = Server::start(backend);
    let t = enroll(&s, "h1");
    let evs = chain("h1", 1, GENESIS_HASH, 8);
    ingest(&s, &t, &evs[..3]);
    ingest(&s, &t, &evs[6..]);
    let f = s.store().findings().unwrap();
    assert_eq!(
        (f[0].kind.as_str(), f[0].from_seq, f[0].to_seq),
        ("gap", 4, 6)
    );
    // Part of it arrives: the finding is resolved, a narrower one left open.
    let v = ingest(&s, &t, &evs[3..4]);
    assert_eq!(v["stored"], 1, "{v}");
    let f = s.store().findings().unwrap();
    assert!(f[0].resolved_ms.is_some(), "{f:?}");
    let open: Vec<_> = f.iter().filter(|f| f.resolved_ms.is_none()).collect();
    assert_eq!(open.len(), 1, "{f:?}");
    assert_eq!((open[0].from_seq, open[0].to_seq), (5, 6));
    // The rest: nothing open, no false `reused`, and the chain re-derives intact.
    ingest(&s, &t, &evs[4..6]);
    let f = s.store().findings().unwrap();
    assert!(f.iter().all(|f| f.resolved_ms.is_some()), "{f:?}");
    assert!(f.iter().all(|f| f.kind == "gap"), "{f:?}");
    let r = s.reviewer();
    let v = client_verify(&s, &r, &Default::default());
    assert!(v.ok(), "{}", v.render());
    assert_eq!(server_verify(&s, &r)["hosts"][0]["intact"], true);
}

fn issue_13_unknown_fields_are_kept_and_the_chain_still_links(backend: Backend) {
    let s = Server::start(backend);
    let t = enroll(&s, "h1");
    // A newer agent adds a field: the record is hashed and kept as sent.
    let e = chain("h1", 1, GENESIS_HASH, 1);
    let line = e[0]
        .to_json_line()
        .replacen('{', "{\"container\":{\"id\":\"c1\"},", 1);
    let h = interdict_event::sha256_hex(line.as_bytes());
    let mut next = chain("h1", 2, &h, 1);
    rechain(&mut next, &h);
    let body = format!("{{\"events\":[{line},{}]}}", next[0].to_json_line());
    let (st, v) = post(&format!("{}/v1/events", s.url), Some(&t), &body);
    assert_eq!((st, v["findings"].as_u64()), (200, Some(0)), "{v}");
    let r = s.reviewer();
    let (_, out, _, _) = get(&format!("{}/v1/events", s.url), Some(&r));
    assert_eq!(
        out.lines().next().unwrap(),
        line,
        "stored and returned as sent"
    );
    assert!(client_verify(&s, &r, &Default::default()).ok());
}

fn issue_13_fields_events_rates_quotas_and_pages_are_bounded(backend: Backend) {
    let mut cfg = Config::default();
    cfg.limits.host_requests_burst = 40;
    cfg.limits.host_requests_per_s = 1;
    cfg.limits.host_quota_mib = 2;
    cfg.limits.max_page_mib = 1;
    let s = Server::start_with(backend, cfg);
    let t = enroll(&s, "h1");
    let url = format!("{}/v1/events", s.url);
    // A field over 32 KiB.
    let mut e = chain("h1", 1, GENESIS_HASH, 1);
    e[0].message = Some("m".repeat(33 << 10));
    rechain(&mut e, GENESIS_HASH);
    assert_eq!(post(&url, Some(&t), &batch(&e)).0, 422);
    // An event over 64 KiB (fields each under the limit).
    let mut e = chain("h1", 1, GENESIS_HASH, 1);
    e[0].process = Some(interdict_event::ProcessRef {
        argv: vec!["a".repeat(15 << 10); 5],
        ..Default::default()
    });
    rechain(&mut e, GENESIS_HASH);
    assert_eq!(post(&url, Some(&t), &batch(&e)).0, 413);
    // Pages bounded by bytes: 1 MiB pages of 40 KiB events, the quota (2 MiB) then full.
    let mut evs = chain("h1", 1, GENESIS_HASH, 70);
    for e in &mut evs {
        e.message = Some("x".repeat(12 << 10));
        e.process = Some(interdict_event::ProcessRef {
            argv: vec!["y".repeat(14 << 10), "z".repeat(14 << 10)],
            ..Default::default()
        });
    }
    rechain(&mut evs, GENESIS_HASH);
    let mut sent = 0;
    let mut quota_hit = None;
    for c in evs.chunks(5) {
        let (st, v) = post(&url, Some(&t), &batch(c));
        match st {
            200 => sent += c.len(),
            507 => {
                quota_hit = Some(v);
                break;
            }
            _ => panic!("{st} {v}"),
        }
    }
    let v = quota_hit.expect("the 1 MiB quota is reached");
    assert!(v["error"].as_str().unwrap().contains("quota"), "{v}");
    assert!(sent >= 40, "{sent}");
    let r = s.reviewer();
    let (st, body, next, _) = get(&format!("{url}?host=h1"), Some(&r));
    assert_eq!(st, 200);
    assert!(body.len() <= 1 << 20, "{} bytes", body.len());
    assert!(body.lines().count() < sent, "cut by bytes, not by count");
    assert!(next.is_some(), "a next page");
    // Requests over the token's burst: 429 with Retry-After, nothing stored.
    let before = s.store().event_count("h1").unwrap();
    let mut limited = None;
    for _ in 0..80 {
        let (st, _, retry) = post_h(&url, Some(&t), "{\"events\":[]}");
        if st == 429 {
            limited = retry;
            break;
        }
    }
    assert!(limited.is_some(), "rate-limited with Retry-After");
    assert_eq!(s.store().event_count("h1").unwrap(), before);
}

fn issue_13_enroll_secret_rotation_revocation_and_host_deletion(backend: Backend) {
    let mut cfg = Config::default();
    cfg.limits.enroll_burst = 4;
    cfg.limits.enroll_per_s = 1;
    let mut s = Server::start_with(backend, cfg);
    // The secret is not in the database in any readable form.
    let dump = match &s.pg {
        None => String::from_utf8_lossy(&std::fs::read(&s.db).unwrap()).into_owned(),
        Some(pg) => {
            let mut c = postgres::Client::connect(&pg.params(), postgres::NoTls).unwrap();
            let rows = c.query("SELECT v FROM meta", &[]).unwrap();
            rows.iter().map(|r| r.get::<_, String>(0)).collect()
        }
    };
    assert!(
        !dump.contains(&s.secret),
        "the enroll secret is kept hashed"
    );
    let t1 = enroll(&s, "h1");
    // Rotation: the old secret stops working, the new one works; tokens stay valid.
    let old = s.secret.clone();
    s.secret = s.store().rotate_enroll_secret().unwrap();
    let body = |secret: &str, host: &str| {
        json!({"secret": secret, "host_id": host, "hostname": host}).to_string()
    };
    let url = format!("{}/v1/enroll", s.url);
    assert_eq!(post(&url, None, &body(&old, "h2")).0, 401);
    assert_eq!(post(&url, None, &body(&s.secret, "h2")).0, 200);
    ingest(&s, &t1, &chain("h1", 1, GENESIS_HASH, 2));
    // Enrollment is rate-limited (burst of 4 here): guessing is slow.
    let codes: Vec<u16> = (0..6)
        .map(|i| post(&url, None, &body("guess", &format!("x{i}"))).0)
        .collect();
    assert!(codes.contains(&429), "{codes:?}");
    // A revoked reviewer can no longer read.
    let r = s.reviewer();
    assert_eq!(get(&format!("{}/v1/hosts", s.url), Some(&r)).0, 200);
    assert!(s.store().revoke_reviewer("sec-team").unwrap());
    assert_eq!(get(&format!("{}/v1/hosts", s.url), Some(&r)).0, 401);
    // A deleted host can no longer write, and verification reports the deletion as such.
    let r = s.reviewer();
    let (_, cp, _, _) = get(&format!("{}/v1/checkpoint", s.url), Some(&r));
    let cp: interdict_chain::Signed = serde_json::from_str(&cp).unwrap();
    assert!(s.store().delete_host("h1", &s.key).unwrap());
    assert_eq!(
        post(
            &format!("{}/v1/events", s.url),
            Some(&t1),
            &batch(&chain("h1", 3, GENESIS_HASH, 1))
        )
        .0,
        401
    );
    let v = client_verify(
        &s,
        &r,
        &interdict_chain::remote::Options {
            checkpoints: vec![("cp".into(), cp)],
            key: Some(s.public_key()),
        },
    );
    assert!(v.ok(), "{}", v.render());
    assert!(
        v.render().contains("deleted by the administrator"),
        "{}",
        v.render()
    );
    s.stop();
}

fn issue_13_retention_prunes_under_a_signed_cut_and_a_faked_cut_is_caught(backend: Backend) {
    let (s, t, r, evs) = ten(backend);
    ingest(&s, &t, &chain("h1", 11, &evs[9].record_hash(), 2));
    // Records 1..6 were received long ago.
    s.tamper(
        "UPDATE events SET received_ms = 1000 WHERE host_id = 'h1' AND seq <= 6",
        &[],
    );
    let n = s.store().prune(10_000, &s.key).unwrap();
    assert_eq!(n, 6);
    assert_eq!(s.store().event_count("h1").unwrap(), 6);
    let v = client_verify(
        &s,
        &r,
        &interdict_chain::remote::Options {
            key: Some(s.public_key()),
            ..Default::default()
        },
    );
    assert!(v.ok(), "{}", v.render());
    assert!(
        v.render().contains("records 1 to 6 pruned"),
        "{}",
        v.render()
    );
    assert_eq!(server_verify(&s, &r)["hosts"][0]["intact"], true);
    // Someone deletes more and moves the cut in the database, without the key.
    s.tamper("DELETE FROM events WHERE host_id = 'h1' AND seq <= 9", &[]);
    s.tamper(
        "UPDATE chains SET cut_seq = 9, cut_hash = ?1 WHERE host_id = 'h1'",
        &[&evs[8].record_hash()],
    );
    let v = client_verify(
        &s,
        &r,
        &interdict_chain::remote::Options {
            key: Some(s.public_key()),
            ..Default::default()
        },
    );
    assert!(!v.ok());
    assert!(problems(&v).iter().any(|p| p.0 == "cut"), "{}", v.render());
    assert_eq!(server_verify(&s, &r)["hosts"][0]["intact"], false);
}

fn issue_13_values_from_hosts_are_escaped_in_the_report(backend: Backend) {
    let s = Server::start(backend);
    // A host whose name paints a fake verdict over the report.
    let evil = "x\u{1b}[2K\rintact  everything (ok)\u{9b}31m";
    let t = enroll_as(&s, "h1", evil);
    let mut evs = chain("h1", 1, GENESIS_HASH, 2);
    evs[1].prev_hash = Some("e".repeat(64));
    evs[1].message = Some("\u{1b}]0;owned\u{7}".into());
    ingest(&s, &t, &evs);
    let r = s.reviewer();
    let out = client_verify(&s, &r, &Default::default()).render();
    assert!(
        !out.chars().any(|c| c.is_control() && c != '\n'),
        "no control character reaches the terminal: {out:?}"
    );
    assert!(out.contains("\\u{1b}[2K\\u{d}intact  everything"), "{out}");
    assert!(out.starts_with("BROKEN  h1"), "{out}");
    // The query output (as `interdict logs query` prints it) holds the same JSON, escaped.
    let (_, body, _, _) = get(&format!("{}/v1/events", s.url), Some(&r));
    for l in body.lines() {
        let safe = interdict_chain::safe_json_line(l);
        assert!(!safe.chars().any(|c| c.is_control()), "{safe:?}");
        let a: Value = serde_json::from_str(l).unwrap();
        let b: Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn two_collectors_on_one_postgresql_database_keep_one_chain_per_host() {
    let a = Server::start(Backend::Postgres);
    let params = a.pg.as_ref().unwrap().params();
    let b = Server::serve(
        Store::open_postgres(&params).unwrap(),
        tempfile::tempdir().unwrap(),
        std::path::PathBuf::new(),
        None,
        a.secret.clone(),
        a.key.clone(),
        Config::default(),
    );
    let token = enroll(&a, "h1");
    let evs = chain("h1", 1, GENESIS_HASH, 40);
    // A load balancer sends alternate batches to either collector, some of them twice.
    for (i, part) in evs.chunks(5).enumerate() {
        let url = if i % 2 == 0 { &a.url } else { &b.url };
        let (st, v) = post(&format!("{url}/v1/events"), Some(&token), &batch(part));
        assert_eq!(st, 200, "{v}");
        if i % 3 == 0 {
            let other = if i % 2 == 0 { &b.url } else { &a.url };
            let (_, v) = post(&format!("{other}/v1/events"), Some(&token), &batch(part));
            assert_eq!(v["duplicates"], 5);
        }
    }
    let store = a.store();
    assert_eq!(store.event_count("h1").unwrap(), 40);
    assert_eq!(store.acked("h1").unwrap(), 40);
    assert!(
        store.findings().unwrap().is_empty(),
        "{:?}",
        store.findings()
    );
    // The ingest cursor follows commit order across both collectors: paging after each page's
    // cursor sees every event once.
    let r = a.reviewer();
    let (_, body, _, _) = get(&format!("{}/v1/events?after=0", b.url), Some(&r));
    assert_eq!(body.lines().count(), 40);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]

    /// Fuzzing the ingest decoder over HTTP: random bytes, and valid batches with a random span
    /// replaced by random text, never get a 5xx (nor crash the server); whatever is refused
    /// stores nothing.
    #[test]
    fn no_input_makes_the_ingest_fail_or_store_what_it_refused(
        noise in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        cut in 0usize..4000,
        len in 0usize..40,
        text in "\\PC{0,20}",
    ) {
        static SERVER: std::sync::OnceLock<(Server, String)> = std::sync::OnceLock::new();
        let (s, token) = SERVER.get_or_init(|| {
            let mut cfg = Config::default();
            cfg.limits.host_requests_burst = 100_000;
            let s = Server::start_with(Backend::Sqlite, cfg);
            let t = enroll(&s, "fz");
            (s, t)
        });
        let url = format!("{}/v1/events", s.url);
        let store = s.store();
        let before = store.event_count("fz").unwrap();
        let noise = String::from_utf8_lossy(&noise).into_owned();
        let (st, v) = post(&url, Some(token), &noise);
        proptest::prop_assert!((400..500).contains(&st), "{} {}", st, v);
        proptest::prop_assert_eq!(store.event_count("fz").unwrap(), before);

        let valid = batch(&chain("fz", 1, GENESIS_HASH, 3));
        let at = cut.min(valid.len());
        let end = (at + len).min(valid.len());
        let (a, b) = (valid.floor_char_boundary(at), valid.floor_char_boundary(end));
        let mutated = format!("{}{}{}", &valid[..a], text, &valid[b..]);
        let (st, v) = post(&url, Some(token), &mutated);
        proptest::prop_assert!(st < 500, "{} {}", st, v);
        if st != 200 {
            proptest::prop_assert_eq!(store.event_count("fz").unwrap(), before);
        }
    }
}

#[test]
fn issue_13_a_database_of_the_previous_schema_is_migrated_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    // The schema as it was (migrations 1 and 2), with what an older collector stored.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE schema_version (n BIGINT NOT NULL); INSERT INTO schema_version VALUES (2);
         CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
         CREATE TABLE hosts (host_id TEXT PRIMARY KEY, hostname TEXT NOT NULL, token_sha256 TEXT NOT NULL UNIQUE,
             enrolled_ms BIGINT NOT NULL, last_seen_ms BIGINT, last_seq BIGINT NOT NULL DEFAULT 0,
             last_hash TEXT NOT NULL, version TEXT, policy_sha256 TEXT, mode TEXT);
         CREATE TABLE reviewers (name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE);
         CREATE TABLE events (id TEXT PRIMARY KEY, host_id TEXT NOT NULL, seq BIGINT NOT NULL, time_ms BIGINT NOT NULL,
             kind TEXT NOT NULL, rule_id TEXT, user_name TEXT, outcome TEXT, json TEXT NOT NULL, received_ms BIGINT NOT NULL,
             rule_action TEXT);
         CREATE INDEX events_time ON events (time_ms, id);
         CREATE TABLE findings (id INTEGER PRIMARY KEY, host_id TEXT NOT NULL, kind TEXT NOT NULL, from_seq BIGINT NOT NULL,
             to_seq BIGINT NOT NULL, detail TEXT NOT NULL, at_ms BIGINT NOT NULL);
         CREATE TABLE counters (name TEXT PRIMARY KEY, n BIGINT NOT NULL);
         INSERT INTO meta VALUES ('enroll_secret', 'old-plain-secret');",
    )
    .unwrap();
    let evs = chain("h1", 1, GENESIS_HASH, 5);
    c.execute(
        "INSERT INTO hosts (host_id, hostname, token_sha256, enrolled_ms, last_seq, last_hash) VALUES ('h1', 'h1.corp', 'x', 1, 5, ?1)",
        [evs[4].record_hash()],
    )
    .unwrap();
    for (i, e) in evs.iter().enumerate() {
        c.execute(
            "INSERT INTO events (id, host_id, seq, time_ms, kind, json, received_ms) VALUES (?1, 'h1', ?2, 1, 'exec_denied', ?3, ?4)",
            rusqlite::params![e.id, i as i64 + 1, e.to_json_line(), 1000 + i as i64],
        )
        .unwrap();
    }
    drop(c);
    let store = Store::open(&db).unwrap();
    assert!(store.check_enroll_secret("old-plain-secret").unwrap());
    let raw = std::fs::read(&db).unwrap();
    assert!(
        !String::from_utf8_lossy(&raw).contains("old-plain-secret"),
        "kept hashed only"
    );
    let key = interdict_collector::keys::generate();
    let reports = store
        .verify(&interdict_collector::keys::public_hex(&key))
        .unwrap();
    assert!(reports[0].intact(), "{reports:?}");
    assert_eq!(reports[0].records, 5);
    // And the host goes on where it was.
    let next = chain("h1", 6, &evs[4].record_hash(), 1);
    let inc = vec![Incoming::parse(&next[0].to_json_line()).unwrap()];
    let r = store.ingest("h1", inc, 0).unwrap();
    assert_eq!((r.acked_seq, r.findings), (6, 0));
}
