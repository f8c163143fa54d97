//! `interdict agent`: the root service that stops banned tools at launch.
//!
//! This module only wires the parts together (see `ARCHITECTURE.md`):
//! - [`sensors`] watch execs (fanotify, the proc connector, sweeps) and installs, build facts
//!   and hand them to the [`verdict`];
//! - the [`verdict`] turns a policy decision into a plan and carries it out through
//!   [`enforce`] (kills, quarantine, notices), recording one event per decision;
//! - [`sinks`] take the events: the event writer (local log, spool), the shipper, syslog, the
//!   heartbeat;
//! - [`reload`] keeps the policy in force, [`control`] answers `interdict status` and `reload`,
//!   [`metrics`] counts.
//!
//! Each part is built from its configuration section and the [`shared::Shared`] context, which
//! carries the shutdown signal and the bounded event and notice queues; every loop watches the
//! shutdown signal.

pub mod config;
pub mod control;
pub mod enforce;
pub mod metrics;
pub mod reload;
pub mod sensors;
pub mod shared;
pub mod sinks;
pub mod verdict;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use interdict_event::{EventKind, Origin};
use tokio::sync::{mpsc, oneshot};

use control::ReloadReply;
use reload::{PolicyInForce, Reloader};
use sensors::{fanotify, install_watch, proc_connector, sweep, Part, PartState};
use shared::Shared;
use sinks::spool::Consumer;

/// Exit codes of `interdict agent`.
pub mod exit {
    /// Stopped by SIGTERM or SIGINT.
    pub const OK: u8 = 0;
    /// The configuration or the policy is invalid, or the agent could not start.
    pub const ERROR: u8 = 2;
}

/// This host's identity: `/etc/machine-id`, else the host name.
pub fn host_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("hostname:{}", crate::inventory::host::hostname()))
}

/// Run the agent until SIGTERM or SIGINT.
pub fn run(policy_path: &Path, config_path: Option<&Path>) -> anyhow::Result<u8> {
    let config = match config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            if matches!(e, config::ConfigError::Io { .. }) {
                eprintln!();
            }
            return Ok(exit::ERROR);
        }
    };
    let Some(loaded) = crate::policy::load_or_print(policy_path) else {
        return Ok(exit::ERROR);
    };
    if let (Some(p), Some(_)) = (
        config_path,
        config
            .collector
            .as_ref()
            .and_then(|c| c.enroll_secret.as_ref()),
    ) {
        warn_if_readable_by_others(p);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(policy_path.to_path_buf(), config, loaded))
}

fn warn_if_readable_by_others(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(p) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "{} holds the collector's enroll secret and is readable by others than its owner (mode {:o}); make it 0600",
                p.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
}

/// The state folder, root-only (0700): learned digests, the hash cache, the spool, the
/// quarantine store, the collector token.
fn make_state_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The sinks' threads, for an orderly stop.
struct SinkThreads {
    writer: std::thread::JoinHandle<()>,
    writer_done: Arc<AtomicBool>,
    shipper: Option<std::thread::JoinHandle<()>>,
    syslog: Option<std::thread::JoinHandle<()>>,
}

/// A spool reader's stop condition at shutdown: keep delivering until the event writer has
/// finished (everything is spooled, `agent_stopped` included), then one more round for what it
/// wrote last, then stop; at most 3 s after the shutdown began.
fn drain_then_stop(
    shutdown: &Arc<shared::Shutdown>,
    writer_done: &Arc<AtomicBool>,
) -> impl Fn() -> bool {
    let (shutdown, done) = (shutdown.clone(), writer_done.clone());
    let last_round = AtomicBool::new(false);
    let since = std::sync::Mutex::new(None::<Instant>);
    move || {
        if !shutdown.is_triggered() {
            return false;
        }
        let began = *since
            .lock()
            .expect("drain clock")
            .get_or_insert_with(Instant::now);
        if began.elapsed() > Duration::from_secs(3) {
            return true;
        }
        done.load(Ordering::SeqCst) && last_round.swap(true, Ordering::SeqCst)
    }
}

