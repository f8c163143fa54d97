//! The pages, as askama templates (compiled into the collector; every value is HTML-escaped
//! unless a template says otherwise, and none of them does for anything a host sent).

use std::collections::BTreeMap;

use askama::Template;
use interdict_event::Event;

use super::chart::Chart;
use super::data::Row;

/// What every signed-in page has: the title, the current section, who is signed in, the form
/// token for signing out, the stylesheet's address.
#[derive(Debug, Clone)]
pub struct Chrome {
    /// Page title.
    pub title: String,
    /// Section (`overview`, `events`, `hosts`, `findings`, `people`).
    pub nav: &'static str,
    /// The reviewer.
    pub reviewer: String,
    /// The sign-out form's token.
    pub csrf: String,
    /// The stylesheet's address.
    pub css: &'static str,
}

/// One choice of a `<select>`.
#[derive(Debug, Clone)]
pub struct Opt {
    /// Value.
    pub value: String,
    /// Label.
    pub label: String,
    /// Chosen now.
    pub selected: bool,
}

/// Choices with `current` selected.
pub fn opts(list: &[(&str, &str)], current: &str) -> Vec<Opt> {
    list.iter()
        .map(|(v, l)| Opt {
            value: v.to_string(),
            label: l.to_string(),
            selected: *v == current,
        })
        .collect()
}

/// Milliseconds as `2026-11-26 09:30:00 UTC`.
pub fn when(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    let s = interdict_event::rfc3339(t);
    format!("{} {} UTC", &s[..10], &s[11..19])
}

