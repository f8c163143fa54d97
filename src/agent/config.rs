//! The agent's configuration file: TOML, every key documented with its default, read like a
//! policy (unknown keys rejected, every problem reported at once as `FILE:LINE:COL`).

use std::path::{Path, PathBuf};

use interdict_policy::fields::{Fields, Value};
use interdict_policy::{Code, Diagnostics, SourceText};
use toml::de::DeValue;

/// What to answer when a decision misses its deadline or fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Allow the exec (and kill it afterwards if it turns out banned).
    Open,
    /// Deny the exec.
    Closed,
}

impl std::str::FromStr for FailMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "open" => Ok(FailMode::Open),
            "closed" => Ok(FailMode::Closed),
            _ => Err(()),
        }
    }
}

/// The whole configuration, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// `[agent] state_dir`: where the agent keeps its state.
    pub state_dir: PathBuf,
    /// `[agent] event_log`: the local JSONL event log.
    pub event_log: PathBuf,
    /// `[agent] control_socket`: the Unix socket for `status` and `reload`.
    pub control_socket: PathBuf,
    /// `[agent] admin_group`: a group whose members may use the control socket besides root.
    pub admin_group: Option<String>,
    /// `[agent] event_queue`: events buffered between the sensors and the event log; when full,
    /// new events are dropped and counted (`event_drops` in status).
    pub event_queue: usize,
    /// `[exec] fanotify`: the pre-exec guard.
    pub fanotify: bool,
    /// `[exec] mounts`: mounts to mark; empty = every local filesystem that can hold executables.
    pub mounts: Vec<PathBuf>,
    /// `[exec] deadline_ms`: every permission event is answered within this budget.
    pub deadline_ms: u64,
    /// `[exec] fail_mode`: the answer when the budget runs out or the decision fails.
    pub fail_mode: FailMode,
    /// `[exec] workers`: threads deciding cache misses (hashing).
    pub workers: usize,
    /// `[exec] queue`: permission events waiting for a worker; when full the event is answered
    /// at once per `fail_mode` and counted (`queue_drops`).
    pub queue: usize,
    /// `[exec] proc_connector`: the netlink exec sensor (kills what got through).
    pub proc_connector: bool,
    /// `[exec] script_guard`: deny opens of banned interpreter scripts (fanotify on those files).
    pub script_guard: bool,
    /// `[exec] script_roots`: where the script guard looks for banned scripts; empty = the
    /// scan's default install roots.
    pub script_roots: Vec<PathBuf>,
    /// `[exec] poll_interval_ms`: periodic process sweeps; 0 = only when neither kernel sensor
    /// runs (then every 2 s).
    pub poll_interval_ms: u64,
    /// `[notify] enabled`: tell employees at all (false = the global silent switch).
    pub notify: bool,
    /// `[notify] desktop`: desktop notifications on the user's session bus.
    pub notify_desktop: bool,
    /// `[notify] terminal`: one line on the process's terminal.
    pub notify_terminal: bool,
    /// `[notify] interval_s`: at most one notice per user and rule in this many seconds; the
    /// rest are counted (`notices_suppressed`).
    pub notify_interval_s: u64,
    /// `[notify] queue`: notices waiting for delivery; when full, new ones are dropped and
    /// counted (`notices_dropped`).
    pub notify_queue: usize,
    /// `[install] watch`: watch the install roots and report banned installs at once.
    pub install_watch: bool,
    /// `[install] roots`: install roots; empty = the scan's default roots.
    pub install_roots: Vec<PathBuf>,
    /// `[install] rescan_interval_s`: full rescans this often (and after overflows).
    pub rescan_interval_s: u64,
    /// `[install] debounce_ms`: wait this long after the last change in a package folder.
    pub install_debounce_ms: u64,
    /// `[notify] opener`: the program that opens the "More info" link, run as the user
    /// (default `xdg-open`).
    pub notify_opener: Option<PathBuf>,
    /// `[collector] url`: ship every event to this collector (`http://` or `https://`); none =
    /// the local event log only, no spool.
    pub collector_url: Option<String>,
    /// `[collector] enroll_secret`: the collector's enroll secret, used once to get a token.
    pub enroll_secret: Option<String>,
    /// `[collector] token_file`: where the host token is kept (default `STATE_DIR/collector.token`).
    pub token_file: Option<PathBuf>,
    /// `[collector] batch`: most events per request (default 500).
    pub ship_batch: usize,
    /// `[collector] spool_cap_mib`: the spool's byte cap (default 256 MiB); when full, new events
    /// are refused and counted (`spool_dropped`), and an `events_dropped` event says how many.
    pub spool_cap_mib: u64,
    /// `[collector] heartbeat_s`: a `heartbeat` event this often (default 60; 0 = none).
    pub heartbeat_s: u64,
    /// `[collector] ca_file`: PEM CA certificates to trust for an `https://` collector.
    pub collector_ca: Option<PathBuf>,
    /// `[collector] client_cert`: PEM client certificate, for collectors requiring one.
    pub client_cert: Option<PathBuf>,
    /// `[collector] client_key`: the PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// `[syslog] address`: send every event to this syslog receiver (`host:port`), RFC 5424
    /// with octet-counting framing.
    pub syslog_address: Option<String>,
    /// `[syslog] tls`: TLS (RFC 5425) instead of plain TCP.
    pub syslog_tls: bool,
    /// `[syslog] ca_file`: PEM CA certificates to trust for TLS (default: the public web roots).
    pub syslog_ca: Option<PathBuf>,
    /// `[syslog] facility`: the facility number (default 10, authpriv).
    pub syslog_facility: u8,
    /// `[syslog] max_message_bytes`: the longest message sent (default 8096, rsyslog's default;
    /// at least 2048, what RFC 5425 says every receiver takes). Longer events are cut, the
    /// command line first.
    pub syslog_max_message_bytes: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            state_dir: "/var/lib/interdict".into(),
            event_log: "/var/log/interdict/events.jsonl".into(),
            control_socket: "/run/interdict/control.sock".into(),
            admin_group: None,
            event_queue: 65_536,
            fanotify: true,
            mounts: Vec::new(),
            deadline_ms: 1000,
            fail_mode: FailMode::Open,
            workers: 4,
            queue: 4096,
            proc_connector: true,
            script_guard: true,
            script_roots: Vec::new(),
            poll_interval_ms: 0,
            notify: true,
            notify_desktop: true,
            notify_terminal: true,
            notify_interval_s: 300,
            notify_queue: 1024,
            notify_opener: None,
            install_watch: true,
            install_roots: Vec::new(),
            rescan_interval_s: 6 * 3600,
            install_debounce_ms: 500,
            collector_url: None,
            enroll_secret: None,
            token_file: None,
            ship_batch: 500,
            spool_cap_mib: 256,
            heartbeat_s: 60,
            collector_ca: None,
            client_cert: None,
            client_key: None,
            syslog_address: None,
            syslog_tls: false,
            syslog_ca: None,
            syslog_facility: 10,
            syslog_max_message_bytes: super::syslog::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