/// Start the event writer, and the spool's readers (shipper, syslog) when configured.
fn start_sinks(
    shared: &Arc<Shared>,
    events_rx: tokio::sync::mpsc::Receiver<interdict_event::Event>,
    started: Instant,
) -> anyhow::Result<SinkThreads> {
    use sinks::{event_log, heartbeat, ship, syslog};
    let cfg = &shared.config;
    // The spool comes first when a collector or syslog is configured: every event is numbered,
    // chained and appended there before the shipper or anything else sees it.
    let spool_dir = cfg.agent.state_dir.join("spool");
    let mut consumers = Vec::new();
    let mut wakes = Vec::new();
    let (ship_wake, ship_wake_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let (syslog_wake, syslog_wake_rx) = std::sync::mpsc::sync_channel::<()>(1);
    if cfg.collector.is_some() {
        consumers.push(Consumer::Collector);
        wakes.push(ship_wake);
    }
    if cfg.syslog.is_some() {
        consumers.push(Consumer::Syslog);
        wakes.push(syslog_wake);
    }
    // Events numbered from here on are this run's (the syslog sink names their sender).
    let mut first_seq_of_run = 1;
    let mut syslog = None;
    let spool = if consumers.is_empty() {
        None
    } else {
        let s = sinks::spool::Spool::open(
            &spool_dir,
            cfg.collector.as_ref().map_or(256, |c| c.spool_cap_mib) << 20,
        )
        .map_err(|e| anyhow::anyhow!("cannot open the spool {}: {e}", spool_dir.display()))?;
        sinks::spool::set_consumers(&spool_dir, &consumers)?;
        first_seq_of_run = s.next_seq();
        if s.torn_bytes > 0 {
            tracing::warn!(
                "spool: cut a torn tail of {} bytes (a write cut short by a crash)",
                s.torn_bytes
            );
        }
        Some(event_log::SpoolParts {
            spool: s,
            origin: shared.origin.clone(),
            wakes,
        })
    };
    let group = cfg
        .agent
        .admin_group
        .as_deref()
        .and_then(|g| shared.accounts.gid_of(g));
    let log = event_log::open_log(&cfg.agent.event_log, group);
    let writer_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, metrics, done) = (
            cfg.agent.event_log.clone(),
            shared.metrics.clone(),
            writer_done.clone(),
        );
        std::thread::Builder::new()
            .name("event-writer".into())
            .spawn(move || {
                event_log::run(log, &path, &metrics, events_rx, spool);
                done.store(true, Ordering::SeqCst);
            })?
    };
    if let Some(sc) = cfg.syslog.clone() {
        let how = if sc.tls { "TLS" } else { "TCP" };
        shared.parts.set(
            Part::Syslog,
            PartState::Running,
            format!("RFC 5424 over {how} to {}", sc.address),
        );
        let (metrics, dir, shutdown, done) = (
            shared.metrics.clone(),
            spool_dir.clone(),
            shared.shutdown.clone(),
            writer_done.clone(),
        );
        let s = shared.clone();
        let health = move |state: &str, detail: String| {
            let state = match state {
                "running" => PartState::Running,
                "failing" => PartState::Failing,
                _ => PartState::Stopped,
            };
            s.parts.set(Part::Syslog, state, detail);
        };
        syslog = Some(
            std::thread::Builder::new()
                .name("syslog".into())
                .spawn(move || {
                    syslog::run(
                        sc,
                        dir,
                        metrics,
                        syslog_wake_rx,
                        first_seq_of_run,
                        drain_then_stop(&shutdown, &done),
                        health,
                    )
                })?,
        );
    }
    let mut shipper = None;
    if let Some(cc) = &cfg.collector {
        let sc = ship::ShipConfig::from_config(cc, &cfg.agent.state_dir);
        // A bad CA or client certificate is a configuration error: say so at start.
        if sc.client_cert.is_some() != sc.client_key.is_some() {
            anyhow::bail!("[collector]: client_cert and client_key go together");
        }
        ship::client(&sc).map_err(|e| anyhow::anyhow!("[collector]: {e}"))?;
        let host = (
            shared.origin.host_id.clone(),
            shared.origin.hostname.clone(),
        );
        let (metrics, dir, shutdown, done) = (
            shared.metrics.clone(),
            spool_dir.clone(),
            shared.shutdown.clone(),
            writer_done.clone(),
        );
        shared
            .parts
            .set(Part::Shipper, PartState::Running, format!("to {}", sc.url));
        shipper = Some(
            std::thread::Builder::new()
                .name("shipper".into())
                .spawn(move || ship::run(sc, dir, host, metrics, ship_wake_rx, &shutdown, &done))?,
        );
        if cc.heartbeat_s > 0 {
            heartbeat::start(shared.clone(), Duration::from_secs(cc.heartbeat_s), started)?;
        }
    }
    Ok(SinkThreads {
        writer,
        writer_done,
        shipper,
        syslog,
    })
}

