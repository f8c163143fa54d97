//! `interdict logs`: the reviewer's view of the central log, through the collector's API with a
//! reviewer token (`--token` or `INTERDICT_REVIEWER_TOKEN`).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

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
    /// From this time (UTC: 2026-11-26T09:30:00Z, with or without milliseconds, or a date).
    #[arg(long)]
    pub since: Option<String>,
    /// Until this time (exclusive; same forms as --since).
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

fn get(
    ep: &Endpoint,
    path: &str,
    query: &[(&str, &str)],
) -> anyhow::Result<(String, Option<String>)> {
    let url = format!("{}{path}", ep.collector.trim_end_matches('/'));
    let mut resp = client()
        .get(&url)
        .query_pairs(query.iter().copied())
        .header("Authorization", &format!("Bearer {}", ep.token))
        .call()
        .with_context(|| format!("cannot reach the collector at {}", ep.collector))?;
    let status = resp.status().as_u16();
    let next = resp
        .headers()
        .get("x-next-cursor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.body_mut().read_to_string()?;
    if !(200..300).contains(&status) {
        anyhow::bail!("the collector answered {status}: {}", body.trim());
    }
    Ok((body, next))
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

/// Print every matching event as NDJSON, following pages; returns the last cursor.
pub fn query(
    ep: &Endpoint,
    f: &Filter,
    mut after: Option<String>,
) -> anyhow::Result<Option<String>> {
    let mut out = std::io::stdout().lock();
    loop {
        let (body, next) = get(ep, "/v1/events", &params(f, after.as_deref()))?;
        out.write_all(body.as_bytes())?;
        // The cursor of the last event printed, for `tail`.
        if let Some(last) = body.lines().last() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(last) {
                if let (Some(t), Some(id)) = (
                    v["time"]
                        .as_str()
                        .and_then(interdict_event::parse_rfc3339_millis),
                    v["id"].as_str(),
                ) {
                    after = Some(format!("{t}/{id}"));
                }
            }
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(after),
        }
    }
}

/// Follow new events as they arrive (native format; polls every `every`).
pub fn tail(ep: &Endpoint, f: &Filter, every: Duration) -> anyhow::Result<()> {
    let mut f = f.clone();
    f.format = "native".into();
    let mut after = None;
    loop {
        after = query(ep, &f, after.clone())?.or(after);
        std::thread::sleep(every);
    }
}

/// Print the chain report per host; `Ok(false)` when any host has findings or missing records.
pub fn verify(ep: &Endpoint) -> anyhow::Result<bool> {
    let (body, _) = get(ep, "/v1/verify", &[])?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let mut ok = true;
    for h in v["hosts"].as_array().into_iter().flatten() {
        let intact = h["intact"].as_bool().unwrap_or(false);
        ok &= intact;
        println!(
            "{} {} ({}): {} event(s), last seq {}",
            if intact { "intact " } else { "BROKEN " },
            h["host_id"].as_str().unwrap_or("?"),
            h["hostname"].as_str().unwrap_or("?"),
            h["events"],
            h["last_seq"]
        );
        for f in h["findings"].as_array().into_iter().flatten() {
            println!(
                "  {} seq {}..{}: {}",
                f["kind"].as_str().unwrap_or("?"),
                f["from_seq"],
                f["to_seq"],
                f["detail"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ok)
}
