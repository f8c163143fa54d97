//! The fleet control plane, on the agent: what the collector hands out, taken only when it is
//! signed by a key the agent trusts for that purpose, and never trusted further than that.
//!
//! - [`bundle`]: policy bundles signed with IT's **policy key** (pinned in the configuration,
//!   `[collector] policy_public_key`), applied like a reload when their version is higher than
//!   the one in force, and kept in the state folder so that a reboot without the collector
//!   enforces the same policy.
//! - [`hashes`]: the list of digests reviewers approved, signed with the collector's
//!   **hash-list key** (named by the signed policy: `hash_list_keys`); its entries are *added*
//!   to block, kill and quarantine rules, through the learner's guard rails. Never to an allow
//!   rule, never a new rule, never a removal.
//! - [`exceptions`]: a user's request (the control socket, any local user, identified by the
//!   socket's peer credentials) goes to the collector as an event; an approval signed with the
//!   collector's **exception key** (named by the signed policy: `exception_keys`) for one user,
//!   one rule and this host, no longer than the policy's `max_exception_days`, lets that user run
//!   the tool until it ends; the user is told when it starts and before it ends; at its end the
//!   rule applies again and running processes are swept.
//!
//! The `fleet` thread fetches `GET /v1/policy` and `GET /v1/approvals` (both conditional) at
//! start and with every heartbeat; the `exceptions` thread keeps time. Every acceptance and
//! every refusal is an event; a refusal is told once per document, not at every heartbeat.

pub mod bundle;
pub mod exceptions;
pub mod hashes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use interdict_fleet::{Envelope, ExceptionGrant};
use serde::{Deserialize, Serialize};

use super::reload::Reloader;
use super::sensors::{Part, PartState, StartError};
use super::shared::Shared;
use super::sinks::ship::{self, ShipConfig};

/// What the agent keeps of the fleet's documents (`STATE_DIR/fleet.json`, written atomically).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The hash list applied last, as received (verified then).
    #[serde(default)]
    pub hash_list: Option<Envelope>,
    /// Its sequence number: a list with a lower one is refused.
    #[serde(default)]
    pub hash_list_seq: u64,
    /// Documents refused already (by signature, or a bundle's digest): told once.
    #[serde(default)]
    pub refused: Vec<String>,
    /// The exceptions accepted and not ended.
    #[serde(default)]
    pub exceptions: Vec<Held>,
    /// Exception ids decided here (accepted, refused, denied, ended), with when (Unix s): each is
    /// acted on once.
    #[serde(default)]
    pub seen: BTreeMap<String, i64>,
}

/// An exception accepted, with what its user was told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    /// The grant, as verified.
    pub grant: ExceptionGrant,
    /// As signed: checked again when the policy changes (a policy that no longer names its
    /// key ends it).
    #[serde(default)]
    pub envelope: Option<Envelope>,
    /// Told that it started.
    pub told_start: bool,
    /// Told that it ends soon.
    pub told_ending: bool,
}

/// The fleet state, shared by the fleet thread, the exception timer and the control socket.
#[derive(Debug)]
pub struct Fleet {
    state_dir: PathBuf,
    state: Mutex<State>,
    /// Exception requests per user id (the times of the last ones), for the rate limit.
    requests: Mutex<std::collections::HashMap<u32, Vec<std::time::Instant>>>,
}

/// Refused documents remembered (the oldest are forgotten first).
const REFUSED_KEPT: usize = 256;

impl Fleet {
    /// The state kept in `state_dir` (a damaged file is reported and replaced).
    pub fn load(state_dir: &Path) -> Fleet {
        let path = state_dir.join("fleet.json");
        let state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!("{}: unreadable, starting afresh: {e}", path.display());
                State::default()
            }),
            Err(_) => State::default(),
        };
        Fleet {
            state_dir: state_dir.to_path_buf(),
            state: Mutex::new(state),
            requests: Mutex::new(Default::default()),
        }
    }

    /// Run `f` on the state and save it.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().expect("fleet state poisoned");
        let out = f(&mut s);
        let bytes = serde_json::to_vec_pretty(&*s).expect("state serializes");
        if let Err(e) =
            crate::fsutil::write_atomic(&self.state_dir.join("fleet.json"), &bytes, 0o600)
        {
            tracing::warn!("fleet state not saved: {e}");
        }
        out
    }

    /// A copy of the state.
    pub fn state(&self) -> State {
        self.state.lock().expect("fleet state poisoned").clone()
    }

    /// True the first time `id` is refused (remembered from then on).
    pub fn first_refusal(&self, id: &str) -> bool {
        self.update(|s| {
            if s.refused.iter().any(|r| r == id) {
                return false;
            }
            if s.refused.len() >= REFUSED_KEPT {
                s.refused.remove(0);
            }
            s.refused.push(id.to_string());
            true
        })
    }
}

/// After a new base policy: exceptions it no longer allows end, and the approved digests are
/// offered again (to rules that may have appeared). Off the caller's thread: the learner may
/// take a while.
pub fn on_policy_changed(shared: &std::sync::Arc<Shared>) {
    let s = shared.clone();
    std::thread::spawn(move || {
        exceptions::policy_changed(&s);
        hashes::reapply(&s);
    });
}

/// What a fetch brought.
enum Got {
    /// A body, with its ETag.
    Body(String, Option<String>),
    /// Nothing new (304) or nothing at all (204).
    Nothing,
}

/// The most a fetched document may weigh (a bundle with large hash lists).
const MAX_DOCUMENT: u64 = 256 << 20;

