//! `interdict scan`: a one-shot compliance check of this machine, no daemon needed.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use interdict_policy::{Action, Date, Decision, Enforcement, Facts, Policy, Risk, SelectorKind};
use serde::Serialize;

use crate::inventory::hash::HashMemo;
use crate::inventory::host::{self, Accounts};
use crate::inventory::installed::{self, Progress, Skipped};
use crate::inventory::procs;
use crate::policy::LoadedPolicy;

/// What the scan looks at.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Install roots; empty means the defaults ([`installed::default_roots`]).
    pub roots: Vec<PathBuf>,
    /// Skip running processes.
    pub no_processes: bool,
    /// Print a progress line on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// Users' homes to look in for AI-agent configuration; empty means every account's home,
    /// unless `roots` are given (then only what lies under the roots).
    pub homes: Vec<PathBuf>,
}

/// Where a violation was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ViolationKind {
    /// Installed on disk.
    Installed,
    /// A running process.
    Running,
    /// An AI agent's configuration file (reported only, never changed).
    Config,
}

/// One violation, with the evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// The rule that matched.
    pub rule_id: String,
    /// The rule's tool name.
    pub rule_name: String,
    /// Risk level.
    pub risk: Risk,
    /// The rule's action.
    pub action: Action,
    /// Whether the action would be carried out today (monitor mode and `enforce_from` say not).
    pub enforcement: Enforcement,
    /// Installed or running.
    pub kind: ViolationKind,
    /// The file, symlink or package folder found, or the process's executable.
    pub path: String,
    /// The canonical file a symlink resolves to, or the script an interpreter runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// SHA-256 of the executable (or script), when computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The package, for package markers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// The package version, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Process id, for running processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The process's command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    /// Process user, or file owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The selector kind that matched.
    pub selector: SelectorKind,
    /// The rule's value that matched.
    pub pattern: String,
    /// The fact that matched it.
    pub matched: String,
    /// The reason given by the security review.
    pub reason: String,
    /// The approved alternative.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternative: Option<String>,
    /// For configuration files: the MCP servers declared (secrets redacted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<Vec<crate::inventory::footprint::McpServer>>,
    /// For configuration files: why the servers could not be listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_note: Option<String>,
}

/// Which policy a report was made with.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyId {
    /// Policy name.
    pub name: String,
    /// Policy version.
    pub version: String,
    /// enforce or monitor.
    pub mode: interdict_policy::Mode,
    /// SHA-256 of the policy file.
    pub sha256: String,
}

/// The whole report, as printed by `--format json`.
#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    /// The policy used.
    pub policy: PolicyId,
    /// This machine.
    pub host: String,
    /// The date rules were judged on.
    pub date: Date,
    /// Every violation found.
    pub violations: Vec<Violation>,
    /// What could not be looked at, and why.
    pub skipped: Vec<Skipped>,
    /// Files and folders looked at.
    pub scanned_files: u64,
    /// Bytes hashed.
    pub hashed_bytes: u64,
    /// Processes looked at (`null` with `--no-processes`).
    pub scanned_processes: Option<u64>,
}

impl ScanReport {
    /// True when nothing but `allow` rules matched.
    pub fn compliant(&self) -> bool {
        self.violations.is_empty()
    }
}

fn violation(
    policy: &Policy,
    d: &Decision,
    facts: &Facts,
    today: Date,
    kind: ViolationKind,
    path: String,
) -> Option<Violation> {
    if d.action == Action::Allow {
        return None;
    }
    let rule = policy.rule(d);
    let ev = policy.evidence(d, facts);
    Some(Violation {
        rule_id: rule.id.clone(),
        rule_name: rule.name.clone(),
        risk: rule.risk,
        action: rule.action,
        enforcement: policy.enforcement(d, today),
        kind,
        path,
        target: None,
        sha256: None,
        package: None,
        version: None,
        pid: None,
        command_line: None,
        user: facts.user.clone(),
        selector: ev.selector,
        pattern: ev.pattern,
        matched: ev.value,
        reason: rule.reason.clone(),
        alternative: rule.alternative.clone(),
        mcp_servers: None,
        config_note: None,
    })
}

/// What the memo learned about a process's executable and script in the read that hashed them.
fn add_content(facts: &mut Facts, pid: u32, memo: &HashMemo) {
    let content = |p: &std::path::Path| {
        let m = std::fs::metadata(p).ok()?;
        memo.get_digest(&crate::inventory::hash::FileKey::of(&m))?
            .content
    };
    facts.exe_content = content(std::path::Path::new(&format!("/proc/{pid}/exe")));
    if let Some(s) = facts.script_path.clone() {
        facts.script_content = content(&s);
    }
}

