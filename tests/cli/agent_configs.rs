//! Issue 14: an AI agent's footprint beyond its binary. The real Claude Code, Codex CLI and
//! Gemini CLI write their configuration (with MCP servers holding secrets) into a fixture home;
//! `interdict scan` reports each file as a `config` finding with the servers listed and every
//! secret redacted.

use std::path::Path;
use std::process::Command;

use crate::support::fixtures::in_home;
use crate::support::*;

/// Secrets put into the configurations; none may appear in a report.
const SECRETS: &[&str] = &[
    "ghp_abcdefghijklmnopqrstuvwxyz012345",
    "sk-live-secret-value-1234567890",
    "hunter2",
    "SECRET123",
    "pass@",
    "abcdef123456",
    "tok_secret_1234567890abcdef",
    "KEY123",
    "ghp_zyxwvutsrqponmlkjihgfedcba543210",
    "x-api-key-value-789",
];

fn agent(cmd: impl AsRef<std::ffi::OsStr>, home: &Path, cwd: &Path, args: &[&str]) {
    let mut c = Command::new(cmd);
    in_home(&mut c, home);
    c.current_dir(cwd).args(args);
    crate::support::fixtures::sh(&mut c);
}

/// A home where the three agents were set up with MCP servers, by themselves.
fn set_up(home: &Path) -> std::path::PathBuf {
    let nm = crate::npm_packages::prefix().join("node_modules");
    let claude = nm.join("@anthropic-ai/claude-code-linux-x64/claude");
    let codex = nm.join("@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex");
    let gemini = nm.join("@google/gemini-cli/bundle/gemini.js");
    let proj = home.join("src/app");
    std::fs::create_dir_all(&proj).unwrap();
    // Claude Code: user scope (~/.claude.json), local scope (~/.claude.json, per project) and
    // project scope (.mcp.json).
    agent(
        &claude,
        home,
        &proj,
        &[
            "mcp",
            "add",
            "-s",
            "user",
            "github",
            "-e",
            "GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz012345",
            "--",
            "npx",
            "-y",
            "@modelcontextprotocol/server-github",
            "--token",
            "sk-live-secret-value-1234567890",
        ],
    );
    agent(
        &claude,
        home,
        &proj,
        &[
            "mcp",
            "add",
            "-s",
            "local",
            "db",
            "--",
            "python3",
            "-m",
            "db_server",
            "--password",
            "hunter2",
        ],
    );
    agent(
        &claude,
        home,
        &proj,
        &[
            "mcp",
            "add",
            "-s",
            "project",
            "--transport",
            "http",
            "remote",
            "https://user:pass@mcp.example.com/mcp?api_key=SECRET123",
            "--header",
            "Authorization: Bearer abcdef123456",
        ],
    );
    // Codex CLI: ~/.codex/config.toml
    agent(
        &codex,
        home,
        &proj,
        &[
            "mcp",
            "add",
            "docs",
            "--env",
            "API_TOKEN=tok_secret_1234567890abcdef",
            "--",
            "npx",
            "-y",
            "docs-server",
            "--api-key",
            "KEY123",
        ],
    );
    // Gemini CLI: ~/.gemini/settings.json and the project's .gemini/settings.json
    agent(
        "node",
        home,
        &proj,
        &[
            gemini.to_str().unwrap(),
            "mcp",
            "add",
            "-s",
            "user",
            "gh",
            "-e",
            "GH_TOKEN=ghp_zyxwvutsrqponmlkjihgfedcba543210",
            "npx",
            "--",
            "-y",
            "server-gh",
        ],
    );
    agent(
        "node",
        home,
        &proj,
        &[
            gemini.to_str().unwrap(),
            "mcp",
            "add",
            "-s",
            "project",
            "-t",
            "http",
            "web",
            "https://mcp.example.com/mcp",
            "-H",
            "X-Api-Key: x-api-key-value-789",
        ],
    );
    proj
}

