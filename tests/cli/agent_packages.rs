//! Issue 14, item 6: the other AI coding agents of the shipped pack, installed from the real
//! registries the way their installers lay them out, found by `interdict scan --root` with the
//! right rule; and an ordinary project's `node_modules` yields nothing.
//!
//! One fixture is built once into the shared test cache: `npm install -g --prefix` (the global
//! layout, `lib/node_modules/...`, `bin/...`) of Amp, Cline, Kilo Code, Continue, Crush, Copilot
//! and three old Codex releases (one per binary layout the pack names), a project-local install
//! of the latest `@ampcode/cli`, and a virtualenv with Aider and `aider-install` from their
//! wheels. The postinstall scripts that only place files (Amp's `install.cjs`, Cline's and
//! Kilo's `postinstall.mjs`) run, as in a plain `npm install`, with HOME in a temporary folder;
//! Crush's downloads its binary from GitHub, which tests cannot reach, so it is not run.
//! Versions are pinned: they are the ones checked in the pack's comments (2026-12-01).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::fixtures::*;
use crate::support::*;

/// (prefix folder, packages, whether install scripts run). Global installs unless the prefix
/// starts with `project-`.
const NPM_INSTALLS: &[(&str, &[&str], bool)] = &[
    // `@sourcegraph/amp` depends on `@ampcode/cli` of the same release (0.0.1790142911: binary
    // placed at bin/amp.exe).
    ("amp", &["@sourcegraph/amp@0.0.1790142911-g7618fb"], true),
    // The latest `@ampcode/cli` (bin/amp, bin/amp.exe a symlink to it). npm has no platform
    // packages of this release: the previous release's is named beside it, which install.cjs
    // finds the same way.
    (
        "project-amp",
        &[
            "@ampcode/cli@0.0.1790712063-gb89205",
            "@ampcode/cli-linux-x64@0.0.1790142911-g7618fb",
        ],
        true,
    ),
    ("cline", &["cline@3.0.65"], true),
    // 7.8.1 has no platform packages on npm; 7.7.7 is the latest that has.
    ("kilo", &["@kilocode/cli@7.7.7"], true),
    ("continue", &["@continuedev/cli@1.5.47"], false),
    ("crush", &["@charmland/crush@0.96.1"], false),
    ("copilot", &["@github/copilot@1.0.102"], false),
    // Codex: 0.1.x ran dist/cli.js under node; 0.20 shipped bin/codex-<triple>; 0.99 the platform
    // package with vendor/<triple>/codex/codex.
    ("codex-0.1", &["@openai/codex@0.1.2505172129"], false),
    ("codex-0.20", &["@openai/codex@0.20.0"], false),
    ("codex-0.99", &["@openai/codex@0.99.0"], false),
];

const AIDER_WHEELS: &[&str] = &["aider-chat==0.86.2", "aider-install==0.2.0"];

/// The npm cache of the real user, so that the tarballs are downloaded once for every fixture
/// (the installs themselves run with HOME in a temporary folder).
fn npm_cache() -> PathBuf {
    match std::env::var_os("npm_config_cache") {
        Some(c) => PathBuf::from(c),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".npm")
        }
    }
}

/// The fixture (read-only for tests).
pub fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let wheels: Vec<PathBuf> = AIDER_WHEELS.iter().map(|w| pypi_wheels(w)).collect();
        cached("agent-packages-1", |dir| {
            let home = tempfile::tempdir().unwrap();
            for (prefix, specs, scripts) in NPM_INSTALLS {
                let mut c = Command::new("npm");
                in_home(&mut c, home.path());
                c.env("npm_config_cache", npm_cache()).args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                ]);
                if !prefix.starts_with("project-") {
                    c.arg("-g");
                }
                if !scripts {
                    c.arg("--ignore-scripts");
                }
                sh(c.arg("--prefix").arg(dir.join(prefix)).args(*specs));
            }
            // Aider in a virtualenv, from its wheels (console scripts and dist-info as pip
            // makes them).
            let venv = dir.join("aider-venv");
            sh(Command::new("python3").args(["-m", "venv"]).arg(&venv));
            let mut pip = Command::new(venv.join("bin/python"));
            pip.args([
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-index",
                "--disable-pip-version-check",
            ]);
            for w in &wheels {
                pip.arg("--find-links").arg(w);
            }
            sh(pip.args(AIDER_WHEELS));
        })
    })
}