/// Start the sensors; returns the script marker (when the script guard runs) and the install
/// watcher's request line (when it runs).
fn start_sensors(
    shared: &Arc<Shared>,
) -> (
    Option<fanotify::ScriptMarker>,
    Option<std::sync::mpsc::Sender<install_watch::WatchMsg>>,
) {
    let exec = &shared.config.exec;
    let parts = &shared.parts;
    let marker = if exec.fanotify {
        fanotify::start(shared.clone())
            .map_err(|why| parts.set(Part::Fanotify, PartState::Failed, why.to_string()))
            .ok()
    } else {
        parts.set(
            Part::Fanotify,
            PartState::Disabled,
            "[exec] fanotify = false",
        );
        None
    };
    if exec.proc_connector {
        if let Err(why) = proc_connector::start(shared.clone()) {
            parts.set(Part::ProcConnector, PartState::Failed, why.to_string());
        }
    } else {
        parts.set(
            Part::ProcConnector,
            PartState::Disabled,
            "[exec] proc_connector = false",
        );
    }
    let kernel_sensors = marker.is_some() || parts.is_running(Part::ProcConnector);
    let poll_ms = match (exec.poll_interval_ms, kernel_sensors) {
        (0, true) => None,
        (0, false) => Some(2000),
        (ms, _) => Some(ms),
    };
    match poll_ms {
        Some(ms) => {
            if let Err(why) = sweep::start_polling(shared.clone(), Duration::from_millis(ms)) {
                parts.set(Part::Poll, PartState::Failed, why.to_string());
            }
        }
        None => parts.set(
            Part::Poll,
            PartState::Idle,
            "sweeps at start-up and after policy changes",
        ),
    }
    let marker = match (marker, exec.script_guard) {
        (Some(m), true) => {
            parts.set(
                Part::ScriptGuard,
                PartState::Running,
                "marking banned scripts",
            );
            Some(m)
        }
        (None, true) => {
            parts.set(
                Part::ScriptGuard,
                PartState::Failed,
                sensors::StartError::Needs(Part::Fanotify).to_string(),
            );
            None
        }
        (_, false) => {
            parts.set(
                Part::ScriptGuard,
                PartState::Disabled,
                "[exec] script_guard = false",
            );
            None
        }
    };
    let install = if shared.config.install.watch {
        install_watch::load_hash_cache(shared);
        install_watch::start(shared.clone(), marker.clone())
            .map_err(|why| parts.set(Part::InstallWatch, PartState::Failed, why.to_string()))
            .ok()
    } else {
        parts.set(
            Part::InstallWatch,
            PartState::Disabled,
            "[install] watch = false",
        );
        None
    };
    (marker, install)
}