fn config_at(report: &serde_json::Value, path: &Path) -> serde_json::Value {
    let v = violation_at(report, path);
    assert_eq!(v["kind"], "config", "{v:#}");
    assert_eq!(v["selector"], "config", "{v:#}");
    assert_eq!(v["action"], "report", "{v:#}");
    assert_eq!(v["enforcement"]["state"], "report_only", "{v:#}");
    v
}

fn server<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["mcp_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no server {name} in {v:#}"))
}

#[test]
fn issue_14_agent_configuration_is_reported_with_its_mcp_servers_and_no_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let home = std::fs::canonicalize(tmp.path()).unwrap().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let proj = set_up(&home);
    let mut c = interdict();
    c.args(["scan", "--no-processes", "--format", "json", "--policy"])
        .arg(shipped_pack())
        .arg("--home")
        .arg(&home);
    let r = run(&mut c);
    r.expect_code(1);
    for s in SECRETS {
        assert!(
            !r.stdout.contains(s),
            "secret {s} in the report:\n{}",
            r.stdout
        );
    }
    let j = r.json();

    let claude = config_at(&j, &home.join(".claude.json"));
    assert_eq!(claude["rule_id"], "claude-code-config");
    assert_eq!(claude["pattern"], "~/.claude.json");
    let gh = server(&claude, "github");
    assert_eq!(gh["transport"], "stdio");
    assert_eq!(gh["command"], "npx");
    assert_github_redacted(gh);
    let db = server(&claude, "db");
    assert_eq!(db["scope"], format!("projects.{}", proj.display()));
    assert_eq!(
        db["args"],
        serde_json::json!(["-m", "db_server", "--password", "[REDACTED]"])
    );

    let mcp = config_at(&j, &proj.join(".mcp.json"));
    assert_eq!(mcp["rule_id"], "claude-code-config");
    let remote = server(&mcp, "remote");
    assert_eq!(remote["transport"], "http");
    assert_eq!(
        remote["url"],
        "https://user:[REDACTED]@mcp.example.com/mcp?api_key=[REDACTED]"
    );
    assert_eq!(
        remote["headers"],
        serde_json::json!(["Authorization: [REDACTED]"])
    );

    let codex = config_at(&j, &home.join(".codex/config.toml"));
    assert_eq!(codex["rule_id"], "codex-config");
    let docs = server(&codex, "docs");
    assert_eq!(
        docs["args"],
        serde_json::json!(["-y", "docs-server", "--api-key", "[REDACTED]"])
    );
    assert_eq!(docs["env"], serde_json::json!(["API_TOKEN=[REDACTED]"]));

    let gemini = config_at(&j, &home.join(".gemini/settings.json"));
    assert_eq!(gemini["rule_id"], "gemini-config");
    assert_eq!(
        server(&gemini, "gh")["env"],
        serde_json::json!(["GH_TOKEN=[REDACTED]"])
    );
    let web = config_at(&j, &proj.join(".gemini/settings.json"));
    assert_eq!(
        server(&web, "web")["headers"],
        serde_json::json!(["X-Api-Key: [REDACTED]"])
    );

    // Every config finding is report-only; nothing else in this home is a violation.
    for v in violations(&j) {
        assert_eq!(v["kind"], "config", "{v:#}");
    }
    // The text report lists the servers too.
    let mut c = interdict();
    c.args(["scan", "--no-processes", "--policy"])
        .arg(shipped_pack())
        .arg("--home")
        .arg(&home);
    let t = run(&mut c);
    t.expect_code(1)
        .expect_stdout("[config] Claude Code configuration")
        .expect_stdout("mcp:      github (stdio): npx -y @modelcontextprotocol/server-github --token [REDACTED]");
    for s in SECRETS {
        assert!(!t.stdout.contains(s), "secret {s} in:\n{}", t.stdout);
    }
}

