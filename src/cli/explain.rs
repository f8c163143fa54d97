//! `interdict explain PATH`: which rule matches a file or package folder, and why, in words an
//! employee understands. Needs no privileges beyond reading the file and the policy.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use interdict_policy::{
    expand_placeholders, Action, Ecosystem, Enforcement, PackageRef, PlaceholderValues,
};

use crate::inventory::facts::FactsBuilder;
use crate::inventory::hash::HashMemo;
use crate::inventory::installed;
use crate::policy::LoadedPolicy;

/// What `explain` found, for the exit code: 0 nothing (or an allow rule), 1 a rule applies.
pub fn explain(loaded: &LoadedPolicy, path: &Path, out: &mut impl Write) -> anyhow::Result<u8> {
    let policy = &loaded.policy;
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), crate::io_reason(&e)))?;
    let canonical = std::fs::canonicalize(path)?;
    let accounts = crate::inventory::host::Accounts::load();
    let uid = rustix::process::getuid().as_raw();
    let mut b = FactsBuilder::new(&crate::inventory::host::hostname())
        .name_of(path)
        .name_of(&canonical)
        .user(Some(uid), &accounts);
    if meta.is_dir() {
        let name = canonical
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let manifest = canonical.join("package.json");
        if let Ok(p) = installed::read_npm_manifest(&manifest) {
            b = b.package(p.package);
        }
        if let Some((pkg, _)) = installed::parse_dist_info_dir(&name) {
            b = b.package(PackageRef::new(Ecosystem::Pypi, &pkg));
        }
        if let Some((id, _)) = installed::parse_extension_dir(&name) {
            b = b.package(PackageRef::new(Ecosystem::Vscode, &id));
        }
    } else {
        // One read for the digest and the family signatures.
        let (digest, content) = if policy.needs_sha256() || policy.needs_content() {
            let memo = HashMemo::default();
            memo.set_searcher(policy.content_searcher().cloned());
            match memo.digest_path(&canonical, true) {
                Ok(d) => (Some(d.sha256), d.content),
                Err(_) => (None, None),
            }
        } else {
            (None, None)
        };
        if meta.mode() & 0o111 != 0 {
            b = b
                .exe(&canonical)
                .exe_digest(digest)
                .exe_content(content.clone());
        }
        if meta.mode() & 0o111 == 0 || policy.is_script_path(&canonical) {
            b = b
                .script(&canonical)
                .script_digest(digest)
                .script_content(content);
        }
    }
    let facts = b.build();
    let Some(d) = policy.evaluate(&facts) else {
        writeln!(
            out,
            "{}: no rule of policy {} {} matches it",
            path.display(),
            policy.info().name,
            policy.info().version
        )?;
        return Ok(0);
    };
    let rule = policy.rule(&d);
    let ev = policy.evidence(&d, &facts);
    let verb = match (
        rule.action,
        policy.enforcement(&d, crate::inventory::host::today()),
    ) {
        (Action::Allow, _) => "allowed (an exception) by".to_string(),
        (Action::Report, _) => "reported by".to_string(),
        (_, Enforcement::Monitor) => format!(
            "would be {}ed (monitor mode: only reported) by",
            verb_of(rule.action)
        ),
        (_, Enforcement::NotYet(date)) => {
            format!("reported until {date}, then {}ed, by", verb_of(rule.action))
        }
        _ => format!("{}ed by", verb_of(rule.action)),
    };
    writeln!(
        out,
        "{}: {verb} rule `{}`: {} ({} risk)",
        path.display(),
        rule.id,
        rule.name,
        rule.risk
    )?;
    writeln!(out, "  why:      {}", rule.reason)?;
    if let Some(m) = policy.message_for(rule) {
        writeln!(out, "  message:  {m}")?;
    }
    writeln!(
        out,
        "  matched:  {} `{}` ({})",
        ev.selector.as_str(),
        ev.pattern,
        ev.value
    )?;
    if let Some(a) = &rule.alternative {
        writeln!(out, "  instead:  {a}")?;
    }
    if let Some(url) = &policy.info().more_info_url {
        let sha = facts
            .exe_sha256
            .or(facts.script_sha256)
            .map(|h| h.to_string())
            .unwrap_or_default();
        let values = PlaceholderValues {
            rule_id: &rule.id,
            sha256: &sha,
            path: &canonical.to_string_lossy(),
            host: facts.host.as_deref().unwrap_or(""),
            user: facts.user.as_deref().unwrap_or(""),
        };
        writeln!(
            out,
            "  more:     {}",
            expand_placeholders(url, &values, true)
        )?;
    }
    Ok(if rule.action == Action::Allow { 0 } else { 1 })
}

fn verb_of(a: Action) -> &'static str {
    match a {
        Action::Block => "block",
        Action::Kill => "kill",
        Action::Quarantine => "quarantin",
        Action::Report => "report",
        Action::Allow => "allow",
    }
}
