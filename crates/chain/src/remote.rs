//! Verifying a collector from outside, through its reviewer API, taking nothing on trust: every
//! record is fetched as stored and re-hashed here; the collector's own statements (the heads it
//! says it acknowledged, its findings) only decide who is blamed; cuts count only when signed
//! with the pinned key; exported checkpoints are checked against what is stored now.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::{
    open_checkpoint, open_cut, printable, unhex, Expected, HostContext, HostReport, HostWalk,
    Problem, Signed,
};

/// An error of the API client.
pub type ApiError = Box<dyn std::error::Error + Send + Sync>;

/// The collector's reviewer API: GET `path` with `query`; the body and the `X-Next-Cursor`.
pub trait Api {
    /// One GET.
    fn get(
        &mut self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<(String, Option<String>), ApiError>;
}

/// What to check besides the records.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Checkpoints exported earlier, with where they came from (a file name).
    pub checkpoints: Vec<(String, Signed)>,
    /// The collector's public key (hex), pinned: cuts and checkpoints must be signed with it.
    pub key: Option<String>,
}

#[derive(Deserialize)]
struct HostInfo {
    host_id: String,
    hostname: String,
}

#[derive(Deserialize)]
struct ChainInfo {
    host_id: String,
    epoch: u64,
    head_seq: u64,
    head_hash: String,
    cut_seq: u64,
}

#[derive(Deserialize)]
struct FindingInfo {
    host_id: String,
    epoch: u64,
    kind: String,
    from_seq: u64,
    resolved_ms: Option<i64>,
}

#[derive(Deserialize)]
struct Chains {
    key: String,
    hosts: Vec<HostInfo>,
    chains: Vec<ChainInfo>,
    cuts: Vec<Signed>,
    findings: Vec<FindingInfo>,
}

#[derive(Deserialize)]
struct ChainLine {
    epoch: u64,
    seq: u64,
    cursor: String,
    record: String,
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Per host: the host name the collector gave, and the report.
    pub hosts: Vec<(String, HostReport)>,
    /// Problems not of one host (a checkpoint that does not verify).
    pub problems: Vec<String>,
    /// Notes not of one host.
    pub notes: Vec<String>,
}

impl Verdict {
    /// No problem anywhere.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.hosts.iter().all(|(_, r)| r.intact())
    }

    /// The report for a terminal: one line per host, then its problems and notes; every value
    /// that came from a host or the collector escaped with [`printable`].
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, r) in &self.hosts {
            let heads: Vec<String> = r
                .epochs
                .iter()
                .map(|e| format!("chain {} up to {}", e.epoch, e.head_seq))
                .collect();
            out.push_str(&format!(
                "{} {} ({}): {} record(s){}{}\n",
                if r.intact() { "intact " } else { "BROKEN " },
                printable(&r.host_id),
                printable(name),
                r.records,
                if heads.is_empty() { "" } else { ", " },
                heads.join(", ")
            ));
            for p in &r.problems {
                out.push_str(&format!(
                    "  {} host {} chain {} seq {}..{}: {}\n",
                    p.kind,
                    printable(&p.host_id),
                    p.epoch,
                    p.from_seq,
                    p.to_seq,
                    printable(&p.detail)
                ));
            }
            for n in &r.notes {
                out.push_str(&format!("  note: {}\n", printable(n)));
            }
        }
        for p in &self.problems {
            out.push_str(&format!("BROKEN  {}\n", printable(p)));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {}\n", printable(n)));
        }
        out
    }
}

