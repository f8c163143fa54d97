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

/// The whole configuration: one struct per table, defaults filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentConfig {
    /// `[agent]`: files and queues of the agent itself.
    pub agent: AgentSection,
    /// `[exec]`: the exec sensors.
    pub exec: ExecConfig,
    /// `[notify]`: notices for employees.
    pub notify: NotifyConfig,
    /// `[install]`: the install watcher.
    pub install: InstallConfig,
    /// `[collector]`: shipping to the central log; `None` = the local event log only, no spool.
    pub collector: Option<CollectorConfig>,
    /// `[syslog]`: the syslog sink; `None` = no syslog.
    pub syslog: Option<SyslogConfig>,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSection {
    /// `state_dir`: where the agent keeps its state (mode 0700).
    pub state_dir: PathBuf,
    /// `event_log`: the local JSONL event log (mode 0600, or 0640 with `admin_group`).
    pub event_log: PathBuf,
    /// `control_socket`: the Unix socket for `status` and `reload`.
    pub control_socket: PathBuf,
    /// `admin_group`: a group whose members may use the control socket and read the event log
    /// besides root.
    pub admin_group: Option<String>,
    /// `event_queue`: events buffered between the sensors and the event log; when full, new
    /// events are dropped and counted (`event_drops` in status).
    pub event_queue: usize,
    /// `host_id`: this host's id for events and the collector (default: `/etc/machine-id`);
    /// for machines cloned with one machine id, and for several agents on one machine in tests.
    pub host_id: Option<String>,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            state_dir: "/var/lib/interdict".into(),
            event_log: "/var/log/interdict/events.jsonl".into(),
            control_socket: "/run/interdict/control.sock".into(),
            admin_group: None,
            event_queue: 65_536,
            host_id: None,
        }
    }
}

/// `[exec]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// `fanotify`: the pre-exec guard.
    pub fanotify: bool,
    /// `mounts`: mounts to mark; empty = every local filesystem that can hold executables.
    pub mounts: Vec<PathBuf>,
    /// `deadline_ms`: every permission event is answered within this budget.
    pub deadline_ms: u64,
    /// `fail_mode`: the answer when the budget runs out or the decision fails.
    pub fail_mode: FailMode,
    /// `workers`: threads deciding cache misses (hashing).
    pub workers: usize,
    /// `queue`: permission events waiting for a worker; when full the event is answered at
    /// once per `fail_mode` and counted (`queue_drops`).
    pub queue: usize,
    /// `proc_connector`: the netlink exec sensor (kills what got through).
    pub proc_connector: bool,
    /// `script_guard`: deny opens of banned interpreter scripts (fanotify on those files).
    pub script_guard: bool,
    /// `script_roots`: where the script guard looks for banned scripts; empty = the scan's
    /// default install roots.
    pub script_roots: Vec<PathBuf>,
    /// `poll_interval_ms`: periodic process sweeps; 0 = only when neither kernel sensor runs
    /// (then every 2 s).
    pub poll_interval_ms: u64,
    /// `follow_mounts`: mark filesystems mounted after start-up, and filesystems first seen
    /// through an exec in another mount namespace.
    pub follow_mounts: bool,
    /// `follow_mounts_under`: only those mounted under these folders (default `/`: all).
    pub follow_mounts_under: Vec<PathBuf>,
    /// `freeze`: stop (`SIGSTOP`) a program the guard did not hold — one on a filesystem it
    /// does not mark, or one the dynamic loader runs — while the proc connector hashes it.
    pub freeze: bool,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
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
            follow_mounts: true,
            follow_mounts_under: vec![PathBuf::from("/")],
            freeze: true,
        }
    }
}

