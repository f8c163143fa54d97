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
    }
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