fn fetch(http: &ureq::Agent, url: &str, token: &str, etag: Option<&str>) -> Result<Got, String> {
    let mut req = http
        .get(url)
        .header("Authorization", &format!("Bearer {token}"));
    if let Some(t) = etag {
        req = req.header("If-None-Match", t);
    }
    let mut resp = req.call().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match status {
        304 | 204 => Ok(Got::Nothing),
        200 => {
            let body = resp
                .body_mut()
                .with_config()
                .limit(MAX_DOCUMENT)
                .read_to_string()
                .map_err(|e| e.to_string())?;
            Ok(Got::Body(body, etag))
        }
        s => {
            let text = resp
                .body_mut()
                .with_config()
                .limit(4096)
                .read_to_string()
                .unwrap_or_default();
            Err(format!("{s} {}", interdict_chain::printable(text.trim())))
        }
    }
}

/// One round: the policy bundle, then the approvals.
fn sync(
    shared: &Shared,
    reloader: &Reloader,
    http: &ureq::Agent,
    cfg: &ShipConfig,
) -> Result<(), String> {
    let Some(token) = std::fs::read_to_string(&cfg.token_file)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    else {
        return Err("not enrolled yet".into());
    };
    let base = cfg.url.trim_end_matches('/');
    if !bundle::pinned(&shared.config).is_empty() {
        let have = shared.policy.active().source.bundle_version();
        let url = match have {
            Some(v) => format!("{base}/v1/policy?have={v}"),
            None => format!("{base}/v1/policy"),
        };
        let etag = have.map(|v| format!("\"{v}\""));
        if let Got::Body(text, _) = fetch(http, &url, &token, etag.as_deref())? {
            bundle::offer(reloader, &text, "from the collector");
        }
    }
    let etag = APPROVALS_ETAG.lock().expect("etag poisoned").clone();
    if let Got::Body(text, etag) = fetch(
        http,
        &format!("{base}/v1/approvals"),
        &token,
        etag.as_deref(),
    )? {
        let v: Approvals = serde_json::from_str(&text)
            .map_err(|e| format!("the collector's approvals are not readable: {e}"))?;
        if let Some(list) = &v.hash_list {
            hashes::offer(shared, list);
        }
        exceptions::offer(shared, &v.exceptions, &v.denied);
        *APPROVALS_ETAG.lock().expect("etag poisoned") = etag;
    }
    Ok(())
}

/// The ETag of the approvals applied last (in memory: after a restart everything is fetched
/// once, and what was seen before is recognised by the state).
static APPROVALS_ETAG: Mutex<Option<String>> = Mutex::new(None);

/// `GET /v1/approvals`, as the agent reads it.
#[derive(Debug, Deserialize)]
struct Approvals {
    #[serde(default)]
    hash_list: Option<Envelope>,
    #[serde(default)]
    exceptions: Vec<Envelope>,
    #[serde(default)]
    denied: Vec<Denied>,
}

/// A denial, as the collector reports it (unsigned: a denial weakens nothing).
#[derive(Debug, Clone, Deserialize)]
pub struct Denied {
    /// The request id.
    pub id: String,
    /// The rule.
    pub rule: String,
    /// The user.
    pub user: String,
    /// The reviewer's note.
    #[serde(default)]
    pub note: Option<String>,
}

/// Start the fleet thread (with a collector) and the exception timer.
pub fn start(reloader: Reloader) -> Result<(), StartError> {
    let shared = reloader.shared.clone();
    exceptions::start(shared.clone())?;
    let Some(cc) = shared.config.collector.clone() else {
        shared.parts.set(
            Part::Fleet,
            PartState::Disabled,
            "no [collector]: the policy file only",
        );
        return Ok(());
    };
    let cfg = ShipConfig::from_config(&cc, &shared.config.agent.state_dir);
    let http = ship::client(&cfg).map_err(|e| StartError::Io {
        what: "the collector's HTTP client",
        source: std::io::Error::other(e),
    })?;
    let every = Duration::from_secs(if cc.heartbeat_s > 0 {
        cc.heartbeat_s
    } else {
        60
    });
    describe(&shared, PartState::Running, None);
    std::thread::Builder::new()
        .name("fleet".into())
        .spawn(move || {
            let shared = reloader.shared.clone();
            loop {
                let wait = match sync(&shared, &reloader, &http, &cfg) {
                    Ok(()) => {
                        describe(&shared, PartState::Running, None);
                        every
                    }
                    Err(why) => {
                        tracing::debug!("fleet: {why}");
                        describe(&shared, PartState::Failing, Some(&why));
                        every.min(Duration::from_secs(2))
                    }
                };
                if shared.shutdown.sleep(wait) {
                    return;
                }
            }
        })
        .map_err(StartError::io("fleet thread"))?;
    Ok(())
}

/// The fleet's line in `interdict status`.
pub fn describe(shared: &Shared, state: PartState, failing: Option<&str>) {
    let active = shared.policy.active();
    let st = shared.fleet.state();
    let mut d = format!(
        "policy from {}; hash list {}; {} exception(s) held",
        active.source.describe(),
        if st.hash_list_seq > 0 {
            st.hash_list_seq.to_string()
        } else {
            "none".into()
        },
        st.exceptions.len()
    );
    if let Some(w) = failing {
        d.push_str(&format!("; last fetch failed: {w}"));
    }
    shared.parts.set(Part::Fleet, state, d);
}

/// A rule of the policy in force, for an event about it.
pub fn rule_ref(shared: &Shared, rule_id: &str) -> Option<interdict_event::RuleRef> {
    let active = shared.policy.active();
    let r = active
        .loaded
        .policy
        .rules()
        .iter()
        .find(|r| r.id == rule_id)?;
    Some(interdict_event::RuleRef {
        id: r.id.clone(),
        name: r.name.clone(),
        risk: r.risk.to_string(),
        action: r.action.to_string(),
        selector: String::new(),
        pattern: String::new(),
        matched: String::new(),
    })
}