/// `[notify]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    /// `enabled`: tell employees at all (false = the global silent switch).
    pub enabled: bool,
    /// `desktop`: desktop notifications on the user's session bus.
    pub desktop: bool,
    /// `terminal`: one line on the process's terminal.
    pub terminal: bool,
    /// `interval_s`: at most one notice per user and rule in this many seconds; the rest are
    /// counted (`notices_suppressed`).
    pub interval_s: u64,
    /// `queue`: notices waiting for delivery; when full, new ones are dropped and counted
    /// (`notices_dropped`).
    pub queue: usize,
    /// `opener`: the program that opens the "More info" link, run as the user (default
    /// `xdg-open`).
    pub opener: Option<PathBuf>,
    /// `exception_notice_s`: how long before an exception ends its user is told (default 600,
    /// ten minutes).
    pub exception_notice_s: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            enabled: true,
            desktop: true,
            terminal: true,
            interval_s: 300,
            queue: 1024,
            opener: None,
            exception_notice_s: 600,
        }
    }
}

/// `[install]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallConfig {
    /// `watch`: watch the install roots and report banned installs at once.
    pub watch: bool,
    /// `roots`: install roots; empty = the scan's default roots.
    pub roots: Vec<PathBuf>,
    /// `rescan_interval_s`: rescan this often (quick passes while the watcher has missed
    /// nothing; full ones after overflows).
    pub rescan_interval_s: u64,
    /// `full_rescan_interval_s`: a full pass (every file looked at) at least this often; the
    /// rescans between are quick ones (only folders that changed are read again).
    pub full_rescan_interval_s: u64,
    /// `debounce_ms`: wait this long after the last change in a package folder.
    pub debounce_ms: u64,
    /// `config_homes`: the homes searched for AI-agent configuration files (the policy's
    /// `configs`) at start-up and at each rescan; unset = every user's home and the absolute
    /// globs (`/etc/...`); set = only these homes.
    pub config_homes: Option<Vec<PathBuf>>,
}

impl Default for InstallConfig {
    fn default() -> Self {
        InstallConfig {
            watch: true,
            roots: Vec::new(),
            rescan_interval_s: 6 * 3600,
            full_rescan_interval_s: 24 * 3600,
            debounce_ms: 500,
            config_homes: None,
        }
    }
}

/// `[collector]`: every event is spooled and shipped to this collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorConfig {
    /// `url`: the collector (`http://` or `https://`). Required.
    pub url: String,
    /// `enroll_secret`: the collector's enroll secret, used once to get a token.
    pub enroll_secret: Option<String>,
    /// `token_file`: where the host token is kept (default `STATE_DIR/collector.token`).
    pub token_file: Option<PathBuf>,
    /// `batch`: most events per request (default 500).
    pub batch: usize,
    /// `spool_cap_mib`: the spool's byte cap (default 256 MiB); when full, new events are
    /// refused and counted (`spool_dropped`), and an `events_dropped` event says how many.
    pub spool_cap_mib: u64,
    /// `heartbeat_s`: a `heartbeat` event this often (default 60; 0 = none).
    pub heartbeat_s: u64,
    /// `ca_file`: PEM CA certificates to trust for an `https://` collector.
    pub ca_file: Option<PathBuf>,
    /// `client_cert`: PEM client certificate, for collectors requiring one.
    pub client_cert: Option<PathBuf>,
    /// `client_key`: the PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// `policy_public_key`: IT's policy key (hex), one or two (during a rotation): bundles the
    /// collector serves are applied only when signed by one of them. Empty: no bundles.
    pub policy_public_keys: Vec<String>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            url: String::new(),
            enroll_secret: None,
            token_file: None,
            batch: 500,
            spool_cap_mib: 256,
            heartbeat_s: 60,
            ca_file: None,
            client_cert: None,
            client_key: None,
            policy_public_keys: Vec::new(),
        }
    }
}

