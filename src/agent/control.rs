//! The control socket: `interdict status`, `reload`, `hashes forget` and `exception request`
//! talk to the agent over a Unix socket. Every connection's peer credentials (`SO_PEERCRED`)
//! decide what it may ask: root and the members of `admin_group` everything; any other local
//! user only `exception-request` (with a `[collector]` the socket is mode 0666 so that they can
//! connect; without one it is 0600, or 0660 for `admin_group`), and that
//! user is the one the kernel names, never one the request claims.
//!
//! Protocol: one request line (`status`, `reload`, `forget JSON` with a
//! [`Forget`](crate::policy::learned::Forget), `exception-request JSON` with a
//! [`Request`](crate::agent::fleet::exceptions::Request)), one JSON reply line. A request line
//! is at most 64 KiB; at most 64 connections are served at once (more are closed at once).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use interdict_event::PolicyRef;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::agent::metrics::{CounterSnapshot, LatencySnapshot};
use crate::agent::sensors::PartStatus;
use crate::agent::shared::Shared;

/// What `interdict status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// interdict version.
    pub version: String,
    /// Agent process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_s: u64,
    /// enforce or monitor.
    pub mode: String,
    /// The policy in force.
    pub policy: PolicyRef,
    /// Where it came from: the policy file or a signed bundle.
    #[serde(default)]
    pub policy_source: crate::agent::reload::PolicySource,
    /// Policy generation (1 at start, +1 per applied reload).
    pub generation: u64,
    /// Every sensor and its state.
    pub sensors: Vec<PartStatus>,
    /// The mount points of the filesystems the exec guard marks (`interdict doctor` compares
    /// them with the filesystems that hold programs).
    #[serde(default)]
    pub marked: Vec<String>,
    /// Counters.
    pub counters: CounterSnapshot,
    /// Decision latency of permission events.
    pub latency: LatencySnapshot,
    /// Duration of the last rescan of the install roots, in microseconds (0 before the first).
    #[serde(default)]
    pub last_rescan_us: u64,
    /// Duration of the last full rescan (every file looked at), in microseconds.
    #[serde(default)]
    pub last_full_rescan_us: u64,
    /// Duration of the last quick rescan (only the folders that changed read again), in
    /// microseconds.
    #[serde(default)]
    pub last_quick_rescan_us: u64,
    /// Resident memory in KiB.
    pub rss_kib: u64,
}

/// The reply to `reload`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadReply {
    /// True when the new policy is in force.
    pub applied: bool,
    /// What happened (the diagnostics of a rejected policy).
    pub message: String,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The status now.
pub fn status(shared: &Shared, started: std::time::Instant) -> Status {
    let active = shared.policy.active();
    let sensors = shared.parts.rows();
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_s: started.elapsed().as_secs(),
        mode: active.loaded.policy.info().mode.to_string(),
        policy: active.policy_ref(),
        policy_source: active.source.clone(),
        generation: active.generation,
        sensors,
        marked: shared.guard.get().map(|g| g.marked()).unwrap_or_default(),
        counters: shared.metrics.c.snapshot(),
        latency: shared.metrics.latency.snapshot(),
        last_rescan_us: shared
            .metrics
            .last_rescan_us
            .load(std::sync::atomic::Ordering::Relaxed),
        last_full_rescan_us: shared
            .metrics
            .last_full_rescan_us
            .load(std::sync::atomic::Ordering::Relaxed),
        last_quick_rescan_us: shared
            .metrics
            .last_quick_rescan_us
            .load(std::sync::atomic::Ordering::Relaxed),
        rss_kib: rss_kib(),
    }
}