/// The scan of the fixture with the shipped pack (run once).
fn report() -> &'static serde_json::Value {
    static R: OnceLock<serde_json::Value> = OnceLock::new();
    R.get_or_init(|| {
        let r = scan_json(&shipped_pack(), &[fixture()]);
        r.expect_code(1);
        r.json()
    })
}

/// The violation of `rule` at `rel` (under the fixture) by `selector`.
fn expect(rule: &str, rel: &str, selector: &str) -> serde_json::Value {
    let path = std::fs::canonicalize(fixture()).unwrap().join(rel);
    let all = violations(report());
    all.iter()
        .find(|v| v["path"] == path.to_string_lossy().as_ref() && v["selector"] == selector)
        .cloned()
        .map(|v| {
            assert_eq!(v["rule_id"], rule, "{v:#}");
            assert_eq!(v["action"], "report", "{v:#}");
            v
        })
        .unwrap_or_else(|| {
            let here: Vec<_> = all
                .iter()
                .filter(|v| v["path"] == path.to_string_lossy().as_ref())
                .collect();
            panic!(
                "no {rule} violation by {selector} at {}; there: {here:#?}\nreport:\n{:#}",
                path.display(),
                report()
            )
        })
}

/// The package marker violation of `rule` for `package` at `rel`.
fn expect_package(rule: &str, rel: &str, package: &str, version: &str) {
    let v = expect(rule, rel, "package");
    assert_eq!(v["package"], package, "{v:#}");
    assert_eq!(v["version"], version, "{v:#}");
}

const GLOBAL: &str = "lib/node_modules";

#[test]
fn issue_14_amp_is_found_where_its_postinstall_puts_the_native_binary() {
    // Global install of @sourcegraph/amp: the CLI is its own dependency, the binary a platform
    // package, hard-linked by install.cjs to bin/amp.exe.
    let amp = format!("amp/{GLOBAL}/@sourcegraph/amp");
    let cli = format!("{amp}/node_modules/@ampcode/cli");
    let native = format!("{amp}/node_modules/@ampcode/cli-linux-x64");
    expect_package(
        "amp",
        &amp,
        "npm:@sourcegraph/amp",
        "0.0.1790142911-g7618fb",
    );
    expect_package(
        "amp",
        &native,
        "npm:@ampcode/cli-linux-x64",
        "0.0.1790142911-g7618fb",
    );
    expect("amp", &format!("{native}/amp"), "path");
    expect("amp", &format!("{cli}/bin/amp.exe"), "path");
    expect("amp", &format!("{cli}/cli-wrapper.cjs"), "script");
    // The latest @ampcode/cli: the binary is bin/amp, bin/amp.exe a symlink to it.
    let latest = "project-amp/node_modules/@ampcode/cli";
    let link = fixture().join(latest).join("bin/amp.exe");
    assert_eq!(
        std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display())),
        Path::new("amp"),
        "install.cjs of this release makes bin/amp.exe a symlink"
    );
    let v = expect("amp", &format!("{latest}/bin/amp"), "path");
    assert_eq!(
        v["pattern"], "**/node_modules/@ampcode/cli/bin/amp",
        "{v:#}"
    );
}

