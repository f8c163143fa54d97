//! The collector's configuration file (`interdict-collector --config FILE`): TOML, every key
//! optional with the default below, read like a policy (unknown keys rejected, every problem
//! reported at once as `FILE:LINE:COL: error[code]: message`). Command-line flags override it.
//!
//! The defaults are sized for a fleet of 5,000 hosts on one machine (each agent sending a batch
//! or a heartbeat about once a minute and keeping one connection open between them).
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8787"
//! silent_after_s = 900
//! # tls_cert = "/etc/interdict-collector/cert.pem"
//! # tls_key = "/etc/interdict-collector/key.pem"
//! # tls_client_ca = "/etc/interdict-collector/agents-ca.pem"
//!
//! [store]
//! db = "/var/lib/interdict-collector/collector.db"
//! # postgres = "host=/run/postgresql user=interdict dbname=interdict"
//! # signing_key = "/var/lib/interdict-collector/signing.key"   # default: beside the database
//! retain_days = 0                       # 0 = keep everything
//!
//! [limits]
//! max_connections = 10000
//! header_read_timeout_s = 10
//! idle_timeout_s = 90
//! request_timeout_s = 30
//! max_body_mib = 8
//! max_batch = 5000
//! max_event_kib = 64
//! max_field_kib = 32
//! inflight_mib = 64
//! max_page_mib = 4
//! max_page_events = 10000
//! host_requests_per_s = 5
//! host_requests_burst = 120
//! host_events_per_s = 20
//! host_events_burst = 50000
//! reviewer_requests_per_s = 20
//! reviewer_requests_burst = 200
//! enroll_per_s = 20
//! enroll_burst = 500
//! max_hosts = 20000
//! host_quota_mib = 1024
//! max_future_s = 86400
//! ```

use std::path::{Path, PathBuf};

use interdict_policy::fields::{Fields, Value};
use interdict_policy::{Code, Diagnostics, SourceText};
use toml::de::DeValue;

