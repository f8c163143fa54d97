//! Issue 14: the other channels that carry Claude Code, each with the layout the real tool makes,
//! found by `interdict scan --home` with the shipped pack and the default per-home roots.
//!
//! One fixture home is built once into the shared cache by the real clients: `npx`
//! (`npm exec`), `bunx` (Bun from npm), `pnpm dlx` (pnpm from npm), `uvx` (uv from PyPI),
//! `pip install --user` of the Python Agent SDK (which bundles the binary), and `npm install -g`
//! into the prefixes nvm, fnm, volta, asdf and mise give Node (their own downloads of Node come
//! from nodejs.org, which tests cannot reach; the prefixes are the ones their sources use).
//! Editor extension folders (Cursor, Windsurf, VSCodium, code-server, VS Code Server) and
//! Homebrew's Caskroom come from marketplaces and GitHub, which tests cannot reach either: those
//! are laid out as the tools document, with the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::fixtures::*;
use crate::support::*;

/// The Claude Code release the channels install: the last cli.js release without platform
/// packages, small enough to fetch through several clients.
const CLI_JS_RELEASE: &str = "@anthropic-ai/claude-code@2.0.0";
/// The Python Agent SDK release (bundles a native Claude Code of June 2026).
pub const PYPI_SDK: &str = "claude-agent-sdk==0.2.106";

/// Node version-manager prefixes, as their sources lay them out under a home.
const NODE_PREFIXES: &[(&str, &str)] = &[
    ("nvm", ".nvm/versions/node/v22.12.0"),
    (
        "fnm",
        ".local/share/fnm/node-versions/v22.12.0/installation",
    ),
    (
        "volta",
        ".volta/tools/image/packages/@anthropic-ai/claude-code",
    ),
    ("asdf", ".asdf/installs/nodejs/22.12.0"),
    ("mise", ".local/share/mise/installs/node/22.12.0"),
];

/// Editor extension folders in a home.
const EDITOR_DIRS: &[(&str, &str)] = &[
    ("Cursor", ".cursor/extensions"),
    ("Windsurf", ".windsurf/extensions"),
    ("VSCodium", ".vscode-oss/extensions"),
    ("code-server", ".local/share/code-server/extensions"),
    ("VS Code Server", ".vscode-server/extensions"),
];

fn tool(cmd: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut c = Command::new(cmd);
    in_home(&mut c, home);
    c
}

/// The fixture home (read-only for tests).
pub fn home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let native = crate::npm_packages::prefix()
            .join("node_modules/@anthropic-ai/claude-code-linux-x64/claude");
        let bun = npm_package("@oven/bun-linux-x64@1.4.5").join("package/bin/bun");
        let pnpm = npm_package("pnpm@9.15.9").join("package/bin/pnpm.cjs");
        let uv_wheels = pypi_wheels("uv==0.13.9");
        let sdk_wheels = pypi_wheels(PYPI_SDK);
        cached("home-channels-1", |h| {
            // npx
            sh(tool("npm", h).args([
                "exec",
                "--yes",
                &format!("--package={CLI_JS_RELEASE}"),
                "--",
                "claude",
                "--version",
            ]));
            // bunx
            sh(tool(&bun, h).env("BUN_INSTALL", h.join(".bun")).args([
                "x",
                CLI_JS_RELEASE,
                "--version",
            ]));
            // pnpm dlx
            sh(tool("node", h)
                .arg(&pnpm)
                .args(["dlx", CLI_JS_RELEASE, "--version"]));
            // uvx: uv from its wheel, then a throwaway environment with the SDK.
            let uv_dir = h.join(".uv-bin");
            let wheel = find_file(&uv_wheels, |p| p.extension() == Some("whl".as_ref()));
            sh(Command::new("python3")
                .args(["-m", "zipfile", "-e"])
                .arg(&wheel)
                .arg(&uv_dir));
            let uv = find_file(&uv_dir, |p| p.file_name() == Some("uv".as_ref()));
            sh(Command::new("chmod").arg("755").arg(&uv));
            sh(tool(&uv, h).args([
                "tool",
                "run",
                "--from",
                PYPI_SDK,
                "python",
                "-c",
                "import claude_agent_sdk",
            ]));
            std::fs::remove_dir_all(&uv_dir).unwrap();
            // pip install --user, from the wheel fetched above.
            sh(tool("python3", h)
                .env("PYTHONUSERBASE", h.join(".local"))
                .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--user",
                    "--no-deps",
                    "--no-index",
                    "--disable-pip-version-check",
                    "--find-links",
                ])
                .arg(&sdk_wheels)
                .arg(PYPI_SDK));
            // npm -g into the version managers' prefixes (the tarball is in the npm cache now).
            for (_, prefix) in NODE_PREFIXES {
                sh(tool("npm", h)
                    .args([
                        "install",
                        "-g",
                        "--prefer-offline",
                        "--ignore-scripts",
                        "--loglevel=error",
                        "--prefix",
                    ])
                    .arg(h.join(prefix))
                    .arg(CLI_JS_RELEASE));
            }
            // Editor extensions bundle the native binary.
            for (_, dir) in EDITOR_DIRS {
                place(
                    &native,
                    &h.join(dir).join(
                        "anthropic.claude-code-2.1.332-linux-x64/resources/native-binary/claude",
                    ),
                );
            }
            // Homebrew cask in a home (Linuxbrew), with its bin symlink.
            let cask = h.join(".linuxbrew/Caskroom/claude-code/2.1.332/claude");
            place(&native, &cask);
            std::fs::create_dir_all(h.join(".linuxbrew/bin")).unwrap();
            std::os::unix::fs::symlink(
                "../Caskroom/claude-code/2.1.332/claude",
                h.join(".linuxbrew/bin/claude"),
            )
            .unwrap();
        })
    })
}