#[test]
fn issue_14_cline_and_kilo_are_found_at_the_binary_their_postinstall_caches() {
    let cline = format!("cline/{GLOBAL}/cline");
    expect_package("cline-cli", &cline, "npm:cline", "3.0.65");
    expect_package(
        "cline-cli",
        &format!("{cline}/node_modules/@cline/cli-linux-x64"),
        "npm:@cline/cli-linux-x64",
        "3.0.65",
    );
    let cached = expect("cline-cli", &format!("{cline}/bin/.cline"), "path");
    let platform = expect(
        "cline-cli",
        &format!("{cline}/node_modules/@cline/cli-linux-x64/bin/cline"),
        "path",
    );
    expect("cline-cli", &format!("{cline}/bin/cline"), "script");
    // The cached binary is the platform package's, hard-linked.
    assert_eq!(
        std::fs::metadata(fixture().join(&cline).join("bin/.cline"))
            .map(|m| std::os::unix::fs::MetadataExt::nlink(&m))
            .unwrap(),
        2,
        "{cached:#}\n{platform:#}"
    );

    let kilo = format!("kilo/{GLOBAL}/@kilocode/cli");
    expect_package("kilo-cli", &kilo, "npm:@kilocode/cli", "7.7.7");
    expect_package(
        "kilo-cli",
        &format!("{kilo}/node_modules/@kilocode/cli-linux-x64"),
        "npm:@kilocode/cli-linux-x64",
        "7.7.7",
    );
    expect("kilo-cli", &format!("{kilo}/bin/.kilo"), "path");
    expect(
        "kilo-cli",
        &format!("{kilo}/node_modules/@kilocode/cli-linux-x64/bin/kilo"),
        "path",
    );
    expect("kilo-cli", &format!("{kilo}/bin/kilo"), "script");
}

#[test]
fn issue_14_codex_is_found_in_every_binary_layout_it_shipped() {
    let pkg = |v: &str| format!("codex-{v}/{GLOBAL}/@openai/codex");
    // 0.1.x: a node program.
    expect(
        "codex-cli",
        &format!("{}/dist/cli.js", pkg("0.1")),
        "script",
    );
    // 0.20: bin/codex-<triple>.
    expect(
        "codex-cli",
        &format!("{}/bin/codex-x86_64-unknown-linux-musl", pkg("0.20")),
        "path",
    );
    // 0.99: the platform package (an alias: its package.json names @openai/codex).
    let platform = format!("{}/node_modules/@openai/codex-linux-x64", pkg("0.99"));
    expect_package(
        "codex-cli",
        &platform,
        "npm:@openai/codex",
        "0.99.0-linux-x64",
    );
    let v = expect(
        "codex-cli",
        &format!("{platform}/vendor/x86_64-unknown-linux-musl/codex/codex"),
        "path",
    );
    assert_eq!(
        v["pattern"], "**/node_modules/@openai/codex-*/vendor/*/codex/codex",
        "{v:#}"
    );
    for v in ["0.1", "0.20", "0.99"] {
        expect("codex-cli", &format!("{}/bin/codex.js", pkg(v)), "script");
    }
}

#[test]
fn issue_14_node_entry_points_and_platform_packages_of_continue_crush_and_copilot_are_found() {
    let cn = format!("continue/{GLOBAL}/@continuedev/cli");
    expect_package("continue-cli", &cn, "npm:@continuedev/cli", "1.5.47");
    expect("continue-cli", &format!("{cn}/dist/cn.js"), "script");

    let crush = format!("crush/{GLOBAL}/@charmland/crush");
    expect_package("crush", &crush, "npm:@charmland/crush", "0.96.1");
    expect("crush", &format!("{crush}/run-crush.js"), "script");

    let copilot = format!("copilot/{GLOBAL}/@github/copilot");
    expect_package("copilot-cli", &copilot, "npm:@github/copilot", "1.0.102");
    expect("copilot-cli", &format!("{copilot}/npm-loader.js"), "script");
    let platform = format!("{copilot}/node_modules/@github/copilot-linux-x64");
    expect_package(
        "copilot-cli",
        &platform,
        "npm:@github/copilot-linux-x64",
        "1.0.102",
    );
    expect("copilot-cli", &format!("{platform}/copilot"), "path");
}

