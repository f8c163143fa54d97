//! An AI agent's footprint beyond its binary: its configuration files and the MCP servers they
//! declare (the programs and endpoints that run tools for it).
//!
//! [`read_config`] reads one file (bounded, never followed through a final symlink, never a FIFO)
//! and lists the MCP servers it declares, in every layout the agents write themselves:
//!
//! | file | where the servers are |
//! |---|---|
//! | Claude Code `~/.claude.json` | `mcpServers` (user scope) and `projects.<dir>.mcpServers` (local scope) |
//! | Claude Code `.mcp.json` (project), `managed-mcp.json` | `mcpServers` |
//! | Cursor `~/.cursor/mcp.json`, `.cursor/mcp.json`; Windsurf `mcp_config.json`; Claude Desktop; Cline; Copilot CLI; Amazon Q | `mcpServers` |
//! | Gemini CLI `~/.gemini/settings.json`, `.gemini/settings.json` | `mcpServers` |
//! | VS Code `.vscode/mcp.json` | `servers`; user `settings.json`: `mcp.servers` |
//! | OpenCode `opencode.json` | `mcp` (command as an array, `environment`) |
//! | Zed `settings.json` | `context_servers` |
//! | Codex CLI `~/.codex/config.toml` | `[mcp_servers.<name>]` |
//!
//! JSON with comments and trailing commas (VS Code's JSONC) is accepted. Secrets are never
//! copied out: arguments go through [`interdict_event::redact_argv`], environment variables and
//! headers keep their names only, URLs lose passwords and secret-looking query values and path
//! segments. Other files the policy names (`CLAUDE.md`, `AGENTS.md`, YAML) are reported as found,
//! without servers.

use std::io::Read;
use std::path::Path;

use interdict_event::{redact_argv, REDACTED};
use serde::Serialize;
use serde_json::Value;

use crate::inventory::hash::open_regular;

/// The largest configuration file parsed (`~/.claude.json` grows with history); larger ones are
/// reported without their servers.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;
/// At most this many servers are listed per file; the rest are counted in `servers_omitted`.
pub const MAX_SERVERS: usize = 256;
/// Arguments of one server kept (each already redacted); the rest are cut.
const MAX_ARGS: usize = 64;
/// Bytes kept of one text value (command, argument, URL).
const MAX_TEXT: usize = 1024;

/// One MCP server a configuration file declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct McpServer {
    /// Its name in the file.
    pub name: String,
    /// Where in the file it is declared when not at the top (e.g. `projects./src/app` in
    /// `~/.claude.json`, the local scope of one project).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `stdio`, `http`, `sse`, ... as the file says or as implied (a command means stdio).
    pub transport: String,
    /// The program started (stdio servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Its arguments, secrets redacted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables set for it: names only (`NAME=[REDACTED]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The endpoint (remote servers), password and secret-looking parts redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// HTTP headers sent: names only (`Name: [REDACTED]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// True when the file marks it disabled.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// What one configuration file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigFile {
    /// `json`, `toml`, `markdown` or `other` (as read).
    pub format: &'static str,
    /// The MCP servers declared.
    pub mcp_servers: Vec<McpServer>,
    /// Servers beyond [`MAX_SERVERS`], not listed.
    #[serde(skip_serializing_if = "is_zero")]
    pub servers_omitted: usize,
    /// Why the servers could not be listed (unparsable, too large), when they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Read one configuration file and list the MCP servers it declares. I/O errors (missing,
