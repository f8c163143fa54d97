//! The shipped pack against the real thing: the npm packages of Claude Code, Codex CLI and
//! Gemini CLI at pinned versions, installed into a prefix that is cached between runs. Install
//! scripts are not run, except Claude Code's own postinstall (`install.cjs`), which puts the
//! native binary in place exactly as a plain `npm install` does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::*;

/// Pinned versions. The shipped `policies/hashes/*.sha256` carry the digests of these builds.
pub const PACKAGES: &[&str] = &[
    "@anthropic-ai/claude-code@2.1.332",
    "@openai/codex@0.171.0",
    "@google/gemini-cli@0.61.0",
];

/// The prefix holding the installed packages: `$INTERDICT_NPM_FIXTURES`, or a cache folder under
/// the target directory. Installed once; a `.complete` marker names what it holds.
pub fn prefix() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let dir = std::env::var_os("INTERDICT_NPM_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("npm-fixtures"));
        let marker = dir.join(".complete");
        let want = PACKAGES.join("\n");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
            return dir;
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .args(PACKAGES)
            .output()
            .expect("npm must be installed to run this test (.ci/run installs it)");
        assert!(
            out.status.success(),
            "npm install failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pkg = dir.join("node_modules/@anthropic-ai/claude-code");
        let out = Command::new("node")
            .arg("install.cjs")
            .current_dir(&pkg)
            .output()
            .expect("run node");
        assert!(
            out.status.success(),
            "claude-code postinstall failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&marker, want).unwrap();
        dir
    })
}

fn nm(rel: &str) -> PathBuf {
    prefix().join("node_modules").join(rel)
}

fn find(
    report: &serde_json::Value,
    rule: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    violations(report)
        .into_iter()
        .find(|v| v["rule_id"] == rule && pred(v))
        .unwrap_or_else(|| panic!("no matching {rule} violation in:\n{report:#}"))
}

#[test]
fn shipped_pack_reports_each_real_package_by_package_marker() {
    let r = scan_json(&shipped_pack(), &[prefix()]);
    r.expect_code(1);
    let j = r.json();
    for (rule, pkg, dir, version) in [
        (
            "claude-code",
            "npm:@anthropic-ai/claude-code",
            "@anthropic-ai/claude-code",
            "2.1.332",
        ),
        ("codex-cli", "npm:@openai/codex", "@openai/codex", "0.171.0"),
        (
            "gemini-cli",
            "npm:@google/gemini-cli",
            "@google/gemini-cli",
            "0.61.0",
        ),
    ] {
        let v = find(&j, rule, |v| {
            v["path"] == nm(dir).to_string_lossy().as_ref()
        });
        assert_eq!(v["package"], pkg);
        assert_eq!(v["version"], version);
        assert_eq!(v["selector"], "package");
    }
    // Claude Code is blocked; the others are report-only in the shipped pack.
    let claude = find(&j, "claude-code", |_| true);
    assert_eq!(claude["action"], "block");
    assert_eq!(find(&j, "codex-cli", |_| true)["action"], "report");
    assert_eq!(find(&j, "gemini-cli", |_| true)["action"], "report");
}

#[test]
fn shipped_pack_identifies_the_real_binaries_and_scripts_by_path() {
    // Without the hash lists and the family rule, the path and script globs alone must find
    // every tool.
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(shipped_pack()).unwrap();
    let no_hashes: String = text
        .lines()
        .filter(|l| {
            !l.starts_with("sha256_files")
                && !l.starts_with("contains_all")
                && !l.starts_with("contains_in")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let policy = tmp.path().join("pack-without-hashes.toml");
    std::fs::write(&policy, no_hashes).unwrap();
    let r = scan_json(&policy, &[prefix()]);
    r.expect_code(1);
    let j = r.json();
    let claude = find(&j, "claude-code", |v| {
        v["path"]
            == nm("@anthropic-ai/claude-code/bin/claude.exe")
                .to_string_lossy()
                .as_ref()
    });
    assert_eq!(claude["selector"], "path");
    let codex = find(&j, "codex-cli", |v| v["selector"] == "path");
    assert!(
        codex["path"].as_str().unwrap().ends_with("/bin/codex"),
        "{codex:#}"
    );
    let gemini = find(&j, "gemini-cli", |v| v["selector"] == "script");
    assert!(
        gemini["path"]
            .as_str()
            .unwrap()
            .ends_with("@google/gemini-cli/bundle/gemini.js"),
        "{gemini:#}"
    );
}

#[test]
fn a_renamed_copy_of_the_real_claude_binary_is_caught_by_sha256() {
    let real = nm("@anthropic-ai/claude-code/bin/claude.exe");
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("Downloads/definitely-not-claude");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&real, &copy).unwrap();
    let r = scan_json(&shipped_pack(), &[tmp.path()]);
    r.expect_code(1);
    let j = r.json();
    let v = violation_at(&j, &copy);
    assert_eq!(v["rule_id"], "claude-code");
    assert_eq!(v["selector"], "sha256");
    assert_eq!(v["sha256"], sha256sum(&real));
    assert_eq!(violations(&j).len(), 1, "{j:#}");
}

#[test]
fn the_agent_reports_a_real_claude_code_install_once_per_package_and_binary() {
    use crate::support::agent::Agent;
    let root = tempfile::tempdir().unwrap();
    let text = crate::support::pack_without_family_rule();
    let agent_dir_policy = text.replace(
        "hashes/",
        &format!("{}/hashes/", repo().join("policies").display()),
    );
    let mut agent = Agent::start(
        &agent_dir_policy,
        &format!(
            "fanotify = false\nproc_connector = false\n\n[install]\nroots = [\"{}\"]\ndebounce_ms = 300",
            root.path().display()
        ),
    );
    // "Install" the real packages, as npm lays them out.
    let dest = root.path().join("lib/node_modules/@anthropic-ai");
    std::fs::create_dir_all(&dest).unwrap();
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(nm("@anthropic-ai/claude-code"))
        .arg(nm("@anthropic-ai/claude-code-linux-x64"))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success());
    for pkg in [
        "npm:@anthropic-ai/claude-code",
        "npm:@anthropic-ai/claude-code-linux-x64",
    ] {
        agent.wait_event(pkg, |e| {
            e["kind"] == "installed_detected"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with(&format!("package {pkg} "))
        });
    }
    let binary = agent.wait_event("the binary", |e| {
        e["kind"] == "installed_detected" && e["rule"]["selector"] == "sha256"
    });
    assert_eq!(binary["rule"]["id"], "claude-code");
    // Once a full rescan has run, everything the copy wrote has been looked at.
    agent.settle_installs();
    agent.stop();
    let events = agent.events();
    let detected: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "installed_detected")
        .collect();
    for pkg in [
        "npm:@anthropic-ai/claude-code ",
        "npm:@anthropic-ai/claude-code-linux-x64 ",
    ] {
        let n = detected
            .iter()
            .filter(|e| {
                e["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with(&format!("package {pkg}"))
            })
            .count();
        assert_eq!(n, 1, "{pkg}: {detected:#?}");
    }
    assert!(
        detected.iter().all(|e| e["rule"]["id"] == "claude-code"),
        "{detected:#?}"
    );
}