/// Verify every host the collector knows, and every host of the checkpoints.
pub fn verify(api: &mut dyn Api, opts: &Options) -> Result<Verdict, ApiError> {
    let (body, _) = api.get("/v1/chains", &[])?;
    let info: Chains = serde_json::from_str(&body)?;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let key = match (&opts.key, opts.checkpoints.first()) {
        (Some(k), _) => k.clone(),
        (None, Some((_, cp))) => {
            notes.push(format!(
                "cuts checked against the key of the first checkpoint, {}",
                cp.key
            ));
            cp.key.clone()
        }
        (None, None) => {
            notes.push(format!(
                "no key pinned: cuts checked against the key the collector names, {} (pin it with --key)",
                info.key
            ));
            info.key.clone()
        }
    };
    if key != info.key {
        notes.push(format!(
            "the collector now signs with key {}, not with the pinned key",
            info.key
        ));
    }
    let mut leaves: BTreeMap<String, Vec<Expected>> = BTreeMap::new();
    for (name, cp) in &opts.checkpoints {
        match open_checkpoint(cp, Some(&key)) {
            Ok(c) => {
                notes.push(format!(
                    "checkpoint {name} of {} ms: {} chain head(s), tree head {}",
                    c.time_ms, c.tree_size, c.root
                ));
                for l in c.leaves {
                    let Some(h) = unhex(&l.hash) else { continue };
                    leaves.entry(l.host_id.clone()).or_default().push(Expected {
                        epoch: l.epoch,
                        seq: l.seq,
                        hash: h,
                        missing: Some((l.cut, l.missing)),
                        source: format!("checkpoint {name} holds it"),
                    });
                }
            }
            Err(e) => problems.push(format!("checkpoint {name}: {e}")),
        }
    }
    let mut cuts: BTreeMap<(String, u64), (u64, String, String)> = BTreeMap::new();
    let mut deleted: BTreeMap<(String, u64), (u64, i64)> = BTreeMap::new();
    for s in &info.cuts {
        match open_cut(s, Some(&key)) {
            Ok(c) if c.reason == "retention" => {
                let e = cuts.entry((c.host_id.clone(), c.epoch)).or_insert((
                    0,
                    String::new(),
                    String::new(),
                ));
                if c.seq >= e.0 {
                    *e = (c.seq, c.hash, c.reason);
                }
            }
            Ok(c) => {
                deleted.insert((c.host_id, c.epoch), (c.seq, c.at_ms));
            }
            Err(e) => problems.push(format!("a cut the collector keeps does not verify: {e}")),
        }
    }
    let names: BTreeMap<&str, &str> = info
        .hosts
        .iter()
        .map(|h| (h.host_id.as_str(), h.hostname.as_str()))
        .collect();
    let mut all: BTreeSet<String> = info.hosts.iter().map(|h| h.host_id.clone()).collect();
    all.extend(info.chains.iter().map(|c| c.host_id.clone()));
    all.extend(leaves.keys().cloned());
    let mut hosts = Vec::new();
    for host in all {
        let mut ctx = HostContext::default();
        let mut extra: Vec<Problem> = Vec::new();
        for ((_, epoch), (seq, hash, _)) in cuts.range((host.clone(), 0)..=(host.clone(), u64::MAX))
        {
            if let Some(hh) = unhex(hash) {
                ctx.cuts.insert(*epoch, (*seq, hh));
            }
        }
        for c in info.chains.iter().filter(|c| c.host_id == host) {
            let signed = ctx.cuts.get(&c.epoch).map_or(0, |x| x.0);
            if c.cut_seq != signed {
                extra.push(Problem {
                    host_id: host.clone(),
                    epoch: c.epoch,
                    from_seq: 1,
                    to_seq: c.cut_seq.max(signed),
                    kind: "cut".into(),
                    detail: format!(
                        "the collector says the chain is pruned up to {}, its signed cuts say {signed}",
                        c.cut_seq
                    ),
                });
            }
            if c.head_seq > 0 {
                if let Some(h) = unhex(&c.head_hash) {
                    ctx.expected.push(Expected {
                        epoch: c.epoch,
                        seq: c.head_seq,
                        hash: h,
                        missing: None,
                        source: "the collector says it acknowledged it to the host".into(),
                    });
                }
            }
        }
        for x in leaves.remove(&host).unwrap_or_default() {
            if let Some((seq, at)) = deleted.get(&(host.clone(), x.epoch)) {
                if *seq >= x.seq {
                    ctx.cuts.remove(&x.epoch);
                    let note = format!(
                        "chain {} of this host was deleted by the administrator at {at} ms (signed); {} no longer checkable",
                        x.epoch, x.source
                    );
                    notes.push(format!("host {host}: {note}"));
                    continue;
                }
            }
            ctx.expected.push(x);
        }
        for f in info
            .findings
            .iter()
            .filter(|f| f.host_id == host && f.kind == "break" && f.resolved_ms.is_none())
        {
            ctx.arrival_breaks.insert((f.epoch, f.from_seq));
        }
        let mut walk = HostWalk::new(&host);
        let mut after: Option<String> = None;
        loop {
            let mut q = vec![("host", host.as_str())];
            if let Some(a) = &after {
                q.push(("after", a.as_str()));
            }
            let (body, next) = api.get("/v1/chain", &q)?;
            for line in body.lines().filter(|l| !l.is_empty()) {
                let l: ChainLine = serde_json::from_str(line)?;
                walk.add(l.epoch, l.seq, &l.record);
                after = Some(l.cursor);
            }
            if next.is_none() {
                break;
            }
        }
        let mut report = walk.finish(&ctx);
        report.problems.extend(extra);
        hosts.push((
            names.get(host.as_str()).copied().unwrap_or("?").to_string(),
            report,
        ));
    }
    Ok(Verdict {
        hosts,
        problems,
        notes,
    })
}