/// unreadable, not a regular file) are errors; a file that cannot be parsed is not: it is
/// returned with a `note`.
pub fn read_config(path: &Path) -> std::io::Result<ConfigFile> {
    let (f, meta) = open_regular(path, false)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let format = format_of(&name);
    if matches!(format, "markdown" | "other") {
        return Ok(ConfigFile {
            format,
            ..ConfigFile::default()
        });
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Ok(ConfigFile {
            format,
            note: Some(format!(
                "{} bytes, larger than {MAX_CONFIG_BYTES}: servers not listed",
                meta.len()
            )),
            ..ConfigFile::default()
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_CONFIG_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(parse_config(format, &text))
}

fn format_of(lower_name: &str) -> &'static str {
    if lower_name.ends_with(".json") || lower_name.contains(".json.backup") {
        "json"
    } else if lower_name.ends_with(".toml") {
        "toml"
    } else if lower_name.ends_with(".md") {
        "markdown"
    } else {
        "other"
    }
}

/// List the servers of a configuration text in `format` (`json` or `toml`).
pub fn parse_config(format: &'static str, text: &str) -> ConfigFile {
    let mut out = ConfigFile {
        format,
        ..ConfigFile::default()
    };
    let servers = match format {
        "json" => match serde_json::from_str::<Value>(&strip_jsonc(text)) {
            Ok(v) => Ok(json_servers(&v)),
            Err(e) => Err(format!("not valid JSON: {e}")),
        },
        "toml" => match text.parse::<toml::Table>() {
            Ok(t) => Ok(toml_servers(&t)),
            Err(e) => Err(format!(
                "not valid TOML: {}",
                e.message().trim().replace('\n', " ")
            )),
        },
        _ => Ok(Vec::new()),
    };
    match servers {
        Ok(mut s) => {
            if s.len() > MAX_SERVERS {
                out.servers_omitted = s.len() - MAX_SERVERS;
                s.truncate(MAX_SERVERS);
            }
            out.mcp_servers = s;
        }
        Err(e) => out.note = Some(e),
    }
    out
}

/// Every server map in a JSON configuration, in the layouts listed in the module docs.
fn json_servers(root: &Value) -> Vec<McpServer> {
    let mut out = Vec::new();
    let Some(obj) = root.as_object() else {
        return out;
    };
    for key in ["mcpServers", "servers", "context_servers"] {
        if let Some(m) = obj.get(key) {
            server_map(m, None, &mut out);
        }
    }
    if let Some(mcp) = obj.get("mcp") {
        // VS Code settings: "mcp": {"servers": {...}}; OpenCode: "mcp": {name: server}.
        match mcp.get("servers") {
            Some(m) => server_map(m, None, &mut out),
            None => server_map(mcp, None, &mut out),
        }
    }
    // ~/.claude.json: servers of the local scope, per project folder.
    if let Some(projects) = obj.get("projects").and_then(Value::as_object) {
        for (dir, p) in projects {
            if let Some(m) = p.get("mcpServers") {
                server_map(m, Some(format!("projects.{dir}")), &mut out);
            }
        }
    }
    out
}

fn server_map(m: &Value, scope: Option<String>, out: &mut Vec<McpServer>) {
    let Some(map) = m.as_object() else {
        return;
    };
    for (name, s) in map {
        let Some(s) = s.as_object() else { continue };
        let text = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_string);
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|x| match x {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let names = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_object)
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        // OpenCode writes the whole command line as an array.
        let (command, mut args) = match s.get("command") {
            Some(Value::Array(_)) => {
                let mut all = strings(s.get("command"));
                let rest = all.split_off(1.min(all.len()));
                (all.pop(), rest)
            }
            _ => (text("command"), Vec::new()),
        };
        args.extend(strings(s.get("args")));
        let url = text("url")
            .or_else(|| text("serverUrl"))
            .or_else(|| text("httpUrl"));
        let mut env = names(s.get("env"));
        env.extend(names(s.get("environment")));
        let mut headers = names(s.get("headers"));
        headers.extend(names(s.get("http_headers")));
        let transport = text("type")
            .or_else(|| text("transport"))
            .unwrap_or_else(|| {
                if command.is_some() {
                    "stdio".into()
                } else if s.contains_key("httpUrl") {
                    "http".into()
                } else {
                    "remote".into()
                }
            });
        let disabled = s.get("disabled").and_then(Value::as_bool) == Some(true)
            || s.get("enabled").and_then(Value::as_bool) == Some(false);
        out.push(server(
            name,
            scope.clone(),
            transport,
            command,
            args,
            env,
            url,
            headers,
            disabled,
        ));
    }
}

/// `[mcp_servers.<name>]` tables of Codex's `config.toml`.
fn toml_servers(root: &toml::Table) -> Vec<McpServer> {
    let mut out = Vec::new();
    let Some(map) = root.get("mcp_servers").and_then(toml::Value::as_table) else {
        return out;
    };
    for (name, s) in map {
        let Some(s) = s.as_table() else { continue };
        let text = |k: &str| s.get(k).and_then(toml::Value::as_str).map(str::to_string);
        let names = |k: &str| -> Vec<String> {
            s.get(k)
                .and_then(toml::Value::as_table)
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default()
        };
        let args = s
            .get("args")
            .and_then(toml::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let command = text("command");
        let url = text("url");
        let mut headers = names("http_headers");
        headers.extend(names("env_http_headers"));
        if let Some(var) = text("bearer_token_env_var") {
            headers.push(format!("Authorization (from ${var})"));
        }
        let transport = if command.is_some() { "stdio" } else { "http" }.to_string();
        let disabled = s.get("enabled").and_then(toml::Value::as_bool) == Some(false);
        out.push(server(
            name,
            None,
            transport,
            command,
            args,
            names("env"),
            url,
            headers,
            disabled,
        ));
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn server(
    name: &str,
    scope: Option<String>,
    transport: String,
    command: Option<String>,
    args: Vec<String>,
    env: Vec<String>,
    url: Option<String>,
    headers: Vec<String>,
    disabled: bool,
) -> McpServer {
    // Redact the command line as a whole, so that `--token X` is seen across the command and
    // its first argument.
    let mut argv: Vec<String> = command.iter().cloned().chain(args).collect();
    let cut = argv.len() > MAX_ARGS + 1;
    argv.truncate(MAX_ARGS + 1);
    let mut argv: Vec<String> = redact_argv(&argv).into_iter().map(bound).collect();
    if cut {
        argv.push(interdict_event::TRUNCATED.to_string());
    }
    let command = command.map(|_| argv.remove(0));
    McpServer {
        name: bound(name.to_string()),
        scope: scope.map(bound),
        transport: bound(transport),
        command,
        args: argv,
        env: env
            .into_iter()
            .take(MAX_ARGS)
            .map(|k| format!("{}={REDACTED}", bound(k)))
            .collect(),
        url: url.map(|u| bound(redact_url(&u))),
        headers: headers
            .into_iter()
            .take(MAX_ARGS)
            .map(|h| {
                if h.contains('(') {
                    bound(h)
                } else {
                    format!("{}: {REDACTED}", bound(h))
                }
            })
            .collect(),
        disabled,
    }
}

fn bound(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// A URL with its secrets redacted: the password of `user:password@`, query values whose name
/// says secret (`api_key=`, `token=`...) or that look like keys (`sk-...`), and path segments
/// that look like keys.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let one = |s: &str| redact_argv(&[s.to_string()]).remove(0);
    let path: Vec<String> = path.split('/').map(one).collect();
    let mut out = format!("{scheme}{authority}{}", path.join("/"));
    if let Some(q) = query {
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| {
                let r = one(pair);
                if r != pair {
                    return r;
                }
                match pair.split_once('=') {
                    Some((k, v)) if one(v) != v => format!("{k}={REDACTED}"),
                    _ => pair.to_string(),
                }
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(&one(f));
    }
    out
}

/// JSON with `//` and `/* */` comments and trailing commas (JSONC) as plain JSON. Strings are
/// left alone.
fn strip_jsonc(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            out.push(c);
            if c == b'\\' && i + 1 < b.len() {
                out.push(b[i + 1]);
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        match (c, b.get(i + 1)) {
            (b'"', _) => {
                in_str = true;
                out.push(c);
                i += 1;
            }
            (b'/', Some(b'/')) => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            (b',', _) => {
                let next = b[i + 1..].iter().find(|x| !x.is_ascii_whitespace());
                if !matches!(next, Some(b'}') | Some(b']')) {
                    out.push(c);
                }
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_passwords_and_secret_values() {
        assert_eq!(
            redact_url("https://user:pass@mcp.example.com/mcp?api_key=SECRET123&mode=fast"),
            "https://user:[REDACTED]@mcp.example.com/mcp?api_key=[REDACTED]&mode=fast"
        );
        assert_eq!(
            redact_url("https://mcp.example.com/ghp_abcdefghijklmnopqrstuvwxyz0123/sse?k=sk-abcdefghijklmnopqrstu"),
            "https://mcp.example.com/[REDACTED]/sse?k=[REDACTED]"
        );
        assert_eq!(
            redact_url("http://localhost:3000/mcp"),
            "http://localhost:3000/mcp"
        );
    }

    #[test]
    fn jsonc_comments_and_trailing_commas() {
        let text = r#"{
            // servers
            "servers": { /* one */ "a": { "command": "x // not a comment", "args": ["1",], }, },
        }"#;
        let c = parse_config("json", text);
        assert_eq!(c.note, None);
        assert_eq!(c.mcp_servers.len(), 1);
        assert_eq!(
            c.mcp_servers[0].command.as_deref(),
            Some("x // not a comment")
        );
        assert_eq!(c.mcp_servers[0].args, ["1"]);
    }

    #[test]
    fn opencode_command_arrays_and_environment() {
        let text = r#"{"mcp": {"gh": {"type": "local", "command": ["npx", "-y", "gh-mcp", "--token", "abc"], "environment": {"GH_TOKEN": "x"}, "enabled": false}}}"#;
        let s = &parse_config("json", text).mcp_servers[0];
        assert_eq!(s.command.as_deref(), Some("npx"));
        assert_eq!(s.args, ["-y", "gh-mcp", "--token", REDACTED]);
        assert_eq!(s.env, ["GH_TOKEN=[REDACTED]"]);
        assert!(s.disabled);
    }

    #[test]
    fn unparsable_files_say_why() {
        let c = parse_config("json", "{not json");
        assert!(c.note.unwrap().starts_with("not valid JSON"));
        let c = parse_config("toml", "[mcp_servers.x\ncommand = 1");
        assert!(c.note.unwrap().starts_with("not valid TOML"));
    }

    #[test]
    fn many_servers_are_bounded() {
        let mut m = serde_json::Map::new();
        for i in 0..(MAX_SERVERS + 5) {
            m.insert(format!("s{i}"), serde_json::json!({"command": "x"}));
        }
        let text = serde_json::json!({ "mcpServers": m }).to_string();
        let c = parse_config("json", &text);
        assert_eq!(c.mcp_servers.len(), MAX_SERVERS);
        assert_eq!(c.servers_omitted, 5);
    }
}
