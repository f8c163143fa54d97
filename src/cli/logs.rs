//! `interdict logs`: the reviewer's view of the central log, through the collector's API with a
//! reviewer token (`--token` or `INTERDICT_REVIEWER_TOKEN`).
//!
//! Everything a host sent is printed with its control characters escaped (JSON `\uXXXX` in
//! NDJSON, `\u{..}` in reports), so an enrolled host cannot paint a reviewer's terminal.
//! `verify` re-derives every chain here from the records as stored, and checks them against
//! checkpoints exported earlier with `checkpoint`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// `interdict logs ...`.
#[derive(Debug, clap::Subcommand)]
pub enum LogsCommand {
    /// Print matching events as NDJSON (every page). Exit 0.
    Query {
        #[command(flatten)]
        endpoint: Endpoint,
        #[command(flatten)]
        filter: Filter,
    },
    /// Print matching events, then new ones as the collector stores them (an event shipped
    /// late by a host that was offline is shown when it arrives).
    Tail {
        #[command(flatten)]
        endpoint: Endpoint,
        #[command(flatten)]
        filter: Filter,
        /// Seconds between polls.
        #[arg(long, default_value_t = 2)]
        every_s: u64,
    },
    /// Re-derive every host's chain from the stored records and report gaps, broken links,
    /// records altered or removed at the collector. Exit 1 when anything is wrong.
    Verify {
        #[command(flatten)]
        endpoint: Endpoint,
        /// A checkpoint exported earlier with `interdict logs checkpoint` (repeatable): every
        /// chain head it holds must still be there, unchanged.
        #[arg(long, value_name = "FILE")]
        checkpoint: Vec<PathBuf>,
        /// The collector's public key (hex, `interdict-collector key`): cuts and checkpoints
        /// must be signed with it.
        #[arg(long, value_name = "HEX")]
        key: Option<String>,
    },
    /// Export a signed checkpoint of every chain's head (to keep outside the collector and
    /// give to `verify --checkpoint` later).
    Checkpoint {
        #[command(flatten)]
        endpoint: Endpoint,
        /// Write it here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// The fleet: every host, the policy bundle it enforces and the one published for it;
    /// hosts behind are flagged. Exit 0, or 1 with `--behind` when any host is behind.
    Hosts {
        #[command(flatten)]
        endpoint: Endpoint,
        /// Only hosts behind (and exit 1 when there are any).
        #[arg(long)]
        behind: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = super::Format::Text)]
        format: super::Format,
    },
    /// Digests hosts learned (rule, digest, size, where and how first seen, how many hosts),
    /// and what reviewers decided; `approve|reject DIGEST` decides. An approved digest reaches
    /// every agent with its next heartbeat, signed with the collector's hash-list key.
    Learned(LearnedArgs),
    /// Exception requests and decisions; `approve|deny ID` decides. An approval (for the days
    /// asked, or `--days N`) reaches the host with its next heartbeat, signed with the
    /// collector's exception key.
    Exceptions(ExceptionsArgs),
    /// The fleet audit: every change to the fleet at the collector, oldest first (bundles
    /// published, digests learned by hosts, exception requests, reviewers' decisions, hash
    /// lists signed), each with who, what, on what and when.
    Audit {
        #[command(flatten)]
        endpoint: Endpoint,
        /// Only the changes after this revision (the `seq` of the last one you saw).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = super::Format::Text)]
        format: super::Format,
    },
}

/// `interdict logs learned [--pending] | approve|reject DIGEST`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LearnedArgs {
    #[command(subcommand)]
    action: Option<LearnedAction>,
    #[command(flatten)]
    endpoint: Option<Endpoint>,
    /// Only the digests waiting for a decision.
    #[arg(long)]
    pending: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = super::Format::Text)]
    format: super::Format,
}