const AGENT_KEYS: &[&str] = &[
    "state_dir",
    "event_log",
    "control_socket",
    "admin_group",
    "event_queue",
];
const NOTIFY_KEYS: &[&str] = &[
    "enabled",
    "desktop",
    "terminal",
    "interval_s",
    "queue",
    "opener",
];
const COLLECTOR_KEYS: &[&str] = &[
    "url",
    "enroll_secret",
    "token_file",
    "batch",
    "spool_cap_mib",
    "heartbeat_s",
    "ca_file",
    "client_cert",
    "client_key",
];
const SYSLOG_KEYS: &[&str] = &["address", "tls", "ca_file", "facility", "max_message_bytes"];
const INSTALL_KEYS: &[&str] = &["watch", "roots", "rescan_interval_s", "debounce_ms"];
const EXEC_KEYS: &[&str] = &[
    "fanotify",
    "mounts",
    "deadline_ms",
    "fail_mode",
    "workers",
    "queue",
    "proc_connector",
    "script_guard",
    "script_roots",
    "poll_interval_ms",
];

fn absolute(f: &mut Fields<'_>, key: &str, v: &Value<'_>) -> Option<PathBuf> {
    let (s, span) = f.string(key, v)?;
    if !s.starts_with('/') {
        f.err(
            Code::BadValue,
            span,
            format!("`{key}` must be an absolute path"),
        );
        return None;
    }
    Some(PathBuf::from(s))
}

