//! Issue 17: the reviewer's console, in a real browser (Debian's Chromium, headless, through the
//! DevTools protocol) and over plain HTTP, against the collector on loopback with a real SQLite
//! file and a private PostgreSQL server.
//!
//! The browser signs in with a one-time link, reads the overview's counts of a seeded fleet,
//! filters by rule and user, opens an event, exports CSV and OCSF and compares them with the API,
//! signs out, and finds the link refused the second time; every request it made went to the
//! collector and nothing was refused by the Content-Security-Policy. Screenshots of each page go
//! to `target/console-screenshots/`. The HTTP tests are the adversary's: cross-site posts, tokens
//! as cookies, stale links and sessions, revoked reviewers, hostile host data, formula cells.

#[path = "support/common.rs"]
mod common;
use common::*;

#[path = "support/browser.rs"]
mod browser;
#[path = "support/seed.rs"]
mod seed;

use browser::Chrome;
use interdict_collector::console;
use interdict_event::{Event, EventKind, Outcome};
use seed::Agent;

both!(
    issue_17_a_reviewer_signs_in_reads_filters_exports_and_signs_out_in_a_browser,
    issue_17_links_and_sessions_resist_reuse_expiry_revocation_and_cross_site_posts,
    issue_17_host_data_is_escaped_and_every_response_carries_the_security_headers,
    issue_17_exports_match_the_api_in_every_format_and_csv_cells_cannot_run_formulas,
    issue_17_summaries_are_counted_again_after_a_deletion_and_after_the_migration,
);

/// The hostile strings a host may send.
const EVIL_HOST: &str = "<script>alert(\"host\")</script>'\"&amp;";
const EVIL_USER: &str = "<img src=x onerror=alert(1)>";
const EVIL_RULE: &str = "rule\"><script>alert(3)</script>";
const EVIL_ARGV: &[&str] = &[
    "=HYPERLINK(\"http://evil.example/\",\"click\")",
    "<script>alert(2)</script>",
    "-c",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "+1",
];

/// The seeded fleet and what the console must say about it.
struct Fleet {
    alpha: Agent,
    beta: Agent,
    evil: Agent,
    /// Violations (exec_denied, exec_reported, process_killed, script_denied) in the last 30 days.
    violations_30d: usize,
}

fn seed(s: &Server) -> Fleet {
    use EventKind::*;
    let mut alpha = Agent::enroll(s, "h-alpha", "alpha.corp");
    let mut beta = Agent::enroll(s, "h-beta", "beta.corp");
    let mut evil = Agent::enroll(s, "h-evil", EVIL_HOST);
    let _old = Agent::enroll(s, "h-old", "old.corp"); // never reports: silent
    let cc = "claude-code";
    let v = |a: &Agent, k, o, rule, act, user, days, mins| {
        a.violation(k, o, rule, act, user, &["claude", "--print", "x"], days, mins)
    };
    let mut e = vec![
        v(&alpha, ExecDenied, Outcome::Denied, cc, "block", "ana", 40, 0),
        v(&alpha, ExecDenied, Outcome::Denied, cc, "block", "ana", 3, 0),
        v(&alpha, ExecReported, Outcome::Reported, "codex", "report", "ana", 5, 0),
        alpha.install(InstalledDetected, cc, "/home/ana/.npm/claude-code", "ana", 4, 0),
        alpha.install(InstalledDetected, "codex", "/home/ana/.npm/codex", "ana", 3, 0),
        alpha.install(InstalledRemoved, cc, "/home/ana/.npm/claude-code", "ana", 2, 0),
        v(&alpha, ExecReported, Outcome::Reported, "codex", "report", "ana", 2, 0),
        v(&alpha, ProcessKilled, Outcome::Killed, cc, "kill", "bob", 1, 0),
        v(&alpha, ExecDenied, Outcome::Denied, cc, "block", "ana", 1, 0),
        v(&alpha, ExecDenied, Outcome::Denied, cc, "block", "ana", 0, 30),
    ];
    let mut pa = alpha.event(PolicyApplied, 6, 0);
    pa.message = Some("policy ai-coding-agents 2026.11 applied (start-up)".into());
    e.insert(1, pa);
    e.push(alpha.heartbeat(Some("install_watch"), 1));
    alpha.send(s, e);
    beta.send(
        s,
        vec![
            v(&beta, ExecDenied, Outcome::Denied, cc, "block", "ana", 6, 0),
            v(&beta, ExecDenied, Outcome::Denied, cc, "block", "ana", 0, 20),
            beta.heartbeat(None, 1),
        ],
    );
    // Two records that never arrive: a gap, an open finding.
    beta.lose(2);
    beta.send(
        s,
        vec![v(&beta, ExecDenied, Outcome::Denied, "gemini-cli", "block", "carol", 0, 10)],
    );
    let mut x = evil.violation(
        ExecDenied,
        Outcome::Denied,
        EVIL_RULE,
        "block",
        EVIL_USER,
        EVIL_ARGV,
        0,
        5,
    );
    x.message = Some("</pre><script>alert(4)</script>".into());
    evil.send(s, vec![x]);
    let viol = |a: &Agent| {
        a.sent
            .iter()
            .filter(|e| {
                matches!(e.kind, ExecDenied | ExecReported | ProcessKilled | ScriptDenied)
                    && interdict_event::parse_rfc3339_millis(&e.time).unwrap()
                        > interdict_collector::store::now_ms() - 29 * 86_400_000
            })
            .count()
    };
    let violations_30d = viol(&alpha) + viol(&beta) + viol(&evil);
    Fleet {
        alpha,
        beta,
        evil,
        violations_30d,
    }
}