/// A home where the real Yarn (classic) ran `yarn global add` of the cli.js release: packages in
/// `~/.local/share/yarn/global`, the bin link in `~/.yarn/bin` (`--prefix`: as root, Yarn would
/// otherwise link into node's own prefix, `/usr/local/bin`), a copy in Yarn's cache.
fn yarn_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let yarn = npm_package("yarn@1.22.22").join("package/bin/yarn.js");
        cached("home-channels-yarn-1", |h| {
            sh(tool("node", h)
                .arg(&yarn)
                .args(["global", "add", "--ignore-scripts", "--silent", "--prefix"])
                .arg(h.join(".yarn"))
                .arg(CLI_JS_RELEASE));
            assert!(
                h.join(".yarn/bin/claude").symlink_metadata().is_ok(),
                "yarn linked its bin elsewhere"
            );
        })
    })
}

#[test]
fn issue_14_yarn_global_and_its_cache_are_found() {
    let mut c = interdict();
    c.args(["scan", "--no-processes", "--format", "json", "--policy"])
        .arg(shipped_pack())
        .arg("--home")
        .arg(yarn_home());
    let r = run(&mut c);
    r.expect_code(1);
    let report = r.json();
    let home = std::fs::canonicalize(yarn_home()).unwrap();
    let under = |rel: &str| -> Vec<serde_json::Value> {
        let dir = home.join(rel);
        violations(&report)
            .into_iter()
            .filter(|v| {
                v["rule_id"] == "claude-code"
                    && v["path"]
                        .as_str()
                        .unwrap()
                        .starts_with(dir.to_str().unwrap())
            })
            .collect()
    };
    let global = under(".local/share/yarn/global");
    assert!(
        global
            .iter()
            .any(|v| ends(v, "node_modules/@anthropic-ai/claude-code/cli.js")),
        "{global:#?}"
    );
    assert!(
        global
            .iter()
            .any(|v| v["selector"] == "package" && v["package"] == "npm:@anthropic-ai/claude-code"),
        "{global:#?}"
    );
    // The cache's copy: no node_modules path rule reaches it, the family rule does.
    let cache = under(".cache/yarn");
    assert!(
        cache
            .iter()
            .any(|v| ends(v, "/cli.js") && v["selector"] == "contains"),
        "{cache:#?}\n{report:#}"
    );
}

/// The Claude Code binary the PyPI Agent SDK bundles, as `pip install --user` put it.
pub fn pypi_sdk_binary() -> PathBuf {
    find_file(&home().join(".local/lib"), |p| {
        p.ends_with("claude_agent_sdk/_bundled/claude")
    })
}

/// The scan of the fixture home with the shipped pack (run once).
fn report() -> &'static serde_json::Value {
    static R: OnceLock<serde_json::Value> = OnceLock::new();
    R.get_or_init(|| {
        let mut c = interdict();
        c.args(["scan", "--no-processes", "--format", "json", "--policy"])
            .arg(shipped_pack())
            .arg("--home")
            .arg(home());
        let r = run(&mut c);
        r.expect_code(1);
        r.json()
    })
}

/// The claude-code violations under `rel` in the fixture home.
fn claude_under(rel: &str) -> Vec<serde_json::Value> {
    let dir = std::fs::canonicalize(home()).unwrap().join(rel);
    violations(report())
        .into_iter()
        .filter(|v| {
            v["rule_id"] == "claude-code"
                && v["path"]
                    .as_str()
                    .unwrap()
                    .starts_with(dir.to_str().unwrap())
        })
        .collect()
}