fn absolute_list(f: &mut Fields<'_>, key: &str, v: &Value<'_>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (s, span) in f.string_list(key, v) {
        if s.starts_with('/') {
            out.push(PathBuf::from(s));
        } else {
            f.err(
                Code::BadValue,
                span,
                format!("`{key}` entries must be absolute paths"),
            );
        }
    }
    out
}

/// Parse and validate configuration text. `name` is how diagnostics name the file.
pub fn parse(name: &str, text: &str) -> Result<AgentConfig, Diagnostics> {
    let src = SourceText::new(name, text);
    let mut f = Fields::new(&src);
    let mut c = AgentConfig::default();
    let Some(root) = f.parse_document(text) else {
        return Err(f.finish());
    };
    for (k, v) in root.iter() {
        let table = k.get_ref().as_ref();
        let known = match table {
            "agent" => AGENT_KEYS,
            "exec" => EXEC_KEYS,
            "notify" => NOTIFY_KEYS,
            "install" => INSTALL_KEYS,
            "collector" => COLLECTOR_KEYS,
            "syslog" => SYSLOG_KEYS,
            _ => {
                f.unknown_key(
                    "the top level",
                    k,
                    &["agent", "exec", "notify", "install", "collector", "syslog"],
                );
                continue;
            }
        };
        let DeValue::Table(t) = v.get_ref() else {
            f.wrong_type(table, "a table", v);
            continue;
        };
        for (k, v) in t.iter() {
            let key = k.get_ref().as_ref();
            match (table, key) {
                ("agent", "state_dir") => {
                    c.state_dir = absolute(&mut f, key, v).unwrap_or(c.state_dir)
                }
                ("agent", "event_log") => {
                    c.event_log = absolute(&mut f, key, v).unwrap_or(c.event_log)
                }
                ("agent", "control_socket") => {
                    c.control_socket = absolute(&mut f, key, v).unwrap_or(c.control_socket)
                }
                ("agent", "admin_group") => c.admin_group = f.string(key, v).map(|s| s.0),
                ("agent", "event_queue") => {
                    if let Some(n) = f.integer(key, v, 1 << 24) {
                        c.event_queue = (n as usize).max(1);
                    }
                }
                ("exec", "fanotify") => c.fanotify = f.boolean(key, v).unwrap_or(c.fanotify),
                ("exec", "mounts") => c.mounts = absolute_list(&mut f, key, v),
                ("exec", "deadline_ms") => {
                    if let Some(n) = f.integer(key, v, 60_000) {
                        if n < 10 {
                            f.err(
                                Code::BadValue,
                                v.span(),
                                "`deadline_ms` must be at least 10",
                            );
                        }
                        c.deadline_ms = n.max(10);
                    }
                }
                ("exec", "fail_mode") => {
                    if let Some(m) =
                        f.keyword::<FailMode>(key, v, Code::BadValue, &["open", "closed"])
                    {
                        c.fail_mode = m;
                    }
                }
                ("exec", "workers") => {
                    if let Some(n) = f.integer(key, v, 64) {
                        c.workers = (n as usize).max(1);
                    }
                }
                ("exec", "queue") => {
                    if let Some(n) = f.integer(key, v, 1 << 20) {
                        c.queue = (n as usize).max(1);
                    }
                }
                ("exec", "proc_connector") => {
                    c.proc_connector = f.boolean(key, v).unwrap_or(c.proc_connector)
                }
                ("exec", "script_guard") => {
                    c.script_guard = f.boolean(key, v).unwrap_or(c.script_guard)
                }
                ("exec", "script_roots") => c.script_roots = absolute_list(&mut f, key, v),
                ("exec", "poll_interval_ms") => {
                    if let Some(n) = f.integer(key, v, 86_400_000) {
                        c.poll_interval_ms = n;
                    }
                }
                ("notify", "enabled") => c.notify = f.boolean(key, v).unwrap_or(c.notify),
                ("notify", "desktop") => {
                    c.notify_desktop = f.boolean(key, v).unwrap_or(c.notify_desktop)
                }
                ("notify", "terminal") => {
                    c.notify_terminal = f.boolean(key, v).unwrap_or(c.notify_terminal)
                }
                ("notify", "interval_s") => {
                    if let Some(n) = f.integer(key, v, 86_400 * 7) {
                        c.notify_interval_s = n;
                    }
                }
                ("install", "watch") => {
                    c.install_watch = f.boolean(key, v).unwrap_or(c.install_watch)
                }
                ("install", "roots") => c.install_roots = absolute_list(&mut f, key, v),
                ("install", "rescan_interval_s") => {
                    if let Some(n) = f.integer(key, v, 86_400 * 30) {
                        c.rescan_interval_s = n.max(1);
                    }
                }
                ("install", "debounce_ms") => {
                    if let Some(n) = f.integer(key, v, 60_000) {
                        c.install_debounce_ms = n;
                    }
                }
                ("notify", "opener") => c.notify_opener = absolute(&mut f, key, v),
                ("notify", "queue") => {
                    if let Some(n) = f.integer(key, v, 1 << 20) {
                        c.notify_queue = (n as usize).max(1);
                    }
                }
                ("collector", "url") => {
                    if let Some((u, span)) = f.string(key, v) {
                        if u.starts_with("http://") || u.starts_with("https://") {
                            c.collector_url = Some(u);
                        } else {
                            f.err(
                                Code::BadValue,
                                span,
                                "`url` must start with http:// or https://",
                            );
                        }
                    }
                }
                ("collector", "enroll_secret") => c.enroll_secret = f.string(key, v).map(|s| s.0),
                ("collector", "token_file") => c.token_file = absolute(&mut f, key, v),
                ("collector", "batch") => {
                    if let Some(n) = f.integer(key, v, 5000) {
                        c.ship_batch = (n as usize).max(1);
                    }
                }
                ("collector", "spool_cap_mib") => {
                    if let Some(n) = f.integer(key, v, 1 << 20) {
                        c.spool_cap_mib = n.max(1);
                    }
                }
                ("syslog", "address") => {
                    if let Some((a, span)) = f.string(key, v) {
                        if a.rsplit_once(':')
                            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                        {
                            c.syslog_address = Some(a);
                        } else {
                            f.err(Code::BadValue, span, "`address` must be `host:port`");
                        }
                    }
                }
                ("syslog", "tls") => c.syslog_tls = f.boolean(key, v).unwrap_or(c.syslog_tls),
                ("syslog", "ca_file") => c.syslog_ca = absolute(&mut f, key, v),
                ("syslog", "facility") => {
                    if let Some(n) = f.integer(key, v, 23) {
                        c.syslog_facility = n as u8;
                    }
                }
                ("syslog", "max_message_bytes") => {
                    if let Some(n) = f.integer(key, v, 1 << 20) {
                        if n < 2048 {
                            f.err(
                                Code::BadValue,
                                v.span(),
                                "`max_message_bytes` must be at least 2048 (RFC 5425: what every receiver takes)",
                            );
                        }
                        c.syslog_max_message_bytes = (n as usize).max(2048);
                    }
                }
                ("collector", "ca_file") => c.collector_ca = absolute(&mut f, key, v),
                ("collector", "client_cert") => c.client_cert = absolute(&mut f, key, v),
                ("collector", "client_key") => c.client_key = absolute(&mut f, key, v),
                ("collector", "heartbeat_s") => {
                    if let Some(n) = f.integer(key, v, 86_400) {
                        c.heartbeat_s = n;
                    }
                }
                _ => f.unknown_key(&format!("[{table}]"), k, known),
            }
        }
    }
    let d = f.finish();
    if d.has_errors() {
        Err(d)
    } else {
        Ok(c)
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read configuration: {}", crate::io_reason(source))]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is invalid.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Load the configuration file, or the defaults when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<AgentConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(AgentConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&path.display().to_string(), &text).map_err(ConfigError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        assert_eq!(parse("c.toml", "").unwrap(), AgentConfig::default());
    }

    #[test]
    fn every_problem_at_once() {
        let text = "[agent]\nstate_dir = \"relative\"\nevent_lgo = \"/x\"\n\n[exec]\ndeadline_ms = 5\nfail_mode = \"sideways\"\nmounts = [\"/ok\", \"bad\"]\nfanotify = \"yes\"\n[extra]\n";
        let err = parse("c.toml", text).unwrap_err().to_string();
        let want = [
            "c.toml:2:13: error[bad-value]: `state_dir` must be an absolute path",
            "c.toml:3:1: error[unknown-key]: unknown key `event_lgo` in [agent]",
            "c.toml:6:15: error[bad-value]: `deadline_ms` must be at least 10",
            "c.toml:7:13: error[bad-value]: `fail_mode` is `sideways`, expected one of: open, closed",
            "c.toml:8:18: error[bad-value]: `mounts` entries must be absolute paths",
            "c.toml:9:12: error[wrong-type]: `fanotify` must be true or false, found a string",
            "c.toml:10:2: error[unknown-key]: unknown key `extra` in the top level (expected one of: agent, exec, notify, install, collector, syslog)",
        ];
        for w in want {
            assert!(err.contains(w), "missing {w:?} in:\n{err}");
        }
        assert_eq!(err.lines().count(), want.len(), "{err}");
    }

    #[test]
    fn values_are_read() {
        let c = parse(
            "c.toml",
            "[agent]\nevent_log = \"/tmp/e.jsonl\"\nadmin_group = \"it\"\n[exec]\nmounts = [\"/mnt/t\"]\ndeadline_ms = 250\nfail_mode = \"closed\"\nproc_connector = false\n",
        )
        .unwrap();
        assert_eq!(c.event_log, PathBuf::from("/tmp/e.jsonl"));
        assert_eq!(c.admin_group.as_deref(), Some("it"));
        assert_eq!(c.mounts, vec![PathBuf::from("/mnt/t")]);
        assert_eq!(
            (c.deadline_ms, c.fail_mode, c.proc_connector),
            (250, FailMode::Closed, false)
        );
    }

    #[test]
    fn the_syslog_message_cap_is_read_and_checked() {
        let c = parse(
            "c.toml",
            "[syslog]
max_message_bytes = 65536
",
        )
        .unwrap();
        assert_eq!(c.syslog_max_message_bytes, 65536);
        assert_eq!(AgentConfig::default().syslog_max_message_bytes, 8096);
        let err = parse(
            "c.toml",
            "[syslog]
max_message_bytes = 100
[exec]
mounts = [\"rel\"]
",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "c.toml:2:21: error[bad-value]: `max_message_bytes` must be at least 2048"
            ),
            "{err}"
        );
        assert!(
            err.contains("`mounts` entries must be absolute paths"),
            "{err}"
        );
        let err = parse(
            "c.toml",
            "[syslog]
max_message_bytes = 99999999
",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("from 0 to 1048576"), "{err}");
    }
}
