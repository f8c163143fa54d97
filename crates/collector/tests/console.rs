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
use interdict_collector::{console, Config};
use interdict_event::{Event, EventKind, Outcome};
use seed::Agent;

both!(
    issue_17_a_reviewer_signs_in_reads_filters_exports_and_signs_out_in_a_browser,
    issue_17_links_and_sessions_resist_reuse_expiry_revocation_and_cross_site_posts,
    issue_17_host_data_is_escaped_and_every_response_carries_the_security_headers,
    issue_17_exports_match_the_api_in_every_format_and_csv_cells_cannot_run_formulas,
    issue_17_summaries_are_counted_again_after_a_deletion_and_after_the_migration,
    issue_17_the_command_line_link_signs_in_and_no_secret_reaches_the_log,
    issue_17_a_case_file_policy_texts_paging_keyboard_and_contrast_in_a_browser,
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
        a.violation(
            k,
            o,
            rule,
            act,
            user,
            &["claude", "--print", "x"],
            days,
            mins,
        )
    };
    let mut e = vec![
        v(
            &alpha,
            ExecDenied,
            Outcome::Denied,
            cc,
            "block",
            "ana",
            40,
            0,
        ),
        v(
            &alpha,
            ExecDenied,
            Outcome::Denied,
            cc,
            "block",
            "ana",
            3,
            0,
        ),
        v(
            &alpha,
            ExecReported,
            Outcome::Reported,
            "codex",
            "report",
            "ana",
            5,
            0,
        ),
        alpha.install(
            InstalledDetected,
            cc,
            "/home/ana/.npm/claude-code",
            "ana",
            4,
            0,
        ),
        alpha.install(
            InstalledDetected,
            "codex",
            "/home/ana/.npm/codex",
            "ana",
            3,
            0,
        ),
        alpha.install(
            InstalledRemoved,
            cc,
            "/home/ana/.npm/claude-code",
            "ana",
            2,
            0,
        ),
        v(
            &alpha,
            ExecReported,
            Outcome::Reported,
            "codex",
            "report",
            "ana",
            2,
            0,
        ),
        v(
            &alpha,
            ProcessKilled,
            Outcome::Killed,
            cc,
            "kill",
            "bob",
            1,
            0,
        ),
        v(
            &alpha,
            ExecDenied,
            Outcome::Denied,
            cc,
            "block",
            "ana",
            1,
            0,
        ),
        v(
            &alpha,
            ExecDenied,
            Outcome::Denied,
            cc,
            "block",
            "ana",
            0,
            30,
        ),
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
            v(
                &beta,
                ExecDenied,
                Outcome::Denied,
                cc,
                "block",
                "ana",
                0,
                20,
            ),
            beta.heartbeat(None, 1),
        ],
    );
    // Two records that never arrive: a gap, an open finding.
    beta.lose(2);
    beta.send(
        s,
        vec![v(
            &beta,
            ExecDenied,
            Outcome::Denied,
            "gemini-cli",
            "block",
            "carol",
            0,
            10,
        )],
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
                matches!(
                    e.kind,
                    ExecDenied | ExecReported | ProcessKilled | ScriptDenied
                ) && interdict_event::parse_rfc3339_millis(&e.time).unwrap()
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
            after
                .as_deref()
                .map(|a| format!("&after={a}"))
                .unwrap_or_default()
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
        let user = e
            .process
            .as_ref()
            .and_then(|p| p.user.clone())
            .unwrap_or_default();
        assert_eq!(&r[12], user, "user");
        assert_eq!(&r[29], e.seq.unwrap().to_string(), "seq");
    }
}

fn issue_17_a_reviewer_signs_in_reads_filters_exports_and_signs_out_in_a_browser(backend: Backend) {
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
    assert!(
        b.text("main").contains("one-time link"),
        "{}",
        b.text("main")
    );

    // The link: the secret leaves the address bar at once; the button signs in.
    b.goto(&link);
    assert_eq!(
        b.url(),
        format!("{}/console/login", s.url),
        "the secret stays out of the address"
    );
    assert_eq!(b.text("#link-reviewer"), "sec-team");
    b.shot(&format!("{tag}-01-sign-in"));
    b.click_and_wait("#sign-in");
    assert_eq!(b.url(), format!("{}/console/", s.url), "{}", b.text("main"));
    assert_eq!(b.text("#reviewer"), "sec-team");
    let cookies = b.tab.get_cookies().unwrap();
    let c = cookies
        .iter()
        .find(|c| c.name == "interdict_session")
        .expect("the session cookie");
    assert!(c.http_only, "HttpOnly");
    assert_eq!(format!("{:?}", c.same_site), "Some(Strict)");
    let session = c.value.clone();
    assert_eq!(
        b.eval("document.cookie"),
        serde_json::json!(""),
        "no cookie a page could read"
    );

    // The overview: the counts of the seeded fleet.
    assert_eq!(
        b.text("#total-violations"),
        fleet.violations_30d.to_string()
    );
    assert_eq!(fleet.violations_30d, 10, "the seed itself");
    assert_eq!(b.text("#hosts-enrolled"), "4");
    assert_eq!(b.text("#hosts-reporting"), "3");
    assert_eq!(b.text("#hosts-silent"), "1");
    assert_eq!(b.text("#hosts-noncompliant"), "1");
    assert_eq!(b.text("#open-findings"), "1");
    let rules = b.text("#top-rules-table");
    assert!(
        rules.starts_with("Rule\tViolations\nclaude-code\t6"),
        "{rules}"
    );
    assert!(
        rules.contains("codex\t2") && rules.contains("gemini-cli\t1"),
        "{rules}"
    );
    let users = b.text("#top-users-table");
    assert!(
        users.contains("ana\t7") && users.contains("bob\t1"),
        "{users}"
    );
    assert!(b.text("#noncompliant-hosts").contains("alpha.corp: codex"));
    assert!(b.text("#silent-hosts").contains("old.corp"));
    assert!(
        b.text("#overview-findings").contains("gap"),
        "{}",
        b.text("#overview-findings")
    );
    assert!(b.count("svg rect[fill]") > 5, "the chart has bars");
    b.shot(&format!("{tag}-02-overview"));

    // Violations, filtered by rule and user through the form.
    b.goto(&format!("{}/console/events", s.url));
    b.shot(&format!("{tag}-03-violations"));
    b.fill("#f-rule", "claude-code");
    b.fill("#f-user", "ana");
    b.click_and_wait("#apply");
    let url = b.url();
    assert!(
        url.contains("rule=claude-code") && url.contains("user=ana"),
        "{url}"
    );
    assert_eq!(b.count("table.events tbody tr"), 6);
    assert_eq!(b.text("#match-count"), "6 events match.");
    b.shot(&format!("{tag}-04-violations-filtered"));

    // One event: rule, evidence, process, file, policy, and its place in the chain.
    b.click_and_wait("table.events tbody tr:first-child a.detail-link");
    assert!(b.url().contains("/console/events/"));
    assert!(b.text("#facts-rule").contains("claude-code"));
    assert!(b.text("#facts-policy").contains("ai-coding-agents"));
    assert!(b.text("#facts-process").contains("/usr/bin/bash"));
    assert!(b
        .text("#facts-file")
        .contains("/home/ana/.local/bin/claude-code"));
    assert!(
        b.text("#chain-verdict").starts_with("This record verifies"),
        "{} / {}",
        b.text("#chain-verdict"),
        b.text("#chain-checks")
    );
    b.shot(&format!("{tag}-05-event"));

    // Export the filter as CSV: the same events as the API (violations of the filter).
    b.goto(&url);
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
        assert!(
            api_ocsf.contains(&l.to_string()),
            "{l} not in the API's OCSF"
        );
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
    assert!(
        !b.text("main").contains("/home/ana/.npm/claude-code\u{20}("),
        "removed since"
    );
    b.shot(&format!("{tag}-07-host"));
    b.goto(&format!("{}/console/hosts/{}/verify", s.url, fleet.beta.id));
    assert!(
        b.text("#verify-verdict").contains("problem"),
        "{}",
        b.text("main")
    );
    b.shot(&format!("{tag}-08-verify"));
    b.goto(&format!("{}/console/findings", s.url));
    let f = b.text("#open-findings-table");
    assert!(
        f.contains("beta.corp") && f.contains("gap") && f.contains("never reached the collector"),
        "{f}"
    );
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
    assert!(b
        .text("#person-policies")
        .contains("ai-coding-agents 2026.11"));
    b.shot(&format!("{tag}-11-person"));

    // What a hostile host sent is shown as text: no element of its making.
    b.goto(&format!("{}/console/events?host={}", s.url, fleet.evil.id));
    assert_eq!(b.count("script, img, iframe, object, embed"), 0);
    assert!(b.text("table.events").contains(EVIL_USER));
    assert!(b.text("select#f-host").contains(EVIL_HOST));
    b.click_and_wait("table.events tbody tr:first-child a.detail-link");
    assert_eq!(b.count("script, img, iframe, object, embed"), 0);
    assert!(b.text("#facts-rule").contains(EVIL_RULE));
    assert!(b
        .text("#facts-process")
        .contains("<script>alert(2)</script>"));
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
    assert!(
        outside.is_empty(),
        "requests outside the collector: {outside:?}"
    );
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
    // The browser's history keeps the link the reviewer opened (any link does), but that secret
    // is used up; the session's secret is in no address.
    let history = b.history();
    assert!(
        history
            .iter()
            .any(|u| u.ends_with("/console/events/14") || u.contains("/console/hosts")),
        "the history database was read: {history:?}"
    );
    for u in &history {
        assert!(!u.contains(&session), "{u}");
        if let Some(x) = u.split("link=").nth(1) {
            let st = console::auth::link_state(&s.store(), x).unwrap();
            assert!(
                !matches!(st, console::auth::LinkState::Valid { .. }),
                "{u}: {st:?}"
            );
        }
    }
}