#[test]
fn issue_14_configuration_files_are_never_blocked_or_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = one_rule_policy(tmp.path(), "quarantine", r#"configs = ["**/.mcp.json"]"#);
    let r = run(interdict().args(["policy", "check"]).arg(&policy));
    r.expect_code(2);
    assert!(r.stderr.contains("error[config-action]"), "{}", r.stderr);
    // In a rule that also blocks the program, a configuration file is only reported, and
    // stays where it is.
    let home = tmp.path().join("home");
    write(
        &home.join("proj/.mcp.json"),
        br#"{"mcpServers": {"x": {"command": "x"}}}"#,
        0o644,
    );
    let policy = one_rule_policy(
        tmp.path(),
        "quarantine",
        r#"configs = ["**/.mcp.json"]
paths = ["**/bin/banned"]"#,
    );
    let mut c = interdict();
    c.args(["scan", "--no-processes", "--format", "json", "--policy"])
        .arg(&policy)
        .arg("--home")
        .arg(&home);
    let r = run(&mut c);
    r.expect_code(1);
    let v = violation_at(
        &r.json(),
        &std::fs::canonicalize(&home).unwrap().join("proj/.mcp.json"),
    );
    assert_eq!(v["action"], "report");
    assert!(home.join("proj/.mcp.json").exists());
}

/// The install watcher reports AI-agent configuration as `config_detected` events: once per
/// file while what it declares stays the same (rescans do not repeat it, nor does a rewrite
/// with the same servers), again when its MCP servers change; servers listed, secrets redacted;
/// the file left where it is.
/// An agent watching an empty install root and searching only `home` for the configuration files
/// `configs` names (rule `claude-code-config`), with `extra` lines for `[install]`.
fn config_agent(
    base: &Path,
    home: &Path,
    configs: &str,
    extra: &str,
) -> crate::support::agent::Agent {
    use crate::support::agent::{rule, Agent, POLICY_HEAD};
    std::fs::create_dir_all(base.join("installs")).unwrap();
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule(
            "claude-code-config",
            "report",
            &format!("configs = {configs}")
        )
    );
    Agent::start(
        &policy,
        &format!(
            "fanotify = false\nproc_connector = false\n\n[install]\nroots = [\"{}\"]\nconfig_homes = [\"{}\"]\n{extra}",
            base.join("installs").display(),
            home.display()
        ),
    )
}

/// The fixture's GitHub MCP server as reported: its token argument and environment redacted.
fn assert_github_redacted(gh: &serde_json::Value) {
    assert_eq!(
        gh["args"],
        serde_json::json!([
            "-y",
            "@modelcontextprotocol/server-github",
            "--token",
            "[REDACTED]"
        ]),
        "{gh:#}"
    );
    assert_eq!(
        gh["env"],
        serde_json::json!(["GITHUB_TOKEN=[REDACTED]"]),
        "{gh:#}"
    );
}

