//! Time-boxed exceptions. An employee asks through the control socket (any local user may send
//! this one request; the user is whoever the socket's peer credentials say, never what the
//! request claims); the agent checks the request against the policy and forwards it to the
//! collector as an `exception_requested` event. A reviewer's approval comes back signed with
//! the collector's exception key; the agent accepts it only when the policy in force names that
//! key (`exception_keys`), when it is for this host, and when the policy allows that rule to be
//! suspended that long (`max_exception_days`, the rule's `exceptions`). Then the rule does not
//! apply to that user until the exception ends (the policy decides with the time of each
//! exec); the user is told when it starts and `[notify] exception_notice_s` before it ends; at
//! its end the rule applies again and running processes are swept (killed as the rule's action
//! says). Every step is an event.

use std::time::{Duration, Instant, UNIX_EPOCH};

use interdict_event::{EventKind, ProcessRef};
use interdict_fleet::{Envelope, ExceptionGrant, PublicKey};
use serde::Deserialize;

use super::{Denied, Held};
use crate::agent::enforce::notices::{Notice, NoticeKind};
use crate::agent::metrics::inc;
use crate::agent::sensors::{sweep, Part, StartError};
use crate::agent::shared::Shared;
use crate::inventory::host::unix_now;

/// A request as the control socket receives it (`exception-request JSON`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The rule to suspend.
    pub rule: String,
    /// For how many days.
    pub days: u64,
    /// Why (shown to the reviewer).
    pub reason: String,
}

/// Who asked: from the socket's peer credentials.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Process id.
    pub pid: Option<u32>,
}

/// Requests per user per hour, at most; more are refused.
const REQUESTS_PER_HOUR: usize = 5;