// ---- plain HTTP, as an adversary or a script would ----

/// HTTP without following redirects.
fn web() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value a Set-Cookie gives cookie `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies().iter().find_map(|c| {
            let (k, v) = c.split(';').next()?.split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    }
}

fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    let a = web();
    let mut resp = match method {
        "GET" => {
            let mut r = a.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call().unwrap()
        }
        _ => {
            let mut r = a.post(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(body.unwrap_or("")).unwrap()
        }
    };
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .unwrap_or_default();
    Resp {
        status,
        headers,
        body,
    }
}

/// GET with the console session cookie.
fn page(s: &Server, path: &str, session: &str) -> Resp {
    send(
        "GET",
        &format!("{}{path}", s.url),
        &[("Cookie", &format!("interdict_session={session}"))],
        None,
    )
}

/// Post the sign-in form as the sign-in page does (same origin, the link cookie, its token).
fn post_login(
    s: &Server,
    secret: &str,
    origin: Option<&str>,
    site: Option<&str>,
    csrf: &str,
) -> Resp {
    let cookie = format!("interdict_link={secret}");
    let body = format!("csrf={csrf}");
    let mut h: Vec<(&str, &str)> = vec![
        ("Cookie", &cookie),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    if let Some(o) = origin {
        h.push(("Origin", o));
    }
    if let Some(x) = site {
        h.push(("Sec-Fetch-Site", x));
    }
    send("POST", &format!("{}/console/login", s.url), &h, Some(&body))
}

/// Sign in over HTTP with a fresh link for `name` (a reviewer already); the session cookie.
fn sign_in(s: &Server, name: &str) -> String {
    let secret = console::auth::create_link(&s.store(), name)
        .unwrap()
        .unwrap();
    let origin = s.url.clone();
    let r = post_login(
        s,
        &secret,
        Some(&origin),
        Some("same-origin"),
        &console::auth::csrf_for(&secret),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    r.cookie("interdict_session").expect("a session cookie")
}

fn text_of(html: &str, id: &str) -> String {
    let start = format!("id=\"{id}\">");
    let i = html
        .find(&start)
        .unwrap_or_else(|| panic!("no #{id} in {html}"))
        + start.len();
    html[i..].split('<').next().unwrap().to_string()
}

fn issue_17_links_and_sessions_resist_reuse_expiry_revocation_and_cross_site_posts(
    backend: Backend,
) {
    let s = Server::start(backend);
    let store = s.store();
    let agent_token = enroll(&s, "h-1");
    let api_token = store.add_reviewer("rita").unwrap();
    let secret = console::auth::create_link(&store, "rita").unwrap().unwrap();
    let good = console::auth::csrf_for(&secret);
    let origin = s.url.clone();
    let valid = |secret: &str| {
        matches!(
            console::auth::link_state(&s.store(), secret).unwrap(),
            console::auth::LinkState::Valid { .. }
        )
    };

    // Following the link uses nothing up (mail scanners follow links): it moves the secret
    // into a cookie for the sign-in page and drops it from the address.
    let r = send(
        "GET",
        &format!("{}/console/login?link={secret}", s.url),
        &[],
        None,
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/console/login"));
    let c = r.cookies().join(" | ");
    assert!(
        c.contains(&format!("interdict_link={secret}"))
            && c.contains("HttpOnly")
            && c.contains("Path=/console/login"),
        "{c}"
    );
    assert!(valid(&secret));
    // The stored link is its hash, not the secret.
    assert_eq!(
        s.tamper(
            "UPDATE console_links SET reviewer = reviewer WHERE secret_sha256 = ?1",
            &[&secret]
        ),
        0
    );
    assert_eq!(
        s.tamper(
            "UPDATE console_links SET reviewer = reviewer WHERE secret_sha256 = ?1",
            &[&interdict_collector::store::token_hash(&secret)]
        ),
        1
    );

    // Cross-site posts: refused, and the link stays unused.
    let evil = Some("https://evil.example");
    for (o, site, csrf, why) in [
        (None, None, good.as_str(), "no Origin"),
        (evil, None, good.as_str(), "another origin"),
        (evil, Some("cross-site"), good.as_str(), "cross-site"),
        (
            Some("null"),
            None,
            good.as_str(),
            "Origin null without Sec-Fetch-Site",
        ),
        (
            Some("null"),
            Some("same-site"),
            good.as_str(),
            "Origin null from a sibling site",
        ),
        (
            Some(origin.as_str()),
            Some("cross-site"),
            good.as_str(),
            "Sec-Fetch-Site cross-site",
        ),
        (
            Some(origin.as_str()),
            Some("same-origin"),
            "00",
            "a wrong form token",
        ),
    ] {
        let r = post_login(&s, &secret, o, site, csrf);
        assert_eq!(r.status, 403, "{why}: {}", r.body);
        assert!(r.cookie("interdict_session").is_none(), "{why}");
        assert!(valid(&secret), "{why}: the link was used up");
    }
    // Agent tokens and API tokens are not sign-in links.
    for t in [&agent_token, &api_token] {
        let r = post_login(
            &s,
            t,
            Some(&origin),
            Some("same-origin"),
            &console::auth::csrf_for(t),
        );
        assert_eq!(r.status, 403);
        assert!(r.body.contains("not a valid sign-in link"), "{}", r.body);
    }
    assert!(
        console::auth::create_link(&store, "h-1").unwrap().is_none(),
        "a host is no reviewer"
    );

    // The sign-in page's own post (Chrome sends Origin: null under no-referrer).
    let r = post_login(&s, &secret, Some("null"), Some("same-origin"), &good);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/console/"));
    let session = r.cookie("interdict_session").unwrap();
    let set = r.cookies().join(" | ");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert_ne!(session, secret);
    let home = page(&s, "/console/", &session);
    assert_eq!(home.status, 200);
    assert_eq!(text_of(&home.body, "reviewer"), "rita");
    // Used once.
    let r = post_login(&s, &secret, Some(&origin), Some("same-origin"), &good);
    assert_eq!(r.status, 403);
    assert!(r.body.contains("used already"), "{}", r.body);
    let r = send(
        "GET",
        &format!("{}/console/login", s.url),
        &[("Cookie", &format!("interdict_link={secret}"))],
        None,
    );
    assert_eq!(r.status, 403);
    assert!(!r.body.contains("id=\"sign-in\""));

    // Two uses at once: exactly one signs in.
    let racy = console::auth::create_link(&store, "rita").unwrap().unwrap();
    let wins: usize = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                sc.spawn(|| console::auth::redeem(&s.store(), &racy).unwrap().is_ok() as usize)
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(wins, 1);

    // An expired link.
    let old = console::auth::create_link(&store, "rita").unwrap().unwrap();
    s.tamper(
        "UPDATE console_links SET expires_ms = 1 WHERE secret_sha256 = ?1",
        &[&interdict_collector::store::token_hash(&old)],
    );
    let r = post_login(
        &s,
        &old,
        Some(&origin),
        Some("same-origin"),
        &console::auth::csrf_for(&old),
    );
    assert_eq!(r.status, 403);
    assert!(r.body.contains("expired"), "{}", r.body);

    // Tokens are not sessions: an agent's, a reviewer's API token, as the cookie or as a bearer.
    for (h, v) in [
        ("Cookie", format!("interdict_session={agent_token}")),
        ("Cookie", format!("interdict_session={api_token}")),
        ("Authorization", format!("Bearer {api_token}")),
        ("Cookie", format!("interdict_session={secret}")),
    ] {
        let r = send("GET", &format!("{}/console/", s.url), &[(h, &v)], None);
        assert_eq!(r.status, 303, "{h}: {v}");
        assert_eq!(r.header("location"), Some("/console/login"));
    }
    // And a session is not an API token.
    let (st, _, _, _) = get(&format!("{}/v1/hosts", s.url), Some(&session));
    assert_eq!(st, 401);

    // Sessions end when unused for too long, and after the longest time in any case.
    let idle = sign_in(&s, "rita");
    assert_eq!(page(&s, "/console/hosts", &idle).status, 200);
    let h = interdict_collector::store::token_hash(&idle);
    let idle_s = Config::default().console.session_idle_s as i64;
    s.tamper(
        &format!(
            "UPDATE console_sessions SET seen_ms = seen_ms - {} WHERE id_sha256 = ?1",
            (idle_s + 5) * 1000
        ),
        &[&h],
    );
    assert_eq!(
        page(&s, "/console/hosts", &idle).status,
        303,
        "idle too long"
    );
    let long = sign_in(&s, "rita");
    let max_s = Config::default().console.session_max_s as i64;
    s.tamper(
        &format!(
            "UPDATE console_sessions SET created_ms = created_ms - {} WHERE id_sha256 = ?1",
            (max_s + 5) * 1000
        ),
        &[&interdict_collector::store::token_hash(&long)],
    );
    assert_eq!(
        page(&s, "/console/hosts", &long).status,
        303,
        "past the longest session"
    );

    // Signing out: not from another site; from the page, the session ends.
    let csrf = console::auth::csrf_for(&session);
    let cookie = format!("interdict_session={session}");
    let form = format!("csrf={csrf}");
    let out = |origin: &str, site: &str, body: &str| {
        send(
            "POST",
            &format!("{}/console/logout", s.url),
            &[
                ("Cookie", &cookie),
                ("Origin", origin),
                ("Sec-Fetch-Site", site),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Some(body),
        )
    };
    assert_eq!(out("https://evil.example", "cross-site", &form).status, 403);
    assert_eq!(out(&origin, "same-origin", "csrf=00").status, 403);
    assert_eq!(
        page(&s, "/console/", &session).status,
        200,
        "still signed in"
    );
    let r = out(&origin, "same-origin", &form);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/console/login?out=1"));
    assert!(r.cookies().join(" ").contains("Max-Age=0"));
    assert_eq!(page(&s, "/console/", &session).status, 303, "signed out");

    // Revoking the reviewer ends their sessions at once, and their links; a new token for the
    // same name does not bring them back.
    let live = sign_in(&s, "rita");
    let pending = console::auth::create_link(&store, "rita").unwrap().unwrap();
    assert_eq!(page(&s, "/console/", &live).status, 200);
    assert!(store.revoke_reviewer("rita").unwrap());
    assert_eq!(page(&s, "/console/", &live).status, 303, "revoked");
    assert_eq!(
        console::auth::link_state(&store, &pending).unwrap(),
        console::auth::LinkState::Revoked
    );
    store.add_reviewer("rita").unwrap();
    assert_eq!(
        page(&s, "/console/", &live).status,
        303,
        "a new token, not the old sessions"
    );
    let r = post_login(
        &s,
        &pending,
        Some(&origin),
        Some("same-origin"),
        &console::auth::csrf_for(&pending),
    );
    assert_eq!(r.status, 403);
}

/// The escaped form of `s` in the console's HTML.
fn escaped(s: &str) -> String {
    s.replace('&', "&#38;")
        .replace('<', "&#60;")
        .replace('>', "&#62;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// The collector's cursor of a host's newest event.
fn newest_cursor(s: &Server, token: &str, host: &str) -> String {
    let (st, _, _, cursor) = get(
        &format!("{}/v1/events?host={host}&limit=10000", s.url),
        Some(token),
    );
    assert_eq!(st, 200);
    cursor.unwrap()
}

fn security_headers(r: &Resp, what: &str) {
    let want = [
        ("content-security-policy", console::CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
    ];
    for (k, v) in want {
        assert_eq!(r.header(k), Some(v), "{what}: {k}");
    }
    let csp = r.header("content-security-policy").unwrap();
    for part in [
        "default-src 'self'",
        "script-src 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
}

fn issue_17_host_data_is_escaped_and_every_response_carries_the_security_headers(backend: Backend) {
    let s = Server::start(backend);
    let fleet = seed(&s);
    let api = s.store().add_reviewer("api-reader").unwrap();
    s.store().add_reviewer("rita").unwrap();
    let session = sign_in(&s, "rita");
    let evil_cursor = newest_cursor(&s, &api, &fleet.evil.id);
    let hostile_query = console::qs(&[
        ("user", "\"><script>alert(5)</script>"),
        ("rule", "'><img src=x>"),
    ]);
    let pages: Vec<(String, u16)> = vec![
        ("/console/".into(), 200),
        ("/console/events".into(), 200),
        (
            format!("/console/events?host={}&kind=all", fleet.evil.id),
            200,
        ),
        (format!("/console/events{hostile_query}"), 200),
        (format!("/console/events/{evil_cursor}"), 200),
        ("/console/hosts".into(), 200),
        (format!("/console/hosts/{}", fleet.evil.id), 200),
        (format!("/console/hosts/{}/verify", fleet.evil.id), 200),
        ("/console/findings".into(), 200),
        ("/console/people".into(), 200),
        (
            format!("/console/person{}", console::qs(&[("user", EVIL_USER)])),
            200,
        ),
        ("/console/hosts/%3Cscript%3E".into(), 404),
        ("/console/events/99999999".into(), 404),
        ("/console/events/%3Cscript%3E".into(), 404),
        ("/console/events?since=%3Cscript%3E".into(), 200),
    ];
    for (path, status) in &pages {
        let r = page(&s, path, &session);
        assert_eq!(r.status, *status, "{path}: {}", r.body);
        security_headers(&r, path);
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
        let lower = r.body.to_lowercase();
        for tag in [
            "<script",
            "<img",
            "<iframe",
            "<object",
            "<embed",
            "javascript:",
        ] {
            assert!(!lower.contains(tag), "{path} holds {tag}:\n{}", r.body);
        }
    }
    let hosts = page(&s, "/console/hosts", &session).body;
    assert!(hosts.contains(&escaped(EVIL_HOST)), "{hosts}");
    let ev = page(&s, &format!("/console/events/{evil_cursor}"), &session).body;
    for x in [EVIL_USER, EVIL_RULE, "</pre><script>alert(4)</script>"] {
        assert!(ev.contains(&escaped(x)), "{x} in {ev}");
    }
    let list = page(&s, &format!("/console/events{hostile_query}"), &session).body;
    assert!(
        list.contains(&escaped("\"><script>alert(5)</script>")),
        "{list}"
    );
    let bad_time = page(&s, "/console/events?since=%3Cscript%3E", &session).body;
    assert!(bad_time.contains("give a UTC date"), "{bad_time}");

    // Signed out, too: the sign-in page, the redirects, static files.
    for (path, status) in [
        ("/console/login", 200),
        ("/console/", 303),
        ("/console/events/1", 303),
        ("/console/export?format=csv", 303),
        ("/console/static/console.css", 200),
        ("/console/static/icon.svg", 200),
        ("/console/nowhere", 404),
    ] {
        let r = send("GET", &format!("{}{path}", s.url), &[], None);
        assert_eq!(r.status, status, "{path}");
        if path != "/console/nowhere" {
            security_headers(&r, path);
        }
        if status == 303 {
            assert_eq!(r.header("location"), Some("/console/login"), "{path}");
        }
    }
    let css = send(
        "GET",
        &format!("{}/console/static/console.css", s.url),
        &[],
        None,
    );
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert!(
        !css.body.contains("url(") && !css.body.contains("@import"),
        "no outside resources"
    );
}

fn issue_17_exports_match_the_api_in_every_format_and_csv_cells_cannot_run_formulas(
    backend: Backend,
) {
    let s = Server::start(backend);
    let fleet = seed(&s);
    let api = s.store().add_reviewer("api-reader").unwrap();
    s.store().add_reviewer("rita").unwrap();
    let session = sign_in(&s, "rita");
    let export = |q: &str| {
        let r = page(&s, &format!("/console/export?{q}"), &session);
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r
    };
    let alpha = &fleet.alpha.id;

    // Every format of one filter (everything of one host) is what the API gives.
    let native = api_events(&s, &api, &format!("host={alpha}"));
    assert_eq!(native.len(), fleet.alpha.sent.len());
    let r = export(&format!("host={alpha}&kind=all&format=ndjson"));
    assert_eq!(r.body.lines().collect::<Vec<_>>(), native);
    assert!(r
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment; filename=\"interdict-events-"));
    for f in ["ocsf", "ecs"] {
        let want = api_events(&s, &api, &format!("host={alpha}&format={f}"));
        assert_eq!(
            export(&format!("host={alpha}&kind=all&format={f}"))
                .body
                .lines()
                .collect::<Vec<_>>(),
            want,
            "{f}"
        );
    }
    let csv = export(&format!("host={alpha}&kind=all&format=csv"));
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    same_events(&parse_csv(csv.body.as_bytes()), &native);
    // The default (violations) is the API's answer less the other kinds.
    let want: Vec<String> = api_events(&s, &api, "rule=claude-code")
        .into_iter()
        .filter(|l| {
            let e: Event = serde_json::from_str(l).unwrap();
            matches!(
                e.kind,
                EventKind::ExecDenied
                    | EventKind::ExecReported
                    | EventKind::ProcessKilled
                    | EventKind::ScriptDenied
            )
        })
        .collect();
    assert_eq!(want.len(), 7);
    assert_eq!(
        export("rule=claude-code&format=ndjson")
            .body
            .lines()
            .collect::<Vec<_>>(),
        want
    );

    // Many pages: 2,300 events of one host, in the API's order.
    let bulk_token = enroll(&s, "h-bulk");
    let evs = chain("h-bulk", 1, interdict_event::GENESIS_HASH, 2300);
    for c in evs.chunks(1000) {
        ingest(&s, &bulk_token, c);
    }
    let want = api_events(&s, &api, "host=h-bulk");
    assert_eq!(want.len(), 2300);
    assert_eq!(
        export("host=h-bulk&kind=all&format=ndjson")
            .body
            .lines()
            .collect::<Vec<_>>(),
        want
    );
    let rows = parse_csv(export("host=h-bulk&format=csv").body.as_bytes());
    same_events(&rows, &want);

    // Cells a spreadsheet would run are quoted off; the values are kept.
    let mut f = Agent::enroll(&s, "h-formula", "=cmd|' /C calc'!A0");
    let mut e = f.violation(
        EventKind::ExecDenied,
        Outcome::Denied,
        "+rule",
        "block",
        "=HYPERLINK(\"http://evil.example\")",
        &["-rf"],
        0,
        1,
    );
    e.message = Some("@SUM(A1:A9)".into());
    if let Some(p) = e.process.as_mut() {
        p.cwd = Some("-x".into());
        p.exe = Some("\t=1+1".into());
    }
    e.sensor = Some("line one\r\n=2+2".into());
    f.send(&s, vec![e.clone()]);
    let body = export("host=h-formula&format=csv").body;
    let rows = parse_csv(body.as_bytes());
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(&r[2], "'=cmd|' /C calc'!A0");
    assert_eq!(&r[5], "'+rule");
    assert_eq!(&r[12], "'=HYPERLINK(\"http://evil.example\")");
    assert_eq!(&r[16], "'\t=1+1");
    assert_eq!(&r[17], "[\"-rf\"]");
    assert_eq!(&r[18], "'-x");
    assert_eq!(&r[27], "line one\r\n=2+2");
    assert_eq!(&r[28], "'@SUM(A1:A9)");
    for cell in r.iter() {
        assert!(
            !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
            "{cell:?}"
        );
    }

    // Bad requests.
    assert_eq!(page(&s, "/console/export?format=xml", &session).status, 400);
    let r = page(&s, "/console/export?format=csv&since=yesterday", &session);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("give a UTC date"));
}

/// The overview's count of violations in 30 days, at `url` with `session`.
fn overview_total(url: &str, session: &str) -> String {
    let r = send(
        "GET",
        &format!("{url}/console/"),
        &[("Cookie", &format!("interdict_session={session}"))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("Still counting"), "{}", r.body);
    text_of(&r.body, "total-violations")
}

fn issue_17_summaries_are_counted_again_after_a_deletion_and_after_the_migration(backend: Backend) {
    let mut s = Server::start(backend);
    let mut fleet = seed(&s);
    s.store().add_reviewer("rita").unwrap();
    let session = sign_in(&s, "rita");
    assert_eq!(overview_total(&s.url, &session), "10");
    // New events are counted as they arrive.
    let e = fleet.beta.violation(
        EventKind::ScriptDenied,
        Outcome::Denied,
        "aider",
        "block",
        "dan",
        &[],
        0,
        0,
    );
    fleet.beta.send(&s, vec![e]);
    assert_eq!(overview_total(&s.url, &session), "11");
    // A host deleted: its events go, and so do they from the counts (6 violations of alpha's).
    assert!(s.store().delete_host(&fleet.alpha.id, &s.key).unwrap());
    assert_eq!(overview_total(&s.url, &session), "5");
    let home = page(&s, "/console/", &session).body;
    assert_eq!(text_of(&home, "hosts-enrolled"), "3");
    assert_eq!(text_of(&home, "hosts-noncompliant"), "0");

    // The migration from issue 13's schema (three migrations): the console's tables are made
    // and the summaries counted from the events already stored.
    s.stop();
    for t in [
        "console_links",
        "console_sessions",
        "console_days",
        "console_installs",
        "console_hoststate",
        "console_policies",
        "console_rollup",
    ] {
        s.tamper(&format!("DROP TABLE {t}"), &[]);
    }
    s.tamper("UPDATE schema_version SET n = 3", &[]);
    let store = s.store();
    let api = store.add_reviewer("api-reader").unwrap();
    let again = interdict_collector::Background::start(
        "127.0.0.1:0",
        interdict_collector::App::new(store, Config::default(), s.key.clone()),
        None,
    )
    .unwrap();
    let url = format!("http://{}", again.addr());
    let st = s.store();
    st.add_reviewer("rita").unwrap();
    let secret = console::auth::create_link(&st, "rita").unwrap().unwrap();
    let r = send(
        "POST",
        &format!("{url}/console/login"),
        &[
            ("Cookie", &format!("interdict_link={secret}")),
            ("Origin", &url),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        Some(&format!("csrf={}", console::auth::csrf_for(&secret))),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let session = r.cookie("interdict_session").unwrap();
    assert_eq!(overview_total(&url, &session), "5");
    let (_, body, _, _) = get(
        &format!("{url}/v1/events?host={}&limit=10000", fleet.beta.id),
        Some(&api),
    );
    assert_eq!(body.lines().count(), fleet.beta.sent.len(), "events intact");
}

const BIN: &str = env!("CARGO_BIN_EXE_interdict-collector");

fn issue_17_the_command_line_link_signs_in_and_no_secret_reaches_the_log(backend: Backend) {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let pg = (backend == Backend::Postgres).then(common::pg::Pg::start);
    let db = dir.path().join("state/collector.db");
    let cli = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--db").arg(&db);
        if let Some(pg) = &pg {
            c.args(["--postgres", &pg.params()]);
        }
        let out = c.args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (st, token, err) = cli(&["reviewer", "add", "rita"]);
    assert_eq!(st, 0, "{err}");

    // Policy texts for the case file: checked, then kept by their SHA-256; a file that is not a
    // policy is refused with every problem and keeps nothing, and the good ones are kept still.
    let pack = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../policies/ai-coding-agents.toml")
        .display()
        .to_string();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[policy]\nname = 1\nmode = \"enforce\"\nverison = \"x\"\n",
    )
    .unwrap();
    let bad = bad.display().to_string();
    let (st, _, err) = cli(&["policy-text", &bad, &pack]);
    assert_eq!(st, 2, "{err}");
    assert!(
        err.contains(&format!("{bad}:2:8: error["))
            && err.contains(&format!("{bad}:4:1: error["))
            && err.contains("not kept")
            && err.contains("1 of 2 file(s) not kept"),
        "{err}"
    );
    let sha = interdict_chain::hex(&interdict_chain::sha256(&std::fs::read(&pack).unwrap()));
    assert!(err.contains(&format!("(sha256 {sha}) kept")), "{err}");
    let (st, _, err) = cli(&["policy-text", &pack]);
    assert_eq!(st, 0, "{err}");
    assert!(err.contains("was kept already"), "{err}");
    let (st, _, err) = cli(&["policy-text"]);
    assert_eq!(st, 2, "{err}");
    {
        let store = match &pg {
            Some(pg) => interdict_collector::Store::open_postgres(&pg.params()).unwrap(),
            None => interdict_collector::Store::open(&db).unwrap(),
        };
        let kept = console::policies::list(&store).unwrap();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[0].sha256, sha);
    }
    // The program, serving, its log captured.
    let mut c = Command::new(BIN);
    c.arg("--db").arg(&db);
    if let Some(pg) = &pg {
        c.args(["--postgres", &pg.params()]);
    }
    let mut child = c
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut pipe = child.stderr.take().unwrap();
    let buf = log.clone();
    let reader = std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(&mut pipe);
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut r, &mut line).unwrap_or(0) > 0 {
            if let Some(a) = line
                .trim()
                .strip_prefix("interdict-collector: listening on ")
            {
                let _ = tx.send(a.to_string());
            }
            buf.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    let mut child = Kill(child);
    let url = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the collector did not start: {}", log.lock().unwrap()));

    // The link, printed by the command line for the address the browser uses.
    let (st, link, err) = cli(&[
        "reviewer",
        "rita",
        "--login-link",
        "--base-url",
        &format!("{url}/"),
    ]);
    assert_eq!(st, 0, "{err}");
    assert!(err.contains("valid for 10 minutes"), "{err}");
    let secret = link
        .strip_prefix(&format!("{url}/console/login?link="))
        .unwrap_or_else(|| panic!("{link}"))
        .to_string();
    assert!(
        secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "{secret}"
    );
    // Only for reviewers, and only for an address a browser can open.
    let (st, _, err) = cli(&["reviewer", "nobody", "--login-link", "--base-url", &url]);
    assert_eq!(st, 2);
    assert!(err.contains("no reviewer nobody"), "{err}");
    let (st, _, err) = cli(&["reviewer", "rita", "--login-link", "--base-url", "ftp://x"]);
    assert_eq!(st, 2);
    assert!(err.contains("--base-url ftp://x"), "{err}");
    let (st, _, err) = cli(&["reviewer", "rita", "--login-link"]);
    assert_eq!(st, 2, "{err}");

    // Signing in with it, using the console, signing out; the link again: refused.
    let r = send("GET", &link, &[], None);
    assert_eq!(r.status, 303);
    let login = |origin: &str| {
        send(
            "POST",
            &format!("{url}/console/login"),
            &[
                ("Cookie", &format!("interdict_link={secret}")),
                ("Origin", origin),
                ("Sec-Fetch-Site", "same-origin"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Some(&format!("csrf={}", console::auth::csrf_for(&secret))),
        )
    };
    assert_eq!(login("https://evil.example").status, 403);
    let r = login(&url);
    assert_eq!(r.status, 303, "{}", r.body);
    let session = r.cookie("interdict_session").unwrap();
    let cookie = format!("interdict_session={session}");
    for p in [
        "/console/",
        "/console/events",
        "/console/hosts",
        "/console/export?format=csv",
    ] {
        let r = send("GET", &format!("{url}{p}"), &[("Cookie", &cookie)], None);
        assert_eq!(r.status, 200, "{p}: {}", r.body);
    }
    let r = send(
        "POST",
        &format!("{url}/console/logout"),
        &[
            ("Cookie", &cookie),
            ("Origin", &url),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        Some(&format!("csrf={}", console::auth::csrf_for(&session))),
    );
    assert_eq!(r.status, 303);
    let r = login(&url);
    assert_eq!(r.status, 403);
    assert!(r.body.contains("used already"));

    // The log says who signed in, and holds none of the secrets.
    wait_for("the sign-in in the log", 30, || {
        log.lock().unwrap().contains("console: rita signed in")
    });
    // SAFETY: kill(2) on our own child's PID, not waited for yet.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let _ = child.0.wait();
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(
        log.contains("sign-in posted from another site was refused"),
        "{log}"
    );
    for (what, x) in [("link", &secret), ("session", &session), ("token", &token)] {
        assert!(
            !log.contains(x.as_str()),
            "the {what} secret is in the log:\n{log}"
        );
    }
}

/// The accessibility and layout checks every page must pass, in the browser: the language, one
/// `h1`, a label for every field, header cells in every table, a name for every picture, no
/// sideways scrolling on a laptop screen, and text contrast of at least 4.5:1 (3:1 for large
/// text, WCAG AA) against the background it is drawn on.
fn accessible(b: &Chrome, page: &str) {
    assert_eq!(
        b.eval("document.documentElement.lang"),
        serde_json::json!("en"),
        "{page}"
    );
    assert_eq!(b.count("h1"), 1, "{page}: one h1");
    let unlabelled = b.eval(
        "[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
            .map(e => e.outerHTML)",
    );
    assert_eq!(
        unlabelled,
        serde_json::json!([]),
        "{page}: fields without a label"
    );
    let bare_tables = b.eval(
        "[...document.querySelectorAll('table')].filter(t => !t.querySelector('th')).map(t => t.id)",
    );
    assert_eq!(
        bare_tables,
        serde_json::json!([]),
        "{page}: tables without header cells"
    );
    let unnamed = b.eval(
        "[...document.querySelectorAll('img, svg')].filter(e => e.getAttribute('aria-hidden') !== 'true'
            && !e.getAttribute('alt') && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
            .map(e => e.outerHTML.slice(0, 80))",
    );
    assert_eq!(
        unnamed,
        serde_json::json!([]),
        "{page}: pictures without a name"
    );
    let (sw, cw) = (
        b.eval("document.documentElement.scrollWidth"),
        b.eval("document.documentElement.clientWidth"),
    );
    assert!(
        sw.as_u64().unwrap() <= cw.as_u64().unwrap(),
        "{page}: the page scrolls sideways on a {}x{} screen ({sw} > {cw})",
        browser::SCREEN.0,
        browser::SCREEN.1
    );
    let low = b.eval(CONTRAST_JS);
    assert_eq!(
        low,
        serde_json::json!([]),
        "{page}: text below the contrast minimum"
    );
}

/// Every element holding visible text whose colour is below 4.5:1 (3:1 when large) against the
/// background colours behind it, composed as the browser paints them.
const CONTRAST_JS: &str = r#"(() => {
  const parse = c => { const m = /rgba?\(([^)]+)\)/.exec(c || ''); if (!m) return null;
    const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const over = (top, under) => under.map((v, i) => top[i] * top[3] + v * (1 - top[3]));
  const lum = rgb => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(rgb[0]) + 0.7152 * f(rgb[1]) + 0.0722 * f(rgb[2]); };
  const behind = el => { const layers = [];
    for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; } }
    let out = [255, 255, 255]; for (const c of layers.reverse()) out = over(c, out); return out; };
  const bad = []; const seen = new Set();
  const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (w.nextNode()) {
    const el = w.currentNode.parentElement;
    if (!w.currentNode.textContent.trim() || !el || seen.has(el)) continue;
    seen.add(el);
    const s = getComputedStyle(el); const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || s.visibility === 'hidden' || el.closest('title, option, datalist')) continue;
    const bg = behind(el);
    const fg0 = parse(el instanceof SVGElement ? s.fill : s.color); if (!fg0) continue;
    const fg = over(fg0, bg);
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(s.fontSize); const large = size >= 24 || (parseInt(s.fontWeight) >= 700 && size >= 18.66);
    if (ratio < (large ? 3 : 4.5)) bad.push(`${ratio.toFixed(2)}: ${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 40)}"`);
  }
  return bad;
})()"#;