/// A decision on a learned digest.
#[derive(Debug, clap::Subcommand)]
pub enum LearnedAction {
    /// Approve it: added to its rule on every agent (block, kill and quarantine rules only).
    Approve {
        /// The digest.
        digest: String,
        /// Only for this rule (when several rules learned it).
        #[arg(long)]
        rule: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Reject it: it stays on the host that learned it, and goes nowhere else.
    Reject {
        /// The digest.
        digest: String,
        /// Only for this rule.
        #[arg(long)]
        rule: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

/// `interdict logs exceptions [--pending] | approve|deny ID`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ExceptionsArgs {
    #[command(subcommand)]
    action: Option<ExceptionAction>,
    #[command(flatten)]
    endpoint: Option<Endpoint>,
    /// Only the requests waiting for a decision.
    #[arg(long)]
    pending: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = super::Format::Text)]
    format: super::Format,
}

/// A decision on an exception request.
#[derive(Debug, clap::Subcommand)]
pub enum ExceptionAction {
    /// Approve it, from now: for the days asked, or as long as you say (within the policy's
    /// `max_exception_days`; the collector refuses what the host's policy would refuse).
    Approve {
        /// The request id.
        id: String,
        /// For this many days instead of those asked.
        #[arg(long, conflicts_with = "for_")]
        days: Option<u64>,
        /// For this long: `90s`, `30m`, `8h`, `2d`.
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// A note kept with the decision.
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Deny it; the employee is told (with your note).
    Deny {
        /// The request id.
        id: String,
        /// Why (told to the employee).
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

/// Run a `logs` command; the exit code.
pub fn run(cmd: LogsCommand) -> anyhow::Result<u8> {
    match cmd {
        LogsCommand::Query { endpoint, filter } => {
            query(&endpoint, &filter, None)?;
            Ok(0)
        }
        LogsCommand::Tail {
            endpoint,
            filter,
            every_s,
        } => {
            tail(&endpoint, &filter, Duration::from_secs(every_s))?;
            Ok(0)
        }
        LogsCommand::Verify {
            endpoint,
            checkpoint,
            key,
        } => Ok(if verify(&endpoint, &checkpoint, key)? {
            0
        } else {
            1
        }),
        LogsCommand::Checkpoint { endpoint, out } => {
            let (body, _) = get(&endpoint, "/v1/checkpoint", &[])?;
            let s: interdict_chain::Signed =
                serde_json::from_str(&body).context("the collector's checkpoint")?;
            let c = interdict_chain::open_checkpoint(&s, None)
                .context("the collector's checkpoint does not verify")?;
            let text = serde_json::to_string_pretty(&s)? + "\n";
            match out {
                Some(p) => std::fs::write(&p, text).with_context(|| format!("{}", p.display()))?,
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
            eprintln!(
                "checkpoint of {} chain head(s), tree head {}, signed by {}",
                c.tree_size, c.root, s.key
            );
            Ok(0)
        }
        LogsCommand::Hosts {
            endpoint,
            behind,
            format,
        } => hosts(&endpoint, behind, format),
        LogsCommand::Learned(a) => learned(a),
        LogsCommand::Exceptions(a) => exceptions(a),
        LogsCommand::Audit {
            endpoint,
            after,
            format,
        } => audit(&endpoint, after, format),
    }
}

/// `interdict logs audit`: every page of the fleet audit after `after`.
fn audit(ep: &Endpoint, after: i64, format: super::Format) -> anyhow::Result<u8> {
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let mut from = after;
    loop {
        let after_s = from.to_string();
        let (body, _) = get(ep, "/v1/fleet/audit", &[("after", after_s.as_str())])?;
        let page: Vec<serde_json::Value> =
            serde_json::from_str(&body).context("the collector's fleet audit")?;
        let Some(last) = page.last().and_then(|r| r["seq"].as_i64()) else {
            break;
        };
        if last <= from {
            break;
        }
        from = last;
        rows.extend(page);
    }
    print_rows(
        &rows,
        format,
        |r| {
            let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
            format!(
                "{:>6} {} {:<22} {:<28} {}: {}",
                r["seq"].as_i64().unwrap_or(0),
                when(r["at_ms"].as_i64()),
                p(&s("action")),
                p(&s("actor")),
                p(&s("subject")),
                p(&s("detail")),
            )
        },
        |rows| format!("{} change(s)", rows.len()),
    )?;
    Ok(0)
}

/// Print rows the collector sent: one JSON line (escaped for a terminal), or a text line each
/// and a summary on stderr.
fn print_rows<R: serde::Serialize>(
    rows: &[R],
    format: super::Format,
    line: impl Fn(&R) -> String,
    summary: impl FnOnce(&[R]) -> String,
) -> anyhow::Result<()> {
    match format {
        super::Format::Json => println!(
            "{}",
            interdict_chain::safe_json_line(&serde_json::to_string(rows)?)
        ),
        super::Format::Text => {
            for r in rows {
                println!("{}", line(r));
            }
            eprintln!("{}", summary(rows));
        }
    }
    Ok(())
}

/// A list from the collector, only the pending entries when asked.
fn pending_list(
    ep: &Endpoint,
    path: &str,
    pending: bool,
    what: &'static str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let q: &[(&str, &str)] = if pending {
        &[("status", "pending")]
    } else {
        &[]
    };
    let (body, _) = get(ep, path, q)?;
    serde_json::from_str(&body).context(what)
}

fn need(ep: Option<Endpoint>) -> anyhow::Result<Endpoint> {
    ep.ok_or_else(|| {
        anyhow::anyhow!("give --collector URL (and --token or INTERDICT_REVIEWER_TOKEN)")
    })
}

fn p(s: &str) -> std::borrow::Cow<'_, str> {
    interdict_chain::printable(s)
}

fn when(ms: Option<i64>) -> String {
    ms.map(|m| {
        interdict_event::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(m.max(0) as u64))
    })
    .unwrap_or_else(|| "-".into())
}

/// `interdict logs hosts`.
fn hosts(ep: &Endpoint, behind_only: bool, format: super::Format) -> anyhow::Result<u8> {
    let (body, _) = get(ep, "/v1/hosts", &[])?;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&body).context("the collector's host list")?;
    let rows: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| !behind_only || r["behind"] == true)
        .collect();
    print_rows(
        &rows,
        format,
        |r| {
            let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
            let n = |k: &str| r[k].as_u64().map_or("-".to_string(), |v| v.to_string());
            format!(
                "{:<36} {:<20} last seen {}  policy {} (bundle {}, published for it {}){}{}",
                p(&s("host_id")),
                p(&s("hostname")),
                when(r["last_seen_ms"].as_i64()),
                p(&s("policy_source")),
                n("policy_bundle"),
                n("policy_bundle_target"),
                if r["behind"] == true { "  BEHIND" } else { "" },
                if r["silent"] == true { "  SILENT" } else { "" },
            )
        },
        |rows| {
            let behind = rows.iter().filter(|r| r["behind"] == true).count();
            format!("{} host(s), {behind} behind", rows.len())
        },
    )?;
    Ok(if behind_only && !rows.is_empty() {
        1
    } else {
        0
    })
}

