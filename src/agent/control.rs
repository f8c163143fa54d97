//! The control socket: `interdict status` and `interdict reload` talk to the agent over a Unix
//! socket, root-only by default (mode 0600), or root and one admin group (mode 0660). Every
//! connection's peer credentials (`SO_PEERCRED`) are checked as well.
//!
//! Protocol: one request line (`status`, `reload`, or `forget JSON` with a
//! [`Forget`](crate::policy::learned::Forget)), one JSON reply line.

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
    /// Policy generation (1 at start, +1 per applied reload).
    pub generation: u64,
    /// Every sensor and its state.
    pub sensors: Vec<PartStatus>,
    /// Counters.
    pub counters: CounterSnapshot,
    /// Decision latency of permission events.
    pub latency: LatencySnapshot,
    /// Duration of the last full rescan of the install roots, in microseconds (0 before the first).
    #[serde(default)]
    pub last_rescan_us: u64,
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
        generation: active.generation,
        sensors,
        counters: shared.metrics.c.snapshot(),
        latency: shared.metrics.latency.snapshot(),
        last_rescan_us: shared
            .metrics
            .last_rescan_us
            .load(std::sync::atomic::Ordering::Relaxed),
        rss_kib: rss_kib(),
    }
}

/// Serve the control socket until shutdown.
pub async fn serve(
    shared: Arc<Shared>,
    started: std::time::Instant,
    reload: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<ReloadReply>>,
) -> std::io::Result<()> {
    let path = shared.config.agent.control_socket.clone();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    let admin_gid = shared
        .config
        .agent
        .admin_group
        .as_deref()
        .and_then(|g| shared.accounts.gid_of(g));
    let mode = if admin_gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = admin_gid {
        std::os::unix::fs::chown(&path, Some(0), Some(gid))?;
    }
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = shared.shutdown.wait() => break,
        };
        let allowed = match stream.peer_cred() {
            Ok(c) => {
                c.uid() == 0
                    || Some(c.gid()) == admin_gid
                    || admin_gid.is_some_and(|g| {
                        shared
                            .accounts
                            .groups_of(c.uid())
                            .iter()
                            .any(|n| shared.accounts.gid_of(n) == Some(g))
                    })
            }
            Err(_) => false,
        };
        let (shared, reload) = (shared.clone(), reload.clone());
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            if !allowed {
                let _ = w.write_all(b"{\"error\":\"permission denied\"}\n").await;
                return;
            }
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r);
            if tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
                .await
                .is_err()
            {
                return;
            }
            let reply = match line.trim() {
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
                other => {
                    serde_json::json!({ "error": format!("unknown command `{other}`") }).to_string()
                }
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
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            anyhow::bail!("the agent refused: {e}");
        }
    }
    Ok(line)
}

/// Render a status for people.
pub fn render(s: &Status) -> String {
    let mut out = format!(
        "interdict {} (pid {}), up {} s\npolicy: {} {} ({}), sha256 {}, generation {}\nsensors:\n",
        s.version,
        s.pid,
        s.uptime_s,
        s.policy.name,
        s.policy.version,
        s.mode,
        s.policy.sha256,
        s.generation
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
            "last install rescan: {:.1} ms\n",
            s.last_rescan_us as f64 / 1000.0
        ));
    }
    out
}