fn expect(rel: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let found = claude_under(rel);
    found.iter().find(|v| pred(v)).cloned().unwrap_or_else(|| {
        panic!(
            "{what}: no matching claude-code violation under ~/{rel}:\n{found:#?}\nreport:\n{:#}",
            report()
        )
    })
}

fn ends(v: &serde_json::Value, suffix: &str) -> bool {
    v["path"].as_str().unwrap().ends_with(suffix)
}

#[test]
fn issue_14_npx_cache_is_found() {
    let v = expect(".npm/_npx", "npx", |v| {
        ends(v, "node_modules/@anthropic-ai/claude-code/cli.js")
    });
    assert_eq!(v["selector"], "contains", "{v:#}");
    let p = expect(".npm/_npx", "npx package", |v| v["selector"] == "package");
    assert_eq!(p["package"], "npm:@anthropic-ai/claude-code");
    assert_eq!(p["version"], "2.0.0");
}

#[test]
fn issue_14_bunx_cache_is_found_also_where_no_path_rule_reaches() {
    // bunx's own copy under node_modules, and Bun's package cache, which is not a node_modules
    // layout: only the family rule knows the file there.
    expect(".bun/install/cache/.bunx-0", "bunx", |v| {
        ends(v, "node_modules/@anthropic-ai/claude-code/cli.js")
    });
    let cache = expect(".bun/install/cache/@anthropic-ai", "bun cache", |v| {
        ends(v, "/cli.js") && v["path"].as_str().unwrap().contains("claude-code@2.0.0@@@")
    });
    assert_eq!(cache["selector"], "contains", "{cache:#}");
}

#[test]
fn issue_14_pnpm_dlx_and_its_content_addressed_store_are_found() {
    let v = expect(".cache/pnpm/dlx", "pnpm dlx", |v| {
        ends(v, "node_modules/@anthropic-ai/claude-code/cli.js")
    });
    assert_eq!(v["selector"], "contains", "{v:#}");
    // The store keeps the same file under its digest: no name or path to go by.
    let s = expect(".local/share/pnpm/store", "pnpm store", |v| {
        ends(v, "-exec")
    });
    assert_eq!(s["selector"], "contains", "{s:#}");
}

#[test]
fn issue_14_the_python_agent_sdk_bundled_binary_is_found_from_pip_and_uvx() {
    let pip = expect(".local/lib", "pip --user", |v| {
        ends(v, "claude_agent_sdk/_bundled/claude")
    });
    assert!(
        matches!(pip["selector"].as_str(), Some("sha256" | "contains")),
        "{pip:#}"
    );
    assert_eq!(pip["action"], "block");
    let uvx = expect(".cache/uv", "uvx", |v| {
        ends(v, "claude_agent_sdk/_bundled/claude")
    });
    assert_eq!(uvx["sha256"], pip["sha256"]);
    // The SDK itself is reported by its package marker.
    let sdk = violations(report())
        .into_iter()
        .find(|v| v["rule_id"] == "claude-agent-sdk" && v["package"] == "pypi:claude-agent-sdk")
        .unwrap_or_else(|| panic!("no claude-agent-sdk package violation:\n{:#}", report()));
    assert_eq!(sdk["action"], "report");
}

#[test]
fn issue_14_node_version_manager_prefixes_are_found() {
    for (manager, prefix) in NODE_PREFIXES {
        let v = expect(prefix, manager, |v| {
            ends(v, "lib/node_modules/@anthropic-ai/claude-code/cli.js")
        });
        assert_eq!(v["action"], "block", "{manager}: {v:#}");
        let p = expect(prefix, manager, |v| v["selector"] == "package");
        assert_eq!(p["package"], "npm:@anthropic-ai/claude-code", "{manager}");
    }
}

#[test]
fn issue_14_editor_extension_folders_of_every_fork_are_found() {
    for (editor, dir) in EDITOR_DIRS {
        let v = expect(dir, editor, |v| ends(v, "resources/native-binary/claude"));
        assert_eq!(v["action"], "block", "{editor}: {v:#}");
        let pkg = expect(dir, editor, |v| v["selector"] == "package");
        assert_eq!(pkg["package"], "vscode:anthropic.claude-code", "{editor}");
    }
}

#[test]
fn issue_14_homebrew_cask_in_a_home_is_found() {
    // The `bin/claude` link resolves to the same file, reported once where it lies.
    let v = expect(".linuxbrew", "cask", |v| {
        ends(v, "Caskroom/claude-code/2.1.332/claude")
    });
    assert_eq!(v["selector"], "sha256", "{v:#}");
}
