//! Digests reviewers approved for the whole fleet: a list signed with the collector's hash-list
//! key (the signed policy names it, `hash_list_keys`), whose sequence number only grows. Its
//! entries are *added* to the rules they name through the learner (block, kill and quarantine
//! rules of the policy in force only; never a digest with the content of a system file here,
//! never one this host dropped before). A later list cannot take anything away: a digest it no
//! longer names stays, and the removal is reported.

use std::sync::Arc;

use interdict_event::{EventKind, FileRef};
use interdict_fleet::{Envelope, HashList, PublicKey};

use crate::agent::sensors::Part;
use crate::agent::shared::Shared;
use crate::policy::learned::FLEET;

fn keys(shared: &Shared) -> Vec<PublicKey> {
    shared
        .policy
        .active()
        .loaded
        .policy
        .info()
        .hash_list_keys
        .iter()
        .filter_map(|k| PublicKey::from_hex(k))
        .collect()
}

fn event(shared: &Shared, kind: EventKind, message: String) -> interdict_event::Event {
    let mut e = shared.event(kind);
    e.sensor = Some(Part::Fleet.as_str().into());
    e.message = Some(message);
    e
}

/// A whole list refused (told once per list).
fn refuse(shared: &Shared, env: &Envelope, why: &str) {
    crate::agent::metrics::inc(&shared.metrics.c.fleet_refused);
    if !shared
        .fleet
        .first_refusal(&format!("list:{}", env.signature))
    {
        return;
    }
    let msg = format!("hash list refused: {why}; the digests in force stay as they are");
    tracing::error!("{msg}");
    shared.emit(event(shared, EventKind::HashListRejected, msg));
}

fn entry_event(
    shared: &Shared,
    kind: EventKind,
    e: &interdict_fleet::HashEntry,
    message: String,
) -> interdict_event::Event {
    let mut ev = event(shared, kind, message);
    ev.rule = super::rule_ref(shared, &e.rule).or_else(|| {
        Some(interdict_event::RuleRef {
            id: e.rule.clone(),
            name: String::new(),
            risk: String::new(),
            action: String::new(),
            selector: String::new(),
            pattern: String::new(),
            matched: String::new(),
        })
    });
    ev.file = Some(FileRef {
        path: e.path.clone(),
        sha256: Some(e.sha256.clone()),
        size: Some(e.size),
    });
    ev
}

/// Apply entries through the learner and report what happened; `quiet` reports only
/// additions (a list offered again after a policy change).
fn apply(shared: &Shared, list: &HashList, quiet: bool) {
    let Some(out) = shared.learner.fleet(list.entries.clone()) else {
        tracing::warn!("hash list {}: the learner is not running", list.seq);
        return;
    };
    if !quiet {
        for (e, why) in &out.refused {
            crate::agent::metrics::inc(&shared.metrics.c.fleet_refused);
            let msg = format!(
                "hash list {}: digest {} for rule `{}` refused: {why}",
                list.seq, e.sha256, e.rule
            );
            tracing::warn!("{msg}");
            shared.emit(entry_event(shared, EventKind::HashListRejected, e, msg));
        }
    }
    if out.added.is_empty() && quiet {
        return;
    }
    shared
        .metrics
        .c
        .fleet_hashes_added
        .fetch_add(out.added.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let added: Vec<String> = out
        .added
        .iter()
        .map(|e| {
            format!(
                "{} (rule {}, {} bytes, approved by {})",
                e.sha256, e.rule, e.size, e.approved_by
            )
        })
        .collect();
    let msg = format!(
        "hash list {} (signed {}): {} digest(s) added{}{}; {} in force already, {} refused",
        list.seq,
        list.created,
        out.added.len(),
        if added.is_empty() { "" } else { ": " },
        added.join(", "),
        out.unchanged,
        out.refused.len()
    );
    tracing::info!("{msg}");
    let mut ev = event(shared, EventKind::HashListApplied, msg);
    if let [one] = out.added.as_slice() {
        ev.rule = super::rule_ref(shared, &one.rule);
        ev.file = Some(FileRef {
            path: one.path.clone(),
            sha256: Some(one.sha256.clone()),
            size: Some(one.size),
        });
    }
    shared.emit(ev);
}

/// A list offered by the collector.
pub fn offer(shared: &Shared, env: &Envelope) {
    let st = shared.fleet.state();
    if st
        .hash_list
        .as_ref()
        .is_some_and(|l| l.signature == env.signature)
    {
        return;
    }
    let keys = keys(shared);
    if keys.is_empty() {
        refuse(
            shared,
            env,
            "the policy in force names no hash_list_keys: no list of approved digests is accepted",
        );
        return;
    }
    let list = match HashList::open(env, &keys) {
        Ok((l, _)) => l,
        Err(e) => {
            refuse(shared, env, &e.to_string());
            return;
        }
    };
    if list.seq <= st.hash_list_seq {
        refuse(
            shared,
            env,
            &format!(
                "its sequence number {} is not above {}, the list in force (an older or replayed list)",
                list.seq, st.hash_list_seq
            ),
        );
        return;
    }
    // What an earlier list added and this one no longer names: never removed from here.
    let named: std::collections::HashSet<(&str, &str)> = list
        .entries
        .iter()
        .map(|e| (e.rule.as_str(), e.sha256.as_str()))
        .collect();
    for l in shared.learner.set().entries {
        if l.source.as_deref() == Some(FLEET)
            && !named.contains(&(l.rule_id.as_str(), l.sha256.as_str()))
        {
            let e = interdict_fleet::HashEntry {
                rule: l.rule_id.clone(),
                sha256: l.sha256.clone(),
                size: l.size.unwrap_or(0),
                path: crate::path_text(&l.path),
                host: String::new(),
                approved_by: String::new(),
            };
            let msg = format!(
                "hash list {}: it no longer names digest {} of rule `{}`; removals are not taken from the collector: the digest stays (IT retracts a digest with an allow rule in the signed policy)",
                list.seq, l.sha256, l.rule_id
            );
            tracing::warn!("{msg}");
            shared.emit(entry_event(shared, EventKind::HashListRejected, &e, msg));
        }
    }
    apply(shared, &list, false);
    shared.fleet.update(|s| {
        s.hash_list = Some(env.clone());
        s.hash_list_seq = list.seq;
    });
    super::describe(shared, crate::agent::sensors::PartState::Running, None);
}

/// After a policy change: offer the list in force again (its rules may exist now).
pub fn reapply(shared: &Arc<Shared>) {
    let Some(env) = shared.fleet.state().hash_list else {
        return;
    };
    let keys = keys(shared);
    match HashList::open(&env, &keys) {
        Ok((list, _)) => apply(shared, &list, true),
        Err(e) => tracing::warn!("the hash list in force is not accepted by the new policy: {e}"),
    }
}