/// Run the scan.
pub fn run(loaded: &LoadedPolicy, opts: &ScanOptions) -> ScanReport {
    let policy = &loaded.policy;
    let accounts = Accounts::load();
    let host = host::hostname();
    let today = host::today();
    let memo = HashMemo::default();
    let progress = Arc::new(Progress::default());
    let done = Arc::new(AtomicBool::new(false));
    let reporter = (opts.progress && std::io::stderr().is_terminal()).then(|| {
        let (progress, done) = (progress.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let files = progress.files.load(Ordering::Relaxed);
                let mib = progress.hashed_bytes.load(Ordering::Relaxed) >> 20;
                eprint!("\rscanning: {files} entries, {mib} MiB hashed ");
                let _ = std::io::stderr().flush();
                std::thread::sleep(Duration::from_millis(200));
            }
            eprint!("\r\x1b[K");
        })
    });

    let mut violations = Vec::new();
    let mut skipped = Vec::new();
    let mut scanned_processes = None;
    if !opts.no_processes {
        let list = procs::list();
        scanned_processes = Some(list.len() as u64);
        // Family signatures are looked for in the read that hashes each executable.
        memo.set_searcher(policy.content_searcher().cloned());
        let hash = policy.needs_sha256() || policy.needs_content();
        for info in &list {
            let mut pf = procs::facts_for(info, &accounts, &host, &memo, hash);
            if hash {
                add_content(&mut pf.facts, info.pid, &memo);
            }
            if let Some(err) = &pf.hash_error {
                skipped.push(Skipped {
                    path: format!("pid {}", info.pid),
                    reason: format!("cannot hash: {err}"),
                });
            }
            let Some(d) = policy.evaluate(&pf.facts) else {
                continue;
            };
            let path = info
                .exe
                .as_ref()
                .map(|e| crate::path_text(e))
                .unwrap_or_default();
            if let Some(mut v) =
                violation(policy, &d, &pf.facts, today, ViolationKind::Running, path)
            {
                v.pid = Some(info.pid);
                v.command_line = Some(procs::command_line(&info.argv));
                v.target = pf.facts.script_path.as_ref().map(|s| crate::path_text(s));
                v.sha256 = pf.facts.exe_sha256.map(|h| h.to_string());
                violations.push(v);
            }
        }
    }

    // --root and --home narrow the scan: the roots given, and the install roots and
    // configuration of the homes given; without either, the whole machine.
    let explicit = !opts.roots.is_empty();
    let (mut roots, root_skips) = installed::normalize_roots(&opts.roots, true);
    skipped.extend(root_skips);
    let given_homes: Vec<PathBuf> = opts
        .homes
        .iter()
        .filter_map(|h| match std::fs::canonicalize(h) {
            Ok(c) => Some(c),
            Err(e) => {
                skipped.push(Skipped {
                    path: h.display().to_string(),
                    reason: format!("home: {}", crate::io_reason(&e)),
                });
                None
            }
        })
        .collect();
    let implied = if !given_homes.is_empty() {
        given_homes
            .iter()
            .flat_map(|h| installed::home_roots(h))
            .collect()
    } else if explicit {
        Vec::new()
    } else {
        installed::default_roots(&accounts)
    };
    let (implied, implied_skips) = installed::normalize_roots(&implied, false);
    skipped.extend(implied_skips);
    roots.extend(implied);
    let (roots, _) = installed::normalize_roots(&roots, false);
    let mut homes = accounts.homes();
    homes.extend(given_homes.iter().cloned());
    let scope = installed::ConfigScope {
        search: if !given_homes.is_empty() {
            given_homes
        } else if explicit {
            Vec::new()
        } else {
            accounts.homes()
        },
        homes,
        absolute: !explicit && opts.homes.is_empty(),
    };
    let inst = installed::scan_with(
        policy,
        &roots,
        Some(&scope),
        &accounts,
        &host,
        &memo,
        &progress,
    );
    skipped.extend(inst.skipped);
    for f in &inst.found {
        let Some(mut v) = violation(
            policy,
            &f.decision,
            &f.facts,
            today,
            ViolationKind::Installed,
            crate::path_text(&f.path),
        ) else {
            continue;
        };
        if f.canonical != f.path {
            v.target = Some(crate::path_text(&f.canonical));
        }
        v.sha256 = f
            .facts
            .exe_sha256
            .or(f.facts.script_sha256)
            .map(|h| h.to_string());
        if let Some(p) = &f.package {
            v.package = Some(p.package.to_string());
            v.version = p.version.clone();
        }
        violations.push(v);
    }
    for c in &inst.configs {
        let Some(mut v) = violation(
            policy,
            &c.decision,
            &c.facts,
            today,
            ViolationKind::Config,
            crate::path_text(&c.path),
        ) else {
            continue;
        };
        // Configuration files are reported, whatever the rule's action.
        v.action = Action::Report;
        v.enforcement = Enforcement::ReportOnly;
        if c.canonical != c.path {
            v.target = Some(crate::path_text(&c.canonical));
        }
        v.mcp_servers = Some(c.config.mcp_servers.clone());
        v.config_note = c.config.note.clone().or_else(|| {
            (c.config.servers_omitted > 0)
                .then(|| format!("{} more servers not listed", c.config.servers_omitted))
        });
        violations.push(v);
    }
    done.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    violations.sort_by(|a, b| {
        (a.kind as u8, &a.rule_id, &a.path).cmp(&(b.kind as u8, &b.rule_id, &b.path))
    });
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    let info = policy.info();
    ScanReport {
        policy: PolicyId {
            name: info.name.clone(),
            version: info.version.clone(),
            mode: info.mode,
            sha256: loaded.sha256.clone(),
        },
        host,
        date: today,
        violations,
        skipped,
        scanned_files: inst.scanned_files,
        hashed_bytes: inst.hashed_bytes,
        scanned_processes,
    }
}