/// Follow the "Older events" links from `url`: the detail links of every row, page by page.
fn every_page(b: &Chrome, url: &str, next: &str) -> (Vec<String>, usize) {
    b.goto(url);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        let links = b.eval(
            "[...document.querySelectorAll('table.events tbody a.detail-link')].map(a => a.getAttribute('href'))",
        );
        seen.extend(
            links
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string()),
        );
        if b.count(next) == 0 {
            return (seen, pages);
        }
        b.click_and_wait(next);
        assert!(pages < 20, "paging does not end: {}", b.url());
    }
}

fn issue_17_a_case_file_policy_texts_paging_keyboard_and_contrast_in_a_browser(backend: Backend) {
    use EventKind::*;
    let s = Server::start(backend);
    let tag = format!("{backend:?}").to_lowercase();
    let dir = tempfile::tempdir().unwrap();
    // The policies in force: the shipped pack (with the hash list it names), then a second
    // version whose text says something a browser must not run; a third is never kept.
    let pack = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../policies/ai-coding-agents.toml");
    let v1_text = std::fs::read_to_string(&pack).unwrap();
    // The pack's own version, whatever it is today.
    let v1_doc: toml::Table = v1_text.parse().unwrap();
    let v1_version = v1_doc["policy"]["version"].as_str().unwrap().to_string();
    let v2 = dir.path().join("policy.toml");
    let v2_text = "[policy]\nname = \"ai-coding-agents\"\nversion = \"2026.12\"\nmode = \"enforce\"\nmessage = \"</pre><script>alert(5)</script> is not approved\"\n\n[[rule]]\nid = \"claude-code\"\nname = \"Claude Code\"\nrisk = \"high\"\nreason = \"SEC-2026-114\"\naction = \"block\"\n\n[rule.match]\npaths = [\"**/.local/bin/claude\"]\n";
    std::fs::write(&v2, v2_text).unwrap();
    let store = s.store();
    let (k1, new1) = console::policies::add_file(&store, &pack).unwrap();
    let (k2, _) = console::policies::add_file(&store, &v2).unwrap();
    assert!(new1);
    assert_eq!(k1.version, v1_version);
    let sha = |t: &str| interdict_chain::hex(&interdict_chain::sha256(t.as_bytes()));
    assert_eq!(k1.sha256, sha(&v1_text), "the digest the agent reports");
    assert_eq!(k2.sha256, sha(v2_text));
    // A third reaches hosts as a bundle published to the fleet: its text comes from there.
    let v3_text = v2_text
        .replace("2026.12", "2026.13")
        .replace("</pre><script>alert(5)</script> is", "This tool is");
    let v3_sha = sha(&v3_text);
    let it = interdict_fleet::SecretKey::from_seed([7; 32]);
    let signed = interdict_fleet::BundleBody {
        version: 7,
        created: "2026-12-01T00:00:00Z".into(),
        policy_sha256: v3_sha.clone(),
        policy: v3_text.clone(),
        files: Default::default(),
    }
    .sign(&it)
    .to_text();
    store.publish_bundle(&signed, &[]).unwrap();
    let v4_sha = "c".repeat(64);
    // Kept once: the same bytes again change nothing.
    assert!(!console::policies::add_file(&store, &pack).unwrap().1);

    // dana: 40 violations under the pack, 20 under the second version, 5 under a third, on
    // two hosts; more than one page everywhere.
    let mut alpha = Agent::enroll(&s, "h-alpha", "alpha.corp");
    let mut beta = Agent::enroll(&s, "h-beta", "beta.corp");
    let under = |a: &Agent, i: u64, policy: (&str, &str)| {
        let mut e = a.violation(
            ExecDenied,
            Outcome::Denied,
            "claude-code",
            "block",
            "dana",
            &["claude"],
            20 - i / 4,
            i,
        );
        let p = e.policy.as_mut().unwrap();
        p.version = policy.0.into();
        p.sha256 = policy.1.into();
        e
    };
    let p1 = (v1_version.as_str(), k1.sha256.as_str());
    let p2 = ("2026.12", k2.sha256.as_str());
    let p3 = ("2026.13", v3_sha.as_str());
    let p4 = ("2026.14", v4_sha.as_str());
    let a: Vec<Event> = (0..40)
        .map(|i| under(&alpha, i, p1))
        .chain((40..60).map(|i| under(&alpha, i, p2)))
        .collect();
    alpha.send(&s, a);
    let bb: Vec<Event> = (60..63)
        .map(|i| under(&beta, i, p3))
        .chain((63..65).map(|i| under(&beta, i, p4)))
        .collect();
    beta.send(&s, bb);
    let total = alpha.sent.len() + beta.sent.len();
    assert_eq!(total, 65);
    // Signed policy bundles, as agents' heartbeats report them (`policy_bundle`): beta is behind
    // (9 < 12, numerically).
    let beat = |a: &Agent, bundle: u64| {
        let mut e = a.heartbeat(None, 0);
        let mut m: serde_json::Value = serde_json::from_str(e.message.as_deref().unwrap()).unwrap();
        m["policy_source"] = serde_json::json!("bundle");
        m["policy_bundle"] = serde_json::json!(bundle);
        e.message = Some(m.to_string());
        e
    };
    let hb = beat(&alpha, 12);
    alpha.send(&s, vec![hb]);
    let hb = beat(&beta, 9);
    beta.send(&s, vec![hb]);

    let link = link(&s, "case-team");
    let b = Chrome::launch();
    b.goto(&link);
    accessible(&b, "sign-in");
    b.click_and_wait("#sign-in");
    assert_eq!(b.url(), format!("{}/console/", s.url), "{}", b.text("main"));

    // The keyboard alone: the first Tab reaches the skip link, shown when focused; Enter moves
    // to the content; the filter form is reached field by field, in order, with focus visible;
    // Enter in a field applies the filter.
    b.goto(&format!("{}/console/events", s.url));
    b.tab.press_key("Tab").unwrap();
    assert_eq!(
        b.eval("document.activeElement.className"),
        serde_json::json!("skip")
    );
    let r = b.eval("(r => [r.left, r.top])(document.activeElement.getBoundingClientRect())");
    assert!(
        r[0].as_f64().unwrap() >= 0.0 && r[1].as_f64().unwrap() >= 0.0,
        "the skip link is on screen when focused: {r}"
    );
    b.tab.press_key("Enter").unwrap();
    wait_for("the skip link moves focus to the content", 30, || {
        b.eval("document.activeElement.id") == serde_json::json!("main")
    });
    let mut order = Vec::new();
    for _ in 0..40 {
        b.tab.press_key("Tab").unwrap();
        let id = b.eval("document.activeElement.id");
        let id = id.as_str().unwrap_or_default().to_string();
        if !id.is_empty() {
            let (style, visible) = (
                b.eval("getComputedStyle(document.activeElement).outlineStyle"),
                b.eval("document.activeElement.matches(':focus-visible')"),
            );
            assert!(
                style != serde_json::json!("none") && visible == serde_json::json!(true),
                "#{id}: focus not visible ({style}, {visible})"
            );
            order.push(id.clone());
        }
        if id == "apply" {
            break;
        }
    }
    assert_eq!(
        order,
        [
            "f-host",
            "f-user",
            "f-rule",
            "f-kind",
            "f-outcome",
            "f-action",
            "f-since",
            "f-until",
            "apply"
        ],
        "the filter form in keyboard order"
    );
    b.tab.find_element("#f-user").unwrap().focus().unwrap();
    b.tab.type_str("dana").unwrap();
    b.press_and_wait("Enter");
    assert!(
        b.url().contains("user=dana"),
        "Enter applies the filter: {}",
        b.url()
    );
    assert_eq!(b.text("#match-count"), "65 events match.");

    // Paging: every violation of the filter exactly once, the filter kept on every page.
    let (rows, pages) = every_page(
        &b,
        &format!("{}/console/events?user=dana&rule=claude-code", s.url),
        "#older",
    );
    assert!(pages >= 2, "{pages} page(s)");
    assert_eq!(rows.len(), total, "{rows:?}");
    let distinct: std::collections::BTreeSet<&String> = rows.iter().collect();
    assert_eq!(distinct.len(), total, "an event shown twice");
    assert!(
        b.url().contains("user=dana") && b.url().contains("rule=claude-code"),
        "the last page keeps the filter: {}",
        b.url()
    );
    // The person's record pages the same way.
    let (prows, _) = every_page(
        &b,
        &format!("{}/console/person?user=dana", s.url),
        "nav.pager a[rel=next]",
    );
    let pdistinct: std::collections::BTreeSet<&String> = prows.iter().collect();
    assert_eq!(
        prows.len(),
        total,
        "{}: {}",
        b.url(),
        b.eval("document.body.innerHTML.slice(-3000)")
    );
    assert_eq!(pdistinct, distinct, "the record holds the same events");

    // The case file: the policy in force at each time, and its text where kept.
    b.goto(&format!("{}/console/person?user=dana", s.url));
    let spans = b.text("#person-policies");
    assert!(
        spans.contains(v1_version.as_str())
            && spans.contains("2026.12")
            && spans.contains("2026.13")
            && spans.contains("2026.14"),
        "{spans}"
    );
    // In event time, beta's event 63 (5 days and 63 minutes ago) comes before 60 to 62 (5 days
    // and 60 to 62 minutes ago), and 64 (4 days ago) after them: 2026.14, 2026.13, 2026.14
    // again; one span each, five in all.
    assert_eq!(
        b.count("#person-policies tbody tr"),
        5,
        "one span per host and policy: {spans}"
    );
    let text_of = |sha: &str| {
        b.eval(&format!(
            "(document.querySelector('#policy-{sha} pre') || {{textContent: null}}).textContent"
        ))
    };
    assert_eq!(text_of(&k1.sha256), serde_json::json!(v1_text));
    assert_eq!(text_of(&k2.sha256), serde_json::json!(v2_text));
    assert_eq!(
        text_of(&v3_sha),
        serde_json::json!(v3_text),
        "from the bundle"
    );
    assert!(
        b.text(&format!("#policy-{v3_sha} h3"))
            .contains("(bundle 7)"),
        "{}",
        b.text(&format!("#policy-{v3_sha}"))
    );
    assert_eq!(text_of(&v4_sha), serde_json::Value::Null);
    assert!(
        b.text("#policy-texts-missing").contains(&v4_sha),
        "{}",
        b.text("main")
    );
    assert_eq!(b.count("script"), 0, "the policy text is text");
    accessible(&b, "person");
    // The contrast check itself catches grey text on white.
    b.eval("(() => { const p = document.createElement('p'); p.id = 'faint'; p.textContent = 'faint text'; p.style.color = '#aaaaaa'; document.querySelector('main').append(p); return true; })()");
    let low = b.eval(CONTRAST_JS).to_string();
    assert!(
        low.contains("2.32: P.") && low.contains("faint text"),
        "{low}"
    );
    b.eval("(document.getElementById('faint').remove(), true)");
    b.shot(&format!("{tag}-20-case-file"));

    // From an event to the text of the policy it was under; a policy not kept says how.
    b.goto(&format!("{}{}", s.url, rows.last().unwrap()));
    accessible(&b, "event");
    b.click_and_wait("#facts-policy a");
    assert_eq!(
        b.eval("document.querySelector('#policy-text').textContent"),
        serde_json::json!(v1_text)
    );
    accessible(&b, "policy");
    b.shot(&format!("{tag}-21-policy"));
    b.goto(&format!("{}{}", s.url, rows.first().unwrap()));
    b.click_and_wait("#facts-policy a");
    assert!(
        b.text("#policy-missing")
            .contains("interdict-collector policy-text"),
        "{}",
        b.text("main")
    );
    b.goto(&format!("{}/console/policies", s.url));
    let listed = b.text("#policies-table");
    assert!(
        listed.contains(&k1.sha256) && listed.contains(&k2.sha256),
        "{listed}"
    );

    // Fleet health names the host behind the newest bundle, and only it.
    b.goto(&format!("{}/console/", s.url));
    let main = b.text("main");
    assert!(
        main.contains("On an older policy bundle") && main.contains("beta.corp: bundle 9"),
        "{main}"
    );
    assert!(!main.contains("alpha.corp: bundle"), "{main}");
    b.goto(&format!("{}/console/hosts", s.url));
    let table = b.text("#hosts-table");
    assert!(
        table.contains("9 (behind)") && !table.contains("12 (behind)"),
        "{table}"
    );

    // The other pages pass the same checks.
    for p in [
        "/console/",
        "/console/events",
        "/console/hosts",
        "/console/hosts/h-alpha",
        "/console/hosts/h-alpha/verify",
        "/console/findings",
        "/console/people",
    ] {
        b.goto(&format!("{}{p}", s.url));
        accessible(&b, p);
    }
    let outside: Vec<String> = b
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|u| !u.starts_with(&s.url))
        .cloned()
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}