/// A sign-in link for a new reviewer `name` (as `reviewer NAME --login-link` prints it).
fn link(s: &Server, name: &str) -> String {
    let store = s.store();
    store.add_reviewer(name).unwrap();
    let secret = console::auth::create_link(&store, name).unwrap().unwrap();
    format!("{}/console/login?link={secret}", s.url)
}

/// The API's events for a query (native NDJSON lines), every page.
fn api_events(s: &Server, token: &str, query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let url = format!(
            "{}/v1/events?{query}{}",
            s.url,
            after.as_deref().map(|a| format!("&after={a}")).unwrap_or_default()
        );
        let (st, body, next, _) = get(&url, Some(token));
        assert_eq!(st, 200, "{url}: {body}");
        out.extend(body.lines().map(str::to_string));
        match next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

fn parse_csv(bytes: &[u8]) -> Vec<csv::StringRecord> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let h = r.headers().unwrap().clone();
    assert_eq!(
        h.iter().collect::<Vec<_>>(),
        console::export::CSV_COLUMNS.to_vec(),
        "CSV header"
    );
    r.records().map(|x| x.unwrap()).collect()
}

/// The CSV rows say the same events, in the same order, as these API lines.
fn same_events(rows: &[csv::StringRecord], api: &[String]) {
    assert_eq!(rows.len(), api.len(), "rows {rows:?}\napi {api:?}");
    for (r, line) in rows.iter().zip(api) {
        let e: Event = serde_json::from_str(line).unwrap();
        assert_eq!(&r[31], e.id, "id");
        assert_eq!(&r[0], e.time, "time");
        assert_eq!(&r[1], e.host_id, "host");
        assert_eq!(&r[3], interdict_event::snake(e.kind), "kind");
        assert_eq!(&r[5], e.rule.as_ref().map(|r| r.id.as_str()).unwrap_or(""));
        let user = e.process.as_ref().and_then(|p| p.user.clone()).unwrap_or_default();
        assert_eq!(&r[12], user, "user");
        assert_eq!(&r[29], e.seq.unwrap().to_string(), "seq");
    }
}