/// How long ago, in words.
pub fn ago(ms: Option<i64>, now: i64) -> String {
    let Some(ms) = ms.filter(|m| *m > 0) else {
        return "never".into();
    };
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// A number with thousands separators.
pub fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The first 12 hex digits of a digest.
pub fn short(h: &str) -> String {
    h.chars().take(12).collect()
}

/// One event in a table.
#[derive(Debug, Clone, Default)]
pub struct EventLine {
    /// Its address in the console.
    pub cursor: i64,
    /// Event time (UTC), as the host sent it.
    pub time: String,
    /// Host id.
    pub host_id: String,
    /// Host name (as enrolled; the event's own when the host is gone).
    pub hostname: String,
    /// User.
    pub user: String,
    /// Link to the person's record.
    pub user_url: String,
    /// Rule id.
    pub rule: String,
    /// Kind.
    pub kind: String,
    /// Outcome.
    pub outcome: String,
    /// Whether the outcome is a refusal or a kill (shown stronger).
    pub stopped: bool,
    /// The rule's action.
    pub action: String,
    /// The program or file.
    pub target: String,
    /// The command line.
    pub argv: String,
    /// Policy name and version.
    pub policy: String,
}

impl EventLine {
    /// From a stored row; `names` gives host names by id.
    pub fn new(r: &Row, names: &BTreeMap<String, String>) -> EventLine {
        let e: Option<Event> = serde_json::from_str(&r.raw).ok();
        let Some(e) = e else {
            return EventLine {
                cursor: r.cursor,
                time: "(unreadable record)".into(),
                host_id: r.host_id.clone(),
                hostname: names.get(&r.host_id).cloned().unwrap_or_default(),
                ..Default::default()
            };
        };
        let user = e
            .process
            .as_ref()
            .and_then(|p| p.user.clone())
            .unwrap_or_default();
        let outcome = e.outcome.map(interdict_event::snake).unwrap_or_default();
        EventLine {
            cursor: r.cursor,
            time: e.time.replace('T', " ").replace('Z', ""),
            hostname: names
                .get(&r.host_id)
                .cloned()
                .unwrap_or_else(|| e.hostname.clone()),
            host_id: r.host_id.clone(),
            user_url: if user.is_empty() {
                String::new()
            } else {
                format!("/console/person{}", super::qs(&[("user", &user)]))
            },
            user,
            rule: e.rule.as_ref().map(|r| r.id.clone()).unwrap_or_default(),
            kind: interdict_event::snake(e.kind),
            stopped: matches!(
                outcome.as_str(),
                "denied" | "killed" | "denied_on_deadline" | "quarantined"
            ),
            outcome,
            action: e
                .rule
                .as_ref()
                .map(|r| r.action.clone())
                .unwrap_or_default(),
            target: e
                .file
                .as_ref()
                .map(|f| f.path.clone())
                .or_else(|| e.process.as_ref().and_then(|p| p.exe.clone()))
                .unwrap_or_else(|| e.message.clone().unwrap_or_default()),
            argv: e
                .process
                .as_ref()
                .map(|p| p.argv.join(" "))
                .unwrap_or_default(),
            policy: e
                .policy
                .as_ref()
                .map(|p| format!("{} {}", p.name, p.version))
                .unwrap_or_default(),
        }
    }
}

/// A chain finding, with what it means in plain words.
#[derive(Debug, Clone)]
pub struct FindingLine {
    /// Host id.
    pub host_id: String,
    /// Host name.
    pub hostname: String,
    /// Chain.
    pub epoch: u64,
    /// Kind.
    pub kind: String,
    /// Records concerned.
    pub records: String,
    /// In plain words.
    pub meaning: String,
    /// The collector's own words.
    pub detail: String,
    /// When found.
    pub found: String,
    /// Still open.
    pub open: bool,
    /// How it was settled.
    pub resolution: String,
}

/// What a finding (or a verification problem) means, for a person.
pub fn plain(kind: &str, from: u64, to: u64) -> String {
    let recs = if from == to {
        format!("record {from}")
    } else {
        format!("records {from} to {to}")
    };
    match kind {
        "gap" => format!(
            "The host's {recs} never reached the collector. They may still arrive (a laptop that was offline sends them later), or they were deleted on the host before they were sent: ask why, and check the host."
        ),
        "break" => format!(
            "The host's {recs} does not link to the record before it: the host's own log was changed or damaged before it was sent (the collector stored what it got)."
        ),
        "restart" => "The host's log started over at 1 (its agent's state was wiped or the machine reinstalled): a new chain began, and what came before it cannot be linked to what follows.".into(),
        "reused" => format!(
            "A new event came under a number already taken ({recs}): it is kept, outside the chain, so nothing links it to the rest of the host's log."
        ),
        "removed" => format!(
            "The host's {recs} had been acknowledged by the collector and is no longer in its database: removed at the collector, not on the host."
        ),
        "altered" => format!(
            "The host's {recs} in the collector's database is not what was acknowledged: changed at the collector after it was stored."
        ),
        "cut" => format!(
            "The log is said to be pruned up to {to}, but no statement signed by the collector says so: records may have been deleted behind its back."
        ),
        _ => format!("{kind} at {recs}."),
    }
}

impl FindingLine {
    /// From a stored finding.
    pub fn new(f: &crate::store::Finding, names: &BTreeMap<String, String>) -> FindingLine {
        FindingLine {
            hostname: names.get(&f.host_id).cloned().unwrap_or_default(),
            host_id: f.host_id.clone(),
            epoch: f.epoch,
            kind: f.kind.clone(),
            records: if f.from_seq == f.to_seq {
                f.from_seq.to_string()
            } else {
                format!("{}–{}", f.from_seq, f.to_seq)
            },
            meaning: plain(&f.kind, f.from_seq, f.to_seq),
            detail: f.detail.clone(),
            found: when(f.at_ms),
            open: f.resolved_ms.is_none(),
            resolution: match (&f.resolution, f.resolved_ms) {
                (Some(r), Some(t)) => format!("{r} ({})", when(t)),
                _ => String::new(),
            },
        }
    }
}

/// One host in the fleet table.
#[derive(Debug, Clone, Default)]
pub struct HostLine {
    /// Host id.
    pub host_id: String,
    /// Host name.
    pub hostname: String,
    /// Whether it ever made a request.
    pub heard: bool,
    /// Whether a heartbeat of it is stored.
    pub beat: bool,
    /// Last request, in words.
    pub last_seen: String,
    /// Last request, UTC.
    pub last_seen_utc: String,
    /// Silent longer than the threshold.
    pub silent: bool,
    /// Agent version.
    pub version: String,
    /// Policy name and version.
    pub policy: String,
    /// Policy SHA-256, short.
    pub policy_sha: String,
    /// Policy SHA-256.
    pub policy_sha_full: String,
    /// Signed bundle version (when the host reports one).
    pub bundle: String,
    /// The bundle is older than the newest one a host runs.
    pub bundle_behind: bool,
    /// enforce or monitor.
    pub mode: String,
    /// Parts not working.
    pub degraded: Vec<String>,
    /// Banned tools installed now: (rule, path).
    pub installed: Vec<(String, String)>,
    /// Open chain findings.
    pub open_findings: usize,
    /// Events stored.
    pub stored: String,
    /// Current chain and its head.
    pub chain: String,
}

/// A page shown when something is wrong (not found, bad request).
#[derive(Template)]
#[template(path = "console/message.html")]
pub struct MessagePage {
    /// The page chrome, when signed in.
    pub c: Option<Chrome>,
    /// Title.
    pub title: String,
    /// What happened and what to do.
    pub message: String,
    /// The stylesheet.
    pub css: &'static str,
}

/// The sign-in page.
#[derive(Template)]
#[template(path = "console/login.html")]
pub struct LoginPage {
    /// The stylesheet.
    pub css: &'static str,
    /// Whom the link signs in (empty: no usable link).
    pub reviewer: String,
    /// Until when.
    pub expires: String,
    /// The form token.
    pub csrf: String,
    /// Why the link cannot sign in, or that the session ended.
    pub message: String,
    /// Said after signing out.
    pub signed_out: bool,
}

/// A count in the overview's top lists: label, link, count.
#[derive(Debug, Clone)]
pub struct Top {
    /// What.
    pub label: String,
    /// A second line (the host id under a host name).
    pub sub: String,
    /// Link to its events.
    pub url: String,
    /// How many.
    pub n: String,
}

/// The overview.
#[derive(Template)]
#[template(path = "console/overview.html")]
pub struct OverviewPage {
    /// Chrome.
    pub c: Chrome,
    /// The chart.
    pub chart: Chart,
    /// Violations in the 30 days, formatted.
    pub total: String,
    /// Top rules.
    pub rules: Vec<Top>,
    /// Top hosts.
    pub hosts: Vec<Top>,
    /// Top users.
    pub users: Vec<Top>,
    /// Hosts enrolled.
    pub enrolled: usize,
    /// Reporting.
    pub reporting: usize,
    /// Silent hosts.
    pub silent: Vec<HostLine>,
    /// Hosts on an older bundle than the newest.
    pub behind: Vec<HostLine>,
    /// Whether any host reports a bundle.
    pub bundles: bool,
    /// Hosts with a part not working.
    pub degraded: Vec<HostLine>,
    /// Hosts with a banned tool installed.
    pub noncompliant: Vec<HostLine>,
    /// Open chain findings.
    pub findings: Vec<FindingLine>,
    /// Said while the summaries are still being counted.
    pub counting: String,
    /// Silent threshold, in words.
    pub silent_after: String,
}

/// The violations page.
#[derive(Template)]
#[template(path = "console/events.html")]
pub struct EventsPage {
    /// Chrome.
    pub c: Chrome,
    /// Heading.
    pub heading: String,
    /// Filter values.
    pub host: String,
    /// User.
    pub user: String,
    /// Rule.
    pub rule: String,
    /// Since.
    pub since: String,
    /// Until.
    pub until: String,
    /// Host choices.
    pub hosts: Vec<Opt>,
    /// Rule suggestions.
    pub rules: Vec<String>,
    /// Kind choices.
    pub kinds: Vec<Opt>,
    /// Outcome choices.
    pub outcomes: Vec<Opt>,
    /// Action choices.
    pub actions: Vec<Opt>,
    /// A problem with the filters.
    pub error: String,
    /// The events.
    pub rows: Vec<EventLine>,
    /// "N events match".
    pub count: String,
    /// Older page.
    pub older: String,
    /// Back to the newest.
    pub newest: String,
    /// Export links: (label, url).
    pub exports: Vec<(String, String)>,
}

/// One fact of an event's detail: label and value (empty values are left out).
#[derive(Debug, Clone)]
pub struct Fact {
    /// Label.
    pub label: &'static str,
    /// Value.
    pub value: String,
    /// Link, if any.
    pub url: String,
    /// Shown in a monospace font.
    pub mono: bool,
}

/// Facts, leaving out empty ones.
pub fn facts(list: Vec<(&'static str, String, String, bool)>) -> Vec<Fact> {
    list.into_iter()
        .filter(|f| !f.1.is_empty())
        .map(|(label, value, url, mono)| Fact {
            label,
            value,
            url,
            mono,
        })
        .collect()
}

/// One check of an event's place in its chain.
#[derive(Debug, Clone)]
pub struct CheckLine {
    /// Passed.
    pub ok: bool,
    /// What was checked and found.
    pub text: String,
}

/// One event.
#[derive(Template)]
#[template(path = "console/event.html")]
pub struct EventPage {
    /// Chrome.
    pub c: Chrome,
    /// Heading.
    pub heading: String,
    /// Summary facts.
    pub what: Vec<Fact>,
    /// Rule and evidence.
    pub rule: Vec<Fact>,
    /// Process.
    pub process: Vec<Fact>,
    /// File.
    pub file: Vec<Fact>,
    /// Policy.
    pub policy: Vec<Fact>,
    /// Chain position.
    pub chain: Vec<Fact>,
    /// Link checks.
    pub checks: Vec<CheckLine>,
    /// All checks passed.
    pub verified: bool,
    /// Findings about this record.
    pub findings: Vec<FindingLine>,
    /// Host id (for the link to full verification).
    pub host_id: String,
    /// The record as stored, pretty-printed.
    pub raw: String,
}

/// The fleet.
#[derive(Template)]
#[template(path = "console/hosts.html")]
pub struct HostsPage {
    /// Chrome.
    pub c: Chrome,
    /// Hosts.
    pub rows: Vec<HostLine>,
    /// Whether any host reports a bundle.
    pub bundles: bool,
}

/// A chain of a host.
#[derive(Debug, Clone)]
pub struct ChainLine {
    /// Chain number.
    pub epoch: u64,
    /// Head.
    pub head: u64,
    /// Head hash, short.
    pub hash: String,
    /// Records stored.
    pub records: String,
    /// Pruned up to.
    pub cut: u64,
}

/// One host.
#[derive(Template)]
#[template(path = "console/host.html")]
pub struct HostPage {
    /// Chrome.
    pub c: Chrome,
    /// The host.
    pub h: HostLine,
    /// Its chains.
    pub chains: Vec<ChainLine>,
    /// Installed banned tools: (rule, path, since).
    pub installs: Vec<(String, String, String)>,
    /// Its findings.
    pub findings: Vec<FindingLine>,
    /// Its events.
    pub rows: Vec<EventLine>,
    /// Older page.
    pub older: String,
    /// Whether heartbeats are shown.
    pub heartbeats: bool,
    /// Link toggling heartbeats.
    pub toggle: String,
}

/// A host's re-derived chain.
#[derive(Template)]
#[template(path = "console/verify.html")]
pub struct VerifyPage {
    /// Chrome.
    pub c: Chrome,
    /// Host id.
    pub host_id: String,
    /// Host name.
    pub hostname: String,
    /// Records read.
    pub records: String,
    /// Intact.
    pub intact: bool,
    /// Problems: (kind, epoch, records, plain words, detail).
    pub problems: Vec<(String, u64, String, String, String)>,
    /// Notes.
    pub notes: Vec<String>,
    /// How long it took.
    pub took: String,
}

/// Every finding.
#[derive(Template)]
#[template(path = "console/findings.html")]
pub struct FindingsPage {
    /// Chrome.
    pub c: Chrome,
    /// Open findings.
    pub open: Vec<FindingLine>,
    /// Settled ones.
    pub settled: Vec<FindingLine>,
}

/// The people seen in violations.
#[derive(Template)]
#[template(path = "console/people.html")]
pub struct PeoplePage {
    /// Chrome.
    pub c: Chrome,
    /// Users with violations in 30 days.
    pub rows: Vec<Top>,
}

/// What a person did on one host under one rule.
#[derive(Debug, Clone)]
pub struct TallyLine {
    /// Host name.
    pub hostname: String,
    /// Host id.
    pub host_id: String,
    /// Rule.
    pub rule: String,
    /// Kind.
    pub kind: String,
    /// Count.
    pub n: String,
    /// First.
    pub first: String,
    /// Last.
    pub last: String,
    /// Link to these events.
    pub url: String,
}

/// A policy in force over a stretch of a person's events.
#[derive(Debug, Clone)]
pub struct SpanLine {
    /// Host name.
    pub hostname: String,
    /// From.
    pub from: String,
    /// To.
    pub to: String,
    /// Policy name and version.
    pub policy: String,
    /// SHA-256.
    pub sha: String,
    /// Mode.
    pub mode: String,
    /// Events under it.
    pub events: String,
    /// The anchor of its text on the page (empty: no text kept for it).
    pub text_anchor: String,
}

/// A policy text kept at the collector, as a person's record shows it.
#[derive(Debug, Clone)]
pub struct KeptText {
    /// The anchor on the page.
    pub anchor: String,
    /// SHA-256.
    pub sha: String,
    /// Name and version, as the `[policy]` table says.
    pub title: String,
    /// The text.
    pub text: String,
}

/// A person's record.
#[derive(Template)]
#[template(path = "console/person.html")]
pub struct PersonPage {
    /// Chrome.
    pub c: Chrome,
    /// The user name.
    pub user: String,
    /// Events (not heartbeats) in all.
    pub total: String,
    /// First and last.
    pub first: String,
    /// Last.
    pub last: String,
    /// Hosts seen on.
    pub hosts: usize,
    /// By host, rule, kind.
    pub tally: Vec<TallyLine>,
    /// Policies in force.
    pub spans: Vec<SpanLine>,
    /// The policy history read only part of the events.
    pub spans_capped: bool,
    /// The texts of the policies in force, where kept.
    pub texts: Vec<KeptText>,
    /// SHA-256s of policies in force whose text is not kept.
    pub missing: Vec<String>,
    /// The events, newest first.
    pub rows: Vec<EventLine>,
    /// Older page.
    pub older: String,
    /// Export links.
    pub exports: Vec<(String, String)>,
}

/// One policy text kept at the collector (`/console/policies/{sha256}`), or how to keep it.
#[derive(Template)]
#[template(path = "console/policy.html")]
pub struct PolicyPage {
    /// Chrome.
    pub c: Chrome,
    /// The SHA-256 asked for.
    pub sha: String,
    /// The text is kept.
    pub known: bool,
    /// Name and version, as its `[policy]` table says.
    pub title: String,
    /// When it was kept.
    pub added: String,
    /// The text.
    pub text: String,
    /// Every kept text: (link, title, SHA-256, when kept).
    pub all: Vec<(String, String, String, String)>,
}