fn enforcement_text(e: Enforcement) -> String {
    match e {
        Enforcement::Enforced => "enforced".into(),
        Enforcement::Monitor => "monitor mode: report only".into(),
        Enforcement::NotYet(d) => format!("report only until {d}"),
        Enforcement::ReportOnly => "report".into(),
    }
}

/// The report for people: one block per violation, then what was skipped and a summary.
pub fn render_text(r: &ScanReport, out: &mut impl Write) -> std::io::Result<()> {
    for v in &r.violations {
        let what = match v.kind {
            ViolationKind::Installed => "installed",
            ViolationKind::Running => "running",
            ViolationKind::Config => "config",
        };
        writeln!(
            out,
            "VIOLATION {} [{}] {} ({} risk, action {}, {})",
            v.rule_id,
            what,
            v.rule_name,
            v.risk,
            v.action,
            enforcement_text(v.enforcement)
        )?;
        writeln!(out, "  path:     {}", v.path)?;
        if let Some(t) = &v.target {
            writeln!(out, "  target:   {t}")?;
        }
        if let Some(p) = &v.package {
            let ver = v
                .version
                .as_deref()
                .map(|s| format!(" {s}"))
                .unwrap_or_default();
            writeln!(out, "  package:  {p}{ver}")?;
        }
        if let Some(pid) = v.pid {
            writeln!(out, "  pid:      {pid}")?;
        }
        if let Some(c) = &v.command_line {
            writeln!(out, "  command:  {c}")?;
        }
        if let Some(u) = &v.user {
            writeln!(out, "  user:     {u}")?;
        }
        if let Some(h) = &v.sha256 {
            writeln!(out, "  sha256:   {h}")?;
        }
        if v.pattern == v.matched {
            writeln!(out, "  matched:  {} `{}`", v.selector.as_str(), v.pattern)?;
        } else {
            writeln!(
                out,
                "  matched:  {} `{}` ({})",
                v.selector.as_str(),
                v.pattern,
                v.matched
            )?;
        }
        for m in v.mcp_servers.iter().flatten() {
            let what = match (&m.command, &m.url) {
                (Some(c), _) => std::iter::once(c.as_str())
                    .chain(m.args.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
                (None, Some(u)) => u.clone(),
                (None, None) => String::new(),
            };
            let scope = m
                .scope
                .as_deref()
                .map(|s| format!(" [{s}]"))
                .unwrap_or_default();
            let off = if m.disabled { " (disabled)" } else { "" };
            writeln!(
                out,
                "  mcp:      {} ({}){scope}{off}: {what}",
                m.name, m.transport
            )?;
            for e in m.env.iter().chain(&m.headers) {
                writeln!(out, "            {e}")?;
            }
        }
        if let Some(n) = &v.config_note {
            writeln!(out, "  note:     {n}")?;
        }
        writeln!(out, "  reason:   {}", v.reason)?;
        if let Some(a) = &v.alternative {
            writeln!(out, "  instead:  {a}")?;
        }
    }
    if !r.skipped.is_empty() {
        writeln!(out, "skipped {} entries:", r.skipped.len())?;
        for s in &r.skipped {
            writeln!(out, "  {}: {}", s.path, s.reason)?;
        }
    }
    let procs = r
        .scanned_processes
        .map(|n| format!(", {n} processes"))
        .unwrap_or_default();
    writeln!(
        out,
        "{}: {} violation(s); scanned {} entries ({} MiB hashed){}; policy {} {} ({})",
        if r.compliant() {
            "compliant"
        } else {
            "NOT COMPLIANT"
        },
        r.violations.len(),
        r.scanned_files,
        r.hashed_bytes >> 20,
        procs,
        r.policy.name,
        r.policy.version,
        r.policy.mode,
    )
}
