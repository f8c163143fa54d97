//! `interdict explain PATH`: which rule matches a file or package folder, and why, in words an
//! employee understands. Needs no privileges beyond reading the file and the policy.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use interdict_policy::{
    expand_placeholders, Action, Ecosystem, Enforcement, Facts, PackageRef, PlaceholderValues,
};

use crate::inventory::hash::HashMemo;
use crate::inventory::installed;
use crate::policy::LoadedPolicy;

/// What `explain` found, for the exit code: 0 nothing (or an allow rule), 1 a rule applies.
pub fn explain(loaded: &LoadedPolicy, path: &Path, out: &mut impl Write) -> anyhow::Result<u8> {
    let policy = &loaded.policy;
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), crate::io_reason(&e)))?;
    let canonical = std::fs::canonicalize(path)?;
    let mut facts = Facts {
        host: Some(crate::inventory::host::hostname()),
        ..Facts::default()
    };
    let name_of = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    facts.add_name(name_of(path));
    facts.add_name(name_of(&canonical));
    let accounts = crate::inventory::host::Accounts::load();
    let uid = rustix::process::getuid().as_raw();
    facts.user = Some(accounts.user_name(uid));
    facts.groups = accounts.groups_of(uid);
    if meta.is_dir() {
        let name = canonical
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let manifest = canonical.join("package.json");
        if let Ok(p) = installed::read_npm_manifest(&manifest) {
            facts.packages.push(p.package);
        }
        if let Some((pkg, _)) = installed::parse_dist_info_dir(&name) {
            facts.packages.push(PackageRef::new(Ecosystem::Pypi, &pkg));
        }
        if let Some((id, _)) = installed::parse_extension_dir(&name) {
            facts.packages.push(PackageRef::new(Ecosystem::Vscode, &id));
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
            facts.exe_path = Some(canonical.clone());
            facts.exe_sha256 = digest;
            facts.exe_content = content.clone();
        }
        if meta.mode() & 0o111 == 0 || policy.is_script_path(&canonical) {
            facts.script_path = Some(canonical.clone());
            facts.script_sha256 = digest;
            facts.script_content = content;
        }
    }
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