fn post(ep: &Endpoint, path: &str, body: serde_json::Value) -> anyhow::Result<String> {
    let url = format!("{}{path}", ep.collector.trim_end_matches('/'));
    let mut resp = client()
        .post(&url)
        .header("Authorization", &format!("Bearer {}", ep.token))
        .content_type("application/json")
        .send(body.to_string())
        .with_context(|| format!("cannot reach the collector at {}", ep.collector))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    if !(200..300).contains(&status) {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        anyhow::bail!("the collector answered {status}: {}", p(msg.trim()));
    }
    Ok(text)
}

fn learned_line(r: &serde_json::Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
    format!(
        "{}  rule {}  {} bytes  {}  first seen {} on {} at {} ({}), {} host(s){}",
        s("sha256"),
        p(&s("rule_id")),
        r["size"].as_u64().unwrap_or(0),
        s("status").to_uppercase(),
        when(r["first_seen_ms"].as_i64()),
        p(&s("first_host")),
        p(&s("path")),
        p(&s("source")),
        r["hosts"].as_u64().unwrap_or(0),
        match r["decided_by"].as_str() {
            Some(by) => format!(
                ", {} by {} at {}",
                s("status"),
                p(by),
                when(r["decided_ms"].as_i64())
            ),
            None => String::new(),
        }
    )
}