#[test]
fn issue_14_aider_and_its_installer_are_found_in_a_virtualenv() {
    expect("aider", "aider-venv/bin/aider", "script");
    let site = find_dir(&fixture().join("aider-venv/lib"), "site-packages");
    let rel = site.strip_prefix(fixture()).unwrap();
    expect_package(
        "aider",
        &rel.join("aider_chat-0.86.2.dist-info").to_string_lossy(),
        "pypi:aider-chat",
        "0.86.2",
    );
    expect_package(
        "aider",
        &rel.join("aider_install-0.2.0.dist-info").to_string_lossy(),
        "pypi:aider-install",
        "0.2.0",
    );
}

/// The one folder named `name` under `dir`.
fn find_dir(dir: &Path, name: &str) -> PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                if e.file_name() == name {
                    return e.path();
                }
                stack.push(e.path());
            }
        }
    }
    panic!("no {name} under {}", dir.display())
}

#[test]
fn issue_14_an_ordinary_projects_node_modules_yields_nothing_but_the_agents_in_it() {
    // The false-positive corpus of the family rule test: express, typescript, webpack, eslint,
    // the Anthropic API SDK, Bun and hundreds of dependencies, next to Cline (an agent) and the
    // Agent SDK (reported by its package). The pack's new globs (`opencode-*`, `codex-*`,
    // `@kilocode/cli-*`, hidden cached binaries...) must find nothing else.
    let corpus = crate::family_rules::fp_corpus();
    let nm = std::fs::canonicalize(&corpus).unwrap().join("node_modules");
    let r = scan_json(&shipped_pack(), &[&corpus]);
    r.expect_code(1);
    let j = r.json();
    let agents = [
        "cline",
        "@cline/cli-linux-x64",
        "@anthropic-ai/claude-agent-sdk",
    ];
    let mut rules = Vec::new();
    for v in violations(&j) {
        let p = v["path"].as_str().unwrap();
        assert!(
            agents.iter().any(|a| p == nm.join(a).to_str().unwrap()
                || p.starts_with(&format!("{}/", nm.join(a).display()))),
            "a violation outside the agents' packages: {v:#}"
        );
        rules.push(v["rule_id"].as_str().unwrap().to_string());
    }
    rules.sort();
    rules.dedup();
    assert_eq!(rules, ["claude-agent-sdk", "cline-cli"], "{j:#}");
    assert!(
        j["scanned_files"].as_u64().unwrap() > 50_000,
        "the corpus was walked: {}",
        j["scanned_files"]
    );
}

#[test]
fn issue_14_no_other_agent_is_taken_for_claude_code() {
    // The shipped pack's family rule read every executable of the fixture (the native binaries
    // of Amp, Cline, Kilo, Copilot and Codex among them): none is Claude Code, and nothing in
    // the fixture is blocked.
    let j = report();
    for v in violations(j) {
        assert_ne!(v["rule_id"], "claude-code", "a false positive: {v:#}");
        assert_eq!(v["action"], "report", "{v:#}");
    }
    let natives = [
        "amp/lib/node_modules/@sourcegraph/amp/node_modules/@ampcode/cli-linux-x64/amp",
        "cline/lib/node_modules/cline/node_modules/@cline/cli-linux-x64/bin/cline",
        "kilo/lib/node_modules/@kilocode/cli/node_modules/@kilocode/cli-linux-x64/bin/kilo",
        "copilot/lib/node_modules/@github/copilot/node_modules/@github/copilot-linux-x64/copilot",
    ];
    let size: u64 = natives
        .iter()
        .map(|n| std::fs::metadata(fixture().join(n)).unwrap().len())
        .sum();
    assert!(
        j["hashed_bytes"].as_u64().unwrap() >= size,
        "read {} bytes, the native binaries alone are {size}",
        j["hashed_bytes"]
    );
}