/// `[syslog]`: every event as RFC 5424 with octet-counting framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// `address`: the receiver, `host:port`. Required.
    pub address: String,
    /// `tls`: TLS (RFC 5425) instead of plain TCP.
    pub tls: bool,
    /// `ca_file`: PEM CA certificates to trust for TLS (default: the public web roots).
    pub ca_file: Option<PathBuf>,
    /// `facility`: the facility number (default 10, authpriv).
    pub facility: u8,
    /// `max_message_bytes`: the longest message sent, in octets (framing not counted; default
    /// 8,096, rsyslog's default `maxMessageSize`); longer events are cut, the command line
    /// first.
    pub max_message_bytes: usize,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        SyslogConfig {
            address: String::new(),
            tls: false,
            ca_file: None,
            facility: 10,
            max_message_bytes: super::sinks::syslog::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

const AGENT_KEYS: &[&str] = &[
    "state_dir",
    "event_log",
    "control_socket",
    "admin_group",
    "event_queue",
    "host_id",
];
const NOTIFY_KEYS: &[&str] = &[
    "enabled",
    "desktop",
    "terminal",
    "interval_s",
    "queue",
    "opener",
    "exception_notice_s",
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
    "policy_public_key",
];
const SYSLOG_KEYS: &[&str] = &["address", "tls", "ca_file", "facility", "max_message_bytes"];
const INSTALL_KEYS: &[&str] = &[
    "watch",
    "roots",
    "rescan_interval_s",
    "full_rescan_interval_s",
    "debounce_ms",
    "config_homes",
];
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
    "follow_mounts",
    "follow_mounts_under",
    "freeze",
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
    let mut col = CollectorConfig::default();
    let mut sys = SyslogConfig::default();
    // The span of each optional table's name, to report a missing required key there.
    let (mut col_at, mut sys_at) = (None, None);
    for (k, v) in root.iter() {
        let table = k.get_ref().as_ref();
        match table {
            "collector" => col_at = Some(k.span()),
            "syslog" => sys_at = Some(k.span()),
            _ => {}
        }
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
                    c.agent.state_dir = absolute(&mut f, key, v).unwrap_or(c.agent.state_dir)
                }
                ("agent", "event_log") => {
                    c.agent.event_log = absolute(&mut f, key, v).unwrap_or(c.agent.event_log)
                }
                ("agent", "control_socket") => {
                    c.agent.control_socket =
                        absolute(&mut f, key, v).unwrap_or(c.agent.control_socket)
                }
                ("agent", "admin_group") => c.agent.admin_group = f.string(key, v).map(|s| s.0),
                ("agent", "host_id") => {
                    if let Some((h, span)) = f.string(key, v) {
                        if h.len() <= 128
                            && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        {
                            c.agent.host_id = Some(h);
                        } else {
                            f.err(
                                Code::BadValue,
                                span,
                                "`host_id` must be 1 to 128 letters, digits and dashes",
                            );
                        }
                    }
                }
                ("notify", "exception_notice_s") => {
                    if let Some(n) = f.integer(key, v, 86_400) {
                        c.notify.exception_notice_s = n;
                    }
                }
                ("collector", "policy_public_key") => {
                    let keys = match v.get_ref() {
                        DeValue::String(_) => f.string(key, v).into_iter().collect(),
                        _ => f.string_list(key, v),
                    };
                    if keys.len() > 2 {
                        f.err(
                            Code::BadValue,
                            v.span(),
                            "`policy_public_key` holds one key, or two while the policy key is rotated",
                        );
                    }
                    for (k, span) in keys {
                        if interdict_fleet::PublicKey::from_hex(&k).is_some() {
                            col.policy_public_keys.push(k.to_ascii_lowercase());
                        } else {
                            f.err(
                                Code::BadPublicKey,
                                span,
                                format!("`{k}` is not an ed25519 public key (64 hexadecimal digits, as `interdict policy keygen` prints it)"),
                            );
                        }
                    }
                }
                ("agent", "event_queue") => {
                    if let Some(n) = f.integer(key, v, 1 << 24) {
                        c.agent.event_queue = (n as usize).max(1);
                    }
                }
                ("exec", "fanotify") => {
                    c.exec.fanotify = f.boolean(key, v).unwrap_or(c.exec.fanotify)
                }
                ("exec", "mounts") => c.exec.mounts = absolute_list(&mut f, key, v),
                ("exec", "deadline_ms") => {
                    if let Some(n) = f.integer(key, v, 60_000) {
                        if n < 10 {
                            f.err(
                                Code::BadValue,
                                v.span(),
                                "`deadline_ms` must be at least 10",
                            );
                        }
                        c.exec.deadline_ms = n.max(10);
                    }
                }
                ("exec", "fail_mode") => {
                    if let Some(m) =
                        f.keyword::<FailMode>(key, v, Code::BadValue, &["open", "closed"])
                    {
                        c.exec.fail_mode = m;
                    }
                }
                ("exec", "workers") => {
                    if let Some(n) = f.integer(key, v, 64) {
                        c.exec.workers = (n as usize).max(1);
                    }
                }
                ("exec", "queue") => {
                    if let Some(n) = f.integer(key, v, 1 << 20) {
                        c.exec.queue = (n as usize).max(1);
                    }
                }
                ("exec", "proc_connector") => {
                    c.exec.proc_connector = f.boolean(key, v).unwrap_or(c.exec.proc_connector)
                }
                ("exec", "script_guard") => {
                    c.exec.script_guard = f.boolean(key, v).unwrap_or(c.exec.script_guard)
                }
                ("exec", "script_roots") => c.exec.script_roots = absolute_list(&mut f, key, v),
                ("exec", "follow_mounts") => {
                    c.exec.follow_mounts = f.boolean(key, v).unwrap_or(c.exec.follow_mounts)
                }
                ("exec", "follow_mounts_under") => {
                    c.exec.follow_mounts_under = absolute_list(&mut f, key, v)
                }
                ("exec", "freeze") => c.exec.freeze = f.boolean(key, v).unwrap_or(c.exec.freeze),
                ("exec", "poll_interval_ms") => {
                    if let Some(n) = f.integer(key, v, 86_400_000) {
                        c.exec.poll_interval_ms = n;
                    }
                }
                ("notify", "enabled") => {
                    c.notify.enabled = f.boolean(key, v).unwrap_or(c.notify.enabled)
                }
                ("notify", "desktop") => {
                    c.notify.desktop = f.boolean(key, v).unwrap_or(c.notify.desktop)
                }
                ("notify", "terminal") => {
                    c.notify.terminal = f.boolean(key, v).unwrap_or(c.notify.terminal)
                }
                ("notify", "interval_s") => {
                    if let Some(n) = f.integer(key, v, 86_400 * 7) {
                        c.notify.interval_s = n;
                    }
                }
                ("install", "watch") => {
                    c.install.watch = f.boolean(key, v).unwrap_or(c.install.watch)
                }
                ("install", "roots") => c.install.roots = absolute_list(&mut f, key, v),
                ("install", "config_homes") => {
                    c.install.config_homes = Some(absolute_list(&mut f, key, v))
                }
                ("install", "rescan_interval_s") => {
                    if let Some(n) = f.integer(key, v, 86_400 * 30) {
                        c.install.rescan_interval_s = n.max(1);
                    }
                }
                ("install", "full_rescan_interval_s") => {
                    if let Some(n) = f.integer(key, v, 86_400 * 30) {
                        c.install.full_rescan_interval_s = n.max(1);
                    }
                }
                ("install", "debounce_ms") => {
                    if let Some(n) = f.integer(key, v, 60_000) {
                        c.install.debounce_ms = n;
                    }
                }
                ("notify", "opener") => c.notify.opener = absolute(&mut f, key, v),
                ("notify", "queue") => {
                    if let Some(n) = f.integer(key, v, 1 << 20) {
                        c.notify.queue = (n as usize).max(1);
                    }
                }
                ("collector", "url") => {
                    if let Some((u, span)) = f.string(key, v) {
                        if u.starts_with("http://") || u.starts_with("https://") {
                            col.url = u;
                        } else {
                            f.err(
                                Code::BadValue,
                                span,
                                "`url` must start with http:// or https://",
                            );
                        }
                    }
                }
                ("collector", "enroll_secret") => col.enroll_secret = f.string(key, v).map(|s| s.0),
                ("collector", "token_file") => col.token_file = absolute(&mut f, key, v),
                ("collector", "batch") => {
                    if let Some(n) = f.integer(key, v, 5000) {
                        col.batch = (n as usize).max(1);
                    }
                }
                ("collector", "spool_cap_mib") => {
                    if let Some(n) = f.integer(key, v, 1 << 20) {
                        col.spool_cap_mib = n.max(1);
                    }
                }
                ("syslog", "address") => {
                    if let Some((a, span)) = f.string(key, v) {
                        if a.rsplit_once(':')
                            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                        {
                            sys.address = a;
                        } else {
                            f.err(Code::BadValue, span, "`address` must be `host:port`");
                        }
                    }
                }
                ("syslog", "tls") => sys.tls = f.boolean(key, v).unwrap_or(sys.tls),
                ("syslog", "ca_file") => sys.ca_file = absolute(&mut f, key, v),
                ("syslog", "facility") => {
                    if let Some(n) = f.integer(key, v, 23) {
                        sys.facility = n as u8;
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
                        sys.max_message_bytes = (n as usize).max(2048);
                    }
                }
                ("collector", "ca_file") => col.ca_file = absolute(&mut f, key, v),
                ("collector", "client_cert") => col.client_cert = absolute(&mut f, key, v),
                ("collector", "client_key") => col.client_key = absolute(&mut f, key, v),
                ("collector", "heartbeat_s") => {
                    if let Some(n) = f.integer(key, v, 86_400) {
                        col.heartbeat_s = n;
                    }
                }
                _ => f.unknown_key(&format!("[{table}]"), k, known),
            }
        }
    }
    for (at, missing, table) in [
        (col_at.clone(), col.url.is_empty(), "collector"),
        (sys_at.clone(), sys.address.is_empty(), "syslog"),
    ] {
        if let (Some(at), true) = (at, missing) {
            let key = if table == "collector" {
                "url"
            } else {
                "address"
            };
            f.err(
                Code::MissingKey,
                at,
                format!("[{table}] needs `{key}` (remove the table to turn it off)"),
            );
        }
    }
    if col_at.is_some() {
        c.collector = Some(col);
    }
    if sys_at.is_some() {
        c.syslog = Some(sys);
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
        assert_eq!(c.agent.event_log, PathBuf::from("/tmp/e.jsonl"));
        assert_eq!(c.agent.admin_group.as_deref(), Some("it"));
        assert_eq!(c.exec.mounts, vec![PathBuf::from("/mnt/t")]);
        assert_eq!(
            (c.exec.deadline_ms, c.exec.fail_mode, c.exec.proc_connector),
            (250, FailMode::Closed, false)
        );
    }

    #[test]
    fn the_syslog_message_cap_is_read_and_checked() {
        let c = parse(
            "c.toml",
            "[syslog]
address = \"siem:6514\"
max_message_bytes = 65536
",
        )
        .unwrap();
        assert_eq!(c.syslog.unwrap().max_message_bytes, 65536);
        assert_eq!(SyslogConfig::default().max_message_bytes, 8096);
        let err = parse(
            "c.toml",
            "[syslog]
address = \"siem:6514\"
max_message_bytes = 100
[exec]
mounts = [\"rel\"]
",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "c.toml:3:21: error[bad-value]: `max_message_bytes` must be at least 2048"
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
address = \"siem:6514\"
max_message_bytes = 99999999
",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("from 0 to 1048576"), "{err}");
    }
}