/// The longest request line read.
const MAX_LINE: u64 = 64 << 10;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// Make the control socket, listening: `interdict status` answers from here on (the service
/// manager is told the agent is ready after this). With a collector, any local user may connect
/// to ask for an exception (issue 15; what each may ask is decided by its peer credentials);
/// without one, no exception can be asked for: root only, or root and `admin_group`.
pub fn listen(shared: &Shared) -> std::io::Result<tokio::net::UnixListener> {
    let path = shared.config.agent.control_socket.clone();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    let admin = admin_gid(shared);
    let mode = if shared.config.collector.is_some() {
        0o666
    } else if admin.is_some() {
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = admin {
        std::os::unix::fs::chown(&path, Some(0), Some(gid))?;
    }
    Ok(listener)
}

fn admin_gid(shared: &Shared) -> Option<u32> {
    shared
        .config
        .agent
        .admin_group
        .as_deref()
        .and_then(|g| shared.accounts.gid_of(g))
}

/// Serve the control socket made by [`listen`] until shutdown.
pub async fn serve(
    shared: Arc<Shared>,
    listener: std::io::Result<tokio::net::UnixListener>,
    started: std::time::Instant,
    reload: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<ReloadReply>>,
) -> std::io::Result<()> {
    let path = shared.config.agent.control_socket.clone();
    let listener = listener?;
    let admin_gid = admin_gid(&shared);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = shared.shutdown.wait() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: closed at once (a local user opening connections cannot pile up tasks).
            continue;
        };
        let cred = stream.peer_cred().ok();
        let admin = cred.is_some_and(|c| {
            c.uid() == 0
                || Some(c.gid()) == admin_gid
                || admin_gid.is_some_and(|g| {
                    shared
                        .accounts
                        .groups_of(c.uid())
                        .iter()
                        .any(|n| shared.accounts.gid_of(n) == Some(g))
                })
        });
        let (shared, reload) = (shared.clone(), reload.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let (r, mut w) = stream.into_split();
            let Some(cred) = cred else {
                let _ = w.write_all(b"{\"error\":\"permission denied\"}\n").await;
                return;
            };
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(r, MAX_LINE));
            if tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
                .await
                .is_err()
            {
                return;
            }
            let line = line.trim();
            if !admin && !line.starts_with("exception-request ") {
                let _ = w
                    .write_all(b"{\"error\":\"permission denied: only root (or admin_group) may ask this; any user may send `interdict exception request`\"}\n")
                    .await;
                return;
            }
            let reply =
                match line {
                    other if other.starts_with("exception-request ") => {
                        let caller = crate::agent::fleet::exceptions::Caller {
                            uid: cred.uid(),
                            pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
                        };
                        match serde_json::from_str::<crate::agent::fleet::exceptions::Request>(
                            &other["exception-request ".len()..],
                        ) {
                            Ok(req) => {
                                let s = shared.clone();
                                let r = tokio::task::spawn_blocking(move || {
                                    crate::agent::fleet::exceptions::request(&s, caller, req)
                                })
                                .await
                                .unwrap_or_else(|_| Err("the agent failed".into()));
                                match r {
                                    Ok(v) => v.to_string(),
                                    Err(e) => serde_json::json!({ "error": e }).to_string(),
                                }
                            }
                            Err(e) => serde_json::json!({ "error": format!("bad request: {e}") })
                                .to_string(),
                        }
                    }
                    "status" => {
                        serde_json::to_string(&status(&shared, started)).expect("status serializes")
                    }
                    "reload" => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let reply = if reload.send(tx).await.is_ok() {
                            rx.await.unwrap_or(ReloadReply {
                                applied: false,
                                message: "the agent is shutting down".into(),
                            })
                        } else {
                            ReloadReply {
                                applied: false,
                                message: "the agent is shutting down".into(),
                            }
                        };
                        serde_json::to_string(&reply).expect("reply serializes")
                    }
                    other if other.starts_with("forget ") => {
                        match serde_json::from_str::<crate::policy::learned::Forget>(&other[7..]) {
                            Ok(what) => {
                                let s = shared.clone();
                                let n = tokio::task::spawn_blocking(move || s.learner.forget(what))
                                    .await
                                    .ok()
                                    .flatten();
                                match n {
                                    Some(n) => serde_json::json!({ "forgotten": n }).to_string(),
                                    None => {
                                        serde_json::json!({ "error": "the learner is not running" })
                                            .to_string()
                                    }
                                }
                            }
                            Err(e) => {
                                serde_json::json!({ "error": format!("bad forget request: {e}") })
                                    .to_string()
                            }
                        }
                    }
                    other => serde_json::json!({ "error": format!("unknown command `{other}`") })
                        .to_string(),
                };
            let _ = w.write_all(reply.as_bytes()).await;
            let _ = w.write_all(b"\n").await;
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Send one command to the agent and return its reply line.
pub fn request(socket: &Path, command: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("cannot reach the agent at {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    // An agent that refuses a peer answers and hangs up without reading the request: the
    // write may then fail, and its answer is still there to read.
    let sent = s.write_all(format!("{command}\n").as_bytes());
    let mut line = String::new();
    let read = BufReader::new(s).read_line(&mut line);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            anyhow::bail!("the agent refused: {e}");
        }
    }
    sent?;
    read?;
    Ok(line)
}

/// Render a status for people.
pub fn render(s: &Status) -> String {
    let mut out = format!(
        "interdict {} (pid {}), up {} s\npolicy: {} {} ({}), sha256 {}, generation {}\nsource: {}\nsensors:\n",
        s.version,
        s.pid,
        s.uptime_s,
        s.policy.name,
        s.policy.version,
        s.mode,
        s.policy.sha256,
        s.generation,
        s.policy_source.describe()
    );
    for x in &s.sensors {
        out.push_str(&format!(
            "  {:<15} {:<8} {}\n",
            x.name.as_str(),
            x.state.as_str(),
            x.detail
        ));
    }
    let c = serde_json::to_value(&s.counters).expect("counters serialize");
    out.push_str("counters:\n");
    if let Some(map) = c.as_object() {
        for (k, v) in map {
            out.push_str(&format!("  {k:<22} {v}\n"));
        }
    }
    out.push_str(&format!(
        "decision latency: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs over {} decisions\nrss: {} KiB\n",
        s.latency.p50_us, s.latency.p99_us, s.latency.max_us, s.latency.count, s.rss_kib
    ));
    if s.last_rescan_us > 0 {
        out.push_str(&format!(
            "last install rescan: {:.1} ms (last full {:.1} ms, last quick {:.1} ms)\n",
            s.last_rescan_us as f64 / 1000.0,
            s.last_full_rescan_us as f64 / 1000.0,
            s.last_quick_rescan_us as f64 / 1000.0
        ));
    }
    out
}