#[test]
fn issue_14_the_install_watcher_reports_agent_configuration_once_with_its_servers() {
    use crate::support::agent::Agent;
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let home = base.join("home");
    let claude_json = home.join(".claude.json");
    let mcp_json = home.join("src/app/.mcp.json");
    let claude_text = |startups: u32| {
        format!(
            r#"{{"numStartups": {startups}, "mcpServers": {{"github": {{"type": "stdio", "command": "npx", "args": ["-y", "@modelcontextprotocol/server-github", "--token", "sk-live-secret-value-1234567890"], "env": {{"GITHUB_TOKEN": "ghp_abcdefghijklmnopqrstuvwxyz012345"}}}}}}}}"#
        )
    };
    write(&claude_json, claude_text(1).as_bytes(), 0o600);
    write(
        &mcp_json,
        br#"{"mcpServers": {"remote": {"type": "http", "url": "https://user:hunter2@mcp.example.com/mcp?api_key=SECRET123"}}}"#,
        0o644,
    );
    let mut agent = config_agent(
        &base,
        &home,
        r#"["~/.claude.json", "**/.mcp.json"]"#,
        "rescan_interval_s = 1",
    );
    let of = |events: &[serde_json::Value], p: &Path| -> Vec<serde_json::Value> {
        events
            .iter()
            .filter(|e| e["kind"] == "config_detected" && e["file"]["path"] == *p.to_string_lossy())
            .cloned()
            .collect()
    };
    let wait_rescans = |agent: &Agent, n: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = agent.status()["counters"].clone();
            if c["install_rescans"].as_u64().unwrap() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {n} rescans: {c:#}; agent: {}",
                agent.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let e = agent.wait_event("config_detected for ~/.claude.json", |e| {
        e["kind"] == "config_detected" && e["file"]["path"] == *claude_json.to_string_lossy()
    });
    assert_eq!(e["rule"]["id"], "claude-code-config", "{e:#}");
    assert_eq!(e["rule"]["selector"], "config", "{e:#}");
    assert_eq!(e["outcome"], "reported", "{e:#}");
    let declared: serde_json::Value =
        serde_json::from_str(e["message"].as_str().expect("message")).unwrap();
    let gh = &declared["mcp_servers"][0];
    assert_eq!(gh["name"], "github", "{declared:#}");
    assert_eq!(gh["command"], "npx", "{declared:#}");
    assert_github_redacted(gh);
    let e = agent.wait_event("config_detected for .mcp.json", |e| {
        e["kind"] == "config_detected" && e["file"]["path"] == *mcp_json.to_string_lossy()
    });
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("https://user:[REDACTED]@mcp.example.com/mcp?api_key=[REDACTED]"),
        "{e:#}"
    );
    // Rewritten with the same servers (as Claude Code does at every start): not news.
    write(&claude_json, claude_text(2).as_bytes(), 0o600);
    let before = agent.status()["counters"]["install_rescans"]
        .as_u64()
        .unwrap();
    wait_rescans(&agent, before + 2);
    let events = agent.events();
    assert_eq!(of(&events, &claude_json).len(), 1, "{events:#?}");
    assert_eq!(of(&events, &mcp_json).len(), 1, "{events:#?}");
    // A server added: reported again, with it.
    write(
        &mcp_json,
        br#"{"mcpServers": {"remote": {"type": "http", "url": "https://mcp.example.com/mcp"}, "local": {"command": "python3", "args": ["-m", "srv"]}}}"#,
        0o644,
    );
    agent.wait_event("config_detected for the changed .mcp.json", |e| {
        e["kind"] == "config_detected"
            && e["file"]["path"] == *mcp_json.to_string_lossy()
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("\"local\""))
    });
    // A restart reports nothing again that is unchanged...
    let before = agent.status()["counters"]["install_rescans"]
        .as_u64()
        .unwrap();
    wait_rescans(&agent, before + 1);
    agent.restart();
    wait_rescans(&agent, 3);
    let events = agent.events();
    assert_eq!(of(&events, &claude_json).len(), 1, "{events:#?}");
    assert_eq!(of(&events, &mcp_json).len(), 2, "{events:#?}");
    // ... but what changed while the agent was stopped.
    agent.stop();
    write(
        &claude_json,
        br#"{"numStartups": 9, "mcpServers": {"fs": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/"]}}}"#,
        0o600,
    );
    agent.restart();
    agent.wait_event(
        "config_detected for ~/.claude.json changed while stopped",
        |e| {
            e["kind"] == "config_detected"
                && e["file"]["path"] == *claude_json.to_string_lossy()
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("server-filesystem"))
        },
    );
    let text = std::fs::read_to_string(agent.dir.path().join("events.jsonl")).unwrap();
    for s in SECRETS {
        assert!(!text.contains(s), "secret {s} in the event log:\n{text}");
    }
    assert!(claude_json.exists() && mcp_json.exists());
}