/// Every limit, timeout and quota. Each says what happens when it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; at the cap, the connection idle longest is closed for a new
    /// one (none idle: the new one is closed).
    pub max_connections: u64,
    /// A request's headers (or a TLS handshake) must arrive within this many seconds of their
    /// first byte; else the connection is closed.
    pub header_read_timeout_s: u64,
    /// A connection with no request in progress is closed after this many seconds.
    pub idle_timeout_s: u64,
    /// A request (body included) must be handled within this many seconds (else 408), and a
    /// response that the client does not read for this long is abandoned.
    pub request_timeout_s: u64,
    /// Largest request body, MiB (413 beyond).
    pub max_body_mib: u64,
    /// Most events per batch (413 beyond).
    pub max_batch: u64,
    /// Largest single event, KiB (413 beyond).
    pub max_event_kib: u64,
    /// Largest string field of an event (message, argv entries, paths...), KiB (422 beyond).
    pub max_field_kib: u64,
    /// Request bodies and response pages held in memory at once, MiB; a request waits for room
    /// (at most `request_timeout_s`, then 503).
    pub inflight_mib: u64,
    /// Largest page of query results, MiB (the rest on the next page).
    pub max_page_mib: u64,
    /// Most events per page.
    pub max_page_events: u64,
    /// Requests per second per host token, sustained (429 beyond the burst).
    pub host_requests_per_s: u64,
    /// Requests a host token may make at once.
    pub host_requests_burst: u64,
    /// Events per second per host, sustained (429 beyond the burst: the agent keeps them in its
    /// spool and retries).
    pub host_events_per_s: u64,
    /// Events a host may send at once (a laptop's backlog after a week offline).
    pub host_events_burst: u64,
    /// Requests per second per reviewer token, sustained.
    pub reviewer_requests_per_s: u64,
    /// Requests a reviewer token may make at once.
    pub reviewer_requests_burst: u64,
    /// Enrollments per second (all hosts together), sustained.
    pub enroll_per_s: u64,
    /// Enrollments at once (a fleet rollout).
    pub enroll_burst: u64,
    /// Hosts that may enroll at most (403 beyond).
    pub max_hosts: u64,
    /// Bytes of events stored per host, MiB (507 beyond; the agent keeps them and retries, and
    /// retention makes room); 0 = no quota.
    pub host_quota_mib: u64,
    /// Event times this many seconds or more in the future are refused (422).
    pub max_future_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_read_timeout_s: 10,
            idle_timeout_s: 90,
            request_timeout_s: 30,
            max_body_mib: 8,
            max_batch: 5000,
            max_event_kib: 64,
            max_field_kib: 32,
            inflight_mib: 64,
            max_page_mib: 4,
            max_page_events: 10_000,
            host_requests_per_s: 5,
            host_requests_burst: 120,
            host_events_per_s: 20,
            host_events_burst: 50_000,
            reviewer_requests_per_s: 20,
            reviewer_requests_burst: 200,
            enroll_per_s: 20,
            enroll_burst: 500,
            max_hosts: 20_000,
            host_quota_mib: 1024,
            max_future_s: 86_400,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[server] listen`: address to listen on.
    pub listen: String,
    /// `[server] silent_after_s`: hosts not heard from in this long are flagged silent.
    pub silent_after_s: u64,
    /// `[server] tls_cert`: serve HTTPS with this PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// `[server] tls_key`: its PEM private key.
    pub tls_key: Option<PathBuf>,
    /// `[server] tls_client_ca`: require client certificates signed by this PEM CA.
    pub tls_client_ca: Option<PathBuf>,
    /// `[store] db`: the SQLite database.
    pub db: PathBuf,
    /// `[store] postgres`: PostgreSQL connection parameters instead of SQLite.
    pub postgres: Option<String>,
    /// `[store] signing_key`: the collector's ed25519 key (created 0600 when missing; default
    /// `signing.key` beside the database).
    pub signing_key: Option<PathBuf>,
    /// `[store] retain_days`: prune events received more than this many days ago (0 = keep
    /// everything).
    pub retain_days: u64,
    /// `[limits]`.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8787".into(),
            silent_after_s: 900,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            db: "/var/lib/interdict-collector/collector.db".into(),
            postgres: None,
            signing_key: None,
            retain_days: 0,
            limits: Limits::default(),
        }
    }
}

impl Config {
    /// Where the signing key is: as configured, else `signing.key` beside the SQLite database
    /// (for PostgreSQL too, in the default state directory).
    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key.clone().unwrap_or_else(|| {
            self.db
                .parent()
                .unwrap_or(Path::new("."))
                .join("signing.key")
        })
    }
}

const SERVER_KEYS: &[&str] = &[
    "listen",
    "silent_after_s",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
];
const STORE_KEYS: &[&str] = &["db", "postgres", "signing_key", "retain_days"];

/// (key, largest value, minimum value, field).
type LimitKey = (&'static str, u64, u64, fn(&mut Limits) -> &mut u64);

const LIMIT_KEYS: &[LimitKey] = &[
    ("max_connections", 1 << 20, 16, |l| &mut l.max_connections),
    ("header_read_timeout_s", 3600, 1, |l| {
        &mut l.header_read_timeout_s
    }),
    ("idle_timeout_s", 86_400, 1, |l| &mut l.idle_timeout_s),
    ("request_timeout_s", 3600, 1, |l| &mut l.request_timeout_s),
    ("max_body_mib", 1024, 1, |l| &mut l.max_body_mib),
    ("max_batch", 100_000, 1, |l| &mut l.max_batch),
    ("max_event_kib", 1 << 20, 1, |l| &mut l.max_event_kib),
    ("max_field_kib", 1 << 20, 1, |l| &mut l.max_field_kib),
    ("inflight_mib", 1 << 20, 1, |l| &mut l.inflight_mib),
    ("max_page_mib", 1024, 1, |l| &mut l.max_page_mib),
    ("max_page_events", 1_000_000, 1, |l| &mut l.max_page_events),
    ("host_requests_per_s", 1_000_000, 1, |l| {
        &mut l.host_requests_per_s
    }),
    ("host_requests_burst", 1_000_000, 1, |l| {
        &mut l.host_requests_burst
    }),
    ("host_events_per_s", 1_000_000_000, 1, |l| {
        &mut l.host_events_per_s
    }),
    ("host_events_burst", 1_000_000_000, 1, |l| {
        &mut l.host_events_burst
    }),
    ("reviewer_requests_per_s", 1_000_000, 1, |l| {
        &mut l.reviewer_requests_per_s
    }),
    ("reviewer_requests_burst", 1_000_000, 1, |l| {
        &mut l.reviewer_requests_burst
    }),
    ("enroll_per_s", 1_000_000, 1, |l| &mut l.enroll_per_s),
    ("enroll_burst", 1_000_000, 1, |l| &mut l.enroll_burst),
    ("max_hosts", 100_000_000, 1, |l| &mut l.max_hosts),
    ("host_quota_mib", 1 << 30, 0, |l| &mut l.host_quota_mib),
    ("max_future_s", 10 * 365 * 86_400, 0, |l| {
        &mut l.max_future_s
    }),
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

/// Parse and validate configuration text. `name` is how diagnostics name the file.
pub fn parse(name: &str, text: &str) -> Result<Config, Diagnostics> {
    let src = SourceText::new(name, text);
    let mut f = Fields::new(&src);
    let mut c = Config::default();
    let Some(root) = f.parse_document(text) else {
        return Err(f.finish());
    };
    let limit_names: Vec<&str> = LIMIT_KEYS.iter().map(|k| k.0).collect();
    for (k, v) in root.iter() {
        let table = k.get_ref().as_ref();
        let known: &[&str] = match table {
            "server" => SERVER_KEYS,
            "store" => STORE_KEYS,
            "limits" => &limit_names,
            _ => {
                f.unknown_key("the top level", k, &["server", "store", "limits"]);
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
                ("server", "listen") => {
                    if let Some((a, span)) = f.string(key, v) {
                        if a.parse::<std::net::SocketAddr>().is_ok() {
                            c.listen = a;
                        } else {
                            f.err(
                                Code::BadValue,
                                span,
                                "`listen` must be an address and port like 0.0.0.0:8787 or [::]:8787",
                            );
                        }
                    }
                }
                ("server", "silent_after_s") => {
                    if let Some(n) = f.integer(key, v, 86_400 * 365) {
                        c.silent_after_s = n;
                    }
                }
                ("server", "tls_cert") => c.tls_cert = absolute(&mut f, key, v),
                ("server", "tls_key") => c.tls_key = absolute(&mut f, key, v),
                ("server", "tls_client_ca") => c.tls_client_ca = absolute(&mut f, key, v),
                ("store", "db") => c.db = absolute(&mut f, key, v).unwrap_or(c.db),
                ("store", "postgres") => c.postgres = f.string(key, v).map(|s| s.0),
                ("store", "signing_key") => c.signing_key = absolute(&mut f, key, v),
                ("store", "retain_days") => {
                    if let Some(n) = f.integer(key, v, 36_500) {
                        c.retain_days = n;
                    }
                }
                ("limits", _) if limit_names.contains(&key) => {
                    let (_, max, min, field) =
                        LIMIT_KEYS.iter().find(|l| l.0 == key).expect("listed");
                    if let Some(n) = f.integer(key, v, *max) {
                        if n < *min {
                            f.err(
                                Code::BadValue,
                                v.span(),
                                format!("`{key}` must be at least {min}"),
                            );
                        } else {
                            *field(&mut c.limits) = n;
                        }
                    }
                }
                _ => f.unknown_key(&format!("[{table}]"), k, known),
            }
        }
    }
    if c.tls_cert.is_some() != c.tls_key.is_some() {
        f.err(
            Code::MissingKey,
            0..0,
            "`tls_cert` and `tls_key` go together: set both or neither",
        );
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
    #[error("{path}: cannot read the configuration: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is invalid: every problem, one per line.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Load the configuration file, or the defaults when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let Some(path) = path else {
        return Ok(Config::default());
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
    fn empty_file_gives_the_documented_defaults() {
        assert_eq!(parse("c.toml", "").unwrap(), Config::default());
        // The example in the module documentation is the defaults, written out.
        let doc = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse("doc.toml", &doc).unwrap(), Config::default(), "{doc}");
    }

    #[test]
    fn every_problem_at_once() {
        let text = "[server]\nlisten = \"nowhere\"\nsilent_after = 3\n[limits]\nmax_connections = 2\nmax_body_mib = \"8\"\nmax_bacth = 10\n[store]\ndb = \"relative.db\"\n[other]\n";
        let err = parse("c.toml", text).unwrap_err().to_string();
        let want = [
            "c.toml:2:10: error[bad-value]: `listen` must be an address and port",
            "c.toml:3:1: error[unknown-key]: unknown key `silent_after` in [server]",
            "c.toml:5:19: error[bad-value]: `max_connections` must be at least 16",
            "c.toml:6:16: error[wrong-type]: `max_body_mib` must be an integer, found a string",
            "c.toml:7:1: error[unknown-key]: unknown key `max_bacth` in [limits]",
            "did you mean `max_batch`?",
            "c.toml:9:6: error[bad-value]: `db` must be an absolute path",
            "c.toml:10:2: error[unknown-key]: unknown key `other` in the top level",
        ];
        for w in want {
            assert!(err.contains(w), "missing {w:?} in:\n{err}");
        }
        assert_eq!(err.lines().count(), want.len() - 1, "{err}");
    }

    #[test]
    fn values_are_read() {
        let c = parse(
            "c.toml",
            "[server]\nlisten = \"0.0.0.0:9000\"\n[store]\nretain_days = 30\nsigning_key = \"/k\"\n[limits]\nmax_connections = 100\nhost_quota_mib = 0\n",
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.retain_days, 30);
        assert_eq!(c.signing_key_path(), PathBuf::from("/k"));
        assert_eq!(
            (c.limits.max_connections, c.limits.host_quota_mib),
            (100, 0)
        );
    }
}