/// `interdict logs learned`.
fn learned(a: LearnedArgs) -> anyhow::Result<u8> {
    let (ep, digest, rule, approve) = match a.action {
        None => {
            let ep = need(a.endpoint)?;
            let rows = pending_list(
                &ep,
                "/v1/learned",
                a.pending,
                "the collector's learned digests",
            )?;
            print_rows(&rows, a.format, learned_line, |rows| {
                format!("{} digest(s)", rows.len())
            })?;
            return Ok(0);
        }
        Some(LearnedAction::Approve {
            digest,
            rule,
            endpoint,
        }) => (endpoint, digest, rule, true),
        Some(LearnedAction::Reject {
            digest,
            rule,
            endpoint,
        }) => (endpoint, digest, rule, false),
    };
    let what = if approve { "approve" } else { "reject" };
    let text = post(
        &ep,
        &format!("/v1/learned/{}/{what}", digest.trim()),
        serde_json::json!({ "rule": rule }),
    )?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    for r in &rows {
        println!("{}", learned_line(r));
    }
    Ok(0)
}

/// `90s`, `30m`, `8h`, `2d` (or a bare number of seconds) in seconds.
pub fn duration_s(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("`{s}` is not a duration like 90s, 30m, 8h or 2d"))?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("`{s}` is not a duration like 90s, 30m, 8h or 2d"),
    };
    Ok(n.saturating_mul(mul))
}

fn exception_line(r: &serde_json::Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
    let secs = |k: &str| {
        r[k].as_i64().map(|t| {
            interdict_event::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))
        })
    };
    let mut line = format!(
        "{}  {}  {} on {} ({})  rule {}  {} day(s)  asked {}: {}",
        s("id"),
        s("status").to_uppercase(),
        p(&s("user")),
        p(&s("hostname")),
        p(&s("host_id")),
        p(&s("rule_id")),
        r["days"].as_u64().unwrap_or(0),
        when(r["requested_ms"].as_i64()),
        p(&s("reason")),
    );
    if let Some(by) = r["decided_by"].as_str() {
        line.push_str(&format!("; {} by {}", s("status"), p(by)));
    }
    if let (Some(f), Some(u)) = (secs("from"), secs("until")) {
        line.push_str(&format!(" from {f} until {u}"));
    }
    if let Some(n) = r["note"].as_str() {
        line.push_str(&format!(" ({})", p(n)));
    }
    line
}

/// `interdict logs exceptions`.
fn exceptions(a: ExceptionsArgs) -> anyhow::Result<u8> {
    let (ep, id, body, what) = match a.action {
        None => {
            let ep = need(a.endpoint)?;
            let rows = pending_list(
                &ep,
                "/v1/exceptions",
                a.pending,
                "the collector's exception requests",
            )?;
            print_rows(&rows, a.format, exception_line, |rows| {
                format!("{} request(s)", rows.len())
            })?;
            return Ok(0);
        }
        Some(ExceptionAction::Approve {
            id,
            days,
            for_,
            note,
            endpoint,
        }) => {
            let mut b = serde_json::json!({ "note": note });
            if let Some(d) = days {
                b["days"] = d.into();
            }
            if let Some(f) = for_ {
                b["seconds"] = duration_s(&f)?.into();
            }
            (endpoint, id, b, "approve")
        }
        Some(ExceptionAction::Deny { id, note, endpoint }) => {
            (endpoint, id, serde_json::json!({ "note": note }), "deny")
        }
    };
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || id.is_empty() {
        anyhow::bail!("`{}` is not a request id", p(&id));
    }
    let text = post(&ep, &format!("/v1/exceptions/{id}/{what}"), body)?;
    let r: serde_json::Value = serde_json::from_str(&text)?;
    println!("{}", exception_line(&r));
    Ok(0)
}

/// Which events to fetch.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Host id.
    #[arg(long)]
    pub host: Option<String>,
    /// User name.
    #[arg(long)]
    pub user: Option<String>,
    /// Rule id.
    #[arg(long)]
    pub rule: Option<String>,
    /// Event kind (exec_denied, process_killed, installed_detected, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// What the agent did (denied, killed, reported, quarantined, ...).
    #[arg(long)]
    pub outcome: Option<String>,
    /// The rule's action (block, kill, quarantine, report).
    #[arg(long)]
    pub action: Option<String>,
    /// From this event time (UTC: 2026-11-26T09:30:00Z, with or without milliseconds, or a date).
    #[arg(long)]
    pub since: Option<String>,
    /// Until this event time (exclusive; same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// native, ocsf or ecs.
    #[arg(long, default_value = "native")]
    pub format: String,
}