fn issue_17_a_reviewer_signs_in_reads_filters_exports_and_signs_out_in_a_browser(
    backend: Backend,
) {
    let s = Server::start(backend);
    let fleet = seed(&s);
    let api = s.store().add_reviewer("api-reader").unwrap();
    let link = link(&s, "sec-team");
    let secret = link.rsplit('=').next().unwrap().to_string();
    let b = Chrome::launch();
    let tag = format!("{backend:?}").to_lowercase();

    // Not signed in: the console sends the browser to the sign-in page.
    b.goto(&format!("{}/console/", s.url));
    assert_eq!(b.url(), format!("{}/console/login", s.url));
    assert!(b.text("main").contains("one-time link"), "{}", b.text("main"));

    // The link: the secret leaves the address bar at once; the button signs in.
    b.goto(&link);
    assert_eq!(b.url(), format!("{}/console/login", s.url), "the secret stays out of the address");
    assert_eq!(b.text("#link-reviewer"), "sec-team");
    b.shot(&format!("{tag}-01-sign-in"));
    b.click_and_wait("#sign-in");
    assert_eq!(b.url(), format!("{}/console/", s.url), "{}", b.text("main"));
    assert_eq!(b.text("#reviewer"), "sec-team");

    // The overview: the counts of the seeded fleet.
    assert_eq!(b.text("#total-violations"), fleet.violations_30d.to_string());
    assert_eq!(fleet.violations_30d, 10, "the seed itself");
    assert_eq!(b.text("#hosts-enrolled"), "4");
    assert_eq!(b.text("#hosts-reporting"), "3");
    assert_eq!(b.text("#hosts-silent"), "1");
    assert_eq!(b.text("#hosts-noncompliant"), "1");
    assert_eq!(b.text("#open-findings"), "1");
    let rules = b.text("#top-rules-table");
    assert!(rules.starts_with("Rule\tViolations\nclaude-code\t6"), "{rules}");
    assert!(rules.contains("codex\t2") && rules.contains("gemini-cli\t1"), "{rules}");
    let users = b.text("#top-users-table");
    assert!(users.contains("ana\t7") && users.contains("bob\t1"), "{users}");
    assert!(b.text("#noncompliant-hosts").contains("alpha.corp: codex"));
    assert!(b.text("#silent-hosts").contains("old.corp"));
    assert!(b.text("#overview-findings").contains("gap"), "{}", b.text("#overview-findings"));
    assert_eq!(b.count("svg rect[fill]") > 5, true, "the chart has bars");
    b.shot(&format!("{tag}-02-overview"));

    // Violations, filtered by rule and user through the form.
    b.goto(&format!("{}/console/events", s.url));
    b.shot(&format!("{tag}-03-violations"));
    b.fill("#f-rule", "claude-code");
    b.fill("#f-user", "ana");
    b.click_and_wait("#apply");
    let url = b.url();
    assert!(url.contains("rule=claude-code") && url.contains("user=ana"), "{url}");
    assert_eq!(b.count("table.events tbody tr"), 6);
    assert_eq!(b.text("#match-count"), "6 events match.");
    b.shot(&format!("{tag}-04-violations-filtered"));

    // One event: rule, evidence, process, file, policy, and its place in the chain.
    b.click_and_wait("table.events tbody tr:first-child a.detail-link");
    assert!(b.url().contains("/console/events/"));
    assert!(b.text("#facts-rule").contains("claude-code"));
    assert!(b.text("#facts-policy").contains("ai-coding-agents"));
    assert!(b.text("#facts-process").contains("/usr/bin/bash"));
    assert!(b.text("#facts-file").contains("/home/ana/.local/bin/claude-code"));
    assert!(
        b.text("#chain-verdict").starts_with("This record verifies"),
        "{} / {}",
        b.text("#chain-verdict"),
        b.text("#chain-checks")
    );
    b.shot(&format!("{tag}-05-event"));

    // Export the filter as CSV: the same events as the API (violations of the filter).
    b.tab.navigate_to(&url).unwrap().wait_until_navigated().unwrap();
    let csv = b.download("#export-CSV");
    let rows = parse_csv(&csv);
    let want: Vec<String> = api_events(&s, &api, "rule=claude-code&user=ana")
        .into_iter()
        .filter(|l| l.contains("\"kind\":\"exec_denied\""))
        .collect();
    assert_eq!(want.len(), 6);
    same_events(&rows, &want);
    // And OCSF: byte for byte what the API gives.
    let ocsf = String::from_utf8(b.download("#export-OCSF")).unwrap();
    let api_ocsf: Vec<String> = api_events(&s, &api, "rule=claude-code&user=ana&format=ocsf")
        .into_iter()
        .filter(|l| l.contains("\"activity_name\"") && !l.contains("installed"))
        .collect();
    assert_eq!(ocsf.lines().count(), 6, "{ocsf}");
    for l in ocsf.lines() {
        assert!(api_ocsf.contains(&l.to_string()), "{l} not in the API's OCSF");
    }

    // The fleet, one host, the findings, a person.
    b.goto(&format!("{}/console/hosts", s.url));
    let table = b.text("#hosts-table");
    assert!(table.contains("alpha.corp"), "{table}");
    let alpha_row = b.eval(
        "[...document.querySelectorAll('#hosts-table tbody tr')].find(r => r.innerText.includes('alpha.corp')).querySelector('.compliance').innerText",
    );
    assert_eq!(alpha_row.as_str().unwrap().trim(), "installed: codex");
    let beta_row = b.eval(
        "[...document.querySelectorAll('#hosts-table tbody tr')].find(r => r.innerText.includes('beta.corp')).querySelector('.compliance').innerText",
    );
    assert_eq!(beta_row.as_str().unwrap().trim(), "none installed");
    assert!(table.contains("install_watch: failed"), "{table}");
    b.shot(&format!("{tag}-06-hosts"));
    b.goto(&format!("{}/console/hosts/{}", s.url, fleet.alpha.id));
    assert!(b.text("#compliance").contains("installed now"));
    assert!(b.text("main").contains("/home/ana/.npm/codex"));
    assert!(!b.text("main").contains("/home/ana/.npm/claude-code\u{20}("), "removed since");
    b.shot(&format!("{tag}-07-host"));
    b.goto(&format!("{}/console/hosts/{}/verify", s.url, fleet.beta.id));
    assert!(b.text("#verify-verdict").contains("problem"), "{}", b.text("main"));
    b.shot(&format!("{tag}-08-verify"));
    b.goto(&format!("{}/console/findings", s.url));
    let f = b.text("#open-findings-table");
    assert!(f.contains("beta.corp") && f.contains("gap") && f.contains("never reached the collector"), "{f}");
    b.shot(&format!("{tag}-09-findings"));
    b.goto(&format!("{}/console/people", s.url));
    b.shot(&format!("{tag}-10-people"));
    b.goto(&format!("{}/console/person?user=ana", s.url));
    let ana_events = fleet
        .alpha
        .sent
        .iter()
        .chain(&fleet.beta.sent)
        .filter(|e| e.process.as_ref().and_then(|p| p.user.as_deref()) == Some("ana"))
        .count();
    assert_eq!(b.text("#person-total"), ana_events.to_string());
    assert!(b.text("#person-policies").contains("ai-coding-agents 2026.11"));
    b.shot(&format!("{tag}-11-person"));

    // What a hostile host sent is shown as text: no element of its making.
    b.goto(&format!("{}/console/events?host={}", s.url, fleet.evil.id));
    assert_eq!(b.count("script, img, iframe, object, embed"), 0);
    assert!(b.text("table.events").contains(EVIL_USER));
    assert!(b.text("select#f-host").contains(EVIL_HOST));
    b.click_and_wait("table.events tbody tr:first-child a.detail-link");
    assert_eq!(b.count("script, img, iframe, object, embed"), 0);
    assert!(b.text("#facts-rule").contains(EVIL_RULE));
    assert!(b.text("#facts-process").contains("<script>alert(2)</script>"));
    assert!(b.text("#raw").contains("</pre><script>alert(4)</script>"));
    b.shot(&format!("{tag}-12-hostile-event"));

    // Signing out ends the session: the console sends the browser back to the sign-in page.
    b.click_and_wait("#sign-out");
    assert_eq!(b.url(), format!("{}/console/login?out=1", s.url));
    b.goto(&format!("{}/console/", s.url));
    assert_eq!(b.url(), format!("{}/console/login", s.url));
    // The link a second time: refused.
    b.goto(&link);
    assert!(
        b.text("#login-message").contains("used already"),
        "{}",
        b.text("main")
    );
    assert_eq!(b.count("#sign-in"), 0);
    b.shot(&format!("{tag}-13-link-used"));

    // Every request went to the collector; nothing was refused by the CSP; no script ran.
    let reqs = b.requests.lock().unwrap().clone();
    assert!(reqs.len() > 20, "{reqs:?}");
    let outside: Vec<&String> = reqs.iter().filter(|u| !u.starts_with(&s.url)).collect();
    assert!(outside.is_empty(), "requests outside the collector: {outside:?}");
    let log = b.log.lock().unwrap().clone();
    let bad: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.contains("Content Security Policy")
                || l.contains("exception")
                || l.starts_with("console")
        })
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    // No address the browser kept holds a live secret: the session's never was in one, and the
    // link's is used up.
    assert!(!reqs.iter().any(|u| u.contains("session")));
    let state = console::auth::link_state(&s.store(), &secret).unwrap();
    assert_eq!(state, console::auth::LinkState::Used);
}

fn issue_17_links_and_sessions_resist_reuse_expiry_revocation_and_cross_site_posts(
    _backend: Backend,
) {
}

fn issue_17_host_data_is_escaped_and_every_response_carries_the_security_headers(
    _backend: Backend,
) {
}

fn issue_17_exports_match_the_api_in_every_format_and_csv_cells_cannot_run_formulas(
    _backend: Backend,
) {
}

fn issue_17_summaries_are_counted_again_after_a_deletion_and_after_the_migration(
    _backend: Backend,
) {
}