fn time_text(secs: i64) -> String {
    interdict_event::rfc3339(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

fn as_policy(g: &ExceptionGrant) -> interdict_policy::Exception {
    interdict_policy::Exception {
        id: g.id.clone(),
        rule_id: g.rule.clone(),
        user: g.user.clone(),
        from: g.from,
        until: g.until,
    }
}

fn keys(shared: &Shared) -> Vec<PublicKey> {
    shared
        .policy
        .active()
        .loaded
        .policy
        .info()
        .exception_keys
        .iter()
        .filter_map(|k| PublicKey::from_hex(k))
        .collect()
}

fn event(
    shared: &Shared,
    kind: EventKind,
    rule: &str,
    user: &str,
    uid: Option<u32>,
    message: String,
) -> interdict_event::Event {
    let mut e = shared.event(kind);
    e.sensor = Some(Part::Fleet.as_str().into());
    e.rule = super::rule_ref(shared, rule).or_else(|| {
        Some(interdict_event::RuleRef {
            id: rule.to_string(),
            name: String::new(),
            risk: String::new(),
            action: String::new(),
            selector: String::new(),
            pattern: String::new(),
            matched: String::new(),
        })
    });
    e.process = Some(ProcessRef {
        uid,
        user: Some(user.to_string()),
        ..ProcessRef::default()
    });
    e.message = Some(message);
    e
}

fn tell(shared: &Shared, kind: NoticeKind, rule: &str, user: &str, uid: Option<u32>, text: String) {
    let Some(uid) = shared.accounts.uid_of(user).or(uid) else {
        return;
    };
    let active = shared.policy.active();
    let r = active.loaded.policy.rules().iter().find(|r| r.id == rule);
    shared.notices.send(
        Notice {
            kind,
            uid,
            rule_id: rule.to_string(),
            tool: r.map_or_else(|| rule.to_string(), |r| r.name.clone()),
            reason: r.map(|r| r.reason.clone()).unwrap_or_default(),
            risk: r.map(|r| r.risk.to_string()).unwrap_or_default(),
            message: Some(text),
            alternative: None,
            more_info_url: None,
            path: String::new(),
            tty_nr: None,
        },
        &shared.metrics,
    );
}

/// A request from the control socket: checked against the policy, forwarded as an event.
/// Returns the reply for the caller.
pub fn request(shared: &Shared, caller: Caller, req: Request) -> Result<serde_json::Value, String> {
    if shared.config.collector.is_none() {
        return Err(
            "this agent reports to no collector, so no one can approve a request: ask IT".into(),
        );
    }
    {
        let mut r = shared.fleet.requests.lock().expect("requests poisoned");
        let times = r.entry(caller.uid).or_default();
        times.retain(|t| t.elapsed() < Duration::from_secs(3600));
        if times.len() >= REQUESTS_PER_HOUR {
            return Err(format!(
                "at most {REQUESTS_PER_HOUR} requests an hour per user: ask IT directly"
            ));
        }
        times.push(Instant::now());
    }
    let reason = req.reason.trim();
    if reason.is_empty() || reason.chars().count() > 1000 || reason.chars().any(char::is_control) {
        return Err("give a reason of 1 to 1000 characters on one line".into());
    }
    if req.days == 0 {
        return Err("ask for at least one day".into());
    }
    let user = shared.accounts.user_name(caller.uid);
    let now = unix_now();
    let days = req.days.min(3650);
    shared
        .policy
        .active()
        .loaded
        .policy
        .check_exception(&interdict_policy::Exception {
            id: String::new(),
            rule_id: req.rule.clone(),
            user: user.clone(),
            from: now,
            until: now + days as i64 * 86_400,
        })
        .map_err(|e| format!("not requested: {e}"))?;
    let mut e = event(
        shared,
        EventKind::ExceptionRequested,
        &req.rule,
        &user,
        Some(caller.uid),
        String::new(),
    );
    let id = e.id.clone();
    e.process.as_mut().expect("set above").pid = caller.pid.unwrap_or(0);
    e.message =
        Some(serde_json::json!({ "request_id": id, "days": days, "reason": reason }).to_string());
    if !shared.emit(e) {
        return Err("the agent's event queue is full: try again in a minute".into());
    }
    inc(&shared.metrics.c.exceptions_requested);
    tracing::info!(
        "{user} (uid {}) asked for an exception to rule {} for {days} day(s): request {id}",
        caller.uid,
        req.rule
    );
    Ok(serde_json::json!({
        "request_id": id,
        "message": format!(
            "request {id} sent: an exception to rule `{}` for {user}, {days} day(s). You will be told here when a reviewer decides.",
            req.rule
        ),
    }))
}

/// Put the exceptions held in force.
fn apply(shared: &Shared) {
    let held: Vec<interdict_policy::Exception> = shared
        .fleet
        .state()
        .exceptions
        .iter()
        .map(|h| as_policy(&h.grant))
        .collect();
    shared.policy.set_exceptions(held, &shared.learner.set());
    super::describe(shared, crate::agent::sensors::PartState::Running, None);
}

/// Refuse a verified grant (told once: its id is remembered).
fn refuse(shared: &Shared, g: &ExceptionGrant, why: &str) {
    inc(&shared.metrics.c.fleet_refused);
    shared.fleet.update(|s| {
        s.seen.insert(g.id.clone(), unix_now());
    });
    let msg = format!(
        "exception {} for {} (rule {}) refused: {why}",
        g.id, g.user, g.rule
    );
    tracing::warn!("{msg}");
    shared.emit(event(
        shared,
        EventKind::ExceptionRejected,
        &g.rule,
        &g.user,
        g.uid,
        msg,
    ));
}

/// The exceptions and denials the collector hands out for this host.
pub fn offer(shared: &Shared, grants: &[Envelope], denied: &[Denied]) {
    let now = unix_now();
    let keys = keys(shared);
    for env in grants {
        let g = match ExceptionGrant::open(env, &keys) {
            Ok((g, _)) => g,
            Err(e) => {
                inc(&shared.metrics.c.fleet_refused);
                if shared
                    .fleet
                    .first_refusal(&format!("exception:{}", env.signature))
                {
                    // Unverified: name nothing from it but what it claims, as a claim.
                    let claim: serde_json::Value =
                        serde_json::from_str(&env.body).unwrap_or_default();
                    let rule = claim["rule"].as_str().unwrap_or("").to_string();
                    let user = claim["user"].as_str().unwrap_or("").to_string();
                    let why = if keys.is_empty() {
                        "the policy in force names no exception_keys: no exception is accepted"
                            .to_string()
                    } else {
                        e.to_string()
                    };
                    let msg = format!(
                        "an exception (claiming user `{user}`, rule `{rule}`) was refused: {why}"
                    );
                    tracing::warn!("{msg}");
                    shared.emit(event(
                        shared,
                        EventKind::ExceptionRejected,
                        &rule,
                        &user,
                        None,
                        msg,
                    ));
                }
                continue;
            }
        };
        if shared.fleet.state().seen.contains_key(&g.id) {
            continue;
        }
        if g.host_id != shared.origin.host_id {
            refuse(
                shared,
                &g,
                &format!(
                    "it is for host {}, not this one ({})",
                    g.host_id, shared.origin.host_id
                ),
            );
            continue;
        }
        if g.until <= now {
            shared.fleet.update(|s| {
                s.seen.insert(g.id.clone(), now);
            });
            continue;
        }
        let policy_check = shared
            .policy
            .active()
            .loaded
            .policy
            .check_exception(&as_policy(&g));
        if let Err(why) = policy_check {
            refuse(shared, &g, &why.to_string());
            continue;
        }
        accept(shared, g, env.clone(), now);
    }
    for d in denied {
        if shared.fleet.state().seen.contains_key(&d.id) {
            continue;
        }
        shared.fleet.update(|s| {
            s.seen.insert(d.id.clone(), now);
        });
        let note = d.note.clone().unwrap_or_default();
        let msg = format!(
            "exception request {} of {} (rule {}) was denied{}{}",
            d.id,
            d.user,
            d.rule,
            if note.is_empty() { "" } else { ": " },
            note
        );
        tracing::info!("{msg}");
        let uid = shared.accounts.uid_of(&d.user);
        shared.emit(event(
            shared,
            EventKind::ExceptionDenied,
            &d.rule,
            &d.user,
            uid,
            msg.clone(),
        ));
        tell(
            shared,
            NoticeKind::ExceptionDenied,
            &d.rule,
            &d.user,
            uid,
            format!(
                "Your request for an exception was denied{}{}",
                if note.is_empty() { "." } else { ": " },
                note
            ),
        );
    }
    prune_seen(shared, now);
}

fn accept(shared: &Shared, g: ExceptionGrant, env: Envelope, now: i64) {
    let started = g.from <= now;
    shared.fleet.update(|s| {
        s.seen.insert(g.id.clone(), now);
        s.exceptions.retain(|h| h.grant.id != g.id);
        s.exceptions.push(Held {
            grant: g.clone(),
            envelope: Some(env),
            told_start: started,
            told_ending: false,
        });
    });
    apply(shared);
    inc(&shared.metrics.c.exceptions_granted);
    let msg = format!(
        "exception {}: {} may use what rule {} bans on this host from {} until {} (approved by {}; reason: {})",
        g.id,
        g.user,
        g.rule,
        time_text(g.from),
        time_text(g.until),
        g.approved_by,
        g.reason
    );
    tracing::info!("{msg}");
    shared.emit(event(
        shared,
        EventKind::ExceptionGranted,
        &g.rule,
        &g.user,
        g.uid,
        msg,
    ));
    if started {
        tell_started(shared, &g);
    }
}

fn tell_started(shared: &Shared, g: &ExceptionGrant) {
    tell(
        shared,
        NoticeKind::ExceptionGranted,
        &g.rule,
        &g.user,
        g.uid,
        format!(
            "You may use it until {} (exception {}, approved by {}).",
            time_text(g.until),
            g.id,
            g.approved_by
        ),
    );
}

/// Decisions remembered this long (a grant that ends later is remembered until it ends).
const SEEN_FOR: i64 = 30 * 86_400;

fn prune_seen(shared: &Shared, now: i64) {
    let st = shared.fleet.state();
    if st.seen.values().all(|t| now - t < SEEN_FOR) {
        return;
    }
    shared.fleet.update(|s| {
        let held: std::collections::HashSet<String> =
            s.exceptions.iter().map(|h| h.grant.id.clone()).collect();
        s.seen
            .retain(|id, t| now - *t < SEEN_FOR || held.contains(id));
    });
}

/// End exceptions; returns whether any ended.
fn end(shared: &Shared, ended: Vec<(Held, String)>) -> bool {
    if ended.is_empty() {
        return false;
    }
    let ids: Vec<String> = ended.iter().map(|(h, _)| h.grant.id.clone()).collect();
    shared
        .fleet
        .update(|s| s.exceptions.retain(|h| !ids.contains(&h.grant.id)));
    apply(shared);
    for (h, why) in ended {
        let g = &h.grant;
        inc(&shared.metrics.c.exceptions_expired);
        let msg = format!(
            "exception {} of {} (rule {}) {why}: the rule applies to them again",
            g.id, g.user, g.rule
        );
        tracing::info!("{msg}");
        shared.emit(event(
            shared,
            EventKind::ExceptionExpired,
            &g.rule,
            &g.user,
            g.uid,
            msg,
        ));
        tell(
            shared,
            NoticeKind::ExceptionEnded,
            &g.rule,
            &g.user,
            g.uid,
            "Your exception has ended: the tool is blocked again, and running copies are stopped."
                .into(),
        );
    }
    true
}

/// One tick of the clock: start notices, the notice before the end, and the end (then a sweep,
/// so that what still runs is handled as the rule's action says).
pub fn tick(shared: &Shared) {
    let now = unix_now();
    let lead = shared.config.notify.exception_notice_s as i64;
    let st = shared.fleet.state();
    let mut ended = Vec::new();
    for h in st.exceptions {
        let g = &h.grant;
        if now >= g.until {
            let why = "ended at ".to_string() + &time_text(g.until);
            ended.push((h, why));
            continue;
        }
        if !h.told_start && now >= g.from {
            tell_started(shared, g);
            shared.fleet.update(|s| {
                if let Some(x) = s.exceptions.iter_mut().find(|x| x.grant.id == g.id) {
                    x.told_start = true;
                }
            });
        }
        if !h.told_ending && now >= g.until - lead && now >= g.from {
            let left = g.until - now;
            let msg = format!(
                "exception {} of {} (rule {}) ends at {} (in {} s); its user was told",
                g.id,
                g.user,
                g.rule,
                time_text(g.until),
                left
            );
            tracing::info!("{msg}");
            shared.emit(event(
                shared,
                EventKind::ExceptionEnding,
                &g.rule,
                &g.user,
                g.uid,
                msg,
            ));
            tell(
                shared,
                NoticeKind::ExceptionEnding,
                &g.rule,
                &g.user,
                g.uid,
                format!(
                    "Your exception ends at {} (in {} minute(s)); after that the tool is blocked again and running copies are stopped.",
                    time_text(g.until),
                    (left + 59) / 60
                ),
            );
            shared.fleet.update(|s| {
                if let Some(x) = s.exceptions.iter_mut().find(|x| x.grant.id == g.id) {
                    x.told_ending = true;
                }
            });
        }
    }
    if end(shared, ended) {
        sweep::sweep(shared, Part::Sweep);
    }
}

/// After a new base policy: an exception it would no longer accept (the rule is gone, forbids
/// exceptions, the key that signed it is no longer named, the limit is shorter) ends now.
pub fn policy_changed(shared: &Shared) {
    let keys = keys(shared);
    let active = shared.policy.active();
    let policy = &active.loaded.policy;
    let mut ended = Vec::new();
    for h in shared.fleet.state().exceptions {
        let signed = h
            .envelope
            .as_ref()
            .is_some_and(|env| ExceptionGrant::open(env, &keys).is_ok());
        let why = if !signed {
            Some("the policy in force no longer names the key that signed it".to_string())
        } else {
            policy
                .check_exception(&as_policy(&h.grant))
                .err()
                .map(|e| e.to_string())
        };
        if let Some(w) = why {
            ended.push((h, format!("ended early: {w}")));
        }
    }
    end(shared, ended);
    // The new base was built with every exception; put back only those that stay.
    apply(shared);
}

/// Start the exception clock (once a second), after putting the exceptions kept in force.
pub fn start(shared: std::sync::Arc<Shared>) -> Result<(), StartError> {
    // The exceptions kept from before a restart (none: the policy and its generation stay as
    // they were loaded).
    if !shared.fleet.state().exceptions.is_empty() {
        apply(&shared);
    }
    std::thread::Builder::new()
        .name("exceptions".into())
        .spawn(move || loop {
            tick(&shared);
            if shared.shutdown.sleep(Duration::from_secs(1)) {
                return;
            }
        })
        .map(|_| ())
        .map_err(StartError::io("exception clock"))
}