/// The processes a banned AI agent started (its MCP servers: stdio children that keep running
/// tools for it) are killed with it, and each is reported. Here the "agent" is a uniquely
/// hashed copy of `sh` already running when the agent starts, with two children that are not
/// banned themselves; the start-up sweep kills the agent, then its children.
#[test]
fn issue_14_the_processes_a_killed_banned_agent_started_are_killed_with_it() {
    use crate::support::agent::{hash_policy, unique_copy, Agent};
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    let sh = dir.join("bin/assistant");
    let digest = unique_copy("/bin/sh", &sh);
    let children_of = |pid: u32| -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                        == Some(pid)
                })
            })
            .collect()
    };
    let dead = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    let mut parent = Command::new(&sh)
        .args(["-c", "sleep 60 & sleep 61 & wait"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let kids = loop {
        let k = children_of(parent.id());
        if k.len() == 2 {
            break k;
        }
        assert!(
            Instant::now() < deadline,
            "the children did not start: {k:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let agent = Agent::start(
        &hash_policy("assistant", "kill", &digest),
        "fanotify = false",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = parent.try_wait().unwrap() {
            assert_eq!(st.signal(), Some(9), "{st}");
            break;
        }
        if Instant::now() > deadline {
            let _ = parent.kill();
            panic!("the banned program still runs; agent: {}", agent.stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for &k in &kids {
        let e = agent.wait_event(&format!("process_killed for child {k}"), |e| {
            e["kind"] == "process_killed" && e["process"]["pid"] == k
        });
        assert_eq!(e["rule"]["id"], "assistant", "{e:#}");
        assert!(
            e["message"].as_str().is_some_and(
                |m| m.contains(&format!("started by the banned process {}", parent.id()))
            ),
            "{e:#}"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dead(k) {
            assert!(Instant::now() < deadline, "child {k} still runs");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Between rescans (here an hour apart), a configuration file changed in a home or in the folder
/// of a file already found is reported after the debounce; one in a folder never seen before
/// waits for the next rescan.
#[test]
fn issue_14_configuration_changed_between_rescans_is_reported_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let home = base.join("home");
    let claude_json = home.join(".claude.json");
    let settings = home.join(".claude/settings.json");
    write(
        &claude_json,
        br#"{"mcpServers": {"github": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"]}}}"#,
        0o600,
    );
    write(&settings, br#"{"permissions": {}}"#, 0o600);
    let agent = config_agent(
        &base,
        &home,
        r#"["~/.claude.json", "~/.claude/settings.json", "**/.mcp.json"]"#,
        "rescan_interval_s = 3600\ndebounce_ms = 200",
    );
    let detected = |p: &Path, needle: &'static str| {
        let p = p.to_string_lossy().into_owned();
        move |e: &serde_json::Value| {
            e["kind"] == "config_detected"
                && e["file"]["path"] == p.as_str()
                && e["message"].as_str().is_some_and(|m| m.contains(needle))
        }
    };
    agent.wait_event(
        "~/.claude.json at start-up",
        detected(&claude_json, "server-github"),
    );
    agent.wait_event(
        "~/.claude/settings.json at start-up",
        detected(&settings, ""),
    );
    // A server added to each.
    write(
        &claude_json,
        br#"{"mcpServers": {"fs": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/"]}}}"#,
        0o600,
    );
    write(
        &settings,
        br#"{"mcpServers": {"db": {"command": "uvx", "args": ["mcp-server-sqlite"]}}}"#,
        0o600,
    );
    agent.wait_event(
        "~/.claude.json changed",
        detected(&claude_json, "server-filesystem"),
    );
    agent.wait_event(
        "~/.claude/settings.json changed",
        detected(&settings, "mcp-server-sqlite"),
    );
    // A new file in the home.
    let home_mcp = home.join(".mcp.json");
    write(
        &home_mcp,
        br#"{"mcpServers": {"web": {"url": "https://mcp.example.com/"}}}"#,
        0o644,
    );
    agent.wait_event("a new ~/.mcp.json", detected(&home_mcp, "mcp.example.com"));
    // A project folder never seen before: not watched, found by the next rescan.
    let project = home.join("src/new-project/.mcp.json");
    write(
        &project,
        br#"{"mcpServers": {"p": {"command": "node", "args": ["srv.js"]}}}"#,
        0o644,
    );
    let s = agent.status();
    assert_eq!(
        s["counters"]["install_rescans"], 1,
        "no rescan came between: {s:#}"
    );
    agent.settle_installs();
    agent.wait_event(
        "the project's .mcp.json after a rescan",
        detected(&project, "srv.js"),
    );
}