async fn run_async(
    policy_path: PathBuf,
    config: config::AgentConfig,
    loaded: crate::policy::LoadedPolicy,
) -> anyhow::Result<u8> {
    let started = Instant::now();
    make_state_dir(&config.agent.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot make the state folder {}: {e}",
            config.agent.state_dir.display()
        )
    })?;
    let origin = Origin {
        host_id: host_id(),
        hostname: crate::inventory::host::hostname(),
    };
    let (events, events_rx) = sinks::event_log::EventSink::new(config.agent.event_queue);
    let (notices, notices_rx) = enforce::notifier::NoticeSink::new(&config.notify);
    let learned =
        crate::policy::learned::LearnedSet::load(&config.agent.state_dir).unwrap_or_default();
    let policy = PolicyInForce::new(policy_path, loaded, &learned);
    let shared = Shared::new(config, policy, origin, events, notices)?;

    enforce::notifier::start(&shared, notices_rx)?;
    let sink_threads = start_sinks(&shared, events_rx, started)?;
    verdict::learn::start(&shared)?;
    verdict::learn::report_started(&shared);
    let (marker, install) = start_sensors(&shared);

    let summary = shared.parts.summary();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let degraded = unsafe { libc::geteuid() } != 0;
    let active = shared.policy.active();
    let info = active.loaded.policy.info();
    tracing::info!(
        "interdict agent started{}: policy {} {} ({}); sensors: {summary}",
        if degraded {
            " WITHOUT ROOT (degraded: no blocking, no kills of other users' processes)"
        } else {
            ""
        },
        info.name,
        info.version,
        info.mode,
    );
    let mut e = shared.event(EventKind::AgentStarted);
    e.message = Some(summary);
    shared.emit(e);
    let mut e = shared.event(EventKind::PolicyApplied);
    e.message = Some("initial policy".into());
    shared.emit(e);
    metrics::inc(&shared.metrics.c.policies_applied);

    let reloader = Reloader {
        shared: shared.clone(),
        marker,
        install,
    };
    // Start-up work off the async thread: mark banned scripts, sweep what already runs.
    reloader.after_change("start-up");

    // Reloads: SIGHUP, the control socket, the policy file changing.
    let (reload_tx, mut reload_rx) = mpsc::channel::<oneshot::Sender<ReloadReply>>(16);
    let (file_tx, mut file_rx) = mpsc::channel::<()>(1);
    let _watcher = reload::watch_policy(&shared.policy.path, file_tx)
        .map_err(|e| tracing::warn!("policy file watch unavailable: {e}"))
        .ok();
    let control = tokio::spawn(control::serve(shared.clone(), started, reload_tx));
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let why = loop {
        tokio::select! {
            _ = hup.recv() => { reloader.reload("SIGHUP").await; }
            Some(reply) = reload_rx.recv() => {
                let r = reloader.reload("interdict reload").await;
                let _ = reply.send(r);
            }
            Some(()) = file_rx.recv() => {
                // Editors write in several steps: let the file settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while file_rx.try_recv().is_ok() {}
                reloader.reload("policy file changed").await;
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    tracing::info!("interdict agent stopping ({why})");
    let mut e = shared.event(EventKind::AgentStopped);
    e.message = Some(format!(
        "stopped by {why}; counters: {}",
        serde_json::to_string(&shared.metrics.c.snapshot())?
    ));
    shared.emit(e);
    shared.shutdown.trigger();
    if shared.config.install.watch {
        install_watch::save_hash_cache(&shared);
    }
    let _ = control.await;
    drop(reloader);
    drop(shared);
    // The writer ends when every part has let go of the event queue; the shipper then delivers
    // what is left (agent_stopped among it), each within a bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sink_threads.writer.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !sink_threads.writer_done.load(Ordering::SeqCst) {
        tracing::warn!("the event writer did not finish within 5 s");
    }
    // The syslog sink closes its connection (TLS with close_notify) once it is done.
    for t in [sink_threads.shipper, sink_threads.syslog]
        .into_iter()
        .flatten()
    {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !t.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(exit::OK)
}