/// Where the collector is and who asks.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoint {
    /// Collector base URL.
    #[arg(long, value_name = "URL")]
    pub collector: String,
    /// Reviewer token.
    #[arg(long, env = "INTERDICT_REVIEWER_TOKEN", hide_env_values = true)]
    pub token: String,
}

fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// One page: the body, and the `X-Next-Cursor` and `X-Cursor` headers.
fn page(
    ep: &Endpoint,
    path: &str,
    query: &[(&str, &str)],
) -> anyhow::Result<(String, Option<String>, Option<String>)> {
    let url = format!("{}{path}", ep.collector.trim_end_matches('/'));
    let mut resp = client()
        .get(&url)
        .query_pairs(query.iter().copied())
        .header("Authorization", &format!("Bearer {}", ep.token))
        .call()
        .with_context(|| format!("cannot reach the collector at {}", ep.collector))?;
    let status = resp.status().as_u16();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (next, cursor) = (header("x-next-cursor"), header("x-cursor"));
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()?;
    if !(200..300).contains(&status) {
        anyhow::bail!(
            "the collector answered {status}: {}",
            interdict_chain::printable(body.trim())
        );
    }
    Ok((body, next, cursor))
}

fn get(
    ep: &Endpoint,
    path: &str,
    query: &[(&str, &str)],
) -> anyhow::Result<(String, Option<String>)> {
    let (b, n, _) = page(ep, path, query)?;
    Ok((b, n))
}

/// The query parameters of `f`, and of the page after `after`.
fn params<'a>(f: &'a Filter, after: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    let mut q = vec![("format", f.format.as_str())];
    for (k, v) in [
        ("host", &f.host),
        ("user", &f.user),
        ("rule", &f.rule),
        ("kind", &f.kind),
        ("outcome", &f.outcome),
        ("action", &f.action),
        ("since", &f.since),
        ("until", &f.until),
    ] {
        if let Some(v) = v {
            q.push((k, v.as_str()));
        }
    }
    q.extend(after.map(|a| ("after", a)));
    q
}

/// Print every matching event stored after `after` as NDJSON (escaped for the terminal),
/// following pages; returns the cursor of the last event the collector has stored so far.
pub fn query(
    ep: &Endpoint,
    f: &Filter,
    mut after: Option<String>,
) -> anyhow::Result<Option<String>> {
    let mut out = std::io::stdout().lock();
    loop {
        let (body, next, cursor) = page(ep, "/v1/events", &params(f, after.as_deref()))?;
        for line in body.lines() {
            out.write_all(interdict_chain::safe_json_line(line).as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        after = cursor.or(after);
        if next.is_none() {
            return Ok(after);
        }
    }
}

/// Follow new events as the collector stores them (polls every `every`). The cursor is the
/// collector's own storage order, so an event dated in the past (shipped late) or in the future
/// neither hides nor is hidden.
pub fn tail(ep: &Endpoint, f: &Filter, every: Duration) -> anyhow::Result<()> {
    let mut after = None;
    loop {
        after = query(ep, f, after.clone())?.or(after);
        std::thread::sleep(every);
    }
}

struct Http<'a>(&'a Endpoint);

impl interdict_chain::remote::Api for Http<'_> {
    fn get(
        &mut self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<(String, Option<String>), interdict_chain::remote::ApiError> {
        get(self.0, path, query).map_err(|e| format!("{e:#}").into())
    }
}

/// Re-derive every chain and print the report; `Ok(false)` when anything is wrong.
pub fn verify(ep: &Endpoint, checkpoints: &[PathBuf], key: Option<String>) -> anyhow::Result<bool> {
    let mut opts = interdict_chain::remote::Options {
        key,
        ..Default::default()
    };
    for p in checkpoints {
        let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
        let s: interdict_chain::Signed = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a checkpoint", p.display()))?;
        opts.checkpoints.push((p.display().to_string(), s));
    }
    let v = interdict_chain::remote::verify(&mut Http(ep), &opts)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    print!("{}", v.render());
    Ok(v.ok())
}
